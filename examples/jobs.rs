//! A job queue worker that never drops a job: SIGTERM (a shutdown, SIGTTOU, a rolling restart)
//! lets the job in hand finish, and wakes the worker from its nap between jobs at once.
//!
//! ```text
//! cargo run --release --example jobs
//! ```
//!
//! Press Ctrl-C while a job runs: each worker says which job it finishes before it stops.

use std::time::Duration;

#[kamisama::main(instances = 3, shutdown_timeout = 30)]
fn worker(worker: kamisama::Worker) -> Result<(), String> {
    let index = worker.index();
    let mut done = 0;
    while !worker.stop_requested() {
        let job = done * 3 + index;
        println!("worker {index}: job {job} started");
        // A job that must not be cut in half, like a payment or a file upload.
        std::thread::sleep(Duration::from_secs(2));
        println!("worker {index}: job {job} finished");
        done += 1;
        // Waiting for the next job: this returns at once when a stop is requested.
        worker.sleep(Duration::from_secs(5));
    }
    println!("worker {index}: stopping after {done} jobs");
    Ok(())
}
