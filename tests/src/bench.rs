//! The worker both benchmark masters run: it reports the moment it starts, then waits for ever.

/// Reports the worker's start, then sleeps until a signal ends the process.
pub fn worker(index: usize) -> ! {
    report(index);
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}

/// Writes `INDEX PID NANOS\n` to stdout in one `write`, `NANOS` read from `CLOCK_MONOTONIC`
/// now, as the worker function starts.
pub fn report(index: usize) {
    let started = monotonic_nanos();
    let line = format!("{index} {} {started}\n", std::process::id());
    // SAFETY: the buffer is valid for its length; a line this short is written whole.
    unsafe { libc::write(1, line.as_ptr().cast(), line.len()) };
}

/// Nanoseconds on `CLOCK_MONOTONIC`, the clock every process on the machine shares.
pub fn monotonic_nanos() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
