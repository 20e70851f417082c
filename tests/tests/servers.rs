//! Preforking servers: listeners bound once by the master and shared by every worker, bind
//! errors, systemd's socket activation, and a rolling restart under load that loses no
//! request. The servers are `examples/hello_server.rs` (threads) and
//! `examples/async_hello_server.rs` (tokio).

use kamisama_tests::load::Load;
use kamisama_tests::{field, Master};
use nix::sys::signal::Signal;
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};

const HELLO: &str = env!("CARGO_BIN_EXE_hello-server");
const ASYNC_HELLO: &str = env!("CARGO_BIN_EXE_async-hello-server");

/// Starts a hello server on a free port of loopback; returns it with its address.
fn hello(server: &str, instances: usize) -> (Master, SocketAddr) {
    let master = Master::launch(server)
        .env("KAMISAMA_LISTEN", "127.0.0.1:0")
        .env("KAMISAMA_INSTANCES", &instances.to_string())
        .start();
    let address = listening(&master);
    (master, address)
}

/// Waits until the master has forked `instances` workers, and returns their pids.
fn spawned(master: &Master, instances: usize) -> BTreeSet<u32> {
    master
        .wait_for_lines("]: spawned index=", instances)
        .iter()
        .map(|line| field(line, "pid").unwrap().parse().unwrap())
        .collect()
}

fn listening(master: &Master) -> SocketAddr {
    let line = master.wait_for_line("listening address=");
    field(&line, "address").unwrap().parse().unwrap()
}

fn one_listener_serves_every_worker(server: &str) {
    let (mut master, address) = hello(server, 4);
    let pids = spawned(&master, 4);
    let load = Load::start(address, 4, false);
    load.wait_for(200);
    let tally = load.stop();
    assert_eq!(tally.failed(), 0, "{tally:?}");
    let answered: BTreeSet<u32> = tally.accepted.keys().copied().collect();
    assert!(
        answered.is_subset(&pids) && answered.len() >= 2,
        "{answered:?} of {pids:?}"
    );
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn one_listener_serves_every_thread_worker() {
    one_listener_serves_every_worker(HELLO);
}

#[test]
fn one_listener_serves_every_async_worker() {
    one_listener_serves_every_worker(ASYNC_HELLO);
}

#[test]
fn a_bind_failure_stops_the_start_and_names_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let mut master = Master::launch(HELLO)
        .env("KAMISAMA_LISTEN", &address.to_string())
        .start();
    master.expect_exit_code(2);
    let error = master.wait_for_line("error: cannot listen on");
    assert!(error.contains(&address.to_string()), "{error}");
    assert!(error.contains("Address already in use"), "{error}");
    assert_eq!(master.count_lines("spawned"), 0);
}

