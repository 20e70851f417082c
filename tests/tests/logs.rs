//! The log formats: JSON lines that a JSON parser reads, with a stable name and typed fields
//! for every event; `off`, which silences the workers' failure lines too.

use kamisama_tests::Master;
use nix::sys::signal::{kill, Signal};
use serde_json::Value;

const SUPERVISED: &str = env!("CARGO_BIN_EXE_supervised");
const COOPERATIVE: &str = env!("CARGO_BIN_EXE_cooperative");

/// Every line of the transcript that is a JSON object, parsed.
fn json_lines(master: &Master) -> Vec<Value> {
    master
        .transcript()
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}")))
        .collect()
}

fn event<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines
        .iter()
        .find(|line| line["event"] == name)
        .unwrap_or_else(|| panic!("no {name} in {lines:#?}"))
}

#[test]
fn json_lines_carry_a_time_a_level_a_name_and_typed_fields() {
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_LOG", "json")
        .env("KAMISAMA_INSTANCES", "2")
        .start();
    let workers = master.wait_for_workers(2);
    kill(workers[&1], Signal::SIGKILL).unwrap();
    master.wait_for_lines("\"event\":\"spawned\"", 3);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    let lines = json_lines(&master);
    master.expect_lines("kamisama[", 0);
    for line in &lines {
        let ts = line["ts"].as_str().expect("a time");
        assert!(
            ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{ts}"
        );
        assert!(["info", "warn", "error"].contains(&line["level"].as_str().unwrap()));
        assert_eq!(line["master"], master.pid().as_raw(), "{line}");
    }
    let started = event(&lines, "started");
    assert_eq!(started["instances"], 2);
    assert_eq!(started["respawn_interval"], 60.0);
    assert_eq!(started["restart"], "always");
    let exited = event(&lines, "exited");
    assert_eq!(exited["index"], 1);
    assert_eq!(exited["pid"], workers[&1].as_raw());
    // A signal that ended a worker has a key of its own: `status` is a number when present.
    assert_eq!(exited["signal"], "SIGKILL");
    assert!(exited.get("status").is_none(), "{exited}");
    assert_eq!(exited["level"], "warn");
    // Stopped by the shutdown, as asked: an orderly end, no warning.
    let stopped = lines
        .iter()
        .find(|line| line["event"] == "exited" && line["stopped"] == true)
        .expect("an exit the shutdown asked for");
    assert_eq!(stopped["level"], "info", "{stopped}");
    // Becoming ready is an event.
    assert_eq!(event(&lines, "ready")["workers"], 2);
    let respawning = event(&lines, "respawning");
    assert_eq!(respawning["respawns"], 1);
    assert_eq!(respawning["limit"], 3);
    assert_eq!(respawning["delay"], 0.0);
    assert_eq!(event(&lines, "shutdown-started")["signal"], "SIGTERM");
    assert_eq!(event(&lines, "shutdown-finished")["exit"], 0);
}

#[test]
fn the_environment_overrides_the_attributes_log_format() {
    let mut master = Master::launch(env!("CARGO_BIN_EXE_every-setting"))
        .env("KAMISAMA_LOG", "json")
        .start();
    master.wait_for_line("\"event\":\"started\"");
    master.wait_for_workers(2);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    let lines = json_lines(&master);
    assert_eq!(event(&lines, "started")["timeout"], 80.0);
    master.expect_lines("kamisama[", 0);
}

#[test]
fn a_worker_failure_in_json_names_its_worker_and_its_master() {
    let mut master = Master::launch(COOPERATIVE)
        .env("KAMISAMA_LOG", "json")
        .env("FAIL", "1")
        .env("KAMISAMA_RESPAWN_LIMIT", "0")
        .start();
    master.expect_exit_code(1);
    let lines = json_lines(&master);
    let failed = event(&lines, "worker-failed");
    assert_eq!(failed["level"], "error");
    assert_eq!(failed["master"], master.pid().as_raw());
    let index = failed["index"].as_u64().expect("an index");
    assert_eq!(failed["error"], format!("\"shard {index} is corrupt\""));
    // Named once: a parser that keeps the first of two keys would take the worker for it.
    let raw = master.wait_for_line("\"event\":\"worker-failed\"");
    assert_eq!(raw.matches("\"master\":").count(), 1, "{raw}");
    let pid = failed["pid"].clone();
    let exited = lines
        .iter()
        .find(|line| line["event"] == "exited" && line["pid"] == pid)
        .expect("the failed worker's exit");
    assert_eq!(exited["status"], 1);
}

#[test]
fn log_off_silences_the_master_and_the_workers_failures() {
    let mut master = Master::launch(COOPERATIVE)
        .env("KAMISAMA_LOG", "off")
        .env("FAIL", "1")
        .env("KAMISAMA_RESPAWN_LIMIT", "0")
        .start();
    master.expect_exit_code(1);
    master.wait_for_lines("worker-started", 1);
    master.expect_lines("kamisama[", 0);
    master.expect_lines("worker-failed", 0);
}

#[test]
fn a_multi_line_error_is_one_line_of_the_text_log() {
    // An error chain as anyhow prints it, with a line that looks like the master's own.
    let mut master = Master::launch(COOPERATIVE)
        .env(
            "FAIL_WITH",
            "disk gone\n\nCaused by:\nkamisama[1]: shutdown-finished exit=0",
        )
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_RESPAWN_LIMIT", "0")
        .start();
    master.expect_exit_code(1);
    let failed = master.wait_for_line("worker-failed");
    assert!(
        failed.ends_with("error=disk gone\\n\\nCaused by:\\nkamisama[1]: shutdown-finished exit=0"),
        "{failed}"
    );
    master.expect_lines("Caused by:", 1);
    assert!(
        master
            .transcript()
            .lines()
            .all(|line| !line.starts_with("kamisama[1]:")),
        "{}",
        master.transcript()
    );
}

#[test]
fn a_json_line_longer_than_its_buffer_is_whole() {
    // An upgrade logs the program's path, which may be a few thousand bytes long.
    let mut dir = kamisama_tests::scratch!("long");
    for part in ["d", "e", "f"] {
        dir = dir.join(part.repeat(200));
    }
    std::fs::create_dir_all(&dir).unwrap();
    let deployment =
        kamisama_tests::deployment::Deployment::new(dir, env!("CARGO_BIN_EXE_hello-server"));
    let mut master = Master::launch(&deployment.app())
        .env("KAMISAMA_LOG", "json")
        .env("KAMISAMA_LISTEN", "127.0.0.1:0")
        .env("KAMISAMA_INSTANCES", "1")
        .start();
    master.wait_for_line("\"event\":\"spawned\"");
    master.signal(Signal::SIGUSR2);
    master.wait_for_line("\"event\":\"upgrade-handing-over\"");
    let lines = json_lines(&master);
    let started = event(&lines, "upgrade-started");
    assert_eq!(started["path"], deployment.app());
    let successor = started["pid"].as_i64().unwrap();
    let successor = nix::unistd::Pid::from_raw(successor as i32);
    assert_eq!(master.wait_exit_alone().code(), Some(0));
    nix::sys::signal::kill(successor, Signal::SIGTERM).unwrap();
    kamisama_tests::reap_orphan(successor);
}
