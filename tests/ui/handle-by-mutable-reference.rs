#[kamisama::main]
fn worker(worker: &mut kamisama::Worker) {
    println!("{}", worker.index());
}
