//! Zero-downtime upgrades: USR2 starts the binary found at the master's path on the same
//! listeners, hands over once its fleet is ready, and rolls back when the new binary dies or
//! is late. The server is `examples/hello_server.rs`, run from a path of the test's own so
//! that a deploy can rename a new file over it, as package managers and deploy tools do.
//!
//! cargo-mutants finds `take_over`'s first `||` turned into `&&` alive: the two differ only
//! for a new master that is shutting down with a ready fleet, and a shutdown stops every
//! worker first, so that its fleet is never ready. Nor can a test tell apart: the readiness
//! pipe's `O_CLOEXEC | O_NONBLOCK` with `^` (distinct bits); `Upgrade::hear`'s guards on
//! `WouldBlock` and `Interrupted` made `true` or `false` (a non-blocking pipe's read fails
//! with EAGAIN alone); `dup2(..) < 0` with `== 0` or `<= 0` in the child (a `dup2` onto
//! descriptor 3 or more returns that descriptor or -1, and fails only on a bad descriptor);
//! `Takeover::handed_over`'s `POLLERR | POLLHUP` with `^`; and `Takeover::said_ready` made
//! `false`, which only keeps a new master waking for readiness in the milliseconds between
//! its word and the old master's hand-over.

use kamisama_tests::deployment::{spawned_by, upgrade, Deployment, Pids};
use kamisama_tests::load::{Load, Tally};
use kamisama_tests::{
    children_of, field, is_alive, parent_of, reap_orphan, scratch, Master, NotifySocket,
};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use std::fs;
use std::net::SocketAddr;
use std::time::Duration;

const HELLO: &str = env!("CARGO_BIN_EXE_hello-server");
const ASYNC_HELLO: &str = env!("CARGO_BIN_EXE_async-hello-server");
const SUPERVISED: &str = env!("CARGO_BIN_EXE_supervised");
const BAD_RELEASE: &str = env!("CARGO_BIN_EXE_bad-release");

/// The threaded hello server, installed in a scratch directory named `name`.
fn deploy(name: &str) -> Deployment {
    Deployment::new(scratch!(name), HELLO)
}

/// The file a process runs, as /proc tells: ` (deleted)` at the end once a deploy replaced it.
fn exe(pid: u32) -> String {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    exe.to_string_lossy().into_owned()
}

/// The live children of `pid`.
fn live_children(pid: Pid) -> Pids {
    let children = children_of(pid)
        .into_iter()
        .filter(|child| is_alive(*child));
    children.map(|child| child.as_raw() as u32).collect()
}

/// Stops a new master, now the test's own adopted child, and checks how it ended.
fn stop_successor(successor: Pid) {
    nix::sys::signal::kill(successor, Signal::SIGTERM).unwrap();
    assert_eq!(reap_orphan(successor), WaitStatus::Exited(successor, 0));
}

/// A short load, all of it answered by workers in `workers`.
fn answered_by(address: SocketAddr, workers: &Pids) -> Tally {
    let load = Load::start(address, 2, false);
    load.wait_for(20);
    let tally = load.stop();
    assert_eq!(tally.failed(), 0, "{tally:?}");
    let answering: Pids = tally.accepted.keys().copied().collect();
    assert!(
        answering.is_subset(workers),
        "{answering:?} not of {workers:?}"
    );
    tally
}

#[test]
fn an_upgrade_hands_the_listener_over_to_the_new_binary() {
    let deployment = deploy("upgrade-hand-over");
    let status = deployment.dir.join("status.json");
    let settings = [("KAMISAMA_STATUS_FILE", status.to_str().unwrap())];
    let (mut master, address, _) = deployment.start(2, &settings);
    let old = master.pid();
    deployment.install(&fs::read(HELLO).unwrap());
    assert!(exe(old.as_raw() as u32).ends_with(" (deleted)"));
    let successor = upgrade(&master, old);
    let line = master.wait_for_line(&format!("kamisama[{successor}]: listening address="));
    assert_eq!(field(&line, "address"), Some(&*address.to_string()));
    let workers = spawned_by(&master, successor, 2);
    master.wait_for_line(&format!(
        "kamisama[{old}]: upgrade-handing-over pid={successor}"
    ));
    master.wait_for_line(&format!("kamisama[{old}]: shutdown-finished exit=0"));
    assert_eq!(master.wait_exit_alone().code(), Some(0));
    // The new generation runs the new file; nothing of the old one is left.
    for worker in &workers {
        assert_eq!(exe(*worker), deployment.app());
    }
    let mut alive: Vec<u32> = master
        .tree()
        .iter()
        .map(|pid| pid.as_raw() as u32)
        .collect();
    alive.sort_unstable();
    let mut expected: Vec<u32> = workers.iter().copied().collect();
    expected.push(successor.as_raw() as u32);
    expected.sort_unstable();
    assert_eq!(alive, expected, "{}", master.transcript());
    answered_by(address, &workers);
    // The status file is the new master's, and says how the upgrade went.
    let says = format!("{{\"master\":{successor},\"phase\":\"ready\"");
    let text = master.wait_until("the new master's status file", || {
        let text = fs::read_to_string(&status).ok()?;
        text.starts_with(&says).then_some(text)
    });
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status["upgrade"]["state"], "done", "{text}");
    assert_eq!(status["upgrade"]["old"], old.as_raw(), "{text}");
    assert_eq!(status["upgrade"]["new"], successor.as_raw(), "{text}");
    assert!(status["upgrade"]["reason"].is_null(), "{text}");
    master.wait_for_line(&format!("kamisama[{successor}]: upgrade-done old={old}"));
    // The test process, a subreaper, adopted the new master when the old one exited.
    assert_eq!(parent_of(successor), Some(Pid::this()));
    stop_successor(successor);
    master.expect_tree_gone();
}

