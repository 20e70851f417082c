//! What the master reports: one typed [`Event`] per thing that happens, given to the callback
//! set with [`Supervisor::on_event`](crate::Supervisor::on_event) and written to stderr as one
//! greppable line each.

use crate::config::Restart;
use std::fmt;
use std::time::Duration;

/// Something the master did or saw.
///
/// Its `Display` is the master's log line without the `kamisama[PID]: ` prefix, such as
/// `spawned index=3 pid=4246`, and [`name`](Event::name) its first word, which never changes.
/// Pids are as `std::process::id` gives them; signals are their numbers, as in
/// `libc::SIGTERM`.
///
/// New kinds of events may come in a minor version, so a `match` ends with `_ =>`; the
/// fields of each kind are complete (a pattern names them without `..`), but for
/// [`Started`](Event::Started), which gains a field with each new setting:
///
/// ```
/// use kamisama::Event;
///
/// fn watch(event: &Event, crashes: &mut u64) {
///     match event {
///         Event::Exited { index, pid, status, stopped: false } if !status.success() => {
///             *crashes += 1;
///             eprintln!("worker {index} (pid {pid}) failed: {status}");
///         }
///         Event::GaveUp { limit, interval } => {
///             eprintln!("more than {limit} respawns in {interval:?}: giving up");
///         }
///         _ => {}
///     }
/// }
/// ```
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
    /// The fleet listens on this address, for its workers to accept on.
    Listening {
        /// `127.0.0.1:8080` or `unix:/run/app.sock`.
        address: String,
    },
    /// Every worker is ready (forked, or declared ready with
    /// [`Readiness::Declared`](crate::Readiness::Declared)): the fleet's start, or a rolling
    /// restart, is done. Said each time the fleet becomes ready.
    Ready {
        /// Workers running.
        workers: usize,
    },
    /// A worker was forked.
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
    SpawnFailed {
        /// The index that could not be forked.
        index: usize,
        /// The `errno` of `fork`.
        errno: i32,
    },
    /// A worker ended.
    Exited {
        /// Its index.
        index: usize,
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
        /// Whether the master had asked it to stop (a shutdown, `TTOU`, a rolling restart):
        /// then its end is an orderly one, whatever its status, but for a hang.
        stopped: bool,
    },
    /// An index is done: the restart policy does not fork it again.
    Done {
        /// The index.
        index: usize,
        /// Whether its last worker succeeded (exit status 0).
        succeeded: bool,
    },
    /// A process that was not a worker (an orphan handed to the master) ended.
    Reaped {
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// A worker that ended by itself will be forked again, after `delay`.
    Respawning {
        /// Its index.
        index: usize,
        /// Respawns within the current window, this one included if it counts; with
        /// `restart = "on-failure"`, the index's own.
        respawns: u32,
        /// The respawn limit.
        limit: u32,
        /// The respawn limit's window.
        interval: Duration,
        /// The backoff before the fork; zero for at once.
        delay: Duration,
        /// Whether it counts against the limit: not for a worker that exited with status 0
        /// after its first second, which recycled itself.
        counted: bool,
    },
    /// With `restart = "on-failure"`, a shard failed more often than the respawn limit allows
    /// it: it is done, failed, and the others go on.
    ShardGaveUp {
        /// The index.
        index: usize,
        /// The respawn limit, per shard.
        limit: u32,
        /// Its window.
        interval: Duration,
    },
    /// SIGTTIN added a worker.
    ScaledUp {
        /// Workers to run now.
        instances: usize,
    },
    /// SIGTTOU retired the worker with the highest index.
    ScaledDown {
        /// Workers to run now.
        instances: usize,
        /// The index retired.
        retiring: usize,
    },
    /// SIGTTOU with one worker left, which stays.
    ScaleDownRefused {
        /// Workers to run, still.
        instances: usize,
    },
    /// SIGHUP started replacing every worker, one index at a time.
    RollingRestartStarted {
        /// Live workers to replace.
        workers: usize,
    },
    /// The rolling restart replaces this worker: its successor is forked at its index, and
    /// the worker is stopped once the successor is ready.
    Replacing {
        /// Its index.
        index: usize,
        /// Its pid.
        pid: u32,
    },
    /// A worker reached its `max_lifetime` or its `max_requests`: its successor is forked at
    /// its index, and it is stopped once the successor is ready. Its exit follows, as
    /// `Exited` with `stopped`.
    #[non_exhaustive]
    Recycling {
        /// Its index.
        index: usize,
        /// Its pid.
        pid: u32,
        /// Which limit it reached: `"lifetime"` or `"requests"`.
        reason: &'static str,
        /// How long it ran.
        lived: Duration,
        /// Units of work it completed ([`Worker::completed`](crate::Worker::completed), or a
        /// request each for kamisama's servers), when the workers publish their counts.
        completed: Option<u64>,
    },
    /// Every worker due for replacement was replaced.
    RollingRestartFinished,
    /// SIGHUP came during a rolling restart, and was ignored.
    RollingRestartBusy,
    /// SIGUSR1 or SIGUSR2 was sent on to every live worker.
    Forwarded {
        /// The signal.
        signal: i32,
        /// Workers it was sent to.
        workers: usize,
    },
    /// A worker showed no sign of life for `timeout` (or `boot_timeout` after its fork): it
    /// gets the hang signal now, SIGKILL `hang_grace` later, and is respawned as a crash.
    Hung {
        /// Its index.
        index: usize,
        /// Its pid.
        pid: u32,
        /// Since its last sign of life, or its fork.
        silent_for: Duration,
    },
    /// With [`Readiness::Declared`](crate::Readiness::Declared), a worker did not call
    /// [`Worker::ready`](crate::Worker::ready) within `boot_timeout` of its fork: a start-up
    /// that hangs. It is treated as [`Hung`](Event::Hung): the hang signal now, SIGKILL
    /// `hang_grace` later, and a respawn counted as a crash.
    NotReady {
        /// Its index.
        index: usize,
        /// Its pid.
        pid: u32,
        /// Since its fork.
        after: Duration,
    },
    /// A worker asked to stop was still alive at its deadline, or a hung worker at the end of
    /// its grace, and got SIGKILL.
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
    ShutdownStarted {
        /// The signal that asked for it.
        signal: Option<i32>,
        /// Live workers to stop.
        workers: usize,
    },
    /// TERM, INT or QUIT came from outside during a shutdown the master began itself (it gave
    /// up, or every index is done). The shutdown goes on as it was; a second TERM or INT
    /// forces it.
    ShutdownRequested {
        /// The signal.
        signal: i32,
    },
    /// A second TERM or INT from outside: everything left gets SIGKILL now.
    ShutdownForced {
        /// The signal.
        signal: i32,
        /// Live workers killed.
        workers: usize,
    },
    /// Workers died more often than the respawn limit allows.
    GaveUp {
        /// The respawn limit.
        limit: u32,
        /// Its window.
        interval: Duration,
    },
    /// No worker runs and none will be forked again (restart policies `on-failure` and
    /// `never`).
    AllDone {
        /// Indices whose last worker failed, lowest first.
        failed: Vec<usize>,
    },
    /// USR2 started an upgrade: a new master runs the program again, from the path it was
    /// started with, on the same listeners.
    UpgradeStarted {
        /// The new master.
        pid: u32,
        /// The program it runs.
        path: String,
    },
    /// USR2 came while an upgrade was under way, and was ignored.
    UpgradeBusy,
    /// The new master's fleet is ready: this master stops its own workers and exits, and the
    /// new one serves on.
    UpgradeHandingOver {
        /// The new master.
        pid: u32,
    },
    /// The new master's fleet is ready and serves; this master stops its own workers, and
    /// stays for the upgrade's trial, ready to fork them again should the new fleet fail.
    UpgradeTrial {
        /// The new master.
        pid: u32,
        /// How long the trial lasts.
        trial: Duration,
    },
    /// In the new master of an upgrade, during its trial: a worker crashed or hung, or the
    /// master is stopping. It stops its fleet, and the old master forks its own again.
    UpgradeTrialFailed {
        /// Why.
        reason: String,
    },
    /// In the new master of an upgrade: the old master handed over, and this one is the
    /// service's main process.
    UpgradeDone {
        /// The old master.
        old: u32,
    },
    /// The new master did not get its fleet ready: it is stopped, and this master serves on.
    UpgradeFailed {
        /// The new master, or 0 if none could be started.
        pid: u32,
        /// Why.
        reason: String,
    },
    /// Every child is reaped; the master returns with this exit status.
    ShutdownFinished {
        /// The exit status.
        exit_code: u8,
    },
}

