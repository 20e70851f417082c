//! What the fleet looks like, as text a Prometheus server (or any OpenMetrics scraper) reads:
//! a policy with one question, answered from the slots, the shared words and the counts of
//! past events, at the moment of the scrape. Nothing here blocks, forks or signals.

use super::http::Format;
use crate::event::Event;
use crate::listen::Listener;
use crate::master::slots::{Ending, Slot, Slots, State};
use crate::worker::shared::SharedSlots;
use std::fmt::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

/// Counts of what happened to the fleet, kept from the events the master emits.
#[derive(Default)]
pub(crate) struct Counters {
    respawns: u64,
    hangs: u64,
    /// By reason: lifetime, requests, memory.
    recycles: [u64; RECYCLE_REASONS.len()],
    /// By how far they got: started, on trial, handed over, failed.
    upgrades: [u64; UPGRADE_STAGES.len()],
}

const RECYCLE_REASONS: [&str; 3] = ["lifetime", "requests", "memory"];
const UPGRADE_STAGES: [&str; 4] = ["started", "on-trial", "handed-over", "failed"];

impl Counters {
    /// Counts `event`, if it is one that is counted.
    pub(crate) fn observe(&mut self, event: &Event) {
        let count = match event {
            Event::Respawning { .. } => &mut self.respawns,
            Event::Hung { .. } | Event::NotReady { .. } => &mut self.hangs,
            Event::Recycling { reason, .. } => {
                match RECYCLE_REASONS.iter().position(|name| name == reason) {
                    Some(at) => &mut self.recycles[at],
                    None => return,
                }
            }
            Event::UpgradeStarted { .. } => &mut self.upgrades[0],
            Event::UpgradeTrial { .. } => &mut self.upgrades[1],
            Event::UpgradeHandingOver { .. } => &mut self.upgrades[2],
            Event::UpgradeFailed { .. } => &mut self.upgrades[3],
            _ => return,
        };
        *count = count.saturating_add(1);
    }
}

/// Everything a scrape shows, borrowed from the master for the moment of the scrape.
pub(in crate::master) struct View<'a> {
    pub(in crate::master) master: u32,
    /// When the master started, by the wall clock.
    pub(in crate::master) started: SystemTime,
    /// How many masters came before this one in a chain of upgrades.
    pub(in crate::master) generation: u64,
    /// `starting`, `ready`, `reloading` or `stopping`.
    pub(in crate::master) phase: &'static str,
    pub(in crate::master) instances: usize,
    pub(in crate::master) slots: &'a Slots,
    /// Workers replaced by recycling and still alive beside their successors, by index.
    pub(in crate::master) replaced: &'a [(usize, nix::unistd::Pid)],
    /// The words the workers write, if they are mapped.
    pub(in crate::master) shared: Option<&'a SharedSlots>,
    /// Whether the workers are async, whose waits kamisama does not see.
    pub(in crate::master) is_async: bool,
    pub(in crate::master) respawns_in_window: usize,
    pub(in crate::master) respawn_limit: u32,
    pub(in crate::master) respawn_interval: Duration,
    pub(in crate::master) counters: &'a Counters,
    pub(in crate::master) listeners: &'a [Listener],
    /// A worker's resident memory that is no file's, in bytes, as last read.
    pub(in crate::master) memory: &'a dyn Fn(usize, nix::unistd::Pid) -> Option<u64>,
    /// A worker's proportional set size, as recycling last sampled it (with `max_memory`).
    pub(in crate::master) sampled: &'a dyn Fn(usize, nix::unistd::Pid) -> Option<u64>,
}

