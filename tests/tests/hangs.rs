//! Hang detection: a worker silent for `timeout` (or `boot_timeout` after its fork) gets the
//! hang signal, then SIGKILL, and is respawned as a crash; a worker that shows signs of life
//! in time never is. How close to the deadline detection comes is measured in the benchmark.
//!
//! cargo-mutants finds `|` turned into `^` between the flags of the shared mapping
//! (`SharedSlots::map`) alive: the flags are distinct bits, so the two are the same. The
//! mapping's length (`MAX_INSTANCES * 2 * size_of::<Words>()`) with `+` or `/` for a `*` is
//! short only for indices in the thousands at least, a fleet no test here forks; `now_nanos`'s clamp with
//! `*` for `+` or `/` for `-` lets 0 or `u64::MAX` through, which a monotonic clock in
//! nanoseconds shows only in its first nanosecond and after 584 years.

use kamisama_tests::{field, Master};
use nix::sys::signal::{kill, Signal};
use std::time::Duration;

const HEARTBEATS: &str = env!("CARGO_BIN_EXE_heartbeats");

/// Hang detection with `timeout`, and the default boot allowance of 60 s: a worker that has
/// shown a sign of life is judged by its timeout, not by that allowance.
fn watched(timeout: &str) -> kamisama_tests::Launch {
    Master::launch(HEARTBEATS).env("KAMISAMA_TIMEOUT", timeout)
}

/// The `silent_for` of a `hung` line.
fn silent_for(line: &str) -> Duration {
    let text = field(line, "silent_for").unwrap();
    let seconds: f64 = text.strip_suffix('s').unwrap().parse().unwrap();
    Duration::from_secs_f64(seconds)
}

