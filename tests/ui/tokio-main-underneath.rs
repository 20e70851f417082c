#[kamisama::main(instances = 2)]
#[tokio::main]
async fn worker() {}
