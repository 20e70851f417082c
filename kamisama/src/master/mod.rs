//! The master's event loop: fork the workers, block until a signal or a deadline, reap what
//! exited, respawn what must be, replace or stop workers when asked.

use crate::config::Config;
use crate::event::{self, Event, ExitStatus};
use crate::signals::Signals;
use crate::worker::{self, Setup, WorkerFn};
use crate::{procfs, Outcome};
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use respawn::{Backoff, RespawnLimiter};
use std::io::Write;
use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

mod respawn;

/// The callback given every event.
pub(crate) type OnEvent<'a> = Box<dyn FnMut(&Event) + 'a>;

/// The master's whole state.
///
/// Every page the master writes between two forks is copied once more after the second: the
/// fork path therefore keeps its state in `slots`, found by scanning (reads are free), and
/// allocates nothing.
pub(crate) struct Master<'a, W, S> {
    config: &'a Config,
    worker: W,
    signature: PhantomData<S>,
    setup: Setup<'a>,
    on_event: Option<OnEvent<'a>>,
    log: bool,
    pid: Pid,
    /// How many workers should run now; TTIN and TTOU move it.
    instances: usize,
    /// One slot per index. Slots past `instances` hold workers being retired.
    slots: Vec<Slot>,
    limiter: RespawnLimiter,
    backoff: Backoff,
    rolling: Option<Rolling>,
    shutdown: Option<Shutdown>,
    /// Indices whose last worker failed and that are not forked again.
    failed: usize,
}

/// One index.
struct Slot {
    state: State,
    /// Early deaths in a row, for the backoff.
    early_deaths: u32,
}

enum State {
    /// A worker is to be forked, at once or when its backoff ends.
    Pending { not_before: Option<Instant> },
    Running {
        pid: Pid,
        started: Instant,
        stop: Option<Stop>,
    },
    /// Not forked again: the restart policy is done with this index.
    Done,
    /// Retired by TTOU, until the slot is dropped.
    Retired,
}

/// The master asked a worker to stop, so its exit is no crash.
struct Stop {
    /// When SIGKILL follows; `None` once sent, or for a deadline too far to count.
    kill_at: Option<Instant>,
}

/// A rolling restart (HUP) replacing one index at a time.
struct Rolling {
    /// The index being replaced.
    index: usize,
    /// Indices from here on are left alone (they were added after the HUP).
    end: usize,
}

struct Shutdown {
    outcome: Outcome,
    /// When every process left gets SIGKILL; `None` once that happened.
    kill_at: Option<Instant>,
}

impl Slot {
    fn pending() -> Self {
        Slot {
            state: State::Pending { not_before: None },
            early_deaths: 0,
        }
    }

