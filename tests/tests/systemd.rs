//! Speaking systemd's notification protocol. A datagram socket in the test stands in for
//! systemd: it hears `READY=1` only once every worker is ready, `RELOADING=1` and `READY=1`
//! around a rolling restart, `STOPPING=1` at a shutdown, a current `STATUS=`, and watchdog
//! pings only while no worker is hung; every message comes from the master, and no worker
//! inherits the variables.

use kamisama_tests::{scratch, Master, NotifySocket};
use nix::sys::signal::{kill, Signal};
use std::time::Duration;

const DECLARED: &str = env!("CARGO_BIN_EXE_declared");
const SUPERVISED: &str = env!("CARGO_BIN_EXE_supervised");
const HEARTBEATS: &str = env!("CARGO_BIN_EXE_heartbeats");

#[test]
fn declared_readiness_waits_for_the_last_worker() {
    let witnesses = scratch!("systemd-last-ready");
    let systemd = NotifySocket::bind(
        scratch!("systemd-last-ready-socket").join("notify"),
        Some(witnesses.clone()),
    );
    // Ready after 100, 600 and 1100 ms.
    let mut master = Master::launch(DECLARED)
        .env("NOTIFY_SOCKET", systemd.path())
        .env("READY_DIR", witnesses.to_str().unwrap())
        .env("READY_MS", "100")
        .env("READY_STEP_MS", "500")
        .start();
    let ready = systemd.wait_for("READY=1", 1);
    assert_eq!(ready.witnesses, 3, "{ready:?}");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn declared_readiness_reloading_and_stopping_are_told_in_order() {
    let witnesses = scratch!("systemd-declared");
    let systemd = NotifySocket::bind(
        scratch!("systemd-declared-socket").join("notify"),
        Some(witnesses.clone()),
    );
    let launched = std::time::Instant::now();
    let mut master = Master::launch(DECLARED)
        .env("NOTIFY_SOCKET", systemd.path())
        .env("READY_DIR", witnesses.to_str().unwrap())
        .start();
    // Each of the three workers had declared itself ready when the fleet was, after its
    // 300 ms of start-up (`Worker::sleep`, which a stop would cut short, and nothing else).
    let ready = systemd.wait_for("READY=1", 1);
    assert_eq!(ready.witnesses, 3, "{ready:?}");
    assert!(
        ready.at - launched >= Duration::from_millis(300),
        "{ready:?}"
    );
    master.wait_for_workers(3);
    // What a worker and anything it runs see; /proc/PID/environ keeps the block as it was
    // at exec, which the master leaves untouched.
    master.wait_for_lines("notify-socket=", 3);
    master.expect_lines("notify-socket=unset", 3);
    master.signal(Signal::SIGHUP);
    let reloading = systemd.wait_for("RELOADING=1", 1);
    let usec: u64 = reloading.value("MONOTONIC_USEC").unwrap().parse().unwrap();
    let now = kamisama_tests::bench::monotonic_nanos() / 1000;
    assert!(
        usec <= now && now - usec < 60_000_000,
        "{usec} against {now}"
    );
    // The rolling restart waited for each replacement to be ready before the next.
    let ready_again = systemd.wait_for("READY=1", 2);
    assert_eq!(ready_again.witnesses, 6, "{ready_again:?}");
    master.wait_for_line("rolling-restart-finished");
    master.signal(Signal::SIGTERM);
    let stopping = systemd.wait_for("STOPPING=1", 1);
    assert_eq!(stopping.value("STATUS"), Some("stopping: 3 workers left"));
    master.expect_exit_code(0);
    let messages = systemd.messages();
    let told: Vec<&str> = messages
        .iter()
        .flat_map(|message| message.text.lines())
        .filter(|line| ["READY=1", "RELOADING=1", "STOPPING=1"].contains(line))
        .collect();
    assert_eq!(told, ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]);
    assert!(
        messages.iter().all(|message| message.pid == master.pid()),
        "{messages:#?}"
    );
}

