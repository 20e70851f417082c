#[kamisama::main(instances = "many")]
fn worker(index: usize) {
    println!("{index}");
}