/// The whole exposition of `view` in `format`, appended to `out`.
pub(in crate::master) fn render(out: &mut String, format: Format, view: &View<'_>) {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let mut text = Text {
        out,
        format,
        kind: Kind::Gauge,
    };
    let phases = ["starting", "ready", "reloading", "stopping"];
    text.family(
        "kamisama_phase",
        Kind::Gauge,
        "Where the fleet stands: 1 for its phase, 0 for the others.",
    );
    for phase in phases {
        let value = u64::from(phase == view.phase);
        text.sample("kamisama_phase", &[("phase", Label::Str(phase))], value);
    }
    text.gauge(
        "kamisama_master_pid",
        "The master's process id.",
        view.master,
    );
    text.gauge(
        "kamisama_master_start_time_seconds",
        "When the master started, in seconds since the Unix epoch.",
        Seconds(unix(view.started)),
    );
    text.gauge(
        "kamisama_generation",
        "Upgrades (USR2) that led to this master: 0 for the first one started.",
        view.generation,
    );
    text.gauge(
        "kamisama_instances",
        "How many workers the fleet is to run (TTIN and TTOU move it).",
        view.instances,
    );
    let mut states = [0_u64; STATES.len()];
    let mut busy = 0_u64;
    for (index, slot) in view.slots.iter().enumerate() {
        let state = slot.state_name(now);
        if let Some(at) = STATES.iter().position(|name| *name == state) {
            states[at] += 1;
        }
        busy += u64::from(matches!(is_busy(view, index, slot), Some(true)));
    }
    text.family(
        "kamisama_workers",
        Kind::Gauge,
        "Workers by state: running, hung, stopping, backing-off, pending, done, retired.",
    );
    for (state, count) in STATES.iter().zip(states) {
        text.sample("kamisama_workers", &[("state", Label::Str(state))], count);
    }
    text.gauge(
        "kamisama_workers_replaced",
        "Workers being recycled, alive beside their successors until these are ready and \
         they have stopped; not counted among the states above.",
        view.replaced.len(),
    );
    if view.shared.is_some() && !view.is_async {
        text.gauge(
            "kamisama_workers_busy",
            "Workers doing work now, not waiting in Worker::accept, sleep or wait_readable.",
            busy,
        );
    }
    text.gauge(
        "kamisama_respawns_in_window",
        "Respawns counted against the limit in the current window.",
        view.respawns_in_window,
    );
    text.gauge(
        "kamisama_respawn_limit",
        "Respawns allowed in a window before the master gives up.",
        view.respawn_limit,
    );
    text.gauge(
        "kamisama_respawn_interval_seconds",
        "The respawn limit's window.",
        view.respawn_interval.as_secs(),
    );
    let counters = view.counters;
    text.counter(
        "kamisama_respawns",
        "Workers forked again after they ended by themselves.",
        counters.respawns,
    );
    text.counter(
        "kamisama_hangs",
        "Workers found hung (no sign of life for timeout, or not ready within boot_timeout).",
        counters.hangs,
    );
    text.family(
        "kamisama_recycles",
        Kind::Counter,
        "Workers replaced for reaching a limit, by limit.",
    );
    for (reason, count) in RECYCLE_REASONS.iter().zip(counters.recycles) {
        text.sample(
            "kamisama_recycles",
            &[("reason", Label::Str(reason))],
            count,
        );
    }
    text.family(
        "kamisama_upgrades",
        Kind::Counter,
        "Upgrades this master started (USR2), by how far they got: started, on-trial (the new \
         fleet serves, this master stands by), handed-over, failed (rolled back).",
    );
    for (stage, count) in UPGRADE_STAGES.iter().zip(counters.upgrades) {
        text.sample("kamisama_upgrades", &[("stage", Label::Str(stage))], count);
    }
    listeners(&mut text, view.listeners);
    workers(&mut text, view, now, wall);
    if format == Format::OpenMetrics {
        text.out.push_str("# EOF\n");
    }
}

/// The slots' states, in the order the metrics list them.
const STATES: [&str; 7] = [
    "running",
    "hung",
    "stopping",
    "backing-off",
    "pending",
    "done",
    "retired",
];

/// Each TCP listener's accept queue, as the kernel counts it.
fn listeners(text: &mut Text<'_>, listeners: &[Listener]) {
    let queues: Vec<(String, libc::tcp_info)> = listeners
        .iter()
        .filter_map(|listener| Some((listener.to_string(), tcp_info(listener)?)))
        .collect();
    if queues.is_empty() {
        return;
    }
    text.family(
        "kamisama_listen_queue",
        Kind::Gauge,
        "Connections waiting in a listener's accept queue, accepted by no worker yet.",
    );
    for (address, info) in &queues {
        let labels = [("listener", Label::Str(address))];
        text.sample("kamisama_listen_queue", &labels, info.tcpi_unacked);
    }
    text.family(
        "kamisama_listen_queue_limit",
        Kind::Gauge,
        "The length a listener's accept queue may reach (its backlog).",
    );
    for (address, info) in &queues {
        let labels = [("listener", Label::Str(address))];
        text.sample("kamisama_listen_queue_limit", &labels, info.tcpi_sacked);
    }
}

