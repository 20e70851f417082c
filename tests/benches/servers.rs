//! The hello servers under a constant load on loopback, through a rolling restart, an upgrade
//! to a rebuilt binary, an upgrade to a binary that dies at start (rolled back), and an
//! upgrade to a release that is ready and then crashes on its first requests (rolled back
//! during its trial): every request counted, the latency before and during each change, the
//! longest time without an answer, and how evenly the workers share the connections. For the
//! bad release, failed requests are also weighed against those answered in as long a window
//! before the signal. And with `max_requests = 300`: eight recycles under the same load.
//!
//! ```text
//! cargo bench -p kamisama-tests --bench servers
//! ```
//!
//! Each figure is the median of three runs; failed requests are the sum over all of them.
//! `ONLY_FAIRNESS=1` runs the fairness table alone; `ONLY_CHANGE=BadRelease` (or
//! `RollingRestart`, `Upgrade`, `Rollback`) one change alone.

use kamisama_tests::deployment::{upgrade, Deployment};
use kamisama_tests::load::{Load, Tally};
use kamisama_tests::{reap_orphan, scratch};
use nix::sys::signal::{kill, Signal};
use std::fs;
use std::time::{Duration, Instant};

const BAD_RELEASE: &str = env!("CARGO_BIN_EXE_bad-release");
const SERVERS: [(&str, &str); 2] = [
    ("threads", env!("CARGO_BIN_EXE_hello-server")),
    ("tokio", env!("CARGO_BIN_EXE_async-hello-server")),
];
const RUNS: usize = 3;
const WORKERS: usize = 4;
const CLIENTS: usize = 8;
/// Requests before a change, and again after it.
const AROUND: u64 = 5_000;

#[derive(Clone, Copy, Debug)]
enum Change {
    RollingRestart,
    Upgrade,
    Rollback,
    /// To `tests/fixtures/bad_release.rs`, rolled back during its trial.
    BadRelease,
    /// Every worker recycled after 300 requests (`max_requests`), eight times over.
    Recycling,
}

impl Change {
    fn name(self) -> &'static str {
        match self {
            Change::RollingRestart => "HUP (rolling restart)",
            Change::Upgrade => "USR2 (upgrade)",
            Change::Rollback => "USR2 to a binary that exits (rollback)",
            Change::BadRelease => "USR2 to a release that crashes on its first requests (trial)",
            Change::Recycling => "max_requests = 300: eight workers recycled",
        }
    }
}

/// One run through a change.
struct Run {
    tally: Tally,
    p99_before: Duration,
    p99_during: Duration,
    gap_before: Duration,
    gap_during: Duration,
    /// From the signal to the change done: the last replacement, the old master gone, the
    /// rollback logged.
    took: Duration,
    /// For an upgrade, from the signal to the hand-over (the new fleet ready, its trial
    /// begun).
    handed_over: Option<Duration>,
    /// Requests answered in a window as long as the change's, before it.
    answered_before: u64,
}

