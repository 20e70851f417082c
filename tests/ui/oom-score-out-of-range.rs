#[kamisama::main(oom_score_adj = -1001)]
fn worker(index: usize) {
    println!("{index}");
}
