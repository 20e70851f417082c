//! Starting workers, respawning them, and giving up when they die too often.

use kamisama_tests::{field, is_alive, parent_of, process_group_of, state, Master};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::time::{Duration, Instant};

const SUPERVISED: &str = env!("CARGO_BIN_EXE_supervised");
const DEFAULTS: &str = env!("CARGO_BIN_EXE_defaults");

fn supervised(instances: usize) -> Master {
    Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", &instances.to_string())
        .start()
}

/// Kills the worker at `index` and returns its replacement's pid, once it runs the worker
/// function.
fn kill_and_await_replacement(master: &Master, index: usize, signal: Signal) -> Pid {
    let workers = master.wait_for_workers(master_instances(master));
    let old = workers[&index];
    nix::sys::signal::kill(old, signal).unwrap();
    let instances = master_instances(master);
    master.wait_until(&format!("a replacement for worker {index} ({old})"), || {
        let workers = master.workers().filter(|now| now.len() == instances)?;
        (workers[&index] != old).then(|| workers[&index])
    })
}

fn master_instances(master: &Master) -> usize {
    let started = master.wait_for_line("started instances=");
    field(&started, "instances").unwrap().parse().unwrap()
}

#[test]
fn starts_every_instance_as_a_direct_child_with_a_dense_index() {
    let mut master = supervised(5);
    let workers = master.wait_for_workers(5);
    for (index, pid) in &workers {
        assert_eq!(
            parent_of(*pid),
            Some(master.pid()),
            "worker {index}'s parent"
        );
        // Each worker leads a process group of its own.
        assert_eq!(process_group_of(*pid), Some(*pid), "worker {index}'s group");
    }
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    // Read once the master is gone: the log and the workers' lines come by different pipes.
    for (index, pid) in &workers {
        let spawned = format!("spawned index={index} pid={pid}");
        master.expect_lines(&spawned, 1);
    }
    assert_eq!(master.count_lines("spawned"), 5);
    master.expect_tree_gone();
}

