//! Seventeen workers crunching data, supervised by one master.
//!
//! ```text
//! cargo run --release --example crunch
//! ```
//!
//! Then, from another terminal, with the master's pid from its first log line:
//! `kill -TTIN PID` starts an 18th worker, `kill -TTOU PID` retires it, `kill -KILL WORKER_PID`
//! shows a respawn, and Ctrl-C (or `kill -TERM PID`) stops everything.

use std::time::Duration;

#[kamisama::main(instances = 17, respawn_limit = 10, respawn_interval = 60)]
fn worker(worker: &kamisama::Worker) {
    let index = worker.index();
    let mut batch = 0u64;
    while !worker.stop_requested() {
        batch += 1;
        let checksum = crunch(index, batch);
        // Counted in the status file and the metrics: work done, per worker.
        worker.completed(1);
        println!("worker {index}: batch {batch} crunched, checksum {checksum:016x}");
        // Idle until the next batch, as the metrics tell (busy 0); a stop ends it at once.
        worker.sleep(Duration::from_secs(5));
    }
}

/// Stands in for real work: a few milliseconds of hashing.
fn crunch(index: usize, batch: u64) -> u64 {
    let mut state = (index as u64) << 32 | batch;
    for _ in 0..1_000_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
    }
    state
}
