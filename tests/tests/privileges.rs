//! Least privilege: workers that run as another user, within limits, more killable than the
//! master, on their CPUs; and a master that keeps its own identity and refuses, before its
//! first fork, what it could not give. Checked through /proc: a worker's ids, groups,
//! `NoNewPrivs`, limits, `oom_score_adj` and `Cpus_allowed_list`.
//!
//! Changing identity needs root: these tests say they were skipped elsewhere (CI runs as root).

use kamisama_tests::deployment::{spawned_by, upgrade, Deployment};
use kamisama_tests::load::Load;
use kamisama_tests::{field, reap_orphan, scratch, skip, Master, NotifySocket};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use std::collections::BTreeSet;
use std::fs;

const CONFINED: &str = env!("CARGO_BIN_EXE_confined");
const SUPERVISED: &str = env!("CARGO_BIN_EXE_supervised");
const HEARTBEATS: &str = env!("CARGO_BIN_EXE_heartbeats");
const HELLO: &str = env!("CARGO_BIN_EXE_hello-server");

/// Whether the test runs as root, said as a skip otherwise.
fn as_root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        skip(test, "changing a worker's user needs root");
    }
    root
}

/// The value of `key` in `/proc/PID/status`, its words separated by one space.
fn status(pid: u32, key: &str) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in the status of {pid}"));
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The soft and hard values of the limit `name` in `/proc/PID/limits`, as `SOFT HARD`.
fn limit(pid: u32, name: &str) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in the limits of {pid}"));
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn oom_score_adj(pid: u32) -> i32 {
    let text = fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    text.trim().parse().unwrap()
}

/// The `confined` lines of `count` workers: index, pid, and whether `setuid(0)` worked.
fn confined(master: &Master, count: usize) -> Vec<(usize, u32, bool)> {
    let lines = master.wait_for_lines("confined index=", count);
    let mut workers: Vec<(usize, u32, bool)> = lines
        .iter()
        .map(|line| {
            let number = |key| field(line, key).unwrap().parse::<u64>().unwrap();
            let regained = field(line, "regained_root").unwrap() == "true";
            (number("index") as usize, number("pid") as u32, regained)
        })
        .collect();
    workers.sort_unstable();
    workers
}

/// The groups `id -G` gives `user`: its own first, then those it is a member of.
fn groups_of(user: &str) -> Vec<u32> {
    let output = std::process::Command::new("id")
        .args(["-G", user])
        .output()
        .expect("id");
    let text = String::from_utf8(output.stdout).unwrap();
    text.split_whitespace()
        .map(|id| id.parse().unwrap())
        .collect()
}

/// `/proc`'s list of groups as a set.
fn group_set(list: &str) -> BTreeSet<u32> {
    list.split_whitespace()
        .map(|id| id.parse().unwrap())
        .collect()
}

/// The CPUs in a `Cpus_allowed_list` such as `0-2,5`.
fn cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for range in list.split(',') {
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        cpus.extend(first.parse::<usize>().unwrap()..=last.parse().unwrap());
    }
    cpus
}

/// Whether `pid` holds a file open on some process's `oom_score_adj`: the master's is its
/// own, and a worker that kept it could change the master's score.
fn holds_an_oom_score(pid: u32) -> bool {
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    fds.flatten()
        .any(|fd| fs::read_link(fd.path()).is_ok_and(|target| target.ends_with("oom_score_adj")))
}

/// Waits until the master has its own OOM score, `score`, again: it takes each worker's for
/// the instant of its fork, which a look from outside may catch.
fn master_score_is_back(master: &Master, score: i32) {
    let pid = master.pid().as_raw() as u32;
    master.wait_until("the master's own OOM score", || {
        (oom_score_adj(pid) == score).then_some(())
    });
}

/// Waits until worker `pid`, listed by the master as soon as it is forked, has confined
/// itself: `no_new_privs` is its last step.
fn settled(master: &Master, pid: u32) -> u32 {
    master.wait_until("the worker to confine itself", || {
        (status(pid, "NoNewPrivs") == "1").then_some(pid)
    })
}