/// How a process ended.
///
/// ```no_run
/// use kamisama::{Event, ExitStatus};
///
/// fn on_event(event: &Event) {
///     if let Event::Exited { status: ExitStatus::Signal(signal), index, .. } = event {
///         eprintln!("worker {index} was killed by signal {signal}");
///     }
/// }
/// ```
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
    ///
    /// ```
    /// assert!(kamisama::ExitStatus::Code(0).success());
    /// assert!(!kamisama::ExitStatus::Signal(libc::SIGKILL).success());
    /// ```
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// Whether the process exited with the code of a panic, 101.
    ///
    /// ```
    /// assert!(kamisama::ExitStatus::Code(101).panicked());
    /// ```
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

/// Formats a duration in seconds, to the millisecond, as `60s`, `1.6s`, `0.1s`, and zero as
/// `0s`: one unit everywhere (without `Duration`'s `Debug`, whose code the master would
/// otherwise have resident).
struct Span(Duration);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (seconds, millis) = (self.0.as_secs(), self.0.subsec_millis());
        match (seconds, millis) {
            (_, 0) => write!(f, "{seconds}s"),
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

impl Event {
    /// The event's stable name, as the log writes it: `started`, `spawned`, `exited`...
    /// Names never change between versions; events may be added.
    ///
    /// ```
    /// let event = kamisama::Event::Spawned { index: 3, pid: 4246 };
    /// assert_eq!(event.name(), "spawned");
    /// assert_eq!(event.to_string(), "spawned index=3 pid=4246");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            Event::Started { .. } => "started",
            Event::Listening { .. } => "listening",
            Event::Ready { .. } => "ready",
            Event::Spawned { .. } => "spawned",
            Event::SpawnFailed { .. } => "spawn-failed",
            Event::Exited { .. } => "exited",
            Event::Done { .. } => "done",
            Event::Reaped { .. } => "reaped",
            Event::Respawning { .. } => "respawning",
            Event::ShardGaveUp { .. } => "shard-gave-up",
            Event::ScaledUp { .. } => "scaled-up",
            Event::ScaledDown { .. } => "scaled-down",
            Event::ScaleDownRefused { .. } => "scale-down-refused",
            Event::RollingRestartStarted { .. } => "rolling-restart-started",
            Event::Replacing { .. } => "replacing",
            Event::Recycling { .. } => "recycling",
            Event::RollingRestartFinished => "rolling-restart-finished",
            Event::RollingRestartBusy => "rolling-restart-busy",
            Event::Forwarded { .. } => "forwarded",
            Event::Hung { .. } => "hung",
            Event::NotReady { .. } => "not-ready",
            Event::Killed { .. } => "killed",
            Event::ShutdownStarted { .. } => "shutdown-started",
            Event::ShutdownRequested { .. } => "shutdown-requested",
            Event::ShutdownForced { .. } => "shutdown-forced",
            Event::GaveUp { .. } => "gave-up",
            Event::AllDone { .. } => "all-done",
            Event::ShutdownFinished { .. } => "shutdown-finished",
            Event::UpgradeStarted { .. } => "upgrade-started",
            Event::UpgradeBusy => "upgrade-busy",
            Event::UpgradeHandingOver { .. } => "upgrade-handing-over",
            Event::UpgradeTrial { .. } => "upgrade-trial",
            Event::UpgradeTrialFailed { .. } => "upgrade-trial-failed",
            Event::UpgradeDone { .. } => "upgrade-done",
            Event::UpgradeFailed { .. } => "upgrade-failed",
        }
    }

    /// How much an operator should care: the `level` of a JSON log line.
    pub(crate) fn level(&self) -> Level {
        match self {
            Event::SpawnFailed { .. } | Event::GaveUp { .. } => Level::Error,
            Event::Hung { .. }
            | Event::NotReady { .. }
            | Event::Killed { .. }
            | Event::ScaleDownRefused { .. }
            | Event::RollingRestartBusy
            | Event::UpgradeBusy
            | Event::UpgradeFailed { .. }
            | Event::UpgradeTrialFailed { .. }
            | Event::ShutdownForced { .. } => Level::Warn,
            Event::Exited {
                status,
                stopped: false,
                ..
            } if !status.success() => Level::Warn,
            Event::Done {
                succeeded: false, ..
            } => Level::Warn,
            Event::AllDone { failed } if !failed.is_empty() => Level::Warn,
            Event::ShardGaveUp { .. } => Level::Error,
            _ => Level::Info,
        }
    }

    /// Hands each of the event's fields to `field`, in the order the log writes them.
    pub(crate) fn fields(&self, field: &mut dyn FnMut(&'static str, Value<'_>)) {
        use Value::{Count, Flag, Signal, Span, Status, Text};
        match self {
            Event::Started {
                instances,
                respawn_limit,
                respawn_interval,
                shutdown_timeout,
                restart,
                backoff_max,
                timeout,
            } => {
                field("instances", Count(*instances as u64));
                field("respawn_limit", Count(u64::from(*respawn_limit)));
                field("respawn_interval", Span(*respawn_interval));
                field("shutdown_timeout", Span(*shutdown_timeout));
                field("restart", Value::Word(restart.name()));
                field("backoff_max", Span(*backoff_max));
                field("timeout", Span(*timeout));
            }
            Event::Listening { address } => field("address", Value::Word(address)),
            Event::Spawned { index, pid } | Event::Replacing { index, pid } => {
                field("index", Count(*index as u64));
                field("pid", Count(u64::from(*pid)));
            }
            Event::SpawnFailed { index, errno } => {
                field("index", Count(*index as u64));
                field("error", Value::Errno(*errno));
            }
            Event::Exited {
                index,
                pid,
                status,
                stopped,
            } => {
                field("index", Count(*index as u64));
                field("pid", Count(u64::from(*pid)));
                field("status", Status(*status));
                if *stopped {
                    field("stopped", Flag(true));
                }
            }
            Event::Done { index, succeeded } => {
                field("index", Count(*index as u64));
                field("succeeded", Flag(*succeeded));
            }
            Event::Reaped { pid, status } => {
                field("pid", Count(u64::from(*pid)));
                field("status", Status(*status));
            }
            Event::Respawning {
                index,
                respawns,
                limit,
                interval,
                delay,
                counted,
            } => {
                field("index", Count(*index as u64));
                field("respawns", Count(u64::from(*respawns)));
                field("limit", Count(u64::from(*limit)));
                field("window", Span(*interval));
                field("delay", Span(*delay));
                if !counted {
                    field("counted", Flag(false));
                }
            }
            Event::ShardGaveUp {
                index,
                limit,
                interval,
            } => {
                field("index", Count(*index as u64));
                field("respawn_limit", Count(u64::from(*limit)));
                field("respawn_interval", Span(*interval));
            }
            Event::ScaledUp { instances } => field("instances", Count(*instances as u64)),
            Event::ScaledDown {
                instances,
                retiring,
            } => {
                field("instances", Count(*instances as u64));
                field("retiring", Count(*retiring as u64));
            }
            Event::ScaleDownRefused { instances } => {
                field("instances", Count(*instances as u64));
                field("reason", Text("the last worker stays"));
            }
            Event::RollingRestartStarted { workers } | Event::Ready { workers } => {
                field("workers", Count(*workers as u64));
            }
            Event::RollingRestartFinished => {}
            Event::RollingRestartBusy => field("reason", Text("a rolling restart is running")),
            Event::Forwarded { signal, workers } => {
                field("signal", Signal(*signal));
                field("workers", Count(*workers as u64));
            }
            Event::Hung {
                index,
                pid,
                silent_for,
            } => {
                field("index", Count(*index as u64));
                field("pid", Count(u64::from(*pid)));
                field("silent_for", Span(*silent_for));
            }
            Event::NotReady { index, pid, after } | Event::Killed { index, pid, after } => {
                field("index", Count(*index as u64));
                field("pid", Count(u64::from(*pid)));
                field("after", Span(*after));
            }
            Event::ShutdownStarted { signal, workers } => {
                if let Some(signal) = signal {
                    field("signal", Signal(*signal));
                }
                field("workers", Count(*workers as u64));
            }
            Event::ShutdownRequested { signal } => field("signal", Signal(*signal)),
            Event::ShutdownForced { signal, workers } => {
                field("signal", Signal(*signal));
                field("workers", Count(*workers as u64));
            }
            Event::GaveUp { limit, interval } => {
                field("reason", Text("respawn limit exceeded"));
                field("respawn_limit", Count(u64::from(*limit)));
                field("respawn_interval", Span(*interval));
            }
            Event::AllDone { failed } => {
                field("failed", Count(failed.len() as u64));
                if !failed.is_empty() {
                    field("indices", Value::Indices(failed));
                }
            }
            Event::ShutdownFinished { exit_code } => field("exit", Count(u64::from(*exit_code))),
            Event::UpgradeStarted { pid, path } => {
                field("pid", Count(u64::from(*pid)));
                field("path", Value::Word(path));
            }
            Event::UpgradeBusy => field("reason", Text("an upgrade is under way")),
            Event::UpgradeHandingOver { pid } => field("pid", Count(u64::from(*pid))),
            Event::UpgradeTrial { pid, trial } => {
                field("pid", Count(u64::from(*pid)));
                field("for", Span(*trial));
            }
            Event::UpgradeTrialFailed { reason } => field("reason", Text(reason)),
            Event::Recycling {
                index,
                pid,
                reason,
                lived,
                completed,
            } => {
                field("index", Count(*index as u64));
                field("pid", Count(u64::from(*pid)));
                field("reason", Value::Word(reason));
                field("lived", Span(*lived));
                if let Some(completed) = completed {
                    field("completed", Count(*completed));
                }
            }
            Event::UpgradeDone { old } => field("old", Count(u64::from(*old))),
            Event::UpgradeFailed { pid, reason } => {
                field("pid", Count(u64::from(*pid)));
                field("reason", Text(reason));
            }
        }
    }
}

