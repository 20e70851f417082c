//! The public builder: settings in, a supervised fleet of workers out.

use crate::config::{
    Config, CpuAffinity, Heartbeat, LogFormat, Readiness, Restart, Runtime, Signal, MAX_INSTANCES,
};
use crate::master::{Master, OnEvent, Relaunch, Resources, StatusFile, Takeover};
use crate::signals::Signals;
use crate::title::Titles;
use crate::worker::confine::Confinement;
use crate::worker::shared::SharedSlots;
use crate::{env, listen, procfs, Error, Event, WorkerFn};
use nix::sys::prctl;
use nix::unistd::Pid;
use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

/// Runs a worker function in supervised worker processes.
///
/// This is what [`#[kamisama::main]`](macro@crate::main) expands to; call it by hand to pass a
/// closure, or to do work in the master before the first fork.
///
/// ```no_run
/// use std::time::Duration;
///
/// fn main() -> std::process::ExitCode {
///     // Loaded once in the master; every worker shares the pages through copy-on-write.
///     let dictionary: Vec<String> = load_dictionary();
///     kamisama::Supervisor::new()
///         .instances(8)
///         .respawn_limit(10)
///         .respawn_interval(Duration::from_secs(60))
///         .run(|index: usize| {
///             for word in dictionary.iter().skip(index).step_by(8) {
///                 println!("worker {index}: {word}");
///             }
///         })
/// }
/// # fn load_dictionary() -> Vec<String> { Vec::new() }
/// ```
///
/// # Threads
///
/// Workers are forked from the master, and a fork copies the whole memory of a process but
/// only the thread that called it. A lock held by any other thread at that moment (the
/// allocator's, stdout's, the environment's) would stay locked for ever in the worker. So the
/// master must be single-threaded when [`run`](Supervisor::run) starts: do not start threads
/// (or a runtime that starts them) before it; start them inside the worker function instead.
/// `run` counts the threads in `/proc/self/task` and refuses to start otherwise
/// ([`Error::Threaded`]). The master starts no thread itself: in a fleet of 2,000 workers or
/// more, it forks one helper process, its reaper (`kamisama-reaper`), which holds a pidfd per
/// worker so that a death costs the master the same whatever the fleet's size.
#[must_use = "a Supervisor does nothing until `run` is called"]
#[derive(Default)]
pub struct Supervisor<'a> {
    config: Config,
    on_event: Option<OnEvent<'a>>,
}

/// How a master that started ended.
///
/// ```no_run
/// # fn worker(_: usize) {}
/// use kamisama::Outcome;
///
/// match kamisama::Supervisor::new().try_run(worker) {
///     Ok(Outcome::GaveUp) => eprintln!("workers died too often"),
///     Ok(Outcome::Finished { failed, .. }) => println!("done, {failed} failed"),
///     Ok(_) => {}
///     Err(error) => eprintln!("{error}"),
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// SIGTERM, SIGINT or SIGQUIT stopped the master and every worker. Exit status 0.
    Stopped,
    /// An upgrade handed the listeners over to a new master, which runs on; this one stopped
    /// its own workers. Exit status 0.
    Upgraded,
    /// Workers died more often than the respawn limit allows, or a worker could not be
    /// forked; every worker was stopped. Exit status 1.
    GaveUp,
    /// This master was the new one of an upgrade, and its fleet failed the upgrade's trial
    /// (a worker crashed or hung, or the master was stopped): it stopped its workers, and the
    /// old master serves on. Exit status 1.
    RolledBack,
    /// With the restart policy `on-failure` or `never`: no worker runs and none will be
    /// forked again. Exit status 0 if the last worker of every index succeeded, 1 otherwise.
    #[non_exhaustive]
    Finished {
        /// Indices whose last worker failed.
        failed: usize,
    },
}

impl Outcome {
    /// The exit status [`Supervisor::run`] ends the process with.
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// let outcome = kamisama::Supervisor::new().try_run(worker);
    /// if let Ok(outcome) = outcome {
    ///     std::process::exit(i32::from(outcome.exit_code()));
    /// }
    /// ```
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Stopped | Outcome::Upgraded | Outcome::Finished { failed: 0 } => 0,
            Outcome::GaveUp | Outcome::RolledBack | Outcome::Finished { .. } => 1,
        }
    }
}

impl fmt::Debug for Supervisor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("config", &self.config)
            .field("on_event", &self.on_event.as_ref().map(|_| "FnMut(&Event)"))
            .finish()
    }
}

