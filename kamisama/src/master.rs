//! The master's event loop: fork the workers, block until a signal arrives, reap what exited,
//! respawn what must be, stop everything when asked.

use crate::config::Config;
use crate::event::{self, Event, Exit};
use crate::respawn::RespawnLimiter;
use crate::signals::Signals;
use crate::{procfs, worker, Outcome};
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::io::Write;
use std::time::Instant;

/// The master's whole state.
///
/// Every page the master writes between two forks is copied once more after the second: the
/// fork path therefore keeps its state in `slots`, found by scanning (reads are free), and
/// allocates nothing.
pub(crate) struct Master<'a, W> {
    config: &'a Config,
    worker: W,
    signals: &'a Signals,
    pid: Pid,
    /// How many workers should run now; TTIN and TTOU move it.
    instances: usize,
    /// One slot per index. Slots past `instances` hold workers being retired.
    slots: Vec<Slot>,
    limiter: RespawnLimiter,
    shutdown: Option<Shutdown>,
    /// Whether the last reap found no child at all, worker or adopted orphan.
    childless: bool,
}

/// The process holding one index.
#[derive(Default)]
struct Slot {
    pid: Option<Pid>,
    /// A worker is to be forked for this index.
    pending: bool,
    /// The master asked this worker to stop, so its exit is no crash.
    stopping: bool,
    /// When the master sends SIGKILL if the worker is still alive.
    kill_at: Option<Instant>,
}

struct Shutdown {
    outcome: Outcome,
    /// When every process left gets SIGKILL; `None` once that happened.
    kill_at: Option<Instant>,
}

impl<'a, W: FnMut(usize)> Master<'a, W> {
    pub(crate) fn new(config: &'a Config, worker: W, signals: &'a Signals) -> Self {
        Master {
            config,
            worker,
            signals,
            pid: Pid::this(),
            instances: config.instances,
            slots: (0..config.instances)
                .map(|_| Slot {
                    pending: true,
                    ..Slot::default()
                })
                .collect(),
            limiter: RespawnLimiter::new(config.respawn_limit, config.respawn_interval),
            shutdown: None,
            childless: false,
        }
    }

    pub(crate) fn run(mut self) -> Outcome {
        self.emit(Event::Started(self.config));
        loop {
            self.reap();
            self.spawn_pending();
            let now = Instant::now();
            self.kill_overdue(now);
            if let Some(outcome) = self.finished() {
                self.emit(Event::ShutdownFinished {
                    exit: outcome.exit_code(),
                });
                return outcome;
            }
            let timeout = self
                .next_deadline()
                .map(|at| at.saturating_duration_since(now));
            // A failed poll only costs one more turn of the loop.
            let _ = self.signals.wait(timeout);
            while let Some(signal) = self.signals.next() {
                self.on_signal(signal);
            }
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
            _ => {}
        }
    }

