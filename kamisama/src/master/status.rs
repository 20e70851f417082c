//! The live status: a JSON file that says, at any moment, what each index runs and how it has
//! gone, for an operator who does not want to read a log.
//!
//! Rewritten whenever something happened, once per turn of the master's loop: written beside
//! its final name, then renamed over it, so that a reader always sees a whole file. Reading it
//! needs no client and no socket (`cat`, `jq`), and keeping it costs nothing while nothing
//! happens: the master does not wake for it.

use super::slots::{Slot, Slots, State};
use crate::config::Config;
use crate::event::Value;
use crate::log::{Json, JsonString, Timestamp};
use std::fmt::Write;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

pub(crate) struct StatusFile {
    path: PathBuf,
    /// Beside `path`, on the same file system, so that the rename is atomic.
    temporary: PathBuf,
    changed: bool,
    /// Kept between writes, so that the text is allocated once.
    text: String,
}

/// What the status says of the fleet as a whole.
pub(super) struct Fleet<'a> {
    pub(super) master: u32,
    /// `starting`, `ready`, `reloading`, `stopping` or `stopped`.
    pub(super) phase: &'static str,
    pub(super) config: &'a Config,
    pub(super) instances: usize,
    pub(super) respawns: usize,
    pub(super) slots: &'a Slots,
}

impl StatusFile {
    pub(super) fn new(path: &Path) -> Self {
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        StatusFile {
            path: path.to_owned(),
            temporary: temporary.into(),
            changed: true,
            text: String::new(),
        }
    }

    /// Something happened: the file is rewritten at the end of this turn.
    pub(super) fn changed(&mut self) {
        self.changed = true;
    }

    /// Writes a first status, before anything is forked, which tells whether the file can be
    /// written at all.
    pub(crate) fn check(path: &Path) -> io::Result<()> {
        let status = StatusFile::new(path);
        std::fs::write(
            &status.temporary,
            "{\"phase\":\"starting\",\"workers\":[]}\n",
        )?;
        std::fs::rename(&status.temporary, &status.path)
    }

    /// Rewrites the file if anything happened since the last time.
    pub(super) fn write_if_changed(&mut self, fleet: &Fleet<'_>) -> io::Result<()> {
        if !self.changed {
            return Ok(());
        }
        self.changed = false;
        self.text.clear();
        render(&mut self.text, fleet);
        std::fs::write(&self.temporary, &self.text)?;
        std::fs::rename(&self.temporary, &self.path)
    }
}

/// The whole status as JSON: the fleet, its settings, and one object per index.
fn render(out: &mut String, fleet: &Fleet<'_>) {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let config = fleet.config;
    let span = |duration| Json(Value::Span(duration));
    let _ = write!(
        out,
        "{{\"master\":{},\"phase\":\"{}\",\"written\":\"{}\",\"instances\":{},\
         \"running\":{},\"respawns_in_window\":{},\"settings\":{{\"respawn_limit\":{},\
         \"respawn_interval\":{},\"shutdown_timeout\":{},\"restart\":\"{}\",\
         \"backoff_max\":{},\"timeout\":{},\"boot_timeout\":{},\"readiness\":\"{}\"}},\
         \"workers\":[",
        fleet.master,
        fleet.phase,
        Timestamp(wall),
        fleet.instances,
        fleet.slots.live_workers(),
        fleet.respawns,
        config.respawn_limit,
        span(config.respawn_interval),
        span(config.shutdown_timeout),
        config.restart,
        span(config.backoff_max),
        span(config.timeout),
        span(config.boot_timeout),
        config.readiness,
    );
    for (index, slot) in fleet.slots.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        worker(out, index, slot, now, wall);
    }
    out.push_str("]}\n");
}

/// One index: `{"index":3,"pid":4250,"state":"running","started":...,"restarts":1,...}`.
fn worker(out: &mut String, index: usize, slot: &Slot, now: Instant, wall: SystemTime) {
    let (state, pid, since) = match &slot.state {
        State::Running {
            pid, started, stop, ..
        } => {
            let state = match stop {
                None => "running",
                Some(stopping) if stopping.hung => "hung",
                Some(_) => "stopping",
            };
            (state, Some(pid.as_raw()), Some(*started))
        }
        State::Pending {
            not_before: Some(at),
        } if *at > now => ("backing-off", None, None),
        State::Pending { .. } => ("pending", None, None),
        State::Done => ("done", None, None),
        State::Retired => ("retired", None, None),
    };
    let _ = write!(out, "{{\"index\":{index},\"state\":\"{state}\"");
    if let Some(pid) = pid {
        let _ = write!(out, ",\"pid\":{pid}");
    }
    if let Some(since) = since {
        // The wall-clock moment the worker started, for a reader's own clock to compare with:
        // `now - .started` is its uptime.
        let started = wall - (now - since);
        let unix = started
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let _ = write!(
            out,
            ",\"started\":{}.{:03},\"started_at\":\"{}\"",
            unix.as_secs(),
            unix.subsec_millis(),
            Timestamp(started)
        );
    }
    let _ = write!(out, ",\"restarts\":{}", slot.forks.saturating_sub(1));
    match slot.last_exit {
        Some(status) => {
            let _ = write!(out, ",\"last_exit\":{}", JsonString(&status.to_string()));
        }
        None => out.push_str(",\"last_exit\":null"),
    }
    out.push('}');
}
