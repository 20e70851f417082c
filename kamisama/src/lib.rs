//! Start, monitor and observe background worker processes.
//!
//! ```no_run
//! #[kamisama::main(instances = 17, respawn_limit = 10, respawn_interval = 60)]
//! fn worker(index: usize) {
//!     loop {
//!         println!("worker {index}: crunching data...");
//!         std::thread::sleep(std::time::Duration::from_secs(5));
//!     }
//! }
//! ```
//!
//! The binary this builds is a *master* process that forks 17 *workers* and supervises them, in
//! the way of Unicorn, God and the Ruby gem Kamisama. [`macro@main`] documents the attribute,
//! [`Supervisor`] the builder it expands to.
//!
//! # The model
//!
//! - **Workers** are processes forked from the master, its direct children, each running the
//!   worker function ([`WorkerFn`]: `fn()`, `fn(index: usize)` or `fn(worker: Worker)`,
//!   returning `()` or `Result<(), E>`). Indices are dense and 0-based: 17 instances run
//!   `0..=16`. No two live workers ever share an index.
//! - A worker that ends by itself (it returned, called `exit`, panicked, was killed or crashed)
//!   is **respawned** at once with the same index, or as the [`Restart`] policy says. A return
//!   or `Ok` ends the worker with status 0, an `Err` with 1, a panic with 101 (its message on
//!   stderr).
//! - If one more respawn would make more than `respawn_limit` respawns within the last
//!   `respawn_interval` (a sliding window on the monotonic clock), the master **gives up**:
//!   it stops every worker as in a shutdown and exits with status 1. Workers the master stops
//!   itself never count, nor does a worker that exits with status 0 after its first second
//!   (it recycles itself); with [`Restart::OnFailure`] the limit is each index's own. An optional **backoff** (`backoff_max`) spaces out the respawns of an
//!   index that keeps dying early.
//! - The master is event-driven. It blocks in `poll` on a signalfd and wakes only for a
//!   signal or a deadline it set (a worker due for SIGKILL, a backoff ending), never
//!   periodically.
//! - Each worker runs in a process group of its own, with no signal blocked, every signal at
//!   its default action, and none of the master's internal file descriptors. Some exceptions
//!   keep it a normal Rust process: SIGPIPE stays ignored, as Rust's runtime sets it, and the
//!   handlers of the fault signals (SIGSEGV, SIGBUS, SIGILL, SIGFPE) stay, as they are crash
//!   reporters such as Rust's stack-overflow message. USR1 and USR2 have a handler that
//!   counts them ([`Worker::received`]), so that one the master forwards never ends a
//!   worker; a handler of the worker's own replaces it. A worker that takes a [`Worker`]
//!   handle also gets a SIGTERM handler for its cooperative stop.
//! - The master is a child subreaper: a worker's subprocess orphaned by its worker comes back
//!   to it and is reaped, and it is stopped at shutdown.
//! - A `fork` that fails (out of pids or memory) is retried after a backoff, each failure
//!   counted against the respawn limit.
//!
//! # Blocking calls, async workers, hangs
//!
//! - A worker idle in a blocking call does not see its stop request; waiting through the
//!   handle ([`Worker::accept`], [`Worker::wait_readable`], [`Worker::sleep`]) does.
//! - With the `tokio` feature, the worker function may be `async` (`kamisama::Async`); each worker
//!   builds its runtime after the fork ([`Runtime`] says which), and `Worker::stopped` is a
//!   future of the stop request.
//! - With [`Supervisor::timeout`], a worker that shows no sign of life
//!   ([`Worker::heartbeat`]) for that long is hung, signalled and respawned.
//!
//! # Every shutdown ends
//!
//! After `TERM`, `INT` or `QUIT` the master exits within `shutdown_timeout` and a moment,
//! whatever the workers' process trees do (sessions and process groups of their own, a worker
//! that leaves its group, daemons, `exec`, `TERM` ignored, `SIGSTOP`, a PID namespace with or
//! without its own /proc, no file descriptor to spare). Workers' process groups, workers that
//! left them, and every process the master adopts get `TERM` and `CONT`, adopted ones as they
//! arrive (the master lists its children when its last worker is gone and on a 100 ms tick,
//! as the kernel does not say when it hands one over); whatever is left at the deadline gets
//! `KILL`, and so does what arrives after it. The master exits when `waitid` says no child
//! is left, and then nothing of its tree is, zombies included. It cannot follow a process
//! that leaves its tree (started by `systemd-run`, say), nor the orphans of a worker that
//! makes itself a subreaper until that worker dies.
//!
//! # Signals
//!
//! | signal to the master | effect |
//! |---|---|
//! | `TERM`, `INT`, `QUIT` | graceful shutdown: no more respawns; every worker's process group gets `TERM` (and `CONT`, so that a stopped worker acts on it); what is still alive after `shutdown_timeout` gets `KILL`; exit 0 once everything is reaped |
//! | a second `TERM` or `INT` during a shutdown | `KILL` everything left at once (the first one during a shutdown the master began itself only joins it) |
//! | `TTIN` | one more worker, with the next index |
//! | `TTOU` | retire the worker with the highest index (stopped as in a shutdown); refused with one worker left |
//! | `HUP` | rolling restart: replace the workers one index at a time, each stopped once its successor, forked first, is ready |
//! | `USR2` | upgrade: start the binary now at the master's path (on the same sockets, for a server), hand over once its fleet is ready, roll back if it is not (see [Servers](#servers-and-upgrades)) |
//! | `USR1` | forwarded to every worker, which counts it ([`Worker::received`]) unless it installed a handler of its own: never its death |
//! | `KILL`, or any death of the master | every worker gets `TERM` from the kernel (`PR_SET_PDEATHSIG`) |
//!
//! Ctrl-C in a terminal sends `INT` to the master only (workers are in their own process
//! groups), and the master then stops the workers in order.
//!
//! # Servers and upgrades
//!
//! With `listen` ([`Supervisor::listen`]), the master binds each address once, before it
//! forks, or takes the sockets systemd's socket activation hands it (`LISTEN_FDS`); every
//! worker accepts on them ([`Worker::listeners`], [`Worker::accept`]), so a worker that
//! stops or dies takes no socket with it, and a rolling restart loses no connection.
//!
//! `USR2` then upgrades the binary without a moment where nobody accepts: the master starts
//! the program again from the path it was started with (where a deploy has installed the new
//! one), handing it the listening sockets. Once the new master's fleet is ready, the old one
//! stops its own workers as in a shutdown, and stays for the upgrade's trial
//! ([`Supervisor::upgrade_trial`], 10 seconds by default), forking nothing: if a new worker
//! crashes or hangs, or the new master ends, it forks its fleet again at once and the new
//! master stops ([`Outcome::RolledBack`]). Once the trial has passed, it tells systemd
//! `MAINPID=` the new one and exits 0 ([`Outcome::Upgraded`]). If the new binary exits
//! first, or is not ready within [`Supervisor::upgrade_timeout`], it is stopped and the old
//! fleet serves on. A master that is PID 1 refuses, as its exit would end the container. The
//! status file and systemd's `STATUS=` say how the last upgrade went (in progress, on trial,
//! done, rolled back and why).
//!
//! # Recycling
//!
//! Long-running workers grow. [`Supervisor::max_lifetime`], [`Supervisor::max_requests`]
//! (counted by the worker with [`Worker::completed`], without a system call) and
//! [`Supervisor::max_memory`] (its proportional set size, sampled every 5 seconds) recycle a
//! worker: its successor is forked at its index first, and it gets its cooperative stop once
//! the successor is ready, one worker at a time. A recycle is no crash: it never counts
//! against the respawn limit.
//!
//! # Least privilege
//!
//! The master may run as root to bind a privileged port and keep what an upgrade needs, and
//! its workers, which face the network, as another user ([`Supervisor::user`],
//! [`Supervisor::group`]), with no way to gain privileges ([`Supervisor::no_new_privs`]),
//! within limits of their own ([`Supervisor::limit_nofile`], [`Supervisor::limit_core`],
//! [`Supervisor::limit_as`]), more killable than the master under memory pressure
//! ([`Supervisor::oom_score_adj`]), as many as the CPUs the process may really use
//! ([`usable_cpus`]) and pinned to them ([`Supervisor::cpu_affinity`]). The master checks
//! before its first fork that it may grant each of them.
//!
//! # Configuration
//!
//! Settings come from the attribute (or the [`Supervisor`] builder) and can be overridden at
//! run time by `KAMISAMA_INSTANCES`, `KAMISAMA_RESPAWN_LIMIT`, `KAMISAMA_RESPAWN_INTERVAL`,
//! `KAMISAMA_SHUTDOWN_TIMEOUT`, `KAMISAMA_RESTART`, `KAMISAMA_BACKOFF_MAX`,
//! `KAMISAMA_TIMEOUT`, `KAMISAMA_BOOT_TIMEOUT`, `KAMISAMA_HANG_GRACE`,
//! `KAMISAMA_HANG_SIGNAL`, `KAMISAMA_RUNTIME`, `KAMISAMA_WORKER_THREADS`,
//! `KAMISAMA_HEARTBEAT`, `KAMISAMA_LOG`,
//! `KAMISAMA_READINESS`, `KAMISAMA_STATUS_FILE`, `KAMISAMA_LISTEN`, `KAMISAMA_METRICS`,
//! `KAMISAMA_BACKLOG`,
//! `KAMISAMA_UPGRADE_TIMEOUT`, `KAMISAMA_UPGRADE_TRIAL`,
//! `KAMISAMA_MAX_LIFETIME`, `KAMISAMA_MAX_LIFETIME_JITTER`, `KAMISAMA_MAX_REQUESTS`,
//! `KAMISAMA_MAX_REQUESTS_JITTER`, `KAMISAMA_MAX_MEMORY`,
//! `KAMISAMA_RECYCLE_AT_ONCE`, `KAMISAMA_USER`, `KAMISAMA_GROUP`, `KAMISAMA_NO_NEW_PRIVS`,
//! `KAMISAMA_LIMIT_NOFILE`, `KAMISAMA_LIMIT_CORE`, `KAMISAMA_LIMIT_AS`,
//! `KAMISAMA_OOM_SCORE_ADJ` and `KAMISAMA_CPU_AFFINITY` (durations in seconds;
//! `KAMISAMA_INSTANCES=auto` for one worker per usable CPU). An invalid value stops the
//! program before anything is forked, with exit status 2 and a message naming the variable
//! and the value.
//!
//! # Observing
//!
//! The master writes one line per [`Event`] to stderr, `kamisama[PID]: EVENT key=value...`,
//! and gives the same events to the callback set with [`Supervisor::on_event`]:
//!
//! ```text
//! kamisama[4242]: started instances=2 respawn_limit=3 respawn_interval=60s shutdown_timeout=10s restart=always backoff_max=0s timeout=0s
//! kamisama[4242]: spawned index=0 pid=4243
//! kamisama[4242]: spawned index=1 pid=4244
//! kamisama[4242]: ready workers=2
//! kamisama[4242]: exited index=1 pid=4244 status=SIGKILL
//! kamisama[4242]: respawning index=1 respawns=1 limit=3 window=60s delay=0s
//! kamisama[4242]: spawned index=1 pid=4250
//! kamisama[4242]: shutdown-started signal=SIGTERM workers=2
//! kamisama[4242]: exited index=0 pid=4243 status=SIGTERM stopped=true
//! kamisama[4242]: exited index=1 pid=4250 status=SIGTERM stopped=true
//! kamisama[4242]: shutdown-finished exit=0
//! ```
//!
//! `status` is an exit code, a signal name, or `panicked` (exit code 101). Workers' own
//! stdout and stderr pass through untouched.
//!
//! # Recipes
//!
//! Each compiles as written; `examples/` in the repository has them as whole programs.
//!
//! **A queue worker that never drops a job.** TERM (a shutdown, a rolling restart) waits for
//! the job in hand; the nap between jobs ends at once.
//!
//! ```no_run
//! # fn next_job(_index: usize) -> Option<u64> { None }
//! # fn run(_job: u64) -> Result<(), std::io::Error> { Ok(()) }
//! #[kamisama::main(instances = 4, shutdown_timeout = 30)]
//! fn worker(worker: &kamisama::Worker) -> Result<(), std::io::Error> {
//!     while !worker.stop_requested() {
//!         match next_job(worker.index()) {
//!             Some(job) => run(job)?,
//!             None => worker.sleep(std::time::Duration::from_secs(5)),
//!         }
//!     }
//!     Ok(())
//! }
//! ```
//!
//! **Batch shards with an exit status.** Each index runs once; a failed shard is retried
//! with a backoff, within the respawn limit; the program exits 0 once every shard has
//! succeeded, 1 if one could not.
//!
//! ```no_run
//! # fn process_shard(_shard: usize, _of: usize) -> Result<(), String> { Ok(()) }
//! #[kamisama::main(instances = 8, restart = "on-failure", respawn_limit = 5, backoff_max = 30)]
//! fn shard(index: usize) -> Result<(), String> {
//!     process_shard(index, 8)
//! }
//! ```
//!
//! **A preforking server.** The master binds once; the workers accept on the same socket, and
//! a rolling restart (`HUP`) or an upgrade (`USR2`) loses no connection.
//!
//! ```no_run
//! use std::io::Write;
//!
//! #[kamisama::main(instances = 4, listen = "127.0.0.1:8080", readiness = "declared")]
//! fn worker(worker: &kamisama::Worker) {
//!     let listener = &worker.listeners()[0];
//!     worker.ready();
//!     while let Some(connection) = worker.accept(listener) {
//!         if let Ok(mut stream) = connection {
//!             let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nhi\n");
//!         }
//!     }
//! }
//! ```
//!
//! **Events into `tracing` or `log`, or as JSON lines.** The callback runs in the master
//! with every event; turn the master's own lines off when something else writes them.
//!
//! ```no_run
//! # fn crunch(_index: usize) {}
//! use kamisama::{Event, Supervisor};
//!
//! fn main() -> std::process::ExitCode {
//!     Supervisor::new()
//!         .instances(4)
//!         .log(false)
//!         .on_event(|event: &Event| match event {
//!             Event::Exited { status, .. } if !status.success() => {
//!                 tracing::warn!(event = event.name(), "{event}");
//!             }
//!             _ => log::info!("{event}"),
//!         })
//!         .run(crunch)
//! }
//! ```
//!
//! `#[kamisama::main(log = "json")]` (or `KAMISAMA_LOG=json`) writes one JSON object per
//! event instead, for a log pipeline.
//!
//! **Under systemd and Kubernetes.** The master speaks systemd's notification protocol:
//!
//! ```ini
//! [Service]
//! Type=notify
//! ExecStart=/usr/local/bin/crunch
//! ExecReload=/bin/kill -HUP $MAINPID
//! KillMode=mixed
//! TimeoutStopSec=20
//! WatchdogSec=30
//! ```
//!
//! and in a container it is a fine PID 1, whose status file answers a readiness probe:
//!
//! ```yaml
//! containers:
//!   - name: crunch
//!     image: crunch:latest
//!     env: [{ name: KAMISAMA_STATUS_FILE, value: /tmp/status.json }]
//!     readinessProbe:
//!       exec: { command: ["grep", "-q", "\"phase\":\"ready\"", "/tmp/status.json"] }
//! terminationGracePeriodSeconds: 20
//! ```
//!
//! With the `metrics` feature, `Supervisor::metrics` (`metrics = "127.0.0.1:9464"`, or
//! `KAMISAMA_METRICS`) has the master answer `GET /metrics` with the fleet in the Prometheus
//! text format (OpenMetrics to a scraper that asks): each worker's state, pid, age, whether
//! it is busy, the work it counted with [`Worker::completed`], its memory and how its
//! predecessors ended; the fleet's respawns, hangs, recycles and upgrades; each TCP
//! listener's accept queue. The master serves it from its own loop, only when a scrape
//! comes, with every socket non-blocking and every connection bounded.
//!
//! `examples/deploy` in the repository has the whole files, checked by the tests.
//!
//! # Limitations
//!
//! - Signals of one kind coalesce while the master is busy: a burst of ten `TTIN` in a few
//!   microseconds may start fewer than ten workers. Send them a moment apart to count on each.
//! - A master that is stopped (`SIGSTOP`, Ctrl-Z) and continued loses the `TTIN` and `TTOU`
//!   sent meanwhile: the kernel discards pending stop-class signals on `SIGCONT`.
//! - The event callback's panics are caught only when panics unwind; with
//!   `panic = "abort"`, a panic there aborts the master, and the workers stop on their death
//!   signal.
//! - A signal that arrives before the master has blocked its signals (the first instants of
//!   the process) has its default action: a `TERM`, `INT`, `QUIT`, `HUP`, `USR1` or `USR2`
//!   then kills the master, which has forked nothing yet.
//! - `PR_SET_PDEATHSIG` reaches the workers only: when the master is killed with `KILL`, a
//!   worker's own subprocesses are not signalled by the kernel (the worker may forward its
//!   `TERM` to them).
//! - The master must be single-threaded when it starts; see [`Supervisor#threads`].
//! - A worker that reads from the terminal is stopped by `SIGTTIN`, as any background
//!   process group is.
//!
//! # Platform
//!
//! Linux only: kamisama relies on `prctl(PR_SET_PDEATHSIG)`, `PR_SET_CHILD_SUBREAPER`, signalfd
//! and /proc. Building for another system fails with a message saying so.