/// Keeps clients busy on a hello server through an upgrade, and checks that every one of
/// their requests was answered.
fn an_upgrade_under_load(server: &str, name: &str, keep_alive: bool) {
    let deployment = Deployment::new(scratch!(name), server);
    let (mut master, address, _) = deployment.start(4, &[]);
    let old = master.pid();
    let load = Load::start(address, 8, keep_alive);
    load.wait_for(300);
    deployment.install(&fs::read(server).unwrap());
    let successor = upgrade(&master, old);
    let workers = spawned_by(&master, successor, 4);
    assert_eq!(master.wait_exit_alone().code(), Some(0));
    load.wait_for(300);
    let tally = load.stop();
    assert_eq!(tally.failed(), 0, "{tally:?}");
    assert!(
        tally.accepted.keys().any(|pid| workers.contains(pid)),
        "{tally:?}"
    );
    master.expect_lines("killed", 0);
    stop_successor(successor);
}

#[test]
fn an_upgrade_under_load_loses_no_request() {
    an_upgrade_under_load(HELLO, "upgrade-load", false);
}

#[test]
fn an_upgrade_under_load_loses_no_request_on_kept_alive_connections() {
    an_upgrade_under_load(HELLO, "upgrade-load-keep-alive", true);
}

#[test]
fn an_upgrade_of_async_workers_under_load_loses_no_request() {
    an_upgrade_under_load(ASYNC_HELLO, "upgrade-load-async", false);
}

#[test]
fn an_upgrade_of_async_workers_under_load_loses_no_request_on_kept_alive_connections() {
    an_upgrade_under_load(ASYNC_HELLO, "upgrade-load-async-keep-alive", true);
}

/// Runs `examples/deploy/kamisama-upgrade` on the status file `status`, as a unit's
/// `ExecReload=` would.
fn kamisama_upgrade(status: &std::path::Path) -> std::process::Output {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/deploy/kamisama-upgrade"
    );
    std::process::Command::new(script)
        .arg(status)
        .arg("20")
        .output()
        .expect("run kamisama-upgrade")
}

#[test]
fn the_upgrade_command_exits_0_once_the_new_master_took_over_and_1_on_a_rollback() {
    let deployment = deploy("upgrade-command");
    let status = deployment.dir.join("status.json");
    let settings = [("KAMISAMA_STATUS_FILE", status.to_str().unwrap())];
    let (mut master, address, workers) = deployment.start(2, &settings);
    master.wait_until("the first status file", || {
        fs::read_to_string(&status)
            .ok()?
            .contains("\"phase\":\"ready\"")
            .then_some(())
    });
    // A release that cannot start: rolled back, and the command says so.
    deployment.install_script("exit 3");
    let said = kamisama_upgrade(&status);
    let stderr = String::from_utf8_lossy(&said.stderr);
    assert_eq!(said.status.code(), Some(1), "{stderr}");
    // With the reason the old master logged (the new master exited, or its pipe closed
    // first: whichever the old master heard of first).
    let reason = stderr
        .trim_end()
        .split_once("rolled back, master ")
        .and_then(|(_, rest)| rest.split_once(" serves on: "))
        .map(|(_, reason)| reason.to_owned());
    let failed = master.wait_for_line("upgrade-failed");
    let logged = failed
        .split_once("reason=")
        .map(|(_, reason)| reason.trim_matches('"'));
    assert_eq!(reason.as_deref(), logged, "{stderr}");
    assert_eq!(live_children(master.pid()), workers);
    // A good one: the command returns once the new master took over.
    deployment.install(&fs::read(HELLO).unwrap());
    let old = master.pid();
    let said = kamisama_upgrade(&status);
    let stdout = String::from_utf8_lossy(&said.stdout);
    assert_eq!(said.status.code(), Some(0), "{stdout}");
    // The second upgrade the master started.
    let started = master.wait_for_lines(&format!("kamisama[{old}]: upgrade-started pid="), 2);
    let successor: i32 = field(&started[1], "pid").unwrap().parse().unwrap();
    assert!(
        stdout.contains(&format!("master {old} handed over to master {successor}")),
        "{stdout}"
    );
    assert_eq!(master.wait_exit_alone().code(), Some(0));
    let successor = Pid::from_raw(successor);
    answered_by(address, &live_children(successor));
    stop_successor(successor);
}

#[test]
fn a_new_binary_that_dies_at_start_is_rolled_back() {
    let deployment = deploy("upgrade-dies");
    let systemd = NotifySocket::bind(scratch!("upgrade-dies-socket").join("notify"), None);
    let (mut master, address, workers) = deployment.start(2, &[("NOTIFY_SOCKET", systemd.path())]);
    deployment.install_script("exit 3");
    let successor = upgrade(&master, master.pid());
    let failed = master.wait_for_line("upgrade-failed");
    assert_eq!(field(&failed, "pid"), Some(&*successor.to_string()));
    master.wait_until("the new master to be reaped", || {
        (!is_alive(successor) && parent_of(successor).is_none()).then_some(())
    });
    assert_eq!(master.count_lines("upgrade-failed"), 1);
    // `systemctl status` says so.
    let rolled_back =
        systemd.wait_for_status(|status| status.ends_with(", last upgrade rolled back"));
    assert_eq!(rolled_back.pid, master.pid());
    // The old generation serves on, untouched.
    assert_eq!(live_children(master.pid()), workers);
    answered_by(address, &workers);
    assert_eq!(master.count_lines("shutdown-started"), 0);
    // The failed upgrade is over: a fixed release goes through.
    deployment.install(&fs::read(HELLO).unwrap());
    let old = master.pid();
    let successor = upgrade(&master, old);
    master.wait_for_line(&format!(
        "kamisama[{old}]: upgrade-handing-over pid={successor}"
    ));
    assert_eq!(master.count_lines("upgrade-busy"), 0);
    assert_eq!(master.wait_exit_alone().code(), Some(0));
    stop_successor(successor);
}

