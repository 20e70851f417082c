//! What the master reports: one typed event per thing that happens, written to stderr as one
//! greppable line each.

use crate::config::Config;
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use std::fmt::{self, Write};
use std::time::Duration;

/// Something the master did or saw.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    Started(&'a Config),
    Spawned {
        index: usize,
        pid: Pid,
    },
    SpawnFailed {
        index: usize,
        error: Errno,
    },
    Exited {
        index: usize,
        pid: Pid,
        status: Exit,
    },
    /// A process that was not a worker (an orphan handed to the master) ended.
    Reaped {
        pid: Pid,
        status: Exit,
    },
    Respawning {
        index: usize,
        respawns: u32,
        limit: u32,
        interval: Duration,
    },
    ScaledUp {
        instances: usize,
    },
    ScaledDown {
        instances: usize,
        retiring: usize,
    },
    ScaleDownRefused,
    Killed {
        index: usize,
        pid: Pid,
        after: Duration,
    },
    ShutdownStarted {
        signal: Option<Signal>,
        workers: usize,
    },
    ShutdownForced {
        signal: Signal,
        workers: usize,
    },
    ShutdownFinished {
        exit: u8,
    },
    GaveUp {
        limit: u32,
        interval: Duration,
    },
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signaled(Signal),
}

/// The exit status Rust gives a process whose main thread panicked; a worker that panics leaves
/// with it too.
pub(crate) const PANIC_EXIT_CODE: i32 = 101;

impl Exit {
    pub(crate) fn from_wait(status: WaitStatus) -> Option<(Pid, Exit)> {
        match status {
            WaitStatus::Exited(pid, code) => Some((pid, Exit::Code(code))),
            WaitStatus::Signaled(pid, signal, _core_dumped) => Some((pid, Exit::Signaled(signal))),
            _ => None,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(PANIC_EXIT_CODE) => f.write_str("panicked"),
            Exit::Code(code) => write!(f, "{code}"),
            Exit::Signaled(signal) => f.write_str(signal.as_str()),
        }
    }
}

impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Started(config) => write!(f, "started {config}"),
            Event::Spawned { index, pid } => write!(f, "spawned index={index} pid={pid}"),
            Event::SpawnFailed { index, error } => {
                write!(
                    f,
                    "spawn-failed index={index} error={:?}",
                    error.to_string()
                )
            }
            Event::Exited { index, pid, status } => {
                write!(f, "exited index={index} pid={pid} status={status}")
            }
            Event::Reaped { pid, status } => write!(f, "reaped pid={pid} status={status}"),
            Event::Respawning {
                index,
                respawns,
                limit,
                interval,
            } => write!(
                f,
                "respawning index={index} respawns={respawns}/{limit} window={interval:?}"
            ),
            Event::ScaledUp { instances } => write!(f, "scaled-up instances={instances}"),
            Event::ScaledDown {
                instances,
                retiring,
            } => write!(f, "scaled-down instances={instances} retiring={retiring}"),
            Event::ScaleDownRefused => {
                f.write_str("scale-down-refused instances=1 reason=\"the last worker stays\"")
            }
            Event::Killed { index, pid, after } => {
                write!(f, "killed index={index} pid={pid} after={after:?}")
            }
            Event::ShutdownStarted { signal, workers } => match signal {
                Some(signal) => write!(f, "shutdown-started signal={signal} workers={workers}"),
                None => write!(f, "shutdown-started workers={workers}"),
            },
            Event::ShutdownForced { signal, workers } => {
                write!(f, "shutdown-forced signal={signal} workers={workers}")
            }
            Event::ShutdownFinished { exit } => write!(f, "shutdown-finished exit={exit}"),
            Event::GaveUp { limit, interval } => write!(
                f,
                "gave-up reason=\"respawn limit exceeded\" respawn_limit={limit} \
                 respawn_interval={interval:?}"
            ),
        }
    }
}

/// Writes `event` to stderr as `kamisama[PID]: EVENT key=value...`, in one `write` so that lines
/// from the master and its workers do not interleave. A closed stderr does not stop the master.
pub(crate) fn log(master: Pid, event: &Event<'_>) {
    let mut line = Line::default();
    let _ = writeln!(line, "kamisama[{master}]: {event}");
    loop {
        match nix::unistd::write(std::io::stderr(), line.as_bytes()) {
            Err(Errno::EINTR) => continue,
            _ => return,
        }
    }
}

/// A log line built on the stack, as the fork path must not allocate (see `Master`). A line
/// too long for it is cut short, and still ends with a newline.
struct Line {
    bytes: [u8; 256],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            bytes: [0; 256],
            len: 0,
        }
    }
}

impl Line {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // Keep the last byte for the newline.
        let room = self.bytes.len() - 1 - self.len;
        let taken = text.len().min(room);
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
