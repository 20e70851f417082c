//! The index table: one slot per worker index, and what runs in it.
//!
//! Every page the master writes between two forks is copied once more after the second: the
//! fork path therefore finds slots by scanning (reads are free) and allocates nothing.

use super::watchdog::Watch;
use crate::event::ExitStatus;
use nix::unistd::Pid;
use std::time::Instant;

/// One slot per index. Slots past the master's `instances` hold workers being retired.
pub(super) struct Slots(Vec<Slot>);

/// One index.
pub(super) struct Slot {
    pub(super) state: State,
    /// Early deaths in a row, for the backoff.
    pub(super) early_deaths: u32,
    /// Workers forked for this index so far, for the status.
    pub(super) forks: u32,
    /// How the last one ended, for the status.
    pub(super) last_exit: Option<ExitStatus>,
}

pub(super) enum State {
    /// A worker is to be forked, at once or when its backoff ends.
    Pending { not_before: Option<Instant> },
    Running {
        pid: Pid,
        started: Instant,
        /// Set once the master asked the worker to stop, so that its exit is no crash.
        stop: Option<Stopping>,
        /// What hang detection keeps of it.
        watch: Watch,
    },
    /// Not forked again: the restart policy is done with this index, or the master is
    /// shutting down.
    Done,
    /// Retired by TTOU, until the slot is dropped.
    Retired,
}

/// A worker the master asked to stop, or found hung.
pub(super) struct Stopping {
    /// When SIGKILL follows; `None` once sent, or for a deadline too far to count.
    pub(super) kill_at: Option<Instant>,
    /// Whether it was hung: then its exit is a crash, counted by the respawn limit.
    pub(super) hung: bool,
}

impl Slot {
    pub(super) fn pending() -> Self {
        Slot {
            state: State::Pending { not_before: None },
            early_deaths: 0,
            forks: 0,
            last_exit: None,
        }
    }

    pub(super) fn pid(&self) -> Option<Pid> {
        match self.state {
            State::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// Whether this index will be forked, now or later.
    pub(super) fn is_pending(&self) -> bool {
        matches!(self.state, State::Pending { .. })
    }

    fn is_due(&self, now: Instant) -> bool {
        matches!(self.state, State::Pending { not_before } if not_before.map_or(true, |at| at <= now))
    }
}

impl Slots {
    pub(super) fn new(instances: usize) -> Self {
        Slots((0..instances).map(|_| Slot::pending()).collect())
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.0.iter()
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.0.iter_mut()
    }

    /// The index of the live worker `pid`.
    pub(super) fn index_of(&self, pid: Pid) -> Option<usize> {
        self.0.iter().position(|slot| slot.pid() == Some(pid))
    }

    pub(super) fn live_workers(&self) -> usize {
        self.0.iter().filter(|slot| slot.pid().is_some()).count()
    }

    /// The pids of the live workers, sorted, to tell workers from orphans in a sweep.
    pub(super) fn worker_pids(&self) -> Vec<Pid> {
        let mut pids: Vec<Pid> = self.0.iter().filter_map(Slot::pid).collect();
        pids.sort_unstable();
        pids
    }

    /// The first index due for a fork from `from` on, wrapping around: a reap between two
    /// forks may have made a lower index due.
    pub(super) fn next_due(&self, from: usize, now: Instant) -> Option<usize> {
        let due = |slot: &Slot| slot.is_due(now);
        let later = self.0.iter().skip(from).position(due);
        later
            .map(|offset| from + offset)
            .or_else(|| self.0.iter().take(from).position(due))
    }

    /// A slot for a new highest index, or the old slot of that index when a worker retired
    /// from it has not exited yet (it is replaced once it has).
    pub(super) fn add(&mut self, index: usize) {
        match self.0.get_mut(index) {
            None => self.0.push(Slot::pending()),
            Some(slot) if slot.pid().is_some() => {}
            Some(slot) => *slot = Slot::pending(),
        }
    }

    /// Drops the retired slots past `instances`.
    pub(super) fn trim(&mut self, instances: usize) {
        while self.0.len() > instances
            && self
                .0
                .last()
                .is_some_and(|slot| matches!(slot.state, State::Retired))
        {
            self.0.pop();
        }
    }
}

impl std::ops::Index<usize> for Slots {
    type Output = Slot;

    fn index(&self, index: usize) -> &Slot {
        &self.0[index]
    }
}

impl std::ops::IndexMut<usize> for Slots {
    fn index_mut(&mut self, index: usize) -> &mut Slot {
        &mut self.0[index]
    }
}
