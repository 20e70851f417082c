//! The live status file: what each index runs and how it has gone, rewritten as things
//! happen, read here with a JSON parser.
//!
//! cargo-mutants finds `>` turned into `>=` in `RespawnLimiter::in_window` alive: the two
//! differ only for a respawn exactly one `respawn_interval` old to the nanosecond. Nor can a
//! test tell `Slots::trim`'s `>` from `>=`: no slot below `instances` is ever retired. And a
//! backoff that has ended is never in a status (`*at > now` with `>=` or `true`): the file
//! is written at the end of a turn of the loop, after that turn's forks.

use kamisama_tests::Master;
use nix::sys::signal::{kill, Signal};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

const SUPERVISED: &str = env!("CARGO_BIN_EXE_supervised");
const CRUNCH: &str = env!("CARGO_BIN_EXE_crunch");
const HELLO: &str = env!("CARGO_BIN_EXE_hello-server");
const HANDING_OVER: &str = env!("CARGO_BIN_EXE_handing-over");
const HANDING_OVER_ASYNC: &str = env!("CARGO_BIN_EXE_handing-over-async");

fn status_path(name: &str) -> PathBuf {
    kamisama_tests::scratch!(name).join("status.json")
}

/// The status as it is now; a reader never sees half a file, as the master renames a whole
/// new one over it.
fn read(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("the status file");
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{error}: {text}"))
}

/// A status timestamp (`started`), in seconds since the Unix epoch.
fn unix_seconds(value: &Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("not a timestamp: {value}"))
}

