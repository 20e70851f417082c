//! Which processes belong to the fleet and how to stop them.
//!
//! The fleet is every descendant of the master. Workers are its direct children, each leading
//! a process group that its own subprocesses share unless they leave it. Everything else
//! reaches the master as an orphan: the master is a child subreaper, so a process whose parent
//! dies is handed to it, whatever session or group it is in. The kernel says nothing when that
//! happens, so during a shutdown the master *sweeps*: it lists its children and signals each
//! one that is not a worker, at the start, whenever a death may have handed it new orphans,
//! and on a short tick. A shutdown ends when `waitid` says no child is left: every
//! descendant is then gone, as a descendant whose parent dies becomes the master's child
//! before that death is reported.

use crate::event::ExitStatus;
use crate::procfs;
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{getpgid, Pid};
use std::time::{Duration, Instant};

/// How hard a process has been asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Stop {
    /// SIGTERM, followed by SIGCONT so that a stopped process acts on it.
    Term,
    Kill,
}

impl Stop {
    fn signals(self) -> &'static [Signal] {
        match self {
            Stop::Term => &[Signal::SIGTERM, Signal::SIGCONT],
            Stop::Kill => &[Signal::SIGKILL],
        }
    }
}

/// The adopted orphans signalled during a shutdown, and how the master finds its children.
pub(super) struct Orphans {
    /// Each orphan signalled and how hard, until it is reaped (only then can its pid be
    /// reused, as it is the master's child).
    signalled: Vec<(Pid, Stop)>,
    /// The largest pid, for listing the children without /proc.
    pid_max: i32,
    /// The shortest time between two sweeps on the tick.
    tick: Duration,
}

/// How often a shutdown sweeps for orphans that arrived without a death of the master's own
/// children to tell of them (a grandchild's parent dying, say).
const SWEEP_TICK: Duration = Duration::from_millis(100);

impl Orphans {
    pub(super) fn new(pid_max: i32) -> Self {
        Orphans {
            signalled: Vec::new(),
            pid_max,
            tick: SWEEP_TICK,
        }
    }

    /// Sends `stop` to every child that `is_worker` does not claim and that has not had it
    /// yet. Returns when the next sweep on the tick is due: a sweep that had to scan every
    /// pid (no /proc) spaces out the next ones, to keep the scan under a tenth of the time.
    pub(super) fn sweep(&mut self, stop: Stop, is_worker: impl Fn(Pid) -> bool) -> Instant {
        let started = Instant::now();
        for pid in children(self.pid_max) {
            if is_worker(pid) {
                continue;
            }
            let had = self.signalled.iter_mut().find(|(orphan, _)| *orphan == pid);
            match had {
                Some((_, had)) if *had >= stop => continue,
                Some((_, had)) => *had = stop,
                None => self.signalled.push((pid, stop)),
            }
            for signal in stop.signals() {
                let _ = kill(pid, *signal);
            }
        }
        let now = Instant::now();
        self.tick = SWEEP_TICK.max((now - started) * 10);
        now + self.tick
    }

    /// Whether `spare` is the master's only child.
    pub(super) fn only_child_left(&self, spare: Pid) -> bool {
        children(self.pid_max).iter().all(|pid| *pid == spare)
    }

    /// Forgets a reaped child.
    pub(super) fn reaped(&mut self, pid: Pid) {
        self.signalled.retain(|(orphan, _)| *orphan != pid);
    }
}

/// Sends `stop` to the process group the worker `pid` leads, and to the worker itself if it
/// has left that group. Returns whether the worker got it.
///
/// The group holds the worker's subprocesses, which a stop must reach too. A worker that
/// moved to another group is signalled alone: that group is not the fleet's to stop. So is a
/// worker just forked, which has not made its group yet.
pub(super) fn stop_worker(pid: Pid, stop: Stop) -> bool {
    let mut to_group = true;
    for signal in stop.signals() {
        to_group &= killpg(pid, *signal).is_ok();
    }
    // Asked after the group was signalled: a worker still in it has had the signals.
    if to_group && getpgid(Some(pid)) == Ok(pid) {
        return true;
    }
    let mut to_worker = true;
    for signal in stop.signals() {
        to_worker &= kill(pid, *signal).is_ok();
    }
    to_worker
}

/// What dead workers left in their process groups: it gets SIGTERM once its worker is reaped,
/// and SIGKILL if it is still there at its deadline, as a stopping worker would.
#[derive(Default)]
pub(super) struct Leftovers {
    /// Each group that was not empty, with its deadline, soonest first.
    groups: Vec<(Pid, Instant)>,
}

