//! The test harness: start a binary built with `#[kamisama::main]` as a real process, talk to it
//! only through signals, /proc and its output, and leave nothing behind.
//!
//! Every process a test starts carries a unique `KAMISAMA_TEST_TREE` variable in its
//! environment, which its workers and their subprocesses inherit. That finds the whole tree in
//! /proc even after the master dies and its children are re-parented, and the guard kills all
//! of it when the test ends, passed or failed. The test process is a child subreaper, so those
//! orphans come back to it and are reaped rather than left as zombies.

#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]

pub mod bench;
pub mod deployment;
pub mod load;
pub mod metrics;

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, PoisonError};
use std::time::{Duration, Instant};
use std::{fs, thread};

/// How long any awaited condition may take before the test fails: 20 seconds, generous, as
/// CI machines are shared and slow and a passing test never waits this long.
/// `KAMISAMA_TEST_DEADLINE` (in seconds) shortens it for a mutation run, where most mutants
/// fail by waiting it out.
pub fn deadline() -> Duration {
    static DEADLINE: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *DEADLINE.get_or_init(|| {
        let seconds = std::env::var("KAMISAMA_TEST_DEADLINE").ok();
        Duration::from_secs(seconds.and_then(|s| s.parse().ok()).unwrap_or(20))
    })
}

const TREE_VAR: &str = "KAMISAMA_TEST_TREE";

/// A running master, and everything it started.
pub struct Master {
    /// The master, or the program it runs under (such as `unshare`).
    child: Child,
    pid: Pid,
    tree: Tree,
    output: Arc<Output>,
    status: Option<ExitStatus>,
}

/// What to start: a binary from this package, with its environment.
pub struct Launch {
    command: Command,
    /// A socket to hand to the master as descriptor 3, as systemd's socket activation does.
    socket: Option<std::os::fd::RawFd>,
    /// The master's executable, when it runs under a wrapper such as `unshare`.
    wrapped: Option<std::path::PathBuf>,
}

