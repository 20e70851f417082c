//! Recycling: a worker that has run for `max_lifetime` is replaced before it is stopped, one
//! at a time, without counting against `respawn_limit`, and without a failed request under
//! load.

use kamisama_tests::deployment::{spawned_by, Deployment};
use kamisama_tests::load::Load;
use kamisama_tests::{field, scratch, Master};
use nix::sys::signal::Signal;
use std::time::Duration;

const SUPERVISED: &str = env!("CARGO_BIN_EXE_supervised");
const HELLO: &str = env!("CARGO_BIN_EXE_hello-server");
const ASYNC_HELLO: &str = env!("CARGO_BIN_EXE_async-hello-server");

/// Where `needle` first appears in `master`'s output, in lines.
fn line_of(master: &Master, needle: &str) -> usize {
    let transcript = master.transcript();
    transcript
        .lines()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in:\n{transcript}"))
}

/// The `at=` (monotonic nanoseconds) of the worker `pid`'s start, from its first line.
fn started_at(master: &Master, pid: &str) -> u64 {
    let line = master.wait_for_line(&format!("worker-started index=0 pid={pid} "));
    field(&line, "at").unwrap().parse().unwrap()
}

#[test]
fn a_worker_past_its_max_lifetime_is_replaced_before_it_is_stopped() {
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "2")
        .env("KAMISAMA_MAX_LIFETIME", "1")
        // Any respawn counted would end the fleet.
        .env("KAMISAMA_RESPAWN_LIMIT", "0")
        .start();
    let old = master.wait_for_line("spawned index=0 ");
    let old = field(&old, "pid").unwrap().to_owned();
    let recycling = master.wait_for_line(&format!("recycling index=0 pid={old} "));
    // Its successor is forked first, then it is stopped.
    let successor = master.wait_for_lines("spawned index=0 ", 2).remove(1);
    let successor = field(&successor, "pid").unwrap().to_owned();
    master.wait_for_line(&format!(
        "exited index=0 pid={old} status=SIGTERM stopped=true"
    ));
    assert!(
        line_of(&master, &format!("spawned index=0 pid={successor}"))
            < line_of(&master, &format!("exited index=0 pid={old} "))
    );
    // Not before its lifetime, and not much after: measured between the two workers' first
    // lines, each written a moment after its fork (the old one's later, under load, by up to
    // a few milliseconds), and as the master measured it, from fork to recycle.
    let lived = started_at(&master, &successor) - started_at(&master, &old);
    let lived = Duration::from_nanos(lived);
    assert!(lived >= Duration::from_millis(950), "{lived:?}");
    let said: f64 = field(&recycling, "lived")
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(said >= 1.0, "{recycling}");
    assert!(
        lived < Duration::from_millis(2500),
        "{lived:?} ({recycling})"
    );
    // The other index too, and again: a recycle is no crash.
    master.wait_for_line("recycling index=1 ");
    master.wait_for_lines("recycling index=0 ", 2);
    master.expect_lines("respawning", 0);
    master.expect_lines("gave-up", 0);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

#[test]
fn the_status_file_counts_recycles_apart_from_restarts() {
    let status = scratch!("recycle-status").join("status.json");
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_MAX_LIFETIME", "1")
        .env("KAMISAMA_STATUS_FILE", status.to_str().unwrap())
        .start();
    master.wait_for_lines("recycling index=0 ", 2);
    let worker = master.wait_until("two recycles in the status file", || {
        let text = std::fs::read_to_string(&status).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        let worker = json["workers"][0].clone();
        (worker["recycles"] == 2 && worker["state"] == "running").then_some(worker)
    });
    assert_eq!(worker["restarts"], 0, "{worker}");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

#[test]
fn one_worker_is_replaced_at_a_time() {
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "3")
        .env("KAMISAMA_MAX_LIFETIME", "1")
        .start();
    master.wait_for_lines("recycling index=", 6);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    // Each recycle's successor was forked before the next recycle began.
    let transcript = master.transcript();
    let lines: Vec<&str> = transcript.lines().collect();
    for (at, line) in lines.iter().enumerate() {
        if !line.contains(": recycling index=") || at + 1 >= lines.len() {
            continue;
        }
        let index = field(line, "index").unwrap();
        let next = lines[at + 1..]
            .iter()
            .find(|line| line.contains(": recycling index=") || line.contains(": spawned index="));
        if let Some(next) = next {
            assert!(
                next.contains(&format!("spawned index={index} ")),
                "{line} then {next}:\n{transcript}"
            );
        }
    }
    master.expect_tree_gone();
}

