//! A worker's side of the fork: the setup that makes it a process of its own, the call into the
//! user's function, and an exit that never returns into master code.

use crate::config::Config;
use crate::event::PANIC_EXIT_CODE;
use crate::master::Inherited;
use crate::signals::Signals;
use crate::title::{Title, Titles};
use confine::Confinement;
use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::{fork, getppid, setpgid, ForkResult, Pid};
use shared::Half;
use std::io::Write;
use std::os::fd::RawFd;
use std::panic::{self, AssertUnwindSafe};

mod accept_wait;
#[cfg(feature = "tokio")]
mod acceptor;
pub(crate) mod confine;
pub(crate) mod forwarded;
mod function;
mod handle;
mod oom_score;
#[cfg(feature = "tokio")]
mod runtime;
pub(crate) mod shared;
mod stop;

#[cfg(feature = "tokio")]
#[cfg(feature = "tokio")]
pub use acceptor::AsyncStream;
pub use function::{WorkerFn, WorkerResult};
pub use handle::{Accept, Worker};
#[cfg(feature = "tokio")]
pub use runtime::{Async, AsyncAccept};

/// What a worker needs from the master to set itself up.
pub(crate) struct Setup<'a> {
    pub(crate) master: Pid,
    pub(crate) signals: &'a Signals,
    pub(crate) config: &'a Config,
    /// The memory shared with the workers, when the master watches hangs or readiness.
    pub(crate) shared: Option<&'a shared::SharedSlots>,
    /// How many workers the fleet runs now.
    pub(crate) fleet: usize,
    /// The master's socket to the service manager, which a worker closes.
    pub(crate) notify: Option<RawFd>,
    /// The command line's memory, for the worker's title.
    pub(crate) titles: Option<&'a Titles>,
    /// What the worker gives up before the user's code runs.
    pub(crate) confinement: &'a Confinement,
    /// What the master's reaper leaves a child to undo.
    pub(crate) inherited: Inherited,
    /// The master's metrics endpoint: its listener and open connections, which a worker
    /// closes.
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<crate::master::metrics::Fds>,
}

/// Forks a worker that runs `worker` for `index`, and returns its pid in the master.
///
/// Stdout must hold nothing buffered (the master flushes it before its loop and after each
/// event callback): anything still buffered would be written once by the master and once
/// more by every worker.
pub(crate) fn spawn<W: WorkerFn<S>, S>(
    index: usize,
    half: Half,
    worker: &mut W,
    setup: &Setup<'_>,
) -> Result<Pid, Errno> {
    let title = setup
        .titles
        .map(|titles| titles.render(format_args!("worker {index}"), format_args!("w{index}")));
    // The worker's OOM score, which it inherits; the master's own is back when this drops,
    // in the master only.
    let _lent = setup.confinement.forking();
    // SAFETY: the master runs no other thread (user threads are refused before the first
    // fork, and its reaper is a process: `master::reaper`), so the child inherits no lock
    // that another thread holds; the child runs `run_worker`, which never returns.
    match unsafe { fork() }? {
        // The worker makes its own process group. The master does not do it for it, as
        // shells do: a worker that moves to another group at once would be moved back. A stop
        // that comes before the group exists reaches the worker itself (`fleet::stop_worker`).
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            if let Some(fd) = setup.confinement.master_fd() {
                // SAFETY: the master's descriptor, which the worker must not write through
                // (it is the master's score); the worker never returns here to drop `_lent`
                // or the confinement that holds it.
                unsafe { libc::close(fd) };
            }
            run_worker(index, half, worker, setup, title.as_ref())
        }
    }
}

fn run_worker<W: WorkerFn<S>, S>(
    index: usize,
    half: Half,
    worker: &mut W,
    setup: &Setup<'_>,
    title: Option<&Title>,
) -> ! {
    // Its own process group, so that a stop reaches the worker's own subprocesses too, and
    // Ctrl-C in a terminal reaches only the master, which then stops the workers in order.
    let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
    if let (Some(titles), Some(title)) = (setup.titles, title) {
        titles.apply(title);
    }
    setup.signals.reset_in_worker();
    setup.inherited.restore();
    if let Some(fd) = setup.notify {
        // SAFETY: the master's socket, which nothing in the worker uses; it leaves with
        // `_exit`, without running the destructor that would close it again.
        unsafe { libc::close(fd) };
    }
    #[cfg(feature = "metrics")]
    for fd in setup.metrics.iter().flatten().filter(|fd| **fd >= 0) {
        // SAFETY: the master's sockets, as above: a worker must neither keep the port bound
        // nor hold a scraper's connection open.
        unsafe { libc::close(*fd) };
    }
    let handle = Worker::new(index, setup.master.as_raw() as u32, setup.config);
    if let Err(failed) = setup.confinement.apply(index) {
        handle.report_failure(&failed);
        exit(1);
    }
    // After the change of identity, which clears the death signal. Signals stay blocked until
    // the user's code runs, so none is lost in between.
    let _ = prctl::set_pdeathsig(Signal::SIGTERM);
    // The master may have died before the request above, and then no signal will ever come.
    if getppid() != setup.master {
        exit(1);
    }
    shared::install(
        setup.shared,
        index,
        half,
        setup.fleet,
        setup.master.as_raw() as u32,
    );
    if W::TAKES_HANDLE {
        if let Err(error) = stop::install(setup.master, setup.config.shutdown_timeout) {
            handle.report_failure(&error);
            exit(1);
        }
    }
    Signals::unblock_in_worker();
    let code = match panic::catch_unwind(AssertUnwindSafe(|| worker.call(handle))) {
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

/// Leaves the worker without running the master's atexit handlers or destructors.
fn exit(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(code) }
}
