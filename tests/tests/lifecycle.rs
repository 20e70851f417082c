//! The lifecycle beyond respawning: cooperative stops, worker results, restart policies,
//! rolling restarts, forwarded signals, backoff and the event callback.
//!
//! cargo-mutants finds these alive in `worker/stop.rs`, the stop request's setup: the `-1`
//! that the stop pipe's descriptors start as turned into `1` (`install` overwrites them
//! before any `Worker` exists); `O_CLOEXEC | O_NONBLOCK` turned into `^` (distinct bits);
//! and the watchdog's rounding up to whole seconds with `>=` or `==` for `>`, which arm the
//! alarm of a whole-second timeout one second late, past the bound the master itself keeps.

use kamisama_tests::{children_of, field, Launch, Master};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

const SUPERVISED: &str = env!("CARGO_BIN_EXE_supervised");
const COOPERATIVE: &str = env!("CARGO_BIN_EXE_cooperative");
const BATCH: &str = env!("CARGO_BIN_EXE_batch");
const EVENTS: &str = env!("CARGO_BIN_EXE_events");
const BY_HAND: &str = env!("CARGO_BIN_EXE_by-hand");
const RETURNING: &str = env!("CARGO_BIN_EXE_returning");

/// The master's own log lines, without their `kamisama[PID]: ` prefix.
fn master_log(master: &Master) -> Vec<String> {
    let prefix = format!("kamisama[{}]: ", master.pid());
    master
        .transcript()
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

/// Where the first line starting with `start` is in `log`.
fn position(log: &[String], start: &str) -> usize {
    log.iter()
        .position(|line| line.starts_with(start))
        .unwrap_or_else(|| panic!("no {start:?} in {log:#?}"))
}

#[test]
fn a_cooperative_worker_finishes_its_job_on_term() {
    let mut master = Master::launch(COOPERATIVE).env("JOB_MS", "500").start();
    let workers = master.wait_for_workers(2);
    master.wait_for_line("job-started index=0 job=1");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    // TERM arrived mid-job: the job ran to its end, then the worker returned.
    let transcript = master.transcript();
    assert!(
        transcript.contains("job-finished index=0 job=1"),
        "{transcript}"
    );
    for (index, pid) in &workers {
        master.wait_for_line(&format!("worker-stopping index={index} jobs=1"));
        master.wait_for_line(&format!("exited index={index} pid={pid} status=0"));
    }
    assert_eq!(master.count_lines("killed"), 0, "{transcript}");
}

#[test]
fn a_cooperative_worker_finishes_its_job_on_ttou() {
    let mut master = Master::launch(COOPERATIVE).env("JOB_MS", "500").start();
    let workers = master.wait_for_workers(2);
    master.wait_for_line("job-started index=1 job=1");
    master.signal(Signal::SIGTTOU);
    master.wait_for_line(&format!("exited index=1 pid={} status=0", workers[&1]));
    // Printed before the worker returned: had TERM cut the job short, it would never come.
    master.wait_for_line("job-finished index=1 job=1");
    assert_eq!(master.wait_for_workers(1)[&0], workers[&0]);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

/// Lets two cooperative workers nap for an hour, sends TERM, and checks that both return
/// cleanly: well within the test's deadline, so the nap was cut short.
fn a_long_nap_is_cut_short(launch: Launch) {
    let mut master = launch.env("NAP_MS", "3600000").start();
    master.wait_for_lines("napping", 2);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.wait_for_lines("worker-stopping", 2);
    master.expect_lines("status=0", 2);
}

#[test]
fn a_stop_request_cuts_a_long_nap_short() {
    a_long_nap_is_cut_short(Master::launch(COOPERATIVE).env("JOB_MS", "1"));
}

#[test]
fn a_stop_request_wakes_a_nap_on_another_thread() {
    a_long_nap_is_cut_short(Master::launch(COOPERATIVE).env("NAP_IN_THREAD", "1"));
}

#[test]
fn a_cooperative_worker_whose_master_dies_still_stops() {
    let mut master = Master::launch(COOPERATIVE).env("NAP_MS", "3600000").start();
    let workers = master.wait_for_workers(2);
    master.wait_for_lines("napping", 2);
    master.signal(Signal::SIGKILL);
    master.wait_exit();
    // The kernel's TERM is a stop request: each orphan finishes and returns.
    for pid in workers.values() {
        let status = kamisama_tests::reap_orphan(*pid);
        assert_eq!(status, nix::sys::wait::WaitStatus::Exited(*pid, 0));
    }
    master.expect_tree_gone();
}

#[test]
fn an_orphaned_worker_that_ignores_its_stop_request_is_ended_by_its_watchdog() {
    // A job of an hour, never interrupted; with no master left to send SIGKILL, the worker's
    // own alarm ends it after the shutdown timeout.
    let master = Master::launch(COOPERATIVE)
        .env("JOB_MS", "3600000")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "1")
        .start();
    master.wait_for_workers(2);
    master.wait_for_lines("job-started", 2);
    each_orphan_ends_by_its_alarm(master);
}

/// Kills the master, whose workers ignore the stop request their death signal brings, and
/// checks that each orphan's own alarm ends it.
fn each_orphan_ends_by_its_alarm(mut master: Master) {
    let workers = master.wait_for_workers(2);
    master.signal(Signal::SIGKILL);
    master.wait_exit();
    for pid in workers.values() {
        let status = kamisama_tests::reap_orphan(*pid);
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Signaled(*pid, Signal::SIGALRM, false)
        );
    }
    master.expect_tree_gone();
}

