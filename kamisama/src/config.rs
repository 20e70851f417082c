//! The settings a master runs with, their defaults and their bounds.

use crate::Error;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The most workers a master runs: the largest number of processes Linux allows at all
/// (`PID_MAX_LIMIT`, 2^22 on 64-bit systems), so that a setting no machine can run is refused
/// before anything is allocated or forked.
///
/// ```no_run
/// # fn worker(_: usize) {}
/// let wanted: usize = std::env::var("WORKERS").ok().and_then(|n| n.parse().ok()).unwrap_or(4);
/// kamisama::Supervisor::new().instances(wanted.min(kamisama::MAX_INSTANCES)).run(worker);
/// ```
pub const MAX_INSTANCES: usize = 1 << 22;

/// The most threads an async worker's multi-thread runtime may have: far more than any
/// machine has cores, and far fewer than would make each worker's spawn fail (100,000 made
/// every worker abort in tokio, and the master give up).
pub(crate) const MAX_WORKER_THREADS: usize = 1024;

/// Everything the master needs to know before it forks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) instances: usize,
    pub(crate) respawn_limit: u32,
    pub(crate) respawn_interval: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) restart: Restart,
    /// Zero when backoff is off.
    pub(crate) backoff_max: Duration,
    /// How long a worker may show no sign of life before it is hung; zero when off.
    pub(crate) timeout: Duration,
    /// The same for a worker's first sign of life after its fork.
    pub(crate) boot_timeout: Duration,
    /// What a hung worker gets first.
    pub(crate) hang_signal: Signal,
    /// How long a hung worker has after the hang signal, before SIGKILL.
    pub(crate) hang_grace: Duration,
    /// The runtime an async worker builds.
    pub(crate) runtime: Runtime,
    /// Its threads, for a multi-thread runtime; `None` for one per core.
    pub(crate) worker_threads: Option<usize>,
    /// What beats for an async worker.
    pub(crate) heartbeat: Heartbeat,
    /// How the master and its workers log.
    pub(crate) log: LogFormat,
    /// When a new worker counts as ready.
    pub(crate) readiness: Readiness,
    /// Where the master keeps its live status, if anywhere.
    pub(crate) status_file: Option<std::path::PathBuf>,
    /// Whether `ps` shows what each process is.
    pub(crate) process_titles: bool,
    /// The addresses the master listens on for its workers.
    pub(crate) listen: Vec<String>,
    /// Where the master answers scrapes of its metrics, if anywhere.
    pub(crate) metrics: Option<String>,
    /// The length of each listener's queue of connections not yet accepted.
    pub(crate) backlog: u32,
    /// How long the new generation of an upgrade has to get ready.
    pub(crate) upgrade_timeout: Duration,
    /// How long the old master of an upgrade stays after the hand-over, ready to fork its
    /// fleet again; zero for no trial.
    pub(crate) upgrade_trial: Duration,
    /// How long a worker runs before it is replaced; zero for ever.
    pub(crate) max_lifetime: Duration,
    /// The most added to each worker's `max_lifetime`, at random.
    pub(crate) max_lifetime_jitter: Duration,
    /// How many units of work (`Worker::completed`) a worker does before it is replaced;
    /// zero for no limit.
    pub(crate) max_requests: u64,
    /// The most added to each worker's `max_requests`, at random.
    pub(crate) max_requests_jitter: u64,
    /// The proportional set size, in bytes, past which a worker is replaced; zero for none.
    pub(crate) max_memory: u64,
    /// How many workers may be replaced at once.
    pub(crate) recycle_at_once: usize,
    /// The user workers run as; `None` keeps the master's.
    pub(crate) user: Option<String>,
    /// The group workers run as; `None` keeps the user's, or the master's.
    pub(crate) group: Option<String>,
    /// Whether workers set `no_new_privs`; `None` for "when they change identity".
    pub(crate) no_new_privs: Option<bool>,
    /// The resource limits set in each worker.
    pub(crate) limits: Limits,
    /// The workers' OOM score adjustment; `None` for the master's plus
    /// [`WORKER_OOM_SCORE_BIAS`].
    pub(crate) oom_score_adj: Option<i32>,
    /// Which CPUs each worker runs on.
    pub(crate) cpu_affinity: CpuAffinity,
}

