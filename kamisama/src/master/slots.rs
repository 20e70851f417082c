//! The index table: one slot per worker index, and what runs in it, with what the loop asks of
//! it on every turn kept at hand rather than found by scanning every slot: which worker a pid
//! is, which indices are due for a fork, the next deadline (a backoff ending, a SIGKILL due),
//! and how many workers run, are hung, or are done. At 10,000 workers a scan costs tens of
//! microseconds, on every event; these cost a lookup.
//!
//! Every change of a slot's state goes through [`Slots::set`] (or [`Slots::stop`]), which
//! keeps them true. A deadline is not taken out when its slot moves on: it is skipped when it
//! comes up, so that a change costs no search.

use super::table::Table;
use super::watchdog::Watch;
use crate::event::ExitStatus;
use crate::worker::shared::{Half, SharedSlots, Words};
use nix::unistd::Pid;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// One slot per index. Slots past the master's `instances` hold workers being retired.
pub(super) struct Slots {
    slots: Table<Slot>,
    /// By pid, the index of each live worker plus one; zero for a pid that is none.
    by_pid: Table<u32>,
    /// Indices whose worker is to be forked now (their backoff, if any, has ended).
    due: DueSet,
    /// Backoffs that end and SIGKILLs that are due, soonest first.
    timers: BinaryHeap<Reverse<Timer>>,
    counts: Counts,
}

/// How many slots are in each state, kept as they change.
#[derive(Default)]
struct Counts {
    /// Indices to fork, now or later.
    pending: usize,
    /// Live workers; of them, those found hung.
    running: usize,
    hung: usize,
    /// Indices done with or retired.
    finished: usize,
    /// Live workers not asked to stop, and indices done: every index of a fleet ready once
    /// forked is one or the other.
    serving_or_done: usize,
}

/// One index.
#[derive(Clone, Copy)]
pub(super) struct Slot {
    state: State,
    /// Early deaths in a row, for the backoff.
    pub(super) early_deaths: u32,
    /// Workers forked for this index so far, for the status.
    pub(super) forks: u32,
    /// Of them, successors of a recycled worker.
    pub(super) recycles: u32,
    /// How the last one ended, for the status.
    pub(super) last_exit: Option<ExitStatus>,
    /// How many ended, by how, for the metrics.
    pub(super) exits: [u32; Ending::ALL.len()],
    /// Which of the index's shared words its last worker forked has.
    pub(super) half: Half,
}

/// How a worker ended, as the metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ending {
    /// It exited with status 0, by itself.
    Success,
    /// It exited with another status (a panic is 101), by itself.
    Failure,
    /// A signal ended it, not sent by the master.
    Signal,
    /// It was found hung, and killed.
    Hung,
    /// The master stopped it: a shutdown, a rolling restart, fewer instances.
    Stopped,
    /// It was recycled: stopped once its successor was ready.
    Recycled,
}

impl Ending {
    pub(super) const ALL: [Ending; 6] = [
        Ending::Success,
        Ending::Failure,
        Ending::Signal,
        Ending::Hung,
        Ending::Stopped,
        Ending::Recycled,
    ];

    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(super) fn name(self) -> &'static str {
        match self {
            Ending::Success => "success",
            Ending::Failure => "failure",
            Ending::Signal => "signal",
            Ending::Hung => "hung",
            Ending::Stopped => "stopped",
            Ending::Recycled => "recycled",
        }
    }

    /// How a worker that exited with `status` ended: `stopped` when the master asked it to,
    /// `hung` when it was killed for a hang.
    pub(super) fn of(status: ExitStatus, stopped: bool, hung: bool) -> Ending {
        match status {
            _ if hung => Ending::Hung,
            _ if stopped => Ending::Stopped,
            ExitStatus::Code(0) => Ending::Success,
            ExitStatus::Code(_) => Ending::Failure,
            ExitStatus::Signal(_) => Ending::Signal,
        }
    }
}

#[derive(Clone, Copy)]
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
#[derive(Clone, Copy)]
pub(super) struct Stopping {
    /// When SIGKILL follows; `None` once sent, or for a deadline too far to count.
    pub(super) kill_at: Option<Instant>,
    /// Whether it was hung: then its exit is a crash, counted by the respawn limit.
    pub(super) hung: bool,
}

/// A deadline of one slot.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Instant,
    index: usize,
    /// The worker a SIGKILL is for; `None` for a backoff's end.
    kill: Option<Pid>,
}

