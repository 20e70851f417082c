//! Blocking calls that still stop: workers idle in `Worker::accept` or
//! `Worker::wait_readable` leave at once when a stop is requested. Each fixture gives its
//! workers an hour to stop, so a test that ends at all proves it.
//!
//! cargo-mutants finds `set_nonblocking` in the `Accept` impls replaced by `Ok(())` alive:
//! a listener left blocking only hurts a worker woken for a connection another worker then
//! took, in the microseconds between its wakeup and its `accept` (with `EPOLLEXCLUSIVE`, a
//! second worker is rarely woken for one connection at all); no test can hold a worker in
//! that window, so the race test below catches the mutant only by luck. In `stop::wait`, `&&` turned into `||` in the last
//! check lives for the same reason: it differs only when a stop comes between `poll`'s
//! return and that check while the descriptor is readable too.

use kamisama_tests::{field, state, status_field, Master};
use nix::sys::signal::Signal;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;

const ACCEPTOR: &str = env!("CARGO_BIN_EXE_acceptor");

#[test]
fn a_rolling_restart_of_workers_idle_in_accept_is_prompt() {
    let mut master = Master::launch(ACCEPTOR)
        .env("KAMISAMA_INSTANCES", "4")
        .start();
    let before = master.wait_for_workers(4);
    master.wait_for_lines("waiting index=", 4);
    master.signal(Signal::SIGHUP);
    master.wait_for_line("rolling-restart-finished");
    for (index, pid) in &before {
        master.wait_for_line(&format!("exited index={index} pid={pid} status=0"));
    }
    master.expect_lines("killed", 0);
    let after = master.wait_for_workers(4);
    assert!(after.iter().all(|(index, pid)| before[index] != *pid));
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    assert_eq!(master.count_lines("worker-stopping"), 8);
}

#[test]
fn accept_hands_out_connections_and_losing_the_race_is_invisible() {
    let mut master = Master::launch(ACCEPTOR)
        .env("KAMISAMA_INSTANCES", "4")
        .start();
    let port = field(&master.wait_for_line("listening port="), "port")
        .unwrap()
        .to_owned();
    master.wait_for_lines("waiting index=", 4);
    // A connection may wake more than one worker, and one gets it: the others go back to
    // waiting, neither told of an error nor stuck in a blocking accept.
    for _ in 0..40 {
        let stream = TcpStream::connect(format!("127.0.0.1:{port}")).expect("connect");
        let mut greeting = String::new();
        BufReader::new(stream).read_line(&mut greeting).unwrap();
        assert!(greeting.starts_with("hello from "), "{greeting:?}");
    }
    // An hour to stop, and stopped at once: none was left blocked in accept.
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_lines("killed", 0);
    master.expect_lines("accept-error", 0);
    assert_eq!(master.count_lines("worker-stopping"), 4);
}

#[test]
fn a_connection_wakes_one_waiting_worker_not_all_of_them() {
    const WORKERS: usize = 8;
    const CONNECTIONS: u64 = 40;
    let mut master = Master::launch(ACCEPTOR)
        .env("KAMISAMA_INSTANCES", &WORKERS.to_string())
        .start();
    let port = field(&master.wait_for_line("listening port="), "port")
        .unwrap()
        .to_owned();
    let workers = master.wait_for_workers(WORKERS);
    // Each waits once before its first connection: its epoll instance is made by then.
    master.wait_for_lines("waiting index=", WORKERS);
    let all_asleep = || {
        master.wait_until("every worker asleep", || {
            let asleep = workers.values().all(|pid| state(*pid) == Some('S'));
            asleep.then_some(())
        });
    };
    all_asleep();
    // A worker that goes to sleep switches out voluntarily, once per wakeup.
    let sleeps = || -> u64 {
        workers
            .values()
            .map(|pid| status_field(*pid, "voluntary_ctxt_switches").unwrap())
            .sum()
    };
    let before = sleeps();
    for served in 1..=CONNECTIONS {
        let stream = TcpStream::connect(format!("127.0.0.1:{port}")).expect("connect");
        let mut greeting = String::new();
        BufReader::new(stream).read_line(&mut greeting).unwrap();
        assert!(greeting.starts_with("hello from "), "{greeting:?}");
        master.wait_for_lines("waiting index=", WORKERS + served as usize);
    }
    all_asleep();
    let woken = sleeps() - before;
    // One wakeup per connection, and a little room: the kernel may wake a second exclusive
    // waiter. Woken all together, 8 workers would sleep 8 times per connection.
    assert!(
        woken <= 2 * CONNECTIONS,
        "{woken} wakeups of {WORKERS} workers for {CONNECTIONS} connections"
    );
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_lines("killed", 0);
}

#[test]
fn connections_go_round_the_idle_workers_in_turn() {
    const WORKERS: usize = 4;
    const CONNECTIONS: usize = 40;
    let mut master = Master::launch(ACCEPTOR)
        .env("KAMISAMA_INSTANCES", &WORKERS.to_string())
        .start();
    let port = field(&master.wait_for_line("listening port="), "port")
        .unwrap()
        .to_owned();
    let workers = master.wait_for_workers(WORKERS);
    master.wait_for_lines("waiting index=", WORKERS);
    // Asleep in its wait: a worker that said `waiting` may not be there yet, and one that is
    // not waiting when a connection comes is passed over for it.
    let all_asleep = || {
        master.wait_until("every worker asleep", || {
            let asleep = workers.values().all(|pid| state(*pid) == Some('S'));
            asleep.then_some(())
        });
    };
    let mut accepted = [0; WORKERS];
    for served in 1..=CONNECTIONS {
        all_asleep();
        let stream = TcpStream::connect(format!("127.0.0.1:{port}")).expect("connect");
        let mut greeting = String::new();
        BufReader::new(stream).read_line(&mut greeting).unwrap();
        let index: usize = greeting
            .trim()
            .strip_prefix("hello from ")
            .unwrap()
            .parse()
            .unwrap();
        accepted[index] += 1;
        // Each worker idle again before the next connection, the one that served it last.
        master.wait_for_lines("waiting index=", WORKERS + served);
    }
    // In turn, each has 10. Without the turn, the first worker to have waited takes all of
    // them.
    assert!(
        accepted
            .iter()
            .all(|count| *count >= CONNECTIONS / WORKERS / 2),
        "{accepted:?}"
    );
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn an_accept_that_fails_tells_the_worker() {
    let master = Master::launch(ACCEPTOR)
        .env("KAMISAMA_INSTANCES", "1")
        .env("NO_FD", "1")
        .start();
    let port = field(&master.wait_for_line("listening port="), "port")
        .unwrap()
        .to_owned();
    master.wait_for_lines("waiting index=", 1);
    let _connection = TcpStream::connect(format!("127.0.0.1:{port}")).expect("connect");
    let error = master.wait_for_line("accept-error index=0");
    assert!(error.contains("Too many open files"), "{error}");
}

#[test]
fn workers_waiting_to_read_leave_at_once_on_term() {
    let mut master = Master::launch(ACCEPTOR).env("WAIT", "read").start();
    master.wait_for_workers(2);
    master.wait_for_lines("waiting index=", 2);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    assert_eq!(master.count_lines("worker-stopping"), 2);
    master.expect_lines("status=0", 2);
}
