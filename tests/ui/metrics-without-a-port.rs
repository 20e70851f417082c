#[kamisama::main(metrics = "9464")]
fn worker() {}
