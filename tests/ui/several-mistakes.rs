#[kamisama::main(instances = 0, respawn_limitt = 3, shutdown_timeout = 1.5)]
unsafe fn worker(index: u32) {
    println!("{index}");
}
