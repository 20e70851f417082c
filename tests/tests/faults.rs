//! Fault injection: coalesced signals, races at start-up, PID namespaces, orphans and chaos.
//! Whatever goes wrong around the master, no worker is lost, leaked or duplicated.

use kamisama_tests::{children_of, field, is_alive, parse_started, state, Master};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const SUPERVISED: &str = env!("CARGO_BIN_EXE_supervised");
const BY_HAND: &str = env!("CARGO_BIN_EXE_by-hand");
const SCRIPTED: &str = env!("CARGO_BIN_EXE_scripted");

fn pid_in(line: &str) -> Pid {
    Pid::from_raw(field(line, "pid").unwrap().parse().unwrap())
}

#[test]
fn all_workers_killed_at_once_are_all_respawned_once() {
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "40")
        .env("KAMISAMA_RESPAWN_LIMIT", "40")
        .start();
    let first = master.wait_for_workers(40);
    // Forty SIGCHLDs in a few microseconds coalesce into one or a few.
    for pid in first.values() {
        kill(*pid, Signal::SIGKILL).unwrap();
    }
    let second = master.wait_until("40 replacements", || {
        let now = master.workers().filter(|now| now.len() == 40)?;
        now.iter()
            .all(|(index, pid)| first[index] != *pid)
            .then_some(now)
    });
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    for index in 0..40 {
        let spawned = master.count_lines(&format!("spawned index={index} "));
        assert_eq!(spawned, 2, "index {index}:\n{}", master.transcript());
    }
    assert_eq!(master.count_lines("respawning"), 40);
    assert_eq!(master.count_lines("gave-up"), 0);
    assert!(second.values().all(|pid| !is_alive(*pid)));
    master.expect_tree_gone();
}

/// Starts a master with eight workers `runs` times, sends it `signal` from 0 up to
/// `runs` × 50 µs after its start (from before its first fork to after its last), and hands
/// each run to `check` once the master has exited.
fn signal_right_after_start(signal: Signal, runs: u64, check: impl Fn(u64, &mut Master)) {
    for run in 0..runs {
        let mut master = Master::launch(SUPERVISED)
            .env("KAMISAMA_INSTANCES", "8")
            .start();
        std::thread::sleep(Duration::from_micros(run * 50));
        master.signal(signal);
        master.wait_exit();
        check(run, &mut master);
        master.expect_tree_gone();
    }
}

#[test]
fn a_master_killed_while_forking_never_leaves_a_worker() {
    // Killed 0 to 5 ms after its start, until a few kills have landed between two forks.
    // Its workers come to this test process, a subreaper, which reaps them: they are the
    // witnesses of how many were forked (the master's own log dies with it). No other test
    // of this file kills a master that has workers.
    let mut between_forks = 0;
    for run in 0..300 {
        if between_forks == 3 {
            break;
        }
        let mut master = Master::launch(SUPERVISED)
            .env("KAMISAMA_INSTANCES", "8")
            .start();
        std::thread::sleep(Duration::from_micros(run % 100 * 50));
        master.signal(Signal::SIGKILL);
        master.wait_exit();
        master.expect_tree_gone();
        let forked = kamisama_tests::take_reaped_orphans();
        between_forks += usize::from((1..8).contains(&forked.len()));
        // Each worker died of its death signal, or exited at once if its master was gone
        // before it asked for one; and was reaped, not left a zombie.
        for (pid, status) in forked {
            match status {
                WaitStatus::Signaled(_, Signal::SIGTERM, _) | WaitStatus::Exited(_, 1) => {}
                other => panic!("run {run}: worker {pid} ended with {other:?}"),
            }
        }
    }
    assert!(between_forks > 0, "no kill landed between two forks");
}

#[test]
fn a_burst_of_ttin_settles_and_single_ttins_count() {
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "2")
        .start();
    master.wait_for_workers(2);
    for _ in 0..20 {
        master.signal(Signal::SIGTTIN);
    }
    master.wait_for_line("scaled-up");
    // Settled: the workers running are exactly those the master last asked for.
    let grown = master.wait_until("the burst to settle", || {
        let wanted = master.instances_asked();
        (master.workers()?.len() == wanted).then_some(wanted)
    });
    assert!((3..=22).contains(&grown), "{grown} workers");

    master.signal(Signal::SIGTTIN);
    master.wait_for_line(&format!("scaled-up instances={}", grown + 1));
    master.wait_for_workers(grown + 1);
    master.signal(Signal::SIGTTIN);
    master.wait_for_line(&format!("scaled-up instances={}", grown + 2));
    master.wait_for_workers(grown + 2);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

