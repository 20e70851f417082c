#[kamisama::main(no_new_privs = "yes")]
fn worker(index: usize) {
    println!("{index}");
}
