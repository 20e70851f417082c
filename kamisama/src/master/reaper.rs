//! Which children died, found at a cost that does not grow with the fleet.
//!
//! SIGCHLD names the child whose death raised it, but signals of one kind coalesce: one
//! SIGCHLD may stand for several deaths, and only the first is named. Finding the others
//! takes a walk of the child list (`waitid(P_ALL)`), which the kernel does child by child: at
//! 10,000 workers a walk per death is most of what a master does. So a child process of the
//! master, the *watcher*, holds a pidfd for each worker and waits on them all with epoll:
//! each death is reported by pid, and reaped with `waitid(P_PID)`, which looks at one process.
//!
//! The pidfds live in the watcher's own file table, so that a fork does not copy them to
//! every worker, which would make each fork cost as much as the fleet is large. Children
//! nobody watches (orphans handed to the master) are found by a walk, for
//! a death whose SIGCHLD coalesced with another's: at once when a SIGCHLD names no death or a
//! report was lost; [`WALK_DELAY`] after the last walk when orphans are about (one died, or
//! a dead worker left some in its process group), as orphans come and go in numbers; and,
//! for one that no sign announced, at the first SIGCHLD [`QUIET_WALK`] after the last walk,
//! so that a walk costs a large fleet at most once per that much time, not once per death.
//! Below [`WATCHED_FROM`] workers, and without pidfds (a kernel before 5.3, a seccomp filter,
//! a descriptor limit that cannot be raised), every SIGCHLD is followed by a walk at once, as
//! in any tini-shaped master.
//!
//! # The watcher process
//!
//! The watcher is a process, not a thread, so that the master stays single-threaded: a fork
//! from a process with a second thread costs more, in the C library (it takes its allocator's
//! and its streams' locks around each fork: pages the master then copies, 18 page faults a
//! respawn instead of 9) and in the kernel (each page the master writes after a fork is a TLB
//! shootdown, an interrupt to the core the other thread last ran on). Measured at 10,000
//! workers, the master and its watcher together spend a third less CPU a respawn than the
//! master and a watcher thread did.
//!
//! It is forked once the fleet is large, names itself `kamisama-reaper`, dies with the master
//! (`PR_SET_PDEATHSIG`), blocks every signal, and closes every descriptor but its two pipes.
//! It makes system calls only, from its own stack, allocating nothing, so that it can be
//! forked from a process with threads too (a test harness). The master tells it apart from the fleet: sweeps leave
//! it alone, a shutdown ends it once no worker is left, and its death, if it comes earlier,
//! is logged and makes the master walk again.
//!
//! # The descriptor limit
//!
//! The watcher needs a descriptor per worker. When the soft limit on open files is lower than
//! the fleet needs, the master raises it to the hard limit, as Go's runtime and systemd do
//! for themselves, and puts it back in every process it forks ([`Inherited::restore`]), so
//! that a worker and what it runs see the limit they would have had.

use super::fleet;
use super::table::Table;
use crate::event::Level;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::prctl;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::{fork, getppid, ForkResult, Pid};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// How long after the last walk of the child list the next one comes when orphans are about.
pub(super) const WALK_DELAY: Duration = Duration::from_millis(100);

/// How many dead workers a walk of a watched fleet reaps before it stops for [`WALK_DELAY`]:
/// each step of a walk starts again at the head of the child list, so a walk through a burst
/// of deaths (a shutdown of 10,000) would cost the burst times the fleet.
pub(super) const WALK_WORKERS: usize = 16;

/// How long after the last walk a SIGCHLD brings another, in a fleet whose deaths the
/// watcher reports: for an orphan's death that coalesced with a worker's, with no other sign.
pub(super) const QUIET_WALK: Duration = Duration::from_secs(10);

