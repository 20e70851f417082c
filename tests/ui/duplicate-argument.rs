#[kamisama::main(instances = 3, respawn_limit = 1, instances = 4)]
fn worker(index: usize) {
    println!("{index}");
}
