//! The master's event loop: fork the workers, block until a signal or a deadline, reap what
//! exited, respawn what must be, replace or stop workers when asked.
//!
//! Signals only change the master's state; each turn of the loop then derives what is to be
//! done from that state (fork what is due, move a rolling restart on, kill what is overdue,
//! sweep for orphans during a shutdown). No order of signals, deaths and batches can
//! therefore leave a step undone.

use crate::config::{Config, Readiness, Restart, MAX_INSTANCES};
use crate::event::{Event, ExitStatus, Level};
use crate::log::Log;
use crate::signals::Signals;
use crate::title::Titles;
use crate::worker::confine::Confinement;
use crate::worker::shared::SharedSlots;
use crate::worker::{self, Setup, WorkerFn};
use crate::Outcome;
use fleet::{Leftovers, Orphans, Stop};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use notify::{Notify, Phase, Summary};
pub(crate) use reaper::Inherited;
use reaper::{Reaper, Sigchld, WALK_WORKERS};
use recycle::Recycler;
use replace::{Replacements, Why};
use respawn::{Backoff, RespawnLimiter};
use slots::{Due, Ending, Slot, Slots, State, Stopping};
pub(crate) use status::StatusFile;
use std::collections::HashMap;
use std::io::Write;
use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use table::Table;
use upgrade::Upgrade;
pub(crate) use upgrade::{Relaunch, Takeover};
use watchdog::{Now, Verdict, Watch, Watchdog};

mod fleet;
#[cfg(feature = "metrics")]
pub(crate) mod metrics;
mod notify;
mod reaper;
mod recycle;
mod replace;
mod respawn;
mod slots;
mod status;
pub(crate) mod table;
mod upgrade;
mod watchdog;

/// Without the `metrics` feature, the loop's hooks for the endpoint do nothing.
#[cfg(not(feature = "metrics"))]
impl<W, S> Master<'_, W, S> {
    fn metrics_fds(&self) -> std::iter::Empty<nix::poll::PollFd<'_>> {
        std::iter::empty()
    }

    fn serve_metrics(&mut self) {}

    fn metrics_deadline(&self) -> Option<Instant> {
        None
    }

    fn count(&mut self, _event: &Event) {}
}

/// The callback given every event.
pub(crate) type OnEvent<'a> = Box<dyn FnMut(&Event) + 'a>;

/// What the master works with besides its settings, made before it starts.
pub(crate) struct Resources<'a> {
    pub(crate) signals: &'a Signals,
    /// The memory shared with the workers, when hangs or readiness are watched.
    pub(crate) shared: Option<&'a SharedSlots>,
    pub(crate) titles: Option<&'a Titles>,
    /// What each worker gives up after its fork.
    pub(crate) confinement: &'a Confinement,
    /// The largest pid, for finding children without /proc.
    pub(crate) pid_max: i32,
    pub(crate) relaunch: Option<&'a Relaunch>,
    /// In a master an upgrade started, the old master's pipe.
    pub(crate) takeover: Option<Takeover>,
    /// Where scrapes of the metrics come, if anywhere.
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<metrics::Endpoint>,
}

/// The master's whole state.
pub(crate) struct Master<'a, W, S> {
    config: &'a Config,
    worker: W,
    signature: PhantomData<S>,
    setup: Setup<'a>,
    on_event: Option<OnEvent<'a>>,
    log: Log,
    /// How many workers should run now; TTIN and TTOU move it.
    instances: usize,
    slots: Slots,
    limiter: RespawnLimiter,
    backoff: Backoff,
    fork_retry: ForkRetry,
    rolling: Option<Rolling>,
    shutdown: Option<Shutdown>,
    orphans: Orphans,
    /// What dead workers left in their process groups.
    leftovers: Leftovers,
    watchdog: Watchdog<'a>,
    /// The service manager, when one started the master.
    notify: Option<Notify>,
    status: Option<StatusFile>,
    /// How to start the program again, for an upgrade.
    relaunch: Option<&'a Relaunch>,
    upgrade: Option<Upgrade>,
    /// The new master an upgrade handed over to, which this one's shutdown spares.
    successor: Option<Pid>,
    /// In a master an upgrade started, until the old master hands over.
    takeover: Option<Takeover>,
    /// How the last upgrade went, for the status file.
    upgraded: Option<upgrade::Report>,
    /// Whether every initial worker has been ready once.
    ready_once: bool,
    /// Whether the fleet is being forked again after a failed trial, and is not ready yet.
    refilling: bool,
    /// The phase of the fleet the log last heard of.
    announced: Option<Phase>,
    /// A child was reaped since the last sweep, which may have handed its own children over.
    reaped: bool,
    /// Which children died.
    reaper: Reaper,
    /// Which worker is due to be recycled.
    recycler: Recycler,
    /// Workers being replaced, their successors forked first.
    replacements: Replacements,
    /// The pids the reaper named in a turn, kept for its room, out of forks: a respawn
    /// writes to it.
    dead: Table<Pid>,
    /// With `restart = "on-failure"`, each shard's own respawns, for its own limit: one shard
    /// that keeps failing must not stop the others. Only shards that failed have one.
    shard_limits: HashMap<usize, RespawnLimiter>,
    /// Upgrades that led to this master.
    generation: u64,
    /// Where scrapes of the metrics come, and the counts they show.
    #[cfg(feature = "metrics")]
    metrics: Option<metrics::Metrics>,
    /// When the master started, by the wall clock.
    #[cfg(feature = "metrics")]
    started: std::time::SystemTime,
}

/// A failed fork is retried after a backoff, and no fork is tried before then: the failure
/// (out of pids or memory) is the machine's, not one index's.
struct ForkRetry {
    backoff: Backoff,
    /// Failed forks in a row.
    failures: u32,
    not_before: Option<Instant>,
}

