#[kamisama::main(worker_threads = 100000)]
async fn worker() {}
