//! The respawn limiter: at most `limit` respawns within any sliding window of `interval`.

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

    pub(crate) fn limit(&self) -> u32 {
        self.limit
    }

    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn deaths_spaced_wider_than_the_interval_never_trip_it() {
        let start = Instant::now();
        let mut limiter = RespawnLimiter::new(1, 10 * SECOND);
        for n in 0..100 {
            assert_eq!(limiter.try_respawn(start + n * 11 * SECOND), Some(1));
        }
    }
}
