//! Which children died, found at a cost that does not grow with the fleet.
//!
//! SIGCHLD names the child whose death raised it, but signals of one kind coalesce: one
//! SIGCHLD may stand for several deaths, and only the first is named. Finding the others
//! takes a walk of the child list (`waitid(P_ALL)`), which the kernel does child by child: at
//! 10,000 workers a walk per death is most of what a master does. So a thread of the master,
//! the *watcher*, holds a pidfd for each worker and waits on them all with epoll: each death
//! is reported by pid, and reaped with `waitid(P_PID)`, which looks at one process.
//!
//! The pidfds live in the watcher's own file table (it unshares the master's), so that a fork
//! does not copy them to every worker, which would make each fork cost as much as the fleet
//! is large. Children nobody watches (orphans handed to the master) are found by a walk, for
//! a death whose SIGCHLD coalesced with another's: at once when a SIGCHLD names no death or a
//! report was lost; [`WALK_DELAY`] after the last walk when orphans are about (one died, or
//! a dead worker left some in its process group), as orphans come and go in numbers; and,
//! for one that no sign announced, at the first SIGCHLD [`QUIET_WALK`] after the last walk,
//! so that a walk costs a large fleet at most once per that much time, not once per death.
//! Below [`WATCHED_FROM`] workers, and without pidfds (a kernel before 5.3, a seccomp filter,
//! a descriptor limit that cannot be raised), every SIGCHLD is followed by a walk at once, as
//! in any tini-shaped master.
//!
//! # The watcher thread
//!
//! The master forks again on every respawn, and a fork from a process with threads leaves
//! the child every lock another thread held at that moment, held for ever. That is why the
//! master refuses to start when the program already runs threads of its own. The watcher is
//! the one exception, and holds no lock: once it has started, it makes raw system calls on
//! its own stack and touches no memory but its buffers and two atomics, so that wherever a
//! fork catches it, the child inherits nothing it could wait on.
//!
//! # The descriptor limit
//!
//! The watcher needs a descriptor per worker. When the soft limit on open files is lower than
//! the fleet needs, the master raises it to the hard limit, as Go's runtime and systemd do
//! for themselves, and puts it back in every process it forks ([`Inherited::restore`]), so
//! that a worker and what it runs see the limit they would have had.

use crate::event::Level;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::unistd::Pid;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long after the last walk of the child list the next one comes when orphans are about.
pub(super) const WALK_DELAY: Duration = Duration::from_millis(100);

/// How long after the last walk a SIGCHLD brings another, in a fleet whose deaths the
/// watcher reports: for an orphan's death that coalesced with a worker's, with no other sign.
pub(super) const QUIET_WALK: Duration = Duration::from_secs(10);

/// The fleet from which a watcher reports the deaths: below it, a walk of the child list
/// costs less than a thread does. A process with a second thread forks more slowly (the C
/// library takes its allocator's and its streams' locks around each fork, each lock a page
/// that the fork then makes the master copy: 18 page faults a respawn instead of 8), and a
/// walk costs about 60 ns a child: measured, the two cost the same at 1,000 workers, and the
/// thread half as much at 3,000. From 2,000, so that a fleet of 1,000 starts without a
/// thread to start beside its workers.
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
    /// Pids forked since the last flush, four bytes each.
    requests: Vec<u8>,
    /// Why the master cannot count on the watcher.
    blind: Option<Blind>,
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
}

impl Blind {
    /// How the log says it.
    pub(super) fn note(self) -> (Level, &'static str) {
        match self {
            // An old kernel, or a seccomp filter: nothing to act on.
            Blind::NoWatcher(_) => (Level::Info, "reaping-by-walking reason=no-pidfds"),
            Blind::Unwatched => (Level::Warn, "reaping-by-walking reason=descriptor-limit"),
        }
    }
}

/// The master's side of the watcher thread.
struct Watcher {
    /// Pids to watch, four bytes each; closing it ends the watcher.
    requests: Option<OwnedFd>,
    /// Pids of the dead, four bytes each.
    reports: OwnedFd,
    flags: Arc<Flags>,
    thread: Option<JoinHandle<()>>,
}

