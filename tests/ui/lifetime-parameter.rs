#[kamisama::main]
fn worker<'a>() {}