#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "kamisama supports Linux only: it relies on prctl(PR_SET_PDEATHSIG), PR_SET_CHILD_SUBREAPER, \
     signalfd and /proc"
);

#[doc(inline)]
pub use kamisama_macros::main;

/// What `#[kamisama::main]` makes of an `async fn`: `Async` with the `tokio` feature, and
/// without it an error that names the feature. Not public API.
#[cfg(feature = "tokio")]
#[doc(hidden)]
#[macro_export]
macro_rules! __async_worker {
    ($worker:expr) => {
        $crate::Async($worker)
    };
}

/// What `#[kamisama::main]` makes of an `async fn`: `Async` with the `tokio` feature, and
/// without it an error that names the feature. Not public API.
#[cfg(not(feature = "tokio"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __async_worker {
    ($worker:expr) => {
        ::core::compile_error!(
            "an `async` worker needs kamisama's `tokio` feature: \
             `cargo add kamisama --features tokio`"
        )
    };
}

/// What `#[kamisama::main(metrics = "...")]` makes of the chain of settings: the call to
/// `metrics` with the `metrics` feature, and without it an error that names the feature. Not
/// public API.
#[cfg(feature = "metrics")]
#[doc(hidden)]
#[macro_export]
macro_rules! __metrics {
    ($supervisor:expr, $address:expr) => {
        $supervisor.metrics($address)
    };
}

