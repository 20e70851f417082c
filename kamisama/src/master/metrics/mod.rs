//! The metrics endpoint: `GET /metrics` answered by the master itself, from its own loop.
//!
//! The master is the one process that must never block, and the endpoint is open to any
//! client that can reach its address. So every socket is non-blocking, and everything is
//! bounded: a request is at most [`REQUEST_MAX`](http::REQUEST_MAX) bytes and one per
//! connection, at most [`CONNECTIONS`] are open at once (a new one pushes the oldest out),
//! and each has [`CONNECTION_TIME`] from its accept to its last byte sent. The master wakes
//! for the endpoint only when a client connects or sends, and for a connection's deadline
//! while one is open: with no scrape, it adds no wakeup.
//!
//! Its descriptors are the master's: each forked worker closes them first thing, so that a
//! worker never keeps the port bound nor a scraper's connection open.

mod endpoint;
pub(crate) mod exposition;
mod http;

pub(crate) use endpoint::{Endpoint, Fds};
use exposition::Counters;
use nix::poll::PollFd;
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// What the endpoint answers to the bytes of `request`, with a scrape's body one line.
pub(crate) fn answer_to(request: &[u8]) -> Option<Vec<u8>> {
    let answer = http::answer(request)?;
    let mut text = String::new();
    Some(endpoint::respond(answer, &mut text, &mut |out, _| {
        out.push_str("kamisama_instances 1\n");
    }))
}

/// What the master keeps for its metrics.
pub(crate) struct Metrics {
    endpoint: Endpoint,
    counters: Counters,
    memory: Readings,
}

impl Metrics {
    pub(crate) fn new(endpoint: Endpoint) -> Self {
        Metrics {
            endpoint,
            counters: Counters::default(),
            memory: Readings::default(),
        }
    }
}

/// The last reading of each index's memory, with the worker it is of.
#[derive(Default)]
struct Readings {
    last: Vec<Option<(Pid, u64)>>,
    /// Where the next scrape begins reading.
    next: usize,
}

impl Readings {
    /// Reads the memory of the `running` workers (index and pid, by index), from where the
    /// last scrape stopped, until all are read or `budget` is spent.
    fn refresh(
        &mut self,
        running: &[(usize, Pid)],
        budget: Duration,
        read: impl Fn(Pid) -> Option<u64>,
    ) {
        let Some(last) = running.last() else {
            return;
        };
        if self.last.len() <= last.0 {
            self.last.resize(last.0 + 1, None);
        }
        let began = Instant::now();
        let start = running.partition_point(|(index, _)| *index < self.next);
        for at in (start..running.len()).chain(0..start) {
            let (index, pid) = running[at];
            self.last[index] = read(pid).map(|bytes| (pid, bytes));
            self.next = index + 1;
            if began.elapsed() >= budget {
                return;
            }
        }
    }

    /// The last reading of `pid`, the worker of `index`.
    fn of(&self, index: usize, pid: Pid) -> Option<u64> {
        match self.last.get(index) {
            Some(Some((read, bytes))) if *read == pid => Some(*bytes),
            _ => None,
        }
    }
}

/// The loop's hooks for the endpoint.
impl<W: crate::worker::WorkerFn<S>, S> super::Master<'_, W, S> {
    /// What the loop waits on for scrapes, beside its signals.
    pub(super) fn metrics_fds(&self) -> impl Iterator<Item = PollFd<'_>> {
        self.metrics
            .iter()
            .flat_map(|metrics| metrics.endpoint.poll_fds())
    }

    /// When a scrape's connection runs out of time.
    pub(super) fn metrics_deadline(&self) -> Option<Instant> {
        self.metrics.as_ref()?.endpoint.next_deadline()
    }

    /// Counts what an event tells of the fleet.
    pub(super) fn count(&mut self, event: &crate::event::Event) {
        if let Some(metrics) = &mut self.metrics {
            metrics.counters.observe(event);
        }
    }

    /// Serves the scrapes that came, once a turn of the loop; in the new master of an
    /// upgrade, places its Unix socket at its path once the service is its own.
    pub(super) fn serve_metrics(&mut self) {
        if self.metrics.is_none() {
            return;
        }
        let own = self
            .takeover
            .as_ref()
            .map_or(true, super::Takeover::on_trial);
        if let Some(metrics) = self.metrics.as_mut().filter(|_| own) {
            if metrics.endpoint.claim().is_err() {
                // Its scrapes go on at the path it is bound at, beside it.
                let note = "metrics-path-not-taken-over";
                self.log.note(crate::event::Level::Warn, note);
            }
        }
        let now = Instant::now();
        let phase = self.summary(now).phase.name();
        let replaced: Vec<_> = self.replacements.alive().collect();
        let Some(metrics) = &mut self.metrics else {
            return;
        };
        let Metrics {
            endpoint,
            counters,
            memory,
        } = metrics;
        let (slots, recycler, limiter) = (&self.slots, &self.recycler, &self.limiter);
        let changed = endpoint.serve(now, |out, format| {
            let running: Vec<(usize, Pid)> = slots
                .iter()
                .enumerate()
                .filter_map(|(index, slot)| Some((index, slot.pid()?)))
                .collect();
            // A fleet larger than the budget reads (about 7 µs a worker here: an open, a read
            // and a close of `/proc/PID/statm`) is read in turns, each scrape taking up where
            // the last one stopped, and shows the last reading of the others.
            let budget = super::READING_BUDGET;
            memory.refresh(&running, budget, crate::procfs::resident_anonymous);
            let memory = &*memory;
            let view = exposition::View {
                master: self.setup.master.as_raw() as u32,
                started: self.started,
                generation: self.generation,
                phase,
                instances: self.instances,
                slots,
                replaced: &replaced,
                shared: self.setup.shared,
                is_async: W::IS_ASYNC,
                respawns_in_window: limiter.in_window(now),
                respawn_limit: limiter.limit(),
                respawn_interval: limiter.interval(),
                counters,
                listeners: crate::listen::listeners(),
                memory: &|index, pid| memory.of(index, pid),
                sampled: &|index, pid| recycler.last_sample(index, pid),
            };
            exposition::render(out, format, &view);
        });
        if changed {
            self.setup.metrics = Some(endpoint.fds());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn memory_past_the_budget_is_read_in_turns_where_the_last_scrape_stopped() {
        let running: Vec<(usize, Pid)> = [0, 1, 3, 4]
            .into_iter()
            .map(|index| (index, Pid::from_raw(100 + index as i32)))
            .collect();
        let reads = Cell::new(0);
        let read = |pid: Pid| {
            reads.set(reads.get() + 1);
            Some(pid.as_raw() as u64 * 10)
        };
        let mut readings = Readings::default();
        // No budget: one worker a scrape, in turn, and round again.
        for (scrape, index) in [0, 1, 3, 4, 0].into_iter().enumerate() {
            readings.refresh(&running, Duration::ZERO, read);
            assert_eq!(reads.get(), scrape + 1);
            let pid = Pid::from_raw(100 + index as i32);
            assert_eq!(readings.of(index, pid), Some(pid.as_raw() as u64 * 10));
        }
        assert_eq!(readings.of(1, Pid::from_raw(101)), Some(1010));
        // A reading is of its worker only: a successor at the index has none yet.
        assert_eq!(readings.of(1, Pid::from_raw(999)), None);
        assert_eq!(readings.of(2, Pid::from_raw(102)), None);
        // With room, all of them.
        readings.refresh(&running, Duration::from_secs(60), read);
        assert_eq!(reads.get(), 5 + 4);
    }
}
