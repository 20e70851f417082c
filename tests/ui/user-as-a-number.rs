#[kamisama::main(user = 65534)]
fn worker(index: usize) {
    println!("{index}");
}
