//! Run-time overrides from `KAMISAMA_*` environment variables, so that one binary runs 2 workers
//! on a laptop and 40 in production.

use crate::config::{
    Config, CpuAffinity, Heartbeat, LogFormat, Readiness, Restart, Runtime, Signal, MAX_INSTANCES,
    MAX_WORKER_THREADS,
};
use crate::Error;
use std::ffi::OsString;
use std::str::FromStr;
use std::time::Duration;

/// Overrides `instances`.
pub(crate) const INSTANCES: &str = "KAMISAMA_INSTANCES";
/// Overrides `respawn_limit`.
pub(crate) const RESPAWN_LIMIT: &str = "KAMISAMA_RESPAWN_LIMIT";
/// Overrides `respawn_interval`, in seconds.
pub(crate) const RESPAWN_INTERVAL: &str = "KAMISAMA_RESPAWN_INTERVAL";
/// Overrides `shutdown_timeout`, in seconds.
pub(crate) const SHUTDOWN_TIMEOUT: &str = "KAMISAMA_SHUTDOWN_TIMEOUT";
/// Overrides `restart`: `always`, `on-failure` or `never`.
pub(crate) const RESTART: &str = "KAMISAMA_RESTART";
/// Overrides `backoff_max`, in seconds; 0 turns backoff off.
pub(crate) const BACKOFF_MAX: &str = "KAMISAMA_BACKOFF_MAX";
/// Overrides `timeout`, in seconds; 0 turns hang detection off.
pub(crate) const TIMEOUT: &str = "KAMISAMA_TIMEOUT";
/// Overrides `boot_timeout`, in seconds.
pub(crate) const BOOT_TIMEOUT: &str = "KAMISAMA_BOOT_TIMEOUT";
/// Overrides `hang_grace`, in seconds.
pub(crate) const HANG_GRACE: &str = "KAMISAMA_HANG_GRACE";
/// Overrides `hang_signal`: a signal's name, such as `SIGQUIT`.
pub(crate) const HANG_SIGNAL: &str = "KAMISAMA_HANG_SIGNAL";
/// Overrides `runtime`: `current-thread` or `multi-thread`.
pub(crate) const RUNTIME: &str = "KAMISAMA_RUNTIME";
/// Overrides `worker_threads` (and makes the runtime `multi-thread`).
pub(crate) const WORKER_THREADS: &str = "KAMISAMA_WORKER_THREADS";
/// Overrides what beats for an async worker: `runtime` or `manual`.
pub(crate) const HEARTBEAT: &str = "KAMISAMA_HEARTBEAT";
/// Overrides the log format: `text`, `json` or `off`.
pub(crate) const LOG: &str = "KAMISAMA_LOG";
/// Overrides when a worker counts as ready: `forked` or `declared`.
pub(crate) const READINESS: &str = "KAMISAMA_READINESS";
/// Overrides where the master keeps its live status.
pub(crate) const STATUS_FILE: &str = "KAMISAMA_STATUS_FILE";
/// Overrides the addresses to listen on, separated by commas.
pub(crate) const LISTEN: &str = "KAMISAMA_LISTEN";
/// Overrides where the master answers scrapes of its metrics: an address, or `off`.
pub(crate) const METRICS: &str = "KAMISAMA_METRICS";
/// Overrides the listeners' backlog.
pub(crate) const BACKLOG: &str = "KAMISAMA_BACKLOG";
/// Overrides `upgrade_timeout`, in seconds.
pub(crate) const UPGRADE_TIMEOUT: &str = "KAMISAMA_UPGRADE_TIMEOUT";
/// Overrides `upgrade_trial`, in seconds; 0 for none.
pub(crate) const UPGRADE_TRIAL: &str = "KAMISAMA_UPGRADE_TRIAL";
/// Overrides `max_lifetime`, in seconds; 0 for none.
pub(crate) const MAX_LIFETIME: &str = "KAMISAMA_MAX_LIFETIME";
/// Overrides `max_lifetime_jitter`, in seconds.
pub(crate) const MAX_LIFETIME_JITTER: &str = "KAMISAMA_MAX_LIFETIME_JITTER";
/// Overrides `max_requests`; 0 for none.
pub(crate) const MAX_REQUESTS: &str = "KAMISAMA_MAX_REQUESTS";
/// Overrides `max_requests_jitter`.
pub(crate) const MAX_REQUESTS_JITTER: &str = "KAMISAMA_MAX_REQUESTS_JITTER";
/// Overrides `max_memory`: bytes, with `K`, `M`, `G` or `T`; 0 for none.
pub(crate) const MAX_MEMORY: &str = "KAMISAMA_MAX_MEMORY";
/// Overrides `recycle_at_once`.
pub(crate) const RECYCLE_AT_ONCE: &str = "KAMISAMA_RECYCLE_AT_ONCE";
/// Overrides the user workers run as.
pub(crate) const USER: &str = "KAMISAMA_USER";
/// Overrides the group workers run as.
pub(crate) const GROUP: &str = "KAMISAMA_GROUP";
/// Overrides `no_new_privs`: `true` or `false`.
pub(crate) const NO_NEW_PRIVS: &str = "KAMISAMA_NO_NEW_PRIVS";
/// Overrides `limit_nofile`: a number, or `infinity`.
pub(crate) const LIMIT_NOFILE: &str = "KAMISAMA_LIMIT_NOFILE";
/// Overrides `limit_core`, in bytes, or `infinity`.
pub(crate) const LIMIT_CORE: &str = "KAMISAMA_LIMIT_CORE";
/// Overrides `limit_as`, in bytes, or `infinity`.
pub(crate) const LIMIT_AS: &str = "KAMISAMA_LIMIT_AS";
/// Overrides `oom_score_adj`.
pub(crate) const OOM_SCORE_ADJ: &str = "KAMISAMA_OOM_SCORE_ADJ";
/// Overrides `cpu_affinity`: `off` or `auto`.
pub(crate) const CPU_AFFINITY: &str = "KAMISAMA_CPU_AFFINITY";

