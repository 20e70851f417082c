//! The live status file: what each index runs and how it has gone, rewritten as things
//! happen, read here with a JSON parser.
//!
//! cargo-mutants finds `>` turned into `>=` in `RespawnLimiter::in_window` alive: the two
//! differ only for a respawn exactly one `respawn_interval` old to the nanosecond.

use kamisama_tests::Master;
use nix::sys::signal::{kill, Signal};
use serde_json::Value;
use std::path::{Path, PathBuf};

const SUPERVISED: &str = env!("CARGO_BIN_EXE_supervised");

fn status_path(name: &str) -> PathBuf {
    kamisama_tests::scratch!(name).join("status.json")
}

/// The status as it is now; a reader never sees half a file, as the master renames a whole
/// new one over it.
fn read(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("the status file");
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{error}: {text}"))
}

/// Waits until the status satisfies `condition`, and returns it.
fn wait_for_status(
    master: &Master,
    path: &Path,
    what: &str,
    condition: impl Fn(&Value) -> bool,
) -> Value {
    master.wait_until(what, || {
        let status = read(path);
        condition(&status).then_some(status)
    })
}

#[test]
fn the_status_follows_respawns_scaling_and_a_rolling_restart() {
    let path = status_path("status-follows");
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
    for (index, pid) in &workers {
        let worker = &status["workers"][*index];
        assert_eq!(worker["pid"], pid.as_raw());
        assert_eq!(worker["state"], "running");
        assert_eq!(worker["restarts"], 0);
        assert!(worker["last_exit"].is_null());
        assert!(worker["started"].as_f64().unwrap() > 1.7e9, "{worker}");
    }

    kill(workers[&1], Signal::SIGKILL).unwrap();
    let status = wait_for_status(&master, &path, "index 1 respawned", |status| {
        status["workers"][1]["restarts"] == 1 && status["running"] == 3
    });
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
