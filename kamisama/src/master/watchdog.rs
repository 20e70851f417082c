//! Hang detection: reading the workers' signs of life (see `worker::heartbeat`) and saying
//! when each one is hung; and, with declared readiness, when one has taken longer than its
//! boot allowance to say it is ready, which is a hang of its start-up.
//!
//! A beat is a store to shared memory, which wakes nobody: the master learns of it only by
//! looking. So each worker has a moment when the master must look at it again, kept between
//! looks ([`Watch`]): when its silence would make it hung, or, while it cannot be judged yet (it
//! has not beaten since its fork, or it waits through its handle), a timeout from now, so
//! that a beat that comes meanwhile, and then a silence, is judged a timeout after that beat.

use super::fleet;
use crate::config::{Config, Readiness};
use crate::worker::shared::{now_nanos, SharedSlots, NOT_YET, WAITING};
use nix::unistd::Pid;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub(super) struct Watchdog<'a> {
    /// `None` when nothing is watched.
    shared: Option<&'a SharedSlots>,
    /// Zero when hang detection is off.
    timeout: Duration,
    boot_timeout: Duration,
    /// Whether a worker must declare itself ready within `boot_timeout`.
    readiness: bool,
    /// How long a hung worker has, after the hang signal, to leave its trace before SIGKILL.
    pub(super) grace: Duration,
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

/// What the watchdog keeps of one worker between two looks; a new worker starts with the
/// default, to be looked at on the master's next turn.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Watch {
    /// When to look at the worker again; `None` for at once, or for never (hang detection
    /// is off).
    pub(super) next_look: Option<Instant>,
    /// Since when it has been seen stopped (SIGSTOP) while it waits through its handle,
    /// where it shows no silence, as a wait counts as alive.
    stopped_since: Option<Instant>,
}

impl Watch {
    /// Whether the worker is due for a look at `now`.
    pub(super) fn due(&self, now: Instant) -> bool {
        self.next_look.map_or(true, |at| at <= now)
    }
}

/// What a look at a worker found.
pub(super) enum Verdict {
    /// Alive, or not to be judged yet.
    Alive,
    /// Silent for this long, longer than it may be.
    Hung { silent_for: Duration },
    /// Not ready this long after its fork, longer than its boot allowance.
    NotReady { after: Duration },
}

impl<'a> Watchdog<'a> {
    pub(super) fn new(config: &Config, shared: Option<&'a SharedSlots>) -> Self {
        let readiness = config.readiness == Readiness::Declared;
        Watchdog {
            shared: shared.filter(|_| !config.timeout.is_zero() || readiness),
            timeout: config.timeout,
            boot_timeout: config.boot_timeout,
            readiness,
            grace: config.hang_grace,
        }
    }

    /// Before `index` is forked: its new worker has shown no sign of life yet.
    pub(super) fn forking(&self, index: usize) {
        if let Some(shared) = self.shared.filter(|_| !self.timeout.is_zero()) {
            shared.slot(index).beat.store(NOT_YET, Ordering::Relaxed);
        }
    }

    /// Looks at the worker `pid` of `index`, forked at `started`: whether it is hung, and when
    /// to look again (in `watch`). Nothing when hang detection is off.
    pub(super) fn look(
        &self,
        index: usize,
        pid: Pid,
        started: Instant,
        watch: &mut Watch,
        now: Now,
    ) -> Verdict {
        let Some(shared) = self.shared else {
            watch.next_look = None;
            return Verdict::Alive;
        };
        let words = shared.slot(index);
        let ready = words.ready.load(Ordering::Relaxed) == pid.as_raw() as u64;
        let boot_ends = started.checked_add(self.boot_timeout);
        let not_ready_by = boot_ends.filter(|_| self.readiness && !ready);
        if not_ready_by.is_some_and(|by| by <= now.instant) {
            watch.next_look = None;
            return Verdict::NotReady {
                after: now.instant - started,
            };
        }
        let verdict =
            self.look_for_a_hang(words.beat.load(Ordering::Relaxed), pid, started, watch, now);
        if let Some(by) = not_ready_by {
            watch.next_look = Some(watch.next_look.map_or(by, |at| at.min(by)));
        }
        verdict
    }

    /// The part of [`look`](Watchdog::look) that judges the worker's signs of life, `beat`.
    fn look_for_a_hang(
        &self,
        beat: u64,
        pid: Pid,
        started: Instant,
        watch: &mut Watch,
        now: Now,
    ) -> Verdict {
        if self.timeout.is_zero() {
            watch.next_look = None;
            return Verdict::Alive;
        }
        let look_again = now.instant.checked_add(self.timeout);
        let (since, allowed) = match beat {
            // A wait through the handle counts as alive, but for a worker stopped in it: a
            // stopped process is silent from the first look that saw it stopped.
            WAITING => {
                if !fleet::is_stopped(pid) {
                    *watch = Watch {
                        next_look: look_again,
                        stopped_since: None,
                    };
                    return Verdict::Alive;
                }
                let since = *watch.stopped_since.get_or_insert(now.instant);
                (since, self.timeout)
            }
            // Its first sign of life may come at any moment, then a silence, judged a timeout
            // after that sign: look again a timeout from now, if that comes first.
            NOT_YET => (started, self.boot_timeout),
            beat => {
                let ago = Duration::from_nanos(now.nanos.saturating_sub(beat));
                (
                    now.instant.checked_sub(ago).unwrap_or(started),
                    self.timeout,
                )
            }
        };
        let ends = since.checked_add(allowed);
        if ends.is_some_and(|ends| ends <= now.instant) {
            watch.next_look = None;
            return Verdict::Hung {
                silent_for: now.instant - since,
            };
        }
        watch.next_look = match (ends, beat) {
            (Some(ends), NOT_YET) => look_again.map(|again| again.min(ends)).or(Some(ends)),
            (ends, NOT_YET) => look_again.or(ends),
            (ends, _) => ends,
        };
        Verdict::Alive
    }
}
