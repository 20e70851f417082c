//! The replacement step: a worker's successor is forked at its index first, and the worker is
//! stopped once the successor is ready, with its cooperative stop, then SIGKILL after
//! `shutdown_timeout`. At most `recycle_at_once` replacements at a time (one by default), and
//! the fleet never has fewer ready workers than it should. The one place where two workers
//! run for one index, for a moment. A rolling restart (`HUP`) takes its indices through it one
//! after the other, and recycling one at a time as they come due.
//!
//! The replaced worker leaves the slot table as its successor becomes due: it is kept here
//! until it is reaped, which the master asks of [`Replacements::reaped`] first.

use super::fleet::{self, Stop};
use super::slots::{Ending, State};
use super::Master;
use crate::event::{Event, ExitStatus};
use crate::worker::shared::Half;
use crate::worker::WorkerFn;
use nix::unistd::Pid;
use std::time::Instant;

/// The workers being replaced.
pub(super) struct Replacements {
    /// How many may wait for their successors at once.
    at_once: usize,
    /// Those whose successors are forked, or about to be, and not ready yet.
    waiting: Vec<Replaced>,
    /// Those asked to stop, until they are reaped.
    stopping: Vec<Replaced>,
}

/// Why a worker is replaced.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Why {
    /// A rolling restart.
    Restart,
    /// It reached a recycling limit.
    Recycle,
}

/// A replaced worker.
#[derive(Clone, Copy)]
struct Replaced {
    index: usize,
    /// Its shared words, which its successor must not be given.
    half: Half,
    pid: Pid,
    why: Why,
    /// When SIGKILL follows its stop; `None` once sent, or before the stop.
    kill_at: Option<Instant>,
}

impl Replacements {
    pub(super) fn new(at_once: usize) -> Self {
        Replacements {
            at_once,
            waiting: Vec::new(),
            stopping: Vec::new(),
        }
    }

    /// Whether a successor is not ready yet, which the master polls for.
    pub(super) fn in_progress(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Whether a worker a rolling restart replaces is still there: its successor not ready
    /// yet, or itself not gone.
    pub(super) fn restarting(&self) -> bool {
        let mut replaced = self.waiting.iter().chain(&self.stopping);
        replaced.any(|replaced| replaced.why == Why::Restart)
    }

    /// Replaced workers still alive: waiting for their successors, or stopping.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(super) fn alive(&self) -> impl Iterator<Item = (usize, Pid)> + '_ {
        let replaced = self.waiting.iter().chain(&self.stopping);
        replaced.map(|replaced| (replaced.index, replaced.pid))
    }

    /// The shared words for a new worker of `index`, whose last worker had `last`: the same,
    /// unless a replaced worker of the index still running has them (a successor), then the
    /// other half. (Both are taken only by three workers at once: a successor that died
    /// while its predecessor stopped, replaced again. The new one then shares the words of
    /// the worker it replaces.)
    pub(super) fn free_half(&self, index: usize, last: Half) -> Half {
        let replaced = self.waiting.iter().chain(&self.stopping);
        let taken = |half: Half| {
            replaced
                .clone()
                .any(|replaced| replaced.index == index && replaced.half == half)
        };
        [last, last.other()]
            .into_iter()
            .find(|half| !taken(*half))
            .unwrap_or(last)
    }

    /// Whether another replacement may begin.
    pub(super) fn room(&self) -> bool {
        self.waiting.len() < self.at_once
    }

    /// If `pid` was a replaced worker, forgets it and returns its index and why it was
    /// replaced.
    pub(super) fn reaped(&mut self, pid: Pid) -> Option<(usize, Why)> {
        let replaced =
            if let Some(at) = self.waiting.iter().position(|replaced| replaced.pid == pid) {
                // Gone before its successor was ready: nothing left to stop.
                self.waiting.swap_remove(at)
            } else {
                let at = self
                    .stopping
                    .iter()
                    .position(|replaced| replaced.pid == pid)?;
                self.stopping.swap_remove(at)
            };
        Some((replaced.index, replaced.why))
    }

    /// The next SIGKILL due.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.stopping
            .iter()
            .filter_map(|replaced| replaced.kill_at)
            .min()
    }
}

impl<W: WorkerFn<S>, S> Master<'_, W, S> {
    /// Replaces the worker `pid` of `index`: its slot is its successor's from now on, due for
    /// a fork at once; the worker serves on until the successor is ready.
    pub(super) fn begin_replacement(&mut self, index: usize, pid: Pid, why: Why) {
        let half = self.slots[index].half;
        self.slots.set(index, State::Pending { not_before: None });
        self.replacements.waiting.push(Replaced {
            index,
            half,
            pid,
            why,
            kill_at: None,
        });
    }

    /// Once per turn: stops each replaced worker whose successor is ready (or whose index is
    /// retired or done with).
    pub(super) fn advance_replacement(&mut self) {
        let mut at = 0;
        while let Some(replaced) = self.replacements.waiting.get(at).copied() {
            let index = replaced.index;
            let ready = index >= self.instances
                || self.is_ready(index)
                || matches!(self.slots[index].state(), State::Done | State::Retired);
            if ready {
                self.replacements.waiting.swap_remove(at);
                self.stop_replaced(replaced, self.deadline());
            } else {
                at += 1;
            }
        }
    }

    fn stop_replaced(&mut self, mut replaced: Replaced, kill_at: Option<Instant>) {
        fleet::stop_worker(replaced.pid, Stop::Term);
        replaced.kill_at = kill_at;
        self.replacements.stopping.push(replaced);
    }

    /// In a shutdown or at an upgrade's hand-over: the workers whose successors are not ready
    /// yet are stopped too.
    pub(super) fn stop_replacement(&mut self, kill_at: Option<Instant>) {
        for replaced in std::mem::take(&mut self.replacements.waiting) {
            self.stop_replaced(replaced, kill_at);
        }
    }

    /// Sends SIGKILL to every replaced worker whose time is up, or to all with `now` `None`.
    pub(super) fn kill_overdue_replaced(&mut self, now: Option<Instant>) {
        let after = self.config.shutdown_timeout;
        let mut killed = Vec::new();
        for replaced in &mut self.replacements.stopping {
            let due = match now {
                None => true,
                Some(now) => replaced.kill_at.is_some_and(|at| at <= now),
            };
            if due {
                replaced.kill_at = None;
                if fleet::stop_worker(replaced.pid, Stop::Kill) {
                    killed.push((replaced.index, replaced.pid));
                }
            }
        }
        for (index, pid) in killed {
            self.emit(Event::Killed {
                index,
                pid: pid.as_raw() as u32,
                after,
            });
        }
    }

    /// A replaced worker exited: said as any stopped worker's exit is.
    pub(super) fn replaced_exited(
        &mut self,
        (index, why): (usize, Why),
        pid: Pid,
        status: ExitStatus,
    ) {
        if index < self.slots.len() {
            let ending = match why {
                Why::Restart => Ending::Stopped,
                Why::Recycle => Ending::Recycled,
            };
            let slot = &mut self.slots[index];
            slot.ended(ending);
            slot.last_exit = Some(status);
        }
        self.emit(Event::Exited {
            index,
            pid: pid.as_raw() as u32,
            status,
            stopped: true,
        });
    }
}