impl Launch {
    /// Sets an environment variable for the master (and so its workers).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.command.env(key, value);
        self
    }

    /// Leaves an environment variable unset for the master.
    pub fn env_remove(mut self, key: &str) -> Self {
        self.command.env_remove(key);
        self
    }

    /// Hands `socket` to the master as descriptor 3, with `LISTEN_FDS=1` (the master's
    /// `LISTEN_PID` must come from a wrapper that knows its pid, such as
    /// `sh -c 'LISTEN_PID=$$ exec "$0"'`).
    pub fn socket(mut self, socket: &impl std::os::fd::AsRawFd) -> Self {
        self.socket = Some(socket.as_raw_fd());
        self.command.env("LISTEN_FDS", "1");
        self
    }

    /// Starts the master in `dir`, where a relative program path is found too.
    pub fn current_dir(mut self, dir: &std::path::Path) -> Self {
        self.command.current_dir(dir);
        self
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, arg: &str) -> Self {
        self.command.arg(arg);
        self
    }

    /// Puts the master in a process group of its own, as a shell does with a foreground job.
    pub fn own_process_group(mut self) -> Self {
        self.command.process_group(0);
        self
    }

    /// Starts the master with `signals` ignored, as `nohup` does for SIGHUP: an ignored
    /// disposition survives exec.
    pub fn ignoring(mut self, signals: &[Signal]) -> Self {
        let signals = signals.to_vec();
        // SAFETY: signal(2) is async-signal-safe, as code between fork and exec must be.
        unsafe {
            self.command.pre_exec(move || {
                for signal in &signals {
                    libc::signal(*signal as libc::c_int, libc::SIG_IGN);
                }
                Ok(())
            });
        }
        self
    }

    /// Starts the master inside the cgroup whose `cgroup.procs` file is `procs`.
    pub fn in_cgroup(mut self, procs: &std::path::Path) -> Self {
        let procs = std::ffi::CString::new(procs.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: open, getpid, write and close are async-signal-safe, and nothing here
        // allocates, as code between fork and exec in a threaded process must not.
        unsafe {
            self.command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut digits = [0u8; 20];
                let mut at = digits.len();
                let mut pid = libc::getpid() as u32;
                loop {
                    at -= 1;
                    digits[at] = b'0' + (pid % 10) as u8;
                    pid /= 10;
                    if pid == 0 {
                        break;
                    }
                }
                let written = libc::write(fd, digits[at..].as_ptr().cast(), digits.len() - at);
                libc::close(fd);
                if written < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self
    }

    /// Starts the master.
    pub fn start(mut self) -> Master {
        become_subreaper();
        let tree = Tree::new();
        let socket = self.socket;
        // SAFETY: setrlimit, close_range and dup2 are async-signal-safe, as code between fork
        // and exec must be.
        unsafe {
            self.command.pre_exec(move || {
                // Crashing workers must not leave core files behind.
                let none = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &none);
                // Nothing of the test process (cargo's jobserver pipes) leaks into the master.
                libc::syscall(
                    libc::SYS_close_range,
                    3,
                    libc::c_uint::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                // A copy at 3 has no close-on-exec: the master gets it. (Already at 3, it
                // only needs the flag cleared.)
                if let Some(socket) = socket {
                    let at_three = if socket == 3 {
                        libc::fcntl(3, libc::F_SETFD, 0)
                    } else {
                        libc::dup2(socket, 3)
                    };
                    if at_three < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        tree.mark(&mut self.command);
        self.command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A program just written (a deployment's) is busy while a child that another test
        // forked in the meantime still holds the descriptor it was written through, until
        // that child's exec closes it: ETXTBSY, which passes in microseconds.
        let spawned = poll_until(|| {
            let mut adopted = adopted();
            match self.command.spawn() {
                Err(error) if error.raw_os_error() == Some(libc::ETXTBSY) => None,
                spawned => {
                    if let Ok(child) = &spawned {
                        adopted.std_children.insert(child.id() as i32);
                    }
                    Some(spawned)
                }
            }
        });
        let mut child = spawned
            .expect("a program still busy at the deadline")
            .expect("start the master");
        let output = Arc::new(Output::default());
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        output.collect(stdout);
        output.collect(stderr);
        let pid = Pid::from_raw(child.id() as i32);
        let mut master = Master {
            child,
            pid,
            tree,
            output,
            status: None,
        };
        if let Some(binary) = &self.wrapped {
            // The first process of the tree to run the binary: its workers run it too.
            let runs_binary = |pid: &Pid| {
                fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == *binary)
            };
            // A wrapper that execs the binary, and a master that exits at once, leave the
            // started process as the master.
            let started = master.pid;
            master.pid = master.wait_until("the wrapped master to start", || {
                let tree = master.tree();
                let found = tree
                    .iter()
                    .copied()
                    .filter(runs_binary)
                    .find(|pid| !parent_of(*pid).is_some_and(|parent| runs_binary(&parent)));
                found.or_else(|| (!is_alive(started)).then_some(started))
            });
        }
        master
    }
}

impl Master {
    /// Prepares to start `binary` (a `CARGO_BIN_EXE_*` path) with no `KAMISAMA_*` setting
    /// inherited from the test's own environment, but for an upgrade's trial of a second:
    /// the default, ten seconds, would hold every test that upgrades for that long
    /// (`env_remove("KAMISAMA_UPGRADE_TRIAL")` runs the default).
    pub fn launch(binary: &str) -> Launch {
        let mut command = Command::new(binary);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("KAMISAMA_") {
                command.env_remove(key);
            }
        }
        command.env("KAMISAMA_UPGRADE_TRIAL", "1");
        Launch {
            command,
            socket: None,
            wrapped: None,
        }
    }

    /// Prepares to start `binary` under `wrapper`, a program such as `unshare --pid --fork`
    /// or `prlimit` that runs the command line it is given. The master is then the first
    /// process of the tree that runs `binary`.
    pub fn launch_under(wrapper: &[&str], binary: &str) -> Launch {
        let mut launch = Master::launch(wrapper[0]);
        launch.command.args(&wrapper[1..]).arg(binary);
        launch.wrapped = Some(fs::canonicalize(binary).expect("the fixture binary"));
        launch
    }

    /// The master's pid, as this test process sees it.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Sends `signal` to the master.
    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal the master");
    }

    /// Ends the master's shutdown at once: TERM, then, once the master has acted on it, a
    /// second TERM that kills what is left. (Two signals sent back to back would coalesce.)
    pub fn shut_down_now(&self) {
        self.signal(Signal::SIGTERM);
        self.wait_for_line("shutdown-started");
        self.signal(Signal::SIGTERM);
    }

    /// Sends `signal` to the master's process group, as a terminal does for Ctrl-C.
    pub fn signal_group(&self, signal: Signal) {
        killpg(self.pid(), signal).expect("signal the master's process group");
    }

    /// Every line written so far to stdout and stderr, workers' and master's, in arrival order.
    pub fn transcript(&self) -> String {
        self.output.lines().join("\n")
    }

    /// Waits for the first line containing `needle` and returns it.
    pub fn wait_for_line(&self, needle: &str) -> String {
        self.wait_for_lines(needle, 1).remove(0)
    }

    /// Waits until `count` lines contain `needle`, and returns the first `count`.
    pub fn wait_for_lines(&self, needle: &str, count: usize) -> Vec<String> {
        let found = self.output.wait_until(deadline(), |lines| {
            let matching: Vec<String> = lines
                .iter()
                .filter(|line| line.contains(needle))
                .take(count)
                .cloned()
                .collect();
            (matching.len() == count).then_some(matching)
        });
        found.unwrap_or_else(|| {
            panic!(
                "no {count} lines containing {needle:?} within {:?}; output:\n{}",
                deadline(),
                self.transcript()
            )
        })
    }

    /// How many lines written so far contain `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.output
            .lines()
            .iter()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// Asserts that exactly `count` lines written so far contain `needle`; a failure shows
    /// the whole transcript.
    #[track_caller]
    pub fn expect_lines(&self, needle: &str, count: usize) {
        let counted = self.count_lines(needle);
        assert_eq!(counted, count, "{needle:?} in:\n{}", self.transcript());
    }

    /// How many workers the master wants now, from its last `started` or `scaled-*` line.
    pub fn instances_asked(&self) -> usize {
        self.transcript()
            .lines()
            .filter(|line| {
                line.contains("]: started ")
                    || line.contains("]: scaled-up ")
                    || line.contains("]: scaled-down ")
            })
            .filter_map(|line| field(line, "instances")?.parse().ok())
            .next_back()
            .expect("a started line")
    }

    /// The master's live children but its reaper, each with the index it reported on
    /// starting (`None` until it has), read from /proc and the workers' `worker-started`
    /// lines.
    pub fn children(&self) -> Vec<(Pid, Option<usize>)> {
        let started = self.started_workers();
        let reaper = reaper_of(self.pid());
        children_of(self.pid())
            .into_iter()
            .filter(|pid| is_alive(*pid) && Some(*pid) != reaper)
            .map(|pid| (pid, started.get(&pid).copied()))
            .collect()
    }

    /// The workers now, by index, if the master's live children are workers with the dense
    /// indices `0..n`, each once, every one of them having reported its index.
    pub fn workers(&self) -> Option<BTreeMap<usize, Pid>> {
        let children = self.children();
        let workers: BTreeMap<usize, Pid> = children
            .iter()
            .map(|(pid, index)| Some(((*index)?, *pid)))
            .collect::<Option<_>>()?;
        let dense = workers.keys().copied().eq(0..workers.len());
        (workers.len() == children.len() && dense).then_some(workers)
    }

    /// Waits until the master's live children are exactly `instances` workers with indices
    /// `0..instances`, each once, and returns their pids by index.
    pub fn wait_for_workers(&self, instances: usize) -> BTreeMap<usize, Pid> {
        self.wait_until(
            &format!("{instances} workers with indices 0..{instances}"),
            || self.workers().filter(|workers| workers.len() == instances),
        )
    }

    /// Polls `condition` until it returns `Some`, or fails the test at the deadline, saying
    /// what it waited for and what the master printed.
    pub fn wait_until<T>(&self, what: &str, condition: impl FnMut() -> Option<T>) -> T {
        poll_until(condition).unwrap_or_else(|| {
            panic!(
                "waited {:?} for {what}; children: {:?}; output:\n{}",
                deadline(),
                self.children(),
                self.transcript()
            )
        })
    }

    /// How many times the master has been switched out, voluntarily or not: each time it
    /// woke up and blocked again counts.
    pub fn context_switches(&self) -> u64 {
        context_switches(self.pid()).expect("the master's /proc status")
    }

    /// Waits until the master is asleep, blocked in its `poll`, done with what it was doing,
    /// and so is its reaper, if it has one.
    pub fn wait_until_blocked(&self) {
        let pid = self.pid();
        self.wait_until("the master to block", || {
            let reaper = reaper_of(pid);
            let asleep = all_threads_asleep(pid) && reaper.into_iter().all(all_threads_asleep);
            asleep.then_some(())
        });
    }

    /// Waits for the master (or the program it runs under) to exit and returns its status,
    /// once everything the master and its workers wrote has been read.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let closed = self.status.is_some();
        let status = self.wait_exit_alone();
        if !closed {
            // The pipes close when the last worker is gone too; then the output is complete.
            // A worker that outlives its master fails the test elsewhere, not here.
            self.output.wait_closed(deadline());
        }
        status
    }

    /// Waits for the master (or the program it runs under) to exit and returns its status,
    /// while others may still write to its output: the new master of an upgrade, which
    /// inherited it.
    pub fn wait_exit_alone(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let child = &mut self.child;
        let status = poll_until(|| child.try_wait().expect("wait for the master"));
        let status = status.unwrap_or_else(|| {
            panic!(
                "the master did not exit within {:?}; output:\n{}",
                deadline(),
                self.transcript()
            )
        });
        self.status = Some(status);
        adopted().std_children.remove(&(self.child.id() as i32));
        status
    }

    /// Waits for the master to exit with `code`.
    pub fn expect_exit_code(&mut self, code: i32) {
        let status = self.wait_exit();
        assert_eq!(
            status.code(),
            Some(code),
            "master ended with {status:?}; output:\n{}",
            self.transcript()
        );
    }

    /// Live processes of this test's tree: the master, its workers, their subprocesses,
    /// wherever they were re-parented.
    pub fn tree(&self) -> Vec<Pid> {
        self.tree.live()
    }

    /// Waits until no process of this test's tree is alive.
    pub fn expect_tree_gone(&self) {
        self.wait_until("every process of the tree to be gone", || {
            self.tree().is_empty().then_some(())
        });
    }

    /// Every `worker-started` line so far, as pid to index.
    fn started_workers(&self) -> BTreeMap<Pid, usize> {
        self.output
            .lines()
            .iter()
            .filter_map(|line| parse_started(line))
            .map(|(index, pid)| (pid, index))
            .collect()
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.tree.kill();
        let _ = self.child.kill();
        let _ = self.child.wait();
        adopted().std_children.remove(&(self.child.id() as i32));
        // Orphans re-parented to this process are its children now: reap their zombies.
        reap_adopted();
    }
}

/// An empty directory of the calling test's own, named `name`, under cargo's scratch
/// directory for integration tests.
#[macro_export]
macro_rules! scratch {
    ($name:expr) => {
        $crate::empty_dir(::std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join($name))
    };
}

/// Empties `dir` (making it if need be), and returns it.
pub fn empty_dir(dir: std::path::PathBuf) -> std::path::PathBuf {
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// Parses a fixture's `worker-started index=I pid=P` line (which may follow a partial line
/// of other output).
pub fn parse_started(line: &str) -> Option<(usize, Pid)> {
    let rest = &line[line.find("worker-started ")?..];
    let mut index = None;
    let mut pid = None;
    for word in rest.split_whitespace() {
        if let Some(value) = word.strip_prefix("index=") {
            index = value.parse().ok();
        } else if let Some(value) = word.strip_prefix("pid=") {
            pid = value.parse().ok().map(Pid::from_raw);
        }
    }
    Some((index?, pid?))
}

/// What a program a worker ran inherited, as the `inherited` fixture reports it.
#[derive(Debug)]
pub struct Inherited {
    /// The worker that ran it.
    pub by: Pid,
    /// The descriptors it had open at start.
    pub fds: Vec<i32>,
    /// The names of its environment variables.
    pub vars: Vec<String>,
}

/// The variables kamisama passes to itself, or that a service manager addresses to the
/// master: no program a worker runs may see one.
pub const MASTERS_VARIABLES: [&str; 7] = [
    "KAMISAMA_UPGRADE",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

impl Inherited {
    /// Parses an `inherited by=PID fds=0,1,2 vars=A,B` line.
    pub fn parse(line: &str) -> Option<Inherited> {
        let list =
            |key| field(line, key).map(|list| list.split(',').filter(|item| !item.is_empty()));
        Some(Inherited {
            by: Pid::from_raw(field(line, "by")?.parse().ok()?),
            fds: list("fds")?
                .map(|fd| fd.parse().ok())
                .collect::<Option<_>>()?,
            vars: list("vars")?.map(str::to_owned).collect(),
        })
    }

    /// Fails the test unless only 0, 1 and 2 were inherited, and none of
    /// [`MASTERS_VARIABLES`].
    #[track_caller]
    pub fn assert_clean(&self) {
        assert_eq!(
            self.fds,
            [0, 1, 2],
            "descriptors a program of {} inherited",
            self.by
        );
        let leaked: Vec<&String> = self
            .vars
            .iter()
            // By name: `KAMISAMA_UPGRADE_TRIAL`, a setting the user gave, is no upgrade's.
            .filter(|var| MASTERS_VARIABLES.contains(&var.as_str()))
            .collect();
        assert!(
            leaked.is_empty(),
            "{leaked:?} inherited by a program of {}",
            self.by
        );
    }
}

/// The value of `key=` in `line`, such as the pid in `spawned index=0 pid=42`.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// Polls `condition` every few milliseconds until it returns `Some` or the [`deadline`] passes.
pub fn poll_until<T>(mut condition: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + deadline();
    loop {
        if let Some(value) = condition() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// A process's one-letter state from /proc (`S`, `R`, `Z`...), or `None` once it is gone.
pub fn state(pid: Pid) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Whether every thread of `pid` is asleep (state `S`).
pub fn all_threads_asleep(pid: Pid) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        let stat = fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        stat.rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().next())
            == Some("S")
    })
}

/// How many times the threads of `pid` went to sleep (their voluntary context switches).
pub fn thread_sleeps(pid: Pid) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let status = fs::read_to_string(task.path().join("status")).ok()?;
            let line = status
                .lines()
                .find(|line| line.starts_with("voluntary_ctxt_switches:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// Whether `pid` is a process that has not died (a zombie has).
pub fn is_alive(pid: Pid) -> bool {
    matches!(state(pid), Some(state) if state != 'Z' && state != 'X')
}

/// The parent of `pid`, from /proc.
pub fn parent_of(pid: Pid) -> Option<Pid> {
    stat_field(pid, 4).map(Pid::from_raw)
}

/// The process group of `pid`, from /proc.
pub fn process_group_of(pid: Pid) -> Option<Pid> {
    stat_field(pid, 5).map(Pid::from_raw)
}

/// A numeric field of /proc/PID/stat, counted from 1 as in proc(5).
fn stat_field(pid: Pid, number: usize) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields 1 and 2 are the pid and the parenthesized name.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace()
        .nth(number.checked_sub(3)?)?
        .parse()
        .ok()
}

/// The reaper process of the master `pid`, which a fleet of 2,000 workers or more has: the
/// child named `kamisama-reaper`.
pub fn reaper_of(pid: Pid) -> Option<Pid> {
    children_of(pid).into_iter().find(|child| {
        fs::read_to_string(format!("/proc/{child}/comm"))
            .is_ok_and(|comm| comm.trim_end() == "kamisama-reaper")
    })
}

/// The direct children of `pid`, zombies included.
pub fn children_of(pid: Pid) -> Vec<Pid> {
    let list = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    list.split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .map(Pid::from_raw)
        .collect()
}

/// How many times every thread of the process `pid` has been switched out, voluntarily or
/// not: each wakeup of a thread that then blocks again counts one.
pub fn context_switches(pid: Pid) -> Option<u64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut switches = 0;
    for task in tasks {
        let status = fs::read_to_string(task.ok()?.path().join("status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find_map(|line| line.strip_prefix(name))?;
            line.strip_prefix(':')?.trim().parse().ok()
        };
        switches += field("voluntary_ctxt_switches")? + field("nonvoluntary_ctxt_switches")?;
    }
    Some(switches)
}

/// A line of `/proc/PID/status`, such as `VmRSS`, as a number.
pub fn status_field(pid: Pid, name: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Waits for an adopted orphan (a child of this test process since its parent died) to exit,
/// and returns how it ended.
pub fn reap_orphan(pid: Pid) -> WaitStatus {
    poll_until(|| {
        reap_adopted();
        adopted().reaped.remove(&pid.as_raw())
    })
    .unwrap_or_else(|| panic!("{pid} did not exit within {:?}", deadline()))
}

/// Runs `command` to its end with `input` on its stdin, and returns what it wrote: a child
/// std waits for, listed as such while it runs, so that [`reap_adopted`], run by any test at
/// any moment, leaves it alone.
pub fn run_probe(command: &mut std::process::Command, input: &[u8]) -> std::process::Output {
    use std::process::Stdio;
    let mut child = {
        let mut adopted = adopted();
        let child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("run {command:?}: {error}"));
        adopted.std_children.insert(child.id() as i32);
        child
    };
    let mut stdin = child.stdin.take().expect("a piped stdin");
    let input = input.to_vec();
    // Beside the reads: a child that writes as it reads would otherwise fill its pipe.
    let writer = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut stdin, &input);
    });
    let id = child.id() as i32;
    let output = child.wait_with_output();
    let _ = writer.join();
    adopted().std_children.remove(&id);
    output.unwrap_or_else(|error| panic!("wait for {command:?}: {error}"))
}