#[test]
fn the_watchdog_of_a_shutdown_timeout_under_a_second_is_armed_for_one() {
    // Half a second, from the builder: `alarm` counts whole seconds, and a timeout rounded
    // down to none would arm nothing.
    let master = Master::launch(BY_HAND)
        .env("BY_HAND_STUBBORN_MS", "500")
        .start();
    each_orphan_ends_by_its_alarm(master);
}

#[test]
fn an_err_is_printed_and_exits_1() {
    let mut master = Master::launch(COOPERATIVE)
        .env("FAIL", "1")
        .env("KAMISAMA_RESPAWN_LIMIT", "0")
        .start();
    let line = master.wait_for_line("worker-failed index=");
    assert!(
        line.ends_with("error=\"shard 0 is corrupt\"")
            || line.ends_with("error=\"shard 1 is corrupt\""),
        "{line}"
    );
    master.expect_exit_code(1);
    let exited = master.wait_for_line("exited index=");
    assert_eq!(field(&exited, "status"), Some("1"), "{exited}");
}

#[test]
fn on_failure_retries_a_failed_shard_and_ends_when_all_are_done() {
    let dir = kamisama_tests::scratch!("on-failure-batch");
    let dir = dir.to_str().unwrap();
    let mut master = Master::launch(BATCH)
        .env("BATCH_DIR", dir)
        .env("FAIL_ONCE", "1")
        .start();
    master.expect_exit_code(0);
    for index in 0..4 {
        master.wait_for_line(&format!("shard-done index={index}"));
        master.wait_for_line(&format!("done index={index} succeeded=true"));
    }
    assert_eq!(master.count_lines("respawning index=1 "), 1);
    assert_eq!(master.count_lines("respawning"), 1);
    master.wait_for_line("all-done failed=0");
    master.wait_for_line("shutdown-finished exit=0");
    master.expect_tree_gone();
}

