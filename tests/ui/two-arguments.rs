#[kamisama::main]
fn worker(index: usize, name: &str) {
    println!("{index} {name}");
}