/// Every adopted orphan reaped so far and not yet claimed by [`reap_orphan`], with how it
/// ended; claims them all.
pub fn take_reaped_orphans() -> BTreeMap<Pid, WaitStatus> {
    reap_adopted();
    std::mem::take(&mut adopted().reaped)
        .into_iter()
        .map(|(pid, status)| (Pid::from_raw(pid), status))
        .collect()
}

/// The children of this test process that std does not wait for: orphans it adopted as a
/// subreaper. The masters the harness started, and the probes it runs, are std's to wait
/// for; reaping one of them behind std's back would lose its status, so they are listed
/// here while they run, and started under the same lock.
struct Adopted {
    std_children: BTreeSet<i32>,
    /// How each orphan reaped so far ended, for [`reap_orphan`].
    reaped: BTreeMap<i32, WaitStatus>,
}

static ADOPTED: Mutex<Adopted> = Mutex::new(Adopted {
    std_children: BTreeSet::new(),
    reaped: BTreeMap::new(),
});

fn adopted() -> MutexGuard<'static, Adopted> {
    ADOPTED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reaps every adopted orphan that has exited, whichever test's it was, keeping how it ended,
/// so that no zombie outlives the test that made it.
pub fn reap_adopted() {
    let mut adopted = adopted();
    let own = Pid::this();
    let tasks = fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten();
    let children: Vec<Pid> = tasks
        .filter_map(|task| task.file_name().to_str()?.parse().ok())
        .flat_map(|task: i32| {
            let list = fs::read_to_string(format!("/proc/{own}/task/{task}/children"));
            let list = list.unwrap_or_default();
            list.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .map(Pid::from_raw)
                .collect::<Vec<_>>()
        })
        .collect();
    for pid in children {
        if adopted.std_children.contains(&pid.as_raw()) || state(pid) != Some('Z') {
            continue;
        }
        if let Ok(status) = waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            if status != WaitStatus::StillAlive {
                adopted.reaped.insert(pid.as_raw(), status);
            }
        }
    }
}

