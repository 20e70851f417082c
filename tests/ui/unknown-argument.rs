#[kamisama::main(instancez = 3)]
fn worker(index: usize) {
    println!("{index}");
}