/// A deadline come due: what the loop must do now.
pub(super) enum Due {
    /// The worker `pid` of `index` was asked to stop (or found `hung`), and SIGKILL is its
    /// due now.
    Kill { index: usize, pid: Pid, hung: bool },
}

impl Slot {
    fn pending() -> Self {
        Slot {
            state: State::Pending { not_before: None },
            early_deaths: 0,
            forks: 0,
            recycles: 0,
            last_exit: None,
            exits: [0; Ending::ALL.len()],
            half: Half::default(),
        }
    }

    /// The shared words of the index's last worker forked, which is `index`.
    pub(super) fn words<'s>(&self, shared: &'s SharedSlots, index: usize) -> &'s Words {
        shared.words(index, self.half)
    }

    /// Whether the worker is busy, as its shared words say: whether any of its threads is at
    /// work, out of kamisama's waits. Known only of a running sync worker that was not asked
    /// to stop (an async worker's waits are tokio's).
    pub(super) fn busy(&self, index: usize, shared: &SharedSlots, is_async: bool) -> Option<bool> {
        if is_async || !matches!(self.state, State::Running { stop: None, .. }) {
            return None;
        }
        let at_work = self.words(shared, index).at_work.load(Ordering::Relaxed);
        Some(crate::worker::shared::is_at_work(at_work))
    }

    pub(super) fn state(&self) -> &State {
        &self.state
    }

    /// The state as the status file and the metrics name it: `running`, `hung`, `stopping`,
    /// `backing-off`, `pending`, `done` or `retired`.
    pub(super) fn state_name(&self, now: Instant) -> &'static str {
        match &self.state {
            State::Running { stop: None, .. } => "running",
            State::Running {
                stop: Some(stopping),
                ..
            } if stopping.hung => "hung",
            State::Running { .. } => "stopping",
            State::Pending {
                not_before: Some(at),
            } if *at > now => "backing-off",
            State::Pending { .. } => "pending",
            State::Done => "done",
            State::Retired => "retired",
        }
    }

    /// Counts a worker of this index that ended so.
    pub(super) fn ended(&mut self, ending: Ending) {
        let count = &mut self.exits[ending as usize];
        *count = count.saturating_add(1);
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
    /// The table of a fleet of `instances`, whose pids are at most `pid_max`.
    pub(super) fn new(instances: usize, pid_max: i32) -> Self {
        let pids = usize::try_from(pid_max).map_or(0, |max| max + 1);
        let mut slots = Slots {
            slots: Table::new(),
            // SAFETY: zero is a u32.
            by_pid: unsafe { Table::zeroed(pids) },
            due: DueSet::default(),
            timers: BinaryHeap::new(),
            counts: Counts::default(),
        };
        for index in 0..instances {
            slots.add(index);
        }
        slots
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter()
    }

    /// Sets the state of `index`, and keeps what the table knows of it true.
    pub(super) fn set(&mut self, index: usize, state: State) {
        let old = std::mem::replace(&mut self.slots[index].state, state);
        self.counts.count(&old, false);
        if let State::Running { pid, .. } = old {
            self.by_pid[pid.as_raw() as usize] = 0;
        }
        self.counts.count(&self.slots[index].state, true);
        match &self.slots[index].state {
            State::Pending { not_before: None } => {
                self.due.mark(index);
            }
            State::Pending {
                not_before: Some(at),
            } => self.timers.push(Reverse(Timer {
                at: *at,
                index,
                kill: None,
            })),
            State::Running { pid, stop, .. } => {
                let at = pid.as_raw() as usize;
                if at >= self.by_pid.len() {
                    // A pid past the largest one read at start: `pid_max` was raised since.
                    // SAFETY: zero is a u32.
                    unsafe { self.by_pid.grow_zeroed(at + 1) };
                }
                // An index is below 2^22.
                self.by_pid[at] = index as u32 + 1;
                if let Some(Stopping {
                    kill_at: Some(at), ..
                }) = stop
                {
                    self.timers.push(Reverse(Timer {
                        at: *at,
                        index,
                        kill: Some(*pid),
                    }));
                }
            }
            State::Done | State::Retired => {}
        }
    }

    /// Marks the worker of `index` as asked to stop (or found hung), with SIGKILL at the
    /// deadline `stopping` has; returns its pid, or `None` if no worker runs there.
    pub(super) fn stop(&mut self, index: usize, stopping: Stopping) -> Option<Pid> {
        let State::Running { pid, stop, .. } = &mut self.slots[index].state else {
            return None;
        };
        let pid = *pid;
        let was = stop.replace(stopping);
        self.counts.hung += usize::from(stopping.hung);
        self.counts.hung -= usize::from(was.is_some_and(|was| was.hung));
        self.counts.serving_or_done -= usize::from(was.is_none());
        if let Some(at) = stopping.kill_at {
            self.timers.push(Reverse(Timer {
                at,
                index,
                kill: Some(pid),
            }));
        }
        Some(pid)
    }

    /// Every live worker not asked to stop, with its index, shared words, pid, start and hang
    /// detection state: what a pass of the watchdog looks at.
    pub(super) fn watched(
        &mut self,
    ) -> impl Iterator<Item = (usize, Half, Pid, Instant, &mut Watch)> + '_ {
        let slots = self.slots.iter_mut().enumerate();
        slots.filter_map(|(index, slot)| match &mut slot.state {
            State::Running {
                pid,
                started,
                stop: None,
                watch,
            } => Some((index, slot.half, *pid, *started, watch)),
            _ => None,
        })
    }

    /// The index of the live worker `pid`.
    pub(super) fn index_of(&self, pid: Pid) -> Option<usize> {
        let plus_one = *self.by_pid.get(usize::try_from(pid.as_raw()).ok()?)?;
        let index = (plus_one as usize).checked_sub(1)?;
        // Asked of the slot too, so that no entry of the index, stale or not, can make an
        // orphan that was given a worker's old pid pass for a worker.
        (self.slots.get(index)?.pid() == Some(pid)).then_some(index)
    }

    pub(super) fn live_workers(&self) -> usize {
        self.counts.running
    }

    /// Whether an index is to be forked, now or later.
    pub(super) fn any_pending(&self) -> bool {
        self.counts.pending > 0
    }

    /// Live workers found hung, not yet gone.
    pub(super) fn hung(&self) -> usize {
        self.counts.hung
    }

    /// Whether every slot is done with or retired.
    pub(super) fn all_finished(&self) -> bool {
        self.counts.finished == self.slots.len()
    }

    /// Live workers not asked to stop, and indices done.
    pub(super) fn serving_or_done(&self) -> usize {
        self.counts.serving_or_done
    }

    /// The pids of the live workers, sorted, to tell workers from orphans in a sweep.
    pub(super) fn worker_pids(&self) -> Vec<Pid> {
        let mut pids: Vec<Pid> = self.slots.iter().filter_map(Slot::pid).collect();
        pids.sort_unstable();
        pids
    }

    /// The lowest index due for a fork at `now`.
    pub(super) fn next_due(&mut self, now: Instant) -> Option<usize> {
        self.fire_backoffs(now);
        while let Some(index) = self.due.first() {
            if self.slots.get(index).is_some_and(|slot| slot.is_due(now)) {
                return Some(index);
            }
            self.due.clear(index);
        }
        None
    }

    /// Moves the indices whose backoff has ended to the due ones.
    fn fire_backoffs(&mut self, now: Instant) {
        while let Some(Reverse(timer)) = self.timers.peek().copied() {
            if timer.at > now || timer.kill.is_some() {
                return;
            }
            self.timers.pop();
            if let Some(slot) = self.slots.get(timer.index) {
                if matches!(slot.state, State::Pending { not_before: Some(at) } if at == timer.at) {
                    self.due.mark(timer.index);
                }
            }
        }
    }

    /// The next deadline come due at `now`, if one has: a SIGKILL to send (a backoff that
    /// ends makes its index due, for [`next_due`](Slots::next_due)).
    pub(super) fn next_overdue(&mut self, now: Instant) -> Option<Due> {
        while let Some(Reverse(timer)) = self.timers.peek().copied() {
            if timer.at > now {
                return None;
            }
            self.timers.pop();
            let Some(slot) = self.slots.get_mut(timer.index) else {
                continue;
            };
            match (timer.kill, &mut slot.state) {
                (None, State::Pending { not_before }) if *not_before == Some(timer.at) => {
                    self.due.mark(timer.index);
                }
                (
                    Some(killed),
                    State::Running {
                        pid,
                        stop: Some(stopping),
                        ..
                    },
                ) if *pid == killed && stopping.kill_at == Some(timer.at) => {
                    stopping.kill_at = None;
                    return Some(Due::Kill {
                        index: timer.index,
                        pid: killed,
                        hung: stopping.hung,
                    });
                }
                _ => {}
            }
        }
        None
    }

    /// When the next deadline is, if any: a backoff that ends, a SIGKILL due. Deadlines of
    /// slots that have moved on since are dropped on the way.
    pub(super) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse(timer)) = self.timers.peek().copied() {
            let live =
                self.slots
                    .get(timer.index)
                    .is_some_and(|slot| match (timer.kill, &slot.state) {
                        (None, State::Pending { not_before }) => *not_before == Some(timer.at),
                        (Some(killed), State::Running { pid, stop, .. }) => {
                            *pid == killed
                                && stop.is_some_and(|stopping| stopping.kill_at == Some(timer.at))
                        }
                        _ => false,
                    });
            if live {
                return Some(timer.at);
            }
            self.timers.pop();
        }
        None
    }

    /// A slot for a new highest index, or the old slot of that index when a worker retired
    /// from it has not exited yet (it is replaced once it has).
    pub(super) fn add(&mut self, index: usize) {
        match self.slots.get(index) {
            None => {
                self.slots.push(Slot::pending());
                // As `set` would count it.
                self.due.mark(index);
                self.counts.pending += 1;
            }
            Some(slot) if slot.pid().is_some() => {}
            Some(_) => {
                self.set(index, State::Pending { not_before: None });
                let slot = &mut self.slots[index];
                (slot.early_deaths, slot.forks, slot.last_exit) = (0, 0, None);
            }
        }
    }

    /// Drops the retired slots past `instances`.
    pub(super) fn trim(&mut self, instances: usize) {
        while self.slots.len() > instances
            && self
                .slots
                .last()
                .is_some_and(|slot| matches!(slot.state, State::Retired))
        {
            self.counts.finished -= 1;
            self.slots.pop();
        }
    }
}