/// A worker's resource limits, each set as both its soft and hard limit; `None` keeps the
/// master's. `u64::MAX` is no limit (`RLIM_INFINITY`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// `RLIMIT_NOFILE`: open files.
    pub(crate) nofile: Option<u64>,
    /// `RLIMIT_CORE`: the size of a core dump, in bytes.
    pub(crate) core: Option<u64>,
    /// `RLIMIT_AS`: the address space, in bytes.
    pub(crate) address_space: Option<u64>,
}

/// How much more killable than the master a worker is by default, in `oom_score_adj` units:
/// the kernel then takes a worker, which the master forks again, under memory pressure, and
/// not the master, which is the whole fleet. 500 outweighs half of the machine's memory (or of
/// the cgroup's), so it holds even at 10,000 workers, when the master's own tables are large.
pub(crate) const WORKER_OOM_SCORE_BIAS: i32 = 500;

impl Default for Config {
    fn default() -> Self {
        Config {
            instances: 1,
            respawn_limit: 3,
            respawn_interval: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(10),
            restart: Restart::Always,
            backoff_max: Duration::ZERO,
            timeout: Duration::ZERO,
            boot_timeout: Duration::from_secs(60),
            hang_signal: Signal::ABRT,
            hang_grace: Duration::from_secs(1),
            runtime: Runtime::CurrentThread,
            worker_threads: None,
            heartbeat: Heartbeat::Runtime,
            log: LogFormat::Text,
            readiness: Readiness::Forked,
            status_file: None,
            process_titles: true,
            listen: Vec::new(),
            metrics: None,
            backlog: 1024,
            upgrade_timeout: Duration::from_secs(60),
            upgrade_trial: Duration::from_secs(10),
            max_lifetime: Duration::ZERO,
            max_lifetime_jitter: Duration::ZERO,
            max_requests: 0,
            max_requests_jitter: 0,
            max_memory: 0,
            recycle_at_once: 1,
            user: None,
            group: None,
            no_new_privs: None,
            limits: Limits::default(),
            oom_score_adj: None,
            cpu_affinity: CpuAffinity::Off,
        }
    }
}

impl Config {
    /// Rejects the settings the builder lets through but the master cannot run with.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if !(1..=MAX_INSTANCES).contains(&self.instances) {
            return Err(Error::InvalidConfig {
                setting: "instances",
                expected: "at least 1 and at most 4194304",
            });
        }
        if self.respawn_interval.is_zero() {
            return Err(Error::InvalidConfig {
                setting: "respawn_interval",
                expected: "longer than zero",
            });
        }
        if self.shutdown_timeout.is_zero() {
            return Err(Error::InvalidConfig {
                setting: "shutdown_timeout",
                expected: "longer than zero",
            });
        }
        if self.boot_timeout.is_zero() {
            return Err(Error::InvalidConfig {
                setting: "boot_timeout",
                expected: "longer than zero",
            });
        }
        if self.hang_grace.is_zero() {
            return Err(Error::InvalidConfig {
                setting: "hang_grace",
                expected: "longer than zero",
            });
        }
        if self.recycle_at_once == 0 {
            return Err(Error::InvalidConfig {
                setting: "recycle_at_once",
                expected: "at least 1",
            });
        }
        if !(1..=libc::SOMAXCONN as u32).contains(&self.backlog) {
            return Err(Error::InvalidConfig {
                setting: "backlog",
                expected: "at least 1 and at most 4096",
            });
        }
        if self
            .worker_threads
            .is_some_and(|threads| !(1..=MAX_WORKER_THREADS).contains(&threads))
        {
            return Err(Error::InvalidConfig {
                setting: "worker_threads",
                expected: "at least 1 and at most 1024",
            });
        }
        if self.worker_threads.is_some() && self.runtime == Runtime::CurrentThread {
            return Err(Error::InvalidConfig {
                setting: "worker_threads",
                expected: "no value with a current-thread runtime, whose one thread runs \
                           every task",
            });
        }
        if self
            .oom_score_adj
            .is_some_and(|adj| !(-1000..=1000).contains(&adj))
        {
            return Err(Error::InvalidConfig {
                setting: "oom_score_adj",
                expected: "at least -1000 and at most 1000",
            });
        }
        for (name, setting) in [(&self.user, "user"), (&self.group, "group")] {
            if name
                .as_deref()
                .is_some_and(|name| name.is_empty() || name.contains('\0'))
            {
                return Err(Error::InvalidConfig {
                    setting,
                    expected: "the name or number of one, not empty",
                });
            }
        }
        if !self.hang_signal.exists() {
            return Err(Error::InvalidConfig {
                setting: "hang_signal",
                expected: "a signal this system has (its real-time signals end at SIGRTMAX)",
            });
        }
        Ok(())
    }
}

