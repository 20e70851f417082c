//! Zero-downtime upgrades of the binary (USR2), for every fleet: a server's listeners are
//! handed over, a job fleet's new generation starts before the old one finishes its jobs.
//!
//! The master forks a child that execs the program again, from the path it was started with:
//! after a deploy, `/proc/self/exe` names the old, deleted file, while the path names the new
//! one (or the symlink swapped to it). The child gets the listening sockets at descriptors 3
//! and up with `LISTEN_FDS` and `LISTEN_PID`, as systemd's socket activation hands them over,
//! so the new master serves on the same sockets without binding; and, named by
//! `KAMISAMA_UPGRADE` with what proves them (the old master's pid, the pipe's inode), the
//! write end of a pipe on which it writes one byte once its fleet is ready (or, if the exec
//! fails, the child writes why before it exits), and with a trial, the read end of a second
//! pipe on which the old master says that the trial began.
//!
//! Once the new fleet is ready, the old master stops its own workers, in-flight work first.
//! Without a trial it then tells the service manager that the new master is the main
//! process, closes the pipe, which tells the new master so in turn (until then it leaves the
//! service manager and the status file alone), and exits. With a trial (`upgrade_trial`), it
//! stays that long, forking nothing, with its listeners, and still the main process: it says
//! on the second pipe that the trial began, from which moment the status file is the new
//! master's. A new worker that crashes or hangs during the trial, or a new master that stops,
//! fails the trial: the new master writes why on the first pipe (and stops writing the
//! status file first), stops its fleet and exits; the old master forks its fleet again at
//! once. A trial that passes ends as an upgrade without one does.
//!
//! End of file on the pipe before the fleet is ready (the new binary died), or no byte within
//! `upgrade_timeout`, rolls the upgrade back: the new master gets TERM, and the old one goes
//! on serving.

use super::reaper::Inherited;
use super::slots::State;
use super::{Master, Notify, Outcome, StatusFile};
use crate::config::{Readiness, MAX_INSTANCES};
use crate::event::{Event, ExitStatus};
use crate::listen::Listener;
use crate::worker::WorkerFn;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{fork, pipe2, ForkResult, Pid};
use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, PathBuf};
use std::time::{Duration, Instant, SystemTime};

impl<'a, W: WorkerFn<S>, S> Master<'a, W, S> {
    /// USR2: starts a new master (on the same sockets, if the fleet listens), to take over once its
    /// fleet is ready.
    pub(super) fn begin_upgrade(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        // One at a time: not while this master waits for a new one, nor while, itself started
        // by an upgrade, it waits for the old one to hand over.
        if self.upgrade.is_some() || self.taking_over() {
            self.emit(Event::UpgradeBusy);
            return;
        }
        let refusal = if self.setup.master.as_raw() == 1 {
            Some("the master is PID 1: its exit would end the container; deploy a new image")
        } else if self.relaunch.is_none() {
            Some("the path the program was started with is unknown")
        } else {
            None
        };
        let (None, Some(relaunch)) = (refusal, self.relaunch) else {
            self.upgrade_failed(None, refusal.unwrap_or_default().to_owned());
            return;
        };
        let passed_on = self.notify.as_ref().map_or(&[][..], Notify::passed_on);
        let listeners = crate::listen::listeners();
        // TTIN and TTOU carry over; a count the settings give is the new release's to set.
        let scaled = (self.instances != self.config.instances).then_some(self.instances);
        let plan = Plan {
            instances: scaled,
            timeout: self.config.upgrade_timeout,
            trial: !self.config.upgrade_trial.is_zero(),
            inherited: self.setup.inherited,
            generation: self.generation + 1,
        };
        match Upgrade::start(relaunch, listeners, passed_on, plan) {
            Ok(upgrade) => {
                self.reaper.watch(upgrade.pid);
                let pid = upgrade.pid.as_raw() as u32;
                self.emit(Event::UpgradeStarted {
                    pid,
                    path: relaunch.path(),
                });
                self.report_upgrade(IN_PROGRESS, Some(pid), None);
                self.upgrade = Some(upgrade);
            }
            Err(errno) => self.upgrade_failed(None, format!("fork: {errno}")),
        }
    }

