#[kamisama::main(runtime = "current_thread", worker_threads = 2)]
async fn worker() {}
