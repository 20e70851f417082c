#[kamisama::main]
async fn worker(index: usize) {
    println!("{index}");
}
