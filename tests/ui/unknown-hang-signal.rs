#[kamisama::main(timeout = 30, hang_signal = "SIGCORE")]
fn worker() {}