#[test]
fn default_settings_run_one_worker_named_main() {
    let mut master = Master::launch(DEFAULTS).start();
    master.wait_for_line(
        "started instances=1 respawn_limit=3 respawn_interval=60s shutdown_timeout=10s",
    );
    master.wait_for_workers(1);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn respawn_keeps_the_index_and_leaves_the_others_alone() {
    let mut master = supervised(3);
    let before = master.wait_for_workers(3);
    let replacement = kill_and_await_replacement(&master, 1, Signal::SIGKILL);
    let after = master.wait_for_workers(3);
    assert_eq!(after[&0], before[&0]);
    assert_eq!(after[&2], before[&2]);
    assert_eq!(after[&1], replacement);
    master.wait_for_line(&format!("exited index=1 pid={} status=SIGKILL", before[&1]));
    master.wait_for_line("respawning index=1 respawns=1 limit=3 window=60s");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn every_kind_of_death_is_respawned() {
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_RESPAWN_LIMIT", "10")
        .start();
    // Not SIGSEGV: Rust's stack-overflow handler swallows a SIGSEGV that no fault caused.
    for signal in [
        Signal::SIGKILL,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGABRT,
    ] {
        let old = master.wait_for_workers(1)[&0];
        kill_and_await_replacement(&master, 0, signal);
        master.wait_for_line(&format!("exited index=0 pid={old} status={signal}"));
    }
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn exactly_respawn_limit_respawns_survive_and_one_more_gives_up() {
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "2")
        .env("KAMISAMA_RESPAWN_LIMIT", "3")
        .start();
    for respawn in 1..=3 {
        kill_and_await_replacement(&master, respawn % 2, Signal::SIGKILL);
        master.wait_for_line(&format!("respawns={respawn} limit=3"));
    }
    assert_eq!(master.count_lines("gave-up"), 0);
    let workers = master.wait_for_workers(2);
    nix::sys::signal::kill(workers[&0], Signal::SIGKILL).unwrap();
    master.wait_for_line(
        "gave-up reason=\"respawn limit exceeded\" respawn_limit=3 respawn_interval=60s",
    );
    master.expect_exit_code(1);
    // The surviving worker was stopped, not left behind.
    master.wait_for_line(&format!(
        "exited index=1 pid={} status=SIGTERM",
        workers[&1]
    ));
    master.expect_tree_gone();
    assert_eq!(master.count_lines("respawns=4 "), 0);
}

#[test]
fn respawn_limit_zero_makes_the_first_death_fatal() {
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_RESPAWN_LIMIT", "0")
        .start();
    let worker = master.wait_for_workers(1)[&0];
    nix::sys::signal::kill(worker, Signal::SIGKILL).unwrap();
    master.expect_exit_code(1);
    assert_eq!(master.count_lines("gave-up"), 1);
    assert_eq!(master.count_lines("spawned"), 1);
}

#[test]
fn deaths_spaced_wider_than_the_interval_never_give_up() {
    let interval = Duration::from_secs(1);
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_RESPAWN_LIMIT", "1")
        .env("KAMISAMA_RESPAWN_INTERVAL", "1")
        .start();
    for _ in 0..3 {
        kill_and_await_replacement(&master, 0, Signal::SIGKILL);
        // The master counted the respawn before the replacement announced itself, so once an
        // interval has passed from here, that respawn has left the window.
        let respawned = Instant::now();
        std::thread::sleep(interval.saturating_sub(respawned.elapsed()) + interval / 10);
    }
    master.expect_lines("gave-up", 0);
    master.wait_for_lines("respawns=1 limit=1", 3);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    // That two deaths inside one window do trip the limit is
    // exactly_respawn_limit_respawns_survive_and_one_more_gives_up, with a window long
    // enough that no kill has to race the clock.
}

/// Runs one worker that ends by `fixture` every time, and checks that each of its `deaths`
/// is reported with `status` and respawned, until the limit of `deaths - 1` respawns is
/// exceeded and the master gives up.
fn every_death_is_reported_as(fixture: &str, status: &str, deaths: usize) -> Master {
    let mut master = Master::launch(SUPERVISED)
        .env("FIXTURE", fixture)
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_RESPAWN_LIMIT", &(deaths - 1).to_string())
        .start();
    master.expect_exit_code(1);
    let exits = master.wait_for_lines("exited index=0", deaths);
    let expected = format!("status={status}");
    assert!(
        exits.iter().all(|line| line.ends_with(&expected)),
        "{exits:?}"
    );
    assert_eq!(master.count_lines("exited"), deaths);
    master
}

#[test]
fn a_panicking_worker_exits_101_with_its_message() {
    let master = every_death_is_reported_as("panic", "panicked", 3);
    master.wait_for_lines("worker 0 panicked on purpose", 3);
}

#[test]
fn a_returning_worker_exits_0_and_is_respawned() {
    every_death_is_reported_as("return", "0", 3);
}

#[test]
fn a_worker_that_returns_after_its_first_second_recycled_itself_and_is_not_counted() {
    // Not one respawn allowed: every return after a second and a half is the worker's own
    // recycling, forked again at once; one that returns at once would give up.
    let mut master = Master::launch(SUPERVISED)
        .env("RETURN_AFTER_MS", "1100")
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_RESPAWN_LIMIT", "0")
        .start();
    master.wait_for_lines("status=0", 3);
    master.wait_for_lines(
        "respawning index=0 respawns=0 limit=0 window=60s delay=0s counted=false",
        3,
    );
    master.expect_lines("gave-up", 0);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn an_exit_code_is_reported_as_is() {
    every_death_is_reported_as("exit-3", "3", 1);
}

#[test]
fn a_segfaulting_worker_is_reported_and_respawned() {
    every_death_is_reported_as("segfault", "SIGSEGV", 2);
}

#[test]
fn what_a_dead_worker_left_in_its_process_group_gets_term() {
    let mut master = Master::launch(SUPERVISED)
        .env("FIXTURE", "subprocess")
        .env("KAMISAMA_INSTANCES", "1")
        .start();
    let worker = master.wait_for_workers(1)[&0];
    let subprocess = field(&master.wait_for_line("subprocess index=0"), "pid")
        .unwrap()
        .to_owned();
    nix::sys::signal::kill(worker, Signal::SIGKILL).unwrap();
    // Handed to the master when its worker died, and ended by the master's TERM.
    master.wait_for_line(&format!("reaped pid={subprocess} status=SIGTERM"));
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn what_a_dead_worker_left_that_ignores_term_gets_sigkill_after_the_shutdown_timeout() {
    let mut master = Master::launch(SUPERVISED)
        .env("FIXTURE", "stubborn-child")
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "1")
        .start();
    let worker = master.wait_for_workers(1)[&0];
    let child = field(&master.wait_for_line("stubborn-child index=0"), "pid")
        .unwrap()
        .to_owned();
    nix::sys::signal::kill(worker, Signal::SIGKILL).unwrap();
    master.wait_for_line(&format!("exited index=0 pid={worker}"));
    let died = std::time::Instant::now();
    // It ignores the TERM it got as its worker was reaped: a second later, SIGKILL.
    master.wait_for_line(&format!("reaped pid={child} status=SIGKILL"));
    let took = died.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "killed {took:?} after its worker died"
    );
    assert!(
        took < Duration::from_millis(2500),
        "killed {took:?} after its worker died"
    );
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn dead_workers_leave_no_zombie() {
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "4")
        .env("KAMISAMA_RESPAWN_LIMIT", "100")
        .start();
    let workers = master.wait_for_workers(4);
    for pid in workers.values() {
        nix::sys::signal::kill(*pid, Signal::SIGKILL).unwrap();
    }
    master.wait_until("every worker replaced", || {
        let now = master.workers().filter(|now| now.len() == 4)?;
        now.values()
            .all(|pid| !workers.values().any(|old| old == pid))
            .then_some(())
    });
    master.wait_until("no zombie child", || {
        let children = kamisama_tests::children_of(master.pid());
        children
            .iter()
            .all(|pid| state(*pid) != Some('Z'))
            .then_some(())
    });
    for pid in workers.values() {
        assert!(!is_alive(*pid));
    }
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn an_idle_master_does_not_wake_up() {
    let mut master = supervised(3);
    master.wait_for_workers(3);
    // Settled: the master has blocked again since it forked the last worker.
    master.wait_until_blocked();
    let before = master.context_switches();
    // Nothing here can become true sooner: the property is that nothing happens in a window.
    std::thread::sleep(Duration::from_secs(2));
    let woke = master.context_switches() - before;
    assert_eq!(woke, 0, "the idle master woke up {woke} times");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_respawn_leaves_an_idle_master_that_does_not_wake_up() {
    // A worker that leaves nothing in its process group gives the master nothing to come
    // back for: no deadline of SIGKILL for its group, a second from now.
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "2")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "1")
        .start();
    let workers = master.wait_for_workers(2);
    nix::sys::signal::kill(workers[&0], Signal::SIGKILL).unwrap();
    master.wait_until("a new worker 0", || {
        master
            .workers()
            .filter(|now| now.len() == 2 && now[&0] != workers[&0])
    });
    master.wait_until_blocked();
    let before = master.context_switches();
    // Nothing here can become true sooner: the property is that nothing happens in a window.
    std::thread::sleep(Duration::from_secs(2));
    let woke = master.context_switches() - before;
    assert_eq!(woke, 0, "the idle master woke up {woke} times");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_worker_starts_with_a_clean_process_state() {
    // Started the way nohup starts a program, with SIGHUP (and here SIGUSR1) ignored.
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "2")
        .ignoring(&[Signal::SIGHUP, Signal::SIGUSR1])
        .start();
    let workers = master.wait_for_workers(2);
    let mask = |signals: &[Signal]| {
        signals
            .iter()
            .fold(0u64, |mask, signal| mask | 1 << (*signal as u64 - 1))
    };
    // Signals 32 up to SIGRTMIN belong to the C library, which keeps them from programs.
    let libc_reserved = (32..libc::SIGRTMIN()).fold(0u64, |mask, signal| mask | 1 << (signal - 1));
    let crash_handlers = mask(&[
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGILL,
        Signal::SIGFPE,
    ]);
    for (index, pid) in &workers {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let hex = |name: &str| {
            let line = status.lines().find(|line| line.starts_with(name)).unwrap();
            u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
        };
        assert_eq!(hex("SigBlk:"), 0, "worker {index} has blocked signals");
        let ignored = hex("SigIgn:") & !libc_reserved;
        assert_eq!(ignored, mask(&[Signal::SIGPIPE]), "worker {index} ignores");
        // USR1 and USR2 are counted, so that a forwarded one never ends a worker; a
        // program the worker runs gets them back at their default, as exec resets handlers.
        let caught = hex("SigCgt:") & !crash_handlers & !libc_reserved;
        let counted = mask(&[Signal::SIGUSR1, Signal::SIGUSR2]);
        assert_eq!(caught, counted, "worker {index} has handlers");
        let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        fds.sort();
        assert_eq!(fds, ["0", "1", "2"], "worker {index}'s file descriptors");
        assert_eq!(process_group_of(*pid), Some(*pid), "worker {index}'s group");
    }
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_worker_that_takes_nothing_exits_with_its_result() {
    let no_argument = env!("CARGO_BIN_EXE_no-argument");
    let mut master = Master::launch(no_argument).start();
    master.expect_exit_code(0);
    master.expect_lines("status=0", 2);
    let mut master = Master::launch(no_argument).env("FAIL", "1").start();
    master.expect_exit_code(1);
    master.expect_lines(" status=1", 2);
    master.expect_lines("worker-failed", 2);
}