fn unix_seconds_of(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// Waits until the status satisfies `condition`, and returns it.
fn wait_for_status(
    master: &Master,
    path: &Path,
    what: &str,
    condition: impl Fn(&Value) -> bool,
) -> Value {
    master.wait_until(what, || {
        // Not there before the master has written it.
        path.exists()
            .then(|| read(path))
            .filter(|status| condition(status))
    })
}

#[test]
fn the_status_follows_respawns_scaling_and_a_rolling_restart() {
    let path = status_path("status-follows");
    let launched = SystemTime::now();
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_STATUS_FILE", path.to_str().unwrap())
        .env("KAMISAMA_INSTANCES", "3")
        .start();
    let workers = master.wait_for_workers(3);
    let status = wait_for_status(&master, &path, "three running workers", |status| {
        status["running"] == 3
    });
    assert_eq!(status["master"], master.pid().as_raw());
    assert_eq!(status["phase"], "ready");
    assert_eq!(status["settings"]["respawn_limit"], 3);
    assert!(status["settings"]["user"].is_null(), "{status}");
    assert_eq!(status["settings"]["cpu_affinity"], "off", "{status}");
    for (index, pid) in &workers {
        let worker = &status["workers"][*index];
        assert_eq!(worker["pid"], pid.as_raw());
        assert_eq!(worker["state"], "running");
        assert_eq!(worker["restarts"], 0);
        assert!(worker["last_exit"].is_null());
        let started = unix_seconds(&worker["started"]);
        assert!(started >= unix_seconds_of(launched) - 0.002, "{worker}");
        assert!(started <= unix_seconds_of(SystemTime::now()), "{worker}");
    }
    let first_started = unix_seconds(&status["workers"][0]["started"]);

    // A while later, the next rewrite still says index 0 started when it did.
    let later = Instant::now() + Duration::from_millis(200);
    master.wait_until("200 ms", || (Instant::now() >= later).then_some(()));
    kill(workers[&1], Signal::SIGKILL).unwrap();
    let status = wait_for_status(&master, &path, "index 1 respawned", |status| {
        status["workers"][1]["restarts"] == 1 && status["running"] == 3
    });
    let started = unix_seconds(&status["workers"][0]["started"]);
    assert!((started - first_started).abs() <= 0.002, "{status}");
    assert_eq!(status["workers"][1]["last_exit"], "SIGKILL");
    assert_eq!(status["respawns_in_window"], 1);
    kill(workers[&0], Signal::SIGKILL).unwrap();
    let status = wait_for_status(&master, &path, "index 0 respawned", |status| {
        status["workers"][0]["restarts"] == 1 && status["running"] == 3
    });
    assert_eq!(status["respawns_in_window"], 2);

    master.signal(Signal::SIGTTIN);
    wait_for_status(&master, &path, "a fourth worker", |status| {
        status["instances"] == 4 && status["running"] == 4
    });
    master.signal(Signal::SIGHUP);
    master.wait_for_line("rolling-restart-finished");
    let status = wait_for_status(&master, &path, "every index replaced", |status| {
        (0..4).all(|index| status["workers"][index]["last_exit"] == "SIGTERM")
    });
    assert_eq!(status["workers"][0]["restarts"], 2);
    assert_eq!(status["workers"][1]["restarts"], 2);
    assert_eq!(status["workers"][3]["restarts"], 1);
    // The rolling restart's replacements are not respawns: the window holds the two kills.
    assert_eq!(status["respawns_in_window"], 2);

    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    let status = read(&path);
    assert_eq!(status["phase"], "stopped");
    assert_eq!(status["running"], 0);
}

#[test]
fn a_status_file_that_cannot_be_written_stops_the_start() {
    let path = status_path("status-unwritable").join("no-such-dir/status.json");
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_STATUS_FILE", path.to_str().unwrap())
        .start();
    master.expect_exit_code(2);
    let error = master.wait_for_line("error: cannot write the status file");
    assert!(error.contains("No such file or directory"), "{error}");
    assert_eq!(master.count_lines("spawned"), 0);
}

#[test]
fn retired_indices_leave_the_status_and_one_added_back_is_forked_again() {
    let path = status_path("status-retired");
    // Workers that ignore TERM: each retiring worker runs until the test kills it, so the
    // test picks the order in which they go.
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_STATUS_FILE", path.to_str().unwrap())
        .env("KAMISAMA_INSTANCES", "4")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "60")
        .env("FIXTURE", "ignore-term")
        .start();
    let before = master.wait_for_workers(4);
    master.signal(Signal::SIGTTOU);
    master.wait_for_line("scaled-down instances=3 retiring=3");
    master.signal(Signal::SIGTTOU);
    master.wait_for_line("scaled-down instances=2 retiring=2");
    // Index 2 goes first: its slot stays, behind index 3's, still stopping.
    kill(before[&2], Signal::SIGKILL).unwrap();
    master.wait_for_line(&format!("exited index=2 pid={}", before[&2]));
    let status = wait_for_status(&master, &path, "index 2 retired", |status| {
        status["workers"][2]["state"] == "retired"
    });
    assert_eq!(status["workers"][3]["state"], "stopping");
    // Added back while index 3 still stops: index 2 is free, and forked again.
    master.signal(Signal::SIGTTIN);
    master.wait_for_lines("spawned index=2 ", 2);
    kill(before[&3], Signal::SIGKILL).unwrap();
    master.wait_for_line(&format!("exited index=3 pid={}", before[&3]));
    let status = wait_for_status(&master, &path, "index 3 gone", |status| {
        status["workers"]
            .as_array()
            .is_some_and(|workers| workers.len() == 3)
    });
    assert_eq!(status["instances"], 3);
    assert_eq!(status["running"], 3);
    for index in 0..3 {
        assert_eq!(status["workers"][index]["state"], "running", "{status}");
    }
    // A second TERM forces the workers that ignore the first.
    master.signal(Signal::SIGTERM);
    master.wait_for_line("shutdown-started");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn an_index_waiting_out_its_backoff_is_backing_off() {
    let path = status_path("status-backing-off");
    // A worker that exits at once, with backoff: 100 ms, 200 ms, 400 ms... before each fork.
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_STATUS_FILE", path.to_str().unwrap())
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_BACKOFF_MAX", "30")
        .env("KAMISAMA_RESPAWN_LIMIT", "100")
        .env("FIXTURE", "exit-3")
        .start();
    let status = wait_for_status(&master, &path, "index 0 backing off", |status| {
        status["workers"][0]["state"] == "backing-off"
    });
    assert!(status["workers"][0]["pid"].is_null(), "{status}");
    assert_eq!(status["workers"][0]["last_exit"], "3", "{status}");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn the_status_says_ready_once_every_worker_declared_itself_ready() {
    let path = status_path("status-declared");
    let witnesses = kamisama_tests::scratch!("status-declared-witnesses");
    let mut master = Master::launch(env!("CARGO_BIN_EXE_declared"))
        .env("KAMISAMA_STATUS_FILE", path.to_str().unwrap())
        .env("READY_DIR", witnesses.to_str().unwrap())
        .env("READY_MS", "300")
        .start();
    // Starting while the workers prepare; ready once the last has said so, with no other
    // event to bring the file up to date.
    wait_for_status(&master, &path, "three workers starting", |status| {
        status["running"] == 3 && status["phase"] == "starting"
    });
    wait_for_status(&master, &path, "the fleet ready", |status| {
        status["phase"] == "ready"
    });
    assert_eq!(std::fs::read_dir(&witnesses).unwrap().count(), 3);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn respawns_leave_the_status_as_they_leave_the_window() {
    let path = status_path("status-window");
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_STATUS_FILE", path.to_str().unwrap())
        .env("KAMISAMA_RESPAWN_INTERVAL", "1")
        .env("KAMISAMA_INSTANCES", "1")
        .start();
    let workers = master.wait_for_workers(1);
    kill(workers[&0], Signal::SIGKILL).unwrap();
    master.wait_for_line("respawning index=0");
    let counted = Instant::now();
    wait_for_status(&master, &path, "one respawn in the window", |status| {
        status["respawns_in_window"] == 1 && status["running"] == 1
    });
    // Nothing else happens: the master itself rewrites the file when the respawn is a
    // window old, not before.
    wait_for_status(&master, &path, "no respawn in the window", |status| {
        status["respawns_in_window"] == 0
    });
    let left = counted.elapsed();
    assert!(
        left >= Duration::from_millis(900),
        "left the window after {left:?}"
    );
    assert!(
        left < Duration::from_millis(2500),
        "left the window after {left:?}"
    );
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn the_status_file_is_written_through_a_fresh_file_that_follows_no_link() {
    let dir = kamisama_tests::scratch!("status-no-follow");
    let path = dir.join("status.json");
    let victim = dir.join("victim");
    std::fs::write(&victim, "VICTIM DATA\n").unwrap();
    // Where a master would have written beside the status file, a link to another file.
    std::os::unix::fs::symlink(&victim, dir.join("status.json.tmp")).unwrap();
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_STATUS_FILE", path.to_str().unwrap())
        .env("KAMISAMA_INSTANCES", "1")
        .start();
    wait_for_status(&master, &path, "a running worker", |status| {
        status["running"] == 1
    });
    // And where this master does write beside it, a name of its own, a link planted now.
    let own = dir.join(format!(".status.json.{}.tmp", master.pid()));
    std::os::unix::fs::symlink(&victim, &own).unwrap();
    master.signal(Signal::SIGTTIN);
    wait_for_status(&master, &path, "two running workers", |status| {
        status["running"] == 2
    });
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "VICTIM DATA\n");
    assert_eq!(read(&path)["phase"], "stopped");
    // Nothing is left beside it but what was there before the master.
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["status.json", "status.json.tmp", "victim"]);
}

#[test]
fn a_start_that_cannot_write_the_status_leaves_nothing_behind() {
    let dir = kamisama_tests::scratch!("status-failed-start");
    // A directory where the file would go: nothing can be renamed over it.
    std::fs::create_dir(dir.join("status.json")).unwrap();
    let mut master = Master::launch(SUPERVISED)
        .env(
            "KAMISAMA_STATUS_FILE",
            dir.join("status.json").to_str().unwrap(),
        )
        .start();
    master.expect_exit_code(2);
    master.wait_for_line("error: cannot write the status file");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

#[test]
fn the_status_shows_what_each_worker_did_within_a_second_and_is_not_rewritten_while_idle() {
    use std::os::unix::fs::MetadataExt;
    // Each crunch worker completes a batch (a few milliseconds) as it starts, then sleeps
    // 5 s: its count moves once, and the fleet is idle after.
    let path = status_path("status-counts");
    let mut master = Master::launch(CRUNCH)
        .env("KAMISAMA_STATUS_FILE", path.to_str().unwrap())
        .env("KAMISAMA_INSTANCES", "2")
        .start();
    let status = wait_for_status(&master, &path, "each worker's first batch", |status| {
        (0..2).all(|index| status["workers"][index]["completed"] == 1)
    });
    for index in 0..2 {
        let worker = &status["workers"][index];
        assert_eq!(worker["busy"], false, "asleep: {worker}");
        assert_eq!(worker["connections"], 0, "{worker}");
    }
    // Nothing moves until the next batch: the file stays the one written (a rewrite is a
    // new file renamed over it), past two refresh periods.
    let written = std::fs::metadata(&path).unwrap().ino();
    let until = Instant::now() + Duration::from_millis(2500);
    master.wait_until("2.5 s without a rewrite", || {
        let now = std::fs::metadata(&path).unwrap().ino();
        assert_eq!(now, written, "rewritten while nothing moved");
        (Instant::now() >= until).then_some(())
    });
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

#[test]
fn a_successor_started_beside_the_worker_it_replaces_shows_only_its_own_counts() {
    // Each crunch worker completes a batch as it starts, then sleeps 5 s. HUP forks each
    // successor while the old worker sleeps; the old one wakes to stop once its successor
    // is ready, after the successor went to sleep in turn. What the old worker does then
    // (a thread back at work) is its own, never its successor's.
    let path = status_path("status-replaced");
    let mut master = Master::launch(CRUNCH)
        .env("KAMISAMA_STATUS_FILE", path.to_str().unwrap())
        .env("KAMISAMA_INSTANCES", "2")
        .start();
    let first = wait_for_status(&master, &path, "each worker's first batch", |status| {
        (0..2).all(|index| {
            let worker = &status["workers"][index];
            worker["completed"] == 1 && worker["busy"] == false
        })
    });
    let old: Vec<Value> = (0..2)
        .map(|index| first["workers"][index]["pid"].clone())
        .collect();
    master.signal(Signal::SIGHUP);
    // The restart ends once every worker it replaced is gone.
    master.wait_for_line("rolling-restart-finished");
    wait_for_status(&master, &path, "the successors asleep, idle", |status| {
        (0..2).all(|index| {
            let worker = &status["workers"][index];
            worker["pid"] != old[index] && worker["completed"] != 0 && worker["busy"] == false
        })
    });
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

#[test]
fn the_status_counts_each_servers_requests_and_open_connections() {
    let path = status_path("status-connections");
    let mut master = Master::launch(HELLO)
        .env("KAMISAMA_STATUS_FILE", path.to_str().unwrap())
        .env("KAMISAMA_LISTEN", "127.0.0.1:0")
        .env("KAMISAMA_INSTANCES", "2")
        .start();
    let line = master.wait_for_line("listening address=");
    let address = kamisama_tests::field(&line, "address").unwrap().to_owned();
    wait_for_status(&master, &path, "two running workers", |status| {
        status["running"] == 2
    });
    let open = kamisama_tests::load::kept_alive(&address, 6);
    let status = wait_for_status(&master, &path, "six connections counted", |status| {
        let sum = |key: &str| {
            (0..2)
                .map(|index| status["workers"][index][key].as_u64().unwrap_or(0))
                .sum::<u64>()
        };
        sum("connections") == 6 && sum("completed") == 6
    });
    for (index, worker) in status["workers"].as_array().unwrap().iter().enumerate() {
        let pid = worker["pid"].as_u64().unwrap() as u32;
        let held = open.iter().filter(|(_, by)| *by == pid).count();
        assert_eq!(worker["connections"], held, "index {index}: {status}");
        assert!(worker["busy"].is_boolean(), "{worker}");
    }
    drop(open);
    wait_for_status(&master, &path, "the connections closed", |status| {
        (0..2).all(|index| status["workers"][index]["connections"] == 0)
    });
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

/// Connects to `address` (a TCP address, or `unix:PATH`) and reads the answer's line; the
/// connection stays open as long as the returned socket.
fn ask(address: &str) -> (Box<dyn std::any::Any>, String) {
    use std::io::{BufRead, BufReader};
    let mut line = String::new();
    if let Some(path) = address.strip_prefix("unix:") {
        let stream = std::os::unix::net::UnixStream::connect(path).expect("connect");
        BufReader::new(&stream)
            .read_line(&mut line)
            .expect("an answer");
        (Box::new(stream), line)
    } else {
        let stream = std::net::TcpStream::connect(address).expect("connect");
        BufReader::new(&stream)
            .read_line(&mut line)
            .expect("an answer");
        (Box::new(stream), line)
    }
}

#[test]
fn a_connection_taken_out_of_its_stream_is_counted_no_more() {
    let cases = [HANDING_OVER, HANDING_OVER_ASYNC]
        .into_iter()
        .flat_map(|binary| [(binary, "127.0.0.1:0"), (binary, "unix:")]);
    for (case, (binary, listen)) in cases.enumerate() {
        let path = status_path(&format!("status-handing-over-{case}"));
        let socket = path.with_file_name("handing-over.sock");
        let listen = match listen {
            "unix:" => format!("unix:{}", socket.display()),
            tcp => tcp.to_owned(),
        };
        let mut master = Master::launch(binary)
            .env("KAMISAMA_STATUS_FILE", path.to_str().unwrap())
            .env("KAMISAMA_LISTEN", &listen)
            .start();
        let line = master.wait_for_line("listening address=");
        let address = kamisama_tests::field(&line, "address").unwrap().to_owned();
        let counts = |status: &Value| {
            let worker = &status["workers"][0];
            (worker["completed"].as_u64(), worker["connections"].as_u64())
        };
        if listen.starts_with("unix:") {
            // `into_tcp` gives a Unix stream back, counted still.
            let (_first, answer) = ask(&address);
            assert_eq!(answer, "kept\n");
            wait_for_status(&master, &path, "one connection counted", |status| {
                counts(status) == (Some(1), Some(1))
            });
        }
        // Taken out: open, answered, and no longer counted.
        let (_raw, answer) = ask(&address);
        assert_eq!(answer, "raw\n");
        let done = if listen.starts_with("unix:") { 2 } else { 1 };
        wait_for_status(&master, &path, "no connection counted", |status| {
            counts(status) == (Some(done), Some(0))
        });
        master.signal(Signal::SIGTERM);
        master.expect_exit_code(0);
        master.expect_tree_gone();
    }
}
