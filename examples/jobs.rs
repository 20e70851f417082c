//! A job queue worker that never drops a job: SIGTERM (a shutdown, SIGTTOU, a rolling restart)
//! lets the job in hand finish, and wakes the worker from its nap between jobs at once.
//!
//! ```text
//! cargo run --release --example jobs
//! ```
//!
//! Press Ctrl-C while a job runs: each worker says which job it finishes before it stops.
//!
//! Each job also leaves 32 MiB behind in a cache that never shrinks, as a slow leak in a
//! dependency would: after eight jobs or so a worker is past `max_memory` (256 MiB), and the
//! master recycles it (`recycling index=1 pid=... reason=memory`): its successor is forked
//! first, then it gets its stop, finishes the job in hand and leaves.

use std::time::Duration;

#[kamisama::main(instances = 3, shutdown_timeout = 30, max_memory = 268_435_456)]
fn worker(worker: kamisama::Worker) -> Result<(), String> {
    let index = worker.index();
    let mut done = 0;
    let mut leaked: Vec<Vec<u8>> = Vec::new();
    while !worker.stop_requested() {
        let job = done * 3 + index;
        println!("worker {index}: job {job} started");
        // A job that must not be cut in half, like a payment or a file upload.
        std::thread::sleep(Duration::from_secs(2));
        leaked.push(vec![1; 32 << 20]);
        println!("worker {index}: job {job} finished");
        worker.completed(1);
        done += 1;
        // Waiting for the next job: this returns at once when a stop is requested.
        worker.sleep(Duration::from_secs(5));
    }
    println!("worker {index}: stopping after {done} jobs");
    Ok(())
}
