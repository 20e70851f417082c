//! Every shutdown ends: whatever the workers' process trees do (new sessions and process
//! groups, a worker that leaves its group, daemons, a PID namespace without its own /proc, no
//! file descriptor to spare), the master stops all of it and exits, leaving nothing behind.
//!
//! Mutants of `master/fleet.rs` and of `Master::sweep` that cargo-mutants finds alive, and
//! why no test can kill them (they change how soon or how often, never whether):
//!
//! - `Master::sweep` lists the master's children at once when its last worker is gone,
//!   rather than on the next 100 ms tick: every mutant of that condition leaves the tick to
//!   do the same, a little later, and these tests assert outcomes, not latencies (the
//!   benchmark measures shutdown time).
//! - `Orphans::sweep`'s tick (`* 10`, `+`) spaces out sweeps that scan every pid; the
//!   spacing is not an outcome. (That it skips an orphan that already had the signals is:
//!   a second TERM means "now" to many programs.)
//! - `Orphans::reaped` forgets a reaped orphan: without it, a later orphan that reused the
//!   pid in the same shutdown would miss its TERM, and still get KILL at the deadline.
//! - `stop_worker`'s `&=` becoming `|=`: a worker not yet reaped accepts any signal (a
//!   zombie too), and KILL is a single signal, so the two agree on every call it gets.
//! - `peek`'s `WEXITED | WNOHANG | WNOWAIT` with `^`: the flags are distinct bits.

use kamisama_tests::{children_of, field, is_alive, parse_started, process_group_of, Master};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const SUPERVISED: &str = env!("CARGO_BIN_EXE_supervised");

fn pid_in(line: &str) -> Pid {
    Pid::from_raw(field(line, "pid").unwrap().parse().unwrap())
}

/// Every `reaped` line of the master, which adopted and reaped them.
fn reaped(master: &Master) -> Vec<String> {
    master
        .transcript()
        .lines()
        .filter(|line| line.contains("]: reaped "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn orphans_that_arrive_during_a_shutdown_get_term() {
    // A shell in a process group of its own waits for a `sleep`: neither is in the worker's
    // group. The shell reaches the master when the worker dies of the shutdown's TERM, and
    // the `sleep` when the shell dies of its own; each must get TERM as it arrives, with no
    // SIGKILL, since the hour-long timeout never comes.
    let mut master = Master::launch(SUPERVISED)
        .env("FIXTURE", "helper-tree")
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "3600")
        .start();
    let helper = pid_in(&master.wait_for_line("helper index=0"));
    master.wait_until("the helper to start its sleep", || {
        (!children_of(helper).is_empty()).then_some(())
    });
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.wait_for_line(&format!("reaped pid={helper} status=SIGTERM"));
    let reaped = reaped(&master);
    assert_eq!(reaped.len(), 2, "{}", master.transcript());
    assert!(
        reaped.iter().all(|line| line.ends_with(" status=SIGTERM")),
        "{reaped:#?}"
    );
    assert!(master.tree().is_empty(), "left behind: {:?}", master.tree());
}

#[test]
fn an_adopted_daemon_gets_term_as_the_shutdown_starts() {
    // The worker ignores TERM for an hour; the daemon it left behind does not wait for it.
    let mut master = Master::launch(SUPERVISED)
        .env("FIXTURE", "ignore-term,daemonize")
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "3600")
        .start();
    let (_, worker) = parse_started(&master.wait_for_line("worker-started")).unwrap();
    let daemon = pid_in(&master.wait_for_line("daemon pid="));
    master.wait_until("the daemon to be adopted", || {
        children_of(master.pid()).contains(&daemon).then_some(())
    });
    master.signal(Signal::SIGTERM);
    master.wait_for_line(&format!("reaped pid={daemon} status=SIGTERM"));
    assert!(is_alive(worker));
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    assert!(master.tree().is_empty(), "left behind: {:?}", master.tree());
}

#[test]
fn a_worker_that_left_its_process_group_is_still_stopped() {
    let mut master = Master::launch(SUPERVISED)
        .env("FIXTURE", "leave-group")
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "3600")
        .start();
    let worker = master.wait_for_workers(1)[&0];
    master.wait_for_line("left-group index=0");
    assert_ne!(process_group_of(worker), Some(worker));
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.wait_for_line(&format!("exited index=0 pid={worker} status=SIGTERM"));
    assert!(master.tree().is_empty(), "left behind: {:?}", master.tree());
}