/// How often, at most, the pids of workers just forked are handed to the watcher: a fork after
/// a quiet while is told at once, at the end of the master's turn, as before; forks within
/// that long of the last hand-over wait for the next, so that respawns one after the other
/// (or a start) wake the watcher once per that while, not once each. A death meanwhile is
/// named by its SIGCHLD; only one whose SIGCHLD coalesced with another's waits that long to
/// be found, as the watcher opens a pidfd for a dead child as for a live one. At 10,000
/// workers, respawned one after the other, the watcher woke once a respawn instead of twice,
/// and spent 18 µs of CPU on each instead of 25.
pub(super) const REQUEST_DELAY: Duration = Duration::from_millis(50);

/// The fleet from which a watcher reports the deaths: below it, a walk of the child list
/// (about 60 ns a child) costs less than the watcher's wakeup a respawn. From 2,000, so
/// that a fleet of 1,000 starts without a process to start beside its workers.
pub(super) const WATCHED_FROM: usize = 2000;

/// Descriptors the watcher keeps besides the pidfds.
const WATCHER_SPARE: u64 = 64;

pub(super) struct Reaper {
    watcher: Option<Watcher>,
    /// Whether a watcher was started, or tried.
    tried: bool,
    /// When the child list was last walked.
    walked: Option<Instant>,
    /// When it is to be walked again, for an orphan's death no SIGCHLD named.
    walk_at: Option<Instant>,
    /// Pids forked since the last flush, four bytes each: left out of forks, as each fork
    /// adds to it.
    requests: Table<u8>,
    /// When pids were last handed to the watcher.
    sent_at: Option<Instant>,
    /// Why the master cannot count on the watcher.
    blind: Option<Blind>,
    /// Whether the master ended the watcher (a shutdown with no worker left).
    ended: bool,
    /// Whether the log heard of it.
    told: bool,
    inherited: Inherited,
}

/// What a fork must undo in the child: the reaper's descriptors, and the descriptor limit
/// it raised.
#[derive(Clone, Copy)]
pub(crate) struct Inherited {
    fds: [RawFd; 2],
    nofile: Option<libc::rlimit>,
}

/// Why deaths are found by walking the child list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Blind {
    /// No watcher: it could not start (no pidfds on this kernel, say).
    NoWatcher(Errno),
    /// A worker could not be watched (`pidfd_open` failed: out of descriptors).
    Unwatched,
    /// The watcher died (killed from outside).
    WatcherDied,
}

impl Blind {
    /// How the log says it.
    pub(super) fn note(self) -> (Level, &'static str) {
        match self {
            // An old kernel, or a seccomp filter: nothing to act on.
            Blind::NoWatcher(_) => (Level::Info, "reaping-by-walking reason=no-pidfds"),
            Blind::Unwatched => (Level::Warn, "reaping-by-walking reason=descriptor-limit"),
            Blind::WatcherDied => (Level::Warn, "reaping-by-walking reason=reaper-died"),
        }
    }
}

/// The master's side of the watcher process.
struct Watcher {
    /// Pids to watch, four bytes each; closing it ends the watcher.
    requests: Option<OwnedFd>,
    /// Pids of the dead, four bytes each, or [`UNWATCHED`].
    reports: OwnedFd,
    /// The watcher, until the master reaps it.
    pid: Option<Pid>,
    /// A worker could not be watched: its death may only be found by a walk.
    unwatched: bool,
}

/// What the watcher reports, in place of a pid, when it could not watch one.
const UNWATCHED: i32 = 0;

/// A SIGCHLD, as the signalfd gave it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sigchld {
    pub(crate) pid: u32,
    /// `CLD_EXITED`, `CLD_KILLED`, `CLD_DUMPED` for a death; a stop, a continue, or a
    /// SIGCHLD sent by a process (`SI_USER`), which names no death.
    pub(crate) code: i32,
}

impl Sigchld {
    /// The child whose death it tells of, if it tells of one.
    pub(super) fn dead(self) -> Option<Pid> {
        let death = matches!(
            self.code,
            libc::CLD_EXITED | libc::CLD_KILLED | libc::CLD_DUMPED
        );
        (death && self.pid != 0).then(|| Pid::from_raw(self.pid as i32))
    }
}