/// How long a worker that exits with status 0 must have run for its exit to be its own
/// recycling, not counted against the respawn limit: one that returns sooner is a loop.
const RECYCLED_ITSELF: Duration = Duration::from_secs(1);

/// How often the master looks at the workers' readiness while something waits for it: a
/// worker declares itself ready in shared memory, without waking the master.
const READINESS_POLL: Duration = Duration::from_millis(20);

/// How long one turn of the loop reads /proc for the workers' memory, at most: a larger fleet
/// is read over several turns, with deaths and signals handled between.
const READING_BUDGET: Duration = Duration::from_millis(2);

/// The longest wait before a fork is retried, unless `backoff_max` is longer.
const FORK_RETRY_MAX: Duration = Duration::from_secs(5);

/// A rolling restart (HUP): each index in turn through the replacement step.
struct Rolling {
    /// The next index to replace.
    next: usize,
    /// Indices from here on are left alone: added after the HUP, or retired since.
    end: usize,
}

struct Shutdown {
    outcome: Outcome,
    /// When everything left gets SIGKILL; `None` once that happened, or for a deadline too
    /// far to count.
    kill_at: Option<Instant>,
    /// Whether everything got SIGKILL (the deadline passed, or a second TERM): orphans that
    /// arrive from now on get it too.
    forced: bool,
    /// Whether a signal from outside asked for it; a second TERM or INT then forces it.
    requested: bool,
    /// When the next sweep for orphans is due.
    next_sweep: Instant,
}

impl<'a, W: WorkerFn<S>, S> Master<'a, W, S> {
    pub(crate) fn new(
        config: &'a Config,
        worker: W,
        resources: Resources<'a>,
        on_event: Option<OnEvent<'a>>,
    ) -> Self {
        let Resources {
            signals,
            shared,
            titles,
            confinement,
            pid_max,
            relaunch,
            takeover,
            #[cfg(feature = "metrics")]
            metrics,
        } = resources;
        let pid = Pid::this();
        let notify = Notify::from_env();
        let reaper = Reaper::new();
        Master {
            log: Log::new(pid.as_raw() as u32, config.log),
            config,
            worker,
            signature: PhantomData,
            setup: Setup {
                master: pid,
                signals,
                config,
                shared,
                fleet: config.instances,
                titles,
                confinement,
                notify: notify.as_ref().map(Notify::fd),
                inherited: reaper.inherited(),
                #[cfg(feature = "metrics")]
                metrics: metrics.as_ref().map(metrics::Endpoint::fds),
            },
            on_event,
            instances: config.instances,
            slots: Slots::new(config.instances, pid_max),
            limiter: RespawnLimiter::new(config.respawn_limit, config.respawn_interval),
            backoff: Backoff::new(config.backoff_max),
            fork_retry: ForkRetry {
                backoff: Backoff::new(config.backoff_max.max(FORK_RETRY_MAX)),
                failures: 0,
                not_before: None,
            },
            rolling: None,
            shutdown: None,
            orphans: Orphans::new(pid_max),
            leftovers: Leftovers::default(),
            watchdog: Watchdog::new(config, shared),
            notify,
            status: config.status_file.as_deref().map(StatusFile::new),
            relaunch,
            upgrade: None,
            successor: None,
            generation: takeover.as_ref().map_or(0, Takeover::generation),
            takeover,
            upgraded: None,
            ready_once: false,
            refilling: false,
            announced: None,
            reaped: false,
            reaper,
            recycler: Recycler::new(config),
            replacements: Replacements::new(config.recycle_at_once),
            dead: Table::new(),
            shard_limits: HashMap::new(),
            #[cfg(feature = "metrics")]
            metrics: metrics.map(metrics::Metrics::new),
            #[cfg(feature = "metrics")]
            started: std::time::SystemTime::now(),
        }
    }

    pub(crate) fn run(mut self) -> Outcome {
        self.emit(Event::Started {
            instances: self.config.instances,
            respawn_limit: self.config.respawn_limit,
            respawn_interval: self.config.respawn_interval,
            shutdown_timeout: self.config.shutdown_timeout,
            restart: self.config.restart,
            backoff_max: self.config.backoff_max,
            timeout: self.config.timeout,
        });
        for listener in crate::listen::listeners() {
            self.emit(Event::Listening {
                address: listener.to_string(),
            });
        }
        self.set_title();
        // Output the program left buffered would otherwise be written again by every worker.
        // The callback's is flushed after each call (`emit`); nothing else in the master
        // writes to stdout, so that a fork need not lock it (a page copied a fork).
        let _ = std::io::stdout().flush();
        loop {
            if let Some(blind) = self.reaper.newly_blind() {
                let (level, note) = blind.note();
                self.log.note(level, note);
            }
            // First: a rollback forks the fleet again in this very turn.
            self.watch_upgrade(Instant::now());
            // Before the forks: a successor begun now is forked in this turn.
            self.advance_rolling_restart();
            self.recycle(Instant::now());
            self.spawn_due();
            // A successor ready once forked lets the worker it replaces stop in this turn.
            self.advance_replacement();
            self.watch_if_large();
            self.finish_if_all_done();
            self.end_watching();
            let now = Now::read();
            self.kill_overdue(now.instant);
            self.detect_hangs(now);
            self.take_over(now.instant);
            self.serve_metrics();
            let ping = self.tell_the_service_manager(now.instant);
            if let Some(outcome) = self.finished() {
                self.emit(Event::ShutdownFinished {
                    exit_code: outcome.exit_code(),
                });
                self.write_status("stopped");
                self.log.flush();
                return outcome;
            }
            self.sweep(now.instant);
            self.reaper.flush(now.instant);
            // Before the summary below, which may see the fleet ready: the service manager
            // hears of it on the next turn, which the readiness poll brings.
            let timeout = self
                .next_deadline(now)
                .into_iter()
                .chain(ping)
                .min()
                .map(|at| at.saturating_duration_since(Instant::now()));
            let phase = self.summary(now.instant).phase;
            self.announce(phase);
            self.write_status(phase.name());
            self.log.flush();
            // A failed poll only costs one more turn of the loop.
            let pipe = match (&self.upgrade, &self.takeover) {
                (Some(upgrade), _) => upgrade.poll_fd(),
                (None, Some(takeover)) => takeover.poll_fd(),
                (None, None) => None,
            };
            let also = [pipe, self.reaper.poll_fd()].into_iter().flatten();
            let _ = self
                .setup
                .signals
                .wait(timeout, also.chain(self.metrics_fds()));
            self.read_signals();
        }
    }