/// A signal to send, by name: [`Signal::ABRT`], [`Signal::QUIT`], or a real-time signal,
/// [`Signal::rt`]. It parses from the names `kill -l` prints, with or without `SIG`
/// (`"SIGQUIT"`, `"QUIT"`, `"SIGRTMIN+2"`), as the attribute and `KAMISAMA_HANG_SIGNAL` write
/// them.
///
/// ```
/// use kamisama::Signal;
///
/// assert_eq!("SIGQUIT".parse(), Ok(Signal::QUIT));
/// assert_eq!("RTMIN+2".parse(), Ok(Signal::rt(2)));
/// assert_eq!(Signal::rt(2).to_string(), "SIGRTMIN+2");
/// assert_eq!(Signal::ABRT.as_raw(), libc::SIGABRT);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(i32);

impl Signal {
    /// `SIGABRT`: a core dump, or the process's own abort hook (a backtrace).
    pub const ABRT: Signal = Signal(libc::SIGABRT);
    /// `SIGQUIT`: a core dump; some runtimes print their threads' stacks on it.
    pub const QUIT: Signal = Signal(libc::SIGQUIT);
    /// `SIGTERM`.
    pub const TERM: Signal = Signal(libc::SIGTERM);
    /// `SIGINT`.
    pub const INT: Signal = Signal(libc::SIGINT);
    /// `SIGKILL`: no trace at all.
    pub const KILL: Signal = Signal(libc::SIGKILL);
    /// `SIGUSR1`.
    pub const USR1: Signal = Signal(libc::SIGUSR1);
    /// `SIGUSR2`.
    pub const USR2: Signal = Signal(libc::SIGUSR2);
    /// `SIGTRAP`: a core dump, or a debugger's attention.
    pub const TRAP: Signal = Signal(libc::SIGTRAP);

    /// The real-time signal `SIGRTMIN+n`, which [`Supervisor`](crate::Supervisor) refuses
    /// where it is past `SIGRTMAX`.
    pub fn rt(n: u8) -> Signal {
        Signal(libc::SIGRTMIN() + i32::from(n))
    }

    /// The signal's number, as `kill(2)` takes it.
    pub fn as_raw(self) -> i32 {
        self.0
    }

    /// Whether this system has the signal.
    pub(crate) fn exists(self) -> bool {
        (1..=libc::SIGRTMAX()).contains(&self.0)
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `SIGQUIT`, `SIGRTMIN+2`.
impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::event::SignalName(self.0).fmt(f)
    }
}

/// Parses `SIGQUIT`, `QUIT`, `SIGRTMIN+2`, `RTMIN+2` (any case).
impl FromStr for Signal {
    type Err = UnknownSignal;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let upper = name.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        if let Some(n) = bare.strip_prefix("RTMIN") {
            let n = match n.strip_prefix('+') {
                Some(n) => n.parse::<u8>().map_err(|_| UnknownSignal)?,
                None if n.is_empty() => 0,
                None => return Err(UnknownSignal),
            };
            let signal = Signal::rt(n);
            return signal.exists().then_some(signal).ok_or(UnknownSignal);
        }
        nix::sys::signal::Signal::iterator()
            .find(|signal| signal.as_str().strip_prefix("SIG") == Some(bare))
            .map(|signal| Signal(signal as i32))
            .ok_or(UnknownSignal)
    }
}

/// The error of parsing a [`Signal`] from a name no signal has.
///
/// ```
/// assert!("SIGNOPE".parse::<kamisama::Signal>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownSignal;

impl fmt::Display for UnknownSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected a signal's name, such as `SIGABRT`, `SIGQUIT` or `SIGRTMIN+2`")
    }
}

impl std::error::Error for UnknownSignal {}

