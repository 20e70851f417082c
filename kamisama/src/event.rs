//! What the master reports: one typed [`Event`] per thing that happens, given to the callback
//! set with [`Supervisor::on_event`](crate::Supervisor::on_event) and written to stderr as one
//! greppable line each.

use crate::config::Restart;
use nix::errno::Errno;
use std::fmt::{self, Write};
use std::time::Duration;

/// Something the master did or saw.
///
/// Its `Display` is the master's log line without the `kamisama[PID]: ` prefix, such as
/// `spawned index=3 pid=4246`. Pids are as `std::process::id` gives them; signals are their
/// numbers, as in `libc::SIGTERM`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The master started, with the settings in force (environment overrides applied).
    #[non_exhaustive]
    Started {
        /// Workers to run.
        instances: usize,
        /// Respawns allowed within `respawn_interval`.
        respawn_limit: u32,
        /// The respawn limit's window.
        respawn_interval: Duration,
        /// Time a stopping worker gets before SIGKILL.
        shutdown_timeout: Duration,
        /// When a worker that exits by itself is forked again.
        restart: Restart,
        /// The longest backoff before a respawn; zero when backoff is off.
        backoff_max: Duration,
        /// How long a worker may be silent before it is hung; zero when that is not watched.
        timeout: Duration,
    },
    /// A worker was forked.
    #[non_exhaustive]
    Spawned {
        /// Its index.
        index: usize,
        /// Its pid.
        pid: u32,
    },
    /// `fork` failed (out of pids or memory). No fork is tried until a backoff ends (100 ms,
    /// doubling with each failure in a row, up to `backoff_max` or 5 s, whichever is
    /// longer); each failure counts against the respawn limit, as a [`Respawning`] event
    /// that follows says, so a failure that persists ends in [`GaveUp`].
    ///
    /// [`Respawning`]: Event::Respawning
    /// [`GaveUp`]: Event::GaveUp
    #[non_exhaustive]
    SpawnFailed {
        /// The index that could not be forked.
        index: usize,
        /// The `errno` of `fork`.
        errno: i32,
    },
    /// A worker ended.
    #[non_exhaustive]
    Exited {
        /// Its index.
        index: usize,
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// An index is done: the restart policy does not fork it again.
    #[non_exhaustive]
    Done {
        /// The index.
        index: usize,
        /// Whether its last worker succeeded (exit status 0).
        succeeded: bool,
    },
    /// A process that was not a worker (an orphan handed to the master) ended.
    #[non_exhaustive]
    Reaped {
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// A worker that ended by itself will be forked again, after `delay`.
    #[non_exhaustive]
    Respawning {
        /// Its index.
        index: usize,
        /// Respawns within the current window, this one included.
        respawns: u32,
        /// The respawn limit.
        limit: u32,
        /// The respawn limit's window.
        interval: Duration,
        /// The backoff before the fork; zero for at once.
        delay: Duration,
    },
    /// SIGTTIN added a worker.
    #[non_exhaustive]
    ScaledUp {
        /// Workers to run now.
        instances: usize,
    },
    /// SIGTTOU retired the worker with the highest index.
    #[non_exhaustive]
    ScaledDown {
        /// Workers to run now.
        instances: usize,
        /// The index retired.
        retiring: usize,
    },
    /// SIGTTOU with one worker left, which stays.
    #[non_exhaustive]
    ScaleDownRefused {
        /// Workers to run, still.
        instances: usize,
    },
    /// SIGHUP started replacing every worker, one index at a time.
    #[non_exhaustive]
    RollingRestartStarted {
        /// Live workers to replace.
        workers: usize,
    },
    /// The rolling restart stops this worker, to fork its replacement once it has exited.
    #[non_exhaustive]
    Replacing {
        /// Its index.
        index: usize,
        /// Its pid.
        pid: u32,
    },
    /// Every worker due for replacement was replaced.
    #[non_exhaustive]
    RollingRestartFinished,
    /// SIGHUP came during a rolling restart, and was ignored.
    #[non_exhaustive]
    RollingRestartBusy,
    /// SIGUSR1 or SIGUSR2 was sent on to every live worker.
    #[non_exhaustive]
    Forwarded {
        /// The signal.
        signal: i32,
        /// Workers it was sent to.
        workers: usize,
    },
    /// A worker showed no sign of life for `timeout` (or `boot_timeout` after its fork): it
    /// gets the hang signal now, SIGKILL a second later, and is respawned as a crash.
    #[non_exhaustive]
    Hung {
        /// Its index.
        index: usize,
        /// Its pid.
        pid: u32,
        /// Since its last sign of life, or its fork.
        silent_for: Duration,
    },
    /// A worker asked to stop was still alive at its deadline, or a hung worker at the end of
    /// its grace, and got SIGKILL.
    #[non_exhaustive]
    Killed {
        /// Its index.
        index: usize,
        /// Its pid.
        pid: u32,
        /// The time it had.
        after: Duration,
    },
    /// The master stops every worker: on a signal, or with none after giving up or when
    /// every index is done.
    #[non_exhaustive]
    ShutdownStarted {
        /// The signal that asked for it.
        signal: Option<i32>,
        /// Live workers to stop.
        workers: usize,
    },
    /// TERM, INT or QUIT came from outside during a shutdown the master began itself (it gave
    /// up, or every index is done). The shutdown goes on as it was; a second TERM or INT
    /// forces it.
    #[non_exhaustive]
    ShutdownRequested {
        /// The signal.
        signal: i32,
    },
    /// A second TERM or INT from outside: everything left gets SIGKILL now.
    #[non_exhaustive]
    ShutdownForced {
        /// The signal.
        signal: i32,
        /// Live workers killed.
        workers: usize,
    },
    /// Workers died more often than the respawn limit allows.
    #[non_exhaustive]
    GaveUp {
        /// The respawn limit.
        limit: u32,
        /// Its window.
        interval: Duration,
    },
    /// No worker runs and none will be forked again (restart policies `on-failure` and
    /// `never`).
    #[non_exhaustive]
    AllDone {
        /// Indices whose last worker failed.
        failed: usize,
    },
    /// Every child is reaped; the master returns with this exit status.
    #[non_exhaustive]
    ShutdownFinished {
        /// The exit status.
        exit_code: u8,
    },
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// It exited with this code. 101 is the code of a panic.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
}

/// The exit status Rust gives a process whose main thread panicked; a worker that panics leaves
/// with it too.
pub(crate) const PANIC_EXIT_CODE: i32 = 101;

impl ExitStatus {
    /// Decodes a status from `waitpid`.
    pub(crate) fn from_raw(status: libc::c_int) -> Self {
        if libc::WIFSIGNALED(status) {
            ExitStatus::Signal(libc::WTERMSIG(status))
        } else {
            ExitStatus::Code(libc::WEXITSTATUS(status))
        }
    }

    /// Whether the process exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// Whether the process exited with the code of a panic, 101.
    pub fn panicked(self) -> bool {
        self == ExitStatus::Code(PANIC_EXIT_CODE)
    }
}

/// `0`, `1`..., `panicked`, or the signal's name: `SIGKILL`, `SIGRTMIN+3`.
impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(PANIC_EXIT_CODE) => f.write_str("panicked"),
            ExitStatus::Code(code) => write!(f, "{code}"),
            ExitStatus::Signal(signal) => SignalName(signal).fmt(f),
        }
    }
}

