const WORKERS: usize = 4;

#[kamisama::main(instances = WORKERS)]
fn worker() {}
