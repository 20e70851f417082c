//! kamisama against the fork floor: a minimal fork/waitpid supervisor written on libc,
//! measured side by side in one run, so that the ratios hold on a shared, noisy machine.
//!
//! ```text
//! cargo bench -p kamisama-tests --bench supervisor
//! ```
//!
//! Both masters run the same worker, which writes its index, pid and a CLOCK_MONOTONIC
//! timestamp the moment the worker function starts. Each master's stderr is a pipe that a
//! thread drains, as a journal or a terminal would. The two run in turn, in alternating
//! order, and a run that fails still kills every process it started.
//!
//! `KAMISAMA_BENCH_SCALE=1` adds 10,000 workers to the scale rows; `ONLY_SCALE=1` runs the
//! scale rows alone, `ONLY_SMALL=1` the start, shutdown and respawn rows of 1 to 1000 workers.

use kamisama_tests::bench::monotonic_nanos;
use kamisama_tests::{field, is_alive, state, status_field, Master, Tree};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;
use std::{fs, thread};

/// A master to measure: a binary, and the settings it gets from the environment.
#[derive(Clone, Copy)]
struct Subject {
    binary: &'static str,
    env: &'static [(&'static str, &'static str)],
}

const KAMISAMA: Subject = Subject {
    binary: env!("CARGO_BIN_EXE_bench-kamisama"),
    env: &[],
};
const BASELINE: Subject = Subject {
    binary: env!("CARGO_BIN_EXE_bench-baseline"),
    env: &[],
};
const ASYNC: Subject = Subject {
    binary: env!("CARGO_BIN_EXE_bench-kamisama-async"),
    env: &[],
};
const ASYNC_MULTI_THREAD: Subject = Subject {
    binary: env!("CARGO_BIN_EXE_bench-kamisama-async"),
    env: &[("KAMISAMA_RUNTIME", "multi-thread")],
};
const ASYNC_WATCHED: Subject = Subject {
    binary: env!("CARGO_BIN_EXE_bench-kamisama-async"),
    env: &[("KAMISAMA_TIMEOUT", "1")],
};

/// kamisama with its metrics endpoint on.
const SCRAPED: Subject = Subject {
    binary: env!("CARGO_BIN_EXE_bench-kamisama"),
    env: &[("KAMISAMA_METRICS", "unix:/tmp/kamisama-bench-metrics.sock")],
};
const SCRAPED_SOCKET: &str = "/tmp/kamisama-bench-metrics.sock";

/// kamisama against the baseline.
const AGAINST_BASELINE: [Subject; 2] = [KAMISAMA, BASELINE];

/// The two subjects of `pair` with their place in the results, the first first on even runs.
fn in_turn(run: usize, pair: [Subject; 2]) -> [(usize, Subject); 2] {
    if run.is_multiple_of(2) {
        [(0, pair[0]), (1, pair[1])]
    } else {
        [(1, pair[1]), (0, pair[0])]
    }
}

/// Longest any awaited report may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// What a worker wrote as it started.
struct Report {
    index: usize,
    pid: Pid,
    nanos: u64,
}

/// A running master with its workers; dropping it kills all of them.
struct Running {
    master: Child,
    tree: Tree,
    reports: Receiver<Report>,
    /// The live worker of each index, as last reported.
    workers: BTreeMap<usize, Pid>,
}