    /// Reaps what died, then acts on the signals pending now.
    fn read_signals(&mut self) {
        let batch = self.setup.signals.batch();
        // First the deaths: a worker dead by now crashed, whatever else the batch asks; a HUP
        // or a TTOU must not take it for a live one to stop.
        let sigchld = batch
            .iter()
            .find(|received| received.signal == Signal::SIGCHLD)
            .map(|received| Sigchld {
                pid: received.sender,
                code: received.code,
            });
        self.reap(sigchld);
        for received in batch.iter() {
            self.on_signal(received.signal, received.sender);
        }
    }

    fn on_signal(&mut self, signal: Signal, sender: u32) {
        match signal {
            Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT => {
                self.on_stop_signal(signal, sender);
            }
            Signal::SIGTTIN => self.scale_up(),
            Signal::SIGTTOU => self.scale_down(),
            Signal::SIGHUP => self.begin_rolling_restart(),
            Signal::SIGUSR2 => self.begin_upgrade(),
            Signal::SIGUSR1 => self.forward(signal),
            Signal::SIGURG => self.recycle_requested(sender),
            // SIGCHLD: reaped before the batch.
            _ => {}
        }
    }

    /// TERM, INT or QUIT: a graceful shutdown, or, for a second TERM or INT from outside, a
    /// forced one. The first one to come during a shutdown the master began itself (it gave
    /// up, or every index is done) only joins it; and so does any from the old master of an
    /// upgrade, which stops this new one as it stops its own workers when it shuts down
    /// before the hand-over (an operator's `pkill` reaches both).
    fn on_stop_signal(&mut self, signal: Signal, sender: u32) {
        let parent = nix::unistd::getppid().as_raw();
        let from_old_master = self.takeover.is_some() && sender != 0 && sender as i32 == parent;
        let Some(shutdown) = &mut self.shutdown else {
            self.begin_shutdown(Some(signal), Outcome::Stopped);
            if let Some(shutdown) = &mut self.shutdown {
                shutdown.requested = !from_old_master;
            }
            return;
        };
        if from_old_master {
            return;
        }
        if !shutdown.requested {
            shutdown.requested = true;
            self.emit(Event::ShutdownRequested {
                signal: signal as i32,
            });
        } else if signal != Signal::SIGQUIT {
            self.force(signal);
        }
    }

    /// Reaps the children the reaper says died, and, when it says the child list must be
    /// walked for more, every child that has exited: workers, and orphans handed to the
    /// master.
    fn reap(&mut self, sigchld: Option<Sigchld>) {
        let mut dead = std::mem::take(&mut self.dead);
        // Once no worker is left, the child list holds only orphans: a walk costs little.
        let eager = self.shutdown.is_some() && self.slots.live_workers() == 0;
        let walk = self.reaper.dead(sigchld, eager, Instant::now(), &mut dead);
        let named = sigchld.and_then(Sigchld::dead);
        let mut named_reaped = false;
        for &pid in dead.iter() {
            let orphan = self.slots.index_of(pid).is_none();
            let reaped = self.reap_child(pid);
            named_reaped |= reaped && named == Some(pid);
            if reaped && orphan {
                self.reaper.orphans_about(Instant::now());
            }
        }
        if named.is_some() && !named_reaped {
            self.reaper.named_reaped_before(Instant::now());
        }
        dead.clear();
        self.dead = dead;
        if !walk {
            return;
        }
        // Workers the watcher reports need no walk: one that meets many of them (a burst of
        // deaths) leaves the rest of the child list for a while later.
        let cut_short = self.reaper.watching() && !eager;
        let mut workers = 0;
        while let Ok(Some(pid)) = fleet::peek_exited() {
            workers += usize::from(self.slots.index_of(pid).is_some());
            if !self.reap_child(pid) {
                return;
            }
            if cut_short && workers == WALK_WORKERS {
                self.reaper.walk_later(Instant::now());
                return;
            }
        }
    }

    /// Reaps the child `pid` if it has exited; returns whether it did.
    fn reap_child(&mut self, pid: Pid) -> bool {
        let Ok(Some(status)) = fleet::reap_exited(pid) else {
            return false;
        };
        let index = self.slots.index_of(pid);
        // A replaced worker is no longer its index's, and still a worker.
        let replaced = index
            .is_none()
            .then(|| self.replacements.reaped(pid))
            .flatten();
        let worker = index.is_some() || replaced.is_some();
        if self.reaper.reaped(pid) {
            return true;
        }
        if worker && self.leftovers.worker_reaped(pid, self.deadline()) {
            self.reaper.orphans_about(Instant::now());
        }
        self.orphans.reaped(pid);
        self.reaped = true;
        if self
            .upgrade
            .as_ref()
            .is_some_and(|upgrade| upgrade.pid == pid)
        {
            self.upgrade_ended(status);
        }
        match (index, replaced) {
            (Some(index), _) => self.on_exit(index, pid, status),
            (None, Some(replaced)) => self.replaced_exited(replaced, pid, status),
            (None, None) => self.emit(Event::Reaped {
                pid: pid.as_raw() as u32,
                status,
            }),
        }
        true
    }