/// Applies every override set in the process environment, or changes nothing and names the
/// first variable whose value is unusable.
pub(crate) fn apply(config: &mut Config) -> Result<(), Error> {
    apply_from(config, |var| std::env::var_os(var))
}

fn apply_from(config: &mut Config, lookup: impl Fn(&str) -> Option<OsString>) -> Result<(), Error> {
    let mut overridden = config.clone();
    let at_least_one = |n: &u64| *n >= 1;
    if let Some(Instances(instances)) = parse(&lookup, INSTANCES, WORKERS, |n: &Instances| {
        (1..=MAX_INSTANCES).contains(&n.0)
    })? {
        overridden.instances = instances;
    }
    if let Some(limit) = parse(&lookup, RESPAWN_LIMIT, "a whole number of respawns", |_| {
        true
    })? {
        overridden.respawn_limit = limit;
    }
    if let Some(seconds) = parse(&lookup, RESPAWN_INTERVAL, SECONDS, at_least_one)? {
        overridden.respawn_interval = Duration::from_secs(seconds);
    }
    if let Some(seconds) = parse(&lookup, SHUTDOWN_TIMEOUT, SECONDS, at_least_one)? {
        overridden.shutdown_timeout = Duration::from_secs(seconds);
    }
    if let Some(restart) = parse::<Restart>(&lookup, RESTART, POLICIES, |_| true)? {
        overridden.restart = restart;
    }
    if let Some(seconds) = parse(
        &lookup,
        BACKOFF_MAX,
        "a whole number of seconds",
        |_: &u64| true,
    )? {
        overridden.backoff_max = Duration::from_secs(seconds);
    }
    if let Some(seconds) = parse(&lookup, TIMEOUT, "a whole number of seconds", |_: &u64| {
        true
    })? {
        overridden.timeout = Duration::from_secs(seconds);
    }
    if let Some(seconds) = parse(&lookup, BOOT_TIMEOUT, SECONDS, at_least_one)? {
        overridden.boot_timeout = Duration::from_secs(seconds);
    }
    if let Some(seconds) = parse(&lookup, HANG_GRACE, SECONDS, at_least_one)? {
        overridden.hang_grace = Duration::from_secs(seconds);
    }
    if let Some(signal) = parse::<Signal>(
        &lookup,
        HANG_SIGNAL,
        "a signal's name, such as `SIGQUIT` or `SIGRTMIN+2`",
        |_| true,
    )? {
        overridden.hang_signal = signal;
    }
    let runtime = parse::<Runtime>(&lookup, RUNTIME, RUNTIMES, |_| true)?;
    if let Some(runtime) = runtime {
        overridden.runtime = runtime;
        if runtime == Runtime::CurrentThread {
            overridden.worker_threads = None;
        }
    }
    if let Some(threads) = parse(&lookup, WORKER_THREADS, THREADS, |n: &usize| {
        (1..=MAX_WORKER_THREADS).contains(n)
    })? {
        if runtime == Some(Runtime::CurrentThread) {
            return Err(Error::InvalidEnv {
                var: WORKER_THREADS,
                value: threads.to_string(),
                expected: "no value beside KAMISAMA_RUNTIME=current-thread, whose one thread \
                           runs every task; drop one of the two",
            });
        }
        overridden.runtime = Runtime::MultiThread;
        overridden.worker_threads = Some(threads);
    }
    if let Some(heartbeat) =
        parse::<Heartbeat>(&lookup, HEARTBEAT, "`runtime` or `manual`", |_| true)?
    {
        overridden.heartbeat = heartbeat;
    }
    if let Some(format) = parse::<LogFormat>(&lookup, LOG, "`text`, `json` or `off`", |_| true)? {
        overridden.log = format;
    }
    if let Some(readiness) =
        parse::<Readiness>(&lookup, READINESS, "`forked` or `declared`", |_| true)?
    {
        overridden.readiness = readiness;
    }
    if let Some(path) = parse::<std::path::PathBuf>(&lookup, STATUS_FILE, "a path", |path| {
        !path.as_os_str().is_empty()
    })? {
        overridden.status_file = Some(path);
    }
    if let Some(addresses) = parse::<Addresses>(
        &lookup,
        LISTEN,
        "addresses such as `127.0.0.1:8080,unix:/run/app.sock`",
        |addresses| !addresses.0.is_empty(),
    )? {
        overridden.listen = addresses.0;
    }
    if let Some(Metrics(address)) = parse(&lookup, METRICS, METRICS_ADDRESS, Metrics::valid)? {
        overridden.metrics = address;
    }
    if let Some(backlog) = parse(
        &lookup,
        BACKLOG,
        "a whole number, at least 1 and at most 4096",
        |n: &u32| (1..=4096).contains(n),
    )? {
        overridden.backlog = backlog;
    }
    if let Some(seconds) = parse(&lookup, UPGRADE_TIMEOUT, SECONDS, at_least_one)? {
        overridden.upgrade_timeout = Duration::from_secs(seconds);
    }
    let seconds = "a whole number of seconds, 0 for none";
    if let Some(seconds) = parse(&lookup, UPGRADE_TRIAL, seconds, |_: &u64| true)? {
        overridden.upgrade_trial = Duration::from_secs(seconds);
    }
    if let Some(seconds) = parse(&lookup, MAX_LIFETIME, seconds, |_: &u64| true)? {
        overridden.max_lifetime = Duration::from_secs(seconds);
    }
    let jitter = "a whole number of seconds";
    if let Some(seconds) = parse(&lookup, MAX_LIFETIME_JITTER, jitter, |_: &u64| true)? {
        overridden.max_lifetime_jitter = Duration::from_secs(seconds);
    }
    let count = "a whole number";
    if let Some(count) = parse(&lookup, MAX_REQUESTS, count, |_: &u64| true)? {
        overridden.max_requests = count;
    }
    if let Some(count) = parse(&lookup, MAX_REQUESTS_JITTER, count, |_: &u64| true)? {
        overridden.max_requests_jitter = count;
    }
    let bytes = "a number of bytes, with K, M, G or T (powers of 1024), or 0 for none";
    if let Some(Limit(bytes)) = parse(&lookup, MAX_MEMORY, bytes, |limit: &Limit| {
        limit.0 < u64::MAX
    })? {
        overridden.max_memory = bytes;
    }
    let count = "a whole number, at least 1";
    if let Some(count) = parse(&lookup, RECYCLE_AT_ONCE, count, |n: &usize| *n >= 1)? {
        overridden.recycle_at_once = count;
    }
    let name = |name: &String| !name.is_empty() && !name.contains('\0');
    if let Some(user) = parse(&lookup, USER, "a user's name or number", name)? {
        overridden.user = Some(user);
    }
    if let Some(group) = parse(&lookup, GROUP, "a group's name or number", name)? {
        overridden.group = Some(group);
    }
    if let Some(Flag(on)) = parse(&lookup, NO_NEW_PRIVS, "`true` or `false`", |_| true)? {
        overridden.no_new_privs = Some(on);
    }
    let limits = [
        (LIMIT_NOFILE, &mut overridden.limits.nofile),
        (LIMIT_CORE, &mut overridden.limits.core),
        (LIMIT_AS, &mut overridden.limits.address_space),
    ];
    for (var, limit) in limits {
        if let Some(Limit(value)) = parse(&lookup, var, LIMIT, |_| true)? {
            *limit = Some(value);
        }
    }
    if let Some(adj) = parse(&lookup, OOM_SCORE_ADJ, OOM_SCORE, |adj: &i32| {
        (-1000..=1000).contains(adj)
    })? {
        overridden.oom_score_adj = Some(adj);
    }
    if let Some(affinity) =
        parse::<CpuAffinity>(&lookup, CPU_AFFINITY, "`off` or `auto`", |_| true)?
    {
        overridden.cpu_affinity = affinity;
    }
    *config = overridden;
    Ok(())
}