impl<'a> Supervisor<'a> {
    /// A supervisor with the default settings: one instance, always restarted, at most 3
    /// respawns within 60 seconds, no backoff, and 10 seconds for a worker to stop before
    /// SIGKILL.
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new().instances(4).run(worker);
    /// ```
    pub fn new() -> Self {
        Supervisor::default()
    }

    /// How many workers run at once, with indices `0..instances`. At least 1 and at most
    /// [`MAX_INSTANCES`](crate::MAX_INSTANCES); default 1.
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new().instances(17).run(worker);
    /// ```
    pub fn instances(mut self, instances: usize) -> Self {
        self.config.instances = instances;
        self
    }

    /// How many respawns the master allows within
    /// [`respawn_interval`](Supervisor::respawn_interval) before it gives up; 0 makes the first
    /// death fatal. Default 3.
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new().respawn_limit(10).run(worker);
    /// ```
    pub fn respawn_limit(mut self, respawn_limit: u32) -> Self {
        self.config.respawn_limit = respawn_limit;
        self
    }

    /// The sliding window over which [`respawn_limit`](Supervisor::respawn_limit) counts.
    /// Longer than zero; default 60 seconds.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new()
    ///     .respawn_limit(10)
    ///     .respawn_interval(Duration::from_secs(300))
    ///     .run(worker);
    /// ```
    pub fn respawn_interval(mut self, respawn_interval: Duration) -> Self {
        self.config.respawn_interval = respawn_interval;
        self
    }

    /// How long a worker asked to stop (by a shutdown, SIGTTOU or a rolling restart) may take
    /// before it gets SIGKILL. Longer than zero; default 10 seconds.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new().shutdown_timeout(Duration::from_secs(30)).run(worker);
    /// ```
    pub fn shutdown_timeout(mut self, shutdown_timeout: Duration) -> Self {
        self.config.shutdown_timeout = shutdown_timeout;
        self
    }

    /// When a worker that exited by itself is forked again; default [`Restart::Always`].
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new().restart(kamisama::Restart::OnFailure).run(worker);
    /// ```
    pub fn restart(mut self, restart: Restart) -> Self {
        self.config.restart = restart;
        self
    }

    /// Turns on the backoff for crash loops: an index whose worker dies before it ran for
    /// `backoff_max` waits before its respawn, 100 ms the first time, doubling with each such
    /// death in a row, up to `backoff_max`. An index whose worker ran at least `backoff_max`
    /// is forked again at once. Zero, the default, turns backoff off.
    ///
    /// The respawn limit counts a respawn when the death is seen, not when the fork happens,
    /// so backoff slows a crash loop without hiding it from the limit.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new().backoff_max(Duration::from_secs(30)).run(worker);
    /// ```
    pub fn backoff_max(mut self, backoff_max: Duration) -> Self {
        self.config.backoff_max = backoff_max;
        self
    }

    /// Turns on hang detection: a worker that shows no sign of life for `timeout` is hung.
    /// The master logs it (`hung index=... pid=... silent_for=...`), sends it
    /// [`hang_signal`](Supervisor::hang_signal) (SIGABRT by default, which leaves a core
    /// dump or runs a backtrace hook), SIGKILL [`hang_grace`](Supervisor::hang_grace) (a
    /// second) later if it is still there, and respawns it like any crash, counted by the
    /// respawn limit. Zero, the default, turns it off.
    ///
    /// Signs of life: [`Worker::heartbeat`](crate::Worker::heartbeat) (or
    /// [`heartbeat`](crate::heartbeat) without the handle); the time a worker spends
    /// waiting through its handle ([`sleep`](crate::Worker::sleep),
    /// [`accept`](crate::Worker::accept), [`wait_readable`](crate::Worker::wait_readable));
    /// and, for an async worker, a task its runtime runs on its own. A beat costs no system
    /// call. The master wakes only when a worker's deadline may have passed, about once per
    /// `timeout` for the whole fleet (a beat wakes nobody, so while a worker waits through
    /// its handle the master looks at it again once per `timeout`); with hang detection off
    /// it never wakes while idle. A worker stopped (SIGSTOP) while it waits is hung once it
    /// has been seen stopped for a `timeout`: within two of the stop.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// kamisama::Supervisor::new()
    ///     .timeout(Duration::from_secs(30))
    ///     .run(|worker: kamisama::Worker| loop {
    ///         worker.heartbeat(); // at least every 30 seconds
    ///         # break;
    ///     });
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// How long a new worker may take to show its first sign of life, when hang detection is
    /// on: start-up work is not a hang. With [`Readiness::Declared`], it is also how long a
    /// new worker may take to call [`Worker::ready`](crate::Worker::ready), hang detection on
    /// or off: one that has not is [`Event::NotReady`], and treated as hung, so that a
    /// rolling restart or a start never waits for ever. Longer than zero; default 60 seconds.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new()
    ///     .timeout(Duration::from_secs(30))
    ///     .boot_timeout(Duration::from_secs(300))
    ///     .run(worker);
    /// ```
    pub fn boot_timeout(mut self, boot_timeout: Duration) -> Self {
        self.config.boot_timeout = boot_timeout;
        self
    }

