//! The metrics endpoint: what a scrape says of a fleet in known states, read back by the
//! reference parser in both formats; what it answers to anything else; and that no client,
//! however slow or many, holds the master up or reaches into a worker.

use kamisama_tests::deployment::{spawned_by, upgrade, Deployment};
use kamisama_tests::load::kept_alive;
use kamisama_tests::metrics::{ask, parse, scrape, scrape_openmetrics, Scrape};
use kamisama_tests::{field, scratch, status_field, Master};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SUPERVISED: &str = env!("CARGO_BIN_EXE_supervised");
const HEARTBEATS: &str = env!("CARGO_BIN_EXE_heartbeats");
const HELLO: &str = env!("CARGO_BIN_EXE_hello-server");
const ASYNC_HELLO: &str = env!("CARGO_BIN_EXE_async-hello-server");

/// A master of `binary` with its endpoint at a Unix socket in a scratch directory of `name`.
fn with_metrics(binary: &str, name: &str) -> (kamisama_tests::Launch, PathBuf) {
    let socket = scratch!(name).join("metrics.sock");
    let address = format!("unix:{}", socket.display());
    (
        Master::launch(binary).env("KAMISAMA_METRICS", &address),
        socket,
    )
}

/// Scrapes until `condition` holds of a scrape, up to the test deadline.
fn scrape_until(master: &Master, socket: &Path, what: &str, condition: impl Fn(&Scrape) -> bool) {
    master.wait_until(what, || {
        let scrape = scrape(socket);
        condition(&scrape).then_some(())
    });
}

fn pid_of(scrape: &Scrape, index: usize) -> f64 {
    scrape.value("kamisama_worker_pid", &[("index", &index.to_string())])
}

#[test]
fn a_scrape_tells_the_fleet_as_it_is_in_both_formats() {
    let (launch, socket) = with_metrics(SUPERVISED, "metrics-fleet");
    let mut master = launch.env("KAMISAMA_INSTANCES", "3").start();
    let workers = master.wait_for_workers(3);
    master.wait_until("the socket", || socket.exists().then_some(()));
    scrape_until(&master, &socket, "the fleet ready", |scrape| {
        scrape.value("kamisama_phase", &[("phase", "ready")]) == 1.0
    });
    for scrape in [scrape(&socket), scrape_openmetrics(&socket)] {
        assert_eq!(scrape.value("kamisama_instances", &[]), 3.0);
        assert_eq!(
            scrape.value("kamisama_master_pid", &[]),
            f64::from(master.pid().as_raw())
        );
        assert_eq!(scrape.value("kamisama_generation", &[]), 0.0);
        assert_eq!(
            scrape.value("kamisama_workers", &[("state", "running")]),
            3.0
        );
        assert_eq!(scrape.value("kamisama_workers", &[("state", "hung")]), 0.0);
        assert_eq!(scrape.value("kamisama_respawns_total", &[]), 0.0);
        for (index, pid) in &workers {
            let labels = [("index", index.to_string())];
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_eq!(pid_of(&scrape, *index), f64::from(pid.as_raw()));
            let state = [labels[0], ("state", "running")];
            assert_eq!(scrape.value("kamisama_worker_state", &state), 1.0);
            assert!(scrape.value("kamisama_worker_age_seconds", &labels) > 0.0);
            assert!(scrape.value("kamisama_worker_memory_bytes", &labels) > 0.0);
            // It sleeps on its own, never in kamisama's waits: at work, as far as one can tell.
            assert_eq!(scrape.value("kamisama_worker_busy", &labels), 1.0);
            assert_eq!(
                scrape.value("kamisama_worker_completed_total", &labels),
                0.0
            );
        }
        assert_eq!(scrape.families["kamisama_respawns"], "counter");
        assert_eq!(scrape.families["kamisama_worker_age_seconds"], "gauge");
    }
    // A crash: counted by how the worker ended, and respawned at its index.
    let killed = workers[&1];
    kill(killed, Signal::SIGKILL).unwrap();
    scrape_until(&master, &socket, "the respawn", |scrape| {
        scrape.value("kamisama_respawns_total", &[]) == 1.0
            && pid_of(scrape, 1) != f64::from(killed.as_raw())
    });
    let scrape = scrape(&socket);
    let exits = [("index", "1"), ("reason", "signal")];
    assert_eq!(scrape.value("kamisama_worker_exits_total", &exits), 1.0);
    assert_eq!(scrape.find("kamisama_worker_exits_total", &[]).len(), 1);
    assert_eq!(scrape.value("kamisama_respawns_in_window", &[]), 1.0);
    assert_eq!(pid_of(&scrape, 0), f64::from(workers[&0].as_raw()));
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
    assert!(!socket.exists(), "the master left its socket file behind");
}