/// Formats a duration to the millisecond as `60s`, `1.6s`, `100ms`, and zero as `0s`
/// (without `Duration`'s `Debug`, whose code the master would otherwise have resident).
struct Span(Duration);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (seconds, millis) = (self.0.as_secs(), self.0.subsec_millis());
        match (seconds, millis) {
            (_, 0) => write!(f, "{seconds}s"),
            (0, _) => write!(f, "{millis}ms"),
            _ => {
                let (mut fraction, mut width) = (millis, 3);
                while fraction % 10 == 0 {
                    fraction /= 10;
                    width -= 1;
                }
                write!(f, "{seconds}.{fraction:0width$}s")
            }
        }
    }
}

/// Formats a signal number by name, real-time signals as `SIGRTMIN+N`.
pub(crate) struct SignalName(pub(crate) i32);

impl fmt::Display for SignalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let SignalName(number) = *self;
        match nix::sys::signal::Signal::try_from(number) {
            Ok(signal) => f.write_str(signal.as_str()),
            Err(_) if number >= libc::SIGRTMIN() => {
                write!(f, "SIGRTMIN+{}", number - libc::SIGRTMIN())
            }
            Err(_) => write!(f, "signal {number}"),
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Started {
                instances,
                respawn_limit,
                respawn_interval,
                shutdown_timeout,
                restart,
                backoff_max,
                timeout,
            } => write!(
                f,
                "started instances={instances} respawn_limit={respawn_limit} \
                 respawn_interval={} shutdown_timeout={} restart={restart} backoff_max={} \
                 timeout={}",
                Span(*respawn_interval),
                Span(*shutdown_timeout),
                Span(*backoff_max),
                Span(*timeout)
            ),
            Event::Spawned { index, pid } => write!(f, "spawned index={index} pid={pid}"),
            Event::SpawnFailed { index, errno } => write!(
                f,
                "spawn-failed index={index} error=\"{}\"",
                std::io::Error::from_raw_os_error(*errno)
            ),
            Event::Exited { index, pid, status } => {
                write!(f, "exited index={index} pid={pid} status={status}")
            }
            Event::Done { index, succeeded } => {
                write!(f, "done index={index} succeeded={succeeded}")
            }
            Event::Reaped { pid, status } => write!(f, "reaped pid={pid} status={status}"),
            Event::Respawning {
                index,
                respawns,
                limit,
                interval,
                delay,
            } => write!(
                f,
                "respawning index={index} respawns={respawns}/{limit} window={} delay={}",
                Span(*interval),
                Span(*delay)
            ),
            Event::ScaledUp { instances } => write!(f, "scaled-up instances={instances}"),
            Event::ScaledDown {
                instances,
                retiring,
            } => write!(f, "scaled-down instances={instances} retiring={retiring}"),
            Event::ScaleDownRefused { instances } => write!(
                f,
                "scale-down-refused instances={instances} reason=\"the last worker stays\""
            ),
            Event::RollingRestartStarted { workers } => {
                write!(f, "rolling-restart-started workers={workers}")
            }
            Event::Replacing { index, pid } => write!(f, "replacing index={index} pid={pid}"),
            Event::RollingRestartFinished => f.write_str("rolling-restart-finished"),
            Event::RollingRestartBusy => {
                f.write_str("rolling-restart-busy reason=\"a rolling restart is running\"")
            }
            Event::Forwarded { signal, workers } => write!(
                f,
                "forwarded signal={} workers={workers}",
                SignalName(*signal)
            ),
            Event::Hung {
                index,
                pid,
                silent_for,
            } => write!(
                f,
                "hung index={index} pid={pid} silent_for={}",
                Span(*silent_for)
            ),
            Event::Killed { index, pid, after } => {
                write!(f, "killed index={index} pid={pid} after={}", Span(*after))
            }
            Event::ShutdownStarted { signal, workers } => match signal {
                Some(signal) => write!(
                    f,
                    "shutdown-started signal={} workers={workers}",
                    SignalName(*signal)
                ),
                None => write!(f, "shutdown-started workers={workers}"),
            },
            Event::ShutdownRequested { signal } => {
                write!(f, "shutdown-requested signal={}", SignalName(*signal))
            }
            Event::ShutdownForced { signal, workers } => write!(
                f,
                "shutdown-forced signal={} workers={workers}",
                SignalName(*signal)
            ),
            Event::GaveUp { limit, interval } => write!(
                f,
                "gave-up reason=\"respawn limit exceeded\" respawn_limit={limit} \
                 respawn_interval={}",
                Span(*interval)
            ),
            Event::AllDone { failed } => write!(f, "all-done failed={failed}"),
            Event::ShutdownFinished { exit_code } => {
                write!(f, "shutdown-finished exit={exit_code}")
            }
        }
    }
}

