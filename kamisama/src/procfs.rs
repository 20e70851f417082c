//! What the master reads from /proc: its own thread count, the largest pid, its children, and
//! a worker's memory.

use nix::unistd::Pid;
use std::fs;

/// How many threads this process runs, or `None` when /proc cannot tell.
pub(crate) fn thread_count() -> Option<usize> {
    // num_threads, field 20 of proc(5)'s stat.
    stat_field("/proc/self/stat", 20).and_then(|threads| usize::try_from(threads).ok())
}

/// The proportional set size of `pid`, in bytes (`Pss` in its `smaps_rollup`: its private
/// pages, and its share of those it shares), or `None` when /proc cannot tell.
pub(crate) fn proportional_set_size(pid: Pid) -> Option<u64> {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = rollup.lines().find(|line| line.starts_with("Pss:"))?;
    let kibibytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kibibytes.checked_mul(1024)
}

/// The resident memory of `pid` that is no file's (its heap, stacks and anonymous pages,
/// those it still shares with the master since its fork included), in bytes: `resident`
/// less `shared` in its `statm`, counters the kernel keeps, read without walking the
/// process's page tables as `smaps_rollup` does (a few microseconds, against tens).
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) fn resident_anonymous(pid: Pid) -> Option<u64> {
    use std::io::Read;
    // Read into the stack: open, read, close, and no more (`read_to_string` asks the file's
    // size first).
    let mut statm = fs::File::open(format!("/proc/{pid}/statm")).ok()?;
    let mut buffer = [0u8; 128];
    let read = statm.read(&mut buffer).ok()?;
    let mut pages = std::str::from_utf8(&buffer[..read])
        .ok()?
        .split(' ')
        .skip(1);
    let resident: u64 = pages.next()?.parse().ok()?;
    let shared: u64 = pages.next()?.parse().ok()?;
    // SAFETY: sysconf has no memory preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    resident
        .saturating_sub(shared)
        .checked_mul(u64::try_from(page).ok()?)
}

/// The largest pid the kernel hands out, or `None` when /proc cannot tell.
pub(crate) fn pid_max() -> Option<i32> {
    fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The direct children of this single-threaded process, numbered in its own PID namespace,
/// or `None` when /proc cannot say (not mounted, no file descriptor to spare, or mounted for a
/// namespace this process is not visible in).
///
/// /proc numbers processes in the PID namespace it was mounted for. A container that did not
/// remount it shows an ancestor namespace's /proc, whose pids name other processes here; each
/// child's `NSpid` line then gives its pid in every namespace from /proc's down to its own.
pub(crate) fn children() -> Option<Vec<Pid>> {
    let own = own_pid_in_proc()?;
    let listed = children_in_proc(own)?;
    if own == Pid::this() {
        return Some(listed);
    }
    let level = namespace_pids(own)?.len().checked_sub(1)?;
    listed
        .into_iter()
        .map(|pid| namespace_pids(pid)?.get(level).copied())
        .collect()
}

/// This process's pid as /proc numbers it.
fn own_pid_in_proc() -> Option<Pid> {
    stat_field("/proc/self/stat", 1).map(Pid::from_raw)
}

/// The children of `own` (a pid as /proc numbers it), as /proc numbers them.
fn children_in_proc(own: Pid) -> Option<Vec<Pid>> {
    if let Ok(list) = fs::read_to_string("/proc/thread-self/children") {
        return Some(parse_pids(&list));
    }
    // Kernels built without CONFIG_PROC_CHILDREN: scan every process's parent.
    let entries = fs::read_dir("/proc").ok()?;
    let children = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .map(Pid::from_raw)
        .filter(|pid| stat_field(&format!("/proc/{pid}/stat"), 4) == Some(own.as_raw()))
        .collect();
    Some(children)
}

/// The `NSpid` line of process `pid` (as /proc numbers it): its pid in each PID namespace
/// from /proc's own down to the process's.
fn namespace_pids(pid: Pid) -> Option<Vec<Pid>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))?;
    Some(parse_pids(line))
}

/// Where the kernel put this process's arguments and environment: `arg_start`, `arg_end`,
/// `env_start` and `env_end`, fields 48 to 51 of proc(5)'s stat (Linux 3.5 and later).
pub(crate) fn argument_memory() -> Option<[usize; 4]> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    let mut fields = after_name(&stat)?.split_whitespace().skip(48 - 3);
    let mut next = || fields.next()?.parse().ok();
    Some([next()?, next()?, next()?, next()?])
}

/// Field `number` of a /proc stat file, counted from 1 as in proc(5).
fn stat_field(path: &str, number: usize) -> Option<i32> {
    let stat = fs::read_to_string(path).ok()?;
    if number == 1 {
        return stat.split_whitespace().next()?.parse().ok();
    }
    after_name(&stat)?
        .split_whitespace()
        .nth(number - 3)?
        .parse()
        .ok()
}

/// What follows the command name, field 2, which may hold spaces and parentheses: the text
/// past the last one.
fn after_name(stat: &str) -> Option<&str> {
    Some(&stat[stat.rfind(')')? + 1..])
}

fn parse_pids(list: &str) -> Vec<Pid> {
    list.split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .map(Pid::from_raw)
        .collect()
}
