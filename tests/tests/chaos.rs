//! The randomized fault test: random worker trees (see `fixtures/chaos.rs`) under a random
//! schedule of TTIN, TTOU, HUP, USR1, kills and stops, then a final TERM. After every run:
//! never two live workers on one index (but for a replaced worker and its successor, until
//! the replaced one is gone), exactly the indices asked for once the fleet is
//! quiet, every rolling restart ended, the shutdown ended within `shutdown_timeout` + 1 s,
//! and nothing left, zombies included.
//!
//! Each run prints its seed when it fails. `CHAOS_SEED=N` runs that one seed again;
//! `CHAOS_RUNS=N` runs N random seeds (3 by default), for a long soak.

use kamisama_tests::{children_of, field, Master, Rng};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const CHAOS: &str = env!("CARGO_BIN_EXE_chaos");
/// As in the fixture's attribute.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);
const STEPS: usize = 40;
const MOST_INSTANCES: usize = 6;

#[test]
fn random_trees_and_signals_keep_every_invariant() {
    let seeds: Vec<u64> = match std::env::var("CHAOS_SEED") {
        Ok(seed) => vec![seed.parse().expect("CHAOS_SEED is a number")],
        Err(_) => {
            let runs = std::env::var("CHAOS_RUNS").map_or(3, |runs| runs.parse().unwrap());
            (0..runs).map(|_| Rng::fresh_seed()).collect()
        }
    };
    for seed in seeds {
        let _seed = SaySeedOnPanic(seed);
        run(seed);
    }
}

/// Names the seed of a run that failed, so that it can be run again.
struct SaySeedOnPanic(u64);

impl Drop for SaySeedOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "the failing run: CHAOS_SEED={} cargo test --test chaos",
                self.0
            );
        }
    }
}

fn run(seed: u64) {
    let dir = kamisama_tests::scratch!(format!("chaos-{seed}"));
    let mut rng = Rng::new(seed);
    let instances = 2 + rng.below(3);
    let mut master = Master::launch(CHAOS)
        .env("CHAOS_SEED", &seed.to_string())
        .env("CHAOS_DIR", dir.to_str().unwrap())
        .env("KAMISAMA_INSTANCES", &instances.to_string())
        .start();
    master.wait_for_line(&format!("started instances={instances}"));
    for _ in 0..STEPS {
        let workers: Vec<Pid> = live_workers(&master).into_values().flatten().collect();
        let victim =
            (!workers.is_empty()).then(|| workers[rng.below(workers.len() as u64) as usize]);
        match rng.below(10) {
            0 | 1 if master.instances_asked() < MOST_INSTANCES => master.signal(Signal::SIGTTIN),
            2 | 3 => master.signal(Signal::SIGTTOU),
            4 => master.signal(Signal::SIGHUP),
            5 => master.signal(Signal::SIGUSR1),
            6 | 7 => {
                if let Some(victim) = victim {
                    let signal = if rng.chance(50) {
                        Signal::SIGKILL
                    } else {
                        Signal::SIGTERM
                    };
                    let _ = kill(victim, signal);
                }
            }
            8 => {
                if let Some(victim) = victim {
                    let _ = kill(victim, Signal::SIGSTOP);
                }
            }
            _ => {
                // An adopted helper dies, and hands its own children over.
                let adopted: Vec<Pid> = children_of(master.pid())
                    .into_iter()
                    .filter(|pid| !workers.contains(pid))
                    .collect();
                if !adopted.is_empty() {
                    let _ = kill(
                        adopted[rng.below(adopted.len() as u64) as usize],
                        Signal::SIGKILL,
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(rng.below(150)));
    }

    let asked = master.wait_until("the fleet to settle", || {
        let asked = master.instances_asked();
        let workers = live_workers(&master);
        let one_each = workers.len() == asked
            && workers.keys().copied().eq(0..asked)
            && workers.values().all(|pids| pids.len() == 1);
        let restarts_ended = master.count_lines("rolling-restart-started")
            == master.count_lines("rolling-restart-finished");
        (one_each && restarts_ended).then_some(asked)
    });
    assert!((1..=MOST_INSTANCES).contains(&asked));

    let term = Instant::now();
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    let took = term.elapsed();
    assert!(
        took <= SHUTDOWN_TIMEOUT + Duration::from_secs(1),
        "the shutdown took {took:?}:\n{}",
        master.transcript()
    );
    assert!(master.tree().is_empty(), "left behind: {:?}", master.tree());
    master.expect_lines("DUPLICATE", 0);
    master.expect_lines("gave-up", 0);
    one_worker_per_index_by_the_log(&master);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The master's live children that started as workers, by the index they reported.
fn live_workers(master: &Master) -> BTreeMap<usize, Vec<Pid>> {
    let mut workers: BTreeMap<usize, Vec<Pid>> = BTreeMap::new();
    for (pid, index) in master.children() {
        if let Some(index) = index {
            workers.entry(index).or_default().push(pid);
        }
    }
    workers
}

/// Replays the master's `spawned`, `replacing` and `exited` lines: no index is forked while
/// its last worker has not exited, or been replaced (a rolling restart forks the successor
/// first); every worker exits once.
fn one_worker_per_index_by_the_log(master: &Master) {
    let prefix = format!("kamisama[{}]: ", master.pid());
    let mut live: BTreeMap<usize, String> = BTreeMap::new();
    let mut replaced: BTreeSet<(usize, String)> = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for line in master.transcript().lines() {
        let Some(event) = line.strip_prefix(&prefix) else {
            continue;
        };
        let (Some(index), Some(pid)) = (field(event, "index"), field(event, "pid")) else {
            continue;
        };
        let index: usize = index.parse().unwrap();
        if event.starts_with("spawned ") {
            let before = live.insert(index, pid.to_owned());
            assert!(before.is_none(), "index {index} forked twice: {event}");
            assert!(seen.insert(pid.to_owned()), "pid {pid} spawned twice");
        } else if event.starts_with("replacing ") {
            assert_eq!(live.remove(&index).as_deref(), Some(pid), "{event}");
            replaced.insert((index, pid.to_owned()));
        } else if event.starts_with("exited ") {
            let was_replaced = replaced.remove(&(index, pid.to_owned()));
            if !was_replaced {
                assert_eq!(live.remove(&index).as_deref(), Some(pid), "{event}");
            }
        }
    }
    assert!(
        replaced.is_empty(),
        "replaced, never seen to exit: {replaced:?}"
    );
    assert!(live.is_empty(), "never seen to exit: {live:?}");
}
