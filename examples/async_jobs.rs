//! Async workers that finish the job in hand when asked to stop: each awaits its next job
//! (a timer standing in for a queue), runs it to the end, and leaves at the next stop check.
//! Hang detection is on: a worker whose runtime stops running tasks for 10 s is replaced.
//!
//! ```text
//! cargo run --release --example async_jobs --features tokio
//! ```
//!
//! Press Ctrl-C while jobs run: each worker says which job it finished before it stopped.

use std::time::Duration;

#[kamisama::main(instances = 3, shutdown_timeout = 30, timeout = 10)]
async fn worker(worker: kamisama::Worker) -> Result<(), String> {
    let index = worker.index();
    let mut done = 0;
    loop {
        // Waiting for work gives way to a stop at once.
        let job = tokio::select! {
            _ = worker.stopped() => break,
            job = next_job(index, done) => job,
        };
        println!("worker {index}: job {job} started");
        // A job that must not be cut in half: no stop check inside.
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!("worker {index}: job {job} finished");
        done += 1;
    }
    println!("worker {index}: stopping after {done} jobs");
    Ok(())
}

/// Stands in for a queue: the next job for this worker, a moment from now.
async fn next_job(index: usize, done: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(500)).await;
    done * 3 + index as u64
}
