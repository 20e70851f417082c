#[kamisama::main(respawn_limit = -1)]
fn worker(index: usize) {
    println!("{index}");
}