/// The master's log on stderr: one line per event, `kamisama[PID]: LINE`.
///
/// Lines are gathered and written together, once per turn of the master's loop (before it
/// blocks) or when the buffer is full: each write to a pipe wakes whoever reads it (a
/// journal, a terminal), which the fork path cannot afford for every worker it forks. A write
/// is at most `PIPE_BUF` bytes, which a pipe takes whole, so lines from the master and its
/// workers never interleave. The buffer lives on the master's stack, as the fork path must
/// not allocate (see `Master`). A closed stderr stops nothing.
pub(crate) struct Log {
    pid: u32,
    pending: Buffer<{ libc::PIPE_BUF }>,
}

impl Log {
    pub(crate) fn new(pid: u32) -> Self {
        Log {
            pid,
            pending: Buffer::default(),
        }
    }

    /// Adds `line`, after writing what was gathered if it does not fit.
    pub(crate) fn line(&mut self, line: impl fmt::Display) {
        let mut one = Buffer::<320>::default();
        let _ = writeln!(one, "kamisama[{}]: {line}", self.pid);
        if self.pending.room() < one.len {
            self.flush();
        }
        let _ = self.pending.write_str(one.as_str());
    }

    /// Writes every line gathered.
    pub(crate) fn flush(&mut self) {
        let mut bytes = self.pending.as_str().as_bytes();
        while !bytes.is_empty() {
            match nix::unistd::write(std::io::stderr(), bytes) {
                Ok(written) => bytes = &bytes[written..],
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        self.pending.len = 0;
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Text built on the stack. What does not fit is cut short, and a cut line still ends with a
/// newline.
struct Buffer<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Default for Buffer<N> {
    fn default() -> Self {
        Buffer {
            bytes: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> Buffer<N> {
    fn room(&self) -> usize {
        N - self.len
    }

    fn as_str(&self) -> &str {
        // Only whole `str`s are copied in, cut at a character boundary.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl<const N: usize> fmt::Write for Buffer<N> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // Keep the last byte for the newline.
        let room = N - 1 - self.len;
        let mut taken = text.len().min(room);
        while !text.is_char_boundary(taken) {
            taken -= 1;
        }
        self.bytes[self.len..self.len + taken].copy_from_slice(&text.as_bytes()[..taken]);
        self.len += taken;
        if taken < text.len() {
            self.bytes[self.len] = b'\n';
            self.len += 1;
            return Err(fmt::Error);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_the_log_writes_them() {
        for (millis, text) in [
            (0, "0s"),
            (100, "100ms"),
            (1_600, "1.6s"),
            (1_250, "1.25s"),
            (60_000, "60s"),
            (12_005, "12.005s"),
        ] {
            assert_eq!(Span(Duration::from_millis(millis)).to_string(), text);
        }
    }
}
