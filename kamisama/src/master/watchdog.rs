//! Hang detection: reading the workers' signs of life (see `worker::heartbeat`) and saying
//! when each one is hung if it stays silent.

use crate::config::Config;
use crate::worker::shared::{now_nanos, SharedSlots, NOT_YET, WAITING};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a hung worker has, after the hang signal, to leave its trace before SIGKILL.
pub(super) const HANG_GRACE: Duration = Duration::from_secs(1);

pub(super) struct Watchdog<'a> {
    /// `None` when hang detection is off.
    shared: Option<&'a SharedSlots>,
    timeout: Duration,
    boot_timeout: Duration,
}

/// The time now on both clocks: the master's `Instant` and the workers' raw monotonic
/// nanoseconds, read once for a whole pass over the workers.
#[derive(Clone, Copy)]
pub(super) struct Now {
    pub(super) instant: Instant,
    nanos: u64,
}

impl Now {
    pub(super) fn read() -> Self {
        Now {
            instant: Instant::now(),
            nanos: now_nanos(),
        }
    }
}

/// A worker's silence: since when, and how long it may last.
pub(super) struct Silence {
    pub(super) since: Instant,
    allowed: Duration,
    /// When to read its slot again before the silence ends: a worker that has not shown its
    /// first sign of life may show it at any moment, then stop, and its deadline is then a
    /// timeout after that, not the end of its boot allowance.
    look_again: Option<Instant>,
}

impl Silence {
    /// When the silence makes the worker hung; `None` for a moment too far to count.
    pub(super) fn ends(&self) -> Option<Instant> {
        self.since.checked_add(self.allowed)
    }

    /// When the master must wake to judge this worker again.
    pub(super) fn wake_at(&self) -> Option<Instant> {
        match (self.ends(), self.look_again) {
            (Some(ends), Some(again)) => Some(ends.min(again)),
            (ends, again) => ends.or(again),
        }
    }
}

impl<'a> Watchdog<'a> {
    pub(super) fn new(config: &Config, shared: Option<&'a SharedSlots>) -> Self {
        Watchdog {
            shared: shared.filter(|_| !config.timeout.is_zero()),
            timeout: config.timeout,
            boot_timeout: config.boot_timeout,
        }
    }

    /// Before `index` is forked: its new worker has shown no sign of life yet.
    pub(super) fn forking(&self, index: usize) {
        if let Some(shared) = self.shared {
            shared.slot(index).beat.store(NOT_YET, Ordering::Relaxed);
        }
    }

    /// The silence of the worker of `index`, forked at `started`; `None` when hang
    /// detection is off, or while the worker waits through its handle.
    pub(super) fn silence(&self, index: usize, started: Instant, now: Now) -> Option<Silence> {
        let beat = self.shared?.slot(index).beat.load(Ordering::Relaxed);
        let silence = match beat {
            WAITING => return None,
            NOT_YET => Silence {
                since: started,
                allowed: self.boot_timeout,
                look_again: now.instant.checked_add(self.timeout),
            },
            beat => {
                let ago = Duration::from_nanos(now.nanos.saturating_sub(beat));
                Silence {
                    since: now.instant.checked_sub(ago)?,
                    allowed: self.timeout,
                    look_again: None,
                }
            }
        };
        Some(silence)
    }
}
