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
//! Last, the fast requests' latency when one in ten is slow, and requests a second from wrk
//! against nginx (installed from Debian's packages when missing). `ONLY_FAIRNESS=1` runs the fairness tables alone; `ONLY_THROUGHPUT=1` the
//! throughput; `ONLY_CHANGE=BadRelease` (or `RollingRestart`, `Upgrade`, `Rollback`) one
//! change alone.

use kamisama_tests::deployment::{upgrade, Deployment};
use kamisama_tests::load::{kept_alive, Load, Tally};
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
            let streams = kept_alive(&address.to_string(), CONNECTIONS);
            let mut held = std::collections::BTreeMap::new();
            for (_, pid) in &streams {
                *held.entry(*pid).or_insert(0_u64) += 1;
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

/// The fast requests' p99 with one request in ten waiting 200 ms (`/sleep/200`), against
/// their p99 with none: whether a worker busy on a slow request holds up the others.
fn slow_requests() {
    const REQUESTS: u64 = 1_500;
    println!("| server | connections | fast requests' p99, none slow | one in ten slow (200 ms) | ratio |");
    println!("|---|---|---:|---:|---:|");
    for (server, binary) in SERVERS {
        for keep_alive in [false, true] {
            let mut ratios = Vec::new();
            let mut p99s = [Vec::new(), Vec::new()];
            for run in 0..RUNS {
                for (at, slow) in [None, Some((10, 200))].into_iter().enumerate() {
                    let name = format!("bench-servers-slow-{server}-{keep_alive}-{run}-{at}");
                    let deployment = Deployment::new(scratch!(name), binary);
                    let (mut master, address, _) = deployment.start(WORKERS, &[]);
                    let load = Load::with_slow_requests(address, CLIENTS, keep_alive, slow);
                    load.wait_for(REQUESTS);
                    let tally = load.stop();
                    assert_eq!(tally.failed(), 0, "{tally:?}");
                    let from = tally.requests.iter().map(|(started, _)| *started).min();
                    let from = from.expect("fast requests");
                    let p99 = tally.latency(99, from, Instant::now()).unwrap_or_default();
                    p99s[at].push(p99);
                    master.signal(Signal::SIGTERM);
                    master.wait_exit();
                }
                let [quiet, slowed] = [&p99s[0], &p99s[1]].map(|p99s| p99s[run].as_secs_f64());
                ratios.push(slowed / quiet);
            }
            ratios.sort_by(f64::total_cmp);
            let [quiet, slowed] = p99s.map(median);
            println!(
                "| {server} | {} | {} | {} | {:.2} |",
                connections(keep_alive),
                millis(quiet),
                millis(slowed),
                ratios[ratios.len() / 2]
            );
        }
    }
}

/// Requests a second from wrk (2 threads, 64 connections, 3 s) to the two servers and to
/// nginx answering a fixed body with as many workers, in turn, a new connection per request
/// and kept alive. wrk and nginx-light come from Debian's packages, installed when missing
/// (as root); without them, the table says so.
fn throughput() {
    if let Err(missing) = ensure_packages(&[("wrk", "wrk"), ("nginx", "nginx-light")]) {
        println!("(throughput against nginx skipped: {missing})");
        return;
    }
    println!("| connections | nginx | threads | tokio | threads / nginx | tokio / nginx | (requests a second, runs) |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for keep_alive in [false, true] {
        let mut rates: [Vec<f64>; 3] = Default::default();
        for run in 0..RUNS {
            rates[0].push(nginx_rate(keep_alive, run));
            for (at, (server, binary)) in SERVERS.iter().enumerate() {
                let name = format!("bench-servers-rate-{server}-{keep_alive}-{run}");
                let deployment = Deployment::new(scratch!(name), binary);
                let (mut master, address, _) = deployment.start(WORKERS, &[]);
                rates[at + 1].push(wrk(&address.to_string(), keep_alive));
                master.signal(Signal::SIGTERM);
                master.wait_exit();
            }
        }
        let runs: Vec<String> = (0..RUNS)
            .map(|run| {
                let rate = |at: usize| format!("{:.0}", rates[at][run]);
                format!("{}/{}/{}", rate(0), rate(1), rate(2))
            })
            .collect();
        let [nginx, threads, tokio] = rates.map(|mut rates| {
            rates.sort_by(f64::total_cmp);
            rates[rates.len() / 2]
        });
        println!(
            "| {} | {nginx:.0} | {threads:.0} | {tokio:.0} | {:.2} | {:.2} | {} |",
            connections(keep_alive),
            threads / nginx,
            tokio / nginx,
            runs.join(", ")
        );
    }
}

/// Makes sure each `(program, package)` is installed, with apt-get as root if need be.
fn ensure_packages(wanted: &[(&str, &str)]) -> Result<(), String> {
    let found = |program: &str| {
        std::process::Command::new("sh")
            .args([
                "-c",
                &format!("command -v {program} || test -x /usr/sbin/{program}"),
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(program, _)| !found(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(format!(
            "{} not installed, and not root",
            missing.join(", ")
        ));
    }
    let installed = std::process::Command::new("apt-get")
        .args(["install", "-y", "-q"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(std::process::Stdio::null())
        .status();
    match installed {
        Ok(status) if status.success() => Ok(()),
        _ => Err(format!("apt-get install {} failed", missing.join(" "))),
    }
}

/// nginx with `WORKERS` workers answering `hello from nginx` on a free port: its rate.
fn nginx_rate(keep_alive: bool, run: usize) -> f64 {
    let dir = scratch!(format!("bench-servers-nginx-{keep_alive}-{run}"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|free| free.local_addr())
        .expect("a free port")
        .port();
    let config = format!(
        "worker_processes {WORKERS};\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; keepalive_timeout 5; keepalive_requests 1000000;\n\
         client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};\n\
         uwsgi_temp_path {dir}; scgi_temp_path {dir};\n\
         server {{ listen 127.0.0.1:{port}; location / {{ default_type text/plain;\n\
         return 200 \"hello from nginx\\n\"; }} }} }}\n",
        dir = dir.display()
    );
    fs::write(dir.join("nginx.conf"), config).expect("nginx.conf");
    let nginx = if std::path::Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    };
    let mut child = std::process::Command::new(nginx)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-p")
        .arg(&dir)
        .args(["-g", "daemon off;"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nginx");
    let address = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(Instant::now() < deadline, "nginx did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rate = wrk(&address, keep_alive);
    // QUIT: nginx's graceful stop; its workers go with it.
    let _ = kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGQUIT,
    );
    let _ = child.wait();
    rate
}

/// wrk's requests a second on `address` (2 threads, 64 connections, 3 s); a run with a
/// failed request is not a figure.
fn wrk(address: &str, keep_alive: bool) -> f64 {
    let mut command = std::process::Command::new("wrk");
    command.args(["-t2", "-c64", "-d3s"]);
    if !keep_alive {
        command.args(["-H", "Connection: close"]);
    }
    let output = command
        .arg(format!("http://{address}/"))
        .output()
        .expect("wrk");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "{text}"
    );
    text.lines()
        .find_map(|line| line.strip_prefix("Requests/sec:"))
        .and_then(|rate| rate.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rate in wrk's output: {text}"))
}

fn main() {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    println!("{WORKERS} workers, {CLIENTS} clients on loopback, medians of {RUNS} runs");
    println!();
    let only = |name: &str| std::env::var_os(name).is_some();
    if !only("ONLY_FAIRNESS") && !only("ONLY_THROUGHPUT") {
        changes();
    }
    if !only("ONLY_CHANGE") && !only("ONLY_THROUGHPUT") {
        println!();
        fairness();
        println!();
        burst();
    }
    if !only("ONLY_CHANGE") && !only("ONLY_FAIRNESS") {
        println!();
        slow_requests();
        println!();
        throughput();
    }
}