#[test]
fn with_socket_activation_the_socket_passed_in_is_used() {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap();
    // The master's own setting would bind elsewhere: the socket handed over wins.
    let mut master = Master::launch_under(&["sh", "-c", "LISTEN_PID=$$ exec \"$0\""], HELLO)
        .socket(&socket)
        .env("KAMISAMA_LISTEN", "127.0.0.1:0")
        .env("KAMISAMA_INSTANCES", "2")
        .start();
    assert_eq!(listening(&master), address);
    spawned(&master, 2);
    drop(socket);
    let load = Load::start(address, 2, true);
    load.wait_for(50);
    let tally = load.stop();
    assert_eq!(tally.failed(), 0, "{tally:?}");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

/// Keeps clients busy on a hello server through a rolling restart, and checks that every one
/// of their requests was answered.
fn a_rolling_restart_under_load(server: &str, keep_alive: bool) {
    let (mut master, address) = hello(server, 4);
    spawned(&master, 4);
    let load = Load::start(address, 8, keep_alive);
    load.wait_for(500);
    master.signal(Signal::SIGHUP);
    master.wait_for_line("rolling-restart-finished");
    load.wait_for(500);
    let tally = load.stop();
    assert_eq!(tally.failed(), 0, "{tally:?}");
    assert!(tally.ok >= 1000);
    master.expect_lines("killed", 0);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_rolling_restart_under_load_loses_no_request() {
    a_rolling_restart_under_load(HELLO, false);
}

#[test]
fn a_rolling_restart_under_load_loses_no_request_on_kept_alive_connections() {
    a_rolling_restart_under_load(HELLO, true);
}

#[test]
fn a_rolling_restart_of_async_workers_under_load_loses_no_request() {
    a_rolling_restart_under_load(ASYNC_HELLO, false);
}

#[test]
fn a_rolling_restart_of_async_workers_under_load_loses_no_request_on_kept_alive_connections() {
    a_rolling_restart_under_load(ASYNC_HELLO, true);
}

#[test]
fn sockets_passed_to_another_process_are_not_taken() {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let passed = socket.local_addr().unwrap();
    // LISTEN_PID names another process (this one): the descriptor is not the master's to use.
    let mut master = Master::launch(HELLO)
        .socket(&socket)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", &std::process::id().to_string())
        .env("KAMISAMA_LISTEN", "127.0.0.1:0")
        .env("KAMISAMA_INSTANCES", "1")
        .start();
    let address = listening(&master);
    assert_ne!(address, passed);
    spawned(&master, 1);
    let load = Load::start(address, 1, false);
    load.wait_for(10);
    assert_eq!(load.stop().failed(), 0);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

/// Sends one request to the hello server on the Unix socket `path`, and returns its answer.
fn ask_over_unix(path: &std::path::Path) -> String {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path).expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn a_unix_listener_replaces_the_socket_file_of_a_server_gone() {
    let dir = kamisama_tests::scratch!("unix-stale");
    let path = dir.join("app.sock");
    // A server that died left its socket file behind, with nobody listening on it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let mut master = Master::launch(HELLO)
        .env("KAMISAMA_LISTEN", &format!("unix:{}", path.display()))
        .env("KAMISAMA_INSTANCES", "1")
        .start();
    master.wait_for_line(&format!("listening address=unix:{}", path.display()));
    spawned(&master, 1);
    let answer = master.wait_until("an answer on the socket", || {
        Some(ask_over_unix(&path)).filter(|answer| answer.starts_with("HTTP/1.1 200"))
    });
    assert!(answer.contains("hello"), "{answer}");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_unix_path_that_is_not_a_socket_is_refused_and_left_as_it_was() {
    let dir = kamisama_tests::scratch!("unix-not-a-socket");
    let file = dir.join("precious.txt");
    std::fs::write(&file, "precious data\n").unwrap();
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let link = dir.join("link.sock");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    for path in [&file, &fifo, &link] {
        let mut master = Master::launch(HELLO)
            .env("KAMISAMA_LISTEN", &format!("unix:{}", path.display()))
            .start();
        master.expect_exit_code(2);
        let error = master.wait_for_line("error: cannot listen on");
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains("not a socket"), "{error}");
        master.expect_lines("spawned", 0);
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious data\n");
    let kind = |path: &std::path::Path| std::fs::symlink_metadata(path).unwrap().file_type();
    use std::os::unix::fs::FileTypeExt;
    assert!(kind(&fifo).is_fifo());
    assert!(kind(&link).is_symlink());
}

#[test]
fn a_unix_socket_a_live_server_listens_on_is_not_taken() {
    let dir = kamisama_tests::scratch!("unix-live");
    let path = dir.join("app.sock");
    let _live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let mut master = Master::launch(HELLO)
        .env("KAMISAMA_LISTEN", &format!("unix:{}", path.display()))
        .start();
    master.expect_exit_code(2);
    let error = master.wait_for_line("error: cannot listen on");
    assert!(error.contains("Address already in use"), "{error}");
    assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
}

#[test]
fn unix_with_no_path_is_an_invalid_address() {
    let mut master = Master::launch(HELLO)
        .env("KAMISAMA_LISTEN", "unix:")
        .start();
    master.expect_exit_code(2);
    let error = master.wait_for_line("error: cannot listen on unix:");
    assert!(error.contains("no path"), "{error}");
    master.expect_lines("listening", 0);
}

#[test]
fn listen_addresses_may_have_spaces_after_their_commas() {
    let mut master = Master::launch(HELLO)
        .env("KAMISAMA_LISTEN", "127.0.0.1:0, 127.0.0.1:0 ,127.0.0.1:0")
        .env("KAMISAMA_INSTANCES", "1")
        .start();
    master.wait_for_lines("listening address=127.0.0.1:", 3);
    spawned(&master, 1);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn an_empty_listen_variable_is_refused_like_any_other() {
    for value in ["", " ", ",", " , "] {
        let mut master = Master::launch(HELLO).env("KAMISAMA_LISTEN", value).start();
        master.expect_exit_code(2);
        let error = master.wait_for_line("error: invalid KAMISAMA_LISTEN");
        assert!(error.contains(&format!("{value:?}")), "{error}");
        master.expect_lines("spawned", 0);
    }
}

#[test]
fn sockets_passed_in_are_close_on_exec() {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut master = Master::launch_under(&["sh", "-c", "LISTEN_PID=$$ exec \"$0\""], HELLO)
        .socket(&socket)
        .env("KAMISAMA_INSTANCES", "1")
        .start();
    listening(&master);
    let info = std::fs::read_to_string(format!("/proc/{}/fdinfo/3", master.pid())).unwrap();
    let flags = info
        .lines()
        .find_map(|line| line.strip_prefix("flags:"))
        .unwrap();
    let flags = u32::from_str_radix(flags.trim(), 8).unwrap();
    assert_ne!(flags & libc::O_CLOEXEC as u32, 0, "{info}");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn listen_fds_zero_means_no_socket_passed_and_the_settings_bind() {
    let mut master = Master::launch_under(&["sh", "-c", "LISTEN_PID=$$ exec \"$0\""], HELLO)
        .env("LISTEN_FDS", "0")
        .env("KAMISAMA_LISTEN", "127.0.0.1:0")
        .env("KAMISAMA_INSTANCES", "1")
        .start();
    let address = listening(&master);
    spawned(&master, 1);
    let load = Load::start(address, 1, false);
    load.wait_for(10);
    assert_eq!(load.stop().failed(), 0);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_listen_fds_that_is_no_count_of_descriptors_stops_the_start() {
    for count in ["-1", "two", "2147483647", "4294967296"] {
        let mut master = Master::launch_under(&["sh", "-c", "LISTEN_PID=$$ exec \"$0\""], HELLO)
            .env("LISTEN_FDS", count)
            .env("KAMISAMA_LISTEN", "127.0.0.1:0")
            .start();
        master.expect_exit_code(2);
        let error = master.wait_for_line("error: cannot listen on LISTEN_FDS=");
        assert!(error.contains(&format!("LISTEN_FDS={count}")), "{error}");
        master.expect_lines("spawned", 0);
    }
}
