#[kamisama::main(listen = ["127.0.0.1", "unix:", "localhost:http", ":8080"])]
fn worker() {}
