#[kamisama::main(respawn_limit = 4294967296)]
fn worker(index: usize) {
    println!("{index}");
}