    /// Reaps every child that has exited. A dead worker's process group is signalled before
    /// the worker is reaped: its zombie still holds the group's id, so no other process can
    /// have taken it.
    fn reap(&mut self) {
        let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        loop {
            let pid = match waitid(Id::All, peek) {
                Ok(WaitStatus::StillAlive) => {
                    self.childless = false;
                    return;
                }
                Err(Errno::ECHILD) => {
                    self.childless = true;
                    return;
                }
                Err(Errno::EINTR) => continue,
                Err(_) => return,
                Ok(status) => match status.pid() {
                    Some(pid) => pid,
                    None => return,
                },
            };
            if self.index_of(pid).is_some() {
                // Whatever the worker left in its group goes with it.
                let _ = killpg(pid, Signal::SIGTERM);
            }
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)).map(Exit::from_wait) {
                Ok(Some((pid, exit))) => self.on_exit(pid, exit),
                Ok(None) | Err(Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }

    /// What happens when a worker dies: respawn it with the same index, unless the master is
    /// shutting down, retired the index, or has seen too many deaths lately.
    fn on_exit(&mut self, pid: Pid, status: Exit) {
        let Some(index) = self.index_of(pid) else {
            self.emit(Event::Reaped { pid, status });
            return;
        };
        let slot = &mut self.slots[index];
        slot.pid = None;
        slot.kill_at = None;
        let deliberate = std::mem::take(&mut slot.stopping);
        self.emit(Event::Exited { index, pid, status });
        if self.shutdown.is_some() {
            return;
        }
        if index >= self.instances {
            self.trim_slots();
            return;
        }
        if !deliberate {
            let Some(respawns) = self.limiter.try_respawn(Instant::now()) else {
                self.emit(Event::GaveUp {
                    limit: self.limiter.limit(),
                    interval: self.limiter.interval(),
                });
                self.begin_shutdown(None, Outcome::GaveUp);
                return;
            };
            self.emit(Event::Respawning {
                index,
                respawns,
                limit: self.limiter.limit(),
                interval: self.limiter.interval(),
            });
        }
        self.slots[index].pending = true;
    }

    /// Forks every pending index, lowest first, reading signals between forks so that a TERM
    /// does not wait for a thousand forks to finish.
    fn spawn_pending(&mut self) {
        let Some(mut index) = self.next_pending(0) else {
            return;
        };
        // Once for the batch: output the master's own code left buffered would otherwise be
        // written again by every worker.
        let _ = std::io::stdout().flush();
        while self.shutdown.is_none() {
            let slot = &mut self.slots[index];
            slot.pending = false;
            match worker::spawn(index, &mut self.worker, self.pid, self.signals) {
                Ok(pid) => {
                    slot.pid = Some(pid);
                    self.emit(Event::Spawned { index, pid });
                }
                Err(error) => {
                    self.emit(Event::SpawnFailed { index, error });
                    self.begin_shutdown(None, Outcome::GaveUp);
                }
            }
            while let Some(signal) = self.signals.next() {
                self.on_signal(signal);
            }
            match self.next_pending(index + 1) {
                Some(next) => index = next,
                None => return,
            }
        }
    }

    /// The first pending index from `from` on, wrapping around: a reap between two forks may
    /// have made a lower index pending.
    fn next_pending(&self, from: usize) -> Option<usize> {
        let pending = |slot: &Slot| slot.pending;
        let later = self.slots.iter().skip(from).position(pending);
        later
            .map(|offset| from + offset)
            .or_else(|| self.slots.iter().take(from).position(pending))
    }

    /// The index of the live worker `pid`.
    fn index_of(&self, pid: Pid) -> Option<usize> {
        self.slots.iter().position(|slot| slot.pid == Some(pid))
    }

    fn live_workers(&self) -> usize {
        self.slots.iter().filter(|slot| slot.pid.is_some()).count()
    }

    fn scale_up(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        self.instances += 1;
        let index = self.instances - 1;
        if index == self.slots.len() {
            self.slots.push(Slot::default());
        }
        // A worker still being retired from this index is replaced when it exits.
        if self.slots[index].pid.is_none() {
            self.slots[index].pending = true;
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
            self.emit(Event::ScaleDownRefused);
            return;
        }
        self.instances -= 1;
        let index = self.instances;
        self.slots[index].pending = false;
        self.emit(Event::ScaledDown {
            instances: self.instances,
            retiring: index,
        });
        match self.slots[index].pid {
            Some(_) => self.stop(index, self.deadline()),
            None => self.trim_slots(),
        }
    }

    /// Sends the worker's process group SIGTERM (and SIGCONT), and SIGKILL at `kill_at` if it
    /// is still alive.
    fn stop(&mut self, index: usize, kill_at: Option<Instant>) {
        let slot = &mut self.slots[index];
        let Some(pid) = slot.pid else {
            return;
        };
        if !slot.stopping {
            slot.stopping = true;
            slot.kill_at = kill_at;
            signal_group(pid, Signal::SIGTERM);
            // A stopped process acts on TERM only once continued.
            signal_group(pid, Signal::SIGCONT);
        }
    }

    fn begin_shutdown(&mut self, signal: Option<Signal>, outcome: Outcome) {
        if self.shutdown.is_some() {
            return;
        }
        for slot in &mut self.slots {
            slot.pending = false;
        }
        self.emit(Event::ShutdownStarted {
            signal,
            workers: self.live_workers(),
        });
        let kill_at = self.deadline();
        for index in 0..self.slots.len() {
            self.stop(index, kill_at);
        }
        self.signal_orphans(Signal::SIGTERM);
        self.signal_orphans(Signal::SIGCONT);
        self.shutdown = Some(Shutdown { outcome, kill_at });
    }

    /// Kills every process left at once: a second TERM or INT during a shutdown.
    fn force(&mut self, signal: Signal) {
        self.emit(Event::ShutdownForced {
            signal,
            workers: self.live_workers(),
        });
        self.kill_everything();
    }

    fn kill_everything(&mut self) {
        if let Some(shutdown) = &mut self.shutdown {
            shutdown.kill_at = None;
        }
        for slot in &mut self.slots {
            slot.kill_at = None;
            if let Some(pid) = slot.pid {
                signal_group(pid, Signal::SIGKILL);
            }
        }
        self.signal_orphans(Signal::SIGKILL);
    }

    /// Sends SIGKILL to every worker, and in a shutdown every process, whose time is up.
    fn kill_overdue(&mut self, now: Instant) {
        let timeout = self.config.shutdown_timeout;
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            let (Some(pid), Some(kill_at)) = (slot.pid, slot.kill_at) else {
                continue;
            };
            if kill_at <= now {
                slot.kill_at = None;
                signal_group(pid, Signal::SIGKILL);
                self.emit(Event::Killed {
                    index,
                    pid,
                    after: timeout,
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

    fn next_deadline(&self) -> Option<Instant> {
        let shutdown = self.shutdown.as_ref().and_then(|shutdown| shutdown.kill_at);
        self.slots
            .iter()
            .filter_map(|slot| slot.kill_at)
            .chain(shutdown)
            .min()
    }

    /// The outcome, once a shutdown has run its course and no child is left.
    fn finished(&self) -> Option<Outcome> {
        let shutdown = self.shutdown.as_ref()?;
        self.childless.then_some(shutdown.outcome)
    }

    /// When a stop that starts now turns into SIGKILL; `None` when that is too far to count.
    fn deadline(&self) -> Option<Instant> {
        Instant::now().checked_add(self.config.shutdown_timeout)
    }

    fn trim_slots(&mut self) {
        while self.slots.len() > self.instances
            && self.slots.last().is_some_and(|slot| slot.pid.is_none())
        {
            self.slots.pop();
        }
    }

    /// Signals the orphans handed to the master (it is their subreaper): its children that
    /// are not workers.
    fn signal_orphans(&self, signal: Signal) {
        if self.pid.as_raw() == 1 {
            // The init of a PID namespace: everything else in it is the master's to stop.
            let _ = kill(Pid::from_raw(-1), signal);
            return;
        }
        for pid in procfs::children().unwrap_or_default() {
            if self.index_of(pid).is_none() {
                let _ = kill(pid, signal);
            }
        }
    }

    fn emit(&self, event: Event<'_>) {
        event::log(self.pid, &event);
    }
}

/// Signals the process group a worker leads, or the worker alone if it left its group.
fn signal_group(pid: Pid, signal: Signal) {
    if killpg(pid, signal) == Err(Errno::ESRCH) {
        let _ = kill(pid, signal);
    }
}
