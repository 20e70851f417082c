//! What the master reads from /proc: its own thread count and its children.

use nix::unistd::Pid;
use std::fs;

/// How many threads this process runs, or `None` when /proc cannot tell.
pub(crate) fn thread_count() -> Option<usize> {
    Some(fs::read_dir("/proc/self/task").ok()?.count())
}

/// The direct children of `parent`, a single-threaded process.
///
/// Reads `/proc/PID/task/PID/children` and, on kernels built without it, scans every process's
/// parent in /proc.
pub(crate) fn children(parent: Pid) -> Vec<Pid> {
    if let Ok(list) = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")) {
        return list
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .map(Pid::from_raw)
            .collect();
    }
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .map(Pid::from_raw)
        .filter(|pid| parent_of(*pid) == Some(parent))
        .collect()
}

fn parent_of(pid: Pid) -> Option<Pid> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces and parentheses: skip past the last one.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let ppid = after_name.split_whitespace().nth(1)?.parse().ok()?;
    Some(Pid::from_raw(ppid))
}