#[test]
fn term_right_after_start_never_hangs_or_leaks() {
    signal_right_after_start(Signal::SIGTERM, 60, |run, master| {
        // Before the master blocks its signals, TERM kills it outright; it has forked
        // nothing then. After, it shuts down in order.
        match kamisama_tests::describe(master.wait_exit()).as_str() {
            "code 0" => {}
            "signal SIGTERM" => assert_eq!(master.count_lines("spawned"), 0),
            other => panic!("run {run}: {other}\n{}", master.transcript()),
        }
    });
}

#[test]
fn term_during_a_large_start_is_prompt() {
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "2000")
        .start();
    master.wait_for_line("spawned index=10 ");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    // The master stopped forking when the signal came, well short of 2000.
    let spawned = master.count_lines("spawned");
    assert!(spawned < 2000, "{spawned} workers were forked after TERM");
    master.expect_tree_gone();
}

#[test]
fn an_orphan_handed_to_the_master_is_reaped() {
    let mut master = Master::launch(SUPERVISED)
        .env("FIXTURE", "orphan")
        .env("KAMISAMA_INSTANCES", "1")
        .start();
    let orphan = pid_in(&master.wait_for_line("orphan pid="));
    master.wait_for_line(&format!("reaped pid={orphan} status=0"));
    assert_eq!(state(orphan), None, "the orphan was left a zombie");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn an_orphan_that_left_the_group_and_ignores_term_is_killed_at_shutdown() {
    let mut master = Master::launch(SUPERVISED)
        .env("FIXTURE", "stubborn-orphan")
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "1")
        .start();
    let orphan = pid_in(&master.wait_for_line("stubborn-orphan pid="));
    master.wait_until("the orphan to run `sleep`", || {
        let cmdline = std::fs::read(format!("/proc/{orphan}/cmdline")).ok()?;
        cmdline.starts_with(b"sleep\0").then_some(())
    });
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.wait_for_line(&format!("reaped pid={orphan} status=SIGKILL"));
    master.expect_tree_gone();
}

#[test]
fn as_pid_1_of_a_namespace_it_reaps_orphans_and_shuts_down() {
    if !kamisama_tests::can_unshare_pid() {
        kamisama_tests::skip(
            "as_pid_1_of_a_namespace_it_reaps_orphans_and_shuts_down",
            "creating a PID namespace needs util-linux's unshare and CAP_SYS_ADMIN",
        );
        return;
    }
    let mut master = Master::launch_under(&["unshare", "--pid", "--fork"], SUPERVISED)
        .env("FIXTURE", "orphan")
        .env("KAMISAMA_INSTANCES", "2")
        .start();
    master.wait_for_line("kamisama[1]: started");
    // Pids in the output are the namespace's own; /proc here shows this test's.
    master.wait_for_lines("worker-started", 2);
    master.wait_for_lines("reaped pid=", 2);
    master.wait_until("two live workers and no zombie", || {
        let children = children_of(master.pid());
        let live = children.iter().filter(|pid| is_alive(**pid)).count();
        (children.len() == 2 && live == 2).then_some(())
    });
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.wait_for_line("kamisama[1]: shutdown-finished exit=0");
    master.expect_tree_gone();
}