    /// What happens when a worker dies: forked again with the same index, unless the master
    /// is shutting down, retired the index, or the restart policy or the respawn limit says
    /// otherwise.
    fn on_exit(&mut self, index: usize, pid: Pid, status: ExitStatus) {
        let now = Instant::now();
        let (lived, deliberate, hung) = match self.slots[index].state() {
            State::Running { started, stop, .. } => (
                now - *started,
                stop.as_ref().is_some_and(|stop| !stop.hung),
                stop.as_ref().is_some_and(|stop| stop.hung),
            ),
            _ => return,
        };
        self.slots.set(index, State::Pending { not_before: None });
        self.slots[index].last_exit = Some(status);
        self.slots[index].ended(Ending::of(status, deliberate, hung));
        self.emit(Event::Exited {
            index,
            pid: pid.as_raw() as u32,
            status,
            stopped: deliberate,
        });
        if self.shutdown.is_some() {
            self.slots.set(index, State::Done);
        } else if index >= self.instances {
            self.slots.set(index, State::Retired);
            self.slots.trim(self.instances);
        } else if !deliberate {
            self.after_crash(index, status, lived, now);
        }
        // Otherwise it was replaced, or its index added again while it was retiring: the
        // slot is due for a fork.
    }

    /// A worker ended by itself: apply the restart policy, the respawn limit and the backoff.
    fn after_crash(&mut self, index: usize, status: ExitStatus, lived: Duration, now: Instant) {
        let succeeded = status.success();
        if self.on_trial() && !(succeeded && lived >= RECYCLED_ITSELF) {
            // A crash or a hang of the new release: the old one serves again at once.
            let lived = crate::event::Value::Span(lived);
            self.fail_trial(format!("worker {index} exited ({status}) after {lived}"));
            self.begin_shutdown(None, Outcome::RolledBack);
            return;
        }
        if !self.config.restart.respawns(succeeded) {
            self.slots.set(index, State::Done);
            self.emit(Event::Done { index, succeeded });
            return;
        }
        if succeeded && lived >= RECYCLED_ITSELF {
            // Its own choice, done with its work, as a worker that recycles itself is: forked
            // again at once, and not counted. One that returns at once would loop, and counts.
            self.slots[index].early_deaths = 0;
            self.emit(Event::Respawning {
                index,
                respawns: self.limiter.in_window(now) as u32,
                limit: self.limiter.limit(),
                interval: self.limiter.interval(),
                delay: Duration::ZERO,
                counted: false,
            });
            return;
        }
        let delay = self
            .backoff
            .delay(lived, &mut self.slots[index].early_deaths);
        let allowed = if self.config.restart == Restart::OnFailure {
            self.count_shard_respawn(index, delay, now)
        } else {
            self.count_respawn(index, delay, now)
        };
        if allowed {
            // The backoff is at most 2^31 times 100 ms, which any clock holds; were it not,
            // the fork would simply not wait.
            let not_before = (!delay.is_zero()).then(|| now.checked_add(delay)).flatten();
            self.slots.set(index, State::Pending { not_before });
        }
    }

    /// Counts a respawn of the shard `index` against its own limit and logs it, or gives the
    /// shard up (it is done, failed) while the others go on; returns whether the respawn
    /// may happen.
    fn count_shard_respawn(&mut self, index: usize, delay: Duration, now: Instant) -> bool {
        let (limit, interval) = (self.config.respawn_limit, self.config.respawn_interval);
        let shard = self
            .shard_limits
            .entry(index)
            .or_insert_with(|| RespawnLimiter::new(limit, interval));
        let Some(respawns) = shard.try_respawn(now) else {
            self.slots.set(index, State::Done);
            self.emit(Event::ShardGaveUp {
                index,
                limit,
                interval,
            });
            self.emit(Event::Done {
                index,
                succeeded: false,
            });
            return false;
        };
        self.emit(Event::Respawning {
            index,
            respawns,
            limit,
            interval,
            delay,
            counted: true,
        });
        true
    }

    /// Counts a respawn of `index` after `delay` against the respawn limit and logs it, or
    /// gives up; returns whether the respawn may happen.
    fn count_respawn(&mut self, index: usize, delay: Duration, now: Instant) -> bool {
        let Some(respawns) = self.limiter.try_respawn(now) else {
            self.emit(Event::GaveUp {
                limit: self.limiter.limit(),
                interval: self.limiter.interval(),
            });
            self.begin_shutdown(None, Outcome::GaveUp);
            return false;
        };
        self.emit(Event::Respawning {
            index,
            respawns,
            limit: self.limiter.limit(),
            interval: self.limiter.interval(),
            delay,
            counted: true,
        });
        true
    }

    /// Forks every index that is due, lowest first, reading signals between forks so that a
    /// TERM does not wait for a thousand forks to finish.
    fn spawn_due(&mut self) {
        let now = Instant::now();
        if self.fork_retry.not_before.is_some_and(|at| at > now) || self.standing_by() {
            return;
        }
        let Some(mut index) = self.slots.next_due(now) else {
            return;
        };
        while self.shutdown.is_none() {
            let half = self.replacements.free_half(index, self.slots[index].half);
            self.watchdog.forking(index, half);
            self.recycler.forking(self.setup.shared, index, half);
            match worker::spawn(index, half, &mut self.worker, &self.setup) {
                Ok(pid) => {
                    self.reaper.watch(pid);
                    self.fork_retry.failures = 0;
                    self.fork_retry.not_before = None;
                    let started = Instant::now();
                    self.watchdog.forked(started);
                    self.recycler.forked(index, pid, started);
                    let slot = &mut self.slots[index];
                    slot.forks = slot.forks.saturating_add(1);
                    slot.half = half;
                    let running = State::Running {
                        pid,
                        started,
                        stop: None,
                        watch: Watch::default(),
                    };
                    self.slots.set(index, running);
                    self.emit(Event::Spawned {
                        index,
                        pid: pid.as_raw() as u32,
                    });
                }
                Err(errno) => {
                    self.after_fork_failure(index, errno);
                    return;
                }
            }
            // The lowest index due: the one just forked no longer is. After the last fork,
            // the loop's wait reads what came meanwhile.
            if self.slots.next_due(Instant::now()).is_none() {
                return;
            }
            // Between two forks, only a pending signal is read: each page the master writes
            // between two forks is copied once per fork (the reports' buffer, `errno`), at
            // 10,000 forks a start. The watcher's reports wait for the end of the batch,
            // unless a SIGCHLD came.
            if self.setup.signals.pending() {
                self.read_signals();
            }
            match self.slots.next_due(Instant::now()) {
                Some(next) => index = next,
                None => return,
            }
        }
    }

