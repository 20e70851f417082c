#[kamisama::main(restart = "sometimes")]
fn worker(index: usize) {
    println!("{index}");
}