const WORKERS: &str =
    "a whole number of workers, at least 1 and at most 4194304, or `auto` for one per usable CPU";
const LIMIT: &str =
    "a whole number, with K, M, G or T for powers of 1024, or `infinity` for no limit";
const OOM_SCORE: &str = "a whole number from -1000 to 1000";
const SECONDS: &str = "a whole number of seconds, at least 1";
const POLICIES: &str = "`always`, `on-failure` or `never`";
const RUNTIMES: &str = "`current-thread` or `multi-thread`";
const THREADS: &str = "a whole number of threads, at least 1 and at most 1024";

/// A number of workers, or `auto`: one per CPU this process may use.
struct Instances(usize);

impl FromStr for Instances {
    type Err = std::num::ParseIntError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Instances(crate::usable_cpus())),
            number => number.parse().map(Instances),
        }
    }
}

/// A resource limit: a number, with a suffix `K`, `M`, `G` or `T` (powers of 1024, as
/// systemd's `LimitAS=4G`), or `infinity` (`unlimited`, as `ulimit` writes it).
struct Limit(u64);

impl FromStr for Limit {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if matches!(text, "infinity" | "unlimited") {
            return Ok(Limit(u64::MAX));
        }
        let (number, shift) = match text.char_indices().last() {
            Some((at, 'K')) => (&text[..at], 10),
            Some((at, 'M')) => (&text[..at], 20),
            Some((at, 'G')) => (&text[..at], 30),
            Some((at, 'T')) => (&text[..at], 40),
            _ => (text, 0),
        };
        let number: u64 = number.parse().map_err(drop)?;
        number.checked_mul(1 << shift).map(Limit).ok_or(())
    }
}

