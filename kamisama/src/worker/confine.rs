//! What a worker gives up after its fork, before the user's code runs: the master's identity
//! (`user`, `group`), the chance to gain privileges again (`no_new_privs`), and resources
//! (limits, an OOM score that makes it the kernel's first choice, its CPUs).
//!
//! The master resolves every setting once, before its first fork, and refuses there what a
//! worker could not do (a user that does not exist, a switch it has no right to make), so
//! that no worker is forked to fail. A worker then applies the result with system calls
//! only: no lookup, no allocation, nothing that could fail for a reason the master did not
//! check.
//!
//! The OOM score comes with the fork ([`oom_score`](super::oom_score)). Then the order is the
//! one that works: CPUs and limits while the worker still has the master's rights (raising a
//! hard limit needs them); then the groups, the group, the user, in that order, since each
//! step needs the rights the next one takes away; then `no_new_privs`; then the proof that
//! root cannot be had back.

use super::oom_score::{Lender, Lent, OomScore};
use crate::config::{Config, CpuAffinity, Limits};
use crate::Error;
use nix::errno::Errno;
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::sys::prctl;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::unistd::{
    getegid, geteuid, getgrouplist, setgroups, setresgid, setresuid, setuid, Gid, Group, Pid, Uid,
    User,
};
use std::ffi::CString;
use std::fmt;
use std::fs;

/// Everything a worker applies to itself, resolved by the master.
#[derive(Debug, Default)]
pub(crate) struct Confinement {
    identity: Option<Identity>,
    no_new_privs: bool,
    /// Each limit to set, as both the soft and the hard limit.
    limits: Vec<(Resource, u64)>,
    /// Given at the fork, by the master.
    oom_score_adj: Option<Lender>,
    /// The CPUs to pin worker `i` to, the `i % len`-th; empty when not pinned.
    cpus: Vec<usize>,
}

/// The ids a worker takes.
#[derive(Debug)]
struct Identity {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

/// Why a worker could not confine itself: the step and its error, or what went wrong
/// though every call succeeded.
pub(crate) enum Failed {
    Call { step: &'static str, errno: Errno },
    RootRegained,
}

impl fmt::Debug for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failed::Call { step, errno } => write!(f, "{step} failed: {}", errno.desc()),
            Failed::RootRegained => f.write_str("setuid(0) succeeded after the switch of user"),
        }
    }
}

/// The capabilities the master's checks ask about (capability.h).
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SYS_RESOURCE: u32 = 24;

impl Confinement {
    /// Resolves `config` for the workers, or says which setting cannot be applied and why.
    pub(crate) fn resolve(config: &Config) -> Result<Self, Error> {
        let identity = Identity::resolve(config)?;
        let limits = resolve_limits(&config.limits)?;
        let oom_score_adj =
            OomScore::resolve(config.oom_score_adj, has_capability(CAP_SYS_RESOURCE))?;
        let cpus = match config.cpu_affinity {
            CpuAffinity::Off => Vec::new(),
            CpuAffinity::Auto => {
                let mask = sched_getaffinity(Pid::from_raw(0))
                    .map_err(|errno| Error::os("sched_getaffinity", errno))?;
                (0..CpuSet::count())
                    .filter(|cpu| mask.is_set(*cpu).unwrap_or(false))
                    .collect()
            }
        };
        Ok(Confinement {
            no_new_privs: config
                .no_new_privs
                .unwrap_or(config.user.is_some() || config.group.is_some()),
            identity,
            limits,
            oom_score_adj,
            cpus,
        })
    }