fn stop(mut master: Master) {
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

#[test]
fn workers_take_the_users_groups_then_its_group_then_the_user_and_cannot_get_root_back() {
    if !as_root("workers_take_the_users_groups_then_its_group_then_the_user") {
        return;
    }
    // A master with supplementary groups of its own, which no worker may keep.
    let master = Master::launch_under(&["setpriv", "--groups=4,27"], CONFINED)
        .env("KAMISAMA_INSTANCES", "2")
        .start();
    let nobody = groups_of("nobody");
    for (_, pid, regained_root) in confined(&master, 2) {
        assert!(!regained_root, "worker {pid} became root again");
        assert_eq!(status(pid, "Uid"), "65534 65534 65534 65534");
        assert_eq!(status(pid, "Gid"), "65534 65534 65534 65534");
        assert_eq!(
            group_set(&status(pid, "Groups")),
            nobody.iter().copied().collect()
        );
        assert_eq!(status(pid, "NoNewPrivs"), "1");
    }
    // The master keeps what it started with, for upgrades and binding.
    let own = master.pid().as_raw() as u32;
    assert_eq!(status(own, "Uid"), "0 0 0 0");
    assert_eq!(status(own, "Groups"), "4 27");
    assert_eq!(status(own, "NoNewPrivs"), "0");
    stop(master);
}

/// A user that is a member of a group other than its own, from `getent group`, if any.
fn a_user_with_supplementary_groups() -> Option<String> {
    let output = std::process::Command::new("getent")
        .arg("group")
        .output()
        .ok()?;
    let groups = String::from_utf8(output.stdout).ok()?;
    groups.lines().find_map(|line| {
        let members = line.split(':').nth(3)?;
        let member = members.split(',').next()?;
        (!member.is_empty()).then(|| member.to_owned())
    })
}

#[test]
fn a_user_brings_its_supplementary_groups() {
    let test = "a_user_brings_its_supplementary_groups";
    if !as_root(test) {
        return;
    }
    let Some(user) = a_user_with_supplementary_groups() else {
        return skip(
            test,
            "no user here is a member of another group (getent group)",
        );
    };
    let master = Master::launch(CONFINED)
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_USER", &user)
        .start();
    let groups = groups_of(&user);
    assert!(groups.len() >= 2, "{user}: {groups:?}");
    let (_, pid, _) = confined(&master, 1)[0];
    assert_eq!(
        group_set(&status(pid, "Groups")),
        groups.iter().copied().collect(),
        "{user}"
    );
    assert_eq!(
        status(pid, "Gid").split(' ').next(),
        Some(&*groups[0].to_string())
    );
    stop(master);
}

#[test]
fn a_group_replaces_the_users_own_and_no_new_privs_can_be_turned_off() {
    if !as_root("a_group_replaces_the_users_own") {
        return;
    }
    let master = Master::launch(CONFINED)
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_GROUP", "daemon")
        .env("KAMISAMA_NO_NEW_PRIVS", "false")
        .start();
    let daemon = 1;
    // `initgroups(user, group)`: the group, and those the user is a member of.
    let mut expected: BTreeSet<u32> = groups_of("nobody").into_iter().skip(1).collect();
    expected.insert(daemon);
    let (_, pid, regained_root) = confined(&master, 1)[0];
    assert!(!regained_root);
    assert_eq!(status(pid, "Uid"), "65534 65534 65534 65534");
    assert_eq!(status(pid, "Gid"), "1 1 1 1");
    assert_eq!(group_set(&status(pid, "Groups")), expected);
    assert_eq!(status(pid, "NoNewPrivs"), "0");
    stop(master);
}

#[test]
fn a_group_alone_keeps_the_masters_user_and_is_the_only_group() {
    if !as_root("a_group_alone_keeps_the_masters_user_and_is_the_only_group") {
        return;
    }
    let master = Master::launch_under(&["setpriv", "--groups=4,27"], SUPERVISED)
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_GROUP", "daemon")
        .start();
    let pid = settled(&master, master.wait_for_workers(1)[&0].as_raw() as u32);
    assert_eq!(status(pid, "Uid"), "0 0 0 0");
    assert_eq!(status(pid, "Gid"), "1 1 1 1");
    assert_eq!(status(pid, "Groups"), "1");
    assert_eq!(status(pid, "NoNewPrivs"), "1");
    stop(master);
}

#[test]
fn workers_get_their_limits_oom_score_and_cpu() {
    if !as_root("workers_get_their_limits_oom_score_and_cpu") {
        return;
    }
    let own = std::process::id();
    let cpus = cpu_list(&status(own, "Cpus_allowed_list"));
    let master = Master::launch(CONFINED)
        .env("KAMISAMA_INSTANCES", "4")
        .env("KAMISAMA_LIMIT_AS", "8589934592")
        .start();
    for (index, pid, _) in confined(&master, 4) {
        assert_eq!(limit(pid, "Max open files"), "1000 1000");
        assert_eq!(limit(pid, "Max core file size"), "0 0");
        assert_eq!(limit(pid, "Max address space"), "8589934592 8589934592");
        assert_eq!(oom_score_adj(pid), 700);
        assert!(!holds_an_oom_score(pid));
        // Worker i on the i-th usable CPU, round the list again past its end.
        let pinned = cpus[index % cpus.len()].to_string();
        assert_eq!(status(pid, "Cpus_allowed_list"), pinned, "worker {index}");
    }
    let master_pid = master.pid().as_raw() as u32;
    master_score_is_back(&master, oom_score_adj(own));
    assert_eq!(
        limit(master_pid, "Max open files"),
        limit(own, "Max open files")
    );
    assert_eq!(
        status(master_pid, "Cpus_allowed_list"),
        status(own, "Cpus_allowed_list")
    );
    stop(master);
}

#[test]
fn by_default_workers_are_more_killable_than_the_master_and_keep_its_identity() {
    let master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "2")
        .start();
    let workers = master.wait_for_workers(2);
    let own = master.pid().as_raw() as u32;
    // The master started with this process's score, and has it again between forks.
    let started_with = oom_score_adj(std::process::id());
    master_score_is_back(&master, started_with);
    let expected = (started_with + 500).min(1000);
    for pid in workers.values() {
        let pid = pid.as_raw() as u32;
        assert_eq!(oom_score_adj(pid), expected);
        assert!(!holds_an_oom_score(pid));
        assert_eq!(status(pid, "Uid"), status(own, "Uid"));
        assert_eq!(status(pid, "Groups"), status(own, "Groups"));
        // No identity to protect: set-user-ID helpers a worker runs still work.
        assert_eq!(status(pid, "NoNewPrivs"), "0");
    }
    stop(master);
}

