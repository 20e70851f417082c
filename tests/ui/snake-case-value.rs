#[kamisama::main(restart = "on_failure")]
fn worker() {}
