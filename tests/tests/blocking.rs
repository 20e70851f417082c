//! Blocking calls that still stop: workers idle in `Worker::accept` or
//! `Worker::wait_readable` leave at once when a stop is requested. Each fixture gives its
//! workers an hour to stop, so a test that ends at all proves it.

use kamisama_tests::{field, Master};
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
    assert_eq!(master.count_lines("killed"), 0, "{}", master.transcript());
    let after = master.wait_for_workers(4);
    assert!(after.iter().all(|(index, pid)| before[index] != *pid));
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    assert_eq!(master.count_lines("worker-stopping"), 8);
}

#[test]
fn accept_hands_out_connections() {
    let mut master = Master::launch(ACCEPTOR).start();
    let port = field(&master.wait_for_line("listening port="), "port")
        .unwrap()
        .to_owned();
    master.wait_for_lines("waiting index=", 2);
    for _ in 0..10 {
        let stream = TcpStream::connect(format!("127.0.0.1:{port}")).expect("connect");
        let mut greeting = String::new();
        BufReader::new(stream).read_line(&mut greeting).unwrap();
        assert!(greeting.starts_with("hello from "), "{greeting:?}");
    }
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    assert_eq!(master.count_lines("killed"), 0, "{}", master.transcript());
}

#[test]
fn workers_waiting_to_read_leave_at_once_on_term() {
    let mut master = Master::launch(ACCEPTOR).env("WAIT", "read").start();
    master.wait_for_workers(2);
    master.wait_for_lines("waiting index=", 2);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    assert_eq!(master.count_lines("worker-stopping"), 2);
    assert_eq!(master.count_lines("status=0"), 2, "{}", master.transcript());
}
