#[kamisama::main(cpu_affinity = "all")]
fn worker(index: usize) {
    println!("{index}");
}
