#[kamisama::main(runtime = "multi_thread", worker_threads = 2)]
fn worker() {}
