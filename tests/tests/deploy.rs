//! The deployment files under `examples/deploy` stay true: the systemd unit passes
//! `systemd-analyze verify`, and every grace period leaves the master time for an orderly
//! shutdown.

use std::path::Path;
use std::process::Command;

fn deploy_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The value of `key` (`key=value` or `key: value`) in `text`, as a number.
fn number(text: &str, key: &str) -> u64 {
    text.lines()
        .map(str::trim)
        .find_map(|line| {
            line.strip_prefix(key)?
                .trim_start_matches([':', '=', ' '])
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
}

/// The crunch example's shutdown_timeout: the default, as it does not set one.
const CRUNCH_SHUTDOWN_TIMEOUT: u64 = 10;

/// The hello_server example's shutdown_timeout.
const HELLO_SHUTDOWN_TIMEOUT: u64 = 30;

/// Runs `systemd-analyze verify` on `units` (names under `examples/deploy`), each with its
/// binary replaced by one that exists here.
fn verify(test: &str, units: &[&str]) {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        kamisama_tests::skip(test, "systemd-analyze is not installed");
        return;
    }
    let dir = kamisama_tests::scratch!(test);
    let paths: Vec<_> = units
        .iter()
        .map(|name| {
            let unit = deploy_file(name)
                .replace("/usr/local/bin/crunch", env!("CARGO_BIN_EXE_supervised"))
                .replace(
                    "/usr/local/bin/hello_server",
                    env!("CARGO_BIN_EXE_hello-server"),
                );
            let path = dir.join(name);
            std::fs::write(&path, unit).unwrap();
            path
        })
        .collect();
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .expect("run systemd-analyze");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{said}");
    assert!(said.trim().is_empty(), "warnings:\n{said}");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    verify(
        "the_systemd_unit_passes_systemd_analyze_verify",
        &["crunch.service"],
    );
}

#[test]
fn the_socket_activated_server_units_pass_systemd_analyze_verify() {
    verify(
        "the_socket_activated_server_units_pass_systemd_analyze_verify",
        &["hello.socket", "hello.service"],
    );
}

#[test]
fn grace_periods_leave_room_for_an_orderly_shutdown() {
    let unit = deploy_file("crunch.service");
    assert!(number(&unit, "TimeoutStopSec") > CRUNCH_SHUTDOWN_TIMEOUT);
    assert!(unit.contains("KillMode=mixed"));
    let server = deploy_file("hello.service");
    assert!(number(&server, "TimeoutStopSec") > HELLO_SHUTDOWN_TIMEOUT);
    assert!(server.contains("KillMode=mixed"));
    let example = std::fs::read_to_string(
        env!("CARGO_MANIFEST_DIR").to_owned() + "/../examples/hello_server.rs",
    )
    .unwrap();
    assert!(example.contains(&format!("shutdown_timeout = {HELLO_SHUTDOWN_TIMEOUT}")));
    let pod = deploy_file("kubernetes.yaml");
    assert!(number(&pod, "terminationGracePeriodSeconds") > CRUNCH_SHUTDOWN_TIMEOUT);
    let image = deploy_file("Dockerfile");
    assert!(
        image.contains("ENTRYPOINT [\"/usr/local/bin/crunch\"]"),
        "{image}"
    );
}
