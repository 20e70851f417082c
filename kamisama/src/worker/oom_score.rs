//! A worker's OOM score, given at the fork rather than written by the worker.
//!
//! A process inherits its parent's `oom_score_adj`. So the master takes the worker's score
//! for the instant of a fork and puts its own back at once, instead of each worker opening
//! `/proc/self/oom_score_adj`: a new process must have its /proc directory looked up and made
//! first, which cost 40 µs per respawn on the bench's machine, a sixth of a respawn, where
//! the master's own is cached. The master is more killable only while it forks, and never
//! below the floor the kernel keeps for it (`oom_score_adj_min`): its own value is one it was
//! allowed to have, so putting it back needs no privilege. The file is opened at the first
//! fork and kept open: a fork then costs the master a read and two writes, where opening and
//! closing it each time cost as much again (a path walk through /proc). Opened no earlier, so
//! that the descriptors the master needs come first: a master with none to spare loses
//! nothing but the adjustment, and tries again at the next fork. Every process the master
//! forks closes it first thing: through it, the master's score could be changed.

use crate::config::WORKER_OOM_SCORE_BIAS;
use crate::Error;
use std::cell::OnceCell;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;

/// What a worker's score is.
#[derive(Clone, Copy, Debug)]
pub(crate) enum OomScore {
    /// A value set by hand.
    Set(i32),
    /// The master's own, as it is at the fork, plus the bias, at most 1000.
    AboveMaster,
}

/// A worker's score, and the master's own, open from the first fork, to lend it for each.
#[derive(Debug)]
pub(crate) struct Lender {
    score: OomScore,
    file: OnceCell<File>,
}

/// The master's score, lent to a fork; put back when dropped.
pub(crate) struct Lent<'a> {
    file: &'a File,
    master: i32,
}

impl OomScore {
    /// Tries the round trip a fork makes, so that a setting that cannot be given stops the
    /// start: `setting`, or by default the master's plus the bias, which is left out, without
    /// a word, where /proc refuses it (a sandbox).
    pub(crate) fn resolve(setting: Option<i32>, may_lower: bool) -> Result<Option<Lender>, Error> {
        let refused = |reason: String| Error::Confine {
            setting: "oom_score_adj",
            value: setting.map_or_else(String::new, |adj| adj.to_string()),
            reason,
        };
        let score = setting.map_or(OomScore::AboveMaster, OomScore::Set);
        if let (OomScore::Set(wanted), false) = (score, may_lower) {
            let master = open()
                .and_then(|file| read(&file))
                .map_err(|error| refused(format!("/proc/self/oom_score_adj: {error}")))?;
            if wanted < master {
                return Err(refused(format!(
                    "it is below the master's {master}, which needs CAP_SYS_RESOURCE"
                )));
            }
        }
        // Without a word where /proc refuses the default; a setting asked for stops the start.
        let give_up = |error: io::Error| match setting {
            None => Ok(None),
            Some(_) => Err(refused(format!("/proc/self/oom_score_adj: {error}"))),
        };
        let mut lender = Lender {
            score,
            file: OnceCell::new(),
        };
        if let Err(error) = lender.lend() {
            return give_up(error);
        }
        // Closed until the first fork.
        drop(lender.file.take());
        Ok(Some(lender))
    }
}

impl Lender {
    /// In the master, just before a fork: gives the master the worker's score, until the
    /// guard drops. `None` where the two are the same already.
    pub(crate) fn lend(&self) -> io::Result<Option<Lent<'_>>> {
        let file = match self.file.get() {
            Some(file) => file,
            None => {
                let _ = self.file.set(open()?);
                self.file.get().expect("just set")
            }
        };
        let master = read(file)?;
        let worker = match self.score {
            OomScore::Set(adj) => adj,
            OomScore::AboveMaster => (master + WORKER_OOM_SCORE_BIAS).min(1000),
        };
        if worker == master {
            return Ok(None);
        }
        write(file, worker)?;
        Ok(Some(Lent { file, master }))
    }

    /// The master's descriptor, which a process just forked closes first thing: through it,
    /// the child could change the master's score.
    pub(crate) fn fd(&self) -> Option<RawFd> {
        self.file.get().map(AsRawFd::as_raw_fd)
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let _ = write(self.file, self.master);
    }
}

/// This process's score, open for reading and writing.
fn open() -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/self/oom_score_adj")
}

fn read(file: &File) -> io::Result<i32> {
    let mut text = [0; 16];
    let read = file.read_at(&mut text, 0)?;
    std::str::from_utf8(&text[..read])
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a number"))
}

fn write(mut file: &File, adj: i32) -> io::Result<()> {
    let mut text = [0; 16];
    let mut cursor = &mut text[..];
    write!(cursor, "{adj}")?;
    let len = 16 - cursor.len();
    file.write_all(&text[..len])
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Held by the tests that change this process's score, or make a round trip of it.
    pub(in crate::worker) static OOM_SCORE: Mutex<()> = Mutex::new(());

    fn own() -> i32 {
        let text = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
        text.trim().parse().unwrap()
    }

    #[test]
    fn the_master_is_raised_to_its_own_score_plus_the_bias_and_put_back() {
        let _oom = OOM_SCORE.lock();
        let before = own();
        let lender = OomScore::resolve(None, false).unwrap().unwrap();
        let lent = lender.lend().unwrap();
        assert_eq!(own(), (before + 500).min(1000));
        assert_eq!(lent.is_some(), before < 1000);
        drop(lent);
        assert_eq!(own(), before);
    }

    #[test]
    fn a_score_the_master_has_is_inherited_and_not_written() {
        let _oom = OOM_SCORE.lock();
        let lender = OomScore::resolve(Some(own()), false).unwrap().unwrap();
        assert!(lender.lend().unwrap().is_none());
    }

    #[test]
    fn a_score_below_the_masters_needs_the_capability() {
        let _oom = OOM_SCORE.lock();
        let before = own();
        if before == -1000 {
            return;
        }
        let error = OomScore::resolve(Some(before - 1), false).unwrap_err();
        let error = error.to_string();
        assert!(error.contains("CAP_SYS_RESOURCE"), "{error}");
        assert_eq!(own(), before);
    }
}