    fn pid(&self) -> Option<Pid> {
        match self.state {
            State::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// Whether this index will be forked, now or later.
    fn is_pending(&self) -> bool {
        matches!(self.state, State::Pending { .. })
    }

    fn is_due(&self, now: Instant) -> bool {
        matches!(self.state, State::Pending { not_before } if not_before.map_or(true, |at| at <= now))
    }
}

impl<'a, W: WorkerFn<S>, S> Master<'a, W, S> {
    pub(crate) fn new(
        config: &'a Config,
        worker: W,
        signals: &'a Signals,
        on_event: Option<OnEvent<'a>>,
        log: bool,
    ) -> Self {
        let pid = Pid::this();
        Master {
            config,
            worker,
            signature: PhantomData,
            setup: Setup {
                master: pid,
                signals,
                shutdown_timeout: config.shutdown_timeout,
            },
            on_event,
            log,
            pid,
            instances: config.instances,
            slots: (0..config.instances).map(|_| Slot::pending()).collect(),
            limiter: RespawnLimiter::new(config.respawn_limit, config.respawn_interval),
            backoff: Backoff::new(config.backoff_max),
            rolling: None,
            shutdown: None,
            failed: 0,
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
        });
        loop {
            self.reap();
            self.spawn_due();
            self.finish_if_all_done();
            let now = Instant::now();
            self.kill_overdue(now);
            if let Some(outcome) = self.finished() {
                self.emit(Event::ShutdownFinished {
                    exit_code: outcome.exit_code(),
                });
                return outcome;
            }
            let timeout = self
                .next_deadline()
                .map(|at| at.saturating_duration_since(now));
            // A failed poll only costs one more turn of the loop.
            let _ = self.setup.signals.wait(timeout);
            self.read_signals();
        }
    }

    fn read_signals(&mut self) {
        while let Some(signal) = self.setup.signals.next() {
            self.on_signal(signal);
        }
    }

    fn on_signal(&mut self, signal: Signal) {
        match signal {
            Signal::SIGCHLD => self.reap(),
            Signal::SIGTERM | Signal::SIGINT if self.shutdown.is_some() => self.force(signal),
            Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT => {
                self.begin_shutdown(Some(signal), Outcome::Stopped);
            }
            Signal::SIGTTIN => self.scale_up(),
            Signal::SIGTTOU => self.scale_down(),
            Signal::SIGHUP => self.begin_rolling_restart(),
            Signal::SIGUSR1 | Signal::SIGUSR2 => self.forward(signal),
            _ => {}
        }
    }

    /// Reaps every child that has exited. A dead worker's process group is signalled before
    /// the worker is reaped: its zombie still holds the group's id, so no other process can
    /// have taken it.
    fn reap(&mut self) {
        loop {
            let pid = match peek_exited_child() {
                Ok(Some(pid)) => pid,
                Err(Errno::EINTR) => continue,
                Ok(None) | Err(_) => return,
            };
            let index = self.index_of(pid);
            if index.is_some() {
                // Whatever the worker left in its group goes with it.
                let _ = killpg(pid, Signal::SIGTERM);
            }
            match reap_child(pid) {
                Ok(status) => match index {
                    Some(index) => self.on_exit(index, pid, status),
                    None => self.emit(Event::Reaped {
                        pid: pid.as_raw() as u32,
                        status,
                    }),
                },
                Err(_) => return,
            }
        }
    }

    /// What happens when a worker dies: forked again with the same index, unless the master
    /// is shutting down, retired the index, or the restart policy or the respawn limit says
    /// otherwise.
    fn on_exit(&mut self, index: usize, pid: Pid, status: ExitStatus) {
        let now = Instant::now();
        let slot = &mut self.slots[index];
        let State::Running { started, stop, .. } = &slot.state else {
            return;
        };
        let (lived, deliberate) = (now - *started, stop.is_some());
        slot.state = State::Pending { not_before: None };
        self.emit(Event::Exited {
            index,
            pid: pid.as_raw() as u32,
            status,
        });
        if self.shutdown.is_some() {
            self.slots[index].state = State::Done;
            return;
        }
        if index >= self.instances {
            self.slots[index].state = State::Retired;
            self.trim_slots();
        } else if !deliberate {
            self.after_crash(index, status, lived, now);
        }
        // The worker being replaced is gone: its replacement is pending, or it was retired.
        if self.is_being_replaced(index) && !self.slots.get(index).is_some_and(Slot::is_pending) {
            self.continue_rolling_restart(index + 1);
        }
    }

    /// A worker ended by itself: apply the restart policy, the respawn limit and the backoff.
    fn after_crash(&mut self, index: usize, status: ExitStatus, lived: Duration, now: Instant) {
        let succeeded = status.success();
        if !self.config.restart.respawns(succeeded) {
            self.slots[index].state = State::Done;
            self.failed += usize::from(!succeeded);
            self.emit(Event::Done { index, succeeded });
            return;
        }
        let Some(respawns) = self.limiter.try_respawn(now) else {
            self.emit(Event::GaveUp {
                limit: self.limiter.limit(),
                interval: self.limiter.interval(),
            });
            self.begin_shutdown(None, Outcome::GaveUp);
            return;
        };
        let slot = &mut self.slots[index];
        let delay = self.backoff.delay(lived, &mut slot.early_deaths);
        // The backoff is at most 2^31 times 100 ms, which any clock holds; were it not, the
        // fork would simply not wait.
        slot.state = State::Pending {
            not_before: (!delay.is_zero()).then(|| now.checked_add(delay)).flatten(),
        };
        self.emit(Event::Respawning {
            index,
            respawns,
            limit: self.limiter.limit(),
            interval: self.limiter.interval(),
            delay,
        });
    }

    /// Forks every index that is due, lowest first, reading signals between forks so that a
    /// TERM does not wait for a thousand forks to finish.
    fn spawn_due(&mut self) {
        let Some(mut index) = self.next_due(0) else {
            return;
        };
        // Once for the batch: output the master's own code left buffered would otherwise be
        // written again by every worker.
        let _ = std::io::stdout().flush();
        while self.shutdown.is_none() {
            match worker::spawn(index, &mut self.worker, &self.setup) {
                Ok(pid) => {
                    self.slots[index].state = State::Running {
                        pid,
                        started: Instant::now(),
                        stop: None,
                    };
                    self.emit(Event::Spawned {
                        index,
                        pid: pid.as_raw() as u32,
                    });
                    if self.is_being_replaced(index) {
                        self.continue_rolling_restart(index + 1);
                    }
                }
                Err(error) => {
                    self.emit(Event::SpawnFailed {
                        index,
                        errno: error as i32,
                    });
                    self.begin_shutdown(None, Outcome::GaveUp);
                }
            }
            self.read_signals();
            match self.next_due(index + 1) {
                Some(next) => index = next,
                None => return,
            }
        }
    }

    /// The first index due for a fork from `from` on, wrapping around: a reap between two
    /// forks may have made a lower index due.
    fn next_due(&self, from: usize) -> Option<usize> {
        let now = Instant::now();
        let due = |slot: &Slot| slot.is_due(now);
        let later = self.slots.iter().skip(from).position(due);
        later
            .map(|offset| from + offset)
            .or_else(|| self.slots.iter().take(from).position(due))
    }

    /// The index of the live worker `pid`.
    fn index_of(&self, pid: Pid) -> Option<usize> {
        self.slots.iter().position(|slot| slot.pid() == Some(pid))
    }

    fn live_workers(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| slot.pid().is_some())
            .count()
    }

