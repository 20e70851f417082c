#[kamisama::main(instances = 18446744073709551615)]
fn worker() {}
