#[kamisama::main(instances = 0)]
fn main(index: usize) {
    println!("{index}");
}
