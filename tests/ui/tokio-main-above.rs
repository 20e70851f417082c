#[tokio::main]
#[kamisama::main]
async fn worker() {}