/// How much an operator should care about a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// The value of one field of a log line, typed for JSON and formatted for text.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Value<'a> {
    Count(u64),
    Flag(bool),
    /// A duration: `60s`, `1.6s` in text; seconds in JSON.
    Span(Duration),
    /// A signal number: `SIGTERM` in text and JSON.
    Signal(i32),
    /// How a process ended: `0`, `SIGKILL`, `panicked`.
    Status(ExitStatus),
    /// A name from a fixed set, such as a restart policy: unquoted in text.
    Word(&'a str),
    /// Free text: quoted in text.
    Text(&'a str),
    /// What `Debug` says of a value, such as a worker's error: as it is in text (a string's
    /// `Debug` is quoted already), as a string in JSON.
    Debug(&'a str),
    /// An errno, as `strerror` says it: quoted in text.
    Errno(i32),
    /// Worker indices: `3,5` in text, an array in JSON.
    Indices(&'a [usize]),
}

/// The text form: `3`, `true`, `60s`, `SIGTERM`, `panicked`, `always`, `"..."`.
impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Count(count) => write!(f, "{count}"),
            Value::Flag(flag) => write!(f, "{flag}"),
            Value::Span(duration) => Span(duration).fmt(f),
            Value::Signal(signal) => SignalName(signal).fmt(f),
            Value::Status(status) => status.fmt(f),
            Value::Word(word) => f.write_str(word),
            Value::Text(text) => write!(f, "\"{text}\""),
            Value::Debug(text) => f.write_str(text),
            Value::Errno(errno) => write!(f, "\"{}\"", std::io::Error::from_raw_os_error(errno)),
            Value::Indices(indices) => {
                for (n, index) in indices.iter().enumerate() {
                    let comma = if n == 0 { "" } else { "," };
                    write!(f, "{comma}{index}")?;
                }
                Ok(())
            }
        }
    }
}

/// The log line without the `kamisama[PID]: ` prefix: the name, then `key=value` for each
/// field, such as `spawned index=3 pid=4246`.
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        let mut result = Ok(());
        self.fields(&mut |key, value| {
            if result.is_ok() {
                result = write!(f, " {key}={value}");
            }
        });
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_the_log_writes_them() {
        for (millis, text) in [
            (0, "0s"),
            (100, "0.1s"),
            (5, "0.005s"),
            (1_600, "1.6s"),
            (1_250, "1.25s"),
            (60_000, "60s"),
            (12_005, "12.005s"),
        ] {
            assert_eq!(Span(Duration::from_millis(millis)).to_string(), text);
        }
    }
}