/// What the watcher tells the master besides the pids.
#[derive(Default)]
struct Flags {
    /// A worker could not be watched: its death may only be found by a walk.
    unwatched: AtomicBool,
    /// A report did not fit in the pipe: walk.
    lost: AtomicBool,
}

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
    fn dead(self) -> Option<Pid> {
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
            requests: Vec::new(),
            blind: None,
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
                self.requests.reserve(instances * 4);
                for pid in live() {
                    self.watch(pid);
                }
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

    /// Has the child `pid`, forked now, watched, once the master is about to block
    /// ([`flush`](Reaper::flush)).
    pub(super) fn watch(&mut self, pid: Pid) {
        if self.watcher.is_some() {
            self.requests.extend_from_slice(&pid.as_raw().to_ne_bytes());
        }
    }

    /// Hands the pids forked since the last call to the watcher, which then runs while the
    /// master sleeps. Run beside the master, it would make each page the master writes after
    /// a fork cost a TLB shootdown, an interrupt to the watcher's core, as the two threads
    /// share one address space.
    pub(super) fn flush(&mut self) {
        let Some((watcher, requests)) = self
            .watcher
            .as_ref()
            .and_then(|watcher| Some((watcher, watcher.requests.as_ref()?)))
        else {
            return;
        };
        // In writes a pipe takes whole; one that is full (a watcher 262,144 pids behind) or
        // broken leaves the rest unwatched.
        for chunk in self.requests.chunks(libc::PIPE_BUF) {
            if nix::unistd::write(requests, chunk) != Ok(chunk.len()) {
                watcher.flags.unwatched.store(true, Ordering::Relaxed);
                break;
            }
        }
        self.requests.clear();
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
        dead: &mut Vec<Pid>,
    ) -> bool {
        let mut walk = false;
        if let Some(watcher) = &self.watcher {
            walk |= watcher.read_reports(dead);
            if self.blind.is_none() && watcher.flags.unwatched.load(Ordering::Relaxed) {
                self.blind = Some(Blind::Unwatched);
            }
        }
        if let Some(sigchld) = sigchld {
            dead.extend(sigchld.dead());
            let quiet = self
                .walked
                .map_or(true, |walked| walked + QUIET_WALK <= now);
            let watching = self.watcher.is_some() && self.blind.is_none();
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
    /// watcher's thread ends as its field drops).
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
        let flags = Arc::new(Flags::default());
        let shared = Arc::clone(&flags);
        let requests_fd = requests_in.as_raw_fd();
        let reports_fd = reports_out.as_raw_fd();
        let thread = std::thread::Builder::new()
            .name("kamisama-reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || watch(requests_fd, reports_fd, &shared))
            .map_err(|error| Errno::from_raw(error.raw_os_error().unwrap_or(libc::EAGAIN)))?;
        // The watcher says once it has its own file table, with these two ends in it; the
        // master's copies then close, so that a closed pipe ends the other side.
        let mut started = [0u8; 1];
        set_blocking(&reports, true)?;
        let said = nix::unistd::read(&reports, &mut started);
        set_blocking(&reports, false)?;
        drop((requests_in, reports_out));
        if said != Ok(1) {
            let _ = thread.join();
            return Err(Errno::ECHILD);
        }
        Ok(Watcher {
            requests: Some(requests),
            reports,
            flags,
            thread: Some(thread),
        })
    }

    /// Reads the reports into `dead`; returns whether one was lost.
    fn read_reports(&self, dead: &mut Vec<Pid>) -> bool {
        let mut buffer = [0u8; 4096];
        loop {
            match nix::unistd::read(&self.reports, &mut buffer) {
                Ok(read) if read > 0 => {
                    let pids = buffer[..read].chunks_exact(4);
                    dead.extend(pids.map(|pid| {
                        Pid::from_raw(i32::from_ne_bytes([pid[0], pid[1], pid[2], pid[3]]))
                    }));
                }
                Err(Errno::EINTR) => {}
                _ => break,
            }
        }
        self.flags.lost.swap(false, Ordering::Relaxed)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // Closing the requests ends the watcher, whose file table, pidfds and all, goes with
        // it.
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
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

/// The watcher thread: takes pids to watch from `requests`, and writes each one to
/// `reports` once it has died. Ends when the master closes `requests`; one that ends
/// otherwise leaves every worker unwatched from then on, which the master learns. Raw
/// system calls and its stack only, once started (see the module's docs).
fn watch(requests: RawFd, reports: RawFd, flags: &Flags) {
    let all = nix::sys::signal::SigSet::all();
    let _ = all.thread_block();
    if serve(requests, reports, flags).is_err() {
        flags.unwatched.store(true, Ordering::Relaxed);
    }
}

fn serve(requests: RawFd, reports: RawFd, flags: &Flags) -> Result<(), Errno> {
    own_file_table(&[requests, reports])?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    // SAFETY: both descriptors are open for as long as this thread runs: the master's
    // copies are its own, and these are closed only here.
    let (requests, reports) = unsafe {
        (
            BorrowedFd::borrow_raw(requests),
            BorrowedFd::borrow_raw(reports),
        )
    };
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
                            start_watching(&epoll, Pid::from_raw(pid), reports, flags);
                        }
                    }
                    Err(Errno::EAGAIN | Errno::EINTR) => {}
                    Err(errno) => return Err(errno),
                }
                continue;
            }
            let (pidfd, pid) = ((event.data() >> 32) as RawFd, event.data() as u32 as i32);
            // SAFETY: a pidfd this thread opened and registered; closing it also takes it
            // out of the epoll set.
            unsafe { libc::close(pidfd) };
            report(reports, Pid::from_raw(pid), flags);
        }
    }
}

