#[kamisama::main(instances = 0)]
fn worker(index: usize) {
    println!("{index}");
}
