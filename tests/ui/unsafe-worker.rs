#[kamisama::main]
unsafe fn worker(index: usize) {
    println!("{index}");
}