#[test]
fn on_failure_gives_up_on_a_shard_that_always_fails_and_lets_the_others_finish() {
    // Shard 2 fails at once, every time; the others take a second and succeed. The limit
    // (3 respawns) is shard 2's own: the others are never stopped for it.
    let mut master = Master::launch(BATCH)
        .env("FAIL_ALWAYS", "2")
        .env("WORK_MS", "1000")
        .start();
    master.expect_exit_code(1);
    assert_eq!(master.count_lines("respawning index=2 "), 3);
    master.wait_for_line("shard-gave-up index=2 respawn_limit=3");
    master.wait_for_line("done index=2 succeeded=false");
    master.expect_lines("shard-done", 3);
    master.wait_for_line("all-done failed=1 indices=2");
    master.expect_lines("]: gave-up", 0);
    master.expect_lines("status=SIGTERM", 0);
    master.expect_tree_gone();
}

#[test]
fn never_runs_each_index_once_and_exits_1_if_one_failed() {
    let mut master = Master::launch(BATCH)
        .env("KAMISAMA_RESTART", "never")
        .env("EXIT_3", "3")
        .start();
    master.expect_exit_code(1);
    master.expect_lines("spawned", 4);
    assert_eq!(master.count_lines("respawning"), 0);
    master.wait_for_line("done index=3 succeeded=false");
    master.wait_for_line("all-done failed=1");
}

#[test]
fn never_exits_0_when_every_index_succeeded() {
    let mut master = Master::launch(BATCH)
        .env("KAMISAMA_RESTART", "never")
        .env("KAMISAMA_INSTANCES", "6")
        .start();
    master.expect_exit_code(0);
    assert_eq!(master.count_lines("shard-done"), 6);
    master.wait_for_line("all-done failed=0");
}