    fn scale_up(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        self.instances += 1;
        let index = self.instances - 1;
        match self.slots.get_mut(index) {
            None => self.slots.push(Slot::pending()),
            // A worker still being retired from this index is replaced when it exits.
            Some(slot) if slot.pid().is_some() => {}
            Some(slot) => *slot = Slot::pending(),
        }
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
        let index = self.instances;
        self.emit(Event::ScaledDown {
            instances: self.instances,
            retiring: index,
        });
        if self.slots[index].pid().is_some() {
            self.stop(index, self.deadline());
        } else {
            self.slots[index].state = State::Retired;
            self.trim_slots();
        }
    }

    fn begin_rolling_restart(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        if self.rolling.is_some() {
            self.emit(Event::RollingRestartBusy);
            return;
        }
        self.emit(Event::RollingRestartStarted {
            workers: self.live_workers(),
        });
        self.rolling = Some(Rolling {
            index: 0,
            end: self.instances,
        });
        self.continue_rolling_restart(0);
    }

    fn is_being_replaced(&self, index: usize) -> bool {
        self.rolling
            .as_ref()
            .is_some_and(|rolling| rolling.index == index)
    }

    /// Stops the next worker due for replacement from index `from` on, or ends the rolling
    /// restart. Its replacement is forked once it has exited, and only then is the next
    /// index stopped: never two workers on one index, never more than one index down.
    fn continue_rolling_restart(&mut self, from: usize) {
        let Some(rolling) = &self.rolling else {
            return;
        };
        let end = rolling.end.min(self.instances);
        let next = (from..end)
            .find(|index| matches!(self.slots[*index].state, State::Running { stop: None, .. }));
        let Some(index) = next else {
            self.rolling = None;
            self.emit(Event::RollingRestartFinished);
            return;
        };
        self.rolling = Some(Rolling {
            index,
            end: rolling.end,
        });
        if let Some(pid) = self.slots[index].pid() {
            self.emit(Event::Replacing {
                index,
                pid: pid.as_raw() as u32,
            });
        }
        self.stop(index, self.deadline());
    }