/// Indices that may be due for a fork, lowest first: a bit each, checked against its slot
/// when it comes up, and cleared then if the slot has moved on.
#[derive(Default)]
struct DueSet {
    bits: Table<u64>,
    /// How many bits are set.
    count: usize,
    /// No bit below it is set.
    lowest: usize,
}

impl DueSet {
    fn mark(&mut self, index: usize) {
        let (word, bit) = (index / 64, 1 << (index % 64));
        if word >= self.bits.len() {
            // SAFETY: zero is a u64.
            unsafe { self.bits.grow_zeroed(word + 1) };
        }
        if self.bits[word] & bit == 0 {
            self.bits[word] |= bit;
            self.count += 1;
            self.lowest = self.lowest.min(index);
        }
    }

    fn clear(&mut self, index: usize) {
        let (word, bit) = (index / 64, 1 << (index % 64));
        if self.bits.get(word).is_some_and(|bits| bits & bit != 0) {
            self.bits[word] &= !bit;
            self.count -= 1;
        }
    }

    /// The lowest index marked.
    fn first(&mut self) -> Option<usize> {
        if self.count == 0 {
            return None;
        }
        // A set bit lies at `lowest` or above: the scan ends within the table.
        let mut word = self.lowest / 64;
        let mut bits = self.bits[word] & (u64::MAX << (self.lowest % 64));
        while bits == 0 {
            word += 1;
            bits = self.bits[word];
        }
        self.lowest = word * 64 + bits.trailing_zeros() as usize;
        Some(self.lowest)
    }
}

