//! Recycling, a policy with one question: which worker is due to be replaced? One that has run
//! for `max_lifetime`, or said it did `max_requests` units of work (each plus a jitter drawn
//! as it is forked), or whose memory was found past `max_memory` (sampled for the whole fleet
//! every [`MEMORY_SAMPLING`], and never without `max_memory`). The loop asks it once per turn, and carries the answer out with the
//! replacement step (`replace.rs`): the successor first, the old worker stopped once the
//! successor is ready. A recycle is no crash: it never counts against `respawn_limit`.
//!
//! Due times are kept in a heap, soonest first: the master wakes for the next one only, and
//! nothing is scanned per event. An entry whose worker is gone, or no longer its index's, is
//! dropped when it comes up.

use crate::config::Config;
use crate::worker::shared::{Half, SharedSlots};
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
    memory: u64,
    /// When the fleet's memory is next sampled, with `max_memory`.
    next_sample: Option<Instant>,
    /// The sample under way: the index it goes on from, and when it began.
    sweep: Option<(usize, Instant)>,
    /// When each worker is due, and why, soonest first.
    due: BinaryHeap<Reverse<(Instant, usize, Pid, Why)>>,
    /// State of the jitter's generator.
    seed: u64,
    /// The last sample of each index's memory, with the worker it is of.
    samples: Vec<Option<(Pid, u64)>>,
}

/// Why a worker is recycled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Why {
    Lifetime,
    Requests,
    Memory,
}

/// How often the fleet's memory is sampled, with `max_memory`: one wakeup of the master, and
/// one read of `/proc/PID/smaps_rollup` per worker (10 to 60 µs each: it walks the worker's
/// page tables), in turns of the loop of at most [`READING_BUDGET`](super::READING_BUDGET)
/// each, with deaths and signals handled between.
pub(super) const MEMORY_SAMPLING: Duration = Duration::from_secs(5);

impl Why {
    /// As the `recycling` event says it.
    pub(super) fn name(self) -> &'static str {
        match self {
            Why::Lifetime => "lifetime",
            Why::Requests => "requests",
            Why::Memory => "memory",
        }
    }
}

impl Recycler {
    pub(super) fn new(config: &Config) -> Self {
        Recycler {
            lifetime: config.max_lifetime,
            jitter: config.max_lifetime_jitter,
            requests: config.max_requests,
            requests_jitter: config.max_requests_jitter,
            memory: config.max_memory,
            next_sample: (config.max_memory > 0)
                .then(|| Instant::now().checked_add(MEMORY_SAMPLING))
                .flatten(),
            sweep: None,
            due: BinaryHeap::new(),
            seed: crate::worker::shared::now_nanos() ^ u64::from(std::process::id()),
            samples: Vec::new(),
        }
    }

    /// Before a fork for `index`, with the shared words `half`: sets the worker's counts of
    /// work and of threads at work to zero, and its limit.
    pub(super) fn forking(&mut self, shared: Option<&SharedSlots>, index: usize, half: Half) {
        let Some(words) = shared.map(|shared| shared.words(index, half)) else {
            return;
        };
        let limit = match self.requests {
            0 => 0,
            requests => requests.saturating_add(self.draw(self.requests_jitter)),
        };
        words.done.store(0, Ordering::Relaxed);
        words.limit.store(limit, Ordering::Relaxed);
        words.at_work.store(0, Ordering::Relaxed);
        words.connections.store(0, Ordering::Relaxed);
    }

    /// A worker was forked for `index` at `started`: it is due at the end of its lifetime.
    pub(super) fn forked(&mut self, index: usize, pid: Pid, started: Instant) {
        if self.lifetime.is_zero() {
            return;
        }
        let jitter = Duration::from_millis(self.draw(self.jitter.as_millis() as u64));
        if let Some(due) = started.checked_add(self.lifetime + jitter) {
            self.due.push(Reverse((due, index, pid, Why::Lifetime)));
        }
    }

    /// The worker `pid` of `index` said it did its `max_requests`: it is due `now`.
    pub(super) fn requested(&mut self, index: usize, pid: Pid, now: Instant) {
        if self.requests > 0 {
            self.due.push(Reverse((now, index, pid, Why::Requests)));
        }
    }

    /// The index from which the fleet's memory is to be sampled `now`, if a sample is under
    /// way or due; a sample begins one interval after the last one began.
    pub(super) fn sampling(&mut self, now: Instant) -> Option<usize> {
        if self.sweep.is_none() && self.next_sample.is_some_and(|at| at <= now) {
            self.sweep = Some((0, now));
            self.next_sample = now.checked_add(MEMORY_SAMPLING);
        }
        self.sweep.map(|(from, _)| from)
    }

    /// The sample under way stopped before `next`, to go on from there on the next turn of
    /// the loop; `None` once it went through the fleet.
    pub(super) fn sampled_until(&mut self, next: Option<usize>) {
        self.sweep = next.zip(self.sweep.map(|(_, began)| began));
    }