#[test]
fn auto_instances_are_as_many_as_the_cpus_of_the_affinity_mask() {
    if !as_root("auto_instances_are_as_many_as_the_cpus_of_the_affinity_mask") {
        return;
    }
    let master = Master::launch_under(&["taskset", "--cpu-list", "0"], CONFINED).start();
    master.wait_for_line("started instances=1 ");
    let (_, pid, _) = confined(&master, 1)[0];
    assert_eq!(status(pid, "Cpus_allowed_list"), "0");
    stop(master);
}

/// A cgroup whose CPU quota is one CPU, v1 or v2; removed on drop.
struct OneCpu {
    dir: std::path::PathBuf,
}

impl OneCpu {
    fn new(name: &str) -> Option<OneCpu> {
        let v1 = std::path::Path::new("/sys/fs/cgroup/cpu");
        let (parent, quota_file, quota) = if v1.join("cpu.cfs_quota_us").exists() {
            (v1, "cpu.cfs_quota_us", "100000")
        } else {
            let v2 = std::path::Path::new("/sys/fs/cgroup");
            let controllers = fs::read_to_string(v2.join("cgroup.subtree_control")).ok()?;
            if !controllers.split_whitespace().any(|c| c == "cpu") {
                return None;
            }
            (v2, "cpu.max", "100000 100000")
        };
        let dir = parent.join(name);
        let _ = fs::remove_dir(&dir);
        fs::create_dir(&dir).ok()?;
        let group = OneCpu { dir };
        if v1.join("cpu.cfs_period_us").exists() {
            fs::write(group.dir.join("cpu.cfs_period_us"), "100000").ok()?;
        }
        fs::write(group.dir.join(quota_file), quota).ok()?;
        Some(group)
    }
}