#[test]
fn a_worker_that_stops_beating_is_hung_signalled_and_respawned() {
    let mut master = watched("1").env("HANG", "0").start();
    let before = master.wait_for_workers(2);
    master.wait_for_line("silent index=0");
    let hung = master.wait_for_line(&format!("hung index=0 pid={}", before[&0]));
    // Never before its time; how soon after is the benchmark's to say.
    let silent = silent_for(&hung);
    assert!(silent >= Duration::from_secs(1), "{hung}");
    assert!(silent < Duration::from_secs(2), "{hung}");
    // SIGABRT, which it does not handle, ends it: a crash, respawned and counted.
    master.wait_for_line(&format!("exited index=0 pid={} status=SIGABRT", before[&0]));
    master.wait_for_line("respawning index=0 respawns=1 limit=100");
    let after = master.wait_until("a new worker 0", || {
        master
            .workers()
            .filter(|now| now.len() == 2 && now[&0] != before[&0])
    });
    assert_eq!(after[&1], before[&1], "the healthy worker was left alone");
    assert_eq!(master.count_lines("hung index=1"), 0);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_successor_that_hangs_beside_the_worker_it_replaces_is_found_hung() {
    // HUP replaces each worker; the old one beats on for 5 s once asked to stop. The
    // successor of index 0 goes silent after three beats: its predecessor's beats are not
    // its own, and it is found hung while its predecessor still beats.
    let scratch = kamisama_tests::scratch!("hangs-successor");
    let marker = scratch.join("successors-hang");
    let mut master = watched("1")
        .env("HANG", "0")
        .env("HANG_ONLY_IF", marker.to_str().unwrap())
        .env("LINGER_MS", "5000")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "20")
        .start();
    let before = master.wait_for_workers(2);
    std::fs::write(&marker, "").unwrap();
    master.signal(Signal::SIGHUP);
    master.wait_for_line(&format!("replacing index=0 pid={}", before[&0]));
    let spawned = master.wait_for_lines("spawned index=0 ", 2);
    let successor = field(&spawned[1], "pid").unwrap().to_owned();
    let hung = master.wait_for_line(&format!("hung index=0 pid={successor}"));
    let output = master.transcript();
    let at_hung = output.find(&hung).unwrap();
    let old_exit = output.find(&format!("exited index=0 pid={}", before[&0]));
    assert!(
        old_exit.is_none_or(|at_exit| at_hung < at_exit),
        "found hung only once its predecessor was gone:\n{output}"
    );
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_hang_counts_against_the_respawn_limit() {
    let mut master = watched("1")
        .env("HANG", "0")
        .env("KAMISAMA_RESPAWN_LIMIT", "0")
        .start();
    master.expect_exit_code(1);
    master.wait_for_line("hung index=0");
    master.wait_for_line("gave-up");
}

#[test]
fn a_worker_that_ignores_the_hang_signal_is_killed_after_a_second() {
    let status = kamisama_tests::scratch!("hang-ignored").join("status.json");
    let mut master = watched("1")
        .env("HANG", "0")
        .env("IGNORE_ABRT", "1")
        .env("KAMISAMA_STATUS_FILE", status.to_str().unwrap())
        .start();
    let worker = master.wait_for_workers(2)[&0];
    // It ignores SIGABRT: the hang signal changes nothing, the SIGKILL after it does.
    master.wait_for_line(&format!("hung index=0 pid={worker}"));
    // Meanwhile the status says so.
    let hung = format!(r#"{{"index":0,"state":"hung","pid":{worker},"#);
    master.wait_until("the status to say hung", || {
        let text = std::fs::read_to_string(&status).ok()?;
        text.contains(&hung).then_some(())
    });
    master.wait_for_line(&format!("killed index=0 pid={worker} after=1s"));
    master.wait_for_line(&format!("exited index=0 pid={worker} status=SIGKILL"));
    master.wait_for_line("respawning index=0 respawns=1 limit=100");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn workers_that_beat_in_time_are_never_hung() {
    // Beats every half timeout, for ten beats each, while two threads keep the CPU busy.
    let mut master = watched("1").env("BEAT_MS", "500").start();
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let busy = busy.clone();
            std::thread::spawn(move || {
                while busy.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    master.wait_for_line("beat index=0 n=10");
    master.wait_for_line("beat index=1 n=10");
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    hogs.into_iter().for_each(|hog| hog.join().unwrap());
    master.expect_lines("hung", 0);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn waiting_through_the_handle_counts_as_alive() {
    // Pauses two and a half times the timeout long, in Worker::sleep.
    let mut master = watched("1")
        .env("BEAT_MS", "2500")
        .env("SLEEP_THROUGH_HANDLE", "1")
        .start();
    master.wait_for_line("beat index=0 n=2");
    master.wait_for_line("beat index=1 n=2");
    master.expect_lines("hung", 0);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn start_up_has_its_own_allowance_and_a_worker_that_never_beats_is_hung() {
    // First beats after 1.5 s: past the timeout of 1 s, within the boot timeout of 2 s.
    let mut master = watched("1")
        .env("KAMISAMA_BOOT_TIMEOUT", "2")
        .env("BOOT_MS", "1500")
        .env("SILENT", "1")
        .start();
    let workers = master.wait_for_workers(2);
    master.wait_for_line("beat index=0 n=1");
    let hung = master.wait_for_line(&format!("hung index=1 pid={}", workers[&1]));
    assert!(silent_for(&hung) >= Duration::from_secs(2), "{hung}");
    master.expect_lines("hung index=0", 0);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_first_beat_after_the_first_look_is_judged_a_timeout_after_it() {
    // The master first looks at a new worker a timeout after its fork, before its first
    // beat (1.5 s): it must look again a timeout later, not wait for the boot allowance
    // (10 s) to end, to find it hung a timeout after its third and last beat.
    let mut master = watched("1")
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_BOOT_TIMEOUT", "10")
        .env("BOOT_MS", "1500")
        .env("BEAT_MS", "100")
        .env("HANG", "0")
        .start();
    let worker = master.wait_for_workers(1)[&0];
    let hung = master.wait_for_line(&format!("hung index=0 pid={worker}"));
    let silent = silent_for(&hung);
    assert!(silent >= Duration::from_secs(1), "{hung}");
    assert!(silent < Duration::from_secs(3), "{hung}");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_respawned_worker_has_the_start_up_allowance_again() {
    // Every worker's first beat comes 1.5 s after its fork, past the timeout of 1 s but
    // within the boot allowance of 60 s. Judged by the last beat of the worker it replaces,
    // the new one would be hung before its first.
    let mut master = watched("1").env("BOOT_MS", "1500").start();
    let before = master.wait_for_workers(2);
    master.wait_for_line("beat index=0 n=2");
    kill(before[&0], Signal::SIGKILL).unwrap();
    master.wait_for_line(&format!("exited index=0 pid={} status=SIGKILL", before[&0]));
    master.wait_for_lines("beat index=0 n=2", 2);
    master.expect_lines("hung", 0);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn without_a_timeout_nothing_is_watched() {
    let mut master = Master::launch(HEARTBEATS).env("SILENT", "0").start();
    master.wait_for_line("started instances=2");
    master.wait_for_line("timeout=0s");
    master.wait_for_workers(2);
    master.wait_for_line("beat index=1 n=6");
    master.expect_lines("hung", 0);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_hang_after_a_wait_through_the_handle_is_found_when_every_worker_waited() {
    // The only worker waits through its handle for longer than the timeout, as an idle
    // server in `accept` does, then stops showing signs of life: the master, which had
    // nothing else to watch, must still find it hung a timeout after the wait.
    let mut master = watched("1")
        .env("KAMISAMA_INSTANCES", "1")
        .env("WAIT_THEN_SILENT_MS", "1500")
        .start();
    let worker = master.wait_for_workers(1)[&0];
    master.wait_for_line("waited index=0");
    let hung = master.wait_for_line(&format!("hung index=0 pid={worker}"));
    let silent = silent_for(&hung);
    assert!(silent >= Duration::from_secs(1), "{hung}");
    assert!(silent < Duration::from_secs(2), "{hung}");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_hang_after_a_wait_is_found_beside_a_worker_that_beats() {
    // Worker 0 beats only after each wait through its handle, three times, then goes
    // silent; worker 1 beats on. The beat that ends each wait is what shows it alive.
    let mut master = watched("1")
        .env("HANG", "0")
        .env("SLEEP_THROUGH_HANDLE", "1")
        .start();
    let worker = master.wait_for_workers(2)[&0];
    master.wait_for_line("silent index=0");
    master.wait_for_line(&format!("hung index=0 pid={worker}"));
    master.expect_lines("hung index=1", 0);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_worker_stopped_while_it_waits_through_the_handle_is_hung() {
    // It beats once, then waits a minute in `Worker::sleep`, where SIGSTOP finds it.
    let mut master = watched("1")
        .env("KAMISAMA_INSTANCES", "1")
        .env("SLEEP_THROUGH_HANDLE", "1")
        .env("BEAT_MS", "60000")
        .start();
    let worker = master.wait_for_workers(1)[&0];
    master.wait_for_line("beat index=0 n=1");
    kill(worker, Signal::SIGSTOP).unwrap();
    let stopped = std::time::Instant::now();
    let hung = master.wait_for_line(&format!("hung index=0 pid={worker}"));
    // Seen stopped at the master's next look, at most a timeout later, and hung once it has
    // stayed so for a timeout: within two.
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "hung {took:?} after SIGSTOP: {hung}"
    );
    assert!(
        took < Duration::from_millis(2900),
        "hung {took:?} after SIGSTOP: {hung}"
    );
    // The hang signal acts (a core dump needs the process running), and the worker ends.
    master.wait_for_line(&format!("exited index=0 pid={worker} status=SIGABRT"));
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

/// The time from a worker's `hung` line to its `killed` line, both read as they arrive.
fn hung_to_killed(master: &Master, index: usize) -> Duration {
    master.wait_for_line(&format!("hung index={index}"));
    let hung = std::time::Instant::now();
    let killed = master.wait_for_line(&format!("killed index={index}"));
    let took = hung.elapsed();
    assert!(killed.contains("after="), "{killed}");
    took
}

#[test]
fn a_hung_worker_gets_sigkill_a_second_after_the_hang_signal() {
    // Not sooner (the hang signal has its second to act), and not much later: the grace is
    // a second, not the shutdown timeout of five.
    let mut master = watched("1")
        .env("HANG", "0")
        .env("IGNORE_ABRT", "1")
        .start();
    let took = hung_to_killed(&master, 0);
    assert!(
        took >= Duration::from_millis(900),
        "killed {took:?} after the hang"
    );
    assert!(
        took < Duration::from_millis(2500),
        "killed {took:?} after the hang"
    );
    master.wait_for_line("killed index=0 pid=");
    master.wait_for_line("after=1s");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn hang_grace_sets_the_time_before_sigkill() {
    let mut master = watched("1")
        .env("HANG", "0")
        .env("IGNORE_ABRT", "1")
        .env("KAMISAMA_HANG_GRACE", "3")
        .start();
    let took = hung_to_killed(&master, 0);
    assert!(
        took >= Duration::from_millis(2900),
        "killed {took:?} after the hang"
    );
    assert!(
        took < Duration::from_millis(4500),
        "killed {took:?} after the hang"
    );
    master.wait_for_line("after=3s");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_real_time_signal_may_be_the_hang_signal() {
    let mut master = watched("1")
        .env("HANG", "0")
        .env("KAMISAMA_HANG_SIGNAL", "SIGRTMIN+1")
        .start();
    let worker = master.wait_for_workers(2)[&0];
    master.wait_for_line(&format!("hung index=0 pid={worker}"));
    // Its default action ends the worker, which says so.
    master.wait_for_line(&format!("exited index=0 pid={worker} status=SIGRTMIN+1"));
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}