    /// Listens to the new master of an upgrade: begins the trial (or hands over) once its
    /// fleet is ready, rolls back if it went, failed its trial or is late, and hands over once
    /// the trial passed.
    pub(super) fn watch_upgrade(&mut self, now: Instant) {
        let Some(upgrade) = &mut self.upgrade else {
            return;
        };
        let late = upgrade.late(now);
        let passed = upgrade.trial_passed(now);
        let on_trial = upgrade.on_trial();
        match upgrade.hear() {
            Heard::Ready if self.config.upgrade_trial.is_zero() => self.hand_over(),
            Heard::Ready => self.begin_trial(now),
            Heard::Failed(reason) => {
                // It stops by itself: a TERM on top would only race its exit.
                let reason = format!("the new fleet failed its trial: {reason}");
                self.give_up_on(&reason, None);
            }
            Heard::Gone if on_trial => self.roll_back("the new master went during its trial"),
            Heard::Gone => self.roll_back("the new master went before its fleet was ready"),
            Heard::NotRun(errno) => self.roll_back(&not_run(self.relaunch, errno)),
            Heard::Nothing if late => {
                let timeout = crate::event::Value::Span(self.config.upgrade_timeout);
                self.roll_back(&format!("the new fleet was not ready within {timeout}"));
            }
            Heard::Nothing if passed => self.hand_over(),
            Heard::Nothing => {}
        }
    }

    /// The new master's fleet is ready: this master stops its own workers and stays, forking
    /// nothing, ready to fork them again should the new fleet fail. The status file is the
    /// new master's from now on; the service manager still knows this one as the main process.
    fn begin_trial(&mut self, now: Instant) {
        let trial = self.config.upgrade_trial;
        let lent = self.status.take();
        let Some(upgrade) = &mut self.upgrade else {
            return;
        };
        let pid = upgrade.pid;
        upgrade.begin_trial(now.checked_add(trial), lent);
        self.emit(Event::UpgradeTrial {
            pid: pid.as_raw() as u32,
            trial,
        });
        self.report_upgrade(TRIAL, Some(pid.as_raw() as u32), None);
        self.rolling = None;
        let kill_at = self.deadline();
        for index in 0..self.slots.len() {
            self.stop(index, kill_at);
        }
        self.stop_replacement(kill_at);
    }

    /// Whether this master is the old one of an upgrade on trial: it forks no worker.
    pub(super) fn standing_by(&self) -> bool {
        self.upgrade.as_ref().is_some_and(Upgrade::on_trial)
    }

    /// The new master's fleet is ready (and passed its trial, if it had one): make it the
    /// service's main process, and stop this master's own workers (the new master is spared).
    fn hand_over(&mut self) {
        let Some(upgrade) = self.upgrade.take() else {
            return;
        };
        let pid = upgrade.pid.as_raw() as u32;
        self.emit(Event::UpgradeHandingOver { pid });
        // The service manager and the status file are the new master's from now on.
        if let Some(notify) = self.notify.take() {
            notify.main_pid(pid);
        }
        self.status = None;
        self.successor = Some(upgrade.pid);
        // Closes the pipes: the new master takes over the service manager and the status file.
        drop(upgrade);
        self.begin_shutdown(None, Outcome::Upgraded);
    }

    /// Gives the upgrade up: the new master gets TERM (and stops its workers), SIGKILL after
    /// `shutdown_timeout` if it is still there, and this master serves on, forking its fleet
    /// again if a trial had stopped it.
    fn roll_back(&mut self, reason: &str) {
        self.give_up_on(reason, Some(Signal::SIGTERM));
    }

    /// Rolls back, with `stop` for the new master, SIGKILL after `shutdown_timeout` if it is
    /// still there.
    fn give_up_on(&mut self, reason: &str, stop: Option<Signal>) {
        let Some(pid) = self.abandon_upgrade() else {
            return;
        };
        if let Some(upgrade) = &mut self.upgrade {
            upgrade.kill_at = Instant::now().checked_add(self.config.shutdown_timeout);
        }
        if let Some(stop) = stop {
            let _ = kill(pid, stop);
        }
        self.upgrade_failed(Some(pid.as_raw() as u32), reason.to_owned());
    }

    /// Stops waiting for the new master, and takes the status file back if a trial had lent
    /// it; returns the new master.
    pub(super) fn abandon_upgrade(&mut self) -> Option<Pid> {
        let upgrade = self.upgrade.as_mut()?;
        let on_trial = upgrade.on_trial();
        if let Some(lent) = upgrade.give_up() {
            self.status = Some(lent);
        }
        // The fleet the trial stopped is forked again: reloading until it is ready.
        self.refilling = on_trial;
        Some(upgrade.pid)
    }