/// A switch, as systemd writes one: `true`, `yes`, `on`, `1`, or their opposites.
struct Flag(bool);

impl FromStr for Flag {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "true" | "yes" | "on" | "1" => Ok(Flag(true)),
            "false" | "no" | "off" | "0" => Ok(Flag(false)),
            _ => Err(()),
        }
    }
}

/// A comma-separated list of addresses, each trimmed, empty ones left out.
struct Addresses(Vec<String>);

impl FromStr for Addresses {
    type Err = std::convert::Infallible;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        let addresses = list
            .split(',')
            .map(str::trim)
            .filter(|address| !address.is_empty())
            .map(str::to_owned);
        Ok(Addresses(addresses.collect()))
    }
}

/// What `KAMISAMA_METRICS` takes, in a program built with or without the `metrics` feature.
#[cfg(feature = "metrics")]
const METRICS_ADDRESS: &str =
    "an address such as `127.0.0.1:9464` or `unix:/run/app/metrics.sock`, \
                               or `off`";
#[cfg(not(feature = "metrics"))]
const METRICS_ADDRESS: &str = "nothing: this program was built without kamisama's `metrics` \
                               feature (`cargo add kamisama --features metrics`)";

/// `KAMISAMA_METRICS`: an address to serve metrics on, or `off` for none.
struct Metrics(Option<String>);

impl FromStr for Metrics {
    type Err = std::convert::Infallible;

    fn from_str(written: &str) -> Result<Self, Self::Err> {
        let address = written.trim();
        Ok(Metrics((address != "off").then(|| address.to_owned())))
    }
}

impl Metrics {
    /// A host and a port, or `unix:` and a path; with the feature only, as the variable
    /// would do nothing in a program built without it.
    fn valid(&self) -> bool {
        let Some(address) = &self.0 else {
            return true;
        };
        let well_formed = match address.strip_prefix("unix:") {
            Some(path) => !path.is_empty(),
            None => address.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && !host.contains(',') && port.parse::<u16>().is_ok()
            }),
        };
        cfg!(feature = "metrics") && well_formed
    }
}