impl Reaper {
    /// A reaper that walks the child list, until the fleet is large enough for a watcher.
    pub(super) fn new() -> Self {
        Reaper {
            watcher: None,
            tried: false,
            walked: None,
            walk_at: None,
            requests: Table::new(),
            sent_at: None,
            blind: None,
            ended: false,
            told: false,
            inherited: Inherited {
                fds: [-1, -1],
                nofile: None,
            },
        }
    }

    /// Starts the watcher, once, when the fleet has `instances` or more, with `live` the
    /// workers it has now; returns whether it started now, which changes what a child
    /// inherits.
    pub(super) fn watch_from(&mut self, instances: usize, live: impl FnOnce() -> Vec<Pid>) -> bool {
        if self.tried || instances < WATCHED_FROM {
            return false;
        }
        self.tried = true;
        let nofile = raise_nofile(instances as u64 + WATCHER_SPARE);
        match Watcher::start() {
            Ok(watcher) => {
                let requests = watcher.requests.as_ref().map_or(-1, AsRawFd::as_raw_fd);
                self.inherited = Inherited {
                    fds: [requests, watcher.reports.as_raw_fd()],
                    nofile,
                };
                self.watcher = Some(watcher);
                // Room for a whole fleet's pids: a fork then allocates nothing.
                self.requests.reserve_total(instances * 4);
                for pid in live() {
                    self.watch(pid);
                }
                self.send_requests(Instant::now());
                true
            }
            Err(errno) => {
                if let Some(limit) = &nofile {
                    // SAFETY: `limit` is valid for the call.
                    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, limit) };
                }
                self.blind = Some(Blind::NoWatcher(errno));
                false
            }
        }
    }

    /// What a forked child must undo.
    pub(super) fn inherited(&self) -> Inherited {
        self.inherited
    }

    /// Has the child `pid`, forked now, watched: handed over by [`flush`](Reaper::flush).
    pub(super) fn watch(&mut self, pid: Pid) {
        if self.watcher.is_some() {
            self.requests.extend_from_slice(&pid.as_raw().to_ne_bytes());
        }
    }

    /// Hands the pids forked to the watcher, unless the last hand-over was less than
    /// [`REQUEST_DELAY`] ago and they do not fill a write: one write, and one wakeup of the
    /// watcher, for all of them.
    pub(super) fn flush(&mut self, now: Instant) {
        let due = self.next_flush().map_or(true, |at| at <= now);
        if !self.requests.is_empty() && (due || self.requests.len() >= libc::PIPE_BUF) {
            self.send_requests(now);
        }
    }

    /// When the pids forked wait for, if some wait for a later hand-over.
    pub(super) fn next_flush(&self) -> Option<Instant> {
        if self.requests.is_empty() {
            return None;
        }
        Some(self.sent_at? + REQUEST_DELAY)
    }

    fn send_requests(&mut self, now: Instant) {
        self.sent_at = Some(now);
        if let Some(watcher) = &mut self.watcher {
            watcher.send(&self.requests);
        }
        self.requests.clear();
    }

    /// The watcher's pid, while it has one to reap.
    pub(super) fn watcher(&self) -> Option<Pid> {
        self.watcher.as_ref()?.pid
    }

    /// Ends the watcher: a shutdown has no worker left to watch, and waits for its last
    /// children, of which the watcher is one. It exits once it reads the end of its
    /// requests, and is reaped as any child is.
    pub(super) fn end(&mut self) {
        if let Some(watcher) = &mut self.watcher {
            self.ended = true;
            watcher.requests = None;
        }
    }

    /// Whether `pid`, just reaped, was the watcher; the master then finds deaths by walking,
    /// and says so if it did not end the watcher itself.
    pub(super) fn reaped(&mut self, pid: Pid) -> bool {
        let Some(watcher) = &mut self.watcher else {
            return false;
        };
        if watcher.pid != Some(pid) {
            return false;
        }
        watcher.pid = None;
        self.watcher = None;
        if !self.ended {
            self.blind.get_or_insert(Blind::WatcherDied);
        }
        true
    }

    /// The reports, to wait on with the signals.
    pub(super) fn poll_fd(&self) -> Option<PollFd<'_>> {
        let watcher = self.watcher.as_ref()?;
        Some(PollFd::new(watcher.reports.as_fd(), PollFlags::POLLIN))
    }

    /// Adds to `dead` the children known to have died (not yet reaped, or reaped already:
    /// the caller asks each one), from the watcher's reports and the SIGCHLD just read, if
    /// any; returns whether the child list must be walked now for more. `eager` walks at
    /// every SIGCHLD: when the list holds no worker, a walk costs nothing.
    pub(super) fn dead(
        &mut self,
        sigchld: Option<Sigchld>,
        eager: bool,
        now: Instant,
        dead: &mut Table<Pid>,
    ) -> bool {
        let mut walk = false;
        if let Some(watcher) = &mut self.watcher {
            // The end of the reports: the watcher died, and its death is found by a walk.
            walk |= !watcher.read_reports(dead);
            if self.blind.is_none() && watcher.unwatched {
                self.blind = Some(Blind::Unwatched);
            }
        }
        if let Some(sigchld) = sigchld {
            if let Some(pid) = sigchld.dead() {
                dead.push(pid);
            }
            let quiet = self
                .walked
                .map_or(true, |walked| walked + QUIET_WALK <= now);
            let watching = self.watching();
            walk |= eager || quiet || !watching || sigchld.dead().is_none();
        }
        walk |= self.walk_at.is_some_and(|at| at <= now);
        if walk {
            self.walked = Some(now);
            self.walk_at = None;
        }
        walk
    }

    /// Orphans are about: one died, and was reaped by its pid (others may have died with it,
    /// unnamed), or a dead worker left some in its process group.
    pub(super) fn orphans_about(&mut self, now: Instant) {
        self.walk_later(now);
    }

    /// A SIGCHLD named a child reaped before it was read (a walk of an earlier turn found it
    /// dead): the deaths that came while it was pending coalesced into it, unnamed, and an
    /// orphan among them is found only by a walk. Without a watcher, every SIGCHLD walks.
    pub(super) fn named_reaped_before(&mut self, now: Instant) {
        if self.watching() {
            self.walk_later(now);
        }
    }

    /// Whether the watcher reports every worker's death, so that a walk is for orphans only.
    pub(super) fn watching(&self) -> bool {
        self.watcher.is_some() && self.blind.is_none() && !self.ended
    }

    /// A walk was cut short: it met [`WALK_WORKERS`] dead workers, which the watcher reports
    /// anyway, in a burst of deaths. The rest of it is owed [`WALK_DELAY`] after it began.
    pub(super) fn walk_later(&mut self, now: Instant) {
        let at = self.walked.map_or(now, |walked| walked + WALK_DELAY);
        self.walk_at.get_or_insert(at.max(now));
    }

    /// When a walk is owed, if one is.
    pub(super) fn next_walk(&self) -> Option<Instant> {
        self.walk_at
    }

    /// Why deaths are found by walking, the first time it is asked after that began.
    pub(super) fn newly_blind(&mut self) -> Option<Blind> {
        if self.told {
            return None;
        }
        self.told = self.blind.is_some();
        self.blind
    }
}

