//! Zero-downtime upgrades of the binary (USR2), for every fleet: a server's listeners are
//! handed over, a job fleet's new generation starts before the old one finishes its jobs.
//!
//! The master forks a child that execs the program again, from the path it was started with:
//! after a deploy, `/proc/self/exe` names the old, deleted file, while the path names the new
//! one (or the symlink swapped to it). The child gets the listening sockets at descriptors 3
//! and up with `LISTEN_FDS` and `LISTEN_PID`, as systemd's socket activation hands them over,
//! so the new master serves on the same sockets without binding; and the write end of a pipe,
//! named by `KAMISAMA_UPGRADE` with what proves it is that pipe (the old master's pid, the
//! pipe's inode), on which it writes one byte once its fleet is ready (or, if the exec
//! fails, the child writes why before it exits). The old master
//! then tells the service manager that the new one is the main process, and closes the pipe,
//! which tells the new master so in turn (until then it leaves the service manager and the
//! status file alone); and it stops its own workers, in-flight work first, and exits. End of
//! file on the pipe before that byte (the new binary died), or no byte within
//! `upgrade_timeout`, rolls the upgrade back: the new master gets TERM, and the old one goes
//! on serving.

use super::reaper::Inherited;
use super::slots::State;
use super::{Master, Notify, Outcome};
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
        let timeout = self.config.upgrade_timeout;
        let inherited = self.setup.inherited;
        match Upgrade::start(relaunch, listeners, passed_on, scaled, timeout, inherited) {
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

    /// Listens to the new master of an upgrade: hands over once it is ready, rolls back if
    /// it went, or when it is late.
    pub(super) fn watch_upgrade(&mut self, now: Instant) {
        let Some(upgrade) = &mut self.upgrade else {
            return;
        };
        let late = upgrade.deadline.is_some_and(|deadline| deadline <= now);
        match upgrade.hear() {
            Heard::Ready => self.hand_over(),
            Heard::Gone => self.roll_back("the new master went before its fleet was ready"),
            Heard::NotRun(errno) => self.roll_back(&not_run(self.relaunch, errno)),
            Heard::Nothing if late => {
                let timeout = crate::event::Value::Span(self.config.upgrade_timeout);
                self.roll_back(&format!("the new fleet was not ready within {timeout}"));
            }
            Heard::Nothing => {}
        }
    }

    /// The new master's fleet is ready: make it the service's main process, and stop this
    /// master's own workers (the new master is spared).
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
        // Closes the pipe: the new master takes over the service manager and the status file.
        drop(upgrade);
        self.begin_shutdown(None, Outcome::Upgraded);
    }

    /// Gives the upgrade up: the new master gets TERM (and stops its workers), SIGKILL after
    /// `shutdown_timeout` if it is still there, and this master serves on.
    fn roll_back(&mut self, reason: &str) {
        let Some(upgrade) = &mut self.upgrade else {
            return;
        };
        upgrade.give_up();
        upgrade.kill_at = Instant::now().checked_add(self.config.shutdown_timeout);
        let pid = upgrade.pid;
        let _ = kill(pid, Signal::SIGTERM);
        self.upgrade_failed(Some(pid.as_raw() as u32), reason.to_owned());
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
        if upgrade.waiting() {
            // A child that could not exec said why before it exited: read it first.
            let reason = match upgrade.hear() {
                Heard::NotRun(errno) => not_run(self.relaunch, errno),
                _ => format!("the new master exited ({status}) before its fleet was ready"),
            };
            upgrade.give_up();
            let pid = upgrade.pid.as_raw() as u32;
            self.upgrade_failed(Some(pid), reason);
        }
        self.upgrade = None;
    }

    /// Whether this master, started by an upgrade, waits for the old master to hand over.
    fn taking_over(&mut self) -> bool {
        if self.takeover.as_ref().is_some_and(Takeover::handed_over) {
            let old = self.takeover.take().map_or(0, |takeover| takeover.master);
            // This master's first status file says so.
            self.upgraded = Some(Report {
                state: DONE,
                old,
                new: Some(self.setup.master.as_raw() as u32),
                reason: None,
                at: SystemTime::now(),
            });
            self.emit(Event::UpgradeDone { old });
        }
        self.takeover.is_some()
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
    /// [`IN_PROGRESS`], [`DONE`] or [`ROLLED_BACK`].
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
    /// Where it says it is ready; `None` once it said so, or failed.
    ready: Option<File>,
    /// When it must be ready by.
    pub(super) deadline: Option<Instant>,
    /// When a new master given up on gets SIGKILL, if it has not gone.
    pub(super) kill_at: Option<Instant>,
}