#[test]
fn hup_replaces_every_worker_once_its_successor_forked_first_one_index_at_a_time() {
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "4")
        // Replacements are deliberate: they never count, even against a limit of zero.
        .env("KAMISAMA_RESPAWN_LIMIT", "0")
        .start();
    let before = master.wait_for_workers(4);
    master.signal(Signal::SIGHUP);
    master.wait_for_line("rolling-restart-finished");
    let after = master.wait_for_workers(4);
    let log = master_log(&master);
    for index in 0..4 {
        assert_ne!(after[&index], before[&index]);
        let replacing = format!("replacing index={index} pid={}", before[&index]);
        let spawned = format!("spawned index={index} pid={}", after[&index]);
        let exited = format!("exited index={index} pid={}", before[&index]);
        // The successor first, then the old worker's exit: never an index down. The next
        // index once the successor runs: one replacement at a time.
        assert!(position(&log, &replacing) < position(&log, &spawned));
        assert!(
            position(&log, &spawned) < position(&log, &exited),
            "{log:#?}"
        );
        if index < 3 {
            let next = format!("replacing index={}", index + 1);
            assert!(position(&log, &spawned) < position(&log, &next), "{log:#?}");
        }
        assert_eq!(master.count_lines(&format!("spawned index={index} ")), 2);
    }
    assert_eq!(master.count_lines("gave-up"), 0);
    assert_eq!(master.count_lines("respawning"), 0);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_rolling_restart_stops_each_worker_once_its_successor_declared_itself_ready() {
    // Each successor takes 200 ms to be ready, and each old worker 150 ms to finish. Twice:
    // the second restart's successors come to shared words the first workers left ready.
    let witnesses = kamisama_tests::scratch!("rolling-ready");
    let mut master = Master::launch(env!("CARGO_BIN_EXE_declared"))
        .env("READY_DIR", witnesses.to_str().unwrap())
        .env("READY_MS", "200")
        .env("LINGER_MS", "150")
        .start();
    master.wait_for_lines("ready index=", 3);
    for restart in 1..=2 {
        master.wait_until_blocked();
        master.signal(Signal::SIGHUP);
        master.wait_for_lines("rolling-restart-finished", restart);
        let transcript = master.transcript();
        let at = |what: &str| {
            transcript
                .find(what)
                .unwrap_or_else(|| panic!("no {what:?} in {transcript}"))
        };
        for index in 0..3 {
            // The old worker of the index, and its successor.
            let spawned = master.wait_for_lines(&format!("spawned index={index} "), restart + 1);
            let [old, successor] =
                [restart - 1, restart].map(|at| field(&spawned[at], "pid").unwrap().to_owned());
            // The old worker hears of its stop only after its successor said it was ready.
            let successor_ready = at(&format!("ready index={index} pid={successor}"));
            let stopping = at(&format!("stopping index={index} pid={old}"));
            assert!(successor_ready < stopping, "{transcript}");
            if index < 2 {
                // The next index begins once the successor is ready, not when the old
                // worker has gone.
                let replacing = format!("replacing index={}", index + 1);
                let next = transcript
                    .match_indices(&replacing)
                    .nth(restart - 1)
                    .unwrap_or_else(|| panic!("no {replacing:?} #{restart} in {transcript}"));
                assert!(successor_ready < next.0, "{transcript}");
            }
        }
    }
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_worker_being_replaced_that_declares_itself_ready_late_leaves_its_successor_ready() {
    // The first workers take 2 s to be ready; their successors 400 ms.
    let witnesses = kamisama_tests::scratch!("rolling-late-ready");
    let slow = kamisama_tests::scratch!("rolling-late-ready-flag").join("slow");
    std::fs::write(&slow, b"").unwrap();
    let mut master = Master::launch(env!("CARGO_BIN_EXE_declared"))
        .env("READY_DIR", witnesses.to_str().unwrap())
        .env("SLOW_READY_FILE", slow.to_str().unwrap())
        .env("SLOW_READY_MS", "2000")
        .env("READY_MS", "400")
        .start();
    let first = master.wait_for_workers(3);
    std::fs::remove_file(&slow).unwrap();
    master.signal(Signal::SIGHUP);
    let spawned = master.wait_for_lines("spawned index=0 ", 2).remove(1);
    let successor = field(&spawned, "pid").unwrap().to_owned();
    // The master, stopped, sees neither declaration until both are made: the successor's,
    // then its predecessor's, which still runs, as it is stopped only once its successor
    // is ready.
    master.signal(Signal::SIGSTOP);
    master.wait_until("the master stopped", || {
        (kamisama_tests::state(master.pid()) == Some('T')).then_some(())
    });
    master.wait_for_line(&format!("ready index=0 pid={successor}"));
    master.wait_for_line(&format!("ready index=0 pid={}", first[&0]));
    master.signal(Signal::SIGCONT);
    // The successor is still the ready one: its predecessor is stopped, and the restart goes
    // on to the other indices.
    master.wait_for_line(&format!("stopping index=0 pid={}", first[&0]));
    master.wait_for_line("rolling-restart-finished");
    let after = master.wait_for_workers(3);
    assert!(after.iter().all(|(index, pid)| first[index] != *pid));
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

#[test]
fn term_during_a_rolling_restart_shuts_down_promptly() {
    // Each worker takes 2 s to finish its job, so the restart is still waiting for the
    // workers it replaced to go.
    let mut master = Master::launch(COOPERATIVE).env("JOB_MS", "2000").start();
    master.wait_for_workers(2);
    master.wait_for_lines("job-started", 2);
    master.signal(Signal::SIGHUP);
    master.wait_for_line("replacing index=0");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    let log = master_log(&master);
    let shutdown = position(&log, "shutdown-started");
    // Nothing is forked or replaced once the shutdown began.
    assert!(
        log[shutdown..]
            .iter()
            .all(|line| !line.starts_with("spawned") && !line.starts_with("replacing")),
        "{log:#?}"
    );
    master.expect_lines("rolling-restart-finished", 0);
    master.expect_tree_gone();
}

#[test]
fn scaling_during_a_rolling_restart_keeps_indices_consistent() {
    let mut master = Master::launch(SUPERVISED)
        .env("FIXTURE", "ignore-term")
        .env("KAMISAMA_INSTANCES", "3")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "1")
        .start();
    master.wait_for_workers(3);
    master.signal(Signal::SIGHUP);
    master.wait_for_line("replacing index=0");
    master.signal(Signal::SIGTTIN);
    master.wait_for_line("scaled-up instances=4");
    master.signal(Signal::SIGTTOU);
    master.wait_for_line("scaled-down instances=3");
    master.signal(Signal::SIGTTOU);
    master.wait_for_line("scaled-down instances=2");
    master.wait_for_line("rolling-restart-finished");
    master.wait_for_workers(2);
    master.shut_down_now();
    master.expect_exit_code(0);
}

#[test]
fn a_second_hup_during_a_rolling_restart_is_ignored() {
    // The workers ignore TERM for an hour: the rolling restart waits for the test to end
    // each old worker, so the second HUP cannot come too late.
    let mut master = Master::launch(SUPERVISED)
        .env("FIXTURE", "ignore-term")
        .env("KAMISAMA_INSTANCES", "2")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "3600")
        .start();
    let workers = master.wait_for_workers(2);
    master.signal(Signal::SIGHUP);
    master.wait_for_line("replacing index=0");
    master.signal(Signal::SIGHUP);
    master.wait_for_line("rolling-restart-busy");
    for index in 0..2 {
        master.wait_for_line(&format!("replacing index={index} pid={}", workers[&index]));
        nix::sys::signal::kill(workers[&index], Signal::SIGKILL).unwrap();
    }
    master.wait_for_line("rolling-restart-finished");
    assert_eq!(master.count_lines("replacing"), 2);
    assert_eq!(master.count_lines("rolling-restart-started"), 1);
    master.shut_down_now();
    master.expect_exit_code(0);
}

