#[kamisama::main(runtime = "multi-thread")]
async fn worker() {}
