//! The signals operators send the master: shutdown, scaling, and the master's own death.

use kamisama_tests::{is_alive, reap_orphan, Master};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

const SUPERVISED: &str = env!("CARGO_BIN_EXE_supervised");

fn supervised(instances: usize) -> Master {
    Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", &instances.to_string())
        .start()
}

/// Sends `signal` to a master with three workers and checks the graceful shutdown: every
/// worker stopped by TERM, exit 0, nothing left.
fn graceful_shutdown(signal: Signal) {
    let mut master = supervised(3);
    let workers = master.wait_for_workers(3);
    master.signal(signal);
    master.wait_for_line(&format!("shutdown-started signal={signal} workers=3"));
    master.expect_exit_code(0);
    for (index, pid) in &workers {
        master.wait_for_line(&format!("exited index={index} pid={pid} status=SIGTERM"));
    }
    master.expect_lines("respawning", 0);
    master.wait_for_line("shutdown-finished exit=0");
    master.expect_tree_gone();
}

#[test]
fn term_stops_every_worker() {
    graceful_shutdown(Signal::SIGTERM);
}

#[test]
fn int_stops_every_worker() {
    graceful_shutdown(Signal::SIGINT);
}

#[test]
fn quit_stops_every_worker() {
    graceful_shutdown(Signal::SIGQUIT);
}

#[test]
fn ctrl_c_reaches_only_the_master_which_stops_the_workers() {
    let mut master = Master::launch(SUPERVISED)
        .env("KAMISAMA_INSTANCES", "2")
        .own_process_group()
        .start();
    let workers = master.wait_for_workers(2);
    // What a terminal does on Ctrl-C: INT to the foreground process group.
    master.signal_group(Signal::SIGINT);
    master.expect_exit_code(0);
    // Workers are not in that group: they got the master's TERM, not the terminal's INT.
    for (index, pid) in &workers {
        master.wait_for_line(&format!("exited index={index} pid={pid} status=SIGTERM"));
    }
    master.expect_tree_gone();
}

#[test]
fn a_worker_ignoring_term_is_killed_after_shutdown_timeout() {
    let mut master = Master::launch(SUPERVISED)
        .env("FIXTURE", "ignore-term")
        .env("KAMISAMA_INSTANCES", "2")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "1")
        .start();
    let workers = master.wait_for_workers(2);
    let asked = std::time::Instant::now();
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    // SIGKILL not before the second they have, and the master gone soon after.
    let took = asked.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(950),
        "exited {took:?} after TERM"
    );
    assert!(
        took < std::time::Duration::from_millis(2500),
        "exited {took:?} after TERM"
    );
    for (index, pid) in &workers {
        master.wait_for_line(&format!("killed index={index} pid={pid} after=1s"));
        master.wait_for_line(&format!("exited index={index} pid={pid} status=SIGKILL"));
    }
    master.expect_tree_gone();
}

/// A master of two workers that ignore TERM, at the start of a shutdown whose timeout is an
/// hour.
fn shutting_down_for_an_hour() -> Master {
    let master = Master::launch(SUPERVISED)
        .env("FIXTURE", "ignore-term")
        .env("KAMISAMA_INSTANCES", "2")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "3600")
        .start();
    master.wait_for_workers(2);
    master.signal(Signal::SIGTERM);
    master.wait_for_line("shutdown-started");
    master
}

#[test]
fn a_second_term_kills_at_once() {
    let mut master = shutting_down_for_an_hour();
    master.signal(Signal::SIGTERM);
    // Well before the hour-long timeout: the test's deadline is seconds.
    master.expect_exit_code(0);
    master.wait_for_line("shutdown-forced signal=SIGTERM workers=2");
    master.wait_for_lines("status=SIGKILL", 2);
    master.expect_tree_gone();
}

#[test]
fn a_workers_subprocess_is_stopped_on_shutdown() {
    let mut master = Master::launch(SUPERVISED)
        .env("FIXTURE", "subprocess")
        .env("KAMISAMA_INSTANCES", "2")
        .start();
    let lines = master.wait_for_lines("subprocess index=", 2);
    let subprocesses: Vec<Pid> = lines
        .iter()
        .map(|line| kamisama_tests::field(line, "pid").unwrap().parse().unwrap())
        .map(Pid::from_raw)
        .collect();
    assert!(subprocesses.iter().all(|pid| is_alive(*pid)));
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.wait_until("the subprocesses to be gone", || {
        subprocesses.iter().all(|pid| !is_alive(*pid)).then_some(())
    });
    master.expect_tree_gone();
}