#[test]
fn usr1_is_forwarded_to_every_worker_and_never_kills_one() {
    // Workers with a USR1 handler of their own get it; every worker, one with no handler
    // for it included, lives on.
    let mut master = Master::launch(SUPERVISED)
        .env("FIXTURE", "usr1")
        .env("KAMISAMA_INSTANCES", "3")
        .start();
    let workers = master.wait_for_workers(3);
    master.signal(Signal::SIGUSR1);
    master.wait_for_line("forwarded signal=SIGUSR1 workers=3");
    master.wait_for_lines("got-usr1", 3);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_lines("status=SIGUSR1", 0);
    master.expect_lines(
        &format!("exited index=0 pid={} status=SIGTERM", workers[&0]),
        1,
    );
}

#[test]
fn a_worker_counts_the_signals_it_received() {
    let mut master = Master::launch(env!("CARGO_BIN_EXE_heartbeats"))
        .env("KAMISAMA_INSTANCES", "1")
        .env("COUNT_USR1", "1")
        .start();
    master.wait_for_workers(1);
    master.wait_for_line("beat index=0 n=2");
    master.signal(Signal::SIGUSR1);
    master.wait_for_line("forwarded signal=SIGUSR1 workers=1");
    master.wait_for_line("received usr1=1");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

/// A master whose one worker returns at once, over and over, with backoff on.
fn crash_loop(respawn_limit: &str) -> Master {
    Master::launch(SUPERVISED)
        .env("FIXTURE", "return")
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_RESPAWN_LIMIT", respawn_limit)
        .env("KAMISAMA_BACKOFF_MAX", "30")
        .start()
}

#[test]
fn backoff_waits_the_delay_it_logs() {
    let mut master = crash_loop("1000");
    master.wait_for_line("delay=0.8s");
    let delays = ["0.1s", "0.2s", "0.4s", "0.8s"];
    for (respawns, delay) in delays.iter().enumerate() {
        master.wait_for_line(&format!(
            "respawns={} limit=1000 window=60s delay={delay}",
            respawns + 1
        ));
    }
    // Each worker says when it started, on the monotonic clock: the next one may not start
    // before the logged delay has passed since then.
    let starts: Vec<u64> = master
        .wait_for_lines("worker-started index=0", 5)
        .iter()
        .map(|line| field(line, "at").unwrap().parse().unwrap())
        .collect();
    // Nor much after: the crash and the fork take milliseconds, the rest is the delay.
    for (gap, delay) in starts.windows(2).zip([100, 200, 400, 800]) {
        let gap = Duration::from_nanos(gap[1] - gap[0]);
        assert!(gap >= Duration::from_millis(delay), "{gap:?} < {delay} ms");
        assert!(
            gap < Duration::from_millis(delay + 500),
            "{gap:?} for {delay} ms"
        );
    }
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn backoff_does_not_hide_a_crash_loop_from_the_limit() {
    // The default limit, 3 respawns: the fourth death gives up, after 0.1 + 0.2 + 0.4 s.
    let mut master = crash_loop("3");
    master.expect_exit_code(1);
    for (respawns, delay) in [(1, "0.1s"), (2, "0.2s"), (3, "0.4s")] {
        master.wait_for_line(&format!(
            "respawning index=0 respawns={respawns} limit=3 window=60s delay={delay}"
        ));
    }
    assert_eq!(master.count_lines("exited index=0"), 4);
    master.wait_for_line("gave-up");
}

#[test]
fn backoff_sleeps_without_waking_and_term_cuts_it_short() {
    let mut master = crash_loop("1000");
    master.wait_for_line("delay=3.2s");
    // Logged no later than now: the backoff ends no earlier than 3.2 s from here, less the
    // time the line took to arrive.
    let logged = Instant::now();
    master.wait_until_blocked();
    let before = master.context_switches();
    std::thread::sleep(Duration::from_millis(500));
    let woke = master.context_switches() - before;
    assert_eq!(woke, 0, "the master woke up {woke} times during a backoff");
    // Well inside the backoff: TERM must end the master now, not when the backoff ends.
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(logged.elapsed()));
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    let exited = logged.elapsed();
    assert!(
        exited < Duration::from_millis(2800),
        "exited {exited:?} after the backoff began"
    );
    assert_eq!(master.count_lines("delay=6.4s"), 0);
}

#[test]
fn the_event_callback_sees_what_the_log_says() {
    let mut master = Master::launch(EVENTS).start();
    let workers = master.wait_for_workers(2);
    nix::sys::signal::kill(workers[&0], Signal::SIGKILL).unwrap();
    master.wait_for_workers(2);
    master.wait_for_line("event: respawning index=0");
    master.signal(Signal::SIGTTIN);
    master.wait_for_workers(3);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.wait_for_line("event: shutdown-finished exit=0");
    let logged = master_log(&master);
    let called: Vec<String> = master
        .transcript()
        .lines()
        .filter_map(|line| line.strip_prefix("event: ").map(str::to_owned))
        .collect();
    assert_eq!(called, logged);
    assert!(logged.len() >= 12, "{logged:#?}");
}

#[test]
fn log_false_silences_the_master_but_not_the_callback() {
    let mut master = Master::launch(EVENTS).env("LOG_OFF", "1").start();
    master.wait_for_workers(2);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.wait_for_line("event: shutdown-finished exit=0");
    master.expect_lines("kamisama[", 0);
}

#[test]
fn a_panicking_event_callback_does_not_break_supervision() {
    let mut master = Master::launch(EVENTS).env("PANIC_ON_SPAWN", "1").start();
    let workers = master.wait_for_workers(2);
    master.wait_for_lines("event-callback-panicked", 2);
    nix::sys::signal::kill(workers[&1], Signal::SIGKILL).unwrap();
    master.wait_until("a replacement for worker 1", || {
        let now = master.workers().filter(|now| now.len() == 2)?;
        (now[&1] != workers[&1]).then_some(())
    });
    master.wait_for_lines("event-callback-panicked", 3);
    assert!(children_of(master.pid()).len() == 2);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_program_a_cooperative_worker_runs_inherits_no_descriptor_of_kamisama() {
    let mut master = Master::launch(COOPERATIVE).env("LIST_FDS", "1").start();
    // Standard input, output and error, and `ls`'s own directory: not the stop pipe.
    for line in master.wait_for_lines("subprocess-fds index=", 2) {
        assert_eq!(field(&line, "fds"), Some("0,1,2,3"), "{line}");
    }
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

/// What the `returning` fixture printed: its `held` lines (what the process held before the
/// first run and after each) and its `outcome` lines.
fn returning(launch: Launch) -> (Vec<String>, Vec<String>, String) {
    let mut master = launch.start();
    master.expect_exit_code(0);
    let transcript = master.transcript();
    let lines = |prefix: &str| -> Vec<String> {
        transcript
            .lines()
            .filter_map(|line| line.strip_prefix(prefix).map(str::to_owned))
            .collect()
    };
    let (held, outcomes) = (lines("held "), lines("outcome "));
    assert_eq!((held.len(), outcomes.len()), (3, 2), "{transcript}");
    (held, outcomes, transcript)
}

#[test]
fn try_run_gives_the_process_back_as_it_found_it() {
    let launch = Master::launch(RETURNING).arg("an argument");
    let (held, outcomes, transcript) = returning(launch);
    assert_eq!(outcomes, ["Ok(Finished { failed: 0 })"; 2], "{transcript}");
    // The same descriptors, no shared page, no blocked signal, no subreaper flag, no child
    // and the same names (the master's title given back) after each run as before the
    // first: a program may run a fleet again, or go on to something else.
    assert!(held.iter().all(|after| after == &held[0]), "{transcript}");
    let nothing = "shared_mappings=0 blocked=0000000000000000 subreaper=0 children=[] \
                   comm=returning cmdline=";
    assert!(held[0].contains(nothing), "{transcript}");
    assert!(held[0].contains(r#"\0an argument\0""#), "{transcript}");
}

#[test]
fn a_large_fleet_gives_back_its_reaper_and_its_limit_of_open_files() {
    // 2,000 workers: the master starts its reaper, a child process, and raises its soft limit
    // of open files for it. Gone after the run: no child left, one thread.
    let launch = Master::launch_under(&["prlimit", "--nofile=1024:"], RETURNING)
        .env("RETURNING_INSTANCES", "2000");
    let (held, outcomes, transcript) = returning(launch);
    assert_eq!(outcomes, ["Ok(Finished { failed: 0 })"; 2], "{transcript}");
    assert!(held.iter().all(|after| after == &held[0]), "{held:#?}");
    assert!(held[0].ends_with(" threads=1 nofile=1024"), "{}", held[0]);
}

#[test]
fn a_second_run_in_one_process_serves_the_sockets_of_the_first() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|free| free.local_addr())
        .expect("a free port")
        .port();
    let address = format!("127.0.0.1:{port}");
    let launch = Master::launch(RETURNING).env("RETURNING_LISTEN", &address);
    let (held, outcomes, transcript) = returning(launch);
    assert_eq!(outcomes, ["Ok(Finished { failed: 0 })"; 2], "{transcript}");
    let handed: Vec<&str> = transcript
        .lines()
        .filter_map(|line| line.strip_prefix("handed port="))
        .collect();
    assert_eq!(handed, [port.to_string().as_str(); 6], "{transcript}");
    // The socket stays open for the process's life, as `Worker::listeners` promises; the
    // second run binds nothing more.
    assert_eq!(held[1], held[2], "{transcript}");
    assert!(held[1].contains("subreaper=0"), "{transcript}");
}

#[test]
fn a_run_that_cannot_listen_leaves_the_process_as_it_was() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to hold");
    let address = taken.local_addr().expect("its address").to_string();
    let launch = Master::launch(RETURNING).env("RETURNING_LISTEN", &address);
    let (held, outcomes, transcript) = returning(launch);
    assert!(
        outcomes
            .iter()
            .all(|outcome| outcome.starts_with("Err(Listen")),
        "{transcript}"
    );
    assert!(held.iter().all(|after| after == &held[0]), "{transcript}");
    assert!(held[0].contains("subreaper=0"), "{transcript}");
}