#[test]
fn a_hung_worker_shows_as_hung_and_is_counted() {
    let (launch, socket) = with_metrics(HEARTBEATS, "metrics-hung");
    let mut master = launch
        .env("KAMISAMA_TIMEOUT", "1")
        .env("KAMISAMA_HANG_GRACE", "60")
        .env("HANG", "1")
        .env("IGNORE_ABRT", "1")
        .start();
    let line = master.wait_for_line("hung index=1 ");
    let pid: f64 = field(&line, "pid").unwrap().parse().unwrap();
    scrape_until(&master, &socket, "the hang to show", |scrape| {
        scrape.value("kamisama_hangs_total", &[]) == 1.0
    });
    let scrape = scrape(&socket);
    assert_eq!(scrape.value("kamisama_workers", &[("state", "hung")]), 1.0);
    let hung = [("index", "1"), ("state", "hung")];
    assert_eq!(scrape.value("kamisama_worker_state", &hung), 1.0);
    assert_eq!(pid_of(&scrape, 1), pid);
    let healthy = [("index", "0"), ("state", "running")];
    assert_eq!(scrape.value("kamisama_worker_state", &healthy), 1.0);
    // A hung worker is not busy or idle: only a running one is either.
    assert!(scrape
        .find("kamisama_worker_busy", &[("index", "1")])
        .is_empty());
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

#[test]
fn a_worker_mid_recycle_shows_beside_its_successor() {
    let (launch, socket) = with_metrics(SUPERVISED, "metrics-recycle");
    // The recycled worker ignores its stop, and lives on beside its successor until the
    // SIGKILL five seconds later.
    let mut master = launch
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_MAX_LIFETIME", "1")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "30")
        .env("FIXTURE", "ignore-term")
        .start();
    let recycling = master.wait_for_line("recycling index=0 ");
    let old: f64 = field(&recycling, "pid").unwrap().parse().unwrap();
    // Its successors are recycled a second on, each in turn: whatever the scrape catches,
    // the old worker shows beside the index's current one, as no state of the slots.
    let seen = master.wait_until("the old worker beside its successor", || {
        let seen = scrape(&socket);
        let old = (old as u32).to_string();
        let replaced = seen.find("kamisama_worker_replaced", &[("index", "0"), ("pid", &old)]);
        (!replaced.is_empty()).then_some(seen)
    });
    let replaced = seen.value("kamisama_workers_replaced", &[]);
    assert_eq!(
        replaced,
        seen.find("kamisama_worker_replaced", &[]).len() as f64
    );
    assert!(replaced >= 1.0);
    assert_ne!(pid_of(&seen, 0), old);
    assert_eq!(seen.value("kamisama_workers", &[("state", "running")]), 1.0);
    assert!(seen.value("kamisama_recycles_total", &[("reason", "lifetime")]) >= 1.0);
    // A recycle is no respawn.
    assert_eq!(seen.value("kamisama_respawns_total", &[]), 0.0);
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    // Its successors are recycled in turn, each a second on, and ignore their stops too:
    // what is asked of the scrape is that this one is gone, and counted.
    scrape_until(&master, &socket, "the old worker's end", |scrape| {
        let old = (old as u32).to_string();
        let replaced = scrape.find("kamisama_worker_replaced", &[("pid", &old)]);
        let exits = scrape.find("kamisama_worker_exits_total", &[("reason", "recycled")]);
        replaced.is_empty() && !exits.is_empty()
    });
    master.shut_down_now();
    master.wait_exit();
    master.expect_tree_gone();
}

#[test]
fn a_rollback_and_an_upgrade_show_in_the_counts_and_the_new_master_takes_the_endpoint_over() {
    let deployment = Deployment::new(scratch!("metrics-upgrade"), SUPERVISED);
    let socket = scratch!("metrics-upgrade-socket").join("metrics.sock");
    let address = format!("unix:{}", socket.display());
    let settings = [
        ("KAMISAMA_METRICS", address.as_str()),
        ("KAMISAMA_UPGRADE_TIMEOUT", "2"),
    ];
    let (mut master, _, workers) = deployment.start(2, &settings);
    let old = master.pid();
    // A release whose fleet never gets ready (its worker 0 exits at once): its master, bound
    // beside the path, is stopped, and takes nothing of the old one's with it.
    deployment.install_script(&format!("FIXTURE=crash-index-0 exec {SUPERVISED}"));
    let failed = upgrade(&master, old);
    master.wait_for_line(&format!("kamisama[{failed}]: spawned index=1 "));
    assert_eq!(
        scrape(&socket).value("kamisama_master_pid", &[]),
        f64::from(old.as_raw())
    );
    master.wait_for_line(&format!("kamisama[{old}]: upgrade-failed pid={failed}"));
    master.wait_for_line(&format!("reaped pid={failed}"));
    let beside = socket.with_file_name(format!(".metrics.sock.{failed}.tmp"));
    assert!(!beside.exists(), "{} left behind", beside.display());
    let seen = scrape(&socket);
    let stage = |stage| [("stage", stage)];
    assert_eq!(
        seen.value("kamisama_upgrades_total", &stage("started")),
        1.0
    );
    assert_eq!(seen.value("kamisama_upgrades_total", &stage("failed")), 1.0);
    assert_eq!(
        seen.value("kamisama_upgrades_total", &stage("handed-over")),
        0.0
    );
    assert_eq!(
        seen.value("kamisama_master_pid", &[]),
        f64::from(old.as_raw())
    );
    let pids = seen.by_index("kamisama_worker_pid").into_values();
    let pids: BTreeSet<u32> = pids.map(|pid| pid as u32).collect();
    assert_eq!(
        pids,
        workers.iter().copied().collect(),
        "the old fleet serves on"
    );
    // A good one: the new master answers at the same path, one generation on.
    deployment.install(&std::fs::read(SUPERVISED).unwrap());
    let successor = upgrade(&master, old);
    spawned_by(&master, successor, 2);
    master.wait_for_line(&format!("kamisama[{old}]: upgrade-trial pid={successor}"));
    scrape_until(&master, &socket, "the new master to answer", |scrape| {
        scrape.value("kamisama_master_pid", &[]) == f64::from(successor.as_raw())
    });
    let seen = scrape(&socket);
    assert_eq!(seen.value("kamisama_generation", &[]), 1.0);
    assert_eq!(
        seen.value("kamisama_upgrades_total", &stage("started")),
        0.0
    );
    master.wait_for_line(&format!("kamisama[{old}]: shutdown-finished"));
    assert_eq!(master.wait_exit_alone().code(), Some(0));
    // The old master left the path to its successor.
    assert!(socket.exists());
    assert_eq!(
        scrape(&socket).value("kamisama_master_pid", &[]),
        f64::from(successor.as_raw())
    );
    kill(successor, Signal::SIGTERM).unwrap();
    assert_eq!(
        kamisama_tests::reap_orphan(successor),
        nix::sys::wait::WaitStatus::Exited(successor, 0)
    );
    assert!(
        !socket.exists(),
        "the new master left its socket file behind"
    );
    master.expect_tree_gone();
}

#[test]
fn the_example_servers_requests_are_counted_sync_and_async() {
    for (server, name) in [
        (HELLO, "metrics-hello"),
        (ASYNC_HELLO, "metrics-async-hello"),
    ] {
        let (launch, socket) = with_metrics(server, name);
        let mut master = launch
            .env("KAMISAMA_LISTEN", "127.0.0.1:0")
            .env("KAMISAMA_INSTANCES", "2")
            .start();
        let line = master.wait_for_line("listening address=");
        let address = field(&line, "address").unwrap().to_owned();
        spawned_by(&master, master.pid(), 2);
        for _ in 0..7 {
            let mut stream = std::net::TcpStream::connect(&address).unwrap();
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
        scrape_until(&master, &socket, "seven requests counted", |scrape| {
            let done = scrape.by_index("kamisama_worker_completed_total");
            done.values().sum::<f64>() == 7.0
        });
        let seen = scrape(&socket);
        let labels = [("listener", address.as_str())];
        assert_eq!(seen.value("kamisama_listen_queue", &labels), 0.0);
        assert!(seen.value("kamisama_listen_queue_limit", &labels) > 0.0);
        if server == HELLO {
            // Idle in Worker::accept, both.
            assert_eq!(seen.value("kamisama_workers_busy", &[]), 0.0);
        } else {
            // An async worker's waits are its runtime's: kamisama does not say.
            assert!(seen.find("kamisama_workers_busy", &[]).is_empty());
        }
        master.signal(Signal::SIGTERM);
        master.expect_exit_code(0);
        master.expect_tree_gone();
    }
}

#[test]
fn kept_alive_connections_opened_at_once_spread_over_the_workers_and_are_counted() {
    kept_alive_connections_spread(HELLO, "metrics-connections");
}

#[test]
fn kept_alive_connections_opened_at_once_spread_over_async_workers_and_are_counted() {
    kept_alive_connections_spread(ASYNC_HELLO, "metrics-async-connections");
}

/// Opens 64 kept-alive connections at once to four workers of `server`: each worker holds
/// its share, as it says in the metrics, and says none once they are closed.
fn kept_alive_connections_spread(server: &str, name: &str) {
    let (launch, socket) = with_metrics(server, name);
    let mut master = launch
        .env("KAMISAMA_LISTEN", "127.0.0.1:0")
        .env("KAMISAMA_INSTANCES", "4")
        .start();
    let line = master.wait_for_line("listening address=");
    let address = field(&line, "address").unwrap().to_owned();
    let workers = spawned_by(&master, master.pid(), 4);
    if server == HELLO {
        master.wait_until("the workers to wait in accept", || {
            let seen = scrape(&socket);
            (seen.value("kamisama_workers_busy", &[]) == 0.0).then_some(())
        });
    } else {
        master.wait_for_line("ready workers=4");
    }
    let open = kept_alive(&address, 64);
    let mut per_worker = std::collections::BTreeMap::new();
    for (_, pid) in &open {
        *per_worker.entry(*pid).or_insert(0_u32) += 1;
    }
    let seen = scrape(&socket);
    let counted: BTreeSet<(u32, u32)> = seen
        .by_index("kamisama_worker_connections")
        .into_iter()
        .map(|(index, open)| (pid_of(&seen, index) as u32, open as u32))
        .collect();
    let answered: BTreeSet<(u32, u32)> = per_worker.iter().map(|(pid, n)| (*pid, *n)).collect();
    // What each worker holds is what it answered.
    assert_eq!(
        counted.iter().map(|(_, n)| n).sum::<u32>(),
        64,
        "{counted:?}"
    );
    assert!(answered.is_subset(&counted), "{answered:?} {counted:?}");
    // Every worker got its share, give or take the one it may take past it.
    eprintln!("connections per worker: {per_worker:?}");
    assert_eq!(per_worker.len(), 4, "{per_worker:?} of {workers:?}");
    let most = per_worker.values().max().unwrap();
    let least = per_worker.values().min().unwrap();
    assert!(most - least <= 4, "{per_worker:?}");
    drop(open);
    scrape_until(&master, &socket, "the connections closed", |scrape| {
        let open = scrape.by_index("kamisama_worker_connections");
        open.values().sum::<f64>() == 0.0
    });
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

#[test]
fn anything_but_a_scrape_gets_an_error_status() {
    let (launch, socket) = with_metrics(SUPERVISED, "metrics-errors");
    let mut master = launch.env("KAMISAMA_INSTANCES", "1").start();
    master.wait_for_workers(1);
    master.wait_until("the socket", || socket.exists().then_some(()));
    let not_found = ask(&socket, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(not_found.status, 404);
    let post = ask(
        &socket,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(post.status, 405);
    assert_eq!(post.headers["allow"], "GET, HEAD");
    let garbage = ask(
        &socket,
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
    );
    assert_eq!(garbage.status, 400);
    let long = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(5000));
    assert_eq!(ask(&socket, long.as_bytes()).status, 400);
    let head = ask(&socket, b"HEAD /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let length: usize = head.headers["content-length"].parse().unwrap();
    // As long as the body a GET gets, give or take the digits that moved in between.
    let get = ask(&socket, b"GET /metrics?name[]=x HTTP/1.1\r\n\r\n");
    assert!(
        get.body.len().abs_diff(length) < 64,
        "{length} {}",
        get.body.len()
    );
    parse(&get.body, false);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

/// The socket inodes among `pid`'s descriptors.
fn sockets_of(pid: Pid) -> BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .map(|target| target.to_string_lossy().into_owned())
                .filter(|target| target.starts_with("socket:"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn workers_hold_none_of_the_endpoints_sockets() {
    let (launch, socket) = with_metrics(SUPERVISED, "metrics-fds");
    let mut master = launch.env("KAMISAMA_INSTANCES", "2").start();
    let workers = master.wait_for_workers(2);
    master.wait_until("the socket", || socket.exists().then_some(()));
    // A scraper's connection, open while a worker is forked.
    let mut waiting = UnixStream::connect(&socket).unwrap();
    waiting.write_all(b"GET /met").unwrap();
    let masters = master.wait_until("the master to hold the connection", || {
        let held = sockets_of(master.pid());
        (held.len() >= 2).then_some(held)
    });
    kill(workers[&0], Signal::SIGKILL).unwrap();
    let forked = master.wait_until("the respawn", || {
        let now = master.workers()?;
        now.get(&0).filter(|pid| **pid != workers[&0]).copied()
    });
    for worker in [forked, workers[&1]] {
        let held = sockets_of(worker);
        assert!(
            held.is_disjoint(&masters),
            "worker {worker} holds the master's sockets {:?}",
            held.intersection(&masters).collect::<Vec<_>>()
        );
    }
    // The connection still gets its answer.
    waiting.write_all(b"rics HTTP/1.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut waiting, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

#[test]
fn with_no_scrape_the_master_never_wakes() {
    let (launch, socket) = with_metrics(SUPERVISED, "metrics-idle");
    let mut master = launch.env("KAMISAMA_INSTANCES", "2").start();
    master.wait_for_workers(2);
    // After a scrape, whose connection is closed and forgotten.
    master.wait_until("the socket", || socket.exists().then_some(()));
    scrape(&socket);
    master.wait_until_blocked();
    let before = master.context_switches();
    std::thread::sleep(Duration::from_millis(700));
    let woke = master.context_switches() - before;
    assert_eq!(woke, 0, "the master woke {woke} times with nothing to do");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

#[test]
fn a_flood_of_clients_holds_neither_the_master_nor_the_scrapes_up() {
    let (launch, socket) = with_metrics(SUPERVISED, "metrics-flood");
    let mut master = launch.env("KAMISAMA_INSTANCES", "2").start();
    let workers = master.wait_for_workers(2);
    master.wait_until("the socket", || socket.exists().then_some(()));
    let descriptors = || {
        std::fs::read_dir(format!("/proc/{}/fd", master.pid()))
            .unwrap()
            .count()
    };
    let at_rest = descriptors();
    // Hundreds of connections that say nothing, some that send garbage, and slow clients
    // that send a byte at a time, all open at once.
    let mut silent = Vec::new();
    for at in 0..400 {
        let Ok(mut stream) = UnixStream::connect(&socket) else {
            // The queue is full: the endpoint is busy accepting, as it should be.
            continue;
        };
        if at % 10 == 0 {
            let _ = stream.write_all(&[0xff; 300]);
        }
        silent.push(stream);
    }
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let Ok(mut stream) = UnixStream::connect(socket) else {
                    return;
                };
                for byte in b"GET /metrics HTTP/1.1\r\n".iter().cycle().take(20) {
                    if stream.write_all(&[*byte]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        })
        .collect();
    // The master supervises as ever: a crash in the middle of it is respawned.
    kill(workers[&1], Signal::SIGKILL).unwrap();
    master.wait_until("the respawn under the flood", || {
        let now = master.workers()?;
        now.get(&1).filter(|pid| **pid != workers[&1]).map(|_| ())
    });
    // And a scrape still gets through, each connection of the flood pushed out in turn.
    let scrape = scrape(&socket);
    assert_eq!(scrape.value("kamisama_respawns_total", &[]), 1.0);
    // What the master holds stays bounded: its descriptors, and its memory.
    assert!(
        descriptors() <= at_rest + kamisama_tests::metrics::CONNECTIONS,
        "{} descriptors, {at_rest} at rest",
        descriptors()
    );
    let resident = status_field(master.pid(), "VmRSS").unwrap();
    assert!(resident < 16 * 1024, "VmRSS {resident} kB");
    drop(silent);
    for thread in slow {
        thread.join().unwrap();
    }
    // And its shutdown is as prompt as ever.
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

#[test]
fn the_endpoint_serves_tcp_and_a_taken_address_stops_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let mut refused = Master::launch(SUPERVISED)
        .env("KAMISAMA_METRICS", &address)
        .start();
    refused.expect_exit_code(2);
    refused.wait_for_line(&format!("cannot serve metrics on {address}"));
    refused.expect_lines("spawned", 0);
    drop(taken);
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_METRICS", &address)
        .env("KAMISAMA_INSTANCES", "1")
        .start();
    master.wait_for_workers(1);
    let body = master.wait_until("an answer over TCP", || {
        let mut stream = std::net::TcpStream::connect(&address).ok()?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").ok()?;
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut stream, &mut answer).ok()?;
        Some(answer.split_once("\r\n\r\n")?.1.to_owned())
    });
    let scrape = parse(&body, false);
    assert_eq!(scrape.value("kamisama_instances", &[]), 1.0);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

#[test]
fn a_unix_address_replaces_only_a_socket_file() {
    let dir = scratch!("metrics-not-a-socket");
    let path = dir.join("metrics.sock");
    std::fs::write(&path, "precious").unwrap();
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_METRICS", &format!("unix:{}", path.display()))
        .start();
    master.expect_exit_code(2);
    master.wait_for_line("cannot serve metrics on unix:");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}