/// Gives the thread a file table of its own, for the pidfds, with only `keep` in it: the
/// copy of the master's that unsharing makes must not keep open what the master closes (a
/// listener, say).
fn own_file_table(keep: &[RawFd; 2]) -> Result<(), Errno> {
    // SAFETY: unshare with an integer flag; it affects this thread only.
    Errno::result(unsafe { libc::unshare(libc::CLONE_FILES) })?;
    let (low, high) = (keep[0].min(keep[1]), keep[0].max(keep[1]));
    let gaps = [(0, low - 1), (low + 1, high - 1), (high + 1, RawFd::MAX)];
    for (first, last) in gaps.into_iter().filter(|(first, last)| first <= last) {
        // SAFETY: close_range with integer arguments, on this thread's own table.
        unsafe { libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0) };
    }
    Ok(())
}

/// Watches `pid`: a pidfd in the epoll set, or a report at once when it has already been
/// reaped; a pid that cannot be watched is flagged.
fn start_watching(epoll: &Epoll, pid: Pid, reports: BorrowedFd<'_>, flags: &Flags) {
    let pidfd = match pidfd_open(pid) {
        Ok(pidfd) => pidfd,
        Err(Errno::ESRCH) => return report(reports, pid, flags),
        Err(_) => return flags.unwatched.store(true, Ordering::Relaxed),
    };
    let data = (pidfd.as_raw_fd() as u64) << 32 | u64::from(pid.as_raw() as u32);
    if epoll
        .add(&pidfd, EpollEvent::new(EpollFlags::EPOLLIN, data))
        .is_err()
    {
        return flags.unwatched.store(true, Ordering::Relaxed);
    }
    // Closed when the worker dies.
    std::mem::forget(pidfd);
}

fn report(reports: BorrowedFd<'_>, pid: Pid, flags: &Flags) {
    let bytes = pid.as_raw().to_ne_bytes();
    if nix::unistd::write(reports, &bytes) != Ok(bytes.len()) {
        flags.lost.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::{Reaper, WATCHED_FROM};
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
        let mut dead = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while dead.len() < count && Instant::now() < deadline {
            if let Some(mut fd) = reaper.poll_fd() {
                let _ = nix::poll::poll(std::slice::from_mut(&mut fd), 100u16);
            }
            reaper.dead(None, false, Instant::now(), &mut dead);
        }
        dead.sort_unstable();
        dead
    }

    #[test]
    fn the_watcher_names_every_death_of_a_burst() {
        let mut reaper = Reaper::new();
        let mut children: Vec<Pid> = (0..50).map(|_| sleeper()).collect();
        assert!(!reaper.watch_from(WATCHED_FROM - 1, Vec::new));
        assert!(reaper.watch_from(WATCHED_FROM, || children.clone()));
        reaper.flush();
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
        reaper.flush();
        assert_eq!(reports(&mut reaper, 1), [child]);
    }
}