fn through(server: &str, keep_alive: bool, change: Change, run: usize) -> Run {
    let name = format!("bench-servers-{change:?}-{keep_alive}-{run}");
    let deployment = Deployment::new(scratch!(name), server);
    let status = deployment.dir.join("status.json");
    let status = status.to_str().expect("a UTF-8 path");
    let settings: &[(&str, &str)] = match change {
        Change::Recycling => &[("KAMISAMA_MAX_REQUESTS", "300")],
        // The bad release waits for its trial in the status file: it fails after the
        // hand-over, not during its start (which the new master's own respawn limit ends).
        Change::BadRelease => &[("KAMISAMA_STATUS_FILE", status)],
        _ => &[],
    };
    let (mut master, address, _) = deployment.start(WORKERS, settings);
    let old = master.pid();
    let load = Load::start(address, CLIENTS, keep_alive);
    let warm = Instant::now();
    load.wait_for(AROUND);
    let signalled = Instant::now();
    let mut handed_over = None;
    let mut successor = None;
    match change {
        Change::RollingRestart => {
            master.signal(Signal::SIGHUP);
            master.wait_for_line("rolling-restart-finished");
        }
        Change::Upgrade => {
            deployment.install(&fs::read(server).expect("the server"));
            let new = upgrade(&master, old);
            master.wait_for_line(&format!("kamisama[{old}]: upgrade-trial"));
            handed_over = Some(signalled.elapsed());
            master.wait_exit_alone();
            successor = Some(new);
        }
        Change::BadRelease => {
            deployment.install(&fs::read(BAD_RELEASE).expect("the bad release"));
            master.signal(Signal::SIGUSR2);
            master.wait_for_line("upgrade-failed");
            // Done once the fleet forked again is ready.
            master.wait_for_lines(&format!("kamisama[{old}]: ready workers="), 2);
        }
        Change::Recycling => {
            let before = master.count_lines("recycling index=");
            master.wait_for_lines("recycling index=", before + 8);
        }
        Change::Rollback => {
            deployment.install_script("exit 1");
            master.signal(Signal::SIGUSR2);
            master.wait_for_line("upgrade-failed");
        }
    }
    let done = Instant::now();
    load.wait_for(AROUND);
    let tally = load.stop();
    match successor {
        Some(successor) => {
            kill(successor, Signal::SIGTERM).expect("signal the new master");
            reap_orphan(successor);
        }
        None => {
            master.signal(Signal::SIGTERM);
            master.wait_exit();
        }
    }
    let p99 = |from, until| tally.latency(99, from, until).unwrap_or_default();
    // The change's window, and one as long before it.
    let during = (signalled, done.max(signalled + Duration::from_millis(100)));
    let before = (signalled - (during.1 - during.0), signalled);
    Run {
        p99_before: p99(warm, signalled),
        p99_during: p99(signalled, done),
        gap_before: tally.longest_gap_in(Some(before)),
        gap_during: tally.longest_gap_in(Some(during)),
        took: done - signalled,
        handed_over,
        answered_before: tally
            .answers
            .iter()
            .filter(|(at, _)| (before.0..before.1).contains(at))
            .count() as u64,
        tally,
    }
}

fn median<T: Ord + Copy>(mut values: Vec<T>) -> T {
    values.sort_unstable();
    values[values.len() / 2]
}

fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

/// The busiest worker's count over the least busy one's.
fn spread(counts: &std::collections::BTreeMap<u32, u64>) -> f64 {
    let most = counts.values().max().copied().unwrap_or(0);
    let least = counts.values().min().copied().unwrap_or(0);
    match counts.len() {
        WORKERS => most as f64 / least.max(1) as f64,
        // A worker that got nothing at all.
        _ => f64::INFINITY,
    }
}

fn connections(keep_alive: bool) -> &'static str {
    if keep_alive {
        "kept alive"
    } else {
        "one per request"
    }
}

fn changes() {
    println!("| server | connections | change | requests | failed | p99 before | p99 during | longest gap before, during (worst anywhere) | done in |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|");
    for (server, binary) in SERVERS {
        for keep_alive in [false, true] {
            for change in [
                Change::RollingRestart,
                Change::Upgrade,
                Change::Rollback,
                Change::BadRelease,
                Change::Recycling,
            ] {
                let only = std::env::var("ONLY_CHANGE").ok();
                if only.is_some_and(|only| only != format!("{change:?}")) {
                    continue;
                }
                let runs: Vec<Run> = (0..RUNS)
                    .map(|run| through(binary, keep_alive, change, run))
                    .collect();
                let requests: u64 = runs
                    .iter()
                    .map(|run| run.tally.ok + run.tally.failed())
                    .sum();
                let failed: u64 = runs.iter().map(|run| run.tally.failed()).sum();
                let answered_before: u64 = runs.iter().map(|run| run.answered_before).sum();
                let failed = match change {
                    Change::BadRelease => format!(
                        "{failed} ({:.2} % of {answered_before} answered before)",
                        failed as f64 * 100.0 / answered_before.max(1) as f64
                    ),
                    _ => failed.to_string(),
                };
                let before = median(runs.iter().map(|run| run.p99_before).collect());
                let during = median(runs.iter().map(|run| run.p99_during).collect());
                let gap_before = median(runs.iter().map(|run| run.gap_before).collect());
                let gap_during = median(runs.iter().map(|run| run.gap_during).collect());
                let gap_worst = runs
                    .iter()
                    .map(|run| run.tally.longest_gap())
                    .max()
                    .unwrap_or_default();
                let took = median(runs.iter().map(|run| run.took).collect());
                let handed_over: Vec<Duration> =
                    runs.iter().filter_map(|run| run.handed_over).collect();
                let done = if handed_over.is_empty() {
                    millis(took)
                } else {
                    format!(
                        "{} (handed over in {})",
                        millis(took),
                        millis(median(handed_over))
                    )
                };
                println!(
                    "| {server} | {} | {} | {requests} | {failed} | {} | {} | {}, {} ({}) | {done} |",
                    connections(keep_alive),
                    change.name(),
                    millis(before),
                    millis(during),
                    millis(gap_before),
                    millis(gap_during),
                    millis(gap_worst),
                );
            }
        }
    }
}