impl Drop for OneCpu {
    fn drop(&mut self) {
        kamisama_tests::poll_until(|| fs::remove_dir(&self.dir).ok());
    }
}

#[test]
fn auto_instances_are_as_many_as_the_cgroups_cpu_quota_allows() {
    let test = "auto_instances_are_as_many_as_the_cgroups_cpu_quota_allows";
    if !as_root(test) {
        return;
    }
    if kamisama::usable_cpus() < 2 {
        return skip(
            test,
            "needs two usable CPUs, to tell a quota of one from them",
        );
    }
    let Some(group) = OneCpu::new(&format!("kamisama-one-cpu-{}", std::process::id())) else {
        return skip(test, "needs a writable cgroup with the cpu controller");
    };
    let master = Master::launch(CONFINED)
        .env("KAMISAMA_CPU_AFFINITY", "off")
        .in_cgroup(&group.dir.join("cgroup.procs"))
        .start();
    master.wait_for_line("started instances=1 ");
    confined(&master, 1);
    stop(master);
    drop(group);
}

#[test]
fn a_user_that_does_not_exist_stops_the_start_before_any_fork() {
    let mut master = Master::launch(CONFINED)
        .env("KAMISAMA_USER", "no-such-user-kamisama")
        .start();
    master.expect_exit_code(2);
    master.wait_for_line(
        "error: cannot run workers with `user` \"no-such-user-kamisama\": no such user",
    );
    assert_eq!(master.count_lines("spawned"), 0, "{}", master.transcript());
}