/// When the master forks a worker again after it exited by itself.
///
/// Workers the master stops itself (a shutdown, SIGTTOU, a rolling restart) are never
/// counted as failures, whatever the policy. With `OnFailure` and `Never`, the master exits
/// once no worker runs and none will be forked again: with status 0 if the last worker of
/// every index succeeded, 1 otherwise.
///
/// ```
/// use kamisama::Restart;
///
/// assert_eq!("on-failure".parse(), Ok(Restart::OnFailure));
/// assert_eq!(Restart::default(), Restart::Always);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Restart {
    /// Always fork it again, whatever its exit status: a pool of long-running workers.
    #[default]
    Always,
    /// Fork it again only if it failed (a non-zero exit status, or a signal); an index whose
    /// worker exits with 0 is done. A batch of shards, each retried until it succeeds or
    /// fails more often than the respawn limit allows it, which is each shard's own.
    OnFailure,
    /// Never fork it again: every index runs once.
    Never,
}

impl Restart {
    /// The name used by the attribute and `KAMISAMA_RESTART`: `always`, `on-failure`,
    /// `never`.
    ///
    /// ```
    /// assert_eq!(kamisama::Restart::OnFailure.name(), "on-failure");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Restart::Always => "always",
            Restart::OnFailure => "on-failure",
            Restart::Never => "never",
        }
    }

    /// Whether a worker that exited by itself with `succeeded` is forked again.
    pub(crate) fn respawns(self, succeeded: bool) -> bool {
        match self {
            Restart::Always => true,
            Restart::OnFailure => !succeeded,
            Restart::Never => false,
        }
    }
}

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses `always`, `on-failure` or `never`.
impl FromStr for Restart {
    type Err = UnknownRestart;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        [Restart::Always, Restart::OnFailure, Restart::Never]
            .into_iter()
            .find(|restart| restart.name() == name)
            .ok_or(UnknownRestart)
    }
}

/// Which tokio runtime each async worker builds after its fork (see `kamisama::Async`,
/// with the `tokio` feature).
///
/// The default is [`CurrentThread`](Runtime::CurrentThread): a fleet already runs several
/// worker processes per machine, and a multi-thread runtime in each would start one thread
/// per core in every worker, many more threads than cores. Parallelism comes from the
/// processes; a worker that needs threads of its own asks for them with
/// [`worker_threads`](crate::Supervisor::worker_threads).
///
/// ```
/// use kamisama::Runtime;
///
/// assert_eq!("multi-thread".parse(), Ok(Runtime::MultiThread));
/// assert_eq!(Runtime::default(), Runtime::CurrentThread);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// tokio's `current_thread` runtime: the worker's own thread runs every task.
    #[default]
    CurrentThread,
    /// tokio's `multi_thread` runtime, with `worker_threads` threads (one per core unless set).
    MultiThread,
}

impl Runtime {
    /// The name used by the attribute and `KAMISAMA_RUNTIME`: `current-thread` or
    /// `multi_thread`, as in `#[tokio::main(flavor = ...)]`.
    ///
    /// ```
    /// assert_eq!(kamisama::Runtime::MultiThread.name(), "multi-thread");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Runtime::CurrentThread => "current-thread",
            Runtime::MultiThread => "multi-thread",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses `current-thread` or `multi-thread`.
impl FromStr for Runtime {
    type Err = UnknownRuntime;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        [Runtime::CurrentThread, Runtime::MultiThread]
            .into_iter()
            .find(|runtime| runtime.name() == name)
            .ok_or(UnknownRuntime)
    }
}

/// The error of parsing a [`Runtime`] from a name it does not have.
///
/// ```
/// assert!("threads".parse::<kamisama::Runtime>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownRuntime;

impl fmt::Display for UnknownRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected `current-thread` or `multi-thread`")
    }
}

impl std::error::Error for UnknownRuntime {}

