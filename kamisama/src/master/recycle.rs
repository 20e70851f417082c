//! Recycling: a worker that has run for `max_lifetime`, or done `max_requests` units of work
//! (each plus its jitter), is replaced before it is stopped. Its successor is forked at its index first; once that one is ready, the old
//! worker gets its cooperative stop, with SIGKILL after `shutdown_timeout`. One worker is
//! replaced at a time, so that the fleet never has fewer ready workers than it should, and a
//! recycle is no crash: it never counts against `respawn_limit`.
//!
//! The master's hook is [`Master::recycle`], once per turn of its loop. The old worker is no
//! longer in the slot table once its successor is due: it is one of the [`Recycler`]'s
//! outgoing workers until it is reaped, which the master asks of it first
//! ([`Recycler::reaped`]).

use super::fleet::{self, Stop};
use super::slots::State;
use super::Master;
use crate::event::{Event, ExitStatus};
use crate::worker::shared::SharedSlots;
use crate::worker::WorkerFn;
use nix::unistd::Pid;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// What the master keeps of recycling.
pub(super) struct Recycler {
    lifetime: Duration,
    jitter: Duration,
    requests: u64,
    requests_jitter: u64,
    /// When each worker is due, soonest first, and why. An entry whose worker is gone, or no
    /// longer its index's, is skipped when it comes up.
    due: BinaryHeap<Reverse<(Instant, usize, Pid, Why)>>,
    /// The index whose successor is forked or about to be, and the worker it replaces.
    replacing: Option<Outgoing>,
    /// Replaced workers, asked to stop, until they are reaped.
    stopping: Vec<Outgoing>,
    /// State of the jitter's generator.
    seed: u64,
}

/// Why a worker is recycled.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Why {
    Lifetime,
    Requests,
}

impl Why {
    fn name(self) -> &'static str {
        match self {
            Why::Lifetime => "lifetime",
            Why::Requests => "requests",
        }
    }
}

/// A replaced worker.
#[derive(Clone, Copy)]
struct Outgoing {
    index: usize,
    pid: Pid,
    /// When SIGKILL follows its stop; `None` once sent, or before the stop.
    kill_at: Option<Instant>,
}

impl Recycler {
    pub(super) fn new(config: &crate::config::Config) -> Self {
        Recycler {
            lifetime: config.max_lifetime,
            jitter: config.max_lifetime_jitter,
            requests: config.max_requests,
            requests_jitter: config.max_requests_jitter,
            due: BinaryHeap::new(),
            replacing: None,
            stopping: Vec::new(),
            seed: crate::worker::shared::now_nanos() ^ u64::from(std::process::id()),
        }
    }

    /// Before a fork for `index`: sets the worker's count of work to zero and its limit.
    pub(super) fn forking(&mut self, shared: Option<&SharedSlots>, index: usize) {
        let Some(words) = shared.map(|shared| shared.slot(index)) else {
            return;
        };
        let limit = match (self.requests, self.requests_jitter) {
            (0, _) => 0,
            (requests, 0) => requests,
            (requests, jitter) => {
                let drawn = splitmix(&mut self.seed) % jitter.saturating_add(1);
                requests.saturating_add(drawn)
            }
        };
        words.done.store(0, Ordering::Relaxed);
        words.limit.store(limit, Ordering::Relaxed);
    }

    /// The worker `pid` of `index` did its `max_requests`: it is due now.
    pub(super) fn requested(&mut self, index: usize, pid: Pid, now: Instant) {
        if self.requests > 0 {
            self.due.push(Reverse((now, index, pid, Why::Requests)));
        }
    }

    /// A worker was forked for `index` at `started`: it is due at the end of its lifetime.
    pub(super) fn forked(&mut self, index: usize, pid: Pid, started: Instant) {
        if self.lifetime.is_zero() {
            return;
        }
        let jitter = match self.jitter.as_millis() {
            0 => Duration::ZERO,
            millis => Duration::from_millis(splitmix(&mut self.seed) % (millis as u64 + 1)),
        };
        if let Some(due) = started.checked_add(self.lifetime + jitter) {
            self.due.push(Reverse((due, index, pid, Why::Lifetime)));
        }
    }

    /// When the master must look again: the next worker due (unless one is being replaced),
    /// or the next SIGKILL.
    /// `begins` says whether a replacement may begin now.
    pub(super) fn next_deadline(&self, begins: bool) -> Option<Instant> {
        let due = self
            .due
            .peek()
            .filter(|_| begins && self.replacing.is_none())
            .map(|Reverse((due, _, _, _))| *due);
        let kill = self.stopping.iter().filter_map(|out| out.kill_at).min();
        due.into_iter().chain(kill).min()
    }

    /// If `pid` was a replaced worker, forgets it and returns its index.
    pub(super) fn reaped(&mut self, pid: Pid) -> Option<usize> {
        if let Some(replacing) = self.replacing.filter(|out| out.pid == pid) {
            // Gone before its successor was ready: nothing left to stop.
            self.replacing = None;
            return Some(replacing.index);
        }
        let at = self.stopping.iter().position(|out| out.pid == pid)?;
        Some(self.stopping.swap_remove(at).index)
    }