    /// Recycling: moves the replacement under way on, samples the fleet's memory when due,
    /// then begins the next replacement that is due.
    fn recycle(&mut self, now: Instant) {
        self.advance_replacement();
        if let Some(from) = self.recycler.sampling(now) {
            let began = Instant::now();
            let end = self.instances.min(self.slots.len());
            let mut next = None;
            for index in from..end {
                if began.elapsed() >= READING_BUDGET {
                    next = Some(index);
                    break;
                }
                if let State::Running {
                    pid, stop: None, ..
                } = *self.slots[index].state()
                {
                    if let Some(bytes) = crate::procfs::proportional_set_size(pid) {
                        self.recycler.sampled(index, pid, bytes, now);
                    }
                }
            }
            self.recycler.sampled_until(next);
        }
        while self.recycling_may_begin() {
            let (slots, instances) = (&self.slots, self.instances);
            let current = |index: usize, pid: Pid| {
                index < instances
                    && matches!(*slots[index].state(), State::Running { pid: running, stop: None, .. } if running == pid)
            };
            let Some((index, pid, why)) = self.recycler.due(now, current) else {
                return;
            };
            let started = match *self.slots[index].state() {
                State::Running { started, .. } => started,
                _ => now,
            };
            self.emit(Event::Recycling {
                index,
                pid: pid.as_raw() as u32,
                reason: why.name(),
                lived: now.saturating_duration_since(started),
                completed: self.setup.shared.map(|shared| {
                    self.slots[index]
                        .words(shared, index)
                        .done
                        .load(Ordering::Relaxed)
                }),
            });
            let slot = &mut self.slots[index];
            slot.recycles = slot.recycles.saturating_add(1);
            self.begin_replacement(index, pid, Why::Recycle);
        }
    }

    /// Whether a replacement may begin: `recycle_at_once` at a time, and none during a
    /// shutdown, a rolling restart or an upgrade, which replace workers their own way.
    fn recycling_may_begin(&self) -> bool {
        self.replacements.room()
            && self.shutdown.is_none()
            && self.rolling.is_none()
            && self.upgrade.is_none()
            && self.takeover.is_none()
    }

    /// SIGURG: a worker says it did its `max_requests`. From anyone else, or from a worker
    /// already on its way out, it means nothing.
    fn recycle_requested(&mut self, sender: u32) {
        let pid = Pid::from_raw(sender as i32);
        let Some(index) = self.slots.index_of(pid).filter(|_| sender != 0) else {
            return;
        };
        if matches!(
            *self.slots[index].state(),
            State::Running { stop: None, .. }
        ) {
            self.recycler.requested(index, pid, Instant::now());
        }
    }

    /// Has the reaper's watcher report deaths once the fleet is large, from the turn its
    /// first forks are done.
    fn watch_if_large(&mut self) {
        let slots = &self.slots;
        if self
            .reaper
            .watch_from(self.instances, || slots.worker_pids())
        {
            self.setup.inherited = self.reaper.inherited();
        }
    }

    /// A fork failed (out of pids or memory): retry later, counted against the respawn
    /// limit, so that a failure that persists still ends in giving up.
    fn after_fork_failure(&mut self, index: usize, errno: Errno) {
        self.emit(Event::SpawnFailed {
            index,
            errno: errno as i32,
        });
        let now = Instant::now();
        let retry = &mut self.fork_retry;
        let delay = retry.backoff.delay(Duration::ZERO, &mut retry.failures);
        if self.count_respawn(index, delay, now) {
            self.fork_retry.not_before = now.checked_add(delay);
        }
    }

    fn scale_up(&mut self) {
        if self.shutdown.is_some() || self.instances >= MAX_INSTANCES {
            return;
        }
        self.instances += 1;
        self.setup.fleet = self.instances;
        self.slots.add(self.instances - 1);
        self.set_title();
        self.emit(Event::ScaledUp {
            instances: self.instances,
        });
    }

    fn scale_down(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        if self.instances == 1 {
            self.emit(Event::ScaleDownRefused { instances: 1 });
            return;
        }
        self.instances -= 1;
        self.setup.fleet = self.instances;
        self.set_title();
        let index = self.instances;
        self.emit(Event::ScaledDown {
            instances: self.instances,
            retiring: index,
        });
        if self.slots[index].pid().is_some() {
            self.stop(index, self.deadline());
        } else {
            self.slots.set(index, State::Retired);
            self.slots.trim(self.instances);
        }
    }

    fn begin_rolling_restart(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        if self.rolling.is_some() || self.standing_by() {
            self.emit(Event::RollingRestartBusy);
            return;
        }
        self.emit(Event::RollingRestartStarted {
            workers: self.slots.live_workers(),
        });
        self.rolling = Some(Rolling {
            next: 0,
            end: self.instances,
        });
    }