/// What `#[kamisama::main(metrics = "...")]` makes of the chain of settings: the call to
/// `metrics` with the `metrics` feature, and without it an error that names the feature. Not
/// public API.
#[cfg(not(feature = "metrics"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __metrics {
    ($supervisor:expr, $address:expr) => {
        ::core::compile_error!(
            "`metrics` needs kamisama's `metrics` feature: \
             `cargo add kamisama --features metrics`"
        )
    };
}

/// The README's examples, each a whole program, compiled as doctests (with the `tokio`
/// feature, which one of them needs). Not public API.
#[cfg(all(doctest, feature = "tokio"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// Support items for kamisama's own code. Not public API.
#[doc(hidden)]
pub mod __private {
    /// The return type of a function type: `<fn() -> ! as FnOutput>::Output` names `!`, which
    /// stable Rust cannot write as a type.
    pub trait FnOutput {
        /// The return type.
        type Output;
    }

    impl<T> FnOutput for fn() -> T {
        type Output = T;
    }

    /// What the metrics endpoint sends back to a connection that sent `request` (with a
    /// one-line body for a scrape), or `None` while `request` may still grow into one: the
    /// entry of the fuzz target (`fuzz/`).
    #[cfg(all(target_os = "linux", feature = "metrics"))]
    pub fn metrics_answer(request: &[u8]) -> Option<Vec<u8>> {
        crate::master::metrics::answer_to(request)
    }
}

