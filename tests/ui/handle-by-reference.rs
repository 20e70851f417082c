#[kamisama::main]
fn worker(worker: &kamisama::Worker) {
    println!("{}", worker.index());
}
