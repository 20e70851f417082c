#[kamisama::main(restart_limit = 10, workers = 4, shutdown_timout = 5)]
fn worker() {}