    /// In the master, just before a fork: what the worker gets from it rather than sets
    /// itself (its OOM score), until the guard drops after the fork.
    pub(crate) fn forking(&self) -> Option<Lent<'_>> {
        // A score the kernel refuses now (an operator changed the master's floor since the
        // start) leaves the worker with the master's: no worker is lost for it.
        self.oom_score_adj.as_ref()?.lend().ok().flatten()
    }

    /// The master's descriptor for its OOM score, which a worker closes first thing.
    pub(crate) fn master_fd(&self) -> Option<std::os::fd::RawFd> {
        self.oom_score_adj.as_ref()?.fd()
    }

    /// In worker `index`, just forked: applies everything, in the order that works (see the
    /// module's documentation). System calls only.
    pub(crate) fn apply(&self, index: usize) -> Result<(), Failed> {
        let failed = |step| move |errno| Failed::Call { step, errno };
        if !self.cpus.is_empty() {
            let mut mask = CpuSet::new();
            let _ = mask.set(self.cpus[index % self.cpus.len()]);
            sched_setaffinity(Pid::from_raw(0), &mask).map_err(failed("sched_setaffinity"))?;
        }
        for (resource, limit) in &self.limits {
            setrlimit(*resource, *limit, *limit).map_err(failed("setrlimit"))?;
        }
        if let Some(identity) = &self.identity {
            setgroups(&identity.groups).map_err(failed("setgroups"))?;
            let gid = identity.gid;
            setresgid(gid, gid, gid).map_err(failed("setresgid"))?;
            let uid = identity.uid;
            setresuid(uid, uid, uid).map_err(failed("setresuid"))?;
            if !uid.is_root() && setuid(Uid::from_raw(0)).is_ok() {
                return Err(Failed::RootRegained);
            }
        }
        if self.no_new_privs {
            prctl::set_no_new_privs().map_err(failed("no_new_privs"))?;
        }
        Ok(())
    }
}

impl Identity {
    /// The ids of `user` and `group`, if either is set, or `None` when the workers keep the
    /// master's.
    fn resolve(config: &Config) -> Result<Option<Identity>, Error> {
        if config.user.is_none() && config.group.is_none() {
            return Ok(None);
        }
        let user = match &config.user {
            Some(name) => Some(find_user(name)?),
            None => None,
        };
        let group = match &config.group {
            Some(name) => Some(find_group(name)?),
            None => None,
        };
        let uid = user.as_ref().map_or_else(geteuid, |user| user.uid);
        let gid = group
            .or(user.as_ref().map(|user| user.gid))
            .unwrap_or_else(getegid);
        // The user's supplementary groups, as a login would give them (`initgroups`); with a
        // group alone, that group and no other.
        let groups = match user
            .as_ref()
            .and_then(|user| CString::new(user.name.clone()).ok())
        {
            Some(name) => getgrouplist(&name, gid).unwrap_or_else(|_| vec![gid]),
            None => vec![gid],
        };
        let (setting, value) = match (&config.user, &config.group) {
            (Some(user), _) => ("user", user),
            (None, Some(group)) => ("group", group),
            (None, None) => unreachable!("one of the two is set"),
        };
        let refused = |capability: &str| Error::Confine {
            setting,
            value: value.clone(),
            reason: format!(
                "the master may not switch to it (it needs {capability}: start it as root, \
                 which the workers then give up)"
            ),
        };
        if uid != geteuid() && !has_capability(CAP_SETUID) {
            return Err(refused("CAP_SETUID"));
        }
        if gid != getegid() && !has_capability(CAP_SETGID) {
            return Err(refused("CAP_SETGID"));
        }
        if (uid, gid) == (geteuid(), getegid()) && !has_capability(CAP_SETGID) {
            // The master's own user and group, which it may not give other groups: the
            // workers run as it does, groups included, as they would without the setting.
            return Ok(None);
        }
        Ok(Some(Identity { uid, gid, groups }))
    }
}

/// The user named `name`, or numbered `name` when no user has that name.
fn find_user(name: &str) -> Result<User, Error> {
    let not_found = |reason: String| Error::Confine {
        setting: "user",
        value: name.to_owned(),
        reason,
    };
    let by_name = User::from_name(name).map_err(|errno| not_found(errno.desc().to_owned()))?;
    let by_number = || {
        let uid = name.parse().ok().map(Uid::from_raw)?;
        User::from_uid(uid).ok().flatten()
    };
    by_name
        .or_else(by_number)
        .ok_or_else(|| not_found("no such user (see `getent passwd`)".to_owned()))
}

