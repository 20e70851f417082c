#[kamisama::main]
async fn worker() -> ! {
    loop {}
}
