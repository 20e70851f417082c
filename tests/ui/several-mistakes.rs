#[kamisama::main(instances = 0, respawn_limitt = 3, shutdown_timeout = 1.5)]
async fn worker(index: u32) {
    println!("{index}");
}
