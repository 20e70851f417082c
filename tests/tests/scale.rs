//! A fleet large enough (2,000 workers and more) for the master to learn of deaths from its
//! reaper's pidfds rather than by walking its child list: every death still found, every
//! orphan still reaped, and nothing of the reaper in a worker.

use kamisama_tests::{children_of, field, reaper_of, state, Master};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::fs;

const SUPERVISED: &str = env!("CARGO_BIN_EXE_supervised");

/// The fleet from which the master starts its reaper.
const LARGE: usize = 2000;

/// The master's children that are zombies: exited, and not reaped.
fn zombies(master: &Master) -> Vec<Pid> {
    let children = children_of(master.pid()).into_iter();
    children.filter(|pid| state(*pid) == Some('Z')).collect()
}

/// The names of the master's threads.
fn threads(master: Pid) -> Vec<String> {
    let tasks = fs::read_dir(format!("/proc/{master}/task")).expect("the master's tasks");
    let names = tasks.map(|task| fs::read_to_string(task.unwrap().path().join("comm")));
    names.map(|name| name.unwrap().trim().to_owned()).collect()
}

/// The descriptors `pid` has open.
fn descriptors(pid: Pid) -> BTreeSet<i32> {
    let entries = fs::read_dir(format!("/proc/{pid}/fd")).expect("a worker's descriptors");
    let numbers = entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok());
    numbers.collect()
}

/// The soft limit on open files of `pid`, as /proc/PID/limits says it.
fn soft_nofile(pid: Pid) -> String {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"));
    let mut words = line
        .expect("a Max open files line")
        .split_whitespace()
        .skip(3);
    words.next().expect("the soft limit").to_owned()
}

#[test]
fn a_large_fleet_finds_every_death_and_reaps_every_orphan() {
    // Each worker leaves a `sleep 0.3` behind, handed to the master at once: a thousand
    // orphans that die together, whose SIGCHLDs coalesce with each other's and the
    // workers'. A soft limit on open files too low for a thousand pidfds, which the master
    // raises for itself only.
    let mut master = Master::launch_under(&["prlimit", "--nofile=1024:"], SUPERVISED)
        .env("KAMISAMA_INSTANCES", &LARGE.to_string())
        .env("KAMISAMA_RESPAWN_LIMIT", "100000")
        .env("FIXTURE", "orphan")
        .start();
    let first = master.wait_for_workers(LARGE);
    // The reaper is a child of the master's, which stays single-threaded; it holds a pidfd
    // for each worker.
    assert_eq!(threads(master.pid()).len(), 1);
    let reaper = master.wait_until("the reaper", || reaper_of(master.pid()));
    master.wait_until("a pidfd for each worker", || {
        (descriptors(reaper).len() > LARGE).then_some(())
    });
    master.wait_until("every orphan reaped", || {
        zombies(&master).is_empty().then_some(())
    });
    assert_ne!(soft_nofile(master.pid()), "1024");
    // A burst of deaths: every one found, each index forked again once.
    let killed: Vec<usize> = (0..LARGE).step_by(3).collect();
    for index in &killed {
        kill(first[index], Signal::SIGKILL).unwrap();
    }
    let after = master.wait_until("every killed worker replaced", || {
        let now = master.workers()?;
        let replaced = killed
            .iter()
            .all(|index| now.get(index) != first.get(index));
        (now.len() == LARGE && replaced).then_some(now)
    });
    master.expect_lines("spawned index=", LARGE + killed.len());
    // The replacements are watched too, their pids handed to the reaper a while after.
    master.wait_until("a pidfd for each replacement", || {
        (descriptors(reaper).len() > LARGE).then_some(())
    });
    master.wait_until("every orphan reaped", || {
        zombies(&master).is_empty().then_some(())
    });
    // A worker forked while the reaper runs has none of its descriptors, and the limit of
    // open files the master had before it raised it.
    let old = first[&1];
    let new = after[&0];
    assert_eq!(descriptors(new), descriptors(old));
    assert_eq!(soft_nofile(new), "1024");
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
    master.expect_lines("reaping-by-walking", 0);
}