    /// Moves the rolling restart on: each index in turn gets a successor, forked first, and
    /// its worker is stopped once the successor is ready ([`replace`]); the next index
    /// begins when there is room for another replacement (`recycle_at_once`, one by
    /// default). An index whose worker is not running, or is already stopping, will run a
    /// new worker anyway and is passed over. It ends once every worker it replaced is gone.
    /// Derived from the slots on every turn of the loop, so that exits, crashes, TTIN, TTOU
    /// and HUP in any order and batch cannot wedge it. The fleet never has fewer ready
    /// workers than it should.
    fn advance_rolling_restart(&mut self) {
        while let Some(rolling) = &mut self.rolling {
            rolling.end = rolling.end.min(self.instances);
            if rolling.next >= rolling.end {
                if !self.replacements.restarting() {
                    self.rolling = None;
                    self.emit(Event::RollingRestartFinished);
                }
                return;
            }
            if !self.replacements.room() {
                return;
            }
            let index = rolling.next;
            rolling.next += 1;
            if let State::Running {
                stop: None, pid, ..
            } = *self.slots[index].state()
            {
                self.emit(Event::Replacing {
                    index,
                    pid: pid.as_raw() as u32,
                });
                self.begin_replacement(index, pid, Why::Restart);
            }
        }
    }

    /// Now, when the rolling restart has an index to begin and room for it: the next turn
    /// begins it.
    fn rolling_deadline(&self, now: Instant) -> Option<Instant> {
        let rolling = self.rolling.as_ref()?;
        let more = rolling.next < rolling.end.min(self.instances);
        (more && self.replacements.room()).then_some(now)
    }

    /// Whether the worker of `index`, if one runs and is not stopping, counts as ready.
    fn is_ready(&self, index: usize) -> bool {
        let State::Running {
            pid, stop: None, ..
        } = *self.slots[index].state()
        else {
            return false;
        };
        match (self.config.readiness, self.setup.shared) {
            (Readiness::Declared, Some(shared)) => worker::shared::holder_ready(
                self.slots[index].words(shared, index),
                pid.as_raw() as u32,
            ),
            _ => true,
        }
    }

    /// Whether every index to run has a ready worker, or is done. Counted when workers are
    /// ready once forked; with declared readiness, asked of each one.
    fn fleet_ready(&self) -> bool {
        match (self.config.readiness, self.setup.shared) {
            (Readiness::Declared, Some(_)) => (0..self.instances).all(|index| {
                self.is_ready(index) || matches!(self.slots[index].state(), State::Done)
            }),
            _ => self.slots.serving_or_done() == self.instances,
        }
    }

    /// Whether something waits for a worker to declare itself ready, which it does without a
    /// word to the master: the fleet's first readiness, a rolling restart's replacement, or a
    /// recycled worker's successor.
    fn awaits_readiness(&self) -> bool {
        let declared = self.config.readiness == Readiness::Declared
            && (!self.ready_once || self.rolling.is_some() || self.refilling);
        let taking_over = self
            .takeover
            .as_ref()
            .is_some_and(|takeover| !takeover.said_ready());
        // A recycled worker is stopped on the turn after its successor is ready, forked or
        // declared: nothing else would wake the master for it.
        let replacing = self.replacements.in_progress();
        self.shutdown.is_none() && (declared || taking_over || replacing)
    }

    /// Where the fleet stands, for the service manager.
    fn summary(&mut self, now: Instant) -> Summary {
        let ready = self.fleet_ready();
        self.ready_once = self.ready_once || ready;
        self.refilling = self.refilling && !ready;
        let phase = if self.shutdown.is_some() {
            Phase::Stopping
        } else if self.rolling.is_some()
            || self.refilling
            || self
                .upgrade
                .as_ref()
                .is_some_and(|upgrade| upgrade.waiting() || upgrade.on_trial())
        {
            Phase::Reloading
        } else if self.ready_once {
            Phase::Ready
        } else {
            Phase::Starting
        };
        Summary {
            phase,
            running: self.slots.live_workers(),
            instances: self.instances,
            respawns: self.limiter.in_window(now),
            window: self.limiter.interval(),
            hung: self.slots.hung(),
            upgrade: self
                .upgraded
                .as_ref()
                .map(|report| (report.state, report.old, report.new.unwrap_or(0))),
        }
    }

    /// Says so when the fleet becomes ready: after its start, or a rolling restart.
    fn announce(&mut self, phase: Phase) {
        if phase == Phase::Ready && self.announced != Some(Phase::Ready) {
            self.emit(Event::Ready {
                workers: self.slots.live_workers(),
            });
        }
        self.announced = Some(phase);
    }

    /// Tells the service manager what changed; returns when it must be told again (the
    /// watchdog's next ping).
    fn tell_the_service_manager(&mut self, now: Instant) -> Option<Instant> {
        if self.notify.is_none() || self.takeover.is_some() {
            return None;
        }
        let summary = self.summary(now);
        self.notify.as_mut()?.update(&summary, now)
    }

    /// `NAME: master (17 workers)`, for `ps`.
    fn set_title(&self) {
        if let Some(titles) = self.setup.titles {
            let instances = self.instances;
            titles.set(
                format_args!("master ({instances} workers)"),
                format_args!("master"),
            );
        }
    }

    /// When the status file's master is next to look at the workers' counts.
    fn status_deadline(&self) -> Option<Instant> {
        let status = self.status.as_ref().filter(|_| self.owns_status())?;
        status.next_count(self.setup.shared)
    }

    /// Whether the status file is this master's to write: a new master writes it from its
    /// trial on, or once handed over without one.
    fn owns_status(&self) -> bool {
        self.takeover.as_ref().map_or(true, Takeover::on_trial)
    }