impl Running {
    /// Starts `subject` with `instances` workers; returns it with the time it was started.
    fn start(subject: Subject, instances: usize) -> (Running, u64) {
        let tree = Tree::new();
        let mut command = Command::new(subject.binary);
        tree.mark(&mut command);
        command
            .envs(subject.env.iter().copied())
            .env("KAMISAMA_INSTANCES", instances.to_string())
            .env("KAMISAMA_RESPAWN_LIMIT", "1000000")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = monotonic_nanos();
        let mut master = command.spawn().expect("start the master");
        let stdout = master.stdout.take().expect("piped stdout");
        let mut stderr = master.stderr.take().expect("piped stderr");
        thread::spawn(move || {
            let mut log = [0; 4096];
            while stderr.read(&mut log).is_ok_and(|read| read > 0) {}
        });
        let (sender, reports) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let fields: Vec<u64> = line.split(' ').filter_map(|f| f.parse().ok()).collect();
                let [index, pid, nanos] = fields[..] else {
                    continue;
                };
                let report = Report {
                    index: index as usize,
                    pid: Pid::from_raw(pid as i32),
                    nanos,
                };
                if sender.send(report).is_err() {
                    break;
                }
            }
        });
        let running = Running {
            master,
            tree,
            reports,
            workers: BTreeMap::new(),
        };
        (running, started)
    }

    fn next_report(&mut self) -> Report {
        let report = self
            .reports
            .recv_timeout(DEADLINE)
            .expect("a worker report within the deadline");
        self.workers.insert(report.index, report.pid);
        report
    }

    /// Waits until `count` workers have reported; returns the latest start time among them.
    fn await_workers(&mut self, count: usize) -> u64 {
        (0..count)
            .map(|_| self.next_report().nanos)
            .max()
            .unwrap_or(0)
    }

    fn master_pid(&self) -> Pid {
        Pid::from_raw(self.master.id() as i32)
    }

    /// Waits until the master sleeps, every thread of it and its reaper, done with what it
    /// was doing: a large fleet's reaper opens a pidfd per worker after the start, which is
    /// the start's work, not the respawns' that follow.
    fn await_blocked(&self) {
        let master = self.master_pid();
        let deadline = std::time::Instant::now() + DEADLINE;
        let asleep = || {
            let reaper = kamisama_tests::reaper_of(master);
            state(master) == Some('S')
                && kamisama_tests::all_threads_asleep(master)
                && reaper.into_iter().all(kamisama_tests::all_threads_asleep)
        };
        while !asleep() {
            assert!(
                std::time::Instant::now() < deadline,
                "the master never blocked"
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Sends TERM and returns how long the master took to exit with every worker gone.
    fn shut_down(mut self) -> u64 {
        let started = monotonic_nanos();
        kill(self.master_pid(), Signal::SIGTERM).expect("signal the master");
        self.master.wait().expect("wait for the master");
        let finished = monotonic_nanos();
        for pid in self.workers.values() {
            assert!(!is_alive(*pid), "worker {pid} outlived its master");
        }
        finished - started
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.master.kill();
        let _ = self.master.wait();
        // The baseline's workers have no death signal: without this they would outlive a
        // run that failed.
        self.tree.kill();
    }
}

/// A measure for both subjects, as a table row.
struct Row {
    measure: String,
    kamisama: String,
    baseline: String,
    ratio: Option<f64>,
}

fn row(measure: impl Into<String>, kamisama: f64, baseline: f64, unit: Unit) -> Row {
    Row {
        measure: measure.into(),
        kamisama: unit.format(kamisama),
        baseline: unit.format(baseline),
        ratio: (baseline > 0.0).then(|| kamisama / baseline),
    }
}

#[derive(Clone, Copy)]
enum Unit {
    Nanos,
    KiB,
    Count,
}

impl Unit {
    fn format(self, value: f64) -> String {
        match self {
            Unit::Nanos if value >= 999_500.0 => format!("{:.2} ms", value / 1e6),
            Unit::Nanos if value >= 1e3 => format!("{:.0} µs", value / 1e3),
            Unit::Nanos => format!("{value:.0} ns"),
            Unit::KiB if value >= 1024.0 => format!("{:.2} MiB", value / 1024.0),
            Unit::KiB => format!("{value:.0} KiB"),
            Unit::Count => format!("{value:.1}"),
        }
    }
}

fn median(values: &mut [u64]) -> f64 {
    percentile(values, 50)
}

fn percentile(values: &mut [u64], percent: usize) -> f64 {
    values.sort_unstable();
    let rank = (values.len() * percent).div_ceil(100).max(1) - 1;
    values[rank] as f64
}

/// Time from starting the master to its last worker running, and from TERM to its exit.
fn start_and_shutdown(rows: &mut Vec<Row>) {
    for (instances, runs) in [(1, 21), (17, 11), (200, 7), (1000, 5)] {
        let mut start = [Vec::new(), Vec::new()];
        let mut shutdown = [Vec::new(), Vec::new()];
        for run in 0..runs {
            for (which, subject) in in_turn(run, AGAINST_BASELINE) {
                let (mut running, started) = Running::start(subject, instances);
                start[which].push(running.await_workers(instances) - started);
                // So that the shutdown measures only the shutdown.
                running.await_blocked();
                shutdown[which].push(running.shut_down());
            }
        }
        let [kamisama, baseline] = &mut start;
        rows.push(row(
            format!("start {instances} workers (median of {runs})"),
            median(kamisama),
            median(baseline),
            Unit::Nanos,
        ));
        if matches!(instances, 17 | 200) {
            let [kamisama, baseline] = &mut shutdown;
            rows.push(row(
                format!("shutdown of {instances} workers, TERM to exit (median of {runs})"),
                median(kamisama),
                median(baseline),
                Unit::Nanos,
            ));
        }
    }
}

/// Time from killing a worker to its replacement running the worker function.
fn respawn_latency(rows: &mut Vec<Row>) {
    let [kamisama, baseline] = &mut respawn_latencies(AGAINST_BASELINE);
    let kills = kamisama.len();
    rows.push(row(
        format!("respawn latency, median of {kills} kills"),
        median(kamisama),
        median(baseline),
        Unit::Nanos,
    ));
    rows.push(row(
        format!("respawn latency, p99 of {kills} kills"),
        percentile(kamisama, 99),
        percentile(baseline, 99),
        Unit::Nanos,
    ));
}

/// The least-privilege settings all on: a user to switch to, limits, an OOM score, pinning.
const CONFINED: Subject = Subject {
    binary: env!("CARGO_BIN_EXE_bench-kamisama"),
    env: &[
        ("KAMISAMA_USER", "nobody"),
        ("KAMISAMA_LIMIT_NOFILE", "1024"),
        ("KAMISAMA_LIMIT_CORE", "0"),
        ("KAMISAMA_OOM_SCORE_ADJ", "600"),
        ("KAMISAMA_CPU_AFFINITY", "auto"),
    ],
};

/// Nothing to apply after the fork: the OOM score the master has (0, unless the bench runs
/// under a service manager that set one), which a worker inherits, so it writes none.
const UNCONFINED: Subject = Subject {
    binary: env!("CARGO_BIN_EXE_bench-kamisama"),
    env: &[("KAMISAMA_OOM_SCORE_ADJ", "0")],
};

/// What the least-privilege settings cost a respawn: the default's one write of the OOM
/// score, and everything on (as root), each against nothing applied.
fn least_privilege(rows: &mut Vec<Row>) {
    let [default, none] = &mut respawn_latencies([KAMISAMA, UNCONFINED]);
    rows.push(row(
        "respawn latency, median: the default OOM score written, against nothing applied",
        median(default),
        median(none),
        Unit::Nanos,
    ));
    if !nix::unistd::geteuid().is_root() {
        println!("least privilege, every option on: skipped, it needs root");
        return;
    }
    let [confined, none] = &mut respawn_latencies([CONFINED, UNCONFINED]);
    rows.push(row(
        "respawn latency, median: user, limits, OOM score and CPU pinning, against none",
        median(confined),
        median(none),
        Unit::Nanos,
    ));
}

/// The respawn latencies of the two subjects of `pair`, in nanoseconds: from a worker's
/// SIGKILL to its replacement's first instruction, in rounds that alternate the order.
fn respawn_latencies(pair: [Subject; 2]) -> [Vec<u64>; 2] {
    const INSTANCES: usize = 17;
    const ROUNDS: usize = 3;
    const KILLS_PER_ROUND: usize = 100;
    let mut latencies = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        for (which, subject) in in_turn(round, pair) {
            let (mut running, _) = Running::start(subject, INSTANCES);
            running.await_workers(INSTANCES);
            for kill_number in 0..KILLS_PER_ROUND {
                let index = kill_number % INSTANCES;
                let victim = running.workers[&index];
                let killed = monotonic_nanos();
                kill(victim, Signal::SIGKILL).expect("kill a worker");
                loop {
                    let report = running.next_report();
                    if report.index == index && report.pid != victim {
                        latencies[which].push(report.nanos - killed);
                        break;
                    }
                }
            }
            running.shut_down();
        }
    }
    latencies
}

/// The CPU time a master has used, every thread of it, in nanoseconds: the first field of
/// each /proc/PID/task/TID/schedstat, to the nanosecond where `utime` and `stime` count
/// ticks of 10 ms. A large fleet's kamisama master has a reaper, a child process whose time
/// counts as the master's.
fn cpu_nanos(pid: Pid) -> u64 {
    let reaper = kamisama_tests::reaper_of(pid);
    let tasks = [Some(pid), reaper].into_iter().flatten().filter_map(|pid| {
        let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        let nanos = tasks.filter_map(|task| {
            let stat = fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        });
        Some(nanos.sum::<u64>())
    });
    tasks.sum()
}

/// Kills `kills` workers of `running` one after the other, each once its predecessor's
/// replacement runs; returns each respawn's latency and the master's CPU time over them all.
fn respawns(running: &mut Running, instances: usize, kills: usize) -> (Vec<u64>, u64) {
    let master = running.master_pid();
    let cpu_before = cpu_nanos(master);
    let mut latencies = Vec::with_capacity(kills);
    for kill_number in 0..kills {
        let index = (kill_number * 7919) % instances;
        let victim = running.workers[&index];
        let killed = monotonic_nanos();
        kill(victim, Signal::SIGKILL).expect("kill a worker");
        loop {
            let report = running.next_report();
            if report.index == index && report.pid != victim {
                latencies.push(report.nanos - killed);
                break;
            }
        }
    }
    (latencies, cpu_nanos(master) - cpu_before)
}

/// How the cost of an event grows with the fleet: the master's own CPU time per respawn at
/// 100 and 1000 workers, and, with `KAMISAMA_BENCH_SCALE=1`, at 10,000, with the start, the
/// respawns and the shutdown of 10,000 workers (a minute or two more). A cost that grows with
/// the fleet shows as a slope across the rows.
fn at_scale(rows: &mut Vec<Row>) {
    let large = std::env::var_os("KAMISAMA_BENCH_SCALE").is_some();
    let sizes: &[usize] = if large {
        &[100, 1000, 10_000]
    } else {
        &[100, 1000]
    };
    const KILLS: usize = 200;
    for &instances in sizes {
        // A start of 10,000 moves by half from one run to the next, the baseline's as much as
        // kamisama's (the kernel's reverse map of the master's pages, walked by kdamond while
        // forks wait; the scheduler's placement of 10,000 new processes), and the CPU of 200
        // respawns by a third: the middle of five runs, for each.
        const RUNS: usize = 5;
        let mut cpu = [Vec::new(), Vec::new()];
        let mut latencies = [Vec::new(), Vec::new()];
        let mut start = [Vec::new(), Vec::new()];
        let mut shutdown = [Vec::new(), Vec::new()];
        for run in 0..RUNS {
            for (which, subject) in in_turn(run, AGAINST_BASELINE) {
                let (mut running, started) = Running::start(subject, instances);
                start[which].push(running.await_workers(instances) - started);
                running.await_blocked();
                let (latency, nanos) = respawns(&mut running, instances, KILLS);
                cpu[which].push(nanos / KILLS as u64);
                latencies[which].extend(latency);
                running.await_blocked();
                shutdown[which].push(running.shut_down());
            }
        }
        let [kamisama, baseline] = &mut cpu;
        rows.push(row(
            format!("master CPU per respawn, {instances} workers (median of {RUNS} runs of {KILLS} kills)"),
            median(kamisama),
            median(baseline),
            Unit::Nanos,
        ));
        if instances == 10_000 {
            let [kamisama, baseline] = &mut latencies;
            rows.push(row(
                format!(
                    "respawn latency, median of {} kills, 10000 workers",
                    KILLS * RUNS
                ),
                median(kamisama),
                median(baseline),
                Unit::Nanos,
            ));
            let [kamisama, baseline] = &mut start;
            rows.push(row(
                format!("start 10000 workers (median of {RUNS})"),
                median(kamisama),
                median(baseline),
                Unit::Nanos,
            ));
            let [kamisama, baseline] = &mut shutdown;
            rows.push(row(
                format!(
                    "shutdown of 10000 workers, TERM to exit, after the respawns (median of {RUNS})"
                ),
                median(kamisama),
                median(baseline),
                Unit::Nanos,
            ));
        }
    }
}

/// What a scrape costs the master, against what a respawn does, at 100 and 1000 workers (and
/// 10,000 with `KAMISAMA_BENCH_SCALE=1`); and respawns under a flood of the endpoint (silent
/// connections, garbage, clients that send a byte at a time, new connections all along)
/// against respawns with none.
fn metrics(rows: &mut Vec<Row>) {
    use kamisama_tests::metrics::ask;
    use std::path::Path;
    const SCRAPES: usize = 20;
    const KILLS: usize = 100;
    let large = std::env::var_os("KAMISAMA_BENCH_SCALE").is_some();
    let sizes: &[usize] = if large {
        &[100, 1000, 10_000]
    } else {
        &[100, 1000]
    };
    let socket = Path::new(SCRAPED_SOCKET);
    for &instances in sizes {
        let (mut running, _) = Running::start(SCRAPED, instances);
        running.await_workers(instances);
        running.await_blocked();
        let master = running.master_pid();
        let before = cpu_nanos(master);
        let mut bytes = 0;
        for _ in 0..SCRAPES {
            let answer = ask(socket, b"GET /metrics HTTP/1.1\r\n\r\n");
            assert_eq!(answer.status, 200);
            bytes = answer.body.len();
        }
        let scrape = (cpu_nanos(master) - before) as f64 / SCRAPES as f64;
        running.await_blocked();
        let (_, respawn) = respawns(&mut running, instances, KILLS);
        let respawn = respawn as f64 / KILLS as f64;
        rows.push(Row {
            measure: format!(
                "master CPU per scrape ({} KiB), {instances} workers, against per respawn",
                bytes / 1024
            ),
            kamisama: Unit::Nanos.format(scrape),
            baseline: Unit::Nanos.format(respawn),
            ratio: Some(scrape / respawn),
        });
        drop(running);
    }
    // Flooded or not, in turn.
    const INSTANCES: usize = 100;
    let mut latencies = [Vec::new(), Vec::new()];
    for run in 0..4 {
        let flooded = run % 2 == 0;
        let (mut running, _) = Running::start(SCRAPED, INSTANCES);
        running.await_workers(INSTANCES);
        running.await_blocked();
        let flood = flooded.then(|| Flood::start(socket));
        let (latency, _) = respawns(&mut running, INSTANCES, KILLS);
        latencies[usize::from(!flooded)].extend(latency);
        drop(flood);
        let stopped = running.shut_down();
        assert!(
            stopped < 5_000_000_000,
            "a shutdown under a flood took {stopped} ns"
        );
    }
    let [flooded, quiet] = &mut latencies;
    rows.push(row(
        "respawn latency median, endpoint flooded, against quiet (100 workers)",
        median(flooded),
        median(quiet),
        Unit::Nanos,
    ));
}

/// Clients that do everything but scrape, until dropped: 200 silent connections, 4 that send
/// a byte every 100 ms, and new connections that send garbage, one every half millisecond.
struct Flood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    _silent: Vec<std::os::unix::net::UnixStream>,
}