#[test]
fn a_large_fleet_whose_reaper_is_killed_says_so_and_still_finds_every_death() {
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", &LARGE.to_string())
        .env("KAMISAMA_RESPAWN_LIMIT", "100000")
        .start();
    let first = master.wait_for_workers(LARGE);
    let reaper = master.wait_until("the reaper", || reaper_of(master.pid()));
    kill(reaper, Signal::SIGKILL).unwrap();
    master.wait_for_line("reaping-by-walking reason=reaper-died");
    master.wait_until("the reaper reaped", || {
        (!children_of(master.pid()).contains(&reaper)).then_some(())
    });
    let killed: Vec<usize> = (0..LARGE).step_by(3).collect();
    for index in &killed {
        kill(first[index], Signal::SIGKILL).unwrap();
    }
    master.wait_until("every killed worker replaced", || {
        let now = master.workers()?;
        let replaced = killed
            .iter()
            .all(|index| now.get(index) != first.get(index));
        (now.len() == LARGE && replaced).then_some(())
    });
    master.wait_until("no zombie", || zombies(&master).is_empty().then_some(()));
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_lines("reaping-by-walking", 1);
    master.expect_lines("reaped pid=", 0);
    master.expect_tree_gone();
}

#[test]
fn a_large_fleet_without_descriptors_to_spare_still_finds_every_death() {
    // A hard limit of 64 open files: the reaper cannot watch the fleet, and says so once; the
    // master walks its child list instead.
    let mut master = Master::launch_under(&["prlimit", "--nofile=64:64"], SUPERVISED)
        .env("KAMISAMA_INSTANCES", &LARGE.to_string())
        .env("KAMISAMA_RESPAWN_LIMIT", "100000")
        .start();
    let first = master.wait_for_workers(LARGE);
    let killed: Vec<usize> = (0..LARGE).step_by(3).collect();
    for index in &killed {
        kill(first[index], Signal::SIGKILL).unwrap();
    }
    master.wait_until("every killed worker replaced", || {
        let now = master.workers()?;
        let replaced = killed
            .iter()
            .all(|index| now.get(index) != first.get(index));
        (now.len() == LARGE && replaced).then_some(())
    });
    master.wait_for_line("reaping-by-walking reason=descriptor-limit");
    master.wait_until("no zombie", || zombies(&master).is_empty().then_some(()));
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_lines("reaping-by-walking", 1);
    master.expect_tree_gone();
}

#[test]
fn a_walk_through_a_burst_of_deaths_stops_early_and_finishes_later() {
    // Every worker leaves a `sleep 1000` behind, adopted by the master. With the reaper and
    // the master stopped, 100 workers and then one orphan die: the master's one pending
    // SIGCHLD names one death, the orphan's is announced by nothing, and no reaper reports
    // the workers. A SIGCHLD sent by hand, which names no death, makes the master walk: the
    // walk stops after a few dead workers (each step of it starts at the head of the child
    // list); the rest is walked later, until every worker is forked again and the orphan,
    // behind them all in the list, is reaped.
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", &LARGE.to_string())
        .env("KAMISAMA_RESPAWN_LIMIT", "100000")
        .env("FIXTURE", "daemonize")
        .start();
    // The orphans are the master's children too: the workers are known by their lines.
    let daemons = master.wait_for_lines("daemon pid=", LARGE);
    let pid = |line: &String| Pid::from_raw(field(line, "pid").unwrap().parse().unwrap());
    let orphan = pid(&daemons[0]);
    let spawned = master.wait_for_lines("spawned index=", LARGE);
    let reaper = master.wait_until("the reaper", || reaper_of(master.pid()));
    master.wait_until_blocked();
    kill(reaper, Signal::SIGSTOP).unwrap();
    master.signal(Signal::SIGSTOP);
    let killed: Vec<Pid> = spawned[..100].iter().map(pid).collect();
    for worker in &killed {
        kill(*worker, Signal::SIGKILL).unwrap();
    }
    master.wait_until("the workers dead", || {
        let dead = killed.iter().all(|worker| state(*worker) == Some('Z'));
        dead.then_some(())
    });
    kill(orphan, Signal::SIGKILL).unwrap();
    master.wait_until("the orphan dead", || {
        (state(orphan) == Some('Z')).then_some(())
    });
    master.signal(Signal::SIGCONT);
    // Once the pending SIGCHLD is read, so that the one sent by hand does not merge with it.
    master.wait_for_line("exited index=");
    master.signal(Signal::SIGCHLD);
    master.wait_for_lines("spawned index=", LARGE + killed.len());
    master.wait_for_line(&format!("reaped pid={orphan} status=SIGKILL"));
    master.wait_until("no zombie", || zombies(&master).is_empty().then_some(()));
    master.expect_lines("spawned index=", LARGE + killed.len());
    kill(reaper, Signal::SIGCONT).unwrap();
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_lines("reaping-by-walking", 0);
    master.expect_tree_gone();
}
