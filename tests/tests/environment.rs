//! `KAMISAMA_*` overrides, and the process conditions checked before the first fork.

use kamisama_tests::Master;
use nix::sys::signal::Signal;

const SUPERVISED: &str = env!("CARGO_BIN_EXE_supervised");
const BY_HAND: &str = env!("CARGO_BIN_EXE_by-hand");
const EVERY_SETTING: &str = env!("CARGO_BIN_EXE_every-setting");

#[test]
fn the_attribute_sets_each_setting_in_its_place() {
    let status = kamisama_tests::scratch!("every-setting").join("status.json");
    let mut master = Master::launch(EVERY_SETTING)
        .env("KAMISAMA_STATUS_FILE", status.to_str().unwrap())
        .start();
    master.wait_for_line(
        "started instances=2 respawn_limit=4 respawn_interval=5s shutdown_timeout=6s \
         restart=on-failure backoff_max=7s timeout=80s",
    );
    master.wait_for_workers(2);
    let settings = master.wait_until("the status", || {
        let text = std::fs::read_to_string(&status).ok()?;
        let status: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(status["settings"].clone())
    });
    assert_eq!(settings["boot_timeout"], 90.0, "{settings}");
    assert_eq!(settings["hang_grace"], 3.0, "{settings}");
    assert_eq!(settings["hang_signal"], "SIGRTMIN+1", "{settings}");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn environment_overrides_every_setting() {
    // What each setting does is tested where it is used, through these same variables.
    let mut master = Master::launch(EVERY_SETTING)
        .env("KAMISAMA_INSTANCES", "6")
        .env("KAMISAMA_RESPAWN_LIMIT", "7")
        .env("KAMISAMA_RESPAWN_INTERVAL", "8")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "9")
        .env("KAMISAMA_RESTART", "never")
        .env("KAMISAMA_BACKOFF_MAX", "10")
        .env("KAMISAMA_TIMEOUT", "11")
        .start();
    master.wait_for_line(
        "started instances=6 respawn_limit=7 respawn_interval=8s shutdown_timeout=9s \
         restart=never backoff_max=10s timeout=11s",
    );
    master.wait_for_workers(6);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn an_invalid_value_stops_before_anything_is_forked() {
    for (var, value) in [
        ("KAMISAMA_INSTANCES", "0"),
        ("KAMISAMA_INSTANCES", "many"),
        ("KAMISAMA_INSTANCES", ""),
        ("KAMISAMA_RESPAWN_LIMIT", "-1"),
        ("KAMISAMA_RESPAWN_INTERVAL", "0"),
        ("KAMISAMA_SHUTDOWN_TIMEOUT", "5s"),
        ("KAMISAMA_RESTART", "sometimes"),
        ("KAMISAMA_BACKOFF_MAX", "-1"),
        ("KAMISAMA_UPGRADE_TRIAL", "ten"),
        ("KAMISAMA_MAX_LIFETIME", "1h"),
        ("KAMISAMA_MAX_LIFETIME_JITTER", "-5"),
        ("KAMISAMA_MAX_REQUESTS", "lots"),
        ("KAMISAMA_MAX_MEMORY", "512MB"),
        ("KAMISAMA_MAX_MEMORY", "infinity"),
        ("KAMISAMA_RECYCLE_AT_ONCE", "0"),
        ("KAMISAMA_METRICS", "9464"),
        ("KAMISAMA_METRICS", "unix:"),
        ("KAMISAMA_HANG_SIGNAL", "SIGNOPE"),
        ("KAMISAMA_WORKER_THREADS", "100000"),
        // More than any machine can fork: a refusal, not an abort on a failed allocation.
        ("KAMISAMA_INSTANCES", "4194305"),
        ("KAMISAMA_INSTANCES", "100000000000"),
        ("KAMISAMA_INSTANCES", "18446744073709551615"),
    ] {
        let mut master = Master::launch(SUPERVISED).env(var, value).start();
        master.expect_exit_code(2);
        let message = master.wait_for_line("error:");
        assert!(
            message.contains(&format!("{var}={value:?}")),
            "{var}={value:?}: {message}"
        );
        master.expect_lines("spawned", 0);
        master.expect_lines("worker-started", 0);
        master.expect_tree_gone();
    }
}

#[test]
fn a_closure_shares_what_the_master_loaded() {
    let mut master = Master::launch(BY_HAND).start();
    let line = master.wait_for_line("loaded-by=");
    let loaded_by = kamisama_tests::field(&line, "loaded-by").unwrap();
    assert_eq!(loaded_by, master.pid().to_string());
    master.wait_for_workers(2);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_process_with_threads_is_refused() {
    let mut master = Master::launch(BY_HAND).env("BY_HAND_THREAD", "1").start();
    master.expect_exit_code(2);
    master.wait_for_line("error: the process already runs 2 threads");
    master.expect_lines("spawned", 0);
}

#[test]
fn a_worker_that_never_returns_and_borrows_its_handle_runs() {
    // The fixture's status file is a path that cannot be written: the override replaces it.
    let status = kamisama_tests::scratch!("never-returning").join("status.json");
    let mut master = Master::launch(env!("CARGO_BIN_EXE_pedantic-never"))
        .env("KAMISAMA_STATUS_FILE", status.to_str().unwrap())
        .start();
    master.wait_for_workers(2);
    master.signal(Signal::SIGTERM);
    master.wait_for_lines("never-returning index=", 2);
    master.expect_exit_code(0);
    master.expect_lines("killed", 0);
}