impl Counts {
    fn count(&mut self, state: &State, add: bool) {
        let (pending, running, hung, finished, serving_or_done) = match state {
            State::Running { stop, .. } => (
                0,
                1,
                usize::from(stop.is_some_and(|stop| stop.hung)),
                0,
                usize::from(stop.is_none()),
            ),
            State::Done => (0, 0, 0, 1, 1),
            State::Retired => (0, 0, 0, 1, 0),
            State::Pending { .. } => (1, 0, 0, 0, 0),
        };
        if add {
            self.pending += pending;
            self.running += running;
            self.hung += hung;
            self.finished += finished;
            self.serving_or_done += serving_or_done;
        } else {
            self.pending -= pending;
            self.running -= running;
            self.hung -= hung;
            self.finished -= finished;
            self.serving_or_done -= serving_or_done;
        }
    }
}

impl std::ops::Index<usize> for Slots {
    type Output = Slot;

    fn index(&self, index: usize) -> &Slot {
        &self.slots[index]
    }
}

impl std::ops::IndexMut<usize> for Slots {
    /// A slot's record (its forks, early deaths, last exit); its state changes through
    /// [`Slots::set`].
    fn index_mut(&mut self, index: usize) -> &mut Slot {
        &mut self.slots[index]
    }
}

#[cfg(test)]
mod tests {
    use super::{Due, Slots, State, Stopping};
    use crate::master::watchdog::Watch;
    use nix::unistd::Pid;
    use std::time::{Duration, Instant};

