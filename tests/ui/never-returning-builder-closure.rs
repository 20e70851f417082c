// The builder takes what the attribute takes: a closure that never returns and a function of
// `&Worker`, with no adapter; the one mistake here is the closure without its argument's type.
fn by_reference(worker: &kamisama::Worker) -> ! {
    loop {
        worker.heartbeat();
    }
}

fn main() {
    let _ = kamisama::Supervisor::new().run(|index: usize| loop {
        let _ = index;
    });
    let _ = kamisama::Supervisor::new().run(by_reference);
    let _ = kamisama::Supervisor::new().run(|worker: &kamisama::Worker| worker.heartbeat());
    let _ = kamisama::Supervisor::new().run(|index| println!("{index}"));
}