/// `TCP_INFO` of a TCP listener: for a listening socket, `tcpi_unacked` is the length of its
/// accept queue and `tcpi_sacked` its limit.
fn tcp_info(listener: &Listener) -> Option<libc::tcp_info> {
    let Listener::Tcp(tcp) = listener else {
        return None;
    };
    // SAFETY: a zeroed tcp_info is a valid out-parameter.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `length` are valid for the call, and `length` is `info`'s size.
    let result = unsafe {
        libc::getsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut length,
        )
    };
    (result == 0).then_some(info)
}

/// One sample per index for each per-worker family.
fn workers(text: &mut Text<'_>, view: &View<'_>, now: Instant, wall: SystemTime) {
    let slots = || view.slots.iter().enumerate();
    text.family(
        "kamisama_worker_state",
        Kind::Gauge,
        "1 for each index, labelled with its state.",
    );
    for (index, slot) in slots() {
        let state = slot.state_name(now);
        let labels = [("index", Label::Index(index)), ("state", Label::Str(state))];
        text.sample("kamisama_worker_state", &labels, 1_u64);
    }
    let running = || {
        slots().filter_map(|(index, slot)| match slot.state() {
            State::Running { pid, started, .. } => Some((index, *pid, *started)),
            _ => None,
        })
    };
    text.family(
        "kamisama_worker_pid",
        Kind::Gauge,
        "The process id of each index's worker.",
    );
    for (index, pid, _) in running() {
        let labels = [("index", Label::Index(index))];
        text.sample("kamisama_worker_pid", &labels, pid.as_raw());
    }
    text.family(
        "kamisama_worker_replaced",
        Kind::Gauge,
        "1 for each worker being recycled, by its index and pid, alive beside its successor \
         (an index may have several).",
    );
    for (index, pid) in view.replaced {
        let labels = [
            ("index", Label::Index(*index)),
            ("pid", Label::Index(pid.as_raw() as usize)),
        ];
        text.sample("kamisama_worker_replaced", &labels, 1_u64);
    }
    text.family(
        "kamisama_worker_start_time_seconds",
        Kind::Gauge,
        "When each index's worker was forked, in seconds since the Unix epoch.",
    );
    for (index, _, started) in running() {
        let labels = [("index", Label::Index(index))];
        let forked = Seconds(unix(wall) - (now - started).as_secs_f64());
        text.sample("kamisama_worker_start_time_seconds", &labels, forked);
    }
    text.family(
        "kamisama_worker_age_seconds",
        Kind::Gauge,
        "How long each index's worker has run.",
    );
    for (index, _, started) in running() {
        let labels = [("index", Label::Index(index))];
        let age = Seconds((now - started).as_secs_f64());
        text.sample("kamisama_worker_age_seconds", &labels, age);
    }
    if let Some(shared) = view.shared {
        if !view.is_async {
            text.family(
                "kamisama_worker_busy",
                Kind::Gauge,
                "1 while the worker does work, 0 while it waits in Worker::accept, sleep or \
                 wait_readable.",
            );
            for (index, slot) in slots() {
                if let Some(busy) = is_busy(view, index, slot) {
                    let labels = [("index", Label::Index(index))];
                    text.sample("kamisama_worker_busy", &labels, u64::from(busy));
                }
            }
        }
        text.family(
            "kamisama_worker_connections",
            Kind::Gauge,
            "Connections the worker holds open, accepted with Worker::accept on a fleet \
             listener (kamisama::Stream).",
        );
        for (index, _, _) in running() {
            let open = view.slots[index]
                .words(shared, index)
                .connections
                .load(Ordering::Relaxed);
            let labels = [("index", Label::Index(index))];
            text.sample("kamisama_worker_connections", &labels, open);
        }
        text.family(
            "kamisama_worker_completed",
            Kind::Counter,
            "Units of work the worker counted with Worker::completed (requests, for the \
             example servers); from zero for each new worker.",
        );
        for (index, _, _) in running() {
            let done = view.slots[index]
                .words(shared, index)
                .done
                .load(Ordering::Relaxed);
            let labels = [("index", Label::Index(index))];
            text.sample("kamisama_worker_completed", &labels, done);
        }
    }
    text.family(
        "kamisama_worker_memory_bytes",
        Kind::Gauge,
        "The worker's resident memory that is no file's: heap, stacks, and pages it still \
         shares with the master since its fork.",
    );
    for (index, pid, _) in running() {
        if let Some(bytes) = (view.memory)(index, pid) {
            let labels = [("index", Label::Index(index))];
            text.sample("kamisama_worker_memory_bytes", &labels, bytes);
        }
    }
    let sampled: Vec<_> = running()
        .filter_map(|(index, pid, _)| Some((index, (view.sampled)(index, pid)?)))
        .collect();
    if !sampled.is_empty() {
        text.family(
            "kamisama_worker_pss_bytes",
            Kind::Gauge,
            "The worker's proportional set size (its private memory and its share of what it \
             shares), as max_memory last sampled it.",
        );
        for (index, bytes) in sampled {
            let labels = [("index", Label::Index(index))];
            text.sample("kamisama_worker_pss_bytes", &labels, bytes);
        }
    }
    text.family(
        "kamisama_worker_recycles",
        Kind::Counter,
        "Workers of the index replaced for reaching a recycling limit.",
    );
    for (index, slot) in slots() {
        let labels = [("index", Label::Index(index))];
        text.sample("kamisama_worker_recycles", &labels, slot.recycles);
    }
    text.family(
        "kamisama_worker_exits",
        Kind::Counter,
        "Workers of the index that ended, by how: success, failure, signal, hung, stopped, \
         recycled. Only the ways that happened are listed.",
    );
    for (index, slot) in slots() {
        for ending in Ending::ALL {
            let count = slot.exits[ending as usize];
            if count > 0 {
                let labels = [
                    ("index", Label::Index(index)),
                    ("reason", Label::Str(ending.name())),
                ];
                text.sample("kamisama_worker_exits", &labels, count);
            }
        }
    }
}