/// What shows an async worker alive to hang detection (see
/// [`Supervisor::heartbeat`](crate::Supervisor::heartbeat)). Sync workers beat themselves, with
/// [`Worker::heartbeat`](crate::Worker::heartbeat).
///
/// ```
/// use kamisama::Heartbeat;
///
/// assert_eq!("manual".parse(), Ok(Heartbeat::Manual));
/// assert_eq!(Heartbeat::default(), Heartbeat::Runtime);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Heartbeat {
    /// A task on the worker's runtime beats for it, every quarter of the timeout, as long as
    /// the runtime runs it, and as long as no thread of a multi-thread runtime stays stuck in
    /// one task: a task that blocks a thread is a hang, in either flavour of runtime.
    #[default]
    Runtime,
    /// Only [`Worker::heartbeat`](crate::Worker::heartbeat) and waits through the handle
    /// count, as for a sync worker: a main loop that stops going round (a deadlock on an
    /// async lock, a future that never completes) is a hang too, though the runtime runs on.
    Manual,
}

impl Heartbeat {
    /// The name used by the attribute and `KAMISAMA_HEARTBEAT`: `runtime` or `manual`.
    ///
    /// ```
    /// assert_eq!(kamisama::Heartbeat::Manual.name(), "manual");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Heartbeat::Runtime => "runtime",
            Heartbeat::Manual => "manual",
        }
    }
}

impl fmt::Display for Heartbeat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses `runtime` or `manual`.
impl FromStr for Heartbeat {
    type Err = UnknownHeartbeat;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        [Heartbeat::Runtime, Heartbeat::Manual]
            .into_iter()
            .find(|heartbeat| heartbeat.name() == name)
            .ok_or(UnknownHeartbeat)
    }
}

/// The error of parsing a [`Heartbeat`] from a name it does not have.
///
/// ```
/// assert!("often".parse::<kamisama::Heartbeat>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownHeartbeat;

impl fmt::Display for UnknownHeartbeat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected `runtime` or `manual`")
    }
}

impl std::error::Error for UnknownHeartbeat {}

/// When a worker counts as ready: for the fleet to be reported ready to systemd
/// (`READY=1`), and for a rolling restart to move on from an index to the next.
///
/// ```
/// use kamisama::Readiness;
///
/// assert_eq!("declared".parse(), Ok(Readiness::Declared));
/// assert_eq!(Readiness::default(), Readiness::Forked);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Readiness {
    /// As soon as it is forked.
    #[default]
    Forked,
    /// Once it has called [`Worker::ready`](crate::Worker::ready), after its start-up work
    /// (a server once it listens, a consumer once it is connected).
    Declared,
}

impl Readiness {
    /// The name used by the attribute and `KAMISAMA_READINESS`: `forked` or `declared`.
    ///
    /// ```
    /// assert_eq!(kamisama::Readiness::Declared.name(), "declared");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Readiness::Forked => "forked",
            Readiness::Declared => "declared",
        }
    }
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses `forked` or `declared`.
impl FromStr for Readiness {
    type Err = UnknownReadiness;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        [Readiness::Forked, Readiness::Declared]
            .into_iter()
            .find(|readiness| readiness.name() == name)
            .ok_or(UnknownReadiness)
    }
}

/// The error of parsing a [`Readiness`] from a name it does not have.
///
/// ```
/// assert!("soon".parse::<kamisama::Readiness>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownReadiness;

impl fmt::Display for UnknownReadiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected `forked` or `declared`")
    }
}

impl std::error::Error for UnknownReadiness {}

/// Which CPUs each worker may run on (see
/// [`Supervisor::cpu_affinity`](crate::Supervisor::cpu_affinity)).
///
/// ```
/// use kamisama::CpuAffinity;
///
/// assert_eq!("auto".parse(), Ok(CpuAffinity::Auto));
/// assert_eq!(CpuAffinity::default(), CpuAffinity::Off);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CpuAffinity {
    /// Every CPU the master may use: the scheduler moves workers where it sees fit.
    #[default]
    Off,
    /// Worker `i` on the `i`-th CPU the master may use (counted modulo their number), as
    /// nginx's `worker_cpu_affinity auto`.
    Auto,
}

impl CpuAffinity {
    /// The name used by the attribute and `KAMISAMA_CPU_AFFINITY`: `off` or `auto`.
    ///
    /// ```
    /// assert_eq!(kamisama::CpuAffinity::Auto.name(), "auto");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            CpuAffinity::Off => "off",
            CpuAffinity::Auto => "auto",
        }
    }
}

