//! What the master reads from /proc: its own thread count and its children.

use nix::unistd::Pid;
use std::fs;

/// How many threads this process runs, or `None` when /proc cannot tell.
pub(crate) fn thread_count() -> Option<usize> {
    Some(fs::read_dir("/proc/self/task").ok()?.count())
}

/// The direct children of this single-threaded process, or `None` when /proc cannot say.
///
/// /proc numbers processes in the PID namespace it was mounted for. When that is not this
/// process's namespace (a container that did not remount /proc), its pids would name other
/// processes here, so it is not used at all.
pub(crate) fn children() -> Option<Vec<Pid>> {
    let own = own_pid_in_proc()?;
    if own != Pid::this() {
        return None;
    }
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

fn own_pid_in_proc() -> Option<Pid> {
    stat_field("/proc/self/stat", 1).map(Pid::from_raw)
}

/// Field `number` of a /proc stat file, counted from 1 as in proc(5).
fn stat_field(path: &str, number: usize) -> Option<i32> {
    let stat = fs::read_to_string(path).ok()?;
    if number == 1 {
        return stat.split_whitespace().next()?.parse().ok();
    }
    // The command name, field 2, may hold spaces and parentheses: skip past the last one.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(number - 3)?.parse().ok()
}

fn parse_pids(list: &str) -> Vec<Pid> {
    list.split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .map(Pid::from_raw)
        .collect()
}