#[test]
fn a_master_that_may_not_switch_users_stops_the_start_before_any_fork() {
    if !as_root("a_master_that_may_not_switch_users_stops_the_start_before_any_fork") {
        return;
    }
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let mut master = Master::launch_under(&nobody, CONFINED)
        .env("KAMISAMA_USER", "daemon")
        .start();
    master.expect_exit_code(2);
    master.wait_for_line(
        "error: cannot run workers with `user` \"daemon\": the master may not switch to it \
         (it needs CAP_SETUID",
    );
    assert_eq!(master.count_lines("spawned"), 0, "{}", master.transcript());
    // The same master may run workers as itself: there is nothing to switch.
    let mut master = Master::launch_under(&nobody, CONFINED)
        .env("KAMISAMA_INSTANCES", "1")
        .start();
    let (_, pid, regained_root) = confined(&master, 1)[0];
    assert!(!regained_root);
    assert_eq!(status(pid, "Uid"), "65534 65534 65534 65534");
    assert_eq!(status(pid, "NoNewPrivs"), "1");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_limit_the_master_may_not_grant_stops_the_start_before_any_fork() {
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let unprivileged: &[&str] = if nix::unistd::geteuid().is_root() {
        &nobody
    } else {
        &["env"]
    };
    // A hard limit of 64 open files, which an unprivileged master may not raise.
    let mut wrapper = vec!["prlimit", "--nofile=64:64"];
    wrapper.extend_from_slice(unprivileged);
    // Workers of the master's own user, so that only the limit is in the way.
    let uid = if unprivileged == nobody {
        65534
    } else {
        nix::unistd::geteuid().as_raw()
    };
    let mut master = Master::launch_under(&wrapper, CONFINED)
        .env("KAMISAMA_USER", &uid.to_string())
        .start();
    master.expect_exit_code(2);
    master.wait_for_line(
        "error: cannot run workers with `limit_nofile` \"1000\": the master's hard limit is \
         64, and raising it needs CAP_SYS_RESOURCE",
    );
    assert_eq!(master.count_lines("spawned"), 0, "{}", master.transcript());
}

#[test]
fn hang_detection_notify_and_the_status_file_work_with_unprivileged_workers() {
    if !as_root("hang_detection_notify_and_the_status_file_work_with_unprivileged_workers") {
        return;
    }
    let dir = scratch!("privileges-hang");
    let systemd = NotifySocket::bind(dir.join("notify"), None);
    let status_file = dir.join("status.json");
    let mut master = Master::launch(HEARTBEATS)
        .env("KAMISAMA_TIMEOUT", "1")
        .env("KAMISAMA_USER", "nobody")
        .env("KAMISAMA_STATUS_FILE", status_file.to_str().unwrap())
        .env("NOTIFY_SOCKET", systemd.path())
        .env("HANG", "0")
        .start();
    systemd.wait_for("READY=1", 1);
    let before = master.wait_for_workers(2);
    assert_eq!(
        status(settled(&master, before[&0].as_raw() as u32), "Uid"),
        "65534 65534 65534 65534"
    );
    master.wait_for_line(&format!("hung index=0 pid={}", before[&0]));
    master.wait_for_line(&format!("exited index=0 pid={} status=SIGABRT", before[&0]));
    let after = master.wait_until("a new worker 0", || {
        master
            .workers()
            .filter(|now| now.len() == 2 && now[&0] != before[&0])
    });
    assert_eq!(
        status(settled(&master, after[&0].as_raw() as u32), "Uid"),
        "65534 65534 65534 65534"
    );
    // The master, root still, keeps the status file of the unprivileged fleet.
    let status = master.wait_until("the respawn in the status file", || {
        let text = fs::read_to_string(&status_file).ok()?;
        let status: serde_json::Value = serde_json::from_str(&text).ok()?;
        let worker = &status["workers"][0];
        (worker["pid"] == after[&0].as_raw() && worker["restarts"] == 1).then_some(status)
    });
    assert_eq!(status["settings"]["user"], "nobody", "{status}");
    assert_eq!(
        status["settings"]["group"],
        serde_json::Value::Null,
        "{status}"
    );
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    systemd.wait_for("STOPPING=1", 1);
}

#[test]
fn a_listening_fleet_of_nobody_serves_restarts_and_upgrades_under_load_without_a_failure() {
    if !as_root("a_listening_fleet_of_nobody_serves_restarts_and_upgrades_under_load") {
        return;
    }
    let deployment = Deployment::new(scratch!("privileges-nobody-under-load"), HELLO);
    let (mut master, address, workers) = deployment.start(4, &[("KAMISAMA_USER", "nobody")]);
    for worker in &workers {
        assert_eq!(
            status(settled(&master, *worker), "Uid"),
            "65534 65534 65534 65534"
        );
    }
    let load = Load::start(address, 8, false);
    load.wait_for(300);
    master.signal(Signal::SIGHUP);
    master.wait_for_line("rolling-restart-finished");
    load.wait_for(300);
    let old = master.pid();
    deployment.install(&fs::read(HELLO).unwrap());
    let successor = upgrade(&master, old);
    let new_workers = spawned_by(&master, successor, 4);
    assert_eq!(master.wait_exit_alone().code(), Some(0));
    load.wait_for(300);
    let tally = load.stop();
    assert_eq!(tally.failed(), 0, "{tally:?}");
    assert!(
        tally.accepted.keys().any(|pid| new_workers.contains(pid)),
        "{tally:?}"
    );
    for worker in &new_workers {
        assert_eq!(
            status(settled(&master, *worker), "Uid"),
            "65534 65534 65534 65534"
        );
    }
    // The new master is root still, as the old one was.
    assert_eq!(status(successor.as_raw() as u32, "Uid"), "0 0 0 0");
    master.expect_lines("killed", 0);
    nix::sys::signal::kill(successor, Signal::SIGTERM).unwrap();
    assert_eq!(reap_orphan(successor), WaitStatus::Exited(successor, 0));
}

#[test]
fn unprivileged_workers_still_stop_when_their_master_dies() {
    if !as_root("unprivileged_workers_still_stop_when_their_master_dies") {
        return;
    }
    // The kernel clears a process's death signal when its user changes: a worker must ask for
    // it again after the change, or outlive its master.
    let mut master = Master::launch(CONFINED)
        .env("KAMISAMA_INSTANCES", "2")
        .start();
    let workers = confined(&master, 2);
    master.signal(Signal::SIGKILL);
    master.wait_exit();
    for (_, pid, _) in workers {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        assert_eq!(reap_orphan(pid), WaitStatus::Exited(pid, 0));
    }
    master.expect_tree_gone();
}
