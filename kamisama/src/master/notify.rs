//! Telling systemd (or any service manager that speaks its protocol) how the fleet is doing:
//! `READY=1` once every initial worker is ready, `RELOADING=1` and `READY=1` around a rolling
//! restart, `STOPPING=1` when a shutdown starts, a `STATUS=` line kept current, and
//! `WATCHDOG=1` while the fleet is healthy.
//!
//! Written by hand rather than with a crate such as sd-notify: the master must remove
//! `NOTIFY_SOCKET` and the watchdog variables from its environment before its first fork, so
//! that no worker inherits them and writes to the socket, and it keeps one socket for its
//! whole life rather than opening one per message.

use super::upgrade;
use crate::text::Text;
use crate::worker::shared::now_nanos;
use std::fmt::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// Where the fleet is in its life, as the service manager sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Not every initial worker is ready yet.
    Starting,
    Ready,
    /// A rolling restart is under way.
    Reloading,
    Stopping,
}

impl Phase {
    /// As the status file writes it.
    pub(super) fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Reloading => "reloading",
            Phase::Stopping => "stopping",
        }
    }
}

/// What the master tells of the fleet, read once per turn of its loop.
pub(super) struct Summary {
    pub(super) phase: Phase,
    /// Workers running, and how many should.
    pub(super) running: usize,
    pub(super) instances: usize,
    /// Respawns within the respawn limit's window, and the window.
    pub(super) respawns: usize,
    pub(super) window: Duration,
    /// Workers found hung and not yet gone.
    pub(super) hung: usize,
    /// How the last upgrade went, if there was one: its state, the old master and the new
    /// one (0 if none could be started).
    pub(super) upgrade: Option<(&'static str, u32, u32)>,
}

impl fmt::Display for Summary {
    /// The `STATUS=` text: `17/17 workers running, 2 respawns in the last 60s`, and how the
    /// last upgrade went (`upgrading: ...`, `, last upgrade rolled back`,
    /// `, upgraded from master 4242`), or, in an old master whose successor is on trial,
    /// `upgrade on trial: master 4300 serves`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.phase == Phase::Stopping {
            return write!(f, "stopping: {} workers left", self.running);
        }
        let upgrade = self.upgrade.map(|(state, _, _)| state);
        if let Some((upgrade::TRIAL, _, new)) =
            self.upgrade.filter(|_| self.phase == Phase::Reloading)
        {
            // This master's workers are stopped: the new fleet serves.
            return write!(f, "upgrade on trial: master {new} serves");
        }
        let doing = match self.phase {
            Phase::Starting => "starting: ",
            Phase::Reloading if upgrade == Some(upgrade::IN_PROGRESS) => "upgrading: ",
            Phase::Reloading => "rolling restart: ",
            Phase::Ready | Phase::Stopping => "",
        };
        let plural = if self.respawns == 1 { "" } else { "s" };
        write!(
            f,
            "{doing}{}/{} workers running, {} respawn{plural} in the last {}s",
            self.running,
            self.instances,
            self.respawns,
            self.window.as_secs()
        )?;
        match self.upgrade {
            Some((upgrade::ROLLED_BACK, _, _)) => f.write_str(", last upgrade rolled back")?,
            Some((upgrade::DONE, old, _)) => write!(f, ", upgraded from master {old}")?,
            _ => {}
        }
        if self.hung > 0 {
            write!(f, ", {} hung", self.hung)?;
        }
        Ok(())
    }
}

/// The shortest time between two watchdog pings, whatever `WATCHDOG_USEC` asks: an interval
/// of a microsecond would keep the master busy pinging and nothing else.
const SHORTEST_PING_INTERVAL: Duration = Duration::from_millis(10);

pub(super) struct Notify {
    socket: UnixDatagram,
    address: SocketAddr,
    /// The variables as found, for a new master an upgrade starts.
    variables: Vec<(String, String)>,
    /// Half the watchdog's interval, when the service manager watches this process.
    ping_every: Option<Duration>,
    next_ping: Option<Instant>,
    /// The last phase told, and the last `STATUS=` text.
    told: Option<Phase>,
    status: Text<256>,
}

