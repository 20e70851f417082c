//! The public [`Worker`] handle: a worker's index and its cooperative stop.

use super::stop;
use std::os::fd::BorrowedFd;
use std::time::Duration;

/// The handle a worker function can take: its index, and the cooperative stop.
///
/// A worker whose function takes a `Worker` is not killed by SIGTERM. The TERM of a shutdown,
/// a SIGTTOU, a rolling restart, or the kernel when the master dies, instead requests a stop:
/// [`stop_requested`](Worker::stop_requested) turns true and [`sleep`](Worker::sleep) returns
/// at once, so that the worker can finish the job in hand and return. The master still sends
/// SIGKILL after `shutdown_timeout`; when the master is dead, the worker's own `alarm` does.
///
/// ```no_run
/// use std::time::Duration;
///
/// #[kamisama::main(instances = 4)]
/// fn worker(worker: kamisama::Worker) {
///     while !worker.stop_requested() {
///         // ... take one job and finish it ...
///         worker.sleep(Duration::from_secs(60)); // wakes up at once on a stop request
///     }
/// }
/// ```
///
/// # How it works
///
/// Before the worker function runs, kamisama installs a SIGTERM handler that does only what is
/// async-signal-safe: it sets an atomic flag, writes one byte to a close-on-exec pipe (the
/// worker's two extra file descriptors), and, if the master is gone, arms `alarm` for
/// `shutdown_timeout` so that SIGALRM ends a worker that would not stop. `sleep` polls the
/// pipe, so every thread sleeping on it wakes up. The worker's own subprocesses are in its
/// process group and get the TERM too, with their default action.
#[derive(Clone, Debug)]
pub struct Worker {
    pub(super) index: usize,
}

impl Worker {
    /// The worker's index, in `0..instances`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether the master (or the kernel, on the master's death) asked this worker to stop.
    pub fn stop_requested(&self) -> bool {
        stop::requested()
    }

    /// Sleeps for `duration`, or until a stop is requested, whichever comes first.
    pub fn sleep(&self, duration: Duration) {
        stop::sleep(duration);
    }

    /// A file descriptor that becomes readable when a stop is requested, to wait on with the
    /// worker's own `poll`, `epoll` or async runtime. Do not read from it.
    pub fn stop_fd(&self) -> BorrowedFd<'_> {
        stop::fd()
    }
}