impl Drop for Reaper {
    /// Gives the process back its limit of open files, for a `try_run` that returns (the
    /// watcher ends, and is reaped, as its field drops).
    fn drop(&mut self) {
        if let Some(limit) = &self.inherited.nofile {
            // SAFETY: `limit` is valid for the call.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, limit) };
        }
    }
}

impl Inherited {
    /// In a child just forked: closes the reaper's descriptors and puts back the descriptor
    /// limit. Async-signal-safe.
    pub(crate) fn restore(&self) {
        for fd in self.fds.into_iter().filter(|fd| *fd >= 0) {
            // SAFETY: the master's descriptors, which the child never uses; it leaves by exec
            // or `_exit`, without running the destructors that would close them again.
            unsafe { libc::close(fd) };
        }
        if let Some(limit) = &self.nofile {
            // SAFETY: `limit` is valid for the call.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, limit) };
        }
    }
}

/// Raises the soft limit on open files to the hard limit, if it is below `needed`; returns
/// the limit it replaced.
fn raise_nofile(needed: u64) -> Option<libc::rlimit> {
    // SAFETY: a zeroed rlimit is a valid out-parameter.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `limit` is valid for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur >= needed
        || limit.rlim_cur >= limit.rlim_max
    {
        return None;
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: `raised` is valid for the call.
    (unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0).then_some(limit)
}

impl Watcher {
    fn start() -> Result<Self, Errno> {
        // Whether this kernel, and the seccomp filter if any, allow pidfds.
        drop(pidfd_open(Pid::this())?);
        let (requests_in, requests) = pipe()?;
        let (reports, reports_out) = pipe()?;
        // Room for a whole fleet's forks or deaths between two reads; the default holds
        // 16,384 pids, these 262,144 where the system allows (`pipe-max-size`).
        for fd in [&requests, &reports_out] {
            // SAFETY: fcntl with integer arguments.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
        }
        let master = Pid::this();
        // SAFETY: the child runs `watch`, system calls on its stack only (see the module's
        // docs), and leaves by `_exit`, never returning into the master's code.
        let pid = match unsafe { fork() }? {
            ForkResult::Child => {
                watch(master, [requests_in.as_raw_fd(), reports_out.as_raw_fd()]);
            }
            ForkResult::Parent { child } => child,
        };
        drop((requests_in, reports_out));
        let mut watcher = Watcher {
            requests: Some(requests),
            reports,
            pid: Some(pid),
            unwatched: false,
        };
        // The watcher says once it is ready; one that could not be dies, and is reaped as the
        // watcher drops.
        let mut started = [0u8; 1];
        set_blocking(&watcher.reports, true)?;
        let said = nix::unistd::read(&watcher.reports, &mut started);
        set_blocking(&watcher.reports, false)?;
        if said != Ok(1) {
            watcher.requests = None;
            return Err(Errno::ECHILD);
        }
        Ok(watcher)
    }

    /// Reads the reports into `dead`; returns whether the watcher is still there (its end of
    /// the pipe open).
    /// Writes the pids `requests` to the watcher, in writes a pipe takes whole; a pipe that
    /// is full (a watcher 262,144 pids behind) or broken leaves the rest unwatched.
    fn send(&mut self, requests: &[u8]) {
        let Some(pipe) = &self.requests else {
            return;
        };
        for chunk in requests.chunks(libc::PIPE_BUF) {
            if nix::unistd::write(pipe, chunk) != Ok(chunk.len()) {
                self.unwatched = true;
                return;
            }
        }
    }

    fn read_reports(&mut self, dead: &mut Table<Pid>) -> bool {
        // Small, so that reading it writes no stack page the master would not write anyway:
        // each page written after a fork is a copy.
        let mut buffer = [0u8; 512];
        loop {
            match nix::unistd::read(&self.reports, &mut buffer) {
                Ok(0) => return false,
                Ok(read) => {
                    for pid in buffer[..read].chunks_exact(4) {
                        match i32::from_ne_bytes([pid[0], pid[1], pid[2], pid[3]]) {
                            UNWATCHED => self.unwatched = true,
                            pid => dead.push(Pid::from_raw(pid)),
                        }
                    }
                    // A pipe gives all it holds: a short read emptied it, and a read more
                    // would only fail with EAGAIN. The next report wakes the master again.
                    if read < buffer.len() {
                        return true;
                    }
                }
                Err(Errno::EINTR) => {}
                Err(_) => return true,
            }
        }
    }
}

impl Drop for Watcher {
    /// Ends the watcher, whose file table, pidfds and all, goes with it, and reaps it. It
    /// is killed rather than told (it might be waiting for room in the reports): a child not
    /// yet reaped keeps its pid, so the signal cannot reach another process.
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = fleet::reap(pid);
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Errno> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
}

fn set_blocking(fd: &OwnedFd, blocking: bool) -> Result<(), Errno> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    let flags = if blocking {
        flags - OFlag::O_NONBLOCK
    } else {
        flags | OFlag::O_NONBLOCK
    };
    fcntl(fd, FcntlArg::F_SETFL(flags)).map(drop)
}