    fn running(pid: i32, started: Instant) -> State {
        State::Running {
            pid: Pid::from_raw(pid),
            started,
            stop: None,
            watch: Watch::default(),
        }
    }

    #[test]
    fn what_the_loop_asks_follows_every_change_of_state() {
        let now = Instant::now();
        let mut slots = Slots::new(3, 1000);
        assert_eq!(slots.next_due(now), Some(0));
        assert!(slots.any_pending());
        for index in 0..3 {
            slots.set(index, running(100 + index as i32, now));
        }
        assert_eq!(slots.next_due(now), None);
        assert!(!slots.any_pending());
        assert_eq!((slots.live_workers(), slots.serving_or_done()), (3, 3));
        assert_eq!(slots.index_of(Pid::from_raw(101)), Some(1));
        assert_eq!(slots.index_of(Pid::from_raw(999)), None);
        // Asked to stop: still live, no longer serving; found hung: counted as hung.
        let stop = Stopping {
            kill_at: Some(now + Duration::from_secs(5)),
            hung: false,
        };
        assert_eq!(slots.stop(1, stop), Some(Pid::from_raw(101)));
        assert_eq!((slots.live_workers(), slots.serving_or_done()), (3, 2));
        let hung = Stopping {
            kill_at: Some(now + Duration::from_secs(1)),
            hung: true,
        };
        slots.stop(2, hung);
        assert_eq!((slots.hung(), slots.serving_or_done()), (1, 1));
        // The soonest deadline first; SIGKILL due once its time has come, once.
        assert_eq!(slots.next_deadline(), Some(now + Duration::from_secs(1)));
        assert!(slots.next_overdue(now).is_none());
        let later = now + Duration::from_secs(2);
        assert!(matches!(
            slots.next_overdue(later),
            Some(Due::Kill {
                index: 2,
                hung: true,
                ..
            })
        ));
        assert!(slots.next_overdue(later).is_none());
        // Its exit: a backoff, then due; the pid is no worker's any more.
        let backoff = now + Duration::from_secs(3);
        slots.set(
            2,
            State::Pending {
                not_before: Some(backoff),
            },
        );
        assert_eq!((slots.live_workers(), slots.hung()), (2, 0));
        assert_eq!(slots.index_of(Pid::from_raw(102)), None);
        assert_eq!(slots.next_due(later), None);
        assert_eq!(slots.next_deadline(), Some(backoff));
        assert!(slots.next_overdue(backoff).is_none());
        assert_eq!(slots.next_due(backoff), Some(2));
        // Done and retired: finished, once every slot is.
        slots.set(0, State::Done);
        slots.set(1, State::Retired);
        slots.set(2, State::Done);
        assert!(slots.all_finished());
        assert_eq!((slots.live_workers(), slots.serving_or_done()), (0, 2));
        slots.trim(1);
        assert_eq!(slots.len(), 3);
        slots.set(2, State::Retired);
        slots.trim(1);
        assert_eq!(slots.len(), 1);
        assert!(slots.all_finished());
    }

    #[test]
    fn indices_come_due_lowest_first_and_again_when_added() {
        let now = Instant::now();
        let mut slots = Slots::new(200, 1000);
        for index in (0..200).rev() {
            assert_eq!(slots.next_due(now), Some(199 - index));
            slots.set(199 - index, running(1 + (199 - index) as i32, now));
        }
        assert_eq!(slots.next_due(now), None);
        slots.set(150, State::Pending { not_before: None });
        slots.set(70, State::Pending { not_before: None });
        assert_eq!(slots.next_due(now), Some(70));
        slots.set(70, running(500, now));
        assert_eq!(slots.next_due(now), Some(150));
        slots.add(200);
        slots.set(150, running(501, now));
        assert_eq!(slots.next_due(now), Some(200));
    }
}
