#[kamisama::main(respawn_interval = 0)]
fn worker(index: usize) {
    println!("{index}");
}
