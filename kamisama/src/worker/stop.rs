//! A cooperative worker's stop request: SIGTERM sets it from a signal handler, and the
//! worker's code reads it through [`Worker`](crate::Worker).
//!
//! The handler does only what is async-signal-safe: it stores to an atomic flag, writes one
//! byte to a pipe (whose read end then stays readable, waking every sleeper at once), and,
//! when the master is gone and nobody will send SIGKILL, arms `alarm` as a watchdog.

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::Pid;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::time::{Duration, Instant};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static PIPE_READ: AtomicI32 = AtomicI32::new(-1);
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);
static MASTER: AtomicI32 = AtomicI32::new(0);
static WATCHDOG_SECONDS: AtomicU32 = AtomicU32::new(0);

/// Makes SIGTERM a stop request in this worker. Runs before the worker's signals are
/// unblocked, so no TERM can find the default action in between.
pub(crate) fn install(master: Pid, shutdown_timeout: Duration) -> Result<(), Errno> {
    let mut fds: [RawFd; 2] = [-1; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    Errno::result(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    PIPE_READ.store(fds[0], Ordering::SeqCst);
    PIPE_WRITE.store(fds[1], Ordering::SeqCst);
    MASTER.store(master.as_raw(), Ordering::SeqCst);
    let seconds = shutdown_timeout.as_secs() + u64::from(shutdown_timeout.subsec_nanos() > 0);
    WATCHDOG_SECONDS.store(u32::try_from(seconds).unwrap_or(u32::MAX), Ordering::SeqCst);
    // SAFETY: a zeroed sigaction with an empty mask is valid; the handler is async-signal-safe.
    let result = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_term as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut())
    };
    Errno::result(result).map(drop)
}

extern "C" fn on_term(_signal: libc::c_int) {
    // SAFETY: errno is thread-local; the handler puts back what it found.
    let errno = unsafe { *libc::__errno_location() };
    REQUESTED.store(true, Ordering::SeqCst);
    let fd = PIPE_WRITE.load(Ordering::SeqCst);
    // SAFETY: write and getppid are async-signal-safe; the buffer is valid.
    unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
    // SAFETY: getppid and alarm are async-signal-safe.
    unsafe {
        if libc::getppid() != MASTER.load(Ordering::SeqCst) {
            libc::alarm(WATCHDOG_SECONDS.load(Ordering::SeqCst));
        }
        *libc::__errno_location() = errno;
    }
}

pub(crate) fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// What ended a wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Woken {
    /// The descriptor waited on is readable.
    Ready,
    /// A stop was requested; it wins over readiness.
    Stop,
    /// The time was up.
    Timeout,
}

/// Blocks until `fd` (if any) is readable, a stop is requested, or `duration` (if any) has
/// passed. Every thread waiting here wakes up on a stop, as the pipe stays readable.
pub(crate) fn wait(fd: Option<BorrowedFd<'_>>, duration: Option<Duration>) -> Woken {
    let deadline = duration.and_then(|duration| Instant::now().checked_add(duration));
    loop {
        if requested() {
            return Woken::Stop;
        }
        let timeout = match (duration, deadline) {
            (None, _) | (Some(_), None) => PollTimeout::NONE,
            (Some(_), Some(deadline)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Woken::Timeout;
                }
                // Round up, or a wait for 0.4 ms would spin until the deadline.
                PollTimeout::try_from(left.as_micros().div_ceil(1000)).unwrap_or(PollTimeout::MAX)
            }
        };
        let stop = PollFd::new(self::fd(), PollFlags::POLLIN);
        let mut fds = [
            stop,
            PollFd::new(fd.unwrap_or(self::fd()), PollFlags::POLLIN),
        ];
        let watched = if fd.is_some() { 2 } else { 1 };
        // An interrupted poll is tried again with the time left.
        let _ = poll(&mut fds[..watched], timeout);
        let ready =
            |poll_fd: &PollFd<'_>| poll_fd.revents().is_some_and(|events| !events.is_empty());
        if fd.is_some() && !requested() && ready(&fds[1]) {
            return Woken::Ready;
        }
    }
}

/// The read end of the stop pipe: readable once a stop is requested.
pub(crate) fn fd() -> BorrowedFd<'static> {
    // SAFETY: the pipe is open for the rest of the worker's life; `install` ran before any
    // `Worker` existed.
    unsafe { BorrowedFd::borrow_raw(PIPE_READ.load(Ordering::SeqCst)) }
}
