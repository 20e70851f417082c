#[kamisama::main(instances, respawn_limit = 0)]
fn worker(index: usize) {
    println!("{index}");
}