#[test]
fn as_pid_1_of_a_container_it_reaps_a_burst_of_orphans() {
    if !kamisama_tests::can_unshare_pid() {
        kamisama_tests::skip(
            "as_pid_1_of_a_container_it_reaps_a_burst_of_orphans",
            "creating a PID namespace needs util-linux's unshare and CAP_SYS_ADMIN",
        );
        return;
    }
    // A PID namespace with its own /proc, as a container runtime makes one.
    let mut master =
        Master::launch_under(&["unshare", "--pid", "--fork", "--mount-proc"], SUPERVISED)
            .env("FIXTURE", "orphan-burst")
            .env("KAMISAMA_INSTANCES", "1")
            .start();
    master.wait_for_line("kamisama[1]: started");
    master.wait_for_line("orphan-burst");
    master.wait_for_lines("reaped pid=", 300);
    master.wait_until("the worker alone and no zombie", || {
        let children = children_of(master.pid());
        (children.len() == 1 && is_alive(children[0])).then_some(())
    });
    master.signal(Signal::SIGTERM);
    // What the container runtime gets: the master's own exit status.
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

#[test]
fn output_buffered_before_run_is_written_once() {
    let mut master = Master::launch(BY_HAND).env("BY_HAND_GREETING", "1").start();
    master.wait_for_workers(2);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    let transcript = master.transcript();
    assert_eq!(
        transcript.matches("greeting-from-master").count(),
        1,
        "{transcript}"
    );
}

#[test]
fn chaos_converges_with_every_index_once_and_nothing_left() {
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "6")
        .env("KAMISAMA_RESPAWN_LIMIT", "100000")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "2")
        .start();
    master.wait_for_workers(6);
    let mut random = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |bound: u64| {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random % bound
    };
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        match next(10) {
            0..=5 => {
                let children = children_of(master.pid());
                if !children.is_empty() {
                    let victim = children[next(children.len() as u64) as usize];
                    let _ = kill(victim, Signal::SIGKILL);
                }
            }
            6 | 7 => master.signal(Signal::SIGTTIN),
            _ => master.signal(Signal::SIGTTOU),
        }
        std::thread::sleep(Duration::from_micros(next(3000)));
    }
    let wanted = master.wait_until("the count to settle", || {
        let wanted = master.instances_asked();
        let workers = master.workers()?;
        let zombies = children_of(master.pid())
            .into_iter()
            .any(|pid| state(pid) == Some('Z'));
        (workers.len() == wanted && !zombies).then_some(wanted)
    });
    assert!(wanted >= 1);
    assert_eq!(master.count_lines("gave-up"), 0);
    let started: BTreeMap<Pid, usize> = master
        .transcript()
        .lines()
        .filter_map(parse_started)
        .map(|(index, pid)| (pid, index))
        .collect();
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    for pid in started.keys() {
        assert!(!is_alive(*pid), "worker {pid} outlived the master");
    }
    master.expect_tree_gone();
}

#[test]
fn ttin_during_a_retirement_waits_for_the_index_to_be_free() {
    let mut master = Master::launch(SUPERVISED)
        .env("FIXTURE", "ignore-term")
        .env("KAMISAMA_INSTANCES", "2")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "1")
        .start();
    let before = master.wait_for_workers(2);
    master.signal(Signal::SIGTTOU);
    master.wait_for_line("scaled-down instances=1 retiring=1");
    master.signal(Signal::SIGTTIN);
    master.wait_for_line("scaled-up instances=2");
    // The retiring worker ignores TERM: index 1 stays its own until SIGKILL, a second later.
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        let children = children_of(master.pid());
        assert!(
            children.len() <= 2,
            "two workers share index 1: {children:?}"
        );
    }
    master.wait_for_line(&format!("killed index=1 pid={}", before[&1]));
    let after = master.wait_until("a new worker 1", || {
        master
            .workers()
            .filter(|now| now.len() == 2 && now[&1] != before[&1])
    });
    assert_eq!(after[&0], before[&0]);
    master.expect_lines("respawning", 0);
    master.shut_down_now();
    master.expect_exit_code(0);
}

#[test]
fn term_stops_a_crash_loop_at_once() {
    let mut master = Master::launch(SUPERVISED)
        .env("FIXTURE", "return")
        .env("KAMISAMA_INSTANCES", "4")
        .env("KAMISAMA_RESPAWN_LIMIT", "100000000")
        .start();
    master.wait_for_lines("respawning", 200);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.wait_for_line("shutdown-finished exit=0");
    master.expect_tree_gone();
}

#[test]
fn a_stopped_worker_still_stops_at_shutdown() {
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "2")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "3600")
        .start();
    let workers = master.wait_for_workers(2);
    kill(workers[&0], Signal::SIGSTOP).unwrap();
    master.wait_until("the worker to stop", || {
        (state(workers[&0]) == Some('T')).then_some(())
    });
    master.signal(Signal::SIGTERM);
    // Long before the hour-long shutdown timeout: the master continued it after its TERM.
    master.expect_exit_code(0);
    master.wait_for_line(&format!(
        "exited index=0 pid={} status=SIGTERM",
        workers[&0]
    ));
}

