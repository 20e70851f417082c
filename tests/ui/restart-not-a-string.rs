#[kamisama::main(restart = on_failure)]
fn worker(index: usize) {
    println!("{index}");
}
