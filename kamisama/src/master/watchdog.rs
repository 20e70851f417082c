//! Hang detection: reading the workers' signs of life (see `worker::heartbeat`) and saying
//! when each one is hung; and, with declared readiness, when one has taken longer than its
//! boot allowance to say it is ready, which is a hang of its start-up.
//!
//! A beat is a store to shared memory, which wakes nobody: the master learns of it only by
//! looking. It looks at the whole fleet in one pass, when the first worker's deadline may
//! have passed: the moment its silence would make it hung, or, for a worker that cannot be
//! judged yet (it has not beaten since its fork, or it waits through its handle), a timeout
//! after the last pass, so that a beat that comes meanwhile, and then a silence, is judged a
//! timeout after that beat. Passes are at least a sixteenth of a timeout apart, so that a
//! fleet whose deadlines are spread out costs a few passes per timeout, not one per worker:
//! a hang is found at most that much late.
use super::fleet;
use crate::config::{Config, Readiness};
use crate::worker::shared::{now_nanos, Half, SharedSlots, NOT_YET, WAITING};
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
    /// When the next pass over the fleet is due; `None` while no worker is to be looked at.
    next_pass: Option<Instant>,
    /// The shortest time between two passes.
    gap: Duration,
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

/// What the watchdog keeps of one worker between two passes.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Watch {
    /// Since when it has been seen stopped (SIGSTOP) while it waits through its handle,
    /// where it shows no silence, as a wait counts as alive.
    stopped_since: Option<Instant>,
}

/// One pass over the fleet, at one moment.
pub(super) struct Pass<'w, 'a> {
    watchdog: &'w Watchdog<'a>,
    now: Now,
    /// The earliest moment a worker looked at must be looked at again.
    next: Option<Instant>,
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
        let period = if config.timeout.is_zero() {
            config.boot_timeout
        } else {
            config.timeout
        };
        Watchdog {
            shared: shared.filter(|_| !config.timeout.is_zero() || readiness),
            timeout: config.timeout,
            boot_timeout: config.boot_timeout,
            readiness,
            grace: config.hang_grace,
            next_pass: None,
            gap: period / 16,
        }
    }

    /// Before `index` is forked, with the shared words `half`: its new worker has shown no
    /// sign of life yet.
    pub(super) fn forking(&self, index: usize, half: Half) {
        if let Some(shared) = self.shared.filter(|_| !self.timeout.is_zero()) {
            shared
                .words(index, half)
                .beat
                .store(NOT_YET, Ordering::Relaxed);
        }
    }

    /// After a fork at `started`: the next pass comes in time for the new worker, whose first
    /// sign of life may come at once, followed by a silence.
    pub(super) fn forked(&mut self, started: Instant) {
        if self.shared.is_none() {
            return;
        }
        let first = if self.timeout.is_zero() {
            self.boot_timeout
        } else {
            self.timeout.min(self.boot_timeout)
        };
        if let Some(first) = started.checked_add(first) {
            self.next_pass = Some(self.next_pass.map_or(first, |at| at.min(first)));
        }
    }

    /// When the next pass is due, if one is.
    pub(super) fn next_pass(&self) -> Option<Instant> {
        self.next_pass
    }

    /// A pass over the fleet, if one is due at `now`.
    pub(super) fn pass(&self, now: Now) -> Option<Pass<'_, 'a>> {
        self.next_pass
            .filter(|at| *at <= now.instant)
            .map(|_| Pass {
                watchdog: self,
                now,
                next: None,
            })
    }

    /// After a pass: the next one when its first worker needs it, a gap after this one at
    /// the soonest.
    pub(super) fn passed(&mut self, now: Instant, next: Option<Instant>) {
        let soonest = now.checked_add(self.gap);
        self.next_pass = next.map(|next| soonest.map_or(next, |soonest| next.max(soonest)));
    }
}

impl Pass<'_, '_> {
    /// When the pass wants the next one.
    pub(super) fn next(&self) -> Option<Instant> {
        self.next
    }

    /// Looks at the worker `pid` of `index`, with the shared words `half`, forked at
    /// `started`: whether it is hung.
    pub(super) fn look(
        &mut self,
        index: usize,
        half: Half,
        pid: Pid,
        started: Instant,
        watch: &mut Watch,
    ) -> Verdict {
        let (verdict, again) = self
            .watchdog
            .look(index, half, pid, started, watch, self.now);
        if let Some(again) = again {
            self.next = Some(self.next.map_or(again, |at| at.min(again)));
        }
        verdict
    }
}

impl Watchdog<'_> {
    /// Looks at the worker `pid` of `index`, with the shared words `half`, forked at
    /// `started`: whether it is hung, and when to look at it again (`None`: never, or hang
    /// detection is off).
    fn look(
        &self,
        index: usize,
        half: Half,
        pid: Pid,
        started: Instant,
        watch: &mut Watch,
        now: Now,
    ) -> (Verdict, Option<Instant>) {
        let Some(shared) = self.shared else {
            return (Verdict::Alive, None);
        };
        let words = shared.words(index, half);
        let ready = crate::worker::shared::holder_ready(words, pid.as_raw() as u32);
        let boot_ends = started.checked_add(self.boot_timeout);
        let not_ready_by = boot_ends.filter(|_| self.readiness && !ready);
        if not_ready_by.is_some_and(|by| by <= now.instant) {
            let after = now.instant - started;
            return (Verdict::NotReady { after }, None);
        }
        let beat = words.beat.load(Ordering::Relaxed);
        let (verdict, again) = self.look_for_a_hang(beat, pid, started, watch, now);
        let again = match (again, not_ready_by) {
            (Some(again), Some(by)) => Some(again.min(by)),
            (again, by) => again.or(by),
        };
        (verdict, again)
    }

    /// The part of [`look`](Watchdog::look) that judges the worker's signs of life, `beat`.
    fn look_for_a_hang(
        &self,
        beat: u64,
        pid: Pid,
        started: Instant,
        watch: &mut Watch,
        now: Now,
    ) -> (Verdict, Option<Instant>) {
        if self.timeout.is_zero() {
            return (Verdict::Alive, None);
        }
        let look_again = now.instant.checked_add(self.timeout);
        let (since, allowed) = match beat {
            // A wait through the handle counts as alive, but for a worker stopped in it: a
            // stopped process is silent from the first look that saw it stopped.
            WAITING => {
                if !fleet::is_stopped(pid) {
                    watch.stopped_since = None;
                    return (Verdict::Alive, look_again);
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
            let silent_for = now.instant - since;
            return (Verdict::Hung { silent_for }, None);
        }
        let again = match (ends, beat) {
            (Some(ends), NOT_YET) => look_again.map(|again| again.min(ends)).or(Some(ends)),
            (ends, NOT_YET) => look_again.or(ends),
            (ends, _) => ends,
        };
        (Verdict::Alive, again)
    }
}