    /// Says the upgrade failed, and that the old generation (this one) serves on: in the log
    /// and the status file.
    fn upgrade_failed(&mut self, pid: Option<u32>, reason: String) {
        self.report_upgrade(ROLLED_BACK, pid, Some(reason.clone()));
        let pid = pid.unwrap_or(0);
        self.emit(Event::UpgradeFailed { pid, reason });
    }

    /// Records how the upgrade stands, for the status file (rewritten after the turn, as the
    /// event that goes with every report marks it changed).
    fn report_upgrade(&mut self, state: &'static str, new: Option<u32>, reason: Option<String>) {
        self.upgraded = Some(Report {
            state,
            old: self.setup.master.as_raw() as u32,
            new,
            reason,
            at: SystemTime::now(),
        });
    }

    /// The new master of an upgrade exited (and was reaped).
    pub(super) fn upgrade_ended(&mut self, status: ExitStatus) {
        let Some(upgrade) = &mut self.upgrade else {
            return;
        };
        let reason = if upgrade.on_trial() {
            // It may have said why first.
            match upgrade.hear() {
                Heard::Failed(reason) => format!("the new fleet failed its trial: {reason}"),
                _ => format!("the new master exited ({status}) during its trial"),
            }
        } else if upgrade.waiting() {
            // A child that could not exec said why before it exited: read it first.
            match upgrade.hear() {
                Heard::NotRun(errno) => not_run(self.relaunch, errno),
                _ => format!("the new master exited ({status}) before its fleet was ready"),
            }
        } else {
            self.upgrade = None;
            return;
        };
        let pid = self.abandon_upgrade().map(|pid| pid.as_raw() as u32);
        self.upgrade_failed(pid, reason);
        self.upgrade = None;
    }

    /// Whether this master, started by an upgrade, waits for the old master to hand over.
    fn taking_over(&mut self) -> bool {
        let Some(takeover) = &mut self.takeover else {
            return false;
        };
        if takeover.handed_over() {
            let old = takeover.master;
            self.takeover = None;
            // This master's first status file says so (or its next one, after a trial).
            self.upgraded = Some(Report {
                state: DONE,
                old,
                new: Some(self.setup.master.as_raw() as u32),
                reason: None,
                at: SystemTime::now(),
            });
            self.emit(Event::UpgradeDone { old });
            return false;
        }
        if takeover.trial_began() {
            // The status file is this master's now.
            let old = takeover.master;
            self.upgraded = Some(Report {
                state: TRIAL,
                old,
                new: Some(self.setup.master.as_raw() as u32),
                reason: None,
                at: SystemTime::now(),
            });
            if let Some(status) = &mut self.status {
                status.changed();
            }
        }
        true
    }

    /// Whether this master, started by an upgrade, serves on trial: the old master stands by.
    /// Asked of the pipe too: the word that the trial began may have come with the signal or
    /// the death being handled, before the turn that reads it.
    pub(super) fn on_trial(&mut self) -> bool {
        self.taking_over();
        self.takeover.as_ref().is_some_and(Takeover::on_trial)
    }

    /// In a master on trial: the trial failed. Gives the status file back to the old master,
    /// which forks its fleet again, and tells it why; the caller stops this master.
    pub(super) fn fail_trial(&mut self, reason: String) {
        let Some(takeover) = self
            .takeover
            .as_mut()
            .filter(|takeover| takeover.on_trial())
        else {
            return;
        };
        // Before the word: the old master writes the file from the moment it hears it.
        self.status = None;
        takeover.fail(&reason);
        self.emit(Event::UpgradeTrialFailed { reason });
    }

    /// In a master an upgrade started: once its fleet is ready, and has settled, says so to
    /// the old master; once that one has handed over, is the service's main process.
    pub(super) fn take_over(&mut self, now: Instant) {
        if !self.taking_over() || self.shutdown.is_some() || !self.fleet_ready() {
            return;
        }
        let settled = self.config.readiness == Readiness::Declared
            || (0..self.instances).all(|index| match self.slots[index].state() {
                State::Running { started, .. } => now.duration_since(*started) >= SETTLE,
                _ => true,
            });
        if let Some(takeover) = self.takeover.as_mut().filter(|_| settled) {
            takeover.say_ready();
        }
    }
}