/// Reads `var` as a `T` that passes `valid`; `None` when it is not set.
fn parse<T: FromStr>(
    lookup: impl Fn(&str) -> Option<OsString>,
    var: &'static str,
    expected: &'static str,
    valid: impl Fn(&T) -> bool,
) -> Result<Option<T>, Error> {
    let Some(raw) = lookup(var) else {
        return Ok(None);
    };
    let value = raw
        .to_str()
        .and_then(|text| text.parse::<T>().ok())
        .filter(valid);
    match value {
        Some(value) => Ok(Some(value)),
        None => Err(Error::InvalidEnv {
            var,
            value: raw.to_string_lossy().into_owned(),
            expected,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply_vars(vars: &[(&str, &str)]) -> Result<Config, Error> {
        let mut config = Config::default();
        apply_from(&mut config, |name| {
            vars.iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| OsString::from(value))
        })?;
        Ok(config)
    }

    #[test]
    fn unset_variables_change_nothing() {
        assert_eq!(apply_vars(&[]).unwrap(), Config::default());
    }

    #[test]
    fn every_variable_overrides_its_setting() {
        let config = apply_vars(&[
            (INSTANCES, "40"),
            (RESPAWN_LIMIT, "0"),
            (RESPAWN_INTERVAL, "5"),
            (SHUTDOWN_TIMEOUT, "2"),
            (RESTART, "on-failure"),
            (BACKOFF_MAX, "30"),
            (TIMEOUT, "20"),
            (BOOT_TIMEOUT, "90"),
            (HANG_GRACE, "4"),
            (HANG_SIGNAL, "SIGRTMIN+1"),
            (WORKER_THREADS, "3"),
            (HEARTBEAT, "manual"),
            (LOG, "json"),
            (READINESS, "declared"),
            (USER, "nobody"),
            (GROUP, "65534"),
            (NO_NEW_PRIVS, "false"),
            (LIMIT_NOFILE, "4096"),
            (LIMIT_CORE, "infinity"),
            (LIMIT_AS, "1G"),
            (OOM_SCORE_ADJ, "-5"),
            (CPU_AFFINITY, "auto"),
            (UPGRADE_TRIAL, "0"),
            (MAX_LIFETIME, "3600"),
            (MAX_LIFETIME_JITTER, "600"),
            (MAX_REQUESTS, "10000"),
            (MAX_REQUESTS_JITTER, "1000"),
            (MAX_MEMORY, "512M"),
            (RECYCLE_AT_ONCE, "3"),
        ])
        .unwrap();
        assert_eq!(
            config,
            Config {
                instances: 40,
                respawn_limit: 0,
                respawn_interval: Duration::from_secs(5),
                shutdown_timeout: Duration::from_secs(2),
                restart: Restart::OnFailure,
                backoff_max: Duration::from_secs(30),
                timeout: Duration::from_secs(20),
                boot_timeout: Duration::from_secs(90),
                hang_grace: Duration::from_secs(4),
                hang_signal: Signal::rt(1),
                runtime: Runtime::MultiThread,
                worker_threads: Some(3),
                heartbeat: Heartbeat::Manual,
                log: LogFormat::Json,
                readiness: Readiness::Declared,
                user: Some("nobody".into()),
                group: Some("65534".into()),
                no_new_privs: Some(false),
                limits: crate::config::Limits {
                    nofile: Some(4096),
                    core: Some(u64::MAX),
                    address_space: Some(1 << 30),
                },
                oom_score_adj: Some(-5),
                cpu_affinity: CpuAffinity::Auto,
                upgrade_trial: Duration::ZERO,
                max_lifetime: Duration::from_secs(3600),
                max_lifetime_jitter: Duration::from_secs(600),
                max_requests: 10_000,
                max_requests_jitter: 1000,
                max_memory: 512 << 20,
                recycle_at_once: 3,
                ..Config::default()
            }
        );
    }

    #[test]
    fn limits_take_the_suffixes_systemd_takes() {
        for (value, bytes) in [
            ("0", 0),
            ("512", 512),
            ("4K", 4 << 10),
            ("64M", 64 << 20),
            ("4G", 4 << 30),
            ("2T", 2 << 40),
            ("infinity", u64::MAX),
        ] {
            let config = apply_vars(&[(LIMIT_AS, value)]).unwrap();
            assert_eq!(config.limits.address_space, Some(bytes), "{value}");
        }
    }

    #[test]
    fn auto_instances_are_the_usable_cpus() {
        let config = apply_vars(&[(INSTANCES, "auto")]).unwrap();
        assert_eq!(config.instances, crate::usable_cpus());
    }

    #[test]
    fn an_invalid_value_names_the_variable_and_the_value() {
        for (var, value) in [
            (INSTANCES, "0"),
            (INSTANCES, "many"),
            (INSTANCES, ""),
            (INSTANCES, " 4"),
            (INSTANCES, "4194305"),
            (INSTANCES, "18446744073709551615"),
            (INSTANCES, "18446744073709551616"),
            (RESPAWN_LIMIT, "-1"),
            (RESPAWN_INTERVAL, "0"),
            (RESPAWN_INTERVAL, "1.5"),
            (SHUTDOWN_TIMEOUT, "10s"),
            (RESTART, "sometimes"),
            (RESTART, "Always"),
            (BACKOFF_MAX, "-3"),
            (TIMEOUT, "soon"),
            (BOOT_TIMEOUT, "0"),
            (HANG_GRACE, "0"),
            (HANG_SIGNAL, "SIGNOPE"),
            (HANG_SIGNAL, "SIGRTMIN+200"),
            (RUNTIME, "multi_thread"),
            (WORKER_THREADS, "0"),
            (WORKER_THREADS, "1025"),
            (LOG, "yaml"),
            (HEARTBEAT, "auto"),
            (READINESS, "ready"),
            (LISTEN, ""),
            (LISTEN, " , "),
            (INSTANCES, "Auto"),
            (USER, ""),
            (GROUP, ""),
            (NO_NEW_PRIVS, "maybe"),
            (LIMIT_NOFILE, "-1"),
            (LIMIT_CORE, "1g"),
            (LIMIT_CORE, "G"),
            (LIMIT_NOFILE, "16777216T"),
            (LIMIT_AS, "unlimited "),
            (OOM_SCORE_ADJ, "1001"),
            (OOM_SCORE_ADJ, "-1001"),
            (CPU_AFFINITY, "all"),
            (METRICS, ""),
            (METRICS, "9464"),
            (METRICS, "unix:"),
            (METRICS, ":9464"),
            (METRICS, "127.0.0.1:http"),
        ] {
            let error = apply_vars(&[(var, value)]).unwrap_err().to_string();
            assert!(error.contains(var), "{error}");
            assert!(error.contains(&format!("{value:?}")), "{error}");
        }
    }

    #[test]
    fn a_current_thread_runtime_from_the_environment_has_no_worker_threads() {
        let mut config = Config {
            runtime: Runtime::MultiThread,
            worker_threads: Some(4),
            ..Config::default()
        };
        apply_from(&mut config, |name| {
            (name == RUNTIME).then(|| "current-thread".into())
        })
        .unwrap();
        assert_eq!(
            (config.runtime, config.worker_threads),
            (Runtime::CurrentThread, None)
        );
        let error = apply_vars(&[(RUNTIME, "current-thread"), (WORKER_THREADS, "2")]);
        let error = error.unwrap_err().to_string();
        assert!(
            error.contains(WORKER_THREADS) && error.contains(RUNTIME),
            "{error}"
        );
    }

    #[test]
    fn listen_addresses_are_trimmed() {
        let config = apply_vars(&[(LISTEN, " 127.0.0.1:80 ,unix:/run/a.sock,, [::1]:8080")]);
        assert_eq!(
            config.unwrap().listen,
            ["127.0.0.1:80", "unix:/run/a.sock", "[::1]:8080"]
        );
    }

    #[test]
    fn a_metrics_address_is_taken_with_the_feature_and_off_turns_it_off() {
        let config = apply_vars(&[(METRICS, " 127.0.0.1:9464 ")]);
        if cfg!(feature = "metrics") {
            assert_eq!(config.unwrap().metrics.as_deref(), Some("127.0.0.1:9464"));
        } else {
            let error = config.unwrap_err().to_string();
            assert!(error.contains("`metrics` feature"), "{error}");
        }
        let mut config = Config {
            metrics: Some("[::1]:9464".to_owned()),
            ..Config::default()
        };
        apply_from(&mut config, |name| (name == METRICS).then(|| "off".into())).unwrap();
        assert_eq!(config.metrics, None);
    }

    #[test]
    fn one_invalid_value_applies_no_override() {
        let mut config = Config::default();
        let result = apply_from(&mut config, |name| match name {
            INSTANCES => Some("7".into()),
            SHUTDOWN_TIMEOUT => Some("never".into()),
            _ => None,
        });
        assert!(result.is_err());
        assert_eq!(config, Config::default());
    }
}
