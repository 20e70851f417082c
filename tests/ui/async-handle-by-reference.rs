#[kamisama::main]
async fn worker(worker: &kamisama::Worker) {
    println!("{}", worker.index());
}