/// How the last upgrade went, as the status file says it.
#[derive(Clone, Debug)]
pub(super) struct Report {
    /// [`IN_PROGRESS`], [`TRIAL`], [`DONE`] or [`ROLLED_BACK`].
    pub(super) state: &'static str,
    /// The master that started it.
    pub(super) old: u32,
    /// The new master, if one could be started.
    pub(super) new: Option<u32>,
    /// Why it was rolled back.
    pub(super) reason: Option<String>,
    /// When it came to this state, by the wall clock: two reports never read the same.
    pub(super) at: SystemTime,
}

/// The new master runs, and its fleet is not ready yet.
pub(super) const IN_PROGRESS: &str = "in-progress";
/// The new fleet serves, and the old master stands by until the trial ends: said by the old
/// master to the service manager, and by the new one in the status file.
pub(super) const TRIAL: &str = "trial";
/// The old master handed over to the new one: said by the new master.
pub(super) const DONE: &str = "done";
/// The new master was stopped (or never started), and the old generation serves on.
pub(super) const ROLLED_BACK: &str = "rolled-back";

/// How long every worker of a new generation must have lived, when workers are ready once
/// forked, for the generation to be ready: a binary whose workers crash at start is found
/// out before the old generation stops.
pub(super) const SETTLE: Duration = Duration::from_secs(1);

/// The variable that gives a new master the pipe to say it is ready on:
/// `fd=N,master=PID,pipe=INODE`, and `instances=M` when the old master was scaled.
const UPGRADE: &str = "KAMISAMA_UPGRADE";

/// How to start the program again: the path it was started with, made absolute against the
/// directory it was started in, and its arguments. Read once, at start.
pub(crate) struct Relaunch {
    path: CString,
    arguments: Vec<CString>,
}

impl Relaunch {
    pub(crate) fn from_start() -> Option<Self> {
        let mut arguments = std::env::args_os();
        let program = PathBuf::from(arguments.next()?);
        let path = if program.is_absolute() {
            program
        } else if program.components().count() > 1 {
            let here = working_directory()?;
            let within = program
                .components()
                .filter(|part| *part != Component::CurDir);
            here.join(within.collect::<PathBuf>())
        } else {
            find_in_path(&program)?
        };
        let c_string = |text: OsString| CString::new(text.into_vec()).ok();
        Some(Relaunch {
            path: c_string(path.clone().into_os_string())?,
            arguments: std::iter::once(path.into_os_string())
                .chain(arguments)
                .map(c_string)
                .collect::<Option<_>>()?,
        })
    }

    pub(super) fn path(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }
}

/// The directory the program was started in, as the shell that started it named it: `$PWD`
/// when it names the same directory as `getcwd()`, which has resolved every symbolic link on
/// the way. After a deploy that swaps `current -> releases/v2`, `$PWD` still leads through
/// `current` to the new release, where `getcwd()` names the old one (Unicorn does the same).
fn working_directory() -> Option<PathBuf> {
    let resolved = std::env::current_dir().ok()?;
    let same = |named: &PathBuf| {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(named), std::fs::metadata(&resolved)) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        }
    };
    let named = std::env::var_os("PWD")
        .map(PathBuf::from)
        .filter(|named| named.is_absolute() && same(named));
    Some(named.unwrap_or(resolved))
}

/// Why a new master is not running: the path it is started from could not be run.
fn not_run(relaunch: Option<&Relaunch>, errno: Errno) -> String {
    let path = relaunch.map(Relaunch::path).unwrap_or_default();
    format!("cannot run {path}: {}", io::Error::from(errno))
}