/// What the pipe from the new master said.
pub(super) enum Heard {
    Nothing,
    Ready,
    /// It closed without a word: the new binary is gone.
    Gone,
    /// The new binary could not be run at all (`execve` failed with this error).
    NotRun(Errno),
}

/// How often a new binary busy being written is tried, 10 ms apart: for a second.
const EXEC_BUSY_TRIES: u32 = 100;

/// What a child whose `execve` failed writes on the pipe before it exits: this byte, then
/// the errno (4 bytes, native order), in one write.
const NOT_RUN: u8 = b'E';

impl Upgrade {
    /// Forks and execs the new master, with the listeners, the readiness pipe and `extra`
    /// variables (those the old master took out of its own environment, such as
    /// `NOTIFY_SOCKET`).
    pub(super) fn start(
        relaunch: &Relaunch,
        listeners: &[Listener],
        extra: &[(String, String)],
        instances: Option<usize>,
        timeout: Duration,
        inherited: Inherited,
    ) -> Result<Upgrade, Errno> {
        let (read, write) = pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        let count = listeners.len();
        let upgrade_fd = 3 + count as RawFd;
        let inode = nix::sys::stat::fstat(&write)?.st_ino;
        let mut upgrade = format!("fd={upgrade_fd},master={},pipe={inode}", std::process::id());
        if let Some(instances) = instances {
            upgrade.push_str(&format!(",instances={instances}"));
        }
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
        let sources: Vec<RawFd> = listeners
            .iter()
            .map(|listener| listener.as_fd().as_raw_fd())
            .chain([write.as_raw_fd()])
            .collect();
        // Filled in by the child, which must not allocate.
        let mut moved = vec![-1; sources.len()];
        // SAFETY: the master's only other thread, its reaper, holds no lock, so the child
        // inherits none another thread holds; the child only calls async-signal-safe
        // functions and execs or exits.
        match unsafe { fork() }? {
            ForkResult::Parent { child } => Ok(Upgrade {
                pid: child,
                ready: Some(File::from(read)),
                deadline: Instant::now().checked_add(timeout),
                kill_at: None,
            }),
            ForkResult::Child => exec_new_master(
                relaunch,
                inherited,
                &sources,
                &mut moved,
                &argv,
                &environment,
                &mut listen_pid,
            ),
        }
    }

    /// The pipe, to wait on with the signals; `None` once it said what it had to say.
    pub(super) fn poll_fd(&self) -> Option<PollFd<'_>> {
        let pipe = self.ready.as_ref()?;
        Some(PollFd::new(pipe.as_fd(), PollFlags::POLLIN))
    }

    /// Whether the new master has yet to say it is ready (or to fail).
    pub(super) fn waiting(&self) -> bool {
        self.ready.is_some()
    }

    /// Reads what the new master said, without blocking. The pipe stays open after `Ready`:
    /// closing it tells the new master that it is the service's main process, which the
    /// old master does once it has told the service manager so.
    pub(super) fn hear(&mut self) -> Heard {
        let Some(pipe) = &mut self.ready else {
            return Heard::Nothing;
        };
        let mut said = [0u8; 5];
        match pipe.read(&mut said) {
            Ok(5) if said[0] == NOT_RUN => {
                self.give_up();
                let errno = i32::from_ne_bytes([said[1], said[2], said[3], said[4]]);
                Heard::NotRun(Errno::from_raw(errno))
            }
            Ok(1) => Heard::Ready,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Heard::Nothing,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => Heard::Nothing,
            Ok(_) | Err(_) => {
                self.give_up();
                Heard::Gone
            }
        }
    }

    /// Stops waiting for the new master: it failed, or the master stops.
    pub(super) fn give_up(&mut self) {
        self.ready = None;
        self.deadline = None;
    }
}