    /// Whether a successor is forked, or about to be, and not ready yet.
    pub(super) fn replacing(&self) -> bool {
        self.replacing.is_some()
    }
}

/// The next number of a splitmix64 sequence: plenty for spreading lifetimes.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl<W: WorkerFn<S>, S> Master<'_, W, S> {
    /// Once per turn: stops the worker being replaced once its successor is ready, and
    /// begins the next replacement when one is due. Nothing is begun during a shutdown, a
    /// rolling restart or an upgrade, which replace workers their own way.
    pub(super) fn recycle(&mut self, now: Instant) {
        if let Some(out) = self.recycler.replacing {
            let ready = out.index >= self.instances
                || self.is_ready(out.index)
                || matches!(self.slots[out.index].state(), State::Done | State::Retired);
            if !ready {
                return;
            }
            self.recycler.replacing = None;
            self.stop_outgoing(out, self.deadline());
        }
        while self.recycling_may_begin() {
            let Some(Reverse((due, index, pid, why))) = self.recycler.due.peek().copied() else {
                return;
            };
            let current = index < self.instances
                && matches!(*self.slots[index].state(), State::Running { pid: running, stop: None, .. } if running == pid);
            if current && due > now {
                return;
            }
            self.recycler.due.pop();
            if !current {
                continue;
            }
            let State::Running { started, .. } = *self.slots[index].state() else {
                continue;
            };
            self.emit(Event::Recycling {
                index,
                pid: pid.as_raw() as u32,
                reason: why.name(),
                lived: now.saturating_duration_since(started),
            });
            // The slot is the successor's from now on: forked in this turn.
            self.slots.set(index, State::Pending { not_before: None });
            let slot = &mut self.slots[index];
            slot.recycles = slot.recycles.saturating_add(1);
            self.recycler.replacing = Some(Outgoing {
                index,
                pid,
                kill_at: None,
            });
            return;
        }
    }

    /// SIGURG: a worker says it did its `max_requests`. From anyone else, or from a worker
    /// already on its way out, it means nothing.
    pub(super) fn recycle_requested(&mut self, sender: u32) {
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

    /// Whether a replacement may begin: not during a shutdown, a rolling restart or an
    /// upgrade.
    pub(super) fn recycling_may_begin(&self) -> bool {
        self.shutdown.is_none()
            && self.rolling.is_none()
            && self.upgrade.is_none()
            && self.takeover.is_none()
    }

    /// Asks a replaced worker to stop, with SIGKILL at `kill_at`.
    fn stop_outgoing(&mut self, mut out: Outgoing, kill_at: Option<Instant>) {
        fleet::stop_worker(out.pid, Stop::Term);
        out.kill_at = kill_at;
        self.recycler.stopping.push(out);
    }

    /// In a shutdown: the worker being replaced is stopped too.
    pub(super) fn stop_recycling(&mut self, kill_at: Option<Instant>) {
        if let Some(out) = self.recycler.replacing.take() {
            self.stop_outgoing(out, kill_at);
        }
    }

    /// Sends SIGKILL to every replaced worker whose time is up (or to all, `now` being
    /// `None`).
    pub(super) fn kill_overdue_outgoing(&mut self, now: Option<Instant>) {
        let after = self.config.shutdown_timeout;
        let mut killed = Vec::new();
        for out in &mut self.recycler.stopping {
            let due = match now {
                None => true,
                Some(now) => out.kill_at.is_some_and(|at| at <= now),
            };
            if due {
                out.kill_at = None;
                if fleet::stop_worker(out.pid, Stop::Kill) {
                    killed.push((out.index, out.pid));
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
    pub(super) fn outgoing_exited(&mut self, index: usize, pid: Pid, status: ExitStatus) {
        self.emit(Event::Exited {
            index,
            pid: pid.as_raw() as u32,
            status,
            stopped: true,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_lifetime_is_drawn_within_the_jitter_and_they_differ() {
        let (lifetime, jitter) = (Duration::from_secs(60), Duration::from_secs(10));
        let config = crate::config::Config {
            max_lifetime: lifetime,
            max_lifetime_jitter: jitter,
            ..Default::default()
        };
        let mut recycler = Recycler::new(&config);
        let started = Instant::now();
        for index in 0..100 {
            recycler.forked(index, Pid::from_raw(index as i32 + 1), started);
        }
        let dues: Vec<Duration> = recycler
            .due
            .iter()
            .map(|Reverse((due, _, _, _))| *due - started)
            .collect();
        assert!(dues
            .iter()
            .all(|due| (lifetime..=lifetime + jitter).contains(due)));
        let distinct: std::collections::BTreeSet<_> = dues.iter().collect();
        assert!(distinct.len() > 90, "{distinct:?}");
    }

    #[test]
    fn without_a_lifetime_no_worker_is_ever_due() {
        let config = crate::config::Config {
            max_lifetime_jitter: Duration::from_secs(10),
            ..Default::default()
        };
        let mut recycler = Recycler::new(&config);
        recycler.forked(0, Pid::from_raw(1), Instant::now());
        assert_eq!(recycler.next_deadline(true), None);
    }
}