/// The file `name` names in `PATH`, as a shell would run it.
fn find_in_path(name: &std::path::Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// An upgrade under way, as the old master sees it.
pub(super) struct Upgrade {
    /// The new master.
    pub(super) pid: Pid,
    /// Where it says it is ready, and, during the trial, that it failed; `None` once given up.
    said: Option<File>,
    /// Where this master says that the trial began (with a trial).
    trial: Option<File>,
    stage: Stage,
    /// When a new master given up on gets SIGKILL, if it has not gone.
    pub(super) kill_at: Option<Instant>,
}

enum Stage {
    /// Until its fleet is ready, which must be by `deadline`.
    Starting { deadline: Option<Instant> },
    /// Its fleet serves; this master stands by with the status file, which it lent the new
    /// master, until `until`.
    Trial {
        until: Option<Instant>,
        lent: Option<StatusFile>,
    },
    /// Rolled back, or this master stops.
    GivenUp,
}

/// How to start the new master.
pub(super) struct Plan {
    /// The old master's count of workers, when TTIN or TTOU changed it.
    instances: Option<usize>,
    /// How long it has to get its fleet ready.
    timeout: Duration,
    /// Whether its fleet serves on trial once ready.
    trial: bool,
    /// What the master's reaper leaves a child to undo.
    inherited: Inherited,
    /// The new master's place in the chain of upgrades.
    generation: u64,
}

/// What the pipe from the new master said.
pub(super) enum Heard {
    Nothing,
    Ready,
    /// It closed without a word: the new binary is gone.
    Gone,
    /// The new binary could not be run at all (`execve` failed with this error).
    NotRun(Errno),
    /// During the trial: the new fleet failed it, for this reason.
    Failed(String),
}

/// How often a new binary busy being written is tried, 10 ms apart: for a second.
const EXEC_BUSY_TRIES: u32 = 100;

/// What a child whose `execve` failed writes on the pipe before it exits: this byte, then
/// the errno (4 bytes, native order), in one write.
const NOT_RUN: u8 = b'E';

/// What a new master writes once its fleet is ready.
const READY: u8 = b'R';

/// What a new master whose trial failed writes, followed by why, in one write.
const FAILED: u8 = b'F';

/// The longest reason a new master gives, in bytes: one write, well within `PIPE_BUF`.
const LONGEST_REASON: usize = 400;

/// What the old master writes on the trial pipe as the trial begins.
const TRIAL_BEGINS: u8 = b'T';

impl Upgrade {
    /// Forks and execs the new master, with the listeners, the pipes and `extra` variables
    /// (those the old master took out of its own environment, such as `NOTIFY_SOCKET`).
    pub(super) fn start(
        relaunch: &Relaunch,
        listeners: &[Listener],
        extra: &[(String, String)],
        plan: Plan,
    ) -> Result<Upgrade, Errno> {
        use nix::fcntl::OFlag;
        let (read, write) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let trial = plan
            .trial
            .then(|| pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK))
            .transpose()?;
        let count = listeners.len();
        let said_at = 3 + count as RawFd;
        let inode = nix::sys::stat::fstat(&write)?.st_ino;
        let mut upgrade = format!("fd={said_at},master={},pipe={inode}", std::process::id());
        if let Some((trial_read, _)) = &trial {
            let inode = nix::sys::stat::fstat(trial_read)?.st_ino;
            upgrade.push_str(&format!(",trial={},trial_pipe={inode}", said_at + 1));
        }
        if let Some(instances) = plan.instances {
            upgrade.push_str(&format!(",instances={instances}"));
        }
        upgrade.push_str(&format!(",generation={}", plan.generation));
        // The environment, prepared before the fork: the child only fills in its own pid.
        let mut variables: Vec<CString> = std::env::vars_os()
            .filter(|(key, _)| key != UPGRADE)
            .filter_map(|(key, value)| {
                let mut pair = key.into_vec();
                pair.push(b'=');
                pair.extend(value.into_vec());
                CString::new(pair).ok()
            })
            .collect();
        variables.extend(
            extra
                .iter()
                .chain(&[
                    ("LISTEN_FDS".to_owned(), count.to_string()),
                    (UPGRADE.to_owned(), upgrade),
                ])
                .filter_map(|(key, value)| CString::new(format!("{key}={value}")).ok()),
        );
        // Ten digits, filled in by the child: a pid is below 2^22.
        let mut listen_pid = *b"LISTEN_PID=0000000000\0";
        let mut environment: Vec<*const libc::c_char> =
            variables.iter().map(|variable| variable.as_ptr()).collect();
        environment.push(listen_pid.as_ptr().cast());
        environment.push(std::ptr::null());
        let mut argv: Vec<*const libc::c_char> = relaunch
            .arguments
            .iter()
            .map(|argument| argument.as_ptr())
            .collect();
        argv.push(std::ptr::null());
        // The listeners, then the pipe the new master speaks on, then the trial's.
        let sources: Vec<RawFd> = listeners
            .iter()
            .map(|listener| listener.as_fd().as_raw_fd())
            .chain([write.as_raw_fd()])
            .chain(trial.iter().map(|(read, _)| read.as_raw_fd()))
            .collect();
        // Filled in by the child, which must not allocate.
        let mut moved = vec![-1; sources.len()];
        let child = Child {
            relaunch,
            inherited: plan.inherited,
            sources: &sources,
            said_at,
            argv: &argv,
            environment: &environment,
        };
        // SAFETY: the master runs no other thread (its reaper is a process), so the child
        // inherits no lock another thread holds; the child only calls async-signal-safe
        // functions and execs or exits.
        match unsafe { fork() }? {
            ForkResult::Parent { child } => Ok(Upgrade {
                pid: child,
                said: Some(File::from(read)),
                trial: trial.map(|(_, write)| File::from(write)),
                stage: Stage::Starting {
                    deadline: Instant::now().checked_add(plan.timeout),
                },
                kill_at: None,
            }),
            ForkResult::Child => child.exec(&mut moved, &mut listen_pid),
        }
    }

    /// The pipe, to wait on with the signals; `None` once given up.
    pub(super) fn poll_fd(&self) -> Option<PollFd<'_>> {
        let pipe = self.said.as_ref()?;
        Some(PollFd::new(pipe.as_fd(), PollFlags::POLLIN))
    }

    /// Whether the new master has yet to say it is ready (or to fail).
    pub(super) fn waiting(&self) -> bool {
        matches!(self.stage, Stage::Starting { .. })
    }

    /// Whether its fleet serves on trial.
    pub(super) fn on_trial(&self) -> bool {
        matches!(self.stage, Stage::Trial { .. })
    }

    /// Whether its fleet is not ready, and should have been by `now`.
    fn late(&self, now: Instant) -> bool {
        matches!(self.stage, Stage::Starting { deadline: Some(deadline) } if deadline <= now)
    }

    /// Whether its fleet has served on trial until `now` without failing.
    fn trial_passed(&self, now: Instant) -> bool {
        matches!(self.stage, Stage::Trial { until: Some(until), .. } if until <= now)
    }

    /// When the master must look at the upgrade without a word from the new master.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        match self.stage {
            Stage::Starting { deadline } => deadline,
            Stage::Trial { until, .. } => until,
            Stage::GivenUp => self.kill_at,
        }
    }

    /// Reads what the new master said, without blocking. The pipe stays open after `Ready`:
    /// closing it tells the new master that it is the service's main process, which the
    /// old master does once it has told the service manager so.
    pub(super) fn hear(&mut self) -> Heard {
        let waiting = self.waiting();
        let Some(pipe) = &mut self.said else {
            return Heard::Nothing;
        };
        // One byte at a time until ready: a failure may follow at once, to be read next.
        let mut said = [0u8; 1 + LONGEST_REASON];
        let want = if waiting { 1 } else { said.len() };
        let heard = match pipe.read(&mut said[..want]) {
            Ok(1) if waiting && said[0] == NOT_RUN => {
                let mut errno = [0u8; 4];
                match pipe.read(&mut errno) {
                    Ok(4) => Heard::NotRun(Errno::from_raw(i32::from_ne_bytes(errno))),
                    _ => Heard::Gone,
                }
            }
            Ok(1) if waiting => return Heard::Ready,
            Ok(length @ 1..) if said[0] == FAILED => {
                Heard::Failed(String::from_utf8_lossy(&said[1..length]).into_owned())
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Heard::Nothing,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => return Heard::Nothing,
            Ok(_) | Err(_) => Heard::Gone,
        };
        // Nothing more to hear from a new master that said any of these.
        self.said = None;
        heard
    }

    /// Its fleet is ready: it serves on trial until `until`, and is told so, and `lent` the
    /// status file.
    fn begin_trial(&mut self, until: Option<Instant>, lent: Option<StatusFile>) {
        self.stage = Stage::Trial { until, lent };
        if let Some(trial) = &mut self.trial {
            // Into an empty pipe: never blocks. A new master gone is heard of on the other.
            let _ = trial.write_all(&[TRIAL_BEGINS]);
        }
    }

    /// Stops waiting for the new master (it failed, or this master stops); returns the status
    /// file a trial had lent it.
    pub(super) fn give_up(&mut self) -> Option<StatusFile> {
        self.said = None;
        match std::mem::replace(&mut self.stage, Stage::GivenUp) {
            Stage::Trial { lent, .. } => lent,
            Stage::Starting { .. } | Stage::GivenUp => None,
        }
    }
}

