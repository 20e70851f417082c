//! A parallel batch runner: eight shards, each run once; a shard that fails is retried
//! (within the respawn limit), and the program ends when every shard is done, with status 0
//! if all of them succeeded.
//!
//! ```text
//! cargo run --release --example batch
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

#[kamisama::main(
    instances = 8,
    restart = "on-failure",
    respawn_limit = 5,
    backoff_max = 2
)]
fn shard(index: usize) -> Result<(), String> {
    // Stands in for a flaky dependency: about one attempt in three fails.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |now| now.subsec_nanos());
    if (nanos as usize + index) % 3 == 0 {
        return Err(format!("shard {index}: the upstream timed out"));
    }
    let checksum: u64 = (0..5_000_000u64).fold(index as u64, |sum, n| sum.wrapping_mul(31) ^ n);
    println!("shard {index}: done, checksum {checksum:016x}");
    Ok(())
}
