//! The signals the master forwards to every worker (USR1, the operators' "reopen your logs"),
//! made harmless to a worker that did not ask for them: their default action would end it,
//! and every such death would count against the respawn limit until the fleet gave up.
//!
//! Each worker starts with a handler for USR1 and USR2 that only counts them, as an atomic
//! add (async-signal-safe), read through [`Worker::received`](crate::Worker::received). A
//! worker that wants to wait for them installs its own handler instead (signal-hook,
//! `tokio::signal::unix`), which replaces this one; a program the worker execs gets the
//! default action back, as exec resets every handler.
//!
//! The master installs the handler for itself, where it never runs (the master blocks both
//! signals and reads them from its signalfd), and each worker inherits it with the fork:
//! no system call in the worker, which has it before its first instruction.

use crate::config::Signal;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet};
use std::sync::atomic::{AtomicU32, Ordering};

static USR1: AtomicU32 = AtomicU32::new(0);
static USR2: AtomicU32 = AtomicU32::new(0);

/// The counter of `signal`, if it is one this module counts.
fn counter(signal: libc::c_int) -> Option<&'static AtomicU32> {
    match signal {
        libc::SIGUSR1 => Some(&USR1),
        libc::SIGUSR2 => Some(&USR2),
        _ => None,
    }
}

extern "C" fn count(signal: libc::c_int) {
    if let Some(counter) = counter(signal) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The signals counted here.
pub(crate) const COUNTED: [nix::sys::signal::Signal; 2] = [
    nix::sys::signal::Signal::SIGUSR1,
    nix::sys::signal::Signal::SIGUSR2,
];

/// The counting handler's disposition: the handler only adds to an atomic, which is
/// async-signal-safe; `SA_RESTART` keeps the worker's own blocking calls from failing with
/// `EINTR`.
pub(crate) fn counting() -> SigAction {
    SigAction::new(
        SigHandler::Handler(count),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    )
}

/// How many times `signal` came since the last call (0 for a signal not counted here).
pub(crate) fn take(signal: Signal) -> u32 {
    counter(signal.as_raw()).map_or(0, |counter| counter.swap(0, Ordering::Relaxed))
}