/// A pidfd for `pid`.
fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    Errno::result(fd).map(|fd| {
        // SAFETY: a descriptor pidfd_open just opened, owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
    })
}

/// The epoll data of the requests pipe; any other is a pidfd's: the pidfd in the high half,
/// the pid in the low one.
const REQUESTS: u64 = u64::MAX;

/// The watcher process: takes pids to watch from the first of `pipes`, and writes each one
/// to the second once it has died. Ends when the master closes the requests, or dies.
fn watch(master: Pid, pipes: [RawFd; 2]) -> ! {
    let _ = prctl::set_name(c"kamisama-reaper");
    let _ = prctl::set_pdeathsig(Signal::SIGKILL);
    let _ = SigSet::all().thread_set_mask();
    // The master may have died before the death signal was asked for.
    if getppid() == master {
        let _ = serve(pipes);
    }
    // SAFETY: leaves without running anything of the master's.
    unsafe { libc::_exit(0) }
}

fn serve([requests, reports]: [RawFd; 2]) -> Result<(), Errno> {
    close_all_but([requests, reports]);
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    // SAFETY: both descriptors are open for as long as this process runs: they are closed
    // only as it exits.
    let (requests, reports) = unsafe {
        (
            BorrowedFd::borrow_raw(requests),
            BorrowedFd::borrow_raw(reports),
        )
    };
    // A report waits for room in a full pipe rather than being lost: the master reads the
    // reports at every turn.
    // SAFETY: fcntl with integer arguments, on this process's own end.
    unsafe { libc::fcntl(reports.as_raw_fd(), libc::F_SETFL, 0) };
    epoll.add(requests, EpollEvent::new(EpollFlags::EPOLLIN, REQUESTS))?;
    if nix::unistd::write(reports, &[0])? != 1 {
        return Err(Errno::EPIPE);
    }
    let mut events = [EpollEvent::empty(); 256];
    let mut buffer = [0u8; 4096];
    loop {
        let ready = match epoll.wait(&mut events, EpollTimeout::NONE) {
            Err(Errno::EINTR) => continue,
            ready => ready?,
        };
        for event in &events[..ready] {
            if event.data() == REQUESTS {
                match nix::unistd::read(requests, &mut buffer) {
                    Ok(0) => return Ok(()),
                    Ok(read) => {
                        for pid in buffer[..read].chunks_exact(4) {
                            let pid = i32::from_ne_bytes([pid[0], pid[1], pid[2], pid[3]]);
                            start_watching(&epoll, Pid::from_raw(pid), reports);
                        }
                    }
                    Err(Errno::EAGAIN | Errno::EINTR) => {}
                    Err(errno) => return Err(errno),
                }
                continue;
            }
            let (pidfd, pid) = ((event.data() >> 32) as RawFd, event.data() as u32 as i32);
            // SAFETY: a pidfd this process opened and registered; closing it also takes it
            // out of the epoll set.
            unsafe { libc::close(pidfd) };
            report(reports, pid);
        }
    }
}

