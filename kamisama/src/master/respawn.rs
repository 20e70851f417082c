//! When a dead worker is forked again: the respawn limiter (at most `limit` respawns within
//! any sliding window of `interval`) and the backoff for indices that keep dying early.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Counts recent respawns on the monotonic clock.
#[derive(Debug)]
pub(crate) struct RespawnLimiter {
    limit: u32,
    interval: Duration,
    /// When each respawn within the current window happened, oldest first.
    recent: VecDeque<Instant>,
}

impl RespawnLimiter {
    pub(crate) fn new(limit: u32, interval: Duration) -> Self {
        RespawnLimiter {
            limit,
            interval,
            recent: VecDeque::new(),
        }
    }

    /// Records a respawn at `now` and returns how many respawns the window now holds, or
    /// `None` when one more would make more than `limit`; a refused respawn is not recorded.
    pub(crate) fn try_respawn(&mut self, now: Instant) -> Option<u32> {
        if let Some(window_start) = now.checked_sub(self.interval) {
            while self.recent.front().is_some_and(|at| *at <= window_start) {
                self.recent.pop_front();
            }
        }
        let respawns = u32::try_from(self.recent.len() + 1).ok()?;
        if respawns > self.limit {
            return None;
        }
        self.recent.push_back(now);
        Some(respawns)
    }

    /// How many respawns the window ending at `now` holds.
    pub(crate) fn in_window(&self, now: Instant) -> usize {
        let window_start = now.checked_sub(self.interval);
        self.recent
            .iter()
            .filter(|at| window_start.map_or(true, |start| **at > start))
            .count()
    }

    /// When the oldest respawn in the window ending at `now` leaves it, if there is one: the
    /// count of recent respawns changes then, with nothing happening.
    pub(crate) fn next_expiry(&self, now: Instant) -> Option<Instant> {
        let window_start = now.checked_sub(self.interval);
        self.recent
            .iter()
            .find(|at| window_start.map_or(true, |start| **at > start))
            .and_then(|at| at.checked_add(self.interval))
    }

    pub(crate) fn limit(&self) -> u32 {
        self.limit
    }

    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }
}

/// Exponential backoff: an index whose worker dies before it has run for `max` waits before
/// its respawn, 100 ms the first time, doubling with each early death in a row up to `max`.
/// An index whose worker ran at least `max` is forked again at once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    /// Zero turns backoff off.
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);

    pub(crate) fn new(max: Duration) -> Self {
        Backoff { max }
    }

    /// The wait before forking again an index whose worker ran for `lived`, given the early
    /// deaths in a row it had before, which this updates.
    pub(crate) fn delay(self, lived: Duration, early_deaths: &mut u32) -> Duration {
        if self.max.is_zero() || lived >= self.max {
            *early_deaths = 0;
            return Duration::ZERO;
        }
        *early_deaths = early_deaths.saturating_add(1);
        let doublings = (*early_deaths - 1).min(31);
        Backoff::FIRST.saturating_mul(1 << doublings).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_for_early_deaths_up_to_its_maximum() {
        let backoff = Backoff::new(Duration::from_secs(1));
        let mut early_deaths = 0;
        let delays: Vec<u128> = (0..6)
            .map(|_| {
                backoff
                    .delay(Duration::from_millis(10), &mut early_deaths)
                    .as_millis()
            })
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        // A worker that ran as long as the longest wait starts over.
        assert_eq!(backoff.delay(SECOND, &mut early_deaths), Duration::ZERO);
        assert_eq!(
            backoff.delay(Duration::ZERO, &mut early_deaths).as_millis(),
            100
        );
    }

    #[test]
    fn zero_maximum_turns_backoff_off() {
        let mut early_deaths = 0;
        for _ in 0..5 {
            let delay = Backoff::new(Duration::ZERO).delay(Duration::ZERO, &mut early_deaths);
            assert_eq!(delay, Duration::ZERO);
        }
    }

    #[test]
    fn backoff_survives_a_long_run_of_deaths() {
        let backoff = Backoff::new(Duration::from_secs(u64::MAX));
        let mut early_deaths = u32::MAX - 1;
        for _ in 0..3 {
            assert!(backoff.delay(Duration::ZERO, &mut early_deaths) > Duration::ZERO);
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn exactly_limit_respawns_fit_in_one_window() {
        let start = Instant::now();
        let mut limiter = RespawnLimiter::new(3, 60 * SECOND);
        assert_eq!(limiter.try_respawn(start), Some(1));
        assert_eq!(limiter.try_respawn(start + SECOND), Some(2));
        assert_eq!(limiter.try_respawn(start + 2 * SECOND), Some(3));
        assert_eq!(limiter.try_respawn(start + 3 * SECOND), None);
        assert_eq!(limiter.try_respawn(start + 4 * SECOND), None);
    }

    #[test]
    fn zero_limit_refuses_the_first_respawn() {
        let mut limiter = RespawnLimiter::new(0, 60 * SECOND);
        assert_eq!(limiter.try_respawn(Instant::now()), None);
    }

    #[test]
    fn respawns_older_than_the_interval_leave_the_window() {
        let start = Instant::now();
        let mut limiter = RespawnLimiter::new(2, 10 * SECOND);
        assert_eq!(limiter.try_respawn(start), Some(1));
        assert_eq!(limiter.try_respawn(start + 5 * SECOND), Some(2));
        // The first respawn is exactly one interval old: it has left the window.
        assert_eq!(limiter.try_respawn(start + 10 * SECOND), Some(2));
        assert_eq!(limiter.try_respawn(start + 11 * SECOND), None);
        assert_eq!(limiter.try_respawn(start + 20 * SECOND), Some(1));
    }

    #[test]
    fn the_next_expiry_is_when_the_oldest_respawn_in_the_window_leaves_it() {
        let start = Instant::now();
        let mut limiter = RespawnLimiter::new(5, 10 * SECOND);
        assert_eq!(limiter.next_expiry(start), None);
        limiter.try_respawn(start);
        limiter.try_respawn(start + 4 * SECOND);
        assert_eq!(
            limiter.next_expiry(start + SECOND),
            Some(start + 10 * SECOND)
        );
        assert_eq!(limiter.in_window(start + 10 * SECOND), 1);
        assert_eq!(
            limiter.next_expiry(start + 10 * SECOND),
            Some(start + 14 * SECOND)
        );
        assert_eq!(limiter.next_expiry(start + 14 * SECOND), None);
        assert_eq!(limiter.in_window(start + 14 * SECOND), 0);
    }

    #[test]
    fn deaths_spaced_wider_than_the_interval_never_trip_it() {
        let start = Instant::now();
        let mut limiter = RespawnLimiter::new(1, 10 * SECOND);
        for n in 0..100 {
            assert_eq!(limiter.try_respawn(start + n * 11 * SECOND), Some(1));
        }
    }
}