    /// Sends `signal` to every live worker.
    fn forward(&mut self, signal: Signal) {
        let mut workers = 0;
        for slot in &self.slots {
            if let Some(pid) = slot.pid() {
                workers += usize::from(kill(pid, signal).is_ok());
            }
        }
        self.emit(Event::Forwarded {
            signal: signal as i32,
            workers,
        });
    }

    /// Sends the worker's process group SIGTERM (and SIGCONT), and SIGKILL at `kill_at` if it
    /// is still alive.
    fn stop(&mut self, index: usize, kill_at: Option<Instant>) {
        if let State::Running {
            pid,
            stop: stop @ None,
            ..
        } = &mut self.slots[index].state
        {
            *stop = Some(Stop { kill_at });
            signal_group(*pid, Signal::SIGTERM);
            // A stopped process acts on TERM only once continued.
            signal_group(*pid, Signal::SIGCONT);
        }
    }

    fn begin_shutdown(&mut self, signal: Option<Signal>, outcome: Outcome) {
        if self.shutdown.is_some() {
            return;
        }
        self.rolling = None;
        self.emit(Event::ShutdownStarted {
            signal: signal.map(|signal| signal as i32),
            workers: self.live_workers(),
        });
        let kill_at = self.deadline();
        for index in 0..self.slots.len() {
            if self.slots[index].is_pending() {
                self.slots[index].state = State::Done;
            }
            self.stop(index, kill_at);
        }
        self.signal_orphans(&[Signal::SIGTERM, Signal::SIGCONT]);
        self.shutdown = Some(Shutdown { outcome, kill_at });
    }

    /// With `on-failure` or `never`, ends the master once no worker runs or will be forked.
    fn finish_if_all_done(&mut self) {
        let all_done = self
            .slots
            .iter()
            .all(|slot| matches!(slot.state, State::Done | State::Retired));
        if self.shutdown.is_some() || !all_done {
            return;
        }
        let failed = self.failed;
        self.emit(Event::AllDone { failed });
        self.begin_shutdown(None, Outcome::Finished { failed });
    }

    /// Kills every process left at once: a second TERM or INT during a shutdown.
    fn force(&mut self, signal: Signal) {
        self.emit(Event::ShutdownForced {
            signal: signal as i32,
            workers: self.live_workers(),
        });
        self.kill_everything();
    }

    fn kill_everything(&mut self) {
        if let Some(shutdown) = &mut self.shutdown {
            shutdown.kill_at = None;
        }
        for slot in &mut self.slots {
            if let State::Running { pid, stop, .. } = &mut slot.state {
                *stop = Some(Stop { kill_at: None });
                signal_group(*pid, Signal::SIGKILL);
            }
        }
        self.signal_orphans(&[Signal::SIGKILL]);
    }