fn is_busy(view: &View<'_>, index: usize, slot: &Slot) -> Option<bool> {
    slot.busy(index, view.shared?, view.is_async)
}

/// Seconds since the Unix epoch.
fn unix(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
}

/// A label's value.
enum Label<'a> {
    Str(&'a str),
    Index(usize),
}

/// Seconds, with milliseconds.
struct Seconds(f64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}", self.0)
    }
}

/// The exposition being written.
struct Text<'a> {
    out: &'a mut String,
    format: Format,
    /// The kind of the family named last.
    kind: Kind,
}

impl Text<'_> {
    /// The `HELP` and `TYPE` lines of a family. A counter's samples end in `_total`; in
    /// OpenMetrics its family is named without it, in the Prometheus format with it.
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        self.kind = kind;
        let (suffix, kind) = match (kind, self.format) {
            (Kind::Gauge, _) => ("", "gauge"),
            (Kind::Counter, Format::Prometheus) => ("_total", "counter"),
            (Kind::Counter, Format::OpenMetrics) => ("", "counter"),
        };
        let _ = writeln!(self.out, "# HELP {name}{suffix} {help}");
        let _ = writeln!(self.out, "# TYPE {name}{suffix} {kind}");
    }

    /// A family with one sample and no label.
    fn gauge(&mut self, name: &str, help: &str, value: impl fmt::Display) {
        self.family(name, Kind::Gauge, help);
        self.sample(name, &[], value);
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, Kind::Counter, help);
        self.sample(name, &[], value);
    }

    /// One sample of the family named last; a counter's ends in `_total`.
    fn sample(&mut self, name: &str, labels: &[(&str, Label<'_>)], value: impl fmt::Display) {
        self.out.push_str(name);
        if self.kind == Kind::Counter {
            self.out.push_str("_total");
        }
        if !labels.is_empty() {
            self.out.push('{');
            for (at, (label, value)) in labels.iter().enumerate() {
                if at > 0 {
                    self.out.push(',');
                }
                let _ = match value {
                    Label::Str(text) => write!(self.out, "{label}=\"{}\"", Escaped(text)),
                    Label::Index(index) => write!(self.out, "{label}=\"{index}\""),
                };
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// A label value with `\`, `"` and line feeds escaped, as both formats want.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_value_is_escaped_as_both_formats_want() {
        let written = Escaped("unix:/run/a \"b\"\\c\nd").to_string();
        assert_eq!(written, "unix:/run/a \\\"b\\\"\\\\c\\nd");
    }

    #[test]
    fn counters_count_the_events_that_tell_of_the_fleet() {
        let mut counters = Counters::default();
        counters.observe(&Event::Hung {
            index: 0,
            pid: 1,
            silent_for: Duration::from_secs(1),
        });
        counters.observe(&Event::NotReady {
            index: 0,
            pid: 1,
            after: Duration::from_secs(1),
        });
        counters.observe(&Event::UpgradeFailed {
            pid: 2,
            reason: "no".to_owned(),
        });
        counters.observe(&Event::RollingRestartFinished);
        assert_eq!(counters.hangs, 2);
        assert_eq!(counters.upgrades, [0, 0, 0, 1]);
        assert_eq!(counters.respawns, 0);
    }
}