impl fmt::Display for CpuAffinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses `off` or `auto`.
impl FromStr for CpuAffinity {
    type Err = UnknownCpuAffinity;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        [CpuAffinity::Off, CpuAffinity::Auto]
            .into_iter()
            .find(|affinity| affinity.name() == name)
            .ok_or(UnknownCpuAffinity)
    }
}

/// The error of parsing a [`CpuAffinity`] from a name it does not have.
///
/// ```
/// assert!("all".parse::<kamisama::CpuAffinity>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownCpuAffinity;

impl fmt::Display for UnknownCpuAffinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected `off` or `auto`")
    }
}

impl std::error::Error for UnknownCpuAffinity {}

/// How many CPUs this process may really use: those in its affinity mask (`taskset`,
/// `cpuset` cgroups, `docker --cpuset-cpus`), and no more than its cgroup's CPU quota allows
/// (`docker --cpus`, Kubernetes' CPU limit, systemd's `CPUQuota=`; cgroup v1 and v2), rounded
/// down, at least 1. This is what `instances = "auto"` and `KAMISAMA_INSTANCES=auto` run:
/// unlike nginx's `worker_processes auto`, which counts the machine's CPUs, a container
/// limited to 2 CPUs of 64 runs 2 workers, not 64 that share 2 CPUs.
///
/// ```no_run
/// # fn worker(_: usize) {}
/// kamisama::Supervisor::new().instances(kamisama::usable_cpus()).run(worker);
/// ```
pub fn usable_cpus() -> usize {
    // The standard library reads both: sched_getaffinity, then the quota of every cgroup
    // from the process's own up to the root.
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// How the master writes its log to stderr (and a worker its `worker-failed` line).
///
/// ```text
/// text: kamisama[4242]: exited index=3 pid=4250 status=SIGKILL
/// json: {"ts":"2026-11-30T01:02:03.456Z","level":"warn","event":"exited","master":4242,"index":3,"pid":4250,"signal":"SIGKILL"}
/// ```
///
/// A JSON line has the wall-clock time (`ts`, RFC 3339 in UTC), a `level` (`info`, `warn`
/// or `error`), the event's stable name ([`Event::name`](crate::Event::name)), the master's
/// pid, and the event's fields: numbers as numbers, durations in seconds, signals as their
/// names (`"SIGTERM"`); an exit status is a number (`"status":0`), and a signal that ended a
/// process is `"signal":"SIGKILL"` in its place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// One `key=value` line per event, for people and grep.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
    /// Nothing at all; [`Supervisor::on_event`](crate::Supervisor::on_event) still sees
    /// every event.
    Off,
}

impl LogFormat {
    /// The name used by the attribute and `KAMISAMA_LOG`: `text`, `json` or `off`.
    ///
    /// ```
    /// assert_eq!(kamisama::LogFormat::Json.name(), "json");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
            LogFormat::Off => "off",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses `text`, `json` or `off`.
impl FromStr for LogFormat {
    type Err = UnknownLogFormat;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        [LogFormat::Text, LogFormat::Json, LogFormat::Off]
            .into_iter()
            .find(|format| format.name() == name)
            .ok_or(UnknownLogFormat)
    }
}

/// The error of parsing a [`LogFormat`] from a name it does not have.
///
/// ```no_run
/// let error = "xml".parse::<kamisama::LogFormat>().unwrap_err();
/// println!("KAMISAMA_LOG: {error}");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownLogFormat;

impl fmt::Display for UnknownLogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected `text`, `json` or `off`")
    }
}

impl std::error::Error for UnknownLogFormat {}

/// The error of parsing a [`Restart`] from a name it does not have.
///
/// ```no_run
/// let error = "sometimes".parse::<kamisama::Restart>().unwrap_err();
/// println!("KAMISAMA_RESTART: {error}");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownRestart;

impl fmt::Display for UnknownRestart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected `always`, `on-failure` or `never`")
    }
}

impl std::error::Error for UnknownRestart {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_at_least_one_and_at_most_the_pid_limit() {
        for (instances, valid) in [
            (0, false),
            (1, true),
            (MAX_INSTANCES, true),
            (MAX_INSTANCES + 1, false),
            (usize::MAX, false),
        ] {
            let config = Config {
                instances,
                ..Config::default()
            };
            assert_eq!(config.validate().is_ok(), valid, "{instances}");
        }
    }
}