/// The group named `name`, or numbered `name`, which need not have an entry.
fn find_group(name: &str) -> Result<Gid, Error> {
    let not_found = |reason: String| Error::Confine {
        setting: "group",
        value: name.to_owned(),
        reason,
    };
    let by_name = Group::from_name(name).map_err(|errno| not_found(errno.desc().to_owned()))?;
    by_name
        .map(|group| group.gid)
        .or_else(|| name.parse().ok().map(Gid::from_raw))
        .ok_or_else(|| not_found("no such group (see `getent group`)".to_owned()))
}

/// Each limit set, checked against what the master may grant: above its own hard limit only
/// with `CAP_SYS_RESOURCE`.
fn resolve_limits(limits: &Limits) -> Result<Vec<(Resource, u64)>, Error> {
    let settings = [
        ("limit_nofile", Resource::RLIMIT_NOFILE, limits.nofile),
        ("limit_core", Resource::RLIMIT_CORE, limits.core),
        ("limit_as", Resource::RLIMIT_AS, limits.address_space),
    ];
    let mut resolved = Vec::new();
    for (setting, resource, limit) in settings {
        let Some(limit) = limit else { continue };
        let (_, hard) = getrlimit(resource).map_err(|errno| Error::os("getrlimit", errno))?;
        if limit > hard && !has_capability(CAP_SYS_RESOURCE) {
            return Err(Error::Confine {
                setting,
                value: limit.to_string(),
                reason: format!(
                    "the master's hard limit is {}, and raising it needs CAP_SYS_RESOURCE",
                    Shown(hard)
                ),
            });
        }
        if resource == Resource::RLIMIT_NOFILE {
            let ceiling = fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok());
            if let Some(ceiling) = ceiling.filter(|ceiling| limit > *ceiling) {
                return Err(Error::Confine {
                    setting,
                    value: limit.to_string(),
                    reason: format!("the kernel allows at most {ceiling} (fs.nr_open)"),
                });
            }
        }
        resolved.push((resource, limit));
    }
    Ok(resolved)
}

/// A limit as `ulimit` shows it.
struct Shown(u64);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            u64::MAX => f.write_str("unlimited"),
            limit => write!(f, "{limit}"),
        }
    }
}

/// Whether this process has `capability` in its effective set, from `/proc/self/status`;
/// where /proc cannot tell, whether it runs as root.
fn has_capability(capability: u32) -> bool {
    let effective = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))?;
            u64::from_str_radix(line.trim(), 16).ok()
        });
    match effective {
        Some(effective) => effective & (1 << capability) != 0,
        None => geteuid().is_root(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::oom_score::tests::OOM_SCORE;
    use super::*;

    #[test]
    fn an_unknown_user_or_group_names_the_setting_and_the_value() {
        let _oom = OOM_SCORE.lock();
        for config in [
            Config {
                user: Some("no-such-user-kamisama".into()),
                ..Config::default()
            },
            Config {
                group: Some("no-such-group-kamisama".into()),
                ..Config::default()
            },
        ] {
            let error = Confinement::resolve(&config).unwrap_err().to_string();
            assert!(error.contains("no-such-"), "{error}");
            assert!(error.contains("no such"), "{error}");
        }
    }

    #[test]
    fn no_new_privs_is_on_by_default_only_for_workers_that_change_identity() {
        let _oom = OOM_SCORE.lock();
        let own = User::from_uid(geteuid()).unwrap().unwrap().name;
        let unchanged = Confinement::resolve(&Config::default()).unwrap();
        assert!(!unchanged.no_new_privs && unchanged.identity.is_none());
        let switched = Confinement::resolve(&Config {
            user: Some(own),
            ..Config::default()
        })
        .unwrap();
        assert!(switched.no_new_privs);
    }

    #[test]
    fn a_limit_above_the_hard_limit_needs_the_capability() {
        let (_, hard) = getrlimit(Resource::RLIMIT_CORE).unwrap();
        let limits = Limits {
            core: Some(hard.saturating_add(1)),
            ..Limits::default()
        };
        let result = resolve_limits(&limits);
        if hard == u64::MAX || has_capability(CAP_SYS_RESOURCE) {
            assert!(result.is_ok());
        } else {
            let error = result.unwrap_err().to_string();
            assert!(error.contains("limit_core") && error.contains("CAP_SYS_RESOURCE"));
        }
    }
}