/// What the forked child needs to exec the new master: all of it made before the fork.
struct Child<'a> {
    relaunch: &'a Relaunch,
    inherited: Inherited,
    /// The descriptors to hand over, in their order from 3 on.
    sources: &'a [RawFd],
    /// Where the pipe the new master speaks on is placed.
    said_at: RawFd,
    argv: &'a [*const libc::c_char],
    environment: &'a [*const libc::c_char],
}

impl Child<'_> {
    /// In the forked child: the listeners at 3 and up, the pipes after them, a clean signal
    /// mask, and the new binary. Raw descriptors, buffers made before the fork (`moved` is
    /// filled in), and async-signal-safe calls only.
    fn exec(&self, moved: &mut [RawFd], listen_pid: &mut [u8; 22]) -> ! {
        self.inherited.restore();
        // Each source out of the way of 3.. first, then in place: dup2 clears close-on-exec,
        // and the copies out of the way keep it, so that the new master has only its places.
        let out_of_the_way = 3 + self.sources.len() as RawFd;
        for (place, source) in moved.iter_mut().zip(self.sources) {
            // SAFETY: fcntl with integer arguments.
            *place = unsafe { libc::fcntl(*source, libc::F_DUPFD_CLOEXEC, out_of_the_way) };
        }
        for (i, fd) in moved.iter().enumerate() {
            // SAFETY: dup2 and _exit with integer arguments.
            unsafe {
                if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                    libc::_exit(127);
                }
            }
        }
        // SAFETY: getpid has no preconditions.
        let mut pid = unsafe { libc::getpid() } as u32;
        for digit in listen_pid[11..21].iter_mut().rev() {
            *digit = b'0' + (pid % 10) as u8;
            pid /= 10;
        }
        let (path, argv, environment) = (&self.relaunch.path, self.argv, self.environment);
        // SAFETY: a zeroed sigset_t is valid, emptied before use; `argv` and `environment`
        // are null-terminated arrays of C strings that live until exec replaces the process.
        unsafe {
            let mut nothing: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut nothing);
            libc::sigprocmask(libc::SIG_SETMASK, &nothing, std::ptr::null_mut());
            // A file still open for writing somewhere (a deploy tool that has not closed it
            // yet, or any process that forked while it had) cannot be run: ETXTBSY until it
            // is closed.
            for _ in 0..EXEC_BUSY_TRIES {
                libc::execve(path.as_ptr(), argv.as_ptr(), environment.as_ptr());
                if *libc::__errno_location() != libc::ETXTBSY {
                    break;
                }
                let pause = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 10_000_000,
                };
                libc::nanosleep(&pause, std::ptr::null_mut());
            }
            // Why, for the old master's log, on the pipe the new master would have spoken on.
            let errno = (*libc::__errno_location()).to_ne_bytes();
            let said = [NOT_RUN, errno[0], errno[1], errno[2], errno[3]];
            libc::write(self.said_at, said.as_ptr().cast(), said.len());
            libc::_exit(127)
        }
    }
}