/// Closes every descriptor but `keep`: the copies of the master's that the fork made must
/// not keep open what the master closes (a listener, say).
fn close_all_but(keep: [RawFd; 2]) {
    let (low, high) = (keep[0].min(keep[1]), keep[0].max(keep[1]));
    let gaps = [(0, low - 1), (low + 1, high - 1), (high + 1, RawFd::MAX)];
    for (first, last) in gaps.into_iter().filter(|(first, last)| first <= last) {
        // SAFETY: close_range with integer arguments, on this process's own table.
        unsafe { libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0) };
    }
}

/// Watches `pid`: a pidfd in the epoll set, or a report at once when it has already been
/// reaped; a pid that cannot be watched is reported as [`UNWATCHED`].
fn start_watching(epoll: &Epoll, pid: Pid, reports: BorrowedFd<'_>) {
    let pidfd = match pidfd_open(pid) {
        Ok(pidfd) => pidfd,
        Err(Errno::ESRCH) => return report(reports, pid.as_raw()),
        Err(_) => return report(reports, UNWATCHED),
    };
    let data = (pidfd.as_raw_fd() as u64) << 32 | u64::from(pid.as_raw() as u32);
    if epoll
        .add(&pidfd, EpollEvent::new(EpollFlags::EPOLLIN, data))
        .is_err()
    {
        return report(reports, UNWATCHED);
    }
    // Closed when the worker dies.
    std::mem::forget(pidfd);
}

