#[kamisama::main(runtime = "multi_thread")]
async fn worker() {}
