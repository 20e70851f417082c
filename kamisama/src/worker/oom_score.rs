//! A worker's OOM score, given at the fork rather than written by the worker.
//!
//! A process inherits its parent's `oom_score_adj`. So the master raises its own for the
//! instant of a fork and puts it back at once, two writes on a file it keeps open, instead of
//! each worker opening `/proc/self/oom_score_adj`: a new process must have its /proc
//! directory looked up and made first, which cost 40 µs per respawn on the bench's machine,
//! a sixth of a respawn. The master is more killable only while it forks, and never below
//! the floor the kernel keeps for it (`oom_score_adj_min`): its own value is one it was
//! allowed to have, so putting it back needs no privilege.

use crate::config::WORKER_OOM_SCORE_BIAS;
use crate::Error;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// What a worker's score is.
#[derive(Clone, Copy, Debug)]
enum Wanted {
    /// A value set by hand.
    Set(i32),
    /// The master's own, as it is at the fork, plus the bias, at most 1000.
    AboveMaster,
}

/// The master's own `oom_score_adj`, open, and what a worker's is to be.
#[derive(Debug)]
pub(crate) struct OomScore {
    file: File,
    wanted: Wanted,
}

/// The master's score raised for a fork; put back when dropped.
pub(crate) struct Raised<'a> {
    score: &'a OomScore,
    master: i32,
}

impl OomScore {
    /// Opens the master's score and tries the round trip a fork makes, so that a setting that
    /// cannot be given stops the start: `setting`, or by default the master's plus the bias,
    /// which is left out, without a word, where /proc refuses it (a sandbox).
    pub(crate) fn open(setting: Option<i32>, may_lower: bool) -> Result<Option<Self>, Error> {
        let refused = |reason: String| Error::Confine {
            setting: "oom_score_adj",
            value: setting.map_or_else(String::new, |adj| adj.to_string()),
            reason,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/proc/self/oom_score_adj");
        let wanted = setting.map_or(Wanted::AboveMaster, Wanted::Set);
        let score = match file {
            Ok(file) => OomScore { file, wanted },
            Err(_) if setting.is_none() => return Ok(None),
            Err(error) => return Err(refused(format!("/proc/self/oom_score_adj: {error}"))),
        };
        let master = score.master().map_err(|error| refused(error.to_string()))?;
        if let (Wanted::Set(wanted), false) = (wanted, may_lower) {
            if wanted < master {
                return Err(refused(format!(
                    "it is below the master's {master}, which needs CAP_SYS_RESOURCE"
                )));
            }
        }
        match score.raise() {
            Ok(raised) => drop(raised),
            Err(_) if setting.is_none() => return Ok(None),
            Err(error) => return Err(refused(error.to_string())),
        }
        Ok(Some(score))
    }

    /// In the master, just before a fork: gives the master the worker's score, until the
    /// guard drops. `None` where the two are the same already.
    pub(crate) fn raise(&self) -> io::Result<Option<Raised<'_>>> {
        let master = self.master()?;
        let worker = match self.wanted {
            Wanted::Set(adj) => adj,
            Wanted::AboveMaster => (master + WORKER_OOM_SCORE_BIAS).min(1000),
        };
        if worker == master {
            return Ok(None);
        }
        self.write(worker)?;
        Ok(Some(Raised {
            score: self,
            master,
        }))
    }

    /// In a worker just forked: closes the master's file, which a worker must not write
    /// through (it is the master's score). Async-signal-safe.
    pub(crate) fn close_in_worker(&self) {
        // SAFETY: the master's descriptor, which the worker never uses; it leaves by exec or
        // `_exit`, without running the destructor that would close it again.
        unsafe { libc::close(self.file.as_raw_fd()) };
    }

    /// The master's score now.
    fn master(&self) -> io::Result<i32> {
        let mut text = [0; 16];
        let read = self.file.read_at(&mut text, 0)?;
        std::str::from_utf8(&text[..read])
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a number"))
    }

    fn write(&self, adj: i32) -> io::Result<()> {
        let mut text = [0; 16];
        let mut cursor = &mut text[..];
        write!(cursor, "{adj}")?;
        let len = 16 - cursor.len();
        (&self.file).write_all(&text[..len])
    }
}

impl Drop for Raised<'_> {
    fn drop(&mut self) {
        let _ = self.score.write(self.master);
    }
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
        let score = OomScore::open(None, false).unwrap().unwrap();
        let raised = score.raise().unwrap();
        assert_eq!(own(), (before + 500).min(1000));
        assert_eq!(raised.is_some(), before < 1000);
        drop(raised);
        assert_eq!(own(), before);
    }

    #[test]
    fn a_score_the_master_has_is_inherited_and_not_written() {
        let _oom = OOM_SCORE.lock();
        let score = OomScore::open(Some(own()), false).unwrap().unwrap();
        assert!(score.raise().unwrap().is_none());
    }

    #[test]
    fn a_score_below_the_masters_needs_the_capability() {
        let _oom = OOM_SCORE.lock();
        let before = own();
        if before == -1000 {
            return;
        }
        let error = OomScore::open(Some(before - 1), false).unwrap_err();
        let error = error.to_string();
        assert!(error.contains("CAP_SYS_RESOURCE"), "{error}");
        assert_eq!(own(), before);
    }
}