/// Describes an exit status for assertions: `code 0`, `signal SIGTERM`.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("code {code}"),
        (None, Some(signal)) => Signal::try_from(signal)
            .map_or(format!("signal {signal}"), |signal| {
                format!("signal {signal}")
            }),
        _ => format!("{status:?}"),
    }
}

/// Says on the test binary's own stderr, past the test harness's capture, that `test` did not
/// run and why, so that a machine that cannot run it shows it in CI's output.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let line = format!("skipped: {test}: {why}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Whether this machine lets a test create a PID namespace (util-linux's `unshare`, and the
/// CAP_SYS_ADMIN it needs), tried for real rather than guessed from the user id.
pub fn can_unshare_pid() -> bool {
    // Started and waited for under the lock, so that no orphan reaping takes its status.
    let _adopted = adopted();
    Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A small seeded random number generator (SplitMix64): the same seed makes the same choices,
/// so that a randomized test that fails can be run again as it was.
pub struct Rng(u64);

impl Rng {
    /// A generator that starts from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// A seed that differs from run to run, for a test not told which one to use.
    pub fn fresh_seed() -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |now| now.as_nanos() as u64);
        Rng::new(nanos ^ u64::from(std::process::id()) << 32).next_u64()
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory.
        let result = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(result, 0, "become a child subreaper");
    });
}