#[test]
fn recycle_at_once_replaces_that_many_workers_together_and_no_more() {
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "4")
        .env("KAMISAMA_MAX_LIFETIME", "1")
        .env("KAMISAMA_RECYCLE_AT_ONCE", "2")
        .start();
    master.wait_for_lines("recycling index=", 8);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    // The workers forked together came due together: two recycles begin in one turn (two
    // `recycling` lines before their successors' `spawned`), never more.
    let transcript = master.transcript();
    let mut together = 0;
    let mut most = 0;
    for line in transcript.lines() {
        if line.contains(": recycling index=") {
            together += 1;
            most = most.max(together);
        } else if line.contains(": spawned index=") {
            together = 0;
        }
    }
    assert_eq!(most, 2, "{transcript}");
    master.expect_tree_gone();
}

#[test]
fn a_replaced_worker_that_ignores_its_stop_is_killed_after_shutdown_timeout() {
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_MAX_LIFETIME", "1")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "1")
        .env("FIXTURE", "ignore-term")
        .start();
    let old = master.wait_for_line("spawned index=0 ");
    let old = field(&old, "pid").unwrap().to_owned();
    master.wait_for_line(&format!("recycling index=0 pid={old} "));
    master.wait_for_line(&format!("killed index=0 pid={old} after=1s"));
    master.wait_for_line(&format!(
        "exited index=0 pid={old} status=SIGKILL stopped=true"
    ));
    master.expect_lines("respawning", 0);
    master.shut_down_now();
    master.wait_exit();
    master.expect_tree_gone();
}

#[test]
fn a_shutdown_during_a_recycle_stops_the_replaced_worker_too() {
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_MAX_LIFETIME", "1")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "1")
        .env("FIXTURE", "ignore-term")
        .start();
    let old = master.wait_for_line("spawned index=0 ");
    let old = field(&old, "pid").unwrap().to_owned();
    master.wait_for_line(&format!("recycling index=0 pid={old} "));
    // The replaced worker lingers (it ignores TERM) as the master is stopped.
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
    assert!(master.count_lines(&format!("exited index=0 pid={old} ")) == 1);
}

/// Keeps clients busy on a hello server whose workers are each recycled every second or so.
fn recycling_under_load(server: &str, name: &str, keep_alive: bool) {
    let deployment = Deployment::new(scratch!(name), server);
    let settings = [
        ("KAMISAMA_MAX_LIFETIME", "1"),
        ("KAMISAMA_MAX_LIFETIME_JITTER", "1"),
    ];
    let (mut master, address, _) = deployment.start(4, &settings);
    let load = Load::start(address, 8, keep_alive);
    master.wait_for_lines("recycling index=", 8);
    load.wait_for(100);
    let tally = load.stop();
    assert_eq!(tally.failed(), 0, "{tally:?}");
    // Requests were answered by more workers than ever ran at once.
    assert!(tally.served.len() > 4, "{:?}", tally.served);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_lines("respawning", 0);
    spawned_by(&master, master.pid(), 12);
}

#[test]
fn recycling_under_load_loses_no_request() {
    recycling_under_load(HELLO, "recycle-load", false);
}

#[test]
fn recycling_under_load_loses_no_request_on_kept_alive_connections() {
    recycling_under_load(HELLO, "recycle-load-keep-alive", true);
}

#[test]
fn recycling_async_workers_under_load_loses_no_request() {
    recycling_under_load(ASYNC_HELLO, "recycle-load-async", false);
}