impl Leftovers {
    /// Sends SIGTERM to what the worker `worker`, reaped now, left in its process group, and
    /// remembers the group until `kill_at` if anything was. Returns whether anything was.
    ///
    /// One signal asks and tells at once: a group id is not given to another process while a
    /// member has it, so a group that still holds anything is the worker's; one with no
    /// member left is no group (`ESRCH`). Its id, the worker's pid, could only name another
    /// group were the pid given to a new process that made a group of its own in between,
    /// which would take the kernel's whole range of pids (`pid_max`) going round meanwhile.
    pub(super) fn worker_reaped(&mut self, worker: Pid, kill_at: Option<Instant>) -> bool {
        let left = killpg(worker, Signal::SIGTERM).is_ok();
        if let (true, Some(kill_at)) = (left, kill_at) {
            let at = self.groups.partition_point(|(_, at)| *at <= kill_at);
            self.groups.insert(at, (worker, kill_at));
        }
        left
    }

    /// The next deadline.
    pub(super) fn next(&self) -> Option<Instant> {
        self.groups.first().map(|(_, at)| *at)
    }

    /// Sends SIGKILL to each group whose deadline has passed, if it still holds one of the
    /// master's children: such a child, not yet reaped, keeps the group's id from naming any
    /// other group.
    pub(super) fn kill_overdue(&mut self, now: Instant, orphans: &Orphans) {
        let due = self.groups.partition_point(|(_, at)| *at <= now);
        if due == 0 {
            return;
        }
        let children = children(orphans.pid_max);
        for (group, _) in self.groups.drain(..due) {
            if children
                .iter()
                .any(|child| getpgid(Some(*child)) == Ok(group))
            {
                let _ = killpg(group, Signal::SIGKILL);
            }
        }
    }
}

/// The pid of a child that has exited, left a zombie (`WNOWAIT`); `None` if children remain
/// and none has exited; `ECHILD` when no child is left.
pub(super) fn peek_exited() -> Result<Option<Pid>, Errno> {
    peek(libc::P_ALL, 0)
}

/// Whether the child `pid` is stopped (SIGSTOP, or a stop signal's default action). Asked
/// without taking the stop's report, so that it answers the same until the child is
/// continued; one process, not the child list, is looked at.
pub(super) fn is_stopped(pid: Pid) -> bool {
    let flags = libc::WSTOPPED | libc::WNOHANG | libc::WNOWAIT;
    matches!(
        wait_id(libc::P_PID, pid.as_raw() as libc::id_t, flags),
        Ok(Some(_))
    )
}

/// Whether any child is left, exited or not.
pub(super) fn has_children() -> bool {
    peek_exited() != Err(Errno::ECHILD)
}

fn peek(id_type: libc::idtype_t, id: libc::id_t) -> Result<Option<Pid>, Errno> {
    wait_id(id_type, id, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
}

/// `waitid` with `flags` (which hold `WNOHANG`): the pid of the child it reported, if any.
fn wait_id(
    id_type: libc::idtype_t,
    id: libc::id_t,
    flags: libc::c_int,
) -> Result<Option<Pid>, Errno> {
    // SAFETY: a zeroed siginfo is a valid out-parameter for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `info` is valid for the call.
        match Errno::result(unsafe { libc::waitid(id_type, id, &mut info, flags) }) {
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno),
            Ok(_) => break,
        }
    }
    // SAFETY: waitid filled `info` for a child, or left si_pid zero.
    let pid = unsafe { info.si_pid() };
    Ok((pid != 0).then(|| Pid::from_raw(pid)))
}

/// Reaps the child `pid`, waiting for it to exit. Decoded here rather than by nix, whose
/// `WaitStatus` cannot hold a real-time signal: a worker killed by one would be reaped and
/// then lost.
pub(super) fn reap(pid: Pid) -> Result<ExitStatus, Errno> {
    wait_pid(pid, 0).map(|status| status.expect("a wait without WNOHANG has a status"))
}

/// Reaps the child `pid` if it has exited; `None` if it has not (it runs, or is stopped).
pub(super) fn reap_exited(pid: Pid) -> Result<Option<ExitStatus>, Errno> {
    wait_pid(pid, libc::WNOHANG)
}

fn wait_pid(pid: Pid, flags: libc::c_int) -> Result<Option<ExitStatus>, Errno> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is valid for the call.
        match Errno::result(unsafe { libc::waitpid(pid.as_raw(), &mut status, flags) }) {
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno),
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(ExitStatus::from_raw(status))),
        }
    }
}

/// The master's children, from /proc when it can say, else by asking `waitid` about every
/// pid up to `pid_max`: it needs no file descriptor and no /proc, and answers `ECHILD` for a
/// pid that is not a child.
fn children(pid_max: i32) -> Vec<Pid> {
    procfs::children().unwrap_or_else(|| {
        (1..=pid_max)
            .map(Pid::from_raw)
            .filter(|pid| peek(libc::P_PID, pid.as_raw() as libc::id_t).is_ok())
            .collect()
    })
}
