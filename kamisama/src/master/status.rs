//! The live status: a JSON file that says, at any moment, what each index runs and how it has
//! gone, for an operator who does not want to read a log.
//!
//! Rewritten whenever something happened, or the fleet's phase or its count of recent
//! respawns changed, once per turn of the master's loop: written to a new file beside its
//! final name, then renamed over it, so that a reader always sees a whole file. Reading it
//! needs no client and no socket (`cat`, `jq`), and keeping it costs nothing while nothing
//! happens: the master does not wake for it, but when a respawn leaves the window, and, where
//! the workers publish what they do (work completed, busy, connections open), once every
//! [`COUNTS_REFRESH`] to look whether that moved, rewriting the file only if it did.
//!
//! The file written beside is made for each write, with a name of this process's own, and
//! never through an existing file or link (`O_CREAT | O_EXCL | O_NOFOLLOW`): a directory
//! others may write to cannot make the master write elsewhere, and two masters (both
//! generations of an upgrade) never write the same one.

use super::slots::{Slot, Slots, State};
use super::upgrade::Report;
use crate::config::Config;
use crate::event::Value;
use crate::log::{Json, JsonString, Timestamp};
use crate::worker::shared::SharedSlots;
use std::ffi::OsString;
use std::fmt::{self, Write};
use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

/// How often the master looks whether the workers' counts moved since the file was written:
/// how old they may be in it.
pub(super) const COUNTS_REFRESH: Duration = Duration::from_secs(1);

pub(crate) struct StatusFile {
    path: PathBuf,
    changed: bool,
    /// What the last file said of the fleet as a whole, which changes with no event.
    written: Option<(&'static str, usize)>,
    /// Kept between writes, so that the text is allocated once.
    text: String,
    /// When the workers' counts were last looked at, and what they summed to then.
    counted: Option<(Instant, u64)>,
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
    /// How the last upgrade went, if there was one in this master's life.
    pub(super) upgrade: Option<&'a Report>,
    /// What the workers publish of their work, when the master maps it.
    pub(super) shared: Option<&'a SharedSlots>,
    /// Whether the workers are async: then none is said to be busy or not.
    pub(super) is_async: bool,
}

impl StatusFile {
    pub(super) fn new(path: &Path) -> Self {
        StatusFile {
            path: path.to_owned(),
            changed: true,
            written: None,
            text: String::new(),
            counted: None,
        }
    }

    /// When the master is next to look at the workers' counts, if they publish any: at once
    /// before the first write.
    pub(super) fn next_count(&self, shared: Option<&SharedSlots>) -> Option<Instant> {
        shared?;
        match self.counted {
            Some((at, _)) => at.checked_add(COUNTS_REFRESH),
            None => Some(Instant::now()),
        }
    }

    /// Something happened: the file is rewritten at the end of this turn.
    pub(super) fn changed(&mut self) {
        self.changed = true;
    }

    /// Tells, before anything is forked, whether the file can be written: writes a first
    /// status, or, in a master an upgrade started (`replace` false), whose old master's file
    /// it must leave alone until the hand-over, only a file beside it, removed at once.
    pub(crate) fn check(path: &Path, replace: bool) -> io::Result<()> {
        let first = "{\"phase\":\"starting\",\"workers\":[]}\n";
        let beside = write_beside(path, first)?;
        let placed = if replace {
            std::fs::rename(&beside, path)
        } else {
            Ok(())
        };
        if !replace || placed.is_err() {
            let _ = std::fs::remove_file(&beside);
        }
        placed
    }

    /// Rewrites the file if anything happened since the last time, or if the workers' counts
    /// moved and were last written [`COUNTS_REFRESH`] ago or more.
    pub(super) fn write_if_changed(&mut self, fleet: &Fleet<'_>, now: Instant) -> io::Result<()> {
        let summary = (fleet.phase, fleet.respawns);
        let due = self.next_count(fleet.shared).is_some_and(|at| at <= now);
        let counts = (due || self.changed || self.written != Some(summary))
            .then(|| fleet.shared.map_or(0, |shared| fingerprint(fleet, shared)));
        let moved = due && counts != self.counted.map(|(_, counts)| counts);
        if let Some(counts) = counts {
            self.counted = Some((now, counts));
        }
        if !self.changed && self.written == Some(summary) && !moved {
            return Ok(());
        }
        self.changed = false;
        self.written = Some(summary);
        self.text.clear();
        render(&mut self.text, fleet);
        let beside = write_beside(&self.path, &self.text)?;
        std::fs::rename(&beside, &self.path).inspect_err(|_| {
            let _ = std::fs::remove_file(&beside);
        })
    }
}

/// Writes `text` to a new file beside `path`, named for it and this process
/// (`.status.json.4242.tmp`), and returns the new file's path. A file of that name left by a
/// process of the same pid that died is replaced; nothing is followed or overwritten.
fn write_beside(path: &Path, text: &str) -> io::Result<PathBuf> {
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or(path.as_os_str()));
    name.push(format!(".{}.tmp", std::process::id()));
    let beside = path.with_file_name(name);
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&beside)
    };
    let mut file = match open() {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&beside)?;
            open()?
        }
        file => file?,
    };
    if let Err(error) = file.write_all(text.as_bytes()) {
        let _ = std::fs::remove_file(&beside);
        return Err(error);
    }
    Ok(beside)
}