    /// How long a hung worker has, once it got the hang signal, before SIGKILL: the time the
    /// signal has to act, such as a core dump or a backtrace to write. Longer than zero;
    /// default 1 second.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new()
    ///     .timeout(Duration::from_secs(30))
    ///     .hang_grace(Duration::from_secs(30)) // a core dump of a large worker takes a while
    ///     .run(worker);
    /// ```
    pub fn hang_grace(mut self, hang_grace: Duration) -> Self {
        self.config.hang_grace = hang_grace;
        self
    }

    /// The signal a hung worker gets first: [`Signal::ABRT`] (the default), [`Signal::QUIT`],
    /// or a real-time signal ([`Signal::rt`]) that the worker handles itself; SIGKILL follows
    /// after [`hang_grace`](Supervisor::hang_grace).
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new()
    ///     .timeout(Duration::from_secs(30))
    ///     .hang_signal(kamisama::Signal::QUIT)
    ///     .run(worker);
    /// ```
    pub fn hang_signal(mut self, signal: Signal) -> Self {
        self.config.hang_signal = signal;
        self
    }

    /// The tokio runtime each `kamisama::Async` worker builds after its fork; default
    /// [`Runtime::CurrentThread`], which explains why. Sync workers build none.
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new().runtime(kamisama::Runtime::MultiThread).run(worker);
    /// ```
    pub fn runtime(mut self, runtime: Runtime) -> Self {
        self.config.runtime = runtime;
        self
    }

    /// Gives each async worker a [`Runtime::MultiThread`] runtime of `threads` threads.
    /// At least 1 and at most 1024; with [`runtime`](Supervisor::runtime) set to
    /// `CurrentThread` afterwards, the start is refused.
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new().worker_threads(2).run(worker);
    /// ```
    pub fn worker_threads(mut self, threads: usize) -> Self {
        self.config.runtime = Runtime::MultiThread;
        self.config.worker_threads = Some(threads);
        self
    }

