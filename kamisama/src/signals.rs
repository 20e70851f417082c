//! The master's signals: blocked before the first fork and read from a signalfd, so that no
//! signal handler runs and no code of ours has to be async-signal-safe; given back to each
//! worker as a fresh process would have them.

use crate::worker::forwarded;
use crate::Error;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

/// The signals the master acts on.
pub(crate) const HANDLED: [Signal; 10] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    // A worker's word that it completed its `max_requests`.
    Signal::SIGURG,
];

/// The master's signal state while it runs; dropping it puts back the state it found.
pub(crate) struct Signals {
    fd: SignalFd,
    previous_mask: SigSet,
    previous_actions: Vec<(Signal, SigAction)>,
    /// Signals, real-time ones included, whose disposition the master inherited or was given
    /// (a handler, or ignored) and that a worker resets to the default.
    inherited: Vec<libc::c_int>,
}

impl Signals {
    /// Blocks the handled signals, resets their dispositions to the default (an ignored SIGCHLD
    /// would make the kernel reap workers behind the master's back, an ignored SIGHUP would
    /// never reach it), but for the forwarded ones, which get the counting handler workers
    /// inherit ([`forwarded`]), and opens the signalfd they are read from.
    pub(crate) fn install() -> Result<Self, Error> {
        let handled: SigSet = HANDLED.into_iter().collect();
        let standard = Signal::iterator()
            .filter(|signal| !HANDLED.contains(signal) && !KEPT_IN_WORKER.contains(signal))
            .map(|signal| signal as libc::c_int);
        let inherited = standard
            .chain(libc::SIGRTMIN()..=libc::SIGRTMAX())
            .filter(|signal| !is_default(*signal))
            .collect();
        let fd = SignalFd::with_flags(&handled, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|errno| Error::os("signalfd", errno))?;
        let mut previous_mask = SigSet::empty();
        nix::sys::signal::sigprocmask(
            SigmaskHow::SIG_BLOCK,
            Some(&handled),
            Some(&mut previous_mask),
        )
        .map_err(|errno| Error::os("sigprocmask", errno))?;
        let mut signals = Signals {
            fd,
            previous_mask,
            previous_actions: Vec::with_capacity(HANDLED.len()),
            inherited,
        };
        for signal in HANDLED {
            // Workers inherit the forwarded signals' counting handler (it never runs in the
            // master, which keeps them blocked); the rest have the default action.
            let action = if forwarded::COUNTED.contains(&signal) {
                forwarded::counting()
            } else {
                default_action()
            };
            // SAFETY: the master runs no handler (every handled signal stays blocked), and the
            // counting handler is async-signal-safe in a worker.
            let previous = unsafe { sigaction(signal, &action) }
                .map_err(|errno| Error::os("sigaction", errno))?;
            signals.previous_actions.push((signal, previous));
        }
        Ok(signals)
    }