    /// The worker `pid` of `index` was found using `bytes`: due `now` if past `max_memory`.
    pub(super) fn sampled(&mut self, index: usize, pid: Pid, bytes: u64, now: Instant) {
        if self.samples.len() <= index {
            self.samples.resize(index + 1, None);
        }
        self.samples[index] = Some((pid, bytes));
        if self.memory > 0 && bytes > self.memory {
            self.due.push(Reverse((now, index, pid, Why::Memory)));
        }
    }

    /// The next worker due by `now` that is still its index's (`current` says), and why;
    /// entries for workers no longer current are dropped on the way.
    pub(super) fn due(
        &mut self,
        now: Instant,
        current: impl Fn(usize, Pid) -> bool,
    ) -> Option<(usize, Pid, Why)> {
        while let Some(Reverse((due, index, pid, why))) = self.due.peek().copied() {
            let still = current(index, pid);
            if still && due > now {
                return None;
            }
            self.due.pop();
            if still {
                return Some((index, pid, why));
            }
        }
        None
    }

    /// The last sample of the memory of `pid`, the worker of `index`, if it was sampled.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(super) fn last_sample(&self, index: usize, pid: Pid) -> Option<u64> {
        match self.samples.get(index) {
            Some(Some((sampled, bytes))) if *sampled == pid => Some(*bytes),
            _ => None,
        }
    }

    /// When the next worker is due, or the fleet's memory is next sampled: at once while a
    /// sample is under way.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let due = self.due.peek().map(|Reverse((due, _, _, _))| *due);
        let sweep = self.sweep.map(|(_, began)| began);
        due.into_iter().chain(self.next_sample).chain(sweep).min()
    }

    /// A number from 0 to `most`, at random.
    fn draw(&mut self, most: u64) -> u64 {
        match most {
            0 => 0,
            most => splitmix(&mut self.seed) % most.saturating_add(1),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_lifetime_is_drawn_within_the_jitter_and_they_differ() {
        let (lifetime, jitter) = (Duration::from_secs(60), Duration::from_secs(10));
        let config = Config {
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
    fn a_worker_is_due_at_its_time_or_when_it_asks_and_only_while_it_is_current() {
        let config = Config {
            max_lifetime: Duration::from_secs(60),
            max_requests: 100,
            ..Default::default()
        };
        let mut recycler = Recycler::new(&config);
        let start = Instant::now();
        let (one, two) = (Pid::from_raw(10), Pid::from_raw(20));
        recycler.forked(0, one, start);
        recycler.forked(1, two, start);
        let all = |_: usize, _: Pid| true;
        assert_eq!(recycler.due(start + Duration::from_secs(59), all), None);
        assert_eq!(
            recycler.next_deadline(),
            Some(start + Duration::from_secs(60))
        );
        // Asked for by its requests: due at once.
        let asked = start + Duration::from_secs(1);
        recycler.requested(1, two, asked);
        assert_eq!(recycler.due(asked, all), Some((1, two, Why::Requests)));
        // At its lifetime, unless it is no longer its index's.
        let later = start + Duration::from_secs(61);
        assert_eq!(
            recycler.due(later, |_, pid| pid != one),
            Some((1, two, Why::Lifetime))
        );
        assert_eq!(recycler.due(later, all), None);
    }

    #[test]
    fn memory_is_sampled_once_an_interval_and_only_with_a_limit() {
        let config = Config {
            max_memory: 100 << 20,
            ..Default::default()
        };
        let mut recycler = Recycler::new(&config);
        let first = recycler.next_deadline().unwrap();
        assert_eq!(recycler.sampling(first - Duration::from_millis(1)), None);
        assert_eq!(recycler.sampling(first), Some(0));
        // Stopped short: it goes on at once, from there.
        recycler.sampled_until(Some(7));
        assert_eq!(recycler.next_deadline(), Some(first));
        assert_eq!(recycler.sampling(first + Duration::from_millis(3)), Some(7));
        recycler.sampled_until(None);
        assert_eq!(recycler.sampling(first + Duration::from_millis(3)), None);
        assert_eq!(recycler.next_deadline(), Some(first + MEMORY_SAMPLING));
        recycler.sampled(0, Pid::from_raw(10), 100 << 20, first);
        recycler.sampled(1, Pid::from_raw(20), (100 << 20) + 1, first);
        let all = |_: usize, _: Pid| true;
        assert_eq!(
            recycler.due(first, all),
            Some((1, Pid::from_raw(20), Why::Memory))
        );
        assert_eq!(recycler.due(first, all), None);
        let mut unlimited = Recycler::new(&Config::default());
        assert_eq!(unlimited.next_deadline(), None);
        assert_eq!(unlimited.sampling(first + Duration::from_secs(3600)), None);
    }

    #[test]
    fn without_a_lifetime_no_worker_is_ever_due() {
        let config = Config {
            max_lifetime_jitter: Duration::from_secs(10),
            ..Default::default()
        };
        let mut recycler = Recycler::new(&config);
        recycler.forked(0, Pid::from_raw(1), Instant::now());
        assert_eq!(recycler.next_deadline(), None);
    }
}
