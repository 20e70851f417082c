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

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        kamisama_tests::skip(
            "the_systemd_unit_passes_systemd_analyze_verify",
            "systemd-analyze is not installed",
        );
        return;
    }
    // Verified with a binary that exists here in place of /usr/local/bin/crunch.
    let unit = deploy_file("crunch.service").replace(
        "ExecStart=/usr/local/bin/crunch",
        &format!("ExecStart={}", env!("CARGO_BIN_EXE_supervised")),
    );
    let dir = kamisama_tests::scratch!("deploy-unit");
    let path = dir.join("crunch.service");
    std::fs::write(&path, unit).unwrap();
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{said}");
    assert!(said.trim().is_empty(), "warnings:\n{said}");
}

#[test]
fn grace_periods_leave_room_for_an_orderly_shutdown() {
    let unit = deploy_file("crunch.service");
    assert!(number(&unit, "TimeoutStopSec") > CRUNCH_SHUTDOWN_TIMEOUT);
    assert!(unit.contains("KillMode=mixed"));
    let pod = deploy_file("kubernetes.yaml");
    assert!(number(&pod, "terminationGracePeriodSeconds") > CRUNCH_SHUTDOWN_TIMEOUT);
    let image = deploy_file("Dockerfile");
    assert!(
        image.contains("ENTRYPOINT [\"/usr/local/bin/crunch\"]"),
        "{image}"
    );
}
