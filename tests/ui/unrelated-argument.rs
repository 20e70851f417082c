#[kamisama::main(colour = 3)]
fn worker() {}
