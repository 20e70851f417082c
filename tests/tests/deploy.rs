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
                )
                .replace(
                    "/usr/local/bin/kamisama-upgrade",
                    concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/../examples/deploy/kamisama-upgrade"
                    ),
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
fn the_root_master_unit_with_unprivileged_workers_passes_systemd_analyze_verify() {
    verify(
        "the_root_master_unit_with_unprivileged_workers_passes_systemd_analyze_verify",
        &["hello-port-80.service"],
    );
}

#[test]
fn grace_periods_leave_room_for_an_orderly_shutdown() {
    let unit = deploy_file("crunch.service");
    assert!(number(&unit, "TimeoutStopSec") > CRUNCH_SHUTDOWN_TIMEOUT);
    assert!(unit.contains("KillMode=mixed"));
    for server in ["hello.service", "hello-port-80.service"] {
        let server = deploy_file(server);
        assert!(number(&server, "TimeoutStopSec") > HELLO_SHUTDOWN_TIMEOUT);
        assert!(server.contains("KillMode=mixed"));
    }
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

/// Runs `tool` with `args`, or says why the test did not run and returns `None`.
fn run_tool(test: &str, tool: &str, args: &[&str]) -> Option<std::process::Output> {
    match Command::new(tool).args(args).output() {
        Ok(output) => Some(output),
        Err(error) => {
            kamisama_tests::skip(test, &format!("{tool} is not installed ({error})"));
            None
        }
    }
}

fn deploy_path(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/deploy")
        .join(name);
    path.to_str().unwrap().to_owned()
}

#[test]
fn the_units_are_hardened_as_systemd_analyze_security_asks() {
    for unit in ["crunch.service", "hello.service"] {
        let path = deploy_path(unit);
        let args = [
            "security",
            "--offline=true",
            "--threshold=25",
            path.as_str(),
        ];
        let Some(output) = run_tool("the_units_are_hardened", "systemd-analyze", &args) else {
            return;
        };
        let said = String::from_utf8_lossy(&output.stdout);
        // An exposure of at most 2.5 of 10: "OK" in systemd's words.
        assert!(output.status.success(), "{unit}:\n{said}");
        assert!(said.contains(" OK "), "{unit}:\n{said}");
    }
    let unit = deploy_file("crunch.service");
    // The post-mortem the README promises: the status file outlives the service.
    assert!(unit.contains("RuntimeDirectoryPreserve=yes"), "{unit}");
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let path = deploy_path("Dockerfile");
    let Some(output) = run_tool("the_dockerfile_passes_hadolint", "hadolint", &[&path]) else {
        return;
    };
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{said}");
    let image = deploy_file("Dockerfile");
    for must in ["--locked", "USER 10001", "--mount=type=cache"] {
        assert!(image.contains(must), "no {must} in:\n{image}");
    }
    let ignored =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.dockerignore"))
            .expect("a .dockerignore beside the build context");
    assert!(ignored.lines().any(|line| line == "target/"), "{ignored}");
}

#[test]
fn the_upgrade_command_passes_shellcheck_as_posix_sh() {
    let path = deploy_path("kamisama-upgrade");
    let test = "the_upgrade_command_passes_shellcheck_as_posix_sh";
    let Some(output) = run_tool(test, "shellcheck", &["--shell=sh", &path]) else {
        return;
    };
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{said}");
    assert!(deploy_file("kamisama-upgrade").starts_with("#!/bin/sh\n"));
}

#[test]
fn the_kubernetes_deployment_passes_its_schema_and_runs_read_only() {
    let path = deploy_path("kubernetes.yaml");
    let test = "the_kubernetes_deployment_passes_its_schema";
    let Some(output) = run_tool(test, "kubernetes-validate", &["--strict", &path]) else {
        return;
    };
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pod = deploy_file("kubernetes.yaml");
    for must in [
        "imagePullPolicy: IfNotPresent",
        "readOnlyRootFilesystem: true",
        "runAsNonRoot: true",
        "emptyDir:",
        "memory:",
        // Ready through a rolling restart too.
        "(ready|reloading)",
        // Scraped, and scaled on what the scrapes say.
        "prometheus.io/scrape: \"true\"",
        "KAMISAMA_METRICS",
        "containerPort: 9464",
        "kind: HorizontalPodAutoscaler",
        "kamisama_workers_busy",
    ] {
        assert!(pod.contains(must), "no {must} in:\n{pod}");
    }
}

/// Every system call of a `systemd-analyze syscall-filter` group, its groups expanded.
fn syscall_group(group: &str) -> std::collections::BTreeSet<String> {
    let output = Command::new("systemd-analyze")
        .args(["syscall-filter", group])
        .output()
        .expect("systemd-analyze syscall-filter");
    let listing = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut calls = std::collections::BTreeSet::new();
    for entry in listing.lines().skip(1).map(str::trim) {
        if entry.starts_with('#') || entry.is_empty() {
            continue;
        }
        if entry.starts_with('@') {
            calls.extend(syscall_group(entry));
        } else {
            calls.insert(entry.to_owned());
        }
    }
    calls
}

/// The system calls a trace of `strace -f -o` holds.
fn traced_calls(trace: &str) -> std::collections::BTreeSet<String> {
    trace
        .lines()
        .filter_map(|line| {
            // `PID name(args) = result`, or `PID <... name resumed> ...`.
            let rest = line.split_once(' ')?.1.trim_start();
            let rest = rest.strip_prefix("<... ").unwrap_or(rest);
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// Runs `server` under strace through a life (forks, a rolling restart, a respawn, scaling, a
/// forwarded signal, an upgrade, a shutdown) and checks that every system call its master
/// and workers made is one `SystemCallFilter=@system-service` allows.
fn makes_only_service_calls(test: &str, server: &str) {
    if run_tool(test, "strace", &["-V"]).is_none()
        || run_tool(test, "systemd-analyze", &["--version"]).is_none()
    {
        return;
    }
    let trace = kamisama_tests::scratch!(test).join("trace");
    let mut master = kamisama_tests::Master::launch_under(
        &["strace", "-f", "-qq", "-o", trace.to_str().unwrap()],
        server,
    )
    .env("KAMISAMA_LISTEN", "127.0.0.1:0")
    .env("KAMISAMA_INSTANCES", "2")
    .start();
    use nix::sys::signal::Signal;
    let old = master.pid();
    kamisama_tests::deployment::spawned_by(&master, old, 2);
    // Requests, kept alive and not, answered by the workers.
    let line = master.wait_for_line("listening address=");
    let address = kamisama_tests::field(&line, "address")
        .unwrap()
        .parse()
        .unwrap();
    for keep_alive in [false, true] {
        let load = kamisama_tests::load::Load::start(address, 2, keep_alive);
        load.wait_for(20);
        assert_eq!(load.stop().failed(), 0);
    }
    master.signal(Signal::SIGHUP);
    master.wait_for_line("rolling-restart-finished");
    master.signal(Signal::SIGTTIN);
    master.wait_for_line("scaled-up");
    master.signal(Signal::SIGUSR1);
    master.wait_for_line("forwarded signal=SIGUSR1");
    let successor = kamisama_tests::deployment::upgrade(&master, old);
    master.wait_for_line(&format!("kamisama[{old}]: shutdown-finished exit=0"));
    nix::sys::signal::kill(successor, Signal::SIGTERM).unwrap();
    master.expect_exit_code(0);
    let made = traced_calls(&std::fs::read_to_string(&trace).unwrap());
    assert!(made.contains("fork") || made.contains("clone"), "{made:?}");
    let allowed = syscall_group("@system-service");
    let refused: Vec<&String> = made
        .iter()
        .filter(|call| !allowed.contains(*call))
        .collect();
    assert!(refused.is_empty(), "outside @system-service: {refused:?}");
}

#[test]
fn the_threaded_server_makes_only_the_system_calls_its_unit_allows() {
    makes_only_service_calls(
        "the_threaded_server_makes_only_the_system_calls",
        env!("CARGO_BIN_EXE_hello-server"),
    );
}

#[test]
fn the_async_server_makes_only_the_system_calls_its_unit_allows() {
    makes_only_service_calls(
        "the_async_server_makes_only_the_system_calls",
        env!("CARGO_BIN_EXE_async-hello-server"),
    );
}