#[test]
fn a_replaced_worker_is_stopped_only_once_its_successor_is_ready() {
    let dir = scratch!("recycle-ready");
    let slow = dir.join("slow");
    let mut master = Master::launch(env!("CARGO_BIN_EXE_declared"))
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_MAX_LIFETIME", "1")
        .env("READY_MS", "0")
        .env("READY_DIR", dir.to_str().unwrap())
        .env("SLOW_READY_FILE", slow.to_str().unwrap())
        .start();
    let old = master.wait_for_line("spawned index=0 ");
    let old = field(&old, "pid").unwrap().to_owned();
    master.wait_for_line("ready workers=1");
    // From now on, a new worker takes an hour to be ready.
    std::fs::write(&slow, b"").unwrap();
    master.wait_for_line(&format!("recycling index=0 pid={old} "));
    let successor = master.wait_for_lines("spawned index=0 ", 2).remove(1);
    let successor = field(&successor, "pid").unwrap().to_owned();
    master.wait_for_line(&format!("worker-started index=0 pid={successor}"));
    // Watched for a second: the old worker serves on beside its successor, which is not
    // ready, and no other recycle begins.
    let old_pid = nix::unistd::Pid::from_raw(old.parse().unwrap());
    let watched = std::time::Instant::now();
    while watched.elapsed() < Duration::from_secs(1) {
        assert!(kamisama_tests::is_alive(old_pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    master.expect_lines(&format!("exited index=0 pid={old} "), 0);
    master.expect_lines("recycling index=", 1);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

/// Runs a hello server with `max_requests` under load until `recycles` workers were recycled
/// for it; checks that none was before its count, and that no request failed.
fn max_requests_under_load(name: &str, keep_alive: bool) {
    let deployment = Deployment::new(scratch!(name), HELLO);
    let settings = [("KAMISAMA_MAX_REQUESTS", "50")];
    let (mut master, address, _) = deployment.start(2, &settings);
    let load = Load::start(address, 4, keep_alive);
    let lines = master.wait_for_lines("reason=requests", 6);
    // The event says how many requests the worker counted: its limit at least, more when
    // it served on while another recycle went first (one at a time).
    for line in &lines {
        let completed: u64 = field(line, "completed").unwrap().parse().unwrap();
        assert!(completed >= 50, "{line}");
    }
    let recycled: Vec<u32> = lines
        .iter()
        .map(|line| field(line, "pid").unwrap().parse().unwrap())
        .collect();
    load.wait_for(50);
    let tally = load.stop();
    assert_eq!(tally.failed(), 0, "{tally:?}");
    for pid in &recycled {
        let served = tally.served.get(pid).copied().unwrap_or(0);
        assert!(
            served >= 50,
            "{pid} recycled after {served}: {:?}",
            tally.served
        );
    }
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_lines("respawning", 0);
    master.expect_lines("reason=lifetime", 0);
}

#[test]
fn a_worker_that_completed_its_max_requests_is_replaced() {
    max_requests_under_load("recycle-requests", false);
}

#[test]
fn a_worker_that_completed_its_max_requests_on_kept_alive_connections_is_replaced() {
    max_requests_under_load("recycle-requests-keep-alive", true);
}

#[test]
fn a_worker_past_max_memory_is_replaced_and_one_below_it_is_not() {
    // Index 0 holds 64 MiB past a limit of 32 MiB; index 1 holds nothing. The first sample
    // comes 5 s after the start.
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "2")
        .env("KAMISAMA_MAX_MEMORY", "32M")
        .env("FIXTURE", "hold-64m-index-0")
        .start();
    let first = master.wait_for_line("spawned index=0 ");
    let first = field(&first, "pid").unwrap().to_owned();
    let line = master.wait_for_line("recycling index=0 ");
    assert_eq!(field(&line, "pid"), Some(&*first), "{line}");
    assert_eq!(field(&line, "reason"), Some("memory"), "{line}");
    // Its successor holds as much: replaced at the next sample, five seconds on.
    master.wait_for_lines("recycling index=0 ", 2);
    master.expect_lines("recycling index=1 ", 0);
    master.expect_lines("respawning", 0);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}