#[test]
fn shutdown_signals_the_workers_whole_process_group() {
    // The worker survives TERM for an hour; its subprocess does not.
    let mut master = Master::launch(SUPERVISED)
        .env("FIXTURE", "ignore-term,subprocess")
        .env("KAMISAMA_INSTANCES", "1")
        .env("KAMISAMA_SHUTDOWN_TIMEOUT", "3600")
        .start();
    let worker = master.wait_for_workers(1)[&0];
    let line = master.wait_for_line("subprocess index=0");
    let subprocess = Pid::from_raw(
        kamisama_tests::field(&line, "pid")
            .unwrap()
            .parse()
            .unwrap(),
    );
    master.signal(Signal::SIGTERM);
    master.wait_until("the subprocess to get the group's TERM", || {
        (!is_alive(subprocess)).then_some(())
    });
    assert!(is_alive(worker), "{}", master.transcript());
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

#[test]
fn ttin_adds_a_worker_and_ttou_retires_the_highest_index() {
    let mut master = supervised(2);
    let first = master.wait_for_workers(2);
    master.signal(Signal::SIGTTIN);
    master.wait_for_line("scaled-up instances=3");
    let grown = master.wait_for_workers(3);
    assert_eq!(grown[&0], first[&0]);
    assert_eq!(grown[&1], first[&1]);

    master.signal(Signal::SIGTTOU);
    master.wait_for_line("scaled-down instances=2 retiring=2");
    master.wait_for_line(&format!("exited index=2 pid={} status=SIGTERM", grown[&2]));
    let shrunk = master.wait_for_workers(2);
    assert_eq!(shrunk, first);

    master.signal(Signal::SIGTTIN);
    let regrown = master.wait_for_workers(3);
    assert_ne!(regrown[&2], grown[&2]);
    master.expect_lines("respawning", 0);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn ttou_with_one_worker_left_is_refused() {
    let mut master = supervised(2);
    master.wait_for_workers(2);
    master.signal(Signal::SIGTTOU);
    let last = master.wait_for_workers(1);
    master.signal(Signal::SIGTTOU);
    master.wait_for_line("scale-down-refused instances=1");
    assert_eq!(master.wait_for_workers(1), last);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn killing_the_master_terminates_every_worker() {
    let mut master = supervised(3);
    let workers = master.wait_for_workers(3);
    master.signal(Signal::SIGKILL);
    assert_eq!(
        kamisama_tests::describe(master.wait_exit()),
        "signal SIGKILL"
    );
    // The workers are orphans now, handed to this test process (a subreaper).
    for pid in workers.values() {
        match reap_orphan(*pid) {
            WaitStatus::Signaled(_, Signal::SIGTERM, _) => {}
            other => panic!("worker {pid} ended with {other:?}, not the death signal"),
        }
    }
    master.expect_tree_gone();
}

#[test]
fn scaling_signals_during_a_shutdown_change_nothing() {
    let mut master = shutting_down_for_an_hour();
    // The master logs nothing for them: each is sent once the master has woken for the one
    // before and gone back to sleep.
    for signal in [Signal::SIGTTIN, Signal::SIGTTOU, Signal::SIGHUP] {
        let switches = master.context_switches();
        master.signal(signal);
        master.wait_until("the master to act on it", || {
            let done = master.context_switches() > switches
                && kamisama_tests::state(master.pid()) == Some('S');
            done.then_some(())
        });
    }
    assert_eq!(master.children().len(), 2, "{}", master.transcript());
    for event in [
        "scaled-up",
        "scaled-down",
        "spawned index=2",
        "rolling-restart-started",
    ] {
        assert_eq!(
            master.count_lines(event),
            0,
            "{event}: {}",
            master.transcript()
        );
    }
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
    master.expect_tree_gone();
}

/// The process-wide pending signals of `pid` (`ShdPnd` in /proc), as a mask of bits
/// `1 << (signal - 1)`.
fn pending(pid: Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("ShdPnd:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .unwrap_or(0)
}

/// Five kinds of signal pending at once, more than one read of the signalfd takes (four):
/// each is acted on, the last read's SIGCHLD too. (Not TTIN or TTOU: the SIGCONT that wakes
/// the stopped master discards pending stop signals, blocked or not.)
#[test]
fn signals_that_come_together_are_each_acted_on() {
    let mut master = supervised(3);
    let workers = master.wait_for_workers(3);
    master.wait_until_blocked();
    master.signal(Signal::SIGSTOP);
    master.wait_until("the master stopped", || {
        (kamisama_tests::state(master.pid()) == Some('T')).then_some(())
    });
    let sent = [
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGUSR1,
        Signal::SIGTERM,
    ];
    for signal in sent {
        master.signal(signal);
    }
    nix::sys::signal::kill(workers[&0], Signal::SIGKILL).unwrap();
    let all = sent
        .into_iter()
        .chain([Signal::SIGCHLD])
        .fold(0, |mask, signal| mask | 1 << (signal as u64 - 1));
    master.wait_until("the five pending", || {
        (pending(master.pid()) & all == all).then_some(())
    });
    master.signal(Signal::SIGCONT);
    master.expect_exit_code(0);
    master.expect_tree_gone();
    // The death first, as a batch reaps before it acts; then the others, lowest first.
    let transcript = master.transcript();
    let lines = [
        format!("exited index=0 pid={} status=SIGKILL", workers[&0]),
        "rolling-restart-started".to_owned(),
        "shutdown-started signal=SIGINT".to_owned(),
        "forwarded signal=SIGUSR1".to_owned(),
        "shutdown-forced signal=SIGTERM".to_owned(),
    ];
    let at: Vec<usize> = lines
        .iter()
        .map(|line| {
            transcript
                .find(line.as_str())
                .unwrap_or_else(|| panic!("no {line:?} in {transcript}"))
        })
        .collect();
    assert!(at.windows(2).all(|pair| pair[0] < pair[1]), "{transcript}");
}
