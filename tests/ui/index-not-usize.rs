#[kamisama::main]
fn worker(index: u32) {
    println!("{index}");
}