#[test]
fn workers_ready_once_forked_must_have_lived_a_second_before_the_hand_over() {
    let deployment = deploy("upgrade-settle");
    let (master, _, _) = deployment.start(2, &[]);
    // A fleet whose workers are ready once forked (the `supervised` fixture's sleepers).
    deployment.install(&fs::read(SUPERVISED).unwrap());
    let old = master.pid();
    let successor = upgrade(&master, old);
    spawned_by(&master, successor, 2);
    let forked = std::time::Instant::now();
    master.wait_for_line(&format!(
        "kamisama[{old}]: upgrade-handing-over pid={successor}"
    ));
    // A second after the forks, less the time the test took to see them.
    let waited = forked.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(500),
        "{waited:?}"
    );
    master.wait_for_line(&format!("kamisama[{old}]: shutdown-finished exit=0"));
    stop_successor(successor);
}

#[test]
fn a_new_fleet_with_a_worker_that_keeps_crashing_is_never_handed_over() {
    let deployment = deploy("upgrade-crashing-index");
    // Index 0 of the new fleet exits at once, again and again, with a growing backoff
    // between forks; index 1 runs on. The fleet is never whole for a second.
    let settings = [
        ("FIXTURE", "crash-index-0"),
        ("KAMISAMA_BACKOFF_MAX", "30"),
        ("KAMISAMA_RESPAWN_LIMIT", "100"),
        ("KAMISAMA_UPGRADE_TIMEOUT", "3"),
    ];
    let (mut master, address, workers) = deployment.start(2, &settings);
    deployment.install(&fs::read(SUPERVISED).unwrap());
    let successor = upgrade(&master, master.pid());
    let failed = master.wait_for_line("upgrade-failed");
    assert!(failed.contains("not ready within 3s"), "{failed}");
    master.expect_lines("upgrade-handing-over", 0);
    master.wait_for_line(&format!("reaped pid={successor}"));
    assert_eq!(live_children(master.pid()), workers);
    answered_by(address, &workers);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_master_started_by_a_relative_path_or_through_path_upgrades_to_that_file() {
    for (name, program) in [("upgrade-relative", "./app"), ("upgrade-in-path", "app")] {
        let deployment = deploy(name);
        let launch = Master::launch(program)
            .env("KAMISAMA_LISTEN", "127.0.0.1:0")
            .env("KAMISAMA_INSTANCES", "1");
        let launch = if program.contains('/') {
            launch.current_dir(&deployment.dir)
        } else {
            // Found through PATH, from a directory that holds no such file.
            let path = std::env::var("PATH").unwrap_or_default();
            let path = format!("{}:{path}", deployment.dir.display());
            launch
                .env("PATH", &path)
                .current_dir(std::path::Path::new("/"))
        };
        let master = launch.start();
        let old = master.pid();
        spawned_by(&master, old, 1);
        let successor = upgrade(&master, old);
        let started = master.wait_for_line(&format!("kamisama[{old}]: upgrade-started"));
        assert_eq!(
            field(&started, "path"),
            Some(&*deployment.app()),
            "{started}"
        );
        master.wait_for_line(&format!(
            "kamisama[{old}]: upgrade-handing-over pid={successor}"
        ));
        assert_eq!(exe(successor.as_raw() as u32), deployment.app());
        master.wait_for_line(&format!("kamisama[{old}]: shutdown-finished exit=0"));
        stop_successor(successor);
    }
}

#[test]
fn a_new_master_that_is_never_ready_is_stopped_and_killed_if_it_must() {
    let deployment = deploy("upgrade-late");
    let settings = [
        ("KAMISAMA_UPGRADE_TIMEOUT", "1"),
        ("KAMISAMA_SHUTDOWN_TIMEOUT", "1"),
    ];
    let (mut master, address, workers) = deployment.start(2, &settings);
    // It ignores TERM, too: the old master must kill it.
    deployment.install_script("trap '' TERM\nexec sleep 60");
    let successor = upgrade(&master, master.pid());
    // One upgrade at a time.
    master.signal(Signal::SIGUSR2);
    master.wait_for_line("upgrade-busy");
    let failed = master.wait_for_line("upgrade-failed");
    assert!(failed.contains("not ready within 1s"), "{failed}");
    let reaped = master.wait_for_line(&format!("reaped pid={successor}"));
    assert_eq!(field(&reaped, "status"), Some("SIGKILL"), "{reaped}");
    // Said once: its end, long after it failed, is no second failure.
    assert_eq!(master.count_lines("upgrade-failed"), 1);
    assert_eq!(live_children(master.pid()), workers);
    answered_by(address, &workers);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_shutdown_during_an_upgrade_stops_the_new_master_too() {
    let deployment = deploy("upgrade-shutdown");
    let (mut master, _, _) = deployment.start(2, &[]);
    deployment.install_script("exec sleep 60");
    let successor = upgrade(&master, master.pid());
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    assert!(!is_alive(successor));
    master.expect_tree_gone();
}

#[test]
fn a_new_master_can_be_upgraded_in_turn() {
    let deployment = deploy("upgrade-twice");
    let (mut master, address, _) = deployment.start(2, &[]);
    let first = master.pid();
    let second = upgrade(&master, first);
    master.wait_for_line(&format!("kamisama[{first}]: shutdown-finished"));
    assert_eq!(master.wait_exit_alone().code(), Some(0));
    let third = upgrade(&master, second);
    let workers = spawned_by(&master, third, 2);
    master.wait_for_line(&format!("kamisama[{second}]: shutdown-finished exit=0"));
    assert_eq!(reap_orphan(second), WaitStatus::Exited(second, 0));
    answered_by(address, &workers);
    stop_successor(third);
    master.expect_tree_gone();
}

#[test]
fn the_service_manager_is_told_of_the_new_main_process() {
    let deployment = deploy("upgrade-systemd");
    let systemd = NotifySocket::bind(scratch!("upgrade-systemd-socket").join("notify"), None);
    let (mut master, _, _) = deployment.start(2, &[("NOTIFY_SOCKET", systemd.path())]);
    let old = master.pid();
    systemd.wait_for("READY=1", 1);
    let successor = upgrade(&master, old);
    let reloading = systemd.wait_for("RELOADING=1", 1);
    let main_pid = systemd.wait_for(&format!("MAINPID={successor}"), 1);
    let ready = systemd.wait_for("READY=1", 2);
    assert_eq!((reloading.pid, main_pid.pid), (old, old));
    assert_eq!(ready.pid, successor);
    assert!(ready.at >= main_pid.at);
    // `systemctl status` says what is going on, then how it went.
    let upgrading = reloading.value("STATUS").unwrap_or_default();
    assert!(upgrading.starts_with("upgrading: "), "{reloading:?}");
    let done = ready.value("STATUS").unwrap_or_default();
    assert!(
        done.ends_with(&format!(", upgraded from master {old}")),
        "{ready:?}"
    );
    assert_eq!(master.wait_exit_alone().code(), Some(0));
    stop_successor(successor);
    systemd.wait_for("STOPPING=1", 1);
    // The old master said nothing after it handed over: no STOPPING=1 of its own, and
    // nothing from the new master before it was the main process.
    let messages = systemd.messages();
    let handed_over = messages
        .iter()
        .position(|m| m.says(&format!("MAINPID={successor}")));
    let (before, after) = messages.split_at(handed_over.unwrap() + 1);
    assert!(before.iter().all(|m| m.pid == old), "{messages:#?}");
    assert!(after.iter().all(|m| m.pid == successor), "{messages:#?}");
}

#[test]
fn as_pid_1_of_a_container_the_master_refuses_to_upgrade() {
    if !kamisama_tests::can_unshare_pid() {
        kamisama_tests::skip(
            "as_pid_1_of_a_container_the_master_refuses_to_upgrade",
            "creating a PID namespace needs util-linux's unshare and CAP_SYS_ADMIN",
        );
        return;
    }
    let deployment = deploy("upgrade-pid-1");
    let status = deployment.dir.join("status.json");
    let mut master = Master::launch_under(&["unshare", "--pid", "--fork"], &deployment.app())
        .env("KAMISAMA_LISTEN", "127.0.0.1:0")
        .env("KAMISAMA_INSTANCES", "2")
        .env("KAMISAMA_STATUS_FILE", status.to_str().unwrap())
        .start();
    spawned_by(&master, Pid::from_raw(1), 2);
    let workers = live_children(master.pid());
    master.wait_until("the fleet's status", || {
        let text = fs::read_to_string(&status).ok()?;
        text.contains("\"phase\":\"ready\"").then_some(())
    });
    master.signal(Signal::SIGUSR2);
    let failed = master.wait_for_line("kamisama[1]: upgrade-failed pid=0");
    assert!(failed.contains("PID 1"), "{failed}");
    // Refused before any new master, which the status file says too: no phase changed.
    let upgrade = master.wait_until("the refusal in the status file", || {
        let text = fs::read_to_string(&status).ok()?;
        let status: serde_json::Value = serde_json::from_str(&text).ok()?;
        (status["upgrade"]["state"] == "rolled-back").then(|| status["upgrade"].clone())
    });
    assert_eq!(upgrade["old"], 1, "{upgrade}");
    assert!(upgrade["new"].is_null(), "{upgrade}");
    assert!(
        upgrade["reason"].as_str().unwrap().contains("PID 1"),
        "{upgrade}"
    );
    assert_eq!(master.count_lines("upgrade-started"), 0);
    assert_eq!(live_children(master.pid()), workers);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

#[test]
fn the_status_file_stays_the_old_masters_until_the_hand_over() {
    let deployment = deploy("upgrade-status-kept");
    let status = deployment.dir.join("status.json");
    let settings = [
        ("KAMISAMA_STATUS_FILE", status.to_str().unwrap()),
        ("KAMISAMA_READINESS", "declared"),
        ("KAMISAMA_UPGRADE_TIMEOUT", "2"),
    ];
    let (mut master, _, _) = deployment.start(2, &settings);
    let old = master.pid();
    let read = || fs::read_to_string(&status).unwrap_or_default();
    let ready = format!("{{\"master\":{old},\"phase\":\"ready\"");
    master.wait_until("the old master's status", || {
        read().starts_with(&ready).then_some(())
    });
    // Reloading while the upgrade runs, or ready again after it: the old master's either way.
    let says = format!("{{\"master\":{old},");
    // A new binary whose workers never declare themselves ready.
    deployment.install(&fs::read(SUPERVISED).unwrap());
    let successor = upgrade(&master, old);
    spawned_by(&master, successor, 2);
    assert!(read().starts_with(&says), "{}", read());
    master.wait_for_line("upgrade-failed");
    assert!(read().starts_with(&says), "{}", read());
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    // Nothing either master wrote beside it is left.
    let files: Vec<String> = fs::read_dir(&deployment.dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.iter().all(|file| !file.contains("tmp")), "{files:?}");
}

#[test]
fn a_master_started_inside_a_symlinked_release_upgrades_to_the_release_it_now_names() {
    // The Capistrano layout: current -> releases/v1, started as ./app from inside current.
    let dir = scratch!("upgrade-symlinked-release");
    for release in ["v1", "v2"] {
        fs::create_dir_all(dir.join("releases").join(release)).unwrap();
        Deployment::new(dir.join("releases").join(release), HELLO);
    }
    std::os::unix::fs::symlink("releases/v1", dir.join("current")).unwrap();
    let current = dir.join("current");
    let mut master = Master::launch("./app")
        .current_dir(&current)
        // What the shell that started it says the working directory is.
        .env("PWD", current.to_str().unwrap())
        .env("KAMISAMA_LISTEN", "127.0.0.1:0")
        .env("KAMISAMA_INSTANCES", "1")
        .start();
    let old = master.pid();
    spawned_by(&master, old, 1);
    // The deploy: current now names v2.
    std::os::unix::fs::symlink("releases/v2", dir.join("current.new")).unwrap();
    fs::rename(dir.join("current.new"), &current).unwrap();
    let successor = upgrade(&master, old);
    let started = master.wait_for_line(&format!("kamisama[{old}]: upgrade-started"));
    assert!(started.contains("/current/app"), "{started}");
    spawned_by(&master, successor, 1);
    let running = fs::canonicalize(format!("/proc/{successor}/exe")).unwrap();
    let v2 = fs::canonicalize(dir.join("releases/v2/app")).unwrap();
    assert_eq!(running, v2);
    master.wait_for_line(&format!("kamisama[{old}]: shutdown-finished exit=0"));
    assert_eq!(master.wait_exit_alone().code(), Some(0));
    stop_successor(successor);
    master.expect_tree_gone();
}

#[test]
fn a_fleet_with_sixty_four_listeners_upgrades() {
    let deployment = deploy("upgrade-many-listeners");
    let addresses = vec!["127.0.0.1:0"; 64].join(",");
    let (mut master, _, _) = deployment.start(1, &[("KAMISAMA_LISTEN", &addresses)]);
    let old = master.pid();
    let successor = upgrade(&master, old);
    let lines = master.wait_for_lines(&format!("kamisama[{successor}]: listening address="), 64);
    assert_eq!(lines.len(), 64);
    master.wait_for_line(&format!(
        "kamisama[{old}]: upgrade-handing-over pid={successor}"
    ));
    master.wait_for_line(&format!("kamisama[{old}]: shutdown-finished exit=0"));
    assert_eq!(master.wait_exit_alone().code(), Some(0));
    stop_successor(successor);
    master.expect_tree_gone();
}

#[test]
fn a_new_binary_that_cannot_be_run_is_rolled_back_with_the_reason() {
    let deployment = deploy("upgrade-not-runnable");
    let (mut master, address, workers) = deployment.start(1, &[]);
    // Not executable, then not there at all.
    use std::os::unix::fs::PermissionsExt;
    let app = deployment.dir.join("app");
    fs::set_permissions(&app, fs::Permissions::from_mode(0o644)).unwrap();
    let first = upgrade(&master, master.pid());
    let failed = master.wait_for_line("upgrade-failed");
    assert!(failed.contains("cannot run"), "{failed}");
    assert!(failed.contains("Permission denied"), "{failed}");
    // One upgrade at a time: the next once the first new master is gone.
    master.wait_for_line(&format!("reaped pid={first}"));
    fs::remove_file(&app).unwrap();
    upgrade(&master, master.pid());
    let failed = master.wait_for_lines("upgrade-failed", 2).remove(1);
    assert!(failed.contains("No such file or directory"), "{failed}");
    answered_by(address, &workers);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_rolled_back_master_gets_term_at_the_upgrade_timeout() {
    // The new fleet's worker 0 keeps crashing (with a long backoff): never ready, rolled
    // back at upgrade_timeout, not sooner and not much later; TERM lets the new master stop
    // its own workers and exit 0.
    let deployment = deploy("upgrade-rollback-term");
    let status = deployment.dir.join("status.json");
    let settings = [
        ("FIXTURE", "crash-index-0"),
        ("KAMISAMA_BACKOFF_MAX", "30"),
        ("KAMISAMA_RESPAWN_LIMIT", "100"),
        ("KAMISAMA_UPGRADE_TIMEOUT", "2"),
        ("KAMISAMA_STATUS_FILE", status.to_str().unwrap()),
    ];
    let (mut master, _, _) = deployment.start(2, &settings);
    let old = master.pid();
    deployment.install(&fs::read(SUPERVISED).unwrap());
    let sent = std::time::Instant::now();
    let successor = upgrade(&master, old);
    // The old master's status file says where the upgrade stands, then how it ended.
    let upgrade_in = |state: &'static str| {
        master.wait_until(state, || {
            let text = fs::read_to_string(&status).ok()?;
            let status: serde_json::Value = serde_json::from_str(&text).ok()?;
            let upgrade = &status["upgrade"];
            (upgrade["state"] == state
                && upgrade["old"] == old.as_raw()
                && upgrade["new"] == successor.as_raw())
            .then(|| upgrade.clone())
        })
    };
    let in_progress = upgrade_in("in-progress");
    assert!(in_progress["reason"].is_null(), "{in_progress}");
    // The deploy command will not start a second one meanwhile.
    let said = kamisama_upgrade(&status);
    let stderr = String::from_utf8_lossy(&said.stderr);
    assert_eq!(said.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("upgrading already"), "{stderr}");
    let failed = master.wait_for_line("upgrade-failed");
    let took = sent.elapsed();
    assert!(failed.contains("not ready within 2s"), "{failed}");
    assert!(
        took >= std::time::Duration::from_secs(2),
        "rolled back after {took:?}"
    );
    assert!(
        took < std::time::Duration::from_millis(2800),
        "rolled back after {took:?}"
    );
    let rolled_back = upgrade_in("rolled-back");
    assert_eq!(
        rolled_back["reason"],
        "the new fleet was not ready within 2s"
    );
    let reaped = master.wait_for_line(&format!("reaped pid={successor}"));
    assert_eq!(field(&reaped, "status"), Some("0"), "{reaped}");
    master.expect_lines(
        &format!("kamisama[{successor}]: shutdown-started signal=SIGTERM"),
        1,
    );
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_term_to_both_masters_during_an_upgrade_is_one_graceful_shutdown() {
    // As `pkill app` sends it, the old master first: it stops the new master as it stops all
    // it started, and the operator's TERM reaches the new one after that. Neither is the
    // second TERM that forces a shutdown.
    let deployment = deploy("upgrade-pkill");
    let settings = [
        ("KAMISAMA_READINESS", "declared"),
        ("KAMISAMA_SHUTDOWN_TIMEOUT", "2"),
        // The new binary's workers take their whole shutdown timeout.
        ("FIXTURE", "ignore-term"),
    ];
    let (mut master, _, _) = deployment.start(2, &settings);
    deployment.install(&fs::read(SUPERVISED).unwrap());
    let old = master.pid();
    let successor = upgrade(&master, old);
    spawned_by(&master, successor, 2);
    nix::sys::signal::kill(old, Signal::SIGTERM).unwrap();
    master.wait_for_line(&format!("kamisama[{successor}]: shutdown-started"));
    nix::sys::signal::kill(successor, Signal::SIGTERM).unwrap();
    master.wait_for_line(&format!("kamisama[{successor}]: shutdown-requested"));
    master.expect_exit_code(0);
    master.expect_tree_gone();
    master.expect_lines("shutdown-forced", 0);
}

#[test]
fn workers_added_or_retired_by_signals_carry_over_an_upgrade() {
    let deployment = deploy("upgrade-scaled");
    let (mut master, _, _) = deployment.start(2, &[]);
    let old = master.pid();
    master.signal(Signal::SIGTTIN);
    master.wait_for_line("scaled-up instances=3");
    spawned_by(&master, old, 3);
    let successor = upgrade(&master, old);
    let started = master.wait_for_line(&format!("kamisama[{successor}]: started"));
    assert_eq!(field(&started, "instances"), Some("3"), "{started}");
    spawned_by(&master, successor, 3);
    master.wait_for_line(&format!("kamisama[{old}]: shutdown-finished exit=0"));
    assert_eq!(master.wait_exit_alone().code(), Some(0));
    stop_successor(successor);
    master.expect_tree_gone();
}

#[test]
fn a_new_binary_still_open_for_writing_is_run_once_it_is_closed() {
    // A deploy that renames the file in place before it has closed it (or any process that
    // forked meanwhile and holds the descriptor): exec fails with ETXTBSY for a moment.
    let deployment = deploy("upgrade-text-busy");
    let (mut master, _, _) = deployment.start(1, &[]);
    let old = master.pid();
    let new = deployment.dir.join("app.new");
    let mut writing = fs::File::create(&new).unwrap();
    std::io::Write::write_all(&mut writing, &fs::read(HELLO).unwrap()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&new, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&new, deployment.dir.join("app")).unwrap();
    let successor = upgrade(&master, old);
    std::thread::sleep(std::time::Duration::from_millis(200));
    drop(writing);
    spawned_by(&master, successor, 1);
    master.wait_for_line(&format!(
        "kamisama[{old}]: upgrade-handing-over pid={successor}"
    ));
    master.wait_for_line(&format!("kamisama[{old}]: shutdown-finished exit=0"));
    assert_eq!(master.wait_exit_alone().code(), Some(0));
    stop_successor(successor);
    master.expect_tree_gone();
}

/// The pid a line's `key=` names.
fn pid_in(line: &str, key: &str) -> Pid {
    let pid = field(line, key).and_then(|pid| pid.parse().ok());
    Pid::from_raw(pid.unwrap_or_else(|| panic!("no {key} in {line:?}")))
}

#[test]
fn a_release_that_crashes_on_its_first_requests_is_rolled_back_within_its_trial() {
    // The release of the outside run's fourth question: its fleet declares itself ready, then
    // each worker exits on its first request. Deployed under load with `kamisama-upgrade`,
    // as `systemctl reload` would.
    let deployment = deploy("upgrade-trial-crash");
    let status = deployment.dir.join("status.json");
    let systemd = NotifySocket::bind(scratch!("upgrade-trial-crash-socket").join("notify"), None);
    let settings = [
        ("KAMISAMA_STATUS_FILE", status.to_str().unwrap()),
        ("NOTIFY_SOCKET", systemd.path()),
        ("KAMISAMA_UPGRADE_TRIAL", "30"),
    ];
    let (mut master, address, workers) = deployment.start(4, &settings);
    let old = master.pid();
    systemd.wait_for("READY=1", 1);
    let load = Load::start(address, 8, false);
    load.wait_for(500);
    deployment.install(&fs::read(BAD_RELEASE).unwrap());
    let said = kamisama_upgrade(&status);
    let stderr = String::from_utf8_lossy(&said.stderr);
    assert_eq!(said.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("failed its trial: worker "), "{stderr}");
    let successor = pid_in(
        &master.wait_for_line(&format!("kamisama[{old}]: upgrade-started")),
        "pid",
    );
    master.wait_for_line(&format!(
        "kamisama[{old}]: upgrade-trial pid={successor} for=30s"
    ));
    let failed = master.wait_for_line(&format!("kamisama[{old}]: upgrade-failed pid={successor}"));
    assert!(failed.contains("exited (70)"), "{failed}");
    master.wait_for_line(&format!("kamisama[{successor}]: upgrade-trial-failed"));
    // The old master forked its fleet again, and stopped and reaped the new master.
    let again: Pids = master
        .wait_for_lines(&format!("kamisama[{old}]: spawned index="), 8)
        .iter()
        .skip(4)
        .map(|line| pid_in(line, "pid").as_raw() as u32)
        .collect();
    master.wait_for_line(&format!("kamisama[{old}]: reaped pid={successor} status=1"));
    assert_eq!(live_children(old), again);
    // Ready again once the fleet forked again is, not before.
    master.wait_for_lines(&format!("kamisama[{old}]: ready workers=4"), 2);
    master.expect_lines("ready workers=0", 0);
    load.wait_for(500);
    let tally = load.stop();
    // One failed request per worker of the new release at most, the one it crashed on: its
    // master stops the others at the first crash, and the queue keeps what nobody accepted.
    // (The servers bench weighs them against the requests answered before.)
    assert!(tally.failed() <= 4, "{tally:?}");
    let crashed = *tally
        .failures
        .iter()
        .min()
        .expect("a request the new release failed");
    let again_at = tally
        .answers
        .iter()
        .filter(|(_, worker)| again.contains(worker))
        .map(|(at, _)| *at)
        .min()
        .expect("answers from the fleet forked again");
    let outage = again_at.saturating_duration_since(crashed);
    eprintln!("answered again {outage:?} after the first crash");
    assert!(outage < Duration::from_secs(1), "{outage:?}");
    assert!(tally
        .answers
        .iter()
        .all(|(_, worker)| workers.contains(worker) || again.contains(worker)));
    // The old master stayed the main process; systemd heard a reload that ended.
    let messages = systemd.messages();
    assert!(
        messages
            .iter()
            .all(|m| m.pid == old && m.value("MAINPID").is_none()),
        "{messages:#?}"
    );
    let trial = systemd
        .wait_for_status(|status| status == format!("upgrade on trial: master {successor} serves"));
    let ready = systemd.wait_for("READY=1", 2);
    assert!(ready.at > trial.at);
    let rolled_back = ready.value("STATUS").unwrap_or_default();
    assert!(
        rolled_back.ends_with(", last upgrade rolled back"),
        "{ready:?}"
    );
    // The status file is the old master's again, and says why.
    let text = fs::read_to_string(&status).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["master"], old.as_raw(), "{text}");
    assert_eq!(json["upgrade"]["state"], "rolled-back", "{text}");
    assert_eq!(json["upgrade"]["new"], successor.as_raw(), "{text}");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

#[test]
fn a_release_that_passes_its_trial_takes_over_once_the_trial_is_over() {
    // The default trial: ten seconds.
    let deployment = deploy("upgrade-trial-passes");
    let status = deployment.dir.join("status.json");
    let systemd = NotifySocket::bind(scratch!("upgrade-trial-passes-socket").join("notify"), None);
    let settings = [
        ("KAMISAMA_STATUS_FILE", status.to_str().unwrap()),
        ("NOTIFY_SOCKET", systemd.path()),
        // Unset: the default.
        ("KAMISAMA_UPGRADE_TRIAL", ""),
    ];
    let (mut master, address, _) = deployment.start(2, &settings);
    let old = master.pid();
    systemd.wait_for("READY=1", 1);
    let load = Load::start(address, 4, false);
    load.wait_for(100);
    deployment.install(&fs::read(HELLO).unwrap());
    let successor = upgrade(&master, old);
    let workers = spawned_by(&master, successor, 2);
    master.wait_for_line(&format!(
        "kamisama[{old}]: upgrade-trial pid={successor} for=10s"
    ));
    let trial = systemd
        .wait_for_status(|status| status == format!("upgrade on trial: master {successor} serves"));
    // On trial: the old master stays, with no worker left, the new fleet serves, and the
    // status file is the new master's.
    master.wait_until("the old workers to be gone", || {
        (live_children(old) == Pids::from([successor.as_raw() as u32])).then_some(())
    });
    let text = master.wait_until("the new master's status file", || {
        let text = fs::read_to_string(&status).ok()?;
        text.starts_with(&format!("{{\"master\":{successor},"))
            .then_some(text)
    });
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["upgrade"]["state"], "trial", "{text}");
    assert_eq!(json["upgrade"]["old"], old.as_raw(), "{text}");
    // One upgrade at a time: USR2 to either master now is refused.
    master.signal(Signal::SIGUSR2);
    master.wait_for_line(&format!("kamisama[{old}]: upgrade-busy"));
    nix::sys::signal::kill(successor, Signal::SIGUSR2).unwrap();
    master.wait_for_line(&format!("kamisama[{successor}]: upgrade-busy"));
    answered_by(address, &workers);
    // Handed over at the trial's end, not before, and not much after.
    let main_pid = systemd.wait_for(&format!("MAINPID={successor}"), 1);
    assert_eq!(main_pid.pid, old);
    let waited = main_pid.at - trial.at;
    assert!(waited >= Duration::from_millis(9_900), "{waited:?}");
    assert!(waited < Duration::from_secs(13), "{waited:?}");
    assert_eq!(master.wait_exit_alone().code(), Some(0));
    master.wait_for_line(&format!("kamisama[{successor}]: upgrade-done old={old}"));
    let done = systemd.wait_for("READY=1", 2);
    assert_eq!(done.pid, successor);
    let tally = load.stop();
    assert_eq!(tally.failed(), 0, "{tally:?}");
    master.wait_until("the status file to say done", || {
        let text = fs::read_to_string(&status).ok()?;
        text.contains("\"state\":\"done\"").then_some(())
    });
    assert_eq!(master.count_lines("upgrade-failed"), 0);
    stop_successor(successor);
}

#[test]
fn a_new_master_killed_during_its_trial_is_rolled_back() {
    let deployment = deploy("upgrade-trial-killed");
    let settings = [("KAMISAMA_UPGRADE_TRIAL", "30")];
    let (mut master, address, _) = deployment.start(2, &settings);
    let old = master.pid();
    let successor = upgrade(&master, old);
    let new_workers = spawned_by(&master, successor, 2);
    master.wait_for_line(&format!("kamisama[{old}]: upgrade-trial pid={successor}"));
    nix::sys::signal::kill(successor, Signal::SIGKILL).unwrap();
    let failed = master.wait_for_line(&format!("kamisama[{old}]: upgrade-failed pid={successor}"));
    assert!(
        failed.contains("exited (SIGKILL) during its trial"),
        "{failed}"
    );
    let again: Pids = master
        .wait_for_lines(&format!("kamisama[{old}]: spawned index="), 4)
        .iter()
        .skip(2)
        .map(|line| pid_in(line, "pid").as_raw() as u32)
        .collect();
    // The new workers went with their master (each serving what it had taken), and the
    // old release serves alone.
    master.wait_until("the new workers to be gone", || {
        new_workers
            .iter()
            .all(|pid| !is_alive(Pid::from_raw(*pid as i32)))
            .then_some(())
    });
    answered_by(address, &again);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

#[test]
fn a_new_master_stopped_during_its_trial_hands_back_to_the_old_one() {
    let deployment = deploy("upgrade-trial-stopped");
    let status = deployment.dir.join("status.json");
    let settings = [
        ("KAMISAMA_UPGRADE_TRIAL", "30"),
        ("KAMISAMA_STATUS_FILE", status.to_str().unwrap()),
    ];
    let (mut master, address, _) = deployment.start(2, &settings);
    let old = master.pid();
    let successor = upgrade(&master, old);
    spawned_by(&master, successor, 2);
    master.wait_for_line(&format!("kamisama[{old}]: upgrade-trial pid={successor}"));
    nix::sys::signal::kill(successor, Signal::SIGTERM).unwrap();
    let said = master.wait_for_line(&format!("kamisama[{successor}]: upgrade-trial-failed"));
    assert!(said.contains("the new master got SIGTERM"), "{said}");
    master.wait_for_line(&format!("kamisama[{old}]: upgrade-failed pid={successor}"));
    // Stopped as asked: exit status 0.
    master.wait_for_line(&format!("kamisama[{old}]: reaped pid={successor} status=0"));
    let again: Pids = master
        .wait_for_lines(&format!("kamisama[{old}]: spawned index="), 4)
        .iter()
        .skip(2)
        .map(|line| pid_in(line, "pid").as_raw() as u32)
        .collect();
    answered_by(address, &again);
    // The new master wrote its last status before it said so: the file is the old one's.
    let text = master.wait_until("the old master's status file", || {
        let text = fs::read_to_string(&status).ok()?;
        let ready = format!("{{\"master\":{old},\"phase\":\"ready\"");
        text.starts_with(&ready).then_some(text)
    });
    assert!(text.contains("\"state\":\"rolled-back\""), "{text}");
    master.expect_lines(&format!("kamisama[{successor}]: upgrade-done"), 0);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

#[test]
fn a_job_fleet_whose_new_release_fails_its_first_jobs_is_rolled_back_within_its_trial() {
    let deployment = Deployment::new(scratch!("upgrade-trial-jobs"), SUPERVISED);
    let status = deployment.dir.join("status.json");
    let mut master = Master::launch(&deployment.app())
        .env("KAMISAMA_INSTANCES", "2")
        .env("KAMISAMA_STATUS_FILE", status.to_str().unwrap())
        .env("KAMISAMA_UPGRADE_TRIAL", "30")
        .start();
    let old = master.pid();
    spawned_by(&master, old, 2);
    // Without listeners, the bad release's workers fail their first job once on trial.
    deployment.install(&fs::read(BAD_RELEASE).unwrap());
    let successor = upgrade(&master, old);
    master.wait_for_line(&format!("kamisama[{old}]: upgrade-trial pid={successor}"));
    let failed = master.wait_for_line(&format!("kamisama[{old}]: upgrade-failed pid={successor}"));
    assert!(failed.contains("failed its trial: worker "), "{failed}");
    assert!(failed.contains("exited (70)"), "{failed}");
    let again: Pids = master
        .wait_for_lines(&format!("kamisama[{old}]: spawned index="), 4)
        .iter()
        .skip(2)
        .map(|line| pid_in(line, "pid").as_raw() as u32)
        .collect();
    master.wait_for_line(&format!("kamisama[{old}]: reaped pid={successor} status=1"));
    assert_eq!(live_children(old), again);
    let text = master.wait_until("the old master's status file", || {
        let text = fs::read_to_string(&status).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        (json["master"] == old.as_raw() && json["upgrade"]["state"] == "rolled-back")
            .then_some(text)
    });
    assert!(text.contains("\"running\":2"), "{text}");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}
