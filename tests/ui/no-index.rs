#[kamisama::main]
fn worker() {}
