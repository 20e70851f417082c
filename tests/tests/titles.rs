//! Process titles: `ps` (the command line) and `top` (`comm`) show each process's role,
//! while `std::env::args()` and the environment stay as they were.

use kamisama_tests::Master;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

const SUPERVISED: &str = env!("CARGO_BIN_EXE_supervised");
const BY_HAND: &str = env!("CARGO_BIN_EXE_by-hand");

/// What `ps` shows: the command line, its NULs as spaces, trailing ones trimmed.
fn command_line(pid: Pid) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let text = String::from_utf8_lossy(&raw).replace('\0', " ");
    text.trim_end().to_owned()
}

fn comm(pid: Pid) -> String {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    comm.trim_end().to_owned()
}

#[test]
fn ps_shows_each_role_while_args_and_the_environment_stay() {
    let mut master = Master::launch(SUPERVISED)
        .arg("--some-flag")
        .arg("a value")
        .env("FIXTURE", "print-args")
        .env("KAMISAMA_INSTANCES", "2")
        .start();
    let workers = master.wait_for_workers(2);
    assert_eq!(command_line(master.pid()), "supervised: master (2 workers)");
    assert_eq!(comm(master.pid()), "supervis:master");
    for (index, pid) in &workers {
        assert_eq!(command_line(*pid), format!("supervised: worker {index}"));
        assert_eq!(comm(*pid), format!("supervised:w{index}"));
    }
    // What the worker's code sees is the command line it was started with.
    let args = master.wait_for_lines("args=", 2);
    for line in args {
        assert_eq!(line, format!("args={SUPERVISED}|--some-flag|a value"));
    }
    // Waited for, as each worker prints it after its `args=` line.
    for line in master.wait_for_lines("fixture-var=", 2) {
        assert_eq!(line, "fixture-var=print-args");
    }
    // The environment block, which lies right after the command line, is untouched.
    let environ = std::fs::read(format!("/proc/{}/environ", master.pid())).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ
            .split('\0')
            .any(|entry| entry == "FIXTURE=print-args"),
        "{environ:?}"
    );
    master.signal(Signal::SIGTTIN);
    master.wait_for_workers(3);
    master.wait_until("the title to count three workers", || {
        (command_line(master.pid()) == "supervised: master (3 workers)").then_some(())
    });
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn titles_can_be_turned_off() {
    let mut master = Master::launch(BY_HAND)
        .env("BY_HAND_NO_TITLES", "1")
        .start();
    let workers = master.wait_for_workers(2);
    assert_eq!(command_line(master.pid()), BY_HAND);
    assert_eq!(command_line(workers[&0]), BY_HAND);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

#[test]
fn a_title_longer_than_the_command_line_shows_in_full_and_nothing_after_it() {
    // Started as `./s`, as short as a command line gets: the title runs over into the
    // environment's memory, ends with its own NUL, and shows no variable after it.
    let dir = kamisama_tests::scratch!("titles-short");
    std::os::unix::fs::symlink(SUPERVISED, dir.join("s")).unwrap();
    let mut master = Master::launch("./s")
        .current_dir(&dir)
        .env("FIXTURE", "print-args")
        .env("KAMISAMA_INSTANCES", "2")
        .start();
    let workers = master.wait_for_workers(2);
    let raw = |pid: Pid| std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    // The kernel gives the title up to its NUL, the NUL included.
    assert_eq!(raw(master.pid()), b"s: master (2 workers)\0");
    for (index, pid) in &workers {
        assert_eq!(raw(*pid), format!("s: worker {index}\0").into_bytes());
    }
    // The workers' code still sees its arguments and its environment.
    for line in master.wait_for_lines("args=", 2) {
        assert_eq!(line, "args=./s");
    }
    // Waited for, as each worker prints it after its `args=` line.
    for line in master.wait_for_lines("fixture-var=", 2) {
        assert_eq!(line, "fixture-var=print-args");
    }
    // A shorter title after a longer one leaves nothing of it.
    master.signal(Signal::SIGTTOU);
    master.wait_for_line("scaled-down instances=1");
    master.wait_until("the title to count one worker", || {
        (raw(master.pid()) == b"s: master (1 workers)\0").then_some(())
    });
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}