/// The processes one test starts, and all they start in turn: each carries a unique
/// `KAMISAMA_TEST_TREE` variable in its environment, which finds the whole tree in /proc
/// wherever its processes were re-parented.
pub struct Tree {
    token: String,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

impl Tree {
    /// A tree with a token of its own.
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let next = NEXT.fetch_add(1, Ordering::Relaxed);
        Tree {
            token: format!("{}-{next}", std::process::id()),
        }
    }

    /// Makes `command`, and everything it starts, part of the tree.
    pub fn mark(&self, command: &mut Command) {
        command.env(TREE_VAR, &self.token);
    }

    /// The live processes of the tree.
    pub fn live(&self) -> Vec<Pid> {
        processes_carrying(&self.token)
    }

    /// Kills every process of the tree, until none is left or the [`deadline`] passes.
    pub fn kill(&self) {
        let deadline = Instant::now() + deadline();
        loop {
            let live = self.live();
            if live.is_empty() || Instant::now() > deadline {
                return;
            }
            for pid in live {
                let _ = kill(pid, Signal::SIGKILL);
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Live processes whose environment holds `KAMISAMA_TEST_TREE=token`.
fn processes_carrying(token: &str) -> Vec<Pid> {
    let needle = format!("{TREE_VAR}={token}\0");
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .map(Pid::from_raw)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|environ| contains(&environ, needle.as_bytes()))
        })
        .filter(|pid| is_alive(*pid))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Lines read from the master's pipes by one thread per pipe.
#[derive(Default)]
struct Output {
    lines: Mutex<Vec<String>>,
    /// Pipes whose every writer has closed them.
    closed: AtomicUsize,
    arrived: Condvar,
}

impl Output {
    fn collect(self: &Arc<Self>, pipe: impl Read + Send + 'static) {
        let output = Arc::clone(self);
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                output.lines.lock().unwrap().push(line);
                output.arrived.notify_all();
            }
            let _lines = output.lines.lock().unwrap();
            output.closed.fetch_add(1, Ordering::SeqCst);
            output.arrived.notify_all();
        });
    }

    /// Waits until both pipes are closed: then every line written is here.
    fn wait_closed(&self, timeout: Duration) {
        self.wait_until(timeout, |_| {
            (self.closed.load(Ordering::SeqCst) == 2).then_some(())
        });
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn wait_until<T>(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&[String]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(value) = condition(&lines) {
                return Some(value);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            lines = self.arrived.wait_timeout(lines, left).unwrap().0;
        }
    }
}

