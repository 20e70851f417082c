//! A worker's side of the fork: the setup that makes it a process of its own, the call into the
//! user's function, and an exit that never returns into master code.

use crate::event::PANIC_EXIT_CODE;
use crate::signals::Signals;
use crate::stop;
use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::{fork, getppid, setpgid, ForkResult, Pid};
use std::fmt::Debug;
use std::io::Write;
use std::os::fd::BorrowedFd;
use std::panic::{self, AssertUnwindSafe};
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
    index: usize,
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

/// A function kamisama can run as a worker.
///
/// Implemented for every `FnMut` with one of these signatures, where `R` is `()` or
/// `Result<(), E>` with `E: Debug`:
///
/// - `fn() -> R`
/// - `fn(index: usize) -> R`
/// - `fn(worker: Worker) -> R`, for a [cooperative stop](Worker).
///
/// A worker that returns `Err(error)` prints `kamisama[PID]: worker-failed index=I
/// error={error:?}` to stderr and exits with status 1, as `main` does.
///
/// A closure passed to [`Supervisor::run`](crate::Supervisor::run) needs the type of its
/// argument written out, as in `|index: usize|`, since that is what picks the signature; and
/// a closure that never returns needs its return type too, `-> ()`, or the compiler cannot
/// tell which `R` it has:
///
/// ```no_run
/// kamisama::Supervisor::new().instances(4).run(|index: usize| -> () {
///     loop {
///         println!("worker {index}");
///         std::thread::sleep(std::time::Duration::from_secs(1));
///     }
/// });
/// ```
pub trait WorkerFn<Signature>: sealed::Sealed<Signature> {
    #[doc(hidden)]
    const TAKES_HANDLE: bool;

    #[doc(hidden)]
    fn call(&mut self, index: usize) -> i32;
}

/// What a worker function may return.
pub trait WorkerResult: sealed::Sealed<()> {
    #[doc(hidden)]
    fn exit_code(self, index: usize) -> i32;
}

impl WorkerResult for () {
    fn exit_code(self, _index: usize) -> i32 {
        0
    }
}

impl<E: Debug> WorkerResult for Result<(), E> {
    fn exit_code(self, index: usize) -> i32 {
        match self {
            Ok(()) => 0,
            Err(error) => {
                report_failure(index, &error);
                1
            }
        }
    }
}

impl<F: FnMut() -> R, R: WorkerResult> WorkerFn<fn() -> R> for F {
    const TAKES_HANDLE: bool = false;

    fn call(&mut self, index: usize) -> i32 {
        self().exit_code(index)
    }
}

impl<F: FnMut(usize) -> R, R: WorkerResult> WorkerFn<fn(usize) -> R> for F {
    const TAKES_HANDLE: bool = false;

    fn call(&mut self, index: usize) -> i32 {
        self(index).exit_code(index)
    }
}

impl<F: FnMut(Worker) -> R, R: WorkerResult> WorkerFn<fn(Worker) -> R> for F {
    const TAKES_HANDLE: bool = true;

    fn call(&mut self, index: usize) -> i32 {
        self(Worker { index }).exit_code(index)
    }
}

mod sealed {
    use super::{Worker, WorkerResult};

    pub trait Sealed<Signature> {}

    impl Sealed<()> for () {}
    impl<E> Sealed<()> for Result<(), E> {}
    impl<F: FnMut() -> R, R: WorkerResult> Sealed<fn() -> R> for F {}
    impl<F: FnMut(usize) -> R, R: WorkerResult> Sealed<fn(usize) -> R> for F {}
    impl<F: FnMut(Worker) -> R, R: WorkerResult> Sealed<fn(Worker) -> R> for F {}
}

/// What a worker needs from the master to set itself up.
pub(crate) struct Setup<'a> {
    pub(crate) master: Pid,
    pub(crate) signals: &'a Signals,
    pub(crate) shutdown_timeout: Duration,
}

/// Forks a worker that runs `worker` for `index`, and returns its pid in the master.
///
/// The caller flushes stdout first: anything still buffered would be written once by the
/// master and once more by every worker.
pub(crate) fn spawn<W: WorkerFn<S>, S>(
    index: usize,
    worker: &mut W,
    setup: &Setup<'_>,
) -> Result<Pid, Errno> {
    // SAFETY: the master is single-threaded (checked before its first fork), so the child
    // inherits no lock that another thread holds; the child runs `run_worker`, which never
    // returns.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            // The worker does the same: whichever runs first, the group exists before the
            // master can signal it.
            let _ = setpgid(child, child);
            Ok(child)
        }
        ForkResult::Child => run_worker(index, worker, setup),
    }
}

fn run_worker<W: WorkerFn<S>, S>(index: usize, worker: &mut W, setup: &Setup<'_>) -> ! {
    // Its own process group, so that a stop reaches the worker's own subprocesses too, and
    // Ctrl-C in a terminal reaches only the master, which then stops the workers in order.
    let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
    let _ = prctl::set_pdeathsig(Signal::SIGTERM);
    // The master may have died before the request above, and then no signal will ever come.
    if getppid() != setup.master {
        exit(1);
    }
    setup.signals.reset_in_worker();
    if W::TAKES_HANDLE {
        if let Err(error) = stop::install(setup.master, setup.shutdown_timeout) {
            report_failure(index, &error);
            exit(1);
        }
    }
    Signals::unblock_in_worker();
    let code = match panic::catch_unwind(AssertUnwindSafe(|| worker.call(index))) {
        Ok(code) => code,
        Err(payload) => {
            // The default hook has printed the message; dropping the payload could panic again.
            std::mem::forget(payload);
            PANIC_EXIT_CODE
        }
    };
    let _ = std::io::stdout().flush();
    exit(code)
}

/// Writes `kamisama[PID]: worker-failed index=I error={error:?}` in one `write`, so that it
/// does not interleave with other workers' output as `eprintln!`'s several writes can.
fn report_failure(index: usize, error: &dyn Debug) {
    let pid = std::process::id();
    let line = format!("kamisama[{pid}]: worker-failed index={index} error={error:?}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Leaves the worker without running the master's atexit handlers or destructors.
fn exit(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(code) }
}
