//! Why a master could not start.

use std::fmt;

/// Why [`Supervisor::try_run`](crate::Supervisor::try_run) stopped before forking any worker.
///
/// Every variant names the input at fault. [`Supervisor::run`](crate::Supervisor::run) prints it
/// and exits with status 2.
///
/// ```no_run
/// # fn worker(_: usize) {}
/// match kamisama::Supervisor::new().try_run(worker) {
///     Err(kamisama::Error::InvalidEnv { var, value, .. }) => {
///         eprintln!("fix {var}: {value:?} is not usable");
///     }
///     Err(error) => eprintln!("{error}"),
///     Ok(_) => {}
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A `KAMISAMA_*` environment variable holds a value kamisama cannot use.
    InvalidEnv {
        /// The variable, such as `KAMISAMA_INSTANCES`.
        var: &'static str,
        /// Its value as found (lossily converted to UTF-8).
        value: String,
        /// What the variable takes.
        expected: &'static str,
    },
    /// A builder setting is out of range, such as zero instances.
    InvalidConfig {
        /// The builder method, such as `instances`.
        setting: &'static str,
        /// What the setting takes.
        expected: &'static str,
    },
    /// The process already runs other threads, and forking it would copy their locks but not
    /// the threads that hold them.
    Threaded {
        /// How many threads the process has, the calling one included.
        threads: usize,
    },
    /// A tokio runtime is running in the thread that calls `run` (`#[tokio::main]` above it,
    /// or a runtime entered by hand). Workers are forked from the master: each would inherit
    /// a copy it cannot use. kamisama builds a runtime in each worker after the fork instead.
    /// Detected with the `tokio` feature only.
    AsyncRuntime,
    /// A listener could not be opened: the address is wrong, in use, or not ours to bind;
    /// or the sockets handed over by `LISTEN_FDS` are not listening sockets.
    Listen {
        /// The address, as configured.
        address: String,
        /// Why not.
        error: std::io::Error,
    },
    /// The metrics endpoint could not be opened: the address is wrong, in use, or not ours to
    /// bind.
    Metrics {
        /// The address, as configured.
        address: String,
        /// Why not.
        error: std::io::Error,
    },
    /// The status file cannot be written: checked before anything is forked.
    StatusFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why not.
        error: std::io::Error,
    },
    /// A worker could not be given what a setting asks for: a `user` or `group` that does
    /// not exist, a master not allowed to switch to it, a limit or an OOM score beyond what
    /// the master may grant. Checked before anything is forked.
    Confine {
        /// The setting, such as `user`.
        setting: &'static str,
        /// Its value, as configured.
        value: String,
        /// Why it cannot be applied, and what would allow it.
        reason: String,
    },
    /// The operating system refused a setup call.
    Os {
        /// The call, such as `signalfd`.
        call: &'static str,
        /// The error it returned.
        error: std::io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidEnv {
                var,
                value,
                expected,
            } => write!(f, "invalid {var}={value:?}: expected {expected}"),
            Error::InvalidConfig { setting, expected } => {
                write!(f, "invalid `{setting}`: expected {expected}")
            }
            Error::Threaded { threads } => write!(
                f,
                "the process already runs {threads} threads; start the supervisor before \
                 any thread (a worker forked from a threaded process can deadlock)"
            ),
            Error::AsyncRuntime => f.write_str(
                "a tokio runtime is running in the master (#[tokio::main], or a runtime \
                 entered before `run`); remove it: kamisama builds a runtime in each worker \
                 after the fork, never in the master",
            ),
            Error::Listen { address, error } => write!(f, "cannot listen on {address}: {error}"),
            Error::Metrics { address, error } => {
                write!(f, "cannot serve metrics on {address}: {error}")
            }
            Error::StatusFile { path, error } => {
                write!(
                    f,
                    "cannot write the status file {}: {error}",
                    path.display()
                )
            }
            Error::Confine {
                setting,
                value,
                reason,
            } => write!(f, "cannot run workers with `{setting}` {value:?}: {reason}"),
            Error::Os { call, error } => write!(f, "{call} failed: {error}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Os { error, .. }
            | Error::StatusFile { error, .. }
            | Error::Listen { error, .. }
            | Error::Metrics { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl Error {
    pub(crate) fn os(call: &'static str, errno: nix::errno::Errno) -> Self {
        Error::Os {
            call,
            error: errno.into(),
        }
    }
}