/// A master an upgrade started, until the old master hands over: it says nothing to the
/// service manager until then, and writes no status file before a trial begins.
pub(crate) struct Takeover {
    /// The write end of the old master's pipe.
    pipe: File,
    /// The read end of the pipe the old master says the trial began on, until it did.
    trial: Option<File>,
    /// The old master.
    master: u32,
    said_ready: bool,
    /// Where the trial is.
    stage: TrialStage,
    /// The old master's count of workers, when scaled.
    instances: Option<usize>,
    /// Upgrades that led to this master (1 when an old master with none before it started
    /// it, or one from a release that did not count them).
    generation: u64,
}

/// Where a new master's trial is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TrialStage {
    /// None yet (and none at all without a trial pipe).
    NotBegun,
    OnTrial,
    /// It failed, and the old master was told.
    Failed,
}

impl Takeover {
    /// The pipes the old master handed over, named by the environment (and removed from it,
    /// so that no worker inherits it); `None` in a master no upgrade started. A variable that
    /// does not prove itself is ignored: the descriptors must be the ends of pipes (write for
    /// the first, read for the trial's), of the inodes the old master named, and that master
    /// must be this process's parent. A trial pipe that does not prove itself is no trial.
    pub(crate) fn from_env() -> Option<Takeover> {
        let value = std::env::var(UPGRADE).ok();
        // The master is single-threaded, as changing the environment requires.
        std::env::remove_var(UPGRADE);
        let value = value?;
        let field = |key: &str| {
            value
                .split(',')
                .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        };
        let fd: RawFd = field("fd")?.parse().ok()?;
        let master: i32 = field("master")?.parse().ok()?;
        let inode: u64 = field("pipe")?.parse().ok()?;
        let instances = match field("instances") {
            None => None,
            Some(count) => Some(
                count
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_INSTANCES).contains(n))?,
            ),
        };
        let generation = field("generation")
            .and_then(|count| count.parse().ok())
            .unwrap_or(1);
        if nix::unistd::getppid().as_raw() != master {
            return None;
        }
        let pipe = pipe_end(fd, inode, libc::O_WRONLY)?;
        let trial = field("trial")
            .zip(field("trial_pipe"))
            .and_then(|(fd, inode)| {
                pipe_end(fd.parse().ok()?, inode.parse().ok()?, libc::O_RDONLY)
            });
        Some(Takeover {
            pipe,
            trial,
            master: master as u32,
            said_ready: false,
            stage: TrialStage::NotBegun,
            instances,
            generation,
        })
    }

    /// Upgrades that led to this master.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// How many workers the old master ran, when TTIN or TTOU had changed it.
    pub(crate) fn instances(&self) -> Option<usize> {
        self.instances
    }

    /// Tells the old master that the new fleet is ready. An old master already gone (the write
    /// fails) has nothing left to hand over.
    pub(super) fn say_ready(&mut self) {
        if !self.said_ready {
            let _ = self.pipe.write_all(&[READY]);
            self.said_ready = true;
        }
    }

    /// Whether it told the old master that the new fleet is ready.
    pub(super) fn said_ready(&self) -> bool {
        self.said_ready
    }

    /// What to wait on once the fleet is ready: the old master says on the trial pipe that
    /// the trial began, and closes its end of the other as it hands over (or as it dies),
    /// which wakes a poll with an error on this end.
    pub(super) fn poll_fd(&self) -> Option<PollFd<'_>> {
        if !self.said_ready || self.stage == TrialStage::Failed {
            return None;
        }
        Some(match &self.trial {
            Some(trial) => PollFd::new(trial.as_fd(), PollFlags::POLLIN),
            None => PollFd::new(self.pipe.as_fd(), PollFlags::empty()),
        })
    }

    /// Whether the old master said, since the last call, that the trial began: the status
    /// file is this master's from then on.
    pub(super) fn trial_began(&mut self) -> bool {
        let Some(trial) = self.trial.as_mut().filter(|_| self.said_ready) else {
            return false;
        };
        let mut said = [0u8; 1];
        match trial.read(&mut said) {
            Ok(1) if said[0] == TRIAL_BEGINS => {
                self.trial = None;
                self.stage = TrialStage::OnTrial;
                true
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => false,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => false,
            // The old master is gone: the other pipe says so too.
            Ok(_) | Err(_) => {
                self.trial = None;
                false
            }
        }
    }

    /// Whether its fleet serves on trial, not failed yet.
    pub(super) fn on_trial(&self) -> bool {
        self.stage == TrialStage::OnTrial
    }

    /// Tells the old master that the trial failed, and why.
    pub(super) fn fail(&mut self, reason: &str) {
        let mut said = Vec::with_capacity(1 + LONGEST_REASON);
        said.push(FAILED);
        let mut end = reason.len().min(LONGEST_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        said.extend_from_slice(&reason.as_bytes()[..end]);
        // One write, atomic on a pipe: an old master gone has nothing to hear.
        let _ = self.pipe.write_all(&said);
        self.stage = TrialStage::Failed;
    }

    /// Whether the old master closed its end: this master is the service's main process now.
    /// A master whose trial failed is never handed over: the old master closes its end as
    /// it gives up.
    pub(super) fn handed_over(&self) -> bool {
        if !self.said_ready || self.stage == TrialStage::Failed {
            return false;
        }
        let mut fds = [PollFd::new(self.pipe.as_fd(), PollFlags::empty())];
        let closed = PollFlags::POLLERR | PollFlags::POLLHUP;
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1))
            && fds[0]
                .revents()
                .is_some_and(|revents| revents.intersects(closed))
    }
}

/// The descriptor `fd`, handed over open, if it is the end of the pipe `inode` open for
/// `access` (`O_WRONLY` or `O_RDONLY`); made close-on-exec.
fn pipe_end(fd: RawFd, inode: u64, access: libc::c_int) -> Option<File> {
    // SAFETY: a zeroed stat is a valid out-parameter; fstat fails on a descriptor that is not
    // open, and touches no other memory.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return None;
    }
    let is_pipe = stat.st_mode & libc::S_IFMT == libc::S_IFIFO;
    // SAFETY: fcntl with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    let end = flags >= 0 && flags & libc::O_ACCMODE == access;
    if !is_pipe || !end || stat.st_ino != inode {
        return None;
    }
    // SAFETY: fcntl with integer arguments on a descriptor known open.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the old master handed this descriptor over, open (checked above), to this
    // process alone.
    Some(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}