/// The whole status as JSON: the fleet, its settings, and one object per index.
fn render(out: &mut String, fleet: &Fleet<'_>) {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let config = fleet.config;
    let span = |duration| Json(Value::Span(duration));
    let _ = write!(
        out,
        "{{\"master\":{},\"phase\":\"{}\",\"written\":\"{}\",\"instances\":{},\
         \"running\":{},\"respawns_in_window\":{},\"upgrade\":{},\"settings\":{{\"respawn_limit\":{},\
         \"respawn_interval\":{},\"shutdown_timeout\":{},\"restart\":\"{}\",\
         \"backoff_max\":{},\"timeout\":{},\"boot_timeout\":{},\"hang_grace\":{},\
         \"hang_signal\":\"{}\",\"readiness\":\"{}\",\"user\":{},\"group\":{},\
         \"cpu_affinity\":\"{}\"}},\"workers\":[",
        fleet.master,
        fleet.phase,
        Timestamp(wall),
        fleet.instances,
        fleet.slots.live_workers(),
        fleet.respawns,
        UpgradeJson(fleet.upgrade),
        config.respawn_limit,
        span(config.respawn_interval),
        span(config.shutdown_timeout),
        config.restart,
        span(config.backoff_max),
        span(config.timeout),
        span(config.boot_timeout),
        span(config.hang_grace),
        config.hang_signal,
        config.readiness,
        Name(config.user.as_deref()),
        Name(config.group.as_deref()),
        config.cpu_affinity,
    );
    for (index, slot) in fleet.slots.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        worker(out, fleet, index, slot, now, wall);
    }
    out.push_str("]}\n");
}

/// A sum of what the workers publish, which moves when any of it does.
fn fingerprint(fleet: &Fleet<'_>, shared: &SharedSlots) -> u64 {
    let mut sum: u64 = 0xcbf2_9ce4_8422_2325;
    for (index, slot) in fleet.slots.iter().enumerate() {
        let words = slot.words(shared, index);
        let busy = slot.busy(index, shared, fleet.is_async);
        for value in [
            words.done.load(Ordering::Relaxed),
            words.connections.load(Ordering::Relaxed),
            u64::from(busy == Some(true)),
        ] {
            sum = (sum ^ value).wrapping_mul(0x100_0000_01b3);
        }
    }
    sum
}

/// The last upgrade as JSON: `null`, or
/// `{"state":"rolled-back","old":4242,"new":4300,"reason":"...","at":"2026-..."}` (`new`
/// null when no new master could be started, `reason` null unless rolled back).
struct UpgradeJson<'a>(Option<&'a Report>);

impl fmt::Display for UpgradeJson<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(report) = self.0 else {
            return f.write_str("null");
        };
        write!(
            f,
            "{{\"state\":\"{}\",\"old\":{},\"new\":",
            report.state, report.old
        )?;
        match report.new {
            Some(pid) => write!(f, "{pid}")?,
            None => f.write_str("null")?,
        }
        f.write_str(",\"reason\":")?;
        match &report.reason {
            Some(reason) => write!(f, "{}", JsonString(reason))?,
            None => f.write_str("null")?,
        }
        write!(f, ",\"at\":\"{}\"}}", Timestamp(report.at))
    }
}

/// A user's or group's name as JSON: a string, or `null` for none set.
struct Name<'a>(Option<&'a str>);

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(name) => JsonString(name).fmt(f),
            None => f.write_str("null"),
        }
    }
}

/// One index: `{"index":3,"pid":4250,"state":"running","started":...,"restarts":1,
/// "recycles":0,...}`: restarts after an exit or a rolling restart, and recycles apart; and
/// for a running worker that publishes them, `"completed"`, `"connections"` and, for a sync
/// worker, `"busy"`.
fn worker(
    out: &mut String,
    fleet: &Fleet<'_>,
    index: usize,
    slot: &Slot,
    now: Instant,
    wall: SystemTime,
) {
    let state = slot.state_name(now);
    let (pid, since) = match slot.state() {
        State::Running { pid, started, .. } => (Some(pid.as_raw()), Some(*started)),
        _ => (None, None),
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
    if let Some(shared) = fleet.shared.filter(|_| pid.is_some()) {
        let words = slot.words(shared, index);
        let _ = write!(
            out,
            ",\"completed\":{},\"connections\":{}",
            words.done.load(Ordering::Relaxed),
            words.connections.load(Ordering::Relaxed)
        );
        if let Some(busy) = slot.busy(index, shared, fleet.is_async) {
            let _ = write!(out, ",\"busy\":{busy}");
        }
    }
    let restarts = slot.forks.saturating_sub(1).saturating_sub(slot.recycles);
    let _ = write!(
        out,
        ",\"restarts\":{restarts},\"recycles\":{}",
        slot.recycles
    );
    match slot.last_exit {
        Some(status) => {
            let _ = write!(out, ",\"last_exit\":{}", JsonString(&status.to_string()));
        }
        None => out.push_str(",\"last_exit\":null"),
    }
    out.push('}');
}