impl Flood {
    fn start(socket: &std::path::Path) -> Flood {
        use std::io::Write;
        use std::os::unix::net::UnixStream;
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut threads = Vec::new();
        let silent: Vec<_> = (0..200)
            .filter_map(|_| UnixStream::connect(socket).ok())
            .collect();
        for slow in 0..5 {
            let (stop, socket) = (stop.clone(), socket.to_owned());
            threads.push(thread::spawn(move || {
                let mut stream = None;
                while !stop.load(Ordering::Relaxed) {
                    if slow == 4 {
                        // The garbage: a new connection every half millisecond.
                        if let Ok(mut garbage) = UnixStream::connect(&socket) {
                            let _ = garbage.write_all(&[0xa5; 64]);
                        }
                        thread::sleep(Duration::from_micros(500));
                        continue;
                    }
                    let open = stream.get_or_insert_with(|| UnixStream::connect(&socket).ok());
                    let sent = open.as_mut().map(|open| open.write_all(b"G").is_ok());
                    if sent != Some(true) {
                        stream = None;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            }));
        }
        Flood {
            stop,
            threads,
            _silent: silent,
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The master's resident memory and wakeups while idle, and what a worker holds privately.
fn idle_footprint(rows: &mut Vec<Row>) {
    const INSTANCES: usize = 17;
    const RUNS: usize = 5;
    const WINDOW: Duration = Duration::from_secs(1);
    // Medians over several masters: how much shared text a process has resident moves by
    // tens of KiB from one start to the next (the kernel maps file pages around each fault).
    let mut rss: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    let mut own: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    let mut wakeups = [0.0; 2];
    let mut private: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    for run in 0..RUNS {
        for (which, subject) in in_turn(run, AGAINST_BASELINE) {
            let (mut running, _) = Running::start(subject, INSTANCES);
            running.await_workers(INSTANCES);
            running.await_blocked();
            let master = running.master_pid();
            wakeups[which] += wakeups_per_second(master, WINDOW) / RUNS as f64;
            rss[which].push(status_field(master, "VmRSS").unwrap_or(0));
            own[which].push(rollup_kib(master, &["Anonymous"]));
            let workers = running.workers.values();
            let private_of = |pid: &Pid| rollup_kib(*pid, &["Private_Clean", "Private_Dirty"]);
            private[which].push(workers.map(private_of).sum::<u64>() / INSTANCES as u64);
            running.shut_down();
        }
    }
    let [rss, own, private] = [rss, own, private].map(|mut values| {
        let [kamisama, baseline] = &mut values;
        [median(kamisama), median(baseline)]
    });
    rows.push(row(
        format!("master resident memory (VmRSS), 17 workers (median of {RUNS})"),
        rss[0],
        rss[1],
        Unit::KiB,
    ));
    rows.push(row(
        format!("master anonymous memory (heap, stack, data; median of {RUNS})"),
        own[0],
        own[1],
        Unit::KiB,
    ));
    rows.push(row(
        format!("master wakeups per second while idle ({RUNS} × {WINDOW:?})"),
        wakeups[0],
        wakeups[1],
        Unit::Count,
    ));
    rows.push(row(
        format!("private memory of a worker (Private_Clean + Private_Dirty, median of {RUNS})"),
        private[0],
        private[1],
        Unit::KiB,
    ));
}

/// How often an idle `master` wakes up, in context switches per second over `window`.
fn wakeups_per_second(master: Pid, window: Duration) -> f64 {
    let switches = || kamisama_tests::context_switches(master).unwrap_or(0);
    let before = switches();
    thread::sleep(window);
    (switches() - before) as f64 / window.as_secs_f64()
}

/// The sum of `fields` of a process's /proc/PID/smaps_rollup, in KiB.
fn rollup_kib(pid: Pid, fields: &[&str]) -> u64 {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    rollup
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            fields.contains(&name).then_some(value)
        })
        .filter_map(|value| value.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name")?.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_owned();
    let cores = thread::available_parallelism().map_or(0, |cores| cores.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cores} cores, Linux {}", kernel.trim())
}

/// The start of async workers beside sync ones, and of a multi-thread runtime beside a
/// current-thread one, with kamisama on both sides.
fn async_starts(rows: &mut Vec<Row>) {
    let cases = [
        ("start 17 async workers, against 17 sync", [ASYNC, KAMISAMA], 17, 11),
        ("start 200 async workers, against 200 sync", [ASYNC, KAMISAMA], 200, 5),
        (
            "start 200 async workers, multi-thread runtime (a thread per core) against current-thread",
            [ASYNC_MULTI_THREAD, ASYNC],
            200,
            5,
        ),
    ];
    for (measure, pair, instances, runs) in cases {
        let mut start = [Vec::new(), Vec::new()];
        for run in 0..runs {
            for (which, subject) in in_turn(run, pair) {
                let (mut running, started) = Running::start(subject, instances);
                start[which].push(running.await_workers(instances) - started);
                running.await_blocked();
                running.shut_down();
            }
        }
        let [with, without] = &mut start;
        rows.push(row(
            format!("{measure} (median of {runs})"),
            median(with),
            median(without),
            Unit::Nanos,
        ));
    }
}

/// What hang detection costs and how close to its deadline it comes.
fn hang_detection(rows: &mut Vec<Row>) {
    // One beat, in a worker where any system call would kill it, beside one clock read here.
    let output = Command::new(env!("CARGO_BIN_EXE_bench-heartbeat"))
        .stderr(Stdio::null())
        .output()
        .expect("run the heartbeat probe");
    let report = String::from_utf8_lossy(&output.stdout);
    let nanos: f64 = field(&report, "heartbeat-ns")
        .and_then(|nanos| nanos.trim().parse().ok())
        .unwrap_or_else(|| panic!("the heartbeat probe made a system call: {report:?}"));
    const READS: u32 = 10_000_000;
    let started = std::time::Instant::now();
    for _ in 0..READS {
        std::hint::black_box(monotonic_nanos());
    }
    let clock = started.elapsed().as_nanos() as f64 / f64::from(READS);
    rows.push(row(
        "one heartbeat (no system call: checked under seccomp), against one clock read",
        nanos,
        clock,
        Unit::Nanos,
    ));
    // One unit of work counted, under the same filter, beside the heartbeat.
    let output = Command::new(env!("CARGO_BIN_EXE_bench-heartbeat"))
        .env("PROBE", "completed")
        .env("KAMISAMA_MAX_REQUESTS", "1000000000000")
        .stderr(Stdio::null())
        .output()
        .expect("run the counting probe");
    let report = String::from_utf8_lossy(&output.stdout);
    let counted: f64 = field(&report, "heartbeat-ns")
        .and_then(|nanos| nanos.trim().parse().ok())
        .unwrap_or_else(|| panic!("Worker::completed made a system call: {report:?}"));
    rows.push(row(
        "one Worker::completed (no system call: checked under seccomp), against one heartbeat",
        counted,
        nanos,
        Unit::Nanos,
    ));

    // Wakeups of an idle master whose workers are recycled: by memory, sampled every 5 s for
    // the whole fleet, against by count and by age, which never wake it while nothing is due.
    const SAMPLED: Duration = Duration::from_secs(10);
    let mut recycling = [0.0; 2];
    let settings = [
        [
            ("KAMISAMA_MAX_MEMORY", "1G"),
            ("KAMISAMA_MAX_LIFETIME", "0"),
        ],
        [
            ("KAMISAMA_MAX_REQUESTS", "1000"),
            ("KAMISAMA_MAX_LIFETIME", "3600"),
        ],
    ];
    for (which, settings) in settings.iter().enumerate() {
        let mut launch =
            Master::launch(env!("CARGO_BIN_EXE_supervised")).env("KAMISAMA_INSTANCES", "17");
        for (key, value) in settings {
            launch = launch.env(key, value);
        }
        let mut master = launch.start();
        master.wait_for_workers(17);
        master.wait_until_blocked();
        recycling[which] = wakeups_per_second(master.pid(), SAMPLED);
        master.signal(Signal::SIGTERM);
        master.wait_exit();
    }
    rows.push(row(
        "master wakeups per second while idle, 17 workers: max_memory (5 s sampling) against max_requests and max_lifetime",
        recycling[0],
        recycling[1],
        Unit::Count,
    ));

    // Wakeups of an idle master of 17 async workers, which beat on their own, with a
    // timeout of 1 s and without hang detection.
    const WINDOW: Duration = Duration::from_secs(3);
    let mut wakeups = [0.0; 2];
    for (which, subject) in in_turn(0, [ASYNC_WATCHED, ASYNC]) {
        let (mut running, _) = Running::start(subject, 17);
        running.await_workers(17);
        running.await_blocked();
        wakeups[which] = wakeups_per_second(running.master_pid(), WINDOW);
        running.shut_down();
    }
    rows.push(row(
        "master wakeups per second while idle, 17 async workers, timeout = 1 s against off",
        wakeups[0],
        wakeups[1],
        Unit::Count,
    ));

    // A worker that stops beating: how long after its timeout the master signals it.
    const RUNS: usize = 5;
    let mut late = Vec::new();
    for _ in 0..RUNS {
        let mut master = Master::launch(env!("CARGO_BIN_EXE_heartbeats"))
            .env("KAMISAMA_TIMEOUT", "1")
            .env("KAMISAMA_INSTANCES", "1")
            .env("HANG", "0")
            .start();
        let hung = master.wait_for_line("hung index=0");
        let silent = field(&hung, "silent_for").map_or(0.0, seconds);
        late.push(((silent - 1.0).max(0.0) * 1e9) as u64);
        master.signal(Signal::SIGTERM);
        master.wait_exit();
    }
    let worst = *late.iter().max().unwrap_or(&0) as f64;
    rows.push(row(
        format!("hang detection: signalled after timeout + (median of {RUNS}), against the worst"),
        median(&mut late),
        worst,
        Unit::Nanos,
    ));
}

/// A rolling restart of 4 workers idle in `Worker::accept`, with an hour each to stop: how
/// long from HUP to the last replacement.
fn rolling_restart_of_idle_acceptors(rows: &mut Vec<Row>) {
    const RUNS: usize = 5;
    let mut took = Vec::new();
    for _ in 0..RUNS {
        let mut master = Master::launch(env!("CARGO_BIN_EXE_acceptor"))
            .env("KAMISAMA_INSTANCES", "4")
            .start();
        master.wait_for_lines("waiting index=", 4);
        let hup = std::time::Instant::now();
        master.signal(Signal::SIGHUP);
        master.wait_for_line("rolling-restart-finished");
        took.push(hup.elapsed().as_nanos() as u64);
        master.signal(Signal::SIGTERM);
        master.wait_exit();
    }
    let worst = *took.iter().max().unwrap_or(&0) as f64;
    rows.push(row(
        format!("HUP of 4 workers idle in accept, to the last replacement (median of {RUNS}), against the worst"),
        median(&mut took),
        worst,
        Unit::Nanos,
    ));
}

/// `1.5s` or `800ms`, as the log writes spans, in seconds.
fn seconds(span: &str) -> f64 {
    match span.strip_suffix("ms") {
        Some(millis) => millis.parse::<f64>().unwrap_or(0.0) / 1e3,
        None => span.trim_end_matches('s').parse().unwrap_or(0.0),
    }
}

fn print_table(header: &str, rows: Vec<Row>) {
    println!("{header}");
    println!("|---|---:|---:|---:|");
    for row in rows {
        let ratio = row
            .ratio
            .map_or("–".to_owned(), |ratio| format!("{ratio:.2}"));
        println!(
            "| {} | {} | {} | {} |",
            row.measure, row.kamisama, row.baseline, ratio
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    let mut rows = Vec::new();
    let mut features = Vec::new();
    if std::env::var_os("ONLY_SCALE").is_some() {
        at_scale(&mut rows);
    } else if std::env::var_os("ONLY_SMALL").is_some() {
        start_and_shutdown(&mut rows);
        respawn_latency(&mut rows);
    } else {
        start_and_shutdown(&mut rows);
        respawn_latency(&mut rows);
        idle_footprint(&mut rows);
        at_scale(&mut rows);
        async_starts(&mut features);
        hang_detection(&mut features);
        least_privilege(&mut features);
        rolling_restart_of_idle_acceptors(&mut features);
        metrics(&mut features);
    }
    println!("machine: {}", machine());
    println!();
    print_table(
        "| measure | kamisama | baseline | kamisama / baseline |",
        rows,
    );
    println!();
    print_table("| measure | this | against | ratio |", features);
}