    /// Sends SIGKILL to every worker, and in a shutdown every process, whose time is up.
    fn kill_overdue(&mut self, now: Instant) {
        let after = self.config.shutdown_timeout;
        for index in 0..self.slots.len() {
            let State::Running {
                pid,
                stop: Some(stop),
                ..
            } = &mut self.slots[index].state
            else {
                continue;
            };
            if stop.kill_at.is_some_and(|kill_at| kill_at <= now) {
                stop.kill_at = None;
                let pid = *pid;
                signal_group(pid, Signal::SIGKILL);
                self.emit(Event::Killed {
                    index,
                    pid: pid.as_raw() as u32,
                    after,
                });
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

    /// The next moment the master must act without a signal: a SIGKILL due, or a backoff
    /// ending.
    fn next_deadline(&self) -> Option<Instant> {
        let shutdown = self.shutdown.as_ref().and_then(|shutdown| shutdown.kill_at);
        self.slots
            .iter()
            .filter_map(|slot| match &slot.state {
                State::Running {
                    stop: Some(stop), ..
                } => stop.kill_at,
                State::Pending { not_before } => *not_before,
                _ => None,
            })
            .chain(shutdown)
            .min()
    }

    /// The outcome, once a shutdown has run its course and no child is left, worker or
    /// adopted orphan. Asked of the kernel each time: a fork since the last reap makes any
    /// remembered answer wrong.
    fn finished(&self) -> Option<Outcome> {
        let shutdown = self.shutdown.as_ref()?;
        (peek_exited_child() == Err(Errno::ECHILD)).then_some(shutdown.outcome)
    }

    /// When a stop that starts now turns into SIGKILL; `None` when that is too far to count.
    fn deadline(&self) -> Option<Instant> {
        Instant::now().checked_add(self.config.shutdown_timeout)
    }

    /// Drops the retired slots past `instances`.
    fn trim_slots(&mut self) {
        while self.slots.len() > self.instances
            && self
                .slots
                .last()
                .is_some_and(|slot| matches!(slot.state, State::Retired))
        {
            self.slots.pop();
        }
    }

    /// Sends `signals`, in order, to the orphans handed to the master (it is their
    /// subreaper): its children that are not workers.
    fn signal_orphans(&self, signals: &[Signal]) {
        if self.pid.as_raw() == 1 {
            // The init of a PID namespace: everything else in it is the master's to stop.
            for signal in signals {
                let _ = kill(Pid::from_raw(-1), *signal);
            }
            return;
        }
        for pid in procfs::children().unwrap_or_default() {
            if self.index_of(pid).is_none() {
                for signal in signals {
                    let _ = kill(pid, *signal);
                }
            }
        }
    }

    /// Logs `event` and hands it to the callback, which cannot break the loop: its panic is
    /// caught and logged, and what it printed is flushed before the next fork.
    fn emit(&mut self, event: Event) {
        if self.log {
            event::log(self.pid.as_raw() as u32, &event);
        }
        if let Some(on_event) = &mut self.on_event {
            let call = panic::catch_unwind(AssertUnwindSafe(|| on_event(&event)));
            let _ = std::io::stdout().flush();
            if let Err(payload) = call {
                std::mem::forget(payload);
                event::log(self.pid.as_raw() as u32, "event-callback-panicked");
            }
        }
    }
}

/// The pid of a child that has exited, left a zombie (`WNOWAIT`), or `None` if children
/// remain and none has exited.
fn peek_exited_child() -> Result<Option<Pid>, Errno> {
    // SAFETY: a zeroed siginfo is a valid out-parameter for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: `info` is valid for the call.
    Errno::result(unsafe { libc::waitid(libc::P_ALL, 0, &mut info, flags) })?;
    // SAFETY: waitid filled `info` for a child, or left si_pid zero.
    let pid = unsafe { info.si_pid() };
    Ok((pid != 0).then(|| Pid::from_raw(pid)))
}

/// Reaps the exited child `pid`. Decoded here rather than by nix, whose `WaitStatus` cannot
/// hold a real-time signal: a worker killed by one would be reaped and then lost.
fn reap_child(pid: Pid) -> Result<ExitStatus, Errno> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is valid for the call.
        match Errno::result(unsafe { libc::waitpid(pid.as_raw(), &mut status, 0) }) {
            Err(Errno::EINTR) => continue,
            result => return result.map(|_| ExitStatus::from_raw(status)),
        }
    }
}

/// Signals the process group a worker leads, or the worker alone if it left its group.
fn signal_group(pid: Pid, signal: Signal) {
    if killpg(pid, signal) == Err(Errno::ESRCH) {
        let _ = kill(pid, signal);
    }
}
