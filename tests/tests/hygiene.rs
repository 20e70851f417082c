//! What a program a worker runs inherits, where users feel it: after the start, a rolling
//! restart, an upgrade and a rollback, it has descriptors 0, 1 and 2 and nothing else (no
//! listening socket, no pipe of the master's), and none of the variables kamisama passes to
//! itself or that the service manager addressed to the master.

use kamisama_tests::deployment::{spawned_by, upgrade, Deployment};
use kamisama_tests::{field, scratch, Inherited, Master, NotifySocket};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

const SUPERVISED: &str = env!("CARGO_BIN_EXE_supervised");

/// Asserts that what each of `workers` ran inherited nothing it should not.
fn clean(master: &Master, workers: &[u32]) {
    for worker in workers {
        let line = master.wait_for_line(&format!("inherited by={worker} "));
        Inherited::parse(&line).unwrap().assert_clean();
    }
}

/// The workers of `master` spawned since its `nth` spawned line (counted from 0).
fn spawned_since(output: &Master, master: Pid, nth: usize, count: usize) -> Vec<u32> {
    let lines = output.wait_for_lines(&format!("kamisama[{master}]: spawned index="), nth + count);
    lines[nth..]
        .iter()
        .map(|line| field(line, "pid").unwrap().parse().unwrap())
        .collect()
}

#[test]
fn programs_workers_run_inherit_nothing_of_the_master_through_a_life() {
    let deployment = Deployment::new(scratch!("hygiene"), SUPERVISED);
    let systemd = NotifySocket::bind(scratch!("hygiene-socket").join("notify"), None);
    let settings = [
        ("FIXTURE", "exec-probe"),
        ("PROBE", env!("CARGO_BIN_EXE_inherited")),
        ("NOTIFY_SOCKET", systemd.path()),
        ("WATCHDOG_USEC", "10000000"),
    ];
    let (mut master, _, workers) = deployment.start(2, &settings);
    let old = master.pid();
    clean(&master, &workers.into_iter().collect::<Vec<_>>());
    // A rolling restart.
    master.signal(Signal::SIGHUP);
    master.wait_for_line("rolling-restart-finished");
    clean(&master, &spawned_since(&master, old, 2, 2));
    // An upgrade, to the same program: the new master's workers.
    let successor = upgrade(&master, old);
    clean(
        &master,
        &spawned_by(&master, successor, 2)
            .into_iter()
            .collect::<Vec<_>>(),
    );
    master.wait_for_line(&format!("kamisama[{old}]: shutdown-finished exit=0"));
    assert_eq!(master.wait_exit_alone().code(), Some(0));
    // A rollback, then a worker of the master that stayed, forked after it.
    deployment.install_script("exit 1");
    let failed = upgrade(&master, successor);
    master.wait_for_line(&format!("reaped pid={failed}"));
    let first = spawned_by(&master, successor, 2)
        .into_iter()
        .next()
        .unwrap();
    nix::sys::signal::kill(Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
    clean(&master, &spawned_since(&master, successor, 2, 1));
    nix::sys::signal::kill(successor, Signal::SIGTERM).unwrap();
    assert_eq!(
        kamisama_tests::reap_orphan(successor),
        nix::sys::wait::WaitStatus::Exited(successor, 0)
    );
    master.expect_tree_gone();
}
