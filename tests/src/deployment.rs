//! A server installed at a path of the test's own, so that a deploy can rename a new file over
//! it, as package managers and deploy tools do, and the master's upgrade finds it there.

use crate::{field, Master};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// Worker pids.
pub type Pids = BTreeSet<u32>;

/// A program installed at `dir/app`.
pub struct Deployment {
    /// The directory it is installed in.
    pub dir: PathBuf,
}

impl Deployment {
    /// Installs a copy of `program` (a `CARGO_BIN_EXE_*` path) in `dir`, which
    /// [`scratch!`](crate::scratch) makes.
    pub fn new(dir: PathBuf, program: &str) -> Self {
        let deployment = Deployment { dir };
        deployment.install(&fs::read(program).expect("the program to install"));
        deployment
    }

    /// The installed program's path.
    pub fn app(&self) -> String {
        let app = self.dir.join("app");
        app.to_str().expect("a UTF-8 path").to_owned()
    }

    /// Writes `program` next to the installed one and renames it over it: the running
    /// binary's file is then deleted, and the path names the new one.
    pub fn install(&self, program: &[u8]) {
        let new = self.dir.join("app.new");
        fs::write(&new, program).expect("write the new program");
        fs::set_permissions(&new, fs::Permissions::from_mode(0o755)).expect("make it runnable");
        fs::rename(&new, self.dir.join("app")).expect("rename it over the old one");
    }

    /// Installs a shell script in place of the program.
    pub fn install_script(&self, script: &str) {
        self.install(format!("#!/bin/sh\n{script}\n").as_bytes());
    }

    /// Starts the installed server with `instances` workers on a free port of loopback, and
    /// `settings` in its environment; returns it with its address and its workers. An empty
    /// value leaves a variable unset: the default.
    pub fn start(&self, instances: usize, settings: &[(&str, &str)]) -> (Master, SocketAddr, Pids) {
        let mut launch = Master::launch(&self.app())
            .env("KAMISAMA_LISTEN", "127.0.0.1:0")
            .env("KAMISAMA_INSTANCES", &instances.to_string());
        for (key, value) in settings {
            launch = match *value {
                "" => launch.env_remove(key),
                value => launch.env(key, value),
            };
        }
        let master = launch.start();
        let line = master.wait_for_line("listening address=");
        let address = field(&line, "address")
            .and_then(|address| address.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let workers = spawned_by(&master, master.pid(), instances);
        (master, address, workers)
    }
}

/// Waits until the master `pid` (whose output `output` collects: the first master's, or a
/// successor's, which inherited it) has forked `instances` workers, and returns their pids.
pub fn spawned_by(output: &Master, pid: Pid, instances: usize) -> Pids {
    output
        .wait_for_lines(&format!("kamisama[{pid}]: spawned index="), instances)
        .iter()
        .filter_map(|line| field(line, "pid")?.parse().ok())
        .collect()
}

/// Sends USR2 to the master `master` and returns the new master's pid.
pub fn upgrade(output: &Master, master: Pid) -> Pid {
    let started = format!("kamisama[{master}]: upgrade-started");
    let before = output.count_lines(&started);
    kill(master, Signal::SIGUSR2).expect("signal the master");
    let line = output.wait_for_lines(&started, before + 1).remove(before);
    let pid = field(&line, "pid").and_then(|pid| pid.parse().ok());
    Pid::from_raw(pid.unwrap_or_else(|| panic!("no pid in {line:?}")))
}