impl Notify {
    /// From `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket), `WATCHDOG_USEC` and
    /// `WATCHDOG_PID`, which are removed from the environment whatever they hold: a worker
    /// must never write to the service manager. `None` when not run under one.
    pub(super) fn from_env() -> Option<Self> {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let watchdog = std::env::var("WATCHDOG_USEC").ok();
        let watchdog_pid = std::env::var("WATCHDOG_PID").ok();
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            // The master is single-threaded (checked before), as changing the environment
            // requires.
            std::env::remove_var(var);
        }
        let socket = socket?;
        let socket = socket.to_str()?;
        let mut variables = vec![("NOTIFY_SOCKET".to_owned(), socket.to_owned())];
        if let Some(usec) = &watchdog {
            variables.push(("WATCHDOG_USEC".to_owned(), usec.clone()));
        }
        let address = match socket.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name).ok()?,
            None => SocketAddr::from_pathname(socket).ok()?,
        };
        let for_us = watchdog_pid.map_or(true, |pid| pid.parse() == Ok(std::process::id()));
        let ping_every = watchdog
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(|usec| (Duration::from_micros(usec) / 2).max(SHORTEST_PING_INTERVAL));
        Some(Notify {
            socket: UnixDatagram::unbound().ok()?,
            address,
            variables,
            ping_every,
            next_ping: ping_every.map(|_| Instant::now()),
            told: None,
            status: Text::default(),
        })
    }

    /// The variables a new master needs to speak to the service manager in turn, once it is
    /// the main process (`WATCHDOG_PID` would name the old one, and is left out).
    pub(super) fn passed_on(&self) -> &[(String, String)] {
        &self.variables
    }

    /// Tells the service manager that `pid`, a new master, is the service's main process now.
    pub(super) fn main_pid(&self, pid: u32) {
        let mut message = Text::<64>::default();
        let _ = writeln!(message, "MAINPID={pid}");
        self.send(message.as_str());
    }

    /// The socket, which a worker closes as it starts.
    pub(super) fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Tells what changed since the last turn, and pings the watchdog when due and the fleet
    /// is healthy (no worker hung). Returns when it must be called again for the next ping.
    pub(super) fn update(&mut self, fleet: &Summary, now: Instant) -> Option<Instant> {
        let mut message = Text::<512>::default();
        let phase = match (self.told, fleet.phase) {
            // Once ready, a fleet that loses a worker is not starting again.
            (Some(told), Phase::Starting) if told != Phase::Starting => Phase::Ready,
            // Never ready yet: a rolling restart is part of its start.
            (None | Some(Phase::Starting), Phase::Reloading) => Phase::Starting,
            (_, phase) => phase,
        };
        if self.told != Some(phase) {
            let _ = match phase {
                Phase::Starting => Ok(()),
                Phase::Ready => message.write_str("READY=1\n"),
                Phase::Reloading => write!(
                    message,
                    "RELOADING=1\nMONOTONIC_USEC={}\n",
                    now_nanos() / 1000
                ),
                Phase::Stopping => message.write_str("STOPPING=1\n"),
            };
            self.told = Some(phase);
        }
        let mut status = Text::<256>::default();
        let _ = write!(status, "{fleet}");
        if status.as_str() != self.status.as_str() {
            let _ = writeln!(message, "STATUS={}", status.as_str());
            self.status = status;
        }
        let due = self.next_ping.is_some_and(|at| at <= now);
        if due && fleet.hung > 0 {
            // Withheld, and due still: the turn that finds the fleet healthy again pings at
            // once, rather than a whole interval after the ping it held back. The end of a
            // hang wakes the master (the worker is killed, then reaped): no wakeup for it.
            self.send(message.as_str());
            return None;
        }
        if due {
            let _ = message.write_str("WATCHDOG=1\n");
            self.next_ping = self.ping_every.and_then(|every| now.checked_add(every));
        }
        self.send(message.as_str());
        self.next_ping
    }

    fn send(&self, message: &str) {
        if !message.is_empty() {
            // A service manager gone is no reason to stop supervising.
            let _ = self.socket.send_to_addr(message.as_bytes(), &self.address);
        }
    }
}