    /// What shows an async worker alive to hang detection: a task on its runtime
    /// ([`Heartbeat::Runtime`], the default), which catches a runtime blocked by a task that
    /// never yields (a thread stuck in one task, in either flavour of runtime); or only the
    /// worker's own [`Worker::heartbeat`](crate::Worker::heartbeat) calls and waits through
    /// its handle ([`Heartbeat::Manual`]), which also catches a main loop that stops going
    /// round while the runtime runs on (a deadlock on an async lock). Sync workers always
    /// beat themselves.
    ///
    /// ```no_run
    /// # #[cfg(feature = "tokio")]
    /// # fn main() -> std::process::ExitCode {
    /// use std::time::Duration;
    ///
    /// # async fn next_job() {}
    /// kamisama::Supervisor::new()
    ///     .timeout(Duration::from_secs(30))
    ///     .heartbeat(kamisama::Heartbeat::Manual)
    ///     .run(kamisama::Async(|worker: kamisama::Worker| async move {
    ///         loop {
    ///             worker.heartbeat(); // once per job: a job stuck for 30 s is a hang
    ///             next_job().await;
    ///         }
    ///     }))
    /// # }
    /// # #[cfg(not(feature = "tokio"))]
    /// # fn main() {}
    /// ```
    pub fn heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.config.heartbeat = heartbeat;
        self
    }

    /// When a new worker counts as ready: as soon as it is forked (the default), or once it
    /// calls [`Worker::ready`](crate::Worker::ready). The fleet is reported ready to systemd
    /// once every worker is, and a rolling restart moves from an index to the next once the
    /// replacement is.
    ///
    /// ```no_run
    /// kamisama::Supervisor::new()
    ///     .readiness(kamisama::Readiness::Declared)
    ///     .run(|worker: kamisama::Worker| {
    ///         // ... connect, warm caches ...
    ///         worker.ready();
    ///         // ... serve ...
    ///     });
    /// ```
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.config.readiness = readiness;
        self
    }

    /// Keeps a live status of the fleet in `path`, a JSON file rewritten (atomically, by a
    /// rename) whenever something happens: each index with its worker's pid, state
    /// (`running`, `stopping`, `hung`, `backing-off`, `pending`, `done`), start time,
    /// restarts and last exit status, and the fleet's phase and settings. Its directory must
    /// exist and be writable; the master checks that before it forks anything.
    ///
    /// ```text
    /// $ jq -r '.workers[] | "\(.index) \(.pid) \(.state) up \(now - .started | floor)s restarts \(.restarts) last \(.last_exit)"' /run/crunch/status.json
    /// 0 4243 running up 3605s restarts 0 last null
    /// 1 4250 running up 12s restarts 2 last SIGKILL
    /// ```
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new().status_file("/run/crunch/status.json").run(worker);
    /// ```
    pub fn status_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.status_file = Some(path.into());
        self
    }

    /// Whether `ps` and `top` show each process's role: the master as
    /// `NAME: master (17 workers)`, each worker as `NAME: worker 3` (and `comm` as `NAME:w3`).
    /// Default `true`. The title is written over the memory of the command line and of the
    /// environment after it, as nginx and PostgreSQL do, whose strings are first moved
    /// elsewhere, so that `std::env::args()` and `std::env::vars()` are unchanged, and a title
    /// shows in full however short the command line (`/usr/bin/crunch`). `/proc/PID/environ`,
    /// which shows that memory as it is, then shows the title over its first variables;
    /// turn titles off where something reads a process's environment from there.
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new().process_titles(false).run(worker);
    /// ```
    pub fn process_titles(mut self, process_titles: bool) -> Self {
        self.config.process_titles = process_titles;
        self
    }

    /// Listens on `address` for the workers: the master binds it once, before its first
    /// fork, and every worker accepts on it ([`Worker::listeners`](crate::Worker::listeners),
    /// [`Worker::accept`](crate::Worker::accept)). `127.0.0.1:8080`, `[::1]:8080`,
    /// `localhost:8080`, or `unix:/run/app.sock`; call it once per address. TCP sockets get
    /// `SO_REUSEADDR`; a Unix socket file left by a dead server is replaced, and anything
    /// else at the path (a file, a FIFO, a symbolic link) stops the start. With systemd's
    /// socket activation (`LISTEN_FDS`), the sockets systemd passes are used instead. A
    /// failed bind stops the start with exit status 2, naming the address.
    ///
    /// The sockets stay open for the rest of the process's life, as the workers'
    /// `listeners()` are `'static`: a program that calls [`try_run`](Supervisor::try_run)
    /// again serves the same sockets, bound by its first run that listened.
    ///
    /// ```no_run
    /// kamisama::Supervisor::new()
    ///     .instances(4)
    ///     .listen("127.0.0.1:8080")
    ///     .listen("unix:/run/app.sock")
    ///     .run(|worker: kamisama::Worker| {
    ///         for listener in worker.listeners() {
    ///             println!("listening on {listener}");
    ///         }
    ///     });
    /// ```
    pub fn listen(mut self, address: impl Into<String>) -> Self {
        self.config.listen.push(address.into());
        self
    }

    /// Answers `GET /metrics` on `address` (`"127.0.0.1:9464"`, `"[::1]:9464"` or
    /// `"unix:/run/app/metrics.sock"`) with the fleet's metrics in the Prometheus text format
    /// (OpenMetrics to a scraper that asks for it): per worker, its state, pid, age, whether
    /// it is busy, the work it completed, its memory, its recycles and exits by reason; per
    /// fleet, the respawns, hangs and upgrades; per listener, the accept queue. Served by the
    /// master itself, from its own loop, only when a scrape arrives: no thread, no timer. Off
    /// by default; `KAMISAMA_METRICS` overrides it (`off` turns it off).
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new().metrics("127.0.0.1:9464").run(worker);
    /// ```
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(mut self, address: impl Into<String>) -> Self {
        self.config.metrics = Some(address.into());
        self
    }

    /// The length of each listener's queue of connections not yet accepted; default 1024,
    /// at most 4096 (the kernel may cap it lower, at `net.core.somaxconn`).
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new().listen("127.0.0.1:8080").backlog(4096).run(worker);
    /// ```
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.config.backlog = backlog;
        self
    }

    /// How long the new master of an upgrade (USR2) has to get its
    /// fleet ready before the upgrade is rolled back; default 60 seconds.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new()
    ///     .listen("127.0.0.1:8080")
    ///     .upgrade_timeout(Duration::from_secs(120))
    ///     .run(worker);
    /// ```
    pub fn upgrade_timeout(mut self, upgrade_timeout: Duration) -> Self {
        self.config.upgrade_timeout = upgrade_timeout;
        self
    }

    /// How long the old master of an upgrade (USR2) stays after its successor's fleet is
    /// ready, with its listeners and all it needs to fork its own fleet again; default 10
    /// seconds, zero for none. Its workers are stopped at the hand-over as they would be
    /// without a trial, and the new master serves; if, within the trial, a worker of the new
    /// fleet crashes or hangs, or the new master exits, the old master forks its fleet again
    /// and stops the new master. It stays the service manager's main process until the trial
    /// passes, so that `systemctl reload` with `kamisama-upgrade` returns then.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new()
    ///     .listen("127.0.0.1:8080")
    ///     .upgrade_trial(Duration::from_secs(30))
    ///     .run(worker);
    /// ```
    pub fn upgrade_trial(mut self, upgrade_trial: Duration) -> Self {
        self.config.upgrade_trial = upgrade_trial;
        self
    }

    /// How long a worker runs before the master recycles it, as uWSGI's
    /// `max-worker-lifetime`; default zero, for ever. The worker is replaced before it is
    /// stopped: its successor (same index) is forked first, and once it is ready, the old one
    /// gets its cooperative stop, with SIGKILL after `shutdown_timeout`. One worker is
    /// replaced at a time; a recycle is no crash, and never counts against `respawn_limit`.
    /// Each worker's lifetime is this plus up to [`max_lifetime_jitter`](Self::max_lifetime_jitter).
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new()
    ///     .max_lifetime(Duration::from_secs(6 * 3600))
    ///     .max_lifetime_jitter(Duration::from_secs(1800))
    ///     .run(worker);
    /// ```
    pub fn max_lifetime(mut self, max_lifetime: Duration) -> Self {
        self.config.max_lifetime = max_lifetime;
        self
    }

    /// The most added to each worker's [`max_lifetime`](Self::max_lifetime), drawn at random
    /// as it is forked (gunicorn's `max_requests_jitter`, for time): workers started together
    /// are then not recycled together. Default zero.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new()
    ///     .max_lifetime(Duration::from_secs(3600))
    ///     .max_lifetime_jitter(Duration::from_secs(600))
    ///     .run(worker);
    /// ```
    pub fn max_lifetime_jitter(mut self, max_lifetime_jitter: Duration) -> Self {
        self.config.max_lifetime_jitter = max_lifetime_jitter;
        self
    }

    /// How many units of work a worker does before the master recycles it, as gunicorn's
    /// `max_requests`: counted by the worker with [`Worker::completed`](crate::Worker::completed)
    /// (a store in memory it shares with the master, no system call), and replaced as
    /// [`max_lifetime`](Self::max_lifetime) replaces it (successor first, one at a time,
    /// never counted against `respawn_limit`). Default zero, no limit.
    ///
    /// ```no_run
    /// #[kamisama::main(max_requests = 10_000, max_requests_jitter = 1000)]
    /// fn worker(worker: kamisama::Worker) {
    ///     while !worker.stop_requested() {
    ///         // One request or job...
    ///         worker.completed(1);
    ///     }
    /// }
    /// ```
    pub fn max_requests(mut self, max_requests: u64) -> Self {
        self.config.max_requests = max_requests;
        self
    }

    /// The most added to each worker's [`max_requests`](Self::max_requests), drawn at random
    /// as it is forked, so that workers started together are not recycled together (gunicorn's
    /// `max_requests_jitter`). Default zero.
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new()
    ///     .max_requests(10_000)
    ///     .max_requests_jitter(1000)
    ///     .run(worker);
    /// ```
    pub fn max_requests_jitter(mut self, max_requests_jitter: u64) -> Self {
        self.config.max_requests_jitter = max_requests_jitter;
        self
    }

    /// The memory, in bytes, past which the master recycles a worker, as uWSGI's
    /// `reload-on-rss`, PM2's `max_memory_restart` or Sidekiq's `SIDEKIQ_MAXMEM_MB`: the
    /// worker's proportional set size (`Pss` in `/proc/PID/smaps_rollup`: its private pages,
    /// and its share of those it shares with the master and its siblings), sampled for the
    /// whole fleet every 5 seconds, one wakeup of the master each time; never sampled without
    /// it. A worker past it is replaced as [`max_lifetime`](Self::max_lifetime) replaces it.
    /// Default zero, no limit.
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new()
    ///     .max_memory(512 << 20)
    ///     .run(worker);
    /// ```
    pub fn max_memory(mut self, max_memory: u64) -> Self {
        self.config.max_memory = max_memory;
        self
    }

    /// How many workers recycling and a rolling restart (`HUP`) may replace at once; default
    /// 1, so that the fleet never has more than one successor starting. More shortens the
    /// time a large fleet takes to recycle workers that came due together (after a deploy,
    /// all of them) or to restart, at the cost of that many workers starting at once.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new()
    ///     .instances(64)
    ///     .max_lifetime(Duration::from_secs(3600))
    ///     .recycle_at_once(4)
    ///     .run(worker);
    /// ```
    pub fn recycle_at_once(mut self, recycle_at_once: usize) -> Self {
        self.config.recycle_at_once = recycle_at_once;
        self
    }

    /// The user every worker runs as, by name or number (`"www-data"`, `"65534"`), as
    /// Unicorn's `user` and gunicorn's `--user`: the master keeps its own identity, to bind
    /// privileged ports before its first fork and to run upgrades, and each worker takes,
    /// after its fork and before the worker function, the user's supplementary groups
    /// (`initgroups`), its group (or [`group`](Supervisor::group)), then the user, its real,
    /// effective and saved ids alike; it then checks that `setuid(0)` fails, and sets
    /// [`no_new_privs`](Supervisor::no_new_privs). A user that does not exist, or a master not
    /// allowed to switch to it (not root, or without `CAP_SETUID`), stops the start with exit
    /// status 2. Listeners, hang detection, readiness, the status file and upgrades work as
    /// they do without it: the master does what needs its rights.
    ///
    /// A worker that changed identity is not dumpable, as the kernel makes it (it was
    /// privileged, and may hold what it read as root): other processes of the user cannot
    /// trace it or take its sockets, and it leaves a core dump only where
    /// `fs.suid_dumpable` is 2.
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// // Started as root: binds port 80, and serves it from unprivileged workers.
    /// kamisama::Supervisor::new()
    ///     .listen("0.0.0.0:80")
    ///     .user("www-data")
    ///     .run(worker);
    /// ```
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.config.user = Some(user.into());
        self
    }

    /// The group every worker runs as, by name or number, instead of the
    /// [`user`](Supervisor::user)'s own; without `user`, the workers keep the master's user
    /// and take this group as their only one. Checked as `user` is.
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new().user("nobody").group("nogroup").run(worker);
    /// ```
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.config.group = Some(group.into());
        self
    }

    /// Whether each worker sets `no_new_privs` before the worker function: no program it
    /// runs then gains privileges (a set-user-ID binary such as `sudo`, or file
    /// capabilities). On by default when [`user`](Supervisor::user) or
    /// [`group`](Supervisor::group) is set, whose point is to keep workers unprivileged; off
    /// by default otherwise, where workers run with the master's identity and may mean to
    /// run such programs (`ping` on some systems, `sudo`), which it would make fail.
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new().no_new_privs(true).run(worker);
    /// ```
    pub fn no_new_privs(mut self, no_new_privs: bool) -> Self {
        self.config.no_new_privs = Some(no_new_privs);
        self
    }

    /// The most files each worker may have open (`RLIMIT_NOFILE`, as both its soft and hard
    /// limit; `u64::MAX` for none). Above the master's hard limit, it needs
    /// `CAP_SYS_RESOURCE` (root usually has it), or the start stops with exit status 2.
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new().limit_nofile(65536).run(worker);
    /// ```
    pub fn limit_nofile(mut self, files: u64) -> Self {
        self.config.limits.nofile = Some(files);
        self
    }

    /// The largest core dump each worker may leave, in bytes (`RLIMIT_CORE`; 0 for none,
    /// `u64::MAX` for no limit). Checked as [`limit_nofile`](Supervisor::limit_nofile) is.
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new().limit_core(0).run(worker);
    /// ```
    pub fn limit_core(mut self, bytes: u64) -> Self {
        self.config.limits.core = Some(bytes);
        self
    }

    /// The most address space each worker may map, in bytes (`RLIMIT_AS`): past it, an
    /// allocation fails, and a Rust worker aborts and is forked again. Counts what is mapped,
    /// not what is used: a multi-thread runtime's stacks and an allocator's arenas count too.
    /// Checked as [`limit_nofile`](Supervisor::limit_nofile) is.
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new().limit_as(4 << 30).run(worker);
    /// ```
    pub fn limit_as(mut self, bytes: u64) -> Self {
        self.config.limits.address_space = Some(bytes);
        self
    }

    /// Each worker's `oom_score_adj`, from -1000 (never killed by the kernel's OOM killer)
    /// to 1000 (killed first). By default a worker gets the master's plus 500, at most 1000:
    /// under memory pressure, the kernel kills a worker, which the master forks again, and
    /// not the master, which is the whole fleet. Below the master's own, it needs
    /// `CAP_SYS_RESOURCE`, or the start stops with exit status 2. The master's own value
    /// costs nothing: a worker inherits it, and writes none.
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new().oom_score_adj(800).run(worker);
    /// ```
    ///
    /// The attribute takes negative values too: a master run with `CAP_SYS_RESOURCE` may
    /// shield its workers as much as itself.
    ///
    /// ```no_run
    /// #[kamisama::main(instances = 2, oom_score_adj = -500)]
    /// fn worker(index: usize) {
    ///     println!("worker {index}");
    /// }
    /// ```
    pub fn oom_score_adj(mut self, adj: i32) -> Self {
        self.config.oom_score_adj = Some(adj);
        self
    }

    /// Which CPUs each worker runs on: with [`CpuAffinity::Auto`], worker `i` on the `i`-th
    /// CPU the master may use, as nginx's `worker_cpu_affinity auto`. It helps where workers
    /// are as many as the CPUs ([`usable_cpus`](crate::usable_cpus)), each busy all the time
    /// (a compute worker, a server under steady load): each keeps its caches warm and no two
    /// fight for one CPU. It hurts where other processes share the CPUs or the load is
    /// uneven, since the scheduler can no longer move a worker off a busy CPU; the default
    /// leaves that to the scheduler.
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new()
    ///     .instances(kamisama::usable_cpus())
    ///     .cpu_affinity(kamisama::CpuAffinity::Auto)
    ///     .run(worker);
    /// ```
    pub fn cpu_affinity(mut self, affinity: CpuAffinity) -> Self {
        self.config.cpu_affinity = affinity;
        self
    }

    /// Calls `on_event` in the master with every [`Event`] it logs: to feed metrics or
    /// alerts. The callback runs in the master's loop, so it must be quick and must not start
    /// threads (see [Threads](Supervisor#threads)); if it panics, the panic is caught and
    /// logged and supervision goes on (provided panics unwind: under `panic = "abort"` the
    /// master aborts, and its workers stop on their death signal).
    ///
    /// ```no_run
    /// use kamisama::Event;
    ///
    /// let mut crashes = 0;
    /// kamisama::Supervisor::new()
    ///     .instances(4)
    ///     .on_event(move |event| {
    ///         if let Event::Exited { index, status, .. } = event {
    ///             if !status.success() {
    ///                 crashes += 1;
    ///                 eprintln!("alert: crash {crashes}, worker {index} ended with {status}");
    ///             }
    ///         }
    ///     })
    ///     .run(|index: usize| println!("worker {index}"));
    /// ```
    pub fn on_event(mut self, on_event: impl FnMut(&Event) + 'a) -> Self {
        self.on_event = Some(Box::new(on_event));
        self
    }

    /// Whether the master writes its one line per event to stderr; default `true`.
    /// `log(false)` is `log_format(LogFormat::Off)`.
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new().log(false).run(worker);
    /// ```
    pub fn log(mut self, log: bool) -> Self {
        self.config.log = if log { LogFormat::Text } else { LogFormat::Off };
        self
    }

    /// How the master writes its log, and a worker its `worker-failed` line: text (the
    /// default), JSON lines, or nothing; see [`LogFormat`].
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// kamisama::Supervisor::new().log_format(kamisama::LogFormat::Json).run(worker);
    /// ```
    pub fn log_format(mut self, format: LogFormat) -> Self {
        self.config.log = format;
        self
    }

    /// Runs the master until it stops, and returns the exit status for `main`: that of the
    /// [`Outcome`] (0 when stopped by a signal, 1 when it gave up, 0 or 1 when every index is
    /// done), or 2 when it could not start (the error is printed to stderr, and no worker was
    /// forked).
    ///
    /// This is [`try_run`](Supervisor::try_run) for a `main` function.
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// fn main() -> std::process::ExitCode {
    ///     kamisama::Supervisor::new().instances(4).run(worker)
    /// }
    /// ```
    #[must_use = "the fleet's exit status is lost: return it from `main` \
                  (`fn main() -> std::process::ExitCode`), or a fleet that gave up exits 0 \
                  and a service manager never restarts it"]
    pub fn run<W: WorkerFn<S>, S>(self, worker: W) -> ExitCode {
        match self.try_run(worker) {
            Ok(outcome) => ExitCode::from(outcome.exit_code()),
            Err(error) => {
                eprintln!("kamisama[{}]: error: {error}", Pid::this());
                ExitCode::from(2)
            }
        }
    }

    /// Applies the `KAMISAMA_*` environment overrides, checks that the settings and the
    /// process can run, then forks the workers and supervises them until a signal stops them,
    /// they die too often, or (with the restart policies `on-failure` and `never`) every index
    /// is done.
    ///
    /// Each worker calls `worker` in a process of its own (see [`WorkerFn`] for the
    /// signatures it may have) and ends when it returns (status 0, or 1 for an `Err`) or
    /// panics (status 101); it never returns into the caller.
    ///
    /// # Errors
    ///
    /// Before forking anything: an invalid environment value or setting, other threads in the
    /// process (see [Threads](Supervisor#threads)), a tokio runtime running in it (with the
    /// `tokio` feature), or a refused setup call.
    ///
    /// ```no_run
    /// # fn worker(_: usize) {}
    /// match kamisama::Supervisor::new().instances(4).try_run(worker) {
    ///     Ok(outcome) => println!("the fleet ended: {outcome:?}"),
    ///     Err(error) => eprintln!("could not start: {error}"),
    /// }
    /// ```
    #[must_use = "the fleet's outcome is lost: `Outcome::exit_code` is the exit status to end with"]
    pub fn try_run<W: WorkerFn<S>, S>(self, worker: W) -> Result<Outcome, Error> {
        let Supervisor {
            mut config,
            on_event,
        } = self;
        env::apply(&mut config)?;
        config.validate()?;
        #[cfg(feature = "tokio")]
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::AsyncRuntime);
        }
        if let Some(threads @ 2..) = procfs::thread_count() {
            return Err(Error::Threaded { threads });
        }
        let confinement = Confinement::resolve(&config)?;
        // Started by an upgrade: the fleet is as large as the old master's was, and the status
        // file stays the old master's until it hands over.
        let takeover = Takeover::from_env();
        if let Some(instances) = takeover.as_ref().and_then(Takeover::instances) {
            config.instances = instances;
        }
        if let Some(path) = &config.status_file {
            StatusFile::check(path, takeover.is_none()).map_err(|error| Error::StatusFile {
                path: path.clone(),
                error,
            })?;
        }
        // Read while a file descriptor is sure to be free: with none to spare later, the master
        // finds its children by asking about every pid up to this one.
        let pid_max = procfs::pid_max().unwrap_or(MAX_INSTANCES as i32);
        let listeners = listen::open(&config.listen, config.backlog)?;
        let unwatched = config.timeout.is_zero() && config.readiness == Readiness::Forked;
        // The metrics and the status file show what the workers say there (busy or waiting,
        // work done), and workers that share listeners balance their connections by it.
        let unshared = config.max_requests == 0
            && config.metrics.is_none()
            && config.status_file.is_none()
            && listeners.is_empty();
        let shared = if unwatched && unshared {
            None
        } else {
            Some(SharedSlots::map().map_err(|errno| Error::os("mmap", errno))?)
        };
        // In a master an upgrade started, a Unix socket's path stays the old master's until the
        // service is this one's.
        #[cfg(feature = "metrics")]
        let metrics = config
            .metrics
            .as_deref()
            .map(|address| crate::master::metrics::Endpoint::open(address, takeover.is_none()))
            .transpose()?;
        if W::IS_ASYNC {
            // For tokio's `from_std` and the like, which need them so, with no extra call.
            listen::set_nonblocking(listeners)?;
        }
        // Before the titles take the command line's memory over; `args()` is unchanged by
        // them anyway.
        let relaunch = Relaunch::from_start();
        let titles = config.process_titles.then(Titles::take_over);
        // Last, so that a refusal above leaves the process as it was. Orphans of a worker's
        // subprocesses come back to the master, which reaps them and stops them at shutdown
        // instead of leaving them to init.
        let was_subreaper = prctl::get_child_subreaper().unwrap_or(false);
        prctl::set_child_subreaper(true).map_err(|errno| Error::os("prctl", errno))?;
        let outcome = Signals::install().map(|signals| {
            let resources = Resources {
                signals: &signals,
                shared: shared.as_ref(),
                titles: titles.as_ref(),
                confinement: &confinement,
                pid_max,
                relaunch: relaunch.as_ref(),
                takeover,
                #[cfg(feature = "metrics")]
                metrics,
            };
            Master::new(&config, worker, resources, on_event).run()
        });
        let _ = prctl::set_child_subreaper(was_subreaper);
        outcome
    }
}
