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

#[test]
fn an_async_worker_accepts_on_the_fleet_listener_and_stops_at_once() {
    an_async_fleet_serves_and_stops("fleet");
}

/// How many times the threads of 8 idle async workers go to sleep for 40 connections, one
/// at a time, accepted as `MODE` says.
fn sleeps_for_connections(mode: &str) -> u64 {
    const WORKERS: usize = 8;
    const CONNECTIONS: usize = 40;
    let mut master = Master::launch(env!("CARGO_BIN_EXE_async-acceptor"))
        .env("MODE", mode)
        .env("KAMISAMA_INSTANCES", &WORKERS.to_string())
        .start();
    let line = master.wait_for_line("listening address=");
    let address = field(&line, "address").unwrap().to_owned();
    let workers = master.wait_for_workers(WORKERS);
    master.wait_for_lines("waiting index=", WORKERS);
    // One connection each first: every worker's acceptor is started and asleep.
    for answer in hellos(&address, WORKERS) {
        assert!(answer.starts_with("hello from "), "{answer:?}");
    }
    let total = || {
        workers
            .values()
            .map(|pid| kamisama_tests::thread_sleeps(*pid))
            .sum::<u64>()
    };
    let settled = |served: usize| {
        master.wait_for_lines("waiting index=", WORKERS + served);
        master.wait_until("every worker asleep", || {
            let asleep = workers
                .values()
                .all(|pid| kamisama_tests::all_threads_asleep(*pid));
            asleep.then_some(())
        });
    };
    settled(WORKERS);
    let before = total();
    for served in 1..=CONNECTIONS {
        for answer in hellos(&address, 1) {
            assert!(answer.starts_with("hello from "), "{answer:?}");
        }
        settled(WORKERS + served);
    }
    let woken = total() - before;
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_lines("killed", 0);
    woken
}

#[test]
fn a_connection_wakes_one_async_worker_on_a_fleet_listener() {
    // Through its acceptor thread, one worker's: the acceptor and the runtime it hands the
    // connection to, a few sleeps in all. On a tokio listener, every worker's runtime wakes.
    let fleet = sleeps_for_connections("fleet");
    let tokio = sleeps_for_connections("kamisama");
    eprintln!("sleeps for 40 connections over 8 workers: fleet {fleet}, tokio {tokio}");
    assert!(fleet <= 40 * 5, "{fleet} sleeps for 40 connections");
    assert!(fleet * 2 < tokio, "fleet {fleet}, tokio's listener {tokio}");
}