#[cfg(target_os = "linux")]
mod config;
#[cfg(target_os = "linux")]
mod env;
#[cfg(target_os = "linux")]
mod error;
#[cfg(target_os = "linux")]
mod event;
#[cfg(target_os = "linux")]
mod listen;
#[cfg(target_os = "linux")]
mod log;
#[cfg(target_os = "linux")]
mod master;
#[cfg(target_os = "linux")]
mod procfs;
#[cfg(target_os = "linux")]
mod signals;
#[cfg(target_os = "linux")]
mod supervisor;
#[cfg(target_os = "linux")]
mod text;
#[cfg(target_os = "linux")]
mod title;
#[cfg(target_os = "linux")]
mod worker;

#[cfg(target_os = "linux")]
pub use config::{
    usable_cpus, CpuAffinity, Heartbeat, LogFormat, Readiness, Restart, Runtime, Signal,
    UnknownCpuAffinity, UnknownHeartbeat, UnknownLogFormat, UnknownReadiness, UnknownRestart,
    UnknownRuntime, UnknownSignal, MAX_INSTANCES,
};
#[cfg(target_os = "linux")]
pub use error::Error;
#[cfg(target_os = "linux")]
pub use event::{Event, ExitStatus};
#[cfg(target_os = "linux")]
pub use listen::{Listener, Stream};
#[cfg(target_os = "linux")]
pub use supervisor::{Outcome, Supervisor};
#[cfg(target_os = "linux")]
pub use worker::{Accept, Worker, WorkerFn, WorkerResult};
#[cfg(all(target_os = "linux", feature = "tokio"))]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use worker::{Async, AsyncAccept, AsyncStream};

/// A sign of life for hang detection, from a worker function that does not take the
/// [`Worker`] handle; the same as [`Worker::heartbeat`]. Does nothing in the master, or when
/// hang detection is off.
///
/// ```no_run
/// use std::time::Duration;
///
/// # fn crunch_one_batch(_index: usize) {}
/// #[kamisama::main(instances = 4, timeout = 30)]
/// fn worker(index: usize) {
///     loop {
///         crunch_one_batch(index); // well under 30 seconds each
///         kamisama::heartbeat();
///     }
/// }
/// ```
#[cfg(target_os = "linux")]
pub fn heartbeat() {
    worker::shared::beat();
}