#[test]
fn forked_readiness_comes_once_every_worker_is_forked_and_status_counts_respawns() {
    let systemd = NotifySocket::bind(scratch!("systemd-forked").join("notify"), None);
    let mut master = Master::launch(SUPERVISED)
        .env("NOTIFY_SOCKET", systemd.path())
        .env("KAMISAMA_INSTANCES", "5")
        .start();
    let ready = systemd.wait_for("READY=1", 1);
    assert_eq!(ready.children, 5, "{ready:?}");
    let workers = master.wait_for_workers(5);
    // The master's socket to systemd is its own: no worker holds it.
    let sockets = |pid: nix::unistd::Pid| -> Vec<String> {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
        fds.flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .map(|link| link.to_string_lossy().into_owned())
            .filter(|link| link.starts_with("socket:"))
            .collect()
    };
    let own = sockets(master.pid());
    assert!(!own.is_empty());
    for worker in workers.values() {
        let shared: Vec<_> = sockets(*worker)
            .into_iter()
            .filter(|s| own.contains(s))
            .collect();
        assert!(shared.is_empty(), "worker {worker} holds {shared:?}");
    }
    kill(workers[&2], Signal::SIGKILL).unwrap();
    master.wait_for_line("respawning index=2");
    let status = |messages: Vec<kamisama_tests::Notification>| {
        messages
            .iter()
            .filter_map(|message| message.value("STATUS").map(str::to_owned))
            .next_back()
    };
    master.wait_until("the status to count the respawn", || {
        let now = status(systemd.messages())?;
        (now == "5/5 workers running, 1 respawn in the last 60s").then_some(())
    });
    // A fleet that lost a worker and got it back was ready all along: READY=1 came once.
    let readies = systemd
        .messages()
        .iter()
        .filter(|m| m.says("READY=1"))
        .count();
    assert_eq!(readies, 1, "{:#?}", systemd.messages());
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn watchdog_pings_stop_while_a_worker_is_hung() {
    let systemd = NotifySocket::bind(scratch!("systemd-watchdog").join("notify"), None);
    let mut master = Master::launch(HEARTBEATS)
        .env("NOTIFY_SOCKET", systemd.path())
        .env("WATCHDOG_USEC", "200000")
        .env("KAMISAMA_TIMEOUT", "1")
        .env("HANG", "0")
        .env("IGNORE_ABRT", "1")
        .start();
    systemd.wait_for("WATCHDOG=1", 5);
    // Every half of WATCHDOG_USEC: the median gap between the first pings, which a loaded
    // machine may stretch now and then, is well under the whole of it.
    let mut gaps: Vec<Duration> = systemd
        .messages()
        .iter()
        .filter(|message| message.says("WATCHDOG=1"))
        .take(5)
        .collect::<Vec<_>>()
        .windows(2)
        .map(|pair| pair[1].at - pair[0].at)
        .collect();
    gaps.sort_unstable();
    assert!(
        gaps[gaps.len() / 2] < Duration::from_millis(180),
        "{gaps:?}"
    );
    // Hung, it ignores the hang signal and lives a second more, until SIGKILL.
    master.wait_for_line("hung index=0");
    master.wait_for_line("status=SIGKILL");
    let pings_before = systemd
        .messages()
        .iter()
        .filter(|message| message.says("WATCHDOG=1"))
        .count();
    systemd.wait_for("WATCHDOG=1", pings_before + 3);
    let pings: Vec<_> = systemd
        .messages()
        .into_iter()
        .filter(|message| message.says("WATCHDOG=1"))
        .collect();
    // Every 100 ms, but for about the second the worker was hung.
    let longest = pings
        .windows(2)
        .map(|pair| pair[1].at - pair[0].at)
        .max()
        .unwrap();
    assert!(longest >= Duration::from_millis(700), "{longest:?}");
    let messages = systemd.messages();
    let hung_at = messages
        .iter()
        .position(|m| m.value("STATUS").is_some_and(|s| s.ends_with(", 1 hung")));
    let first_ping = messages.iter().position(|m| m.says("WATCHDOG=1"));
    // Pings came while the fleet was healthy, before the worker was hung.
    assert!(
        first_ping.is_some() && first_ping < hung_at,
        "{messages:#?}"
    );
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

/// Runs a fleet with the watchdog variables `watchdog`, which ask for no ping from it, and
/// checks that none comes.
fn no_watchdog(name: &str, watchdog: &[(&str, &str)]) {
    let systemd = NotifySocket::bind(scratch!(name).join("notify"), None);
    let mut launch = Master::launch(SUPERVISED)
        .env("NOTIFY_SOCKET", systemd.path())
        .env("KAMISAMA_INSTANCES", "2");
    for (key, value) in watchdog {
        launch = launch.env(key, value);
    }
    let mut master = launch.start();
    systemd.wait_for("READY=1", 1);
    // Three turns of the loop at least, a good many pings' worth of time.
    master.signal(Signal::SIGTTIN);
    master.wait_for_workers(3);
    master.signal(Signal::SIGTERM);
    let stopping = systemd.wait_for("STOPPING=1", 1);
    assert_eq!(stopping.value("STATUS"), Some("stopping: 3 workers left"));
    master.expect_exit_code(0);
    let messages = systemd.messages();
    assert!(
        !messages.iter().any(|m| m.says("WATCHDOG=1")),
        "{messages:#?}"
    );
}

#[test]
fn a_watchdog_meant_for_another_process_is_left_alone() {
    no_watchdog(
        "systemd-other-pid",
        &[("WATCHDOG_USEC", "100000"), ("WATCHDOG_PID", "1")],
    );
}

#[test]
fn a_watchdog_of_zero_microseconds_is_off() {
    no_watchdog("systemd-zero-watchdog", &[("WATCHDOG_USEC", "0")]);
}

#[test]
fn an_upgrade_descriptor_that_is_not_open_is_no_upgrade() {
    // A stray KAMISAMA_UPGRADE_FD naming no open descriptor: the master is no new master
    // waiting for an old one to hand over, and tells systemd it is ready as any other.
    let systemd = NotifySocket::bind(scratch!("systemd-stray-upgrade-fd").join("notify"), None);
    let mut master = Master::launch(SUPERVISED)
        .env("NOTIFY_SOCKET", systemd.path())
        .env("KAMISAMA_UPGRADE", "fd=99,master=1,pipe=1")
        .start();
    systemd.wait_for("READY=1", 1);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn the_watchdog_is_pinged_as_soon_as_a_hang_is_dealt_with() {
    // Pings every second; a hang withholds them for the second of its grace, and must not
    // leave the next one a whole interval later: the fleet healthy again pings at once.
    let systemd = NotifySocket::bind(scratch!("systemd-watchdog-heal").join("notify"), None);
    let mut master = Master::launch(HEARTBEATS)
        .env("NOTIFY_SOCKET", systemd.path())
        .env("WATCHDOG_USEC", "2000000")
        .env("KAMISAMA_TIMEOUT", "1")
        .env("HANG", "0")
        .env("IGNORE_ABRT", "1")
        .start();
    systemd.wait_for("WATCHDOG=1", 1);
    master.wait_for_line("hung index=0");
    master.wait_for_line("respawning index=0");
    let healed = master.wait_until("a message once the hang is over", || {
        let messages = systemd.messages();
        let hung = messages
            .iter()
            .position(|m| m.value("STATUS").is_some_and(|s| s.ends_with(" hung")))?;
        messages[hung..]
            .iter()
            .find(|m| m.value("STATUS").is_some_and(|s| !s.ends_with(" hung")))
            .cloned()
    });
    assert!(healed.says("WATCHDOG=1"), "{:#?}", systemd.messages());
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_watchdog_of_one_microsecond_does_not_make_the_master_spin() {
    let systemd = NotifySocket::bind(scratch!("systemd-watchdog-tiny").join("notify"), None);
    let mut master = Master::launch(SUPERVISED)
        .env("NOTIFY_SOCKET", systemd.path())
        .env("WATCHDOG_USEC", "1")
        .env("KAMISAMA_INSTANCES", "1")
        .start();
    systemd.wait_for("WATCHDOG=1", 2);
    let first = systemd.wait_for("WATCHDOG=1", 1).at;
    let last = systemd.wait_for("WATCHDOG=1", 21).at;
    // At most one ping every 10 ms, however small the interval asked for: twenty gaps take
    // 200 ms at least. The times are when this test read each ping, and a first one read
    // late on a loaded machine shortens the span: 40 ms of it are allowed for that. A master
    // that spins sends them within a millisecond.
    assert!(
        last - first >= Duration::from_millis(160),
        "twenty-one pings in {:?}",
        last - first
    );
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn no_worker_passes_the_service_managers_variables_on() {
    let systemd = NotifySocket::bind(scratch!("systemd-worker-env").join("notify"), None);
    let mut master = Master::launch(SUPERVISED)
        .env("NOTIFY_SOCKET", systemd.path())
        .env("WATCHDOG_USEC", "5000000")
        .env("KAMISAMA_INSTANCES", "2")
        .env("FIXTURE", "exec-probe")
        .env("PROBE", env!("CARGO_BIN_EXE_inherited"))
        .start();
    systemd.wait_for("READY=1", 1);
    for line in master.wait_for_lines("inherited by=", 2) {
        kamisama_tests::Inherited::parse(&line)
            .unwrap()
            .assert_clean();
    }
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_stray_upgrade_variable_naming_an_open_descriptor_is_no_upgrade() {
    // Descriptor 1 is open (a pipe to the test, as the write end an upgrade hands over is),
    // and the test process is the master's parent: only the inode is wrong, and that is
    // enough for the master to start as any other, ready and telling systemd so.
    let systemd = NotifySocket::bind(scratch!("systemd-stray-upgrade").join("notify"), None);
    let variable = format!("fd=1,master={},pipe=1", std::process::id());
    let mut master = Master::launch(SUPERVISED)
        .env("NOTIFY_SOCKET", systemd.path())
        .env("KAMISAMA_UPGRADE", &variable)
        .env("KAMISAMA_UPGRADE_FD", "1")
        .start();
    systemd.wait_for("READY=1", 1);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    // Nothing was written on descriptor 1 as if to an old master: a readiness byte there
    // would start a line of the transcript.
    let transcript = master.transcript();
    assert!(
        transcript.lines().all(|line| !line.starts_with('R')),
        "{transcript}"
    );
}

#[test]
fn a_worker_not_ready_within_its_boot_allowance_is_treated_as_hung() {
    // A rolling restart whose replacement never declares itself ready would wait for ever,
    // and systemd with it (RELOADING=1): boot_timeout bounds it.
    let witnesses = scratch!("systemd-not-ready");
    let slow = scratch!("systemd-not-ready-flag").join("slow");
    let systemd = NotifySocket::bind(scratch!("systemd-not-ready-socket").join("notify"), None);
    let mut master = Master::launch(DECLARED)
        .env("NOTIFY_SOCKET", systemd.path())
        .env("READY_DIR", witnesses.to_str().unwrap())
        .env("SLOW_READY_FILE", slow.to_str().unwrap())
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_BOOT_TIMEOUT", "1")
        .env("KAMISAMA_RESPAWN_LIMIT", "10")
        .start();
    systemd.wait_for("READY=1", 1);
    std::fs::write(&slow, b"").unwrap();
    master.signal(Signal::SIGHUP);
    let spawned = master.wait_for_lines("spawned index=0", 2).remove(1);
    let forked = std::time::Instant::now();
    let replacement = kamisama_tests::field(&spawned, "pid").unwrap().to_owned();
    let not_ready = master.wait_for_line(&format!("not-ready index=0 pid={replacement}"));
    let took = forked.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "{not_ready} {took:?} after the fork"
    );
    assert!(
        took < Duration::from_millis(2500),
        "{not_ready} {took:?} after the fork"
    );
    master.wait_for_line(&format!("exited index=0 pid={replacement} status=SIGABRT"));
    master.wait_for_line("respawning index=0 respawns=1");
    // Once start-up is quick again, the next replacement is ready and the restart ends.
    std::fs::remove_file(&slow).unwrap();
    master.wait_for_line("rolling-restart-finished");
    systemd.wait_for("READY=1", 2);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_rolling_restart_before_the_fleet_was_ever_ready_is_no_reload() {
    let witnesses = scratch!("systemd-early-hup");
    let systemd = NotifySocket::bind(scratch!("systemd-early-hup-socket").join("notify"), None);
    let mut master = Master::launch(DECLARED)
        .env("NOTIFY_SOCKET", systemd.path())
        .env("READY_DIR", witnesses.to_str().unwrap())
        .env("READY_MS", "500")
        .start();
    master.wait_for_workers(3);
    master.signal(Signal::SIGHUP);
    master.wait_for_line("rolling-restart-finished");
    systemd.wait_for("READY=1", 1);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    let told: Vec<String> = systemd
        .messages()
        .iter()
        .flat_map(|message| message.text.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|line| ["READY=1", "RELOADING=1", "STOPPING=1"].contains(&line.as_str()))
        .collect();
    assert_eq!(told, ["READY=1", "STOPPING=1"]);
}
