#[kamisama::main(crate = "not a path")]
fn worker() {}