/// Writes a report, blocking while the pipe is full; one the master can no longer read is
/// dropped.
fn report(reports: BorrowedFd<'_>, pid: i32) {
    let bytes = pid.to_ne_bytes();
    while nix::unistd::write(reports, &bytes) == Err(Errno::EINTR) {}
}

#[cfg(test)]
mod tests {
    use super::{Reaper, Table, REQUEST_DELAY, WATCHED_FROM};
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::waitpid;
    use nix::unistd::{fork, ForkResult, Pid};
    use std::time::{Duration, Instant};

    /// A child that sleeps until it is killed.
    fn sleeper() -> Pid {
        // SAFETY: the child only calls pause, which is async-signal-safe, and never returns.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => loop {
                // SAFETY: pause has no preconditions.
                unsafe { libc::pause() };
            },
            ForkResult::Parent { child } => child,
        }
    }

    /// The pids `reaper` reports, until it has reported `count` or a deadline passed.
    fn reports(reaper: &mut Reaper, count: usize) -> Vec<Pid> {
        let mut dead = Table::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while dead.len() < count && Instant::now() < deadline {
            if let Some(mut fd) = reaper.poll_fd() {
                let _ = nix::poll::poll(std::slice::from_mut(&mut fd), 100u16);
            }
            reaper.dead(None, false, Instant::now(), &mut dead);
        }
        let mut dead = dead.to_vec();
        dead.sort_unstable();
        dead
    }

    #[test]
    fn the_watcher_names_every_death_of_a_burst() {
        let mut reaper = Reaper::new();
        let mut children: Vec<Pid> = (0..50).map(|_| sleeper()).collect();
        assert!(!reaper.watch_from(WATCHED_FROM - 1, Vec::new));
        assert!(reaper.watch_from(WATCHED_FROM, || children.clone()));
        for child in &children {
            kill(*child, Signal::SIGKILL).unwrap();
        }
        let dead = reports(&mut reaper, children.len());
        for child in &children {
            waitpid(*child, None).unwrap();
        }
        children.sort_unstable();
        assert_eq!(dead, children);
        assert!(reaper.newly_blind().is_none());
    }

    #[test]
    fn a_child_reaped_before_it_is_watched_is_named_at_once() {
        let mut reaper = Reaper::new();
        assert!(reaper.watch_from(WATCHED_FROM, Vec::new));
        let child = sleeper();
        kill(child, Signal::SIGKILL).unwrap();
        waitpid(child, None).unwrap();
        reaper.watch(child);
        reaper.flush(Instant::now() + REQUEST_DELAY);
        assert_eq!(reports(&mut reaper, 1), [child]);
    }
}
