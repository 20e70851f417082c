//! Async workers (the `tokio` feature): every signature, a stop during an await, the runtime
//! each worker builds, a runtime in the master refused, and hang detection of a blocked
//! executor.

use kamisama_tests::{field, Master};
use nix::sys::signal::Signal;

const BY_HAND: &str = env!("CARGO_BIN_EXE_async-by-hand");
const JOBS: &str = env!("CARGO_BIN_EXE_async-jobs");

/// Starts two async workers with `signature`, stops them with TERM, and returns how each
/// worker ended.
fn run_and_stop(signature: &str) -> Master {
    let mut master = Master::launch(BY_HAND).env("SIGNATURE", signature).start();
    master.wait_for_lines("worker-started", 2);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master
}

#[test]
fn an_async_worker_without_arguments_runs_and_stops() {
    let master = run_and_stop("none");
    master.expect_lines("status=SIGTERM", 2);
}

#[test]
fn an_async_worker_of_its_index_runs_and_stops() {
    let master = run_and_stop("index");
    master.expect_lines("status=SIGTERM", 2);
}

#[test]
fn an_async_worker_awaiting_its_stop_does_not_wake_up() {
    let mut master = Master::launch(BY_HAND).start();
    let workers = master.wait_for_workers(2);
    let worker = workers[&0];
    let switches = || {
        kamisama_tests::status_field(worker, "voluntary_ctxt_switches").unwrap()
            + kamisama_tests::status_field(worker, "nonvoluntary_ctxt_switches").unwrap()
    };
    // Settled in its reactor, waiting on the stop pipe and an hour's timer.
    master.wait_until("the worker to block", || {
        (kamisama_tests::state(worker) == Some('S')).then_some(())
    });
    let before = switches();
    // Nothing here can become true sooner: the property is that nothing happens in a window.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let woke = switches() - before;
    assert!(woke <= 1, "the idle worker woke up {woke} times");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_thousand_tasks_await_the_stop_with_no_descriptor_each_and_all_wake() {
    let mut master = Master::launch(JOBS)
        .env("WAITERS", "1000")
        .env("KAMISAMA_INSTANCES", "1")
        .start();
    let workers = master.wait_for_workers(1);
    master.wait_for_line("waiters-waiting index=0 n=1000");
    // Once the tasks polled: a future that registered a descriptor of its own with the
    // reactor would hold it while it waits.
    let fds = std::fs::read_dir(format!("/proc/{}/fd", workers[&0]))
        .unwrap()
        .count();
    assert!(fds < 50, "{fds} descriptors open for 1000 waiting tasks");
    master.signal(Signal::SIGTERM);
    master.wait_for_line("waiters-stopped index=0 n=1000");
    master.expect_exit_code(0);
}

#[test]
fn an_async_worker_with_the_handle_stops_cooperatively() {
    let master = run_and_stop("handle");
    // TERM reached the worker as a stop request, which completed `stopped()`.
    assert_eq!(master.count_lines("worker-stopping"), 2);
    master.expect_lines("status=0", 2);
}

#[test]
fn a_stop_during_an_await_lets_the_job_in_hand_finish() {
    let mut master = Master::launch(JOBS).env("JOB_MS", "500").start();
    let workers = master.wait_for_workers(2);
    master.wait_for_line("job-started index=0 job=1");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    for (index, pid) in &workers {
        master.wait_for_line(&format!("job-finished index={index} job=1"));
        master.wait_for_line(&format!("worker-stopping index={index} jobs=1"));
        master.wait_for_line(&format!("exited index={index} pid={pid} status=0"));
    }
    master.expect_lines("killed", 0);
}

#[test]
fn an_async_err_is_printed_and_exits_1() {
    let mut master = Master::launch(JOBS)
        .env("FAIL", "1")
        .env("KAMISAMA_RESPAWN_LIMIT", "0")
        .start();
    master.expect_exit_code(1);
    let failed = master.wait_for_line("worker-failed index=");
    assert!(failed.contains("error=\"job source"), "{failed}");
    let exited = master.wait_for_line("exited index=");
    assert_eq!(field(&exited, "status"), Some("1"), "{exited}");
}

#[test]
fn each_worker_runs_the_runtime_asked_for() {
    // The default, a current-thread runtime: the worker's own thread and no other.
    let mut master = Master::launch(JOBS).start();
    for line in master.wait_for_lines("worker-started", 2) {
        assert_eq!(field(&line, "threads"), Some("1"), "{line}");
    }
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    // Three threads of a multi-thread runtime, besides the worker's own.
    let mut master = Master::launch(JOBS)
        .env("KAMISAMA_WORKER_THREADS", "3")
        .start();
    for line in master.wait_for_lines("worker-started", 2) {
        assert_eq!(field(&line, "threads"), Some("4"), "{line}");
    }
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_runtime_in_the_master_is_refused() {
    let mut master = Master::launch(BY_HAND)
        .env("RUNTIME_IN_MASTER", "1")
        .start();
    master.expect_exit_code(2);
    master.wait_for_line("error: a tokio runtime is running in the master");
    master.expect_lines("spawned", 0);
}

#[test]
fn an_executor_blocked_by_a_task_is_hung_and_a_busy_one_is_not() {
    let mut master = Master::launch(BY_HAND)
        .env("BLOCK_INDEX", "1")
        .env("KAMISAMA_TIMEOUT", "1")
        .start();
    let workers = master.wait_for_workers(2);
    master.wait_for_line("blocking index=1");
    // The runtime's own task beats for worker 0, which awaits; worker 1's never runs again.
    master.wait_for_line(&format!("hung index=1 pid={}", workers[&1]));
    master.wait_for_line(&format!(
        "exited index=1 pid={} status=SIGABRT",
        workers[&1]
    ));
    master.expect_lines("hung index=0", 0);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_multi_thread_runtime_with_a_thread_blocked_is_hung() {
    // Blocked in the worker's own future, or in a task it spawned on a runtime thread: the
    // beat task runs on on another thread either way, and must not beat.
    for block in ["BLOCK_INDEX", "BLOCK_TASK_INDEX"] {
        let mut master = Master::launch(BY_HAND)
            .env(block, "1")
            .env("KAMISAMA_TIMEOUT", "1")
            .env("KAMISAMA_WORKER_THREADS", "2")
            .start();
        let workers = master.wait_for_workers(2);
        master.wait_for_line("blocking index=1");
        let hung = master.wait_for_line(&format!("hung index=1 pid={}", workers[&1]));
        let silent = kamisama_tests::field(&hung, "silent_for").unwrap();
        let seconds: f64 = silent.strip_suffix('s').unwrap().parse().unwrap();
        assert!(seconds >= 1.0, "{block}: hung too soon: {hung}");
        master.expect_lines("hung index=0", 0);
        master.signal(Signal::SIGTERM);
        master.expect_exit_code(0);
    }
}

#[test]
fn with_a_manual_heartbeat_a_worker_stuck_on_an_idle_runtime_is_hung() {
    // The runtime runs on, idle: only the worker's own beats count.
    let mut master = Master::launch(BY_HAND)
        .env("STUCK_INDEX", "1")
        .env("KAMISAMA_TIMEOUT", "1")
        .env("KAMISAMA_HEARTBEAT", "manual")
        .start();
    let workers = master.wait_for_workers(2);
    master.wait_for_line("stuck index=1");
    master.wait_for_line(&format!("hung index=1 pid={}", workers[&1]));
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn with_the_runtime_heartbeat_a_worker_awaiting_for_long_is_alive() {
    let mut master = Master::launch(BY_HAND)
        .env("STUCK_INDEX", "1")
        .env("KAMISAMA_TIMEOUT", "1")
        .start();
    master.wait_for_workers(2);
    master.wait_for_line("stuck index=1");
    // Three timeouts' worth: the runtime, idle but alive, beats for it.
    let waited = std::time::Instant::now();
    while waited.elapsed() < std::time::Duration::from_secs(3) {
        master.expect_lines("hung", 0);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    master.expect_lines("hung", 0);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}