    /// Rewrites the status file, if there is one and anything happened since.
    fn write_status(&mut self, phase: &'static str) {
        let own = self.owns_status();
        let Some(status) = self.status.as_mut().filter(|_| own) else {
            return;
        };
        let fleet = status::Fleet {
            master: self.setup.master.as_raw() as u32,
            phase,
            config: self.config,
            instances: self.instances,
            respawns: self.limiter.in_window(Instant::now()),
            slots: &self.slots,
            upgrade: self.upgraded.as_ref(),
            shared: self.setup.shared,
            is_async: W::IS_ASYNC,
        };
        // Checked before the first fork; a file system that fails later costs only the
        // status, never the supervision.
        let _ = status.write_if_changed(&fleet, Instant::now());
    }

    /// Sends `signal` to every live worker.
    fn forward(&mut self, signal: Signal) {
        let workers = self
            .slots
            .iter()
            .filter_map(Slot::pid)
            .filter(|pid| kill(*pid, signal).is_ok())
            .count();
        self.emit(Event::Forwarded {
            signal: signal as i32,
            workers,
        });
    }

    /// Asks the worker of `index` to stop (SIGTERM and SIGCONT to its process group), with
    /// SIGKILL at `kill_at` if it is still alive then.
    fn stop(&mut self, index: usize, kill_at: Option<Instant>) {
        if !matches!(self.slots[index].state(), State::Running { stop: None, .. }) {
            return;
        }
        let stopping = Stopping {
            kill_at,
            hung: false,
        };
        if let Some(pid) = self.slots.stop(index, stopping) {
            fleet::stop_worker(pid, Stop::Term);
        }
    }

    fn begin_shutdown(&mut self, signal: Option<Signal>, outcome: Outcome) {
        if self.shutdown.is_some() {
            return;
        }
        self.rolling = None;
        // The new master is a child like any other now: the sweep stops it.
        self.abandon_upgrade();
        if self.on_trial() {
            let reason = match signal {
                Some(signal) => format!(
                    "the new master got {}",
                    crate::event::Value::Signal(signal as i32)
                ),
                None => "the new master gave up".to_owned(),
            };
            self.fail_trial(reason);
        }
        self.emit(Event::ShutdownStarted {
            signal: signal.map(|signal| signal as i32),
            workers: self.slots.live_workers(),
        });
        let kill_at = self.deadline();
        for index in 0..self.slots.len() {
            if self.slots[index].is_pending() {
                self.slots.set(index, State::Done);
            }
            self.stop(index, kill_at);
        }
        self.stop_replacement(kill_at);
        self.shutdown = Some(Shutdown {
            outcome,
            kill_at,
            forced: false,
            requested: signal.is_some(),
            next_sweep: Instant::now(),
        });
        // At once, with the workers still counted: a whole fleet may be reaped before the
        // loop's next word to it.
        self.tell_the_service_manager(Instant::now());
        self.sweep_now(Stop::Term);
    }

    /// With `on-failure` or `never`, ends the master once no worker runs or will be forked.
    fn finish_if_all_done(&mut self) {
        if self.shutdown.is_some() || !self.slots.all_finished() {
            return;
        }
        let failed: Vec<usize> = (0..self.slots.len())
            .filter(|index| {
                let slot = &self.slots[*index];
                matches!(slot.state(), State::Done)
                    && slot.last_exit.is_some_and(|exit| !exit.success())
            })
            .collect();
        let outcome = Outcome::Finished {
            failed: failed.len(),
        };
        self.emit(Event::AllDone { failed });
        self.begin_shutdown(None, outcome);
    }

    /// Kills every process left at once: a second TERM or INT during a shutdown.
    fn force(&mut self, signal: Signal) {
        self.emit(Event::ShutdownForced {
            signal: signal as i32,
            workers: self.slots.live_workers(),
        });
        self.kill_everything();
    }

    fn kill_everything(&mut self) {
        if let Some(shutdown) = &mut self.shutdown {
            shutdown.kill_at = None;
            shutdown.forced = true;
        }
        for index in 0..self.slots.len() {
            let hung = match self.slots[index].state() {
                State::Running { stop, .. } => stop.is_some_and(|stop| stop.hung),
                _ => continue,
            };
            let stopping = Stopping {
                kill_at: None,
                hung,
            };
            if let Some(pid) = self.slots.stop(index, stopping) {
                fleet::stop_worker(pid, Stop::Kill);
            }
        }
        self.kill_overdue_replaced(None);
        self.sweep_now(Stop::Kill);
    }

    /// Sends SIGKILL to every worker, and in a shutdown every process, whose time is up.
    fn kill_overdue(&mut self, now: Instant) {
        while let Some(Due::Kill { index, pid, hung }) = self.slots.next_overdue(now) {
            let after = if hung {
                self.watchdog.grace
            } else {
                self.config.shutdown_timeout
            };
            if fleet::stop_worker(pid, Stop::Kill) {
                self.emit(Event::Killed {
                    index,
                    pid: pid.as_raw() as u32,
                    after,
                });
            }
        }
        self.leftovers.kill_overdue(now, &self.orphans);
        self.kill_overdue_replaced(Some(now));
        if let Some(upgrade) = &mut self.upgrade {
            if upgrade.kill_at.is_some_and(|kill_at| kill_at <= now) {
                upgrade.kill_at = None;
                let _ = kill(upgrade.pid, Signal::SIGKILL);
            }
        }
        let overdue = self
            .shutdown
            .as_ref()
            .and_then(|shutdown| shutdown.kill_at)
            .is_some_and(|kill_at| kill_at <= now);
        if overdue {
            self.kill_everything();
        }
    }