    /// Whether a signal is pending, without reading it: one `poll` that sets no `errno` (the
    /// master's thread-local page) and fills no buffer, for the gaps between two forks.
    pub(crate) fn pending(&self) -> bool {
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).is_ok_and(|ready| ready > 0)
    }

    /// Blocks until a signal is pending, one of `also` has an event, or `timeout` has passed;
    /// `None` waits for ever.
    pub(crate) fn wait<'a>(
        &self,
        timeout: Option<Duration>,
        also: impl Iterator<Item = PollFd<'a>>,
    ) -> Result<(), Errno> {
        let timeout = match timeout {
            None => PollTimeout::NONE,
            // Round up, or a wait for 0.4 ms would spin until the deadline.
            Some(timeout) => {
                let millis = timeout.as_micros().div_ceil(1000);
                PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
            }
        };
        let signals = || PollFd::new(self.fd.as_fd(), PollFlags::POLLIN);
        // On the stack: the upgrade's pipe, the reaper's, the metrics endpoint's listener and
        // connections. Any past its room would only be looked at on the next wakeup.
        let mut fds: [PollFd<'_>; 16] = std::array::from_fn(|_| signals());
        let mut watched = 1;
        for (place, fd) in fds[1..].iter_mut().zip(also) {
            *place = fd;
            watched += 1;
        }
        match poll(&mut fds[..watched], timeout) {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(errno) => Err(errno),
        }
    }

    /// The signals pending now, in the order the kernel hands them out (lowest number
    /// first), without blocking. Signals of one kind coalesce, so a batch holds a few at most;
    /// any past its room stay pending for the next.
    ///
    /// Read four at a time: a read that returns fewer has emptied the queue, so that no read
    /// failing with `EAGAIN` ends the batch (a write of `errno`, on the thread-local page,
    /// which the master copies once after each fork).
    pub(crate) fn batch(&self) -> Batch {
        const AT_ONCE: usize = 4;
        const RECORD: usize = std::mem::size_of::<libc::signalfd_siginfo>();
        let mut batch = Batch([None; 16]);
        let mut filled = 0;
        while filled + AT_ONCE <= batch.0.len() {
            // SAFETY: zeroed bytes are a valid `signalfd_siginfo`.
            let mut infos: [libc::signalfd_siginfo; AT_ONCE] = unsafe { std::mem::zeroed() };
            // SAFETY: the buffer is valid for its length; a signalfd fills whole records.
            let read = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    infos.as_mut_ptr().cast(),
                    std::mem::size_of_val(&infos),
                )
            };
            // -1: none pending (`EAGAIN`).
            let Ok(read) = usize::try_from(read) else {
                break;
            };
            for info in &infos[..read / RECORD] {
                if let Ok(signal) = Signal::try_from(info.ssi_signo as i32) {
                    batch.0[filled] = Some(Received {
                        signal,
                        sender: info.ssi_pid,
                        code: info.ssi_code,
                    });
                    filled += 1;
                }
            }
            if read < std::mem::size_of_val(&infos) {
                break;
            }
        }
        batch
    }

    /// In a freshly forked worker: closes the signalfd and gives every signal the disposition
    /// it has in a new Rust process: the default action but for SIGPIPE (ignored, as Rust's
    /// runtime sets it) and the fault signals' crash handlers. The signals stay blocked until
    /// [`unblock_in_worker`](Signals::unblock_in_worker).
    pub(crate) fn reset_in_worker(&self) {
        let default = libc::sigaction::from(default_action());
        for signal in &self.inherited {
            // SAFETY: installing SIG_DFL runs no code of ours in signal context; the pointers
            // are valid for the call.
            unsafe { libc::sigaction(*signal, &default, std::ptr::null_mut()) };
        }
        // SAFETY: the fd is the signalfd this process owns; the worker never touches `self.fd`
        // again, as it leaves with `_exit` without running destructors.
        unsafe { libc::close(self.fd.as_raw_fd()) };
    }

    /// In a worker, after its dispositions are set: no signal blocked, as in a new process.
    /// Signals that came since the fork are delivered now.
    pub(crate) fn unblock_in_worker() {
        let _ = SigSet::empty().thread_set_mask();
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        // Discard what is pending, so that unblocking does not apply a default action to it.
        while self.fd.read_signal().is_ok_and(|info| info.is_some()) {}
        for (signal, action) in self.previous_actions.drain(..).rev() {
            // SAFETY: this puts back a disposition the process had before `install`.
            let _ = unsafe { sigaction(signal, &action) };
        }
        let _ = self.previous_mask.thread_set_mask();
    }
}

/// Signals read together; on the stack, as the fork path must not allocate.
pub(crate) struct Batch([Option<Received>; 16]);

/// A signal read from the signalfd.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Received {
    pub(crate) signal: Signal,
    /// The pid of the process that sent it (0 for the kernel); for SIGCHLD, of the child.
    pub(crate) sender: u32,
    /// Why it was sent (`si_code`): for SIGCHLD, `CLD_EXITED` and the like.
    pub(crate) code: i32,
}

impl Batch {
    pub(crate) fn iter(&self) -> impl Iterator<Item = Received> + '_ {
        self.0.iter().map_while(|signal| *signal)
    }
}

fn default_action() -> SigAction {
    SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty())
}

/// Signals whose disposition a worker keeps: those that cannot change, SIGPIPE (ignored by
/// Rust's runtime in every program), and the synchronous fault signals, whose handlers are
/// crash reporters meant for every process (Rust's own reports stack overflows).
const KEPT_IN_WORKER: [Signal; 7] = [
    Signal::SIGKILL,
    Signal::SIGSTOP,
    Signal::SIGPIPE,
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGILL,
    Signal::SIGFPE,
];

/// Whether `signal` is at its default disposition.
fn is_default(signal: libc::c_int) -> bool {
    // SAFETY: a zeroed `sigaction` is a valid out-parameter, and a null new action only
    // queries the disposition.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call.
    let result = unsafe { libc::sigaction(signal, std::ptr::null(), &mut current) };
    result != 0 || current.sa_sigaction == libc::SIG_DFL
}