/// How evenly a steady load spreads over the workers.
fn fairness() {
    const REQUESTS: u64 = 20_000;
    println!("| server | connections | accepted, busiest / least busy worker | answered, busiest / least busy |");
    println!("|---|---|---:|---:|");
    for (server, binary) in SERVERS {
        for keep_alive in [false, true] {
            let mut accepted = Vec::new();
            let mut answered = Vec::new();
            for run in 0..RUNS {
                let name = format!("bench-servers-fairness-{server}-{keep_alive}-{run}");
                let deployment = Deployment::new(scratch!(name), binary);
                let (mut master, address, _) = deployment.start(WORKERS, &[]);
                // Every worker waiting in its accept, as in a fleet that has run a while.
                std::thread::sleep(Duration::from_millis(200));
                let load = Load::start(address, CLIENTS, keep_alive);
                load.wait_for(REQUESTS);
                let tally = load.stop();
                accepted.push(spread(&tally.accepted));
                answered.push(spread(&tally.served));
                master.signal(Signal::SIGTERM);
                master.wait_exit();
            }
            let median = |mut values: Vec<f64>| {
                values.sort_by(f64::total_cmp);
                values[values.len() / 2]
            };
            println!(
                "| {server} | {} | {:.2} | {:.2} |",
                connections(keep_alive),
                median(accepted),
                median(answered)
            );
        }
    }
}

/// How 64 kept-alive connections opened at once spread over the workers: each sends one
/// request and stays open, and the answers say which worker holds it.
fn burst() {
    use std::io::{Read, Write};
    const CONNECTIONS: usize = 64;
    println!("| server | {CONNECTIONS} kept-alive connections opened at once: busiest / least busy worker (runs) |");
    println!("|---|---:|");
    for (server, binary) in SERVERS {
        let mut spreads = Vec::new();
        for run in 0..RUNS {
            let name = format!("bench-servers-burst-{server}-{run}");
            let deployment = Deployment::new(scratch!(name), binary);
            let (mut master, address, _) = deployment.start(WORKERS, &[]);
            // Every worker waiting in its accept, as after a quiet moment.
            std::thread::sleep(Duration::from_millis(200));
            let mut streams: Vec<_> = (0..CONNECTIONS)
                .map(|_| std::net::TcpStream::connect(address).expect("connect"))
                .collect();
            for stream in &mut streams {
                stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                    .expect("send");
            }
            let mut held = std::collections::BTreeMap::new();
            for stream in &mut streams {
                let mut answer = Vec::new();
                let mut byte = [0; 1];
                while !answer.ends_with(b")\n") {
                    stream.read_exact(&mut byte).expect("an answer");
                    answer.push(byte[0]);
                }
                let answer = String::from_utf8_lossy(&answer).into_owned();
                let pid = answer.rsplit("(pid ").next().unwrap_or_default().to_owned();
                let pid: u32 = pid.trim_end_matches(")\n").parse().expect("a pid");
                *held.entry(pid).or_insert(0_u64) += 1;
            }
            spreads.push(spread(&held));
            drop(streams);
            master.signal(Signal::SIGTERM);
            master.wait_exit();
        }
        let shown: Vec<String> = spreads
            .iter()
            .map(|spread| format!("{spread:.2}"))
            .collect();
        println!("| {server} | {} |", shown.join(", "));
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    println!("{WORKERS} workers, {CLIENTS} clients on loopback, medians of {RUNS} runs");
    println!();
    if std::env::var_os("ONLY_FAIRNESS").is_none() {
        changes();
    }
    if std::env::var_os("ONLY_CHANGE").is_none() {
        println!();
        fairness();
        println!();
        burst();
    }
}