    /// Sends the hang signal to every worker silent for longer than it may be, or not ready
    /// within its boot allowance, with SIGKILL to follow after a grace. Its exit is a crash:
    /// it is respawned and counted. One pass over the fleet, when the watchdog says one is
    /// due.
    fn detect_hangs(&mut self, now: Now) {
        if self.shutdown.is_some() {
            return;
        }
        let Some(mut pass) = self.watchdog.pass(now) else {
            return;
        };
        let mut found = Vec::new();
        for (index, half, pid, started, watch) in self.slots.watched() {
            match pass.look(index, half, pid, started, watch) {
                Verdict::Alive => {}
                verdict => found.push((index, pid, verdict)),
            }
        }
        let next = pass.next();
        self.watchdog.passed(now.instant, next);
        for (index, pid, verdict) in found {
            let event = match verdict {
                Verdict::Alive => continue,
                Verdict::Hung { silent_for } => Event::Hung {
                    index,
                    pid: pid.as_raw() as u32,
                    silent_for,
                },
                Verdict::NotReady { after } => Event::NotReady {
                    index,
                    pid: pid.as_raw() as u32,
                    after,
                },
            };
            let stopping = Stopping {
                kill_at: now.instant.checked_add(self.watchdog.grace),
                hung: true,
            };
            self.slots.stop(index, stopping);
            // Through libc: the hang signal may be a real-time one, which nix cannot name.
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid.as_raw(), self.config.hang_signal.as_raw()) };
            // A worker stopped (SIGSTOP) acts on it only once continued: a core dump, say.
            let _ = kill(pid, Signal::SIGCONT);
            self.emit(event);
        }
    }

    /// During a shutdown, signals the orphans that reached the master since the last sweep:
    /// on the tick, and at once when the last worker is gone and children remain.
    fn sweep(&mut self, now: Instant) {
        let Some(shutdown) = &self.shutdown else {
            return;
        };
        let handed_over = self.reaped && self.slots.live_workers() == 0;
        if now < shutdown.next_sweep && !handed_over {
            return;
        }
        let stop = if shutdown.forced {
            Stop::Kill
        } else {
            Stop::Term
        };
        self.sweep_now(stop);
    }

    fn sweep_now(&mut self, stop: Stop) {
        self.reaped = false;
        let workers = self.slots.worker_pids();
        let spared = [self.successor, self.reaper.watcher()];
        let next = self.orphans.sweep(stop, |pid| {
            workers.binary_search(&pid).is_ok() || spared.contains(&Some(pid))
        });
        if let Some(shutdown) = &mut self.shutdown {
            shutdown.next_sweep = next;
        }
    }

    /// The next moment the master must act without a signal: a SIGKILL due, a backoff or a
    /// fork retry ending, a sweep during a shutdown, a worker silent for too long.
    fn next_deadline(&mut self, now: Now) -> Option<Instant> {
        let shutdown = self.shutdown.as_ref();
        let kill_at = shutdown.and_then(|shutdown| shutdown.kill_at);
        let sweep = shutdown.map(|shutdown| shutdown.next_sweep);
        let fork_retry = self
            .fork_retry
            .not_before
            .filter(|_| self.slots.any_pending());
        let readiness = self
            .awaits_readiness()
            .then(|| now.instant.checked_add(READINESS_POLL))
            .flatten();
        let upgrade = self.upgrade.as_ref().and_then(Upgrade::next_deadline);
        // The count of recent respawns that the status and systemd show changes then.
        let told = self.status.is_some() || self.notify.is_some();
        let window = told
            .then(|| self.limiter.next_expiry(now.instant))
            .flatten();
        let leftovers = self.leftovers.next();
        let recycling = self
            .recycler
            .next_deadline()
            .filter(|_| self.recycling_may_begin());
        let watchdog = self.watchdog.next_pass().filter(|_| shutdown.is_none());
        self.slots
            .next_deadline()
            .into_iter()
            .chain(watchdog)
            .chain(self.reaper.next_walk())
            .chain(self.reaper.next_flush())
            .chain(kill_at)
            .chain(sweep)
            .chain(fork_retry)
            .chain(readiness)
            .chain(upgrade)
            .chain(window)
            .chain(leftovers)
            .chain(recycling)
            .chain(self.replacements.next_deadline())
            .chain(self.rolling_deadline(now.instant))
            .chain(self.metrics_deadline())
            .chain(self.status_deadline())
            .min()
    }

    /// Ends the reaper's watcher once a shutdown has no worker left: what remains are
    /// orphans, found by walking, and the watcher must go before the master can.
    fn end_watching(&mut self) {
        if self.shutdown.is_some() && self.slots.live_workers() == 0 {
            self.reaper.end();
        }
    }

    /// The outcome, once a shutdown has run its course and no child is left, worker or
    /// adopted orphan. Asked of the kernel each time: a fork since the last reap makes any
    /// remembered answer wrong.
    fn finished(&self) -> Option<Outcome> {
        let shutdown = self.shutdown.as_ref()?;
        if self.slots.live_workers() > 0 {
            return None;
        }
        let done = match self.successor {
            None => !fleet::has_children(),
            // The new master an upgrade handed over to is this one's child, and stays.
            Some(successor) => self.orphans.only_child_left(successor),
        };
        done.then_some(shutdown.outcome)
    }

    /// When a stop that starts now turns into SIGKILL; `None` when that is too far to count.
    fn deadline(&self) -> Option<Instant> {
        Instant::now().checked_add(self.config.shutdown_timeout)
    }

    /// Logs `event` and hands it to the callback, which cannot break the loop: its panic is
    /// caught and logged, and what it printed is flushed before the next fork. The log line is
    /// written before the master next blocks.
    fn emit(&mut self, event: Event) {
        self.log.event(&event);
        self.count(&event);
        if let Some(status) = &mut self.status {
            status.changed();
        }
        if let Some(on_event) = &mut self.on_event {
            let call = panic::catch_unwind(AssertUnwindSafe(|| on_event(&event)));
            let _ = std::io::stdout().flush();
            if let Err(payload) = call {
                std::mem::forget(payload);
                self.log.note(Level::Error, "event-callback-panicked");
            }
        }
    }
}
