#[kamisama::main(runtime = "current-thread", worker_threads = 2)]
async fn worker() {}
