//! What operators and Rust programmers do out of habit must do no harm: signals sent to
//! reopen logs or to deploy, whatever the fleet runs.

use kamisama_tests::deployment::spawned_by;
use kamisama_tests::{field, reap_orphan, Master};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use std::time::Duration;

const CRUNCH: &str = env!("CARGO_BIN_EXE_crunch");

#[test]
fn the_readme_program_survives_a_hundred_usr1_and_a_hundred_usr2() {
    // USR1 is what logrotate sends; USR2 deploys: neither may take a worker down.
    let mut master = Master::launch(CRUNCH).start();
    let old = master.pid();
    spawned_by(&master, old, 17);
    for _ in 0..100 {
        master.signal(Signal::SIGUSR1);
        std::thread::sleep(Duration::from_millis(1));
    }
    master.wait_for_line("forwarded signal=SIGUSR1 workers=17");
    for _ in 0..100 {
        master.signal(Signal::SIGUSR2);
        std::thread::sleep(Duration::from_millis(1));
    }
    // The first USR2 upgrades (a job fleet too), the rest find it under way.
    let started = master.wait_for_line(&format!("kamisama[{old}]: upgrade-started"));
    let successor = Pid::from_raw(field(&started, "pid").unwrap().parse().unwrap());
    spawned_by(&master, successor, 17);
    master.wait_for_line(&format!(
        "kamisama[{old}]: upgrade-handing-over pid={successor}"
    ));
    assert_eq!(master.wait_exit_alone().code(), Some(0));
    for lost in ["respawning", "gave-up", "status=SIGUSR", "killed"] {
        master.expect_lines(lost, 0);
    }
    kill(successor, Signal::SIGTERM).unwrap();
    assert_eq!(reap_orphan(successor), WaitStatus::Exited(successor, 0));
    master.expect_tree_gone();
}

/// Connects to the fleet on `address` `count` times and returns the answers.
fn hellos(address: &str, count: usize) -> Vec<String> {
    use std::io::Read;
    (0..count)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(address).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).expect("an answer");
            answer
        })
        .collect()
}

/// An async fleet that takes its listener as `MODE` says answers every connection, and
/// stops at once on TERM (its workers have an hour: SIGKILL would be a failure).
fn an_async_fleet_serves_and_stops(mode: &str) {
    let mut master = Master::launch(env!("CARGO_BIN_EXE_async-acceptor"))
        .env("MODE", mode)
        .start();
    let line = master.wait_for_line("listening address=");
    let address = field(&line, "address").unwrap().to_owned();
    master.wait_for_workers(2);
    for answer in hellos(&address, 20) {
        assert!(answer.starts_with("hello from "), "{answer:?}");
    }
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_lines("worker-stopping", 2);
    master.expect_lines("killed", 0);
    master.expect_lines("panicked", 0);
}

#[test]
fn tokio_from_std_on_a_fleet_listener_just_works() {
    an_async_fleet_serves_and_stops("from_std");
}

#[test]
fn an_async_worker_accepts_through_its_handle_and_stops_at_once() {
    an_async_fleet_serves_and_stops("kamisama");
}
