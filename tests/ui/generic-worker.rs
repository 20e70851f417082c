#[kamisama::main]
fn worker<T: Default>(index: usize) {
    let _ = T::default();
    println!("{index}");
}
