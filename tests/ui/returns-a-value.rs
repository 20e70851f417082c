#[kamisama::main]
fn worker(index: usize) -> usize {
    index
}