/// In the forked child: the listeners at 3 and up, the pipe after them, a clean signal mask,
/// and the new binary. Raw descriptors, buffers made before the fork, and async-signal-safe
/// calls only.
fn exec_new_master(
    relaunch: &Relaunch,
    inherited: Inherited,
    sources: &[RawFd],
    moved: &mut [RawFd],
    argv: &[*const libc::c_char],
    environment: &[*const libc::c_char],
    listen_pid: &mut [u8; 22],
) -> ! {
    inherited.restore();
    // Each source out of the way of 3.. first, then in place: dup2 clears close-on-exec, and
    // the copies out of the way keep it, so that the new master has only its places.
    let out_of_the_way = 3 + sources.len() as RawFd;
    for (place, source) in moved.iter_mut().zip(sources) {
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
    // SAFETY: a zeroed sigset_t is valid, emptied before use; `argv` and `environment` are
    // null-terminated arrays of C strings that live until exec replaces the process.
    unsafe {
        let mut nothing: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut nothing);
        libc::sigprocmask(libc::SIG_SETMASK, &nothing, std::ptr::null_mut());
        // A file still open for writing somewhere (a deploy tool that has not closed it yet,
        // or any process that forked while it had) cannot be run: ETXTBSY until it is closed.
        for _ in 0..EXEC_BUSY_TRIES {
            libc::execve(relaunch.path.as_ptr(), argv.as_ptr(), environment.as_ptr());
            if *libc::__errno_location() != libc::ETXTBSY {
                break;
            }
            let pause = libc::timespec {
                tv_sec: 0,
                tv_nsec: 10_000_000,
            };
            libc::nanosleep(&pause, std::ptr::null_mut());
        }
        // Why, for the old master's log, on the pipe: the last place, after the listeners.
        let errno = (*libc::__errno_location()).to_ne_bytes();
        let said = [NOT_RUN, errno[0], errno[1], errno[2], errno[3]];
        libc::write(2 + moved.len() as RawFd, said.as_ptr().cast(), said.len());
        libc::_exit(127)
    }
}

/// A master an upgrade started, until the old master hands over: it says nothing to the
/// service manager and writes no status file, both still the old master's, until then.
pub(crate) struct Takeover {
    /// The write end of the old master's pipe.
    pipe: File,
    /// The old master.
    master: u32,
    said_ready: bool,
    /// The old master's count of workers, when scaled.
    instances: Option<usize>,
}

impl Takeover {
    /// The pipe the old master handed over, named by the environment (and removed from it, so
    /// that no worker inherits it); `None` in a master no upgrade started. A variable that does
    /// not prove itself is ignored: the descriptor must be the write end of a pipe, of the
    /// inode the old master named, and that master must be this process's parent.
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
        if nix::unistd::getppid().as_raw() != master {
            return None;
        }
        // SAFETY: a zeroed stat is a valid out-parameter; fstat fails on a descriptor that is
        // not open, and touches no other memory.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd, &mut stat) } != 0 {
            return None;
        }
        let is_pipe = stat.st_mode & libc::S_IFMT == libc::S_IFIFO;
        // SAFETY: fcntl with integer arguments.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        let write_end = flags >= 0 && flags & libc::O_ACCMODE == libc::O_WRONLY;
        if !is_pipe || !write_end || stat.st_ino != inode {
            return None;
        }
        // SAFETY: fcntl with integer arguments on a descriptor known open.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: the old master handed this descriptor over, open (checked above), to this
        // process alone.
        let pipe = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        Some(Takeover {
            pipe,
            master: master as u32,
            said_ready: false,
            instances,
        })
    }

    /// How many workers the old master ran, when TTIN or TTOU had changed it.
    pub(crate) fn instances(&self) -> Option<usize> {
        self.instances
    }

    /// Tells the old master that the new fleet is ready. An old master already gone (the write
    /// fails) has nothing left to hand over.
    pub(super) fn say_ready(&mut self) {
        if !self.said_ready {
            let _ = self.pipe.write_all(b"R");
            self.said_ready = true;
        }
    }

    /// Whether it told the old master that the new fleet is ready.
    pub(super) fn said_ready(&self) -> bool {
        self.said_ready
    }

    /// What to wait on once the fleet is ready: the old master closes its end as it hands
    /// over (or as it dies), which wakes a poll with an error on this end.
    pub(super) fn poll_fd(&self) -> Option<PollFd<'_>> {
        self.said_ready
            .then(|| PollFd::new(self.pipe.as_fd(), PollFlags::empty()))
    }

    /// Whether the old master closed its end: this master is the service's main process now.
    pub(super) fn handed_over(&self) -> bool {
        let Some(fd) = self.poll_fd() else {
            return false;
        };
        let mut fds = [fd];
        let closed = PollFlags::POLLERR | PollFlags::POLLHUP;
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1))
            && fds[0]
                .revents()
                .is_some_and(|revents| revents.intersects(closed))
    }
}