#[test]
fn a_worker_killed_by_a_real_time_signal_is_respawned() {
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "2")
        .start();
    let before = master.wait_for_workers(2);
    let realtime = libc::SIGRTMIN() + 3;
    // SAFETY: kill has no memory preconditions.
    assert_eq!(unsafe { libc::kill(before[&1].as_raw(), realtime) }, 0);
    master.wait_for_line(&format!(
        "exited index=1 pid={} status=SIGRTMIN+3",
        before[&1]
    ));
    let after = master.wait_for_workers(2);
    assert_ne!(after[&1], before[&1]);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_rolling_restart_ends_when_its_last_exit_comes_with_a_ttou() {
    // The exit of the last worker being replaced and a TTOU that retires its index are read
    // in one batch.
    let mut master = Master::launch(SCRIPTED)
        .env("ON", "replacing index=1 ")
        .env("THEN", "kill-worker=1,raise=SIGTTOU")
        .start();
    master.wait_for_workers(2);
    master.signal(Signal::SIGHUP);
    master.wait_for_line("scaled-down instances=1 retiring=1");
    master.wait_for_line("rolling-restart-finished");
    master.wait_for_workers(1);
    // And the next HUP starts a rolling restart of its own.
    master.signal(Signal::SIGHUP);
    master.wait_for_lines("rolling-restart-finished", 2);
    assert_eq!(master.count_lines("rolling-restart-busy"), 0);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

#[test]
fn a_crash_read_in_one_batch_with_a_hup_is_a_crash() {
    // SIGHUP sorts before SIGCHLD in a batch: were it acted on first, the dead worker would
    // be "replaced" and its crash taken for a deliberate stop. A limit of 0 makes it fatal.
    let mut master = Master::launch(SCRIPTED)
        .env("ON", "spawned index=1 ")
        .env("THEN", "kill-worker=0,raise=SIGHUP")
        .env("KAMISAMA_RESPAWN_LIMIT", "0")
        .start();
    master.expect_exit_code(1);
    master.wait_for_line("exited index=0 pid=");
    master.wait_for_line("gave-up");
    master.expect_lines("replacing", 0);
    master.expect_tree_gone();
}

/// A cgroup v1 `pids` group that lets the master and at most a number of workers exist;
/// removed on drop.
struct PidsLimit {
    dir: std::path::PathBuf,
}

/// What the master counts for in a pids limit: one task, as its fleets here are small (from
/// 2,000 workers on, its reaper process is a second one, as systemd's `TasksMax` counts them).
const MASTER_TASKS: usize = 1;

impl PidsLimit {
    fn new(name: &str, workers: usize) -> Option<PidsLimit> {
        let max = MASTER_TASKS + workers;
        let dir = std::path::Path::new("/sys/fs/cgroup/pids").join(name);
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).ok()?;
        let limit = PidsLimit { dir };
        std::fs::write(limit.dir.join("pids.max"), max.to_string()).ok()?;
        Some(limit)
    }

    fn procs(&self) -> std::path::PathBuf {
        self.dir.join("cgroup.procs")
    }

    fn set_workers(&self, workers: usize) {
        let max = MASTER_TASKS + workers;
        std::fs::write(self.dir.join("pids.max"), max.to_string()).expect("set pids.max");
    }
}

impl Drop for PidsLimit {
    fn drop(&mut self) {
        // The group can go once its processes have.
        kamisama_tests::poll_until(|| std::fs::remove_dir(&self.dir).ok());
    }
}

/// A pids limit of the master and `workers` for the test `test`, or `None`, said as a skip,
/// where the machine gives none.
fn pids_limit(test: &str, workers: usize) -> Option<PidsLimit> {
    let limit = PidsLimit::new(&format!("kamisama-{test}-{}", std::process::id()), workers);
    if limit.is_none() {
        kamisama_tests::skip(test, "needs a writable cgroup v1 pids hierarchy (root)");
    }
    limit
}

#[test]
fn a_fleet_short_of_a_worker_whose_fork_fails_is_not_ready() {
    let Some(limit) = pids_limit("a_fleet_short_of_a_worker_whose_fork_fails_is_not_ready", 3)
    else {
        return;
    };
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "4")
        .env("KAMISAMA_RESPAWN_LIMIT", "100")
        .in_cgroup(&limit.procs())
        .start();
    master.wait_for_lines("spawn-failed index=3 ", 2);
    master.wait_for_workers(3);
    master.expect_lines("ready workers=", 0);
    limit.set_workers(64);
    master.wait_for_line("ready workers=4");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
    drop(master);
}