/// A unix datagram socket that stands in for systemd's notification socket. A thread reads
/// every message with its sender's credentials, and notes what was true as it came: the
/// sender's live children, and the files in a witness directory.
pub struct NotifySocket {
    path: std::path::PathBuf,
    messages: Arc<Mutex<Vec<Notification>>>,
    arrived: Arc<Condvar>,
}

/// One message to the stand-in systemd.
#[derive(Clone, Debug)]
pub struct Notification {
    /// The sender's pid, from its credentials.
    pub pid: Pid,
    /// The message, `KEY=VALUE` lines.
    pub text: String,
    /// When it came.
    pub at: Instant,
    /// How many live children the sender had as it came.
    pub children: usize,
    /// How many files the witness directory held as it came.
    pub witnesses: usize,
}

impl Notification {
    /// Whether the message has the line `line`, such as `READY=1`.
    pub fn says(&self, line: &str) -> bool {
        self.text.lines().any(|said| said == line)
    }

    /// The value of `key=` in the message, such as the text of `STATUS`.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
    }
}

impl NotifySocket {
    /// Binds a new socket at `path`; `witnesses` is the directory whose files are counted as
    /// each message comes.
    pub fn bind(path: std::path::PathBuf, witnesses: Option<std::path::PathBuf>) -> Self {
        use nix::sys::socket::{setsockopt, sockopt::PassCred};
        let _ = fs::remove_file(&path);
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind the socket");
        setsockopt(&socket, PassCred, &true).expect("SO_PASSCRED");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("a read timeout");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Condvar::new());
        let (kept, woken) = (Arc::clone(&messages), Arc::clone(&arrived));
        thread::spawn(move || loop {
            let Some((pid, text)) = receive(&socket) else {
                if Arc::strong_count(&kept) == 1 {
                    return;
                }
                continue;
            };
            let children = children_of(pid)
                .into_iter()
                .filter(|p| is_alive(*p))
                .count();
            let witnesses = witnesses.as_ref().map_or(0, |dir| {
                fs::read_dir(dir).map_or(0, |entries| entries.count())
            });
            let notification = Notification {
                pid,
                text,
                at: Instant::now(),
                children,
                witnesses,
            };
            kept.lock().unwrap().push(notification);
            woken.notify_all();
        });
        NotifySocket {
            path,
            messages,
            arrived,
        }
    }

    /// Its path, for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &str {
        self.path.to_str().expect("a UTF-8 path")
    }

    /// Every message so far.
    pub fn messages(&self) -> Vec<Notification> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits for the `nth` message (counted from 1) that has the line `line`.
    pub fn wait_for(&self, line: &str, nth: usize) -> Notification {
        let mut messages = self.messages.lock().unwrap();
        let deadline = Instant::now() + deadline();
        loop {
            if let Some(found) = messages.iter().filter(|m| m.says(line)).nth(nth - 1) {
                return found.clone();
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("no {nth} messages saying {line}: {messages:#?}"));
            messages = self.arrived.wait_timeout(messages, left).unwrap().0;
        }
    }

    /// Waits for the first message whose `STATUS=` passes `condition`.
    pub fn wait_for_status(&self, condition: impl Fn(&str) -> bool) -> Notification {
        let mut messages = self.messages.lock().unwrap();
        let deadline = Instant::now() + deadline();
        loop {
            let found = messages
                .iter()
                .find(|m| m.value("STATUS").is_some_and(&condition));
            if let Some(found) = found {
                return found.clone();
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("no STATUS= as awaited: {messages:#?}"));
            messages = self.arrived.wait_timeout(messages, left).unwrap().0;
        }
    }
}

/// One datagram and its sender's pid, or `None` when none came in the read timeout.
fn receive(socket: &std::os::unix::net::UnixDatagram) -> Option<(Pid, String)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::os::fd::AsRawFd;
    let mut buffer = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buffer)];
    let mut space = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
    let message = recvmsg::<UnixAddr>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .ok()?;
    let pid = message.cmsgs().ok()?.find_map(|cmsg| match cmsg {
        ControlMessageOwned::ScmCredentials(credentials) => Some(Pid::from_raw(credentials.pid())),
        _ => None,
    })?;
    let length = message.bytes;
    let text = String::from_utf8_lossy(&buffer[..length]).into_owned();
    Some((pid, text))
}
