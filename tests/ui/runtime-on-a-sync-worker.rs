#[kamisama::main(runtime = "multi-thread", worker_threads = 2)]
fn worker() {}