#[test]
fn a_passing_fork_failure_is_retried() {
    let Some(limit) = pids_limit("a_passing_fork_failure_is_retried", 3) else {
        return;
    };
    // The master and three workers fit; the fourth fork fails with EAGAIN until the limit
    // is raised.
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "5")
        .env("KAMISAMA_RESPAWN_LIMIT", "100")
        .in_cgroup(&limit.procs())
        .start();
    master.wait_for_line(
        "spawn-failed index=3 error=\"Resource temporarily unavailable (os error 11)\"",
    );
    master.wait_for_line("respawning index=3 respawns=1 limit=100 window=60s delay=0.1s");
    limit.set_workers(64);
    master.wait_for_workers(5);
    master.expect_lines("gave-up", 0);
    // A fork that succeeds clears the failures: the next failure waits 100 ms again.
    let failures = master.count_lines("spawn-failed");
    limit.set_workers(5);
    master.signal(Signal::SIGTTIN);
    master.wait_for_lines("spawn-failed index=5 ", 1);
    let retry = master.wait_for_lines("respawning index=5 ", 1).remove(0);
    assert!(
        retry.ends_with(" delay=0.1s"),
        "{retry}\n{}",
        master.transcript()
    );
    assert!(master.count_lines("spawn-failed") > failures);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
    drop(master);
}

#[test]
fn a_fork_failure_that_persists_gives_up_and_stops_every_worker() {
    let Some(limit) = pids_limit(
        "a_fork_failure_that_persists_gives_up_and_stops_every_worker",
        3,
    ) else {
        return;
    };
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "8")
        .in_cgroup(&limit.procs())
        .start();
    let first = master.wait_for_line("spawn-failed");
    let failed = Instant::now();
    // Wake the master often meanwhile (a SIGCHLD with no child to reap changes nothing): a
    // wakeup during a backoff must not bring a retry forward.
    while master.count_lines("gave-up") == 0 && failed.elapsed() < Duration::from_secs(5) {
        let _ = nix::sys::signal::kill(master.pid(), Signal::SIGCHLD);
        std::thread::sleep(Duration::from_millis(20));
    }
    master.wait_for_line("gave-up");
    // The retries waited 0.1 + 0.2 + 0.4 s in all; the first line may have come a little
    // late, never early. (That a retry never comes before its time, at the same instant
    // rather than after it, cannot be told from outside: `>` and `>=` there are equivalent.)
    let waited = failed.elapsed();
    assert!(
        waited >= Duration::from_millis(600),
        "{waited:?} after {first}"
    );
    master.expect_exit_code(1);
    // Each failure waits twice as long as the one before and counts against the limit of 3.
    let failures = master.wait_for_lines("spawn-failed index=3 ", 4);
    assert!(failures
        .iter()
        .all(|line| line.ends_with("error=\"Resource temporarily unavailable (os error 11)\"")));
    for (respawns, delay) in [(1, "0.1s"), (2, "0.2s"), (3, "0.4s")] {
        master.wait_for_line(&format!(
            "respawning index=3 respawns={respawns} limit=3 window=60s delay={delay}"
        ));
    }
    master.wait_for_line("gave-up");
    master.wait_for_line("shutdown-started workers=3");
    master.wait_for_lines("status=SIGTERM", 3);
    assert_eq!(master.count_lines("spawned"), 3);
    master.expect_tree_gone();
    drop(master);
}

#[test]
fn a_rolling_restart_waits_for_a_replacement_whose_fork_fails() {
    let Some(limit) = pids_limit(
        "a_rolling_restart_waits_for_a_replacement_whose_fork_fails",
        64,
    ) else {
        return;
    };
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "3")
        .env("KAMISAMA_RESPAWN_LIMIT", "100")
        .in_cgroup(&limit.procs())
        .start();
    let before = master.wait_for_workers(3);
    // Room for two workers: once the old worker of index 0 is gone, the two others fill it,
    // and its replacement's fork fails until the limit is raised.
    limit.set_workers(2);
    master.signal(Signal::SIGHUP);
    master.wait_for_lines("spawn-failed index=0 ", 2);
    limit.set_workers(64);
    master.wait_for_line("rolling-restart-finished");
    let after = master.wait_for_workers(3);
    assert!(after.iter().all(|(index, pid)| before[index] != *pid));
    // Never more than one index down: index 1 was stopped only once index 0 ran again.
    let transcript = master.transcript();
    let at = |needle: &str| transcript.find(needle).unwrap_or(usize::MAX);
    let respawned = at(&format!("spawned index=0 pid={}", after[&0]));
    assert!(respawned < at("replacing index=1 "), "{transcript}");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
    drop(master);
}