#[test]
fn killed_is_logged_only_for_a_worker_that_got_sigkill() {
    // The worker ignores TERM and is not in the group that bears its pid: only a KILL sent
    // to the worker itself ends it.
    let mut master = Master::launch(SUPERVISED)
        .env("FIXTURE", "ignore-term,leave-group")
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "1")
        .start();
    let worker = master.wait_for_workers(1)[&0];
    master.wait_for_line("left-group index=0");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.wait_for_line(&format!("killed index=0 pid={worker} after=1s"));
    master.wait_for_line(&format!("exited index=0 pid={worker} status=SIGKILL"));
    assert!(master.tree().is_empty(), "left behind: {:?}", master.tree());
}

/// Starts a master with one worker that leaves a daemon behind, under `wrapper`, and checks
/// that the shutdown finds the daemon and ends it with TERM.
fn a_daemon_is_stopped_under(wrapper: &[&str], fixture: &str) {
    let mut master = Master::launch_under(wrapper, SUPERVISED)
        .env("FIXTURE", fixture)
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "3600")
        .start();
    master.wait_for_line("daemon pid=");
    // The daemon is adopted once the shell that started it has exited.
    master.wait_until("the daemon to be adopted", || {
        (children_of(master.pid()).len() == 2).then_some(())
    });
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    let reaped = master.wait_for_line("reaped pid=");
    assert!(reaped.ends_with(" status=SIGTERM"), "{reaped}");
    assert!(master.tree().is_empty(), "left behind: {:?}", master.tree());
}

#[test]
fn in_a_pid_namespace_without_its_own_proc_daemons_are_stopped() {
    if !kamisama_tests::can_unshare_pid() {
        kamisama_tests::skip(
            "in_a_pid_namespace_without_its_own_proc_daemons_are_stopped",
            "creating a PID namespace needs util-linux's unshare and CAP_SYS_ADMIN",
        );
        return;
    }
    // The master is PID 2 of the namespace (the shell is its init), and /proc is the one
    // of the namespace above: its pids are not the master's.
    a_daemon_is_stopped_under(
        &["unshare", "--pid", "--fork", "sh", "-c", "\"$0\"; exit $?"],
        "daemonize",
    );
}

#[test]
fn with_no_file_descriptor_to_spare_daemons_are_stopped() {
    // Four descriptors: the standard three and the master's signalfd; it can open nothing
    // in /proc. The worker lifts its own soft limit to start the daemon.
    a_daemon_is_stopped_under(
        &["prlimit", "--nofile=4:64", "--"],
        "raise-nofile,daemonize",
    );
}

#[test]
fn term_during_a_shutdown_the_master_began_itself_does_not_force_it() {
    let mut master = Master::launch(SUPERVISED)
        .env("FIXTURE", "ignore-term")
        .env("KAMISAMA_INSTANCES", "2")
        .env("KAMISAMA_RESPAWN_LIMIT", "0")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "3600")
        .start();
    let workers = master.wait_for_workers(2);
    kill(workers[&0], Signal::SIGKILL).unwrap();
    master.wait_for_line("gave-up");
    master.wait_for_line("shutdown-started workers=1");
    // The operator's first TERM joins the shutdown under way; only a second one forces it.
    master.signal(Signal::SIGTERM);
    master.wait_for_line("shutdown-requested signal=SIGTERM");
    assert_eq!(master.count_lines("shutdown-forced"), 0);
    assert!(is_alive(workers[&1]), "{}", master.transcript());
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(1);
    master.wait_for_line("shutdown-forced signal=SIGTERM workers=1");
    assert!(master.tree().is_empty(), "left behind: {:?}", master.tree());
}

#[test]
fn a_stopping_worker_gets_one_term_however_long_it_takes() {
    // Each worker takes a second to stop, through ten sweeps for orphans: none of them may
    // take a worker for an orphan and TERM it again, which many programs read as "now".
    let mut master = Master::launch(SUPERVISED)
        .env("FIXTURE", "count-term")
        .start();
    master.wait_for_workers(3);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    for index in 0..3 {
        let terms = master.count_lines(&format!("got-term index={index}"));
        assert_eq!(terms, 1, "index {index}:\n{}", master.transcript());
    }
    master.expect_tree_gone();
}

#[test]
fn an_orphan_gets_one_term_however_long_it_takes() {
    // The same for what the master adopted: an orphan that takes a second to stop is swept
    // ten times, and signalled at the first sweep only.
    let mut master = Master::launch(SUPERVISED)
        .env("FIXTURE", "counting-orphan")
        .env("KAMISAMA_INSTANCES", "1")
        .start();
    let orphan = pid_in(&master.wait_for_line("counting-orphan pid="));
    master.wait_until("the orphan adopted", || {
        children_of(master.pid()).contains(&orphan).then_some(())
    });
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_lines("orphan-got-term", 1);
    master.expect_tree_gone();
}
