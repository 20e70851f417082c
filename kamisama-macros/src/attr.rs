//! Parsing the attribute's arguments: `instances = 17, restart = "on-failure", ...`.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{Error, Expr, ExprLit, Lit, Token};

/// The arguments as written, each value checked and kept with its span.
pub(crate) struct Args {
    pub(crate) settings: Vec<Setting>,
    /// Where the generated paths start: `::kamisama`, or the path `crate = "..."` gives, for
    /// a crate renamed in Cargo.toml.
    pub(crate) krate: TokenStream,
}

impl Args {
    /// The crate's name where the user's crate calls it: the last segment of its path.
    pub(crate) fn crate_name(&self) -> String {
        let path = self.krate.to_string().replace(' ', "");
        path.rsplit("::").next().unwrap_or("kamisama").to_owned()
    }
}

/// One `key = value` argument.
pub(crate) struct Setting {
    pub(crate) key: Key,
    /// Where the key is written, for errors about the setting as a whole.
    pub(crate) key_span: Span,
    pub(crate) value: Value,
    /// Where the value is written: the generated code carries it.
    pub(crate) span: Span,
}

pub(crate) enum Value {
    Integer(u64),
    /// An integer that may be negative.
    Signed(i64),
    Bool(bool),
    /// `instances = "auto"`: one per usable CPU, counted at run time.
    Auto,
    /// A path or a name, as written.
    Path(String),
    /// Addresses, as written, each with its span.
    Addresses(Vec<(String, Span)>),
    /// The variant of a `kamisama` enum that the string names.
    Variant {
        enumeration: &'static str,
        variant: &'static str,
    },
    /// A signal: the name of a `kamisama::Signal` constant, or `SIGRTMIN+n`.
    Signal(Signal),
}

/// A signal the attribute takes, by the `kamisama::Signal` item it becomes.
pub(crate) enum Signal {
    /// A constant, such as `QUIT`.
    Named(&'static str),
    /// `SIGRTMIN+n`.
    RealTime(u8),
}

impl Signal {
    /// The signals `kamisama::Signal` has a constant for.
    const NAMED: [&'static str; 8] = [
        "ABRT", "QUIT", "TRAP", "USR1", "USR2", "TERM", "INT", "KILL",
    ];

    /// `"SIGQUIT"`, `"quit"`, `"SIGRTMIN+2"`.
    fn parse(name: &str) -> Option<Signal> {
        let upper = name.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        if let Some(n) = bare.strip_prefix("RTMIN") {
            return match n.strip_prefix('+') {
                Some(n) => n.parse().ok().map(Signal::RealTime),
                None => n.is_empty().then_some(Signal::RealTime(0)),
            };
        }
        Signal::NAMED
            .into_iter()
            .find(|named| *named == bare)
            .map(Signal::Named)
    }
}

/// The strings a key takes, each naming a variant of a `kamisama` enum.
pub(crate) struct Names {
    /// What a string names, for messages: "restart policy".
    what: &'static str,
    /// The enum: `Restart` for `kamisama::Restart`.
    enumeration: &'static str,
    /// Each string as written, with its variant.
    variants: &'static [(&'static str, &'static str)],
}

/// The keys the attribute accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    Instances,
    RespawnLimit,
    RespawnInterval,
    ShutdownTimeout,
    Restart,
    BackoffMax,
    Timeout,
    BootTimeout,
    HangGrace,
    HangSignal,
    Runtime,
    WorkerThreads,
    Heartbeat,
    Log,
    Readiness,
    StatusFile,
    Listen,
    Metrics,
    Backlog,
    UpgradeTimeout,
    UpgradeTrial,
    MaxLifetime,
    MaxLifetimeJitter,
    MaxRequests,
    MaxRequestsJitter,
    MaxMemory,
    RecycleAtOnce,
    User,
    Group,
    NoNewPrivs,
    LimitNofile,
    LimitCore,
    LimitAs,
    OomScoreAdj,
    CpuAffinity,
    Crate,
}

impl Key {
    const ALL: [Key; 36] = [
        Key::Instances,
        Key::RespawnLimit,
        Key::RespawnInterval,
        Key::ShutdownTimeout,
        Key::Restart,
        Key::BackoffMax,
        Key::Timeout,
        Key::BootTimeout,
        Key::HangGrace,
        Key::HangSignal,
        Key::Runtime,
        Key::WorkerThreads,
        Key::Heartbeat,
        Key::Log,
        Key::Readiness,
        Key::StatusFile,
        Key::Listen,
        Key::Metrics,
        Key::Backlog,
        Key::UpgradeTimeout,
        Key::UpgradeTrial,
        Key::MaxLifetime,
        Key::MaxLifetimeJitter,
        Key::MaxRequests,
        Key::MaxRequestsJitter,
        Key::MaxMemory,
        Key::RecycleAtOnce,
        Key::User,
        Key::Group,
        Key::NoNewPrivs,
        Key::LimitNofile,
        Key::LimitCore,
        Key::LimitAs,
        Key::OomScoreAdj,
        Key::CpuAffinity,
        Key::Crate,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Key::Instances => "instances",
            Key::RespawnLimit => "respawn_limit",
            Key::RespawnInterval => "respawn_interval",
            Key::ShutdownTimeout => "shutdown_timeout",
            Key::Restart => "restart",
            Key::BackoffMax => "backoff_max",
            Key::Timeout => "timeout",
            Key::BootTimeout => "boot_timeout",
            Key::HangGrace => "hang_grace",
            Key::HangSignal => "hang_signal",
            Key::Runtime => "runtime",
            Key::WorkerThreads => "worker_threads",
            Key::Heartbeat => "heartbeat",
            Key::Log => "log",
            Key::Readiness => "readiness",
            Key::StatusFile => "status_file",
            Key::Listen => "listen",
            Key::Metrics => "metrics",
            Key::Backlog => "backlog",
            Key::UpgradeTimeout => "upgrade_timeout",
            Key::UpgradeTrial => "upgrade_trial",
            Key::MaxLifetime => "max_lifetime",
            Key::MaxLifetimeJitter => "max_lifetime_jitter",
            Key::MaxRequests => "max_requests",
            Key::MaxRequestsJitter => "max_requests_jitter",
            Key::MaxMemory => "max_memory",
            Key::RecycleAtOnce => "recycle_at_once",
            Key::User => "user",
            Key::Group => "group",
            Key::NoNewPrivs => "no_new_privs",
            Key::LimitNofile => "limit_nofile",
            Key::LimitCore => "limit_core",
            Key::LimitAs => "limit_as",
            Key::OomScoreAdj => "oom_score_adj",
            Key::CpuAffinity => "cpu_affinity",
            Key::Crate => "crate",
        }
    }

    /// For a key that takes a string, the strings it takes.
    pub(crate) fn names(self) -> Option<Names> {
        match self {
            Key::Restart => Some(Names {
                what: "restart policy",
                enumeration: "Restart",
                variants: &[
                    ("always", "Always"),
                    ("on-failure", "OnFailure"),
                    ("never", "Never"),
                ],
            }),
            Key::Runtime => Some(Names {
                what: "runtime",
                enumeration: "Runtime",
                variants: &[
                    ("current-thread", "CurrentThread"),
                    ("multi-thread", "MultiThread"),
                ],
            }),
            Key::Heartbeat => Some(Names {
                what: "heartbeat",
                enumeration: "Heartbeat",
                variants: &[("runtime", "Runtime"), ("manual", "Manual")],
            }),
            Key::Log => Some(Names {
                what: "log format",
                enumeration: "LogFormat",
                variants: &[("text", "Text"), ("json", "Json"), ("off", "Off")],
            }),
            Key::Readiness => Some(Names {
                what: "readiness",
                enumeration: "Readiness",
                variants: &[("forked", "Forked"), ("declared", "Declared")],
            }),
            Key::CpuAffinity => Some(Names {
                what: "cpu affinity",
                enumeration: "CpuAffinity",
                variants: &[("off", "Off"), ("auto", "Auto")],
            }),
            _ => None,
        }
    }

    /// Whether the key takes a string that is not one of a few names.
    fn takes_string(self) -> bool {
        matches!(
            self,
            Key::StatusFile | Key::Metrics | Key::Crate | Key::User | Key::Group
        )
    }

    /// Whether the key sets up an async worker's runtime, which a sync worker has none of.
    pub(crate) fn is_async_only(self) -> bool {
        matches!(self, Key::Runtime | Key::WorkerThreads | Key::Heartbeat)
    }

    /// The smallest integer that makes sense: a limit of zero respawns or a backoff of zero
    /// (off) is a real setting, zero instances or a zero-second window is not.
    fn minimum(self) -> u64 {
        match self {
            Key::RespawnLimit
            | Key::BackoffMax
            | Key::Timeout
            | Key::Restart
            | Key::HangSignal
            | Key::Runtime
            | Key::Heartbeat
            | Key::Log
            | Key::Readiness
            | Key::StatusFile
            | Key::Listen
            | Key::Metrics
            | Key::User
            | Key::Group
            | Key::NoNewPrivs
            | Key::LimitNofile
            | Key::LimitCore
            | Key::LimitAs
            | Key::CpuAffinity
            | Key::UpgradeTrial
            | Key::MaxLifetime
            | Key::MaxLifetimeJitter
            | Key::MaxRequests
            | Key::MaxRequestsJitter
            | Key::MaxMemory
            | Key::Crate => 0,
            // Negative values are parsed on their own, down to -1000.
            Key::OomScoreAdj => 0,
            Key::Instances
            | Key::RespawnInterval
            | Key::ShutdownTimeout
            | Key::BootTimeout
            | Key::HangGrace
            | Key::WorkerThreads
            | Key::Backlog
            | Key::UpgradeTimeout
            | Key::RecycleAtOnce => 1,
        }
    }

    /// The largest integer the builder method takes.
    fn maximum(self) -> u64 {
        match self {
            // kamisama::MAX_INSTANCES: Linux's PID_MAX_LIMIT.
            Key::Instances => 1 << 22,
            Key::RespawnLimit => u64::from(u32::MAX),
            // kamisama's largest backlog: Linux's SOMAXCONN.
            Key::Backlog => 4096,
            // kamisama's MAX_WORKER_THREADS.
            Key::WorkerThreads => 1024,
            Key::OomScoreAdj => 1000,
            _ => u64::MAX,
        }
    }

    /// A value to show in messages, as written.
    fn example(self) -> &'static str {
        match self {
            Key::Instances => "4",
            Key::RespawnLimit => "3",
            Key::RespawnInterval => "60",
            Key::ShutdownTimeout => "10",
            Key::Restart => "\"on-failure\"",
            Key::BackoffMax => "30",
            Key::Timeout => "30",
            Key::BootTimeout => "120",
            Key::HangGrace => "5",
            Key::HangSignal => "\"SIGQUIT\"",
            Key::Runtime => "\"multi-thread\"",
            Key::WorkerThreads => "4",
            Key::Heartbeat => "\"manual\"",
            Key::Log => "\"json\"",
            Key::Readiness => "\"declared\"",
            Key::StatusFile => "\"/run/app/status.json\"",
            Key::Listen => "\"127.0.0.1:8080\"",
            Key::Metrics => "\"127.0.0.1:9464\"",
            Key::Backlog => "1024",
            Key::UpgradeTimeout => "120",
            Key::UpgradeTrial => "30",
            Key::MaxLifetime => "3600",
            Key::MaxLifetimeJitter => "600",
            Key::MaxRequests => "10_000",
            Key::MaxRequestsJitter => "1000",
            Key::MaxMemory => "536_870_912",
            Key::RecycleAtOnce => "2",
            Key::User => "\"www-data\"",
            Key::Group => "\"www-data\"",
            Key::NoNewPrivs => "true",
            Key::LimitNofile => "65536",
            Key::LimitCore => "0",
            Key::LimitAs => "4_294_967_296",
            Key::OomScoreAdj => "500",
            Key::CpuAffinity => "\"auto\"",
            Key::Crate => "\"km\"",
        }
    }

    /// What the value is, for error messages.
    fn kind(self) -> &'static str {
        match (self, self.minimum()) {
            (Key::Restart, _) => "`\"always\"`, `\"on-failure\"` or `\"never\"`",
            (Key::Runtime, _) => "`\"current-thread\"` or `\"multi-thread\"`",
            (Key::Heartbeat, _) => "`\"runtime\"` or `\"manual\"`",
            (Key::Log, _) => "`\"text\"`, `\"json\"` or `\"off\"`",
            (Key::Readiness, _) => "`\"forked\"` or `\"declared\"`",
            (Key::CpuAffinity, _) => "`\"off\"` or `\"auto\"`",
            (Key::Instances, _) => "a positive integer, or `\"auto\"` for one per usable CPU",
            (Key::User, _) => "a user's name or number, as a string",
            (Key::Group, _) => "a group's name or number, as a string",
            (Key::NoNewPrivs, _) => "`true` or `false`",
            (Key::OomScoreAdj, _) => "a whole number from -1000 to 1000",
            (Key::HangSignal, _) => {
                "a signal's name: `\"SIGABRT\"`, `\"SIGQUIT\"`, `\"SIGTRAP\"`, `\"SIGUSR1\"`, \
                 `\"SIGUSR2\"`, `\"SIGTERM\"`, `\"SIGINT\"`, `\"SIGKILL\"` or `\"SIGRTMIN+N\"`"
            }
            (Key::StatusFile, _) => "a path",
            (Key::Crate, _) => "the path of the kamisama crate",
            (Key::Listen, _) => "an address or a list of them",
            (Key::Metrics, _) => "an address, such as `\"127.0.0.1:9464\"`",
            (_, 0) => "a whole number",
            _ => "a positive integer",
        }
    }

    fn from_name(name: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|key| key.name() == name)
    }

    /// The key `written` is most likely a slip for: a word other supervisors use for it, or
    /// the nearest name within a few edits.
    fn near(written: &str) -> Option<Key> {
        const OTHER_NAMES: [(&str, Key); 8] = [
            ("workers", Key::Instances),
            ("processes", Key::Instances),
            ("worker_processes", Key::Instances),
            ("max_restarts", Key::RespawnLimit),
            ("graceful_timeout", Key::ShutdownTimeout),
            ("kill_timeout", Key::ShutdownTimeout),
            ("bind", Key::Listen),
            ("address", Key::Listen),
        ];
        let written = written.to_lowercase().replace('-', "_");
        if let Some((_, key)) = OTHER_NAMES.iter().find(|(name, _)| *name == written) {
            return Some(*key);
        }
        let (distance, key) = Key::ALL
            .into_iter()
            .map(|key| (edit_distance(&written, key.name()), key))
            .min_by_key(|(distance, _)| *distance)?;
        (distance <= (key.name().len() / 3).max(1)).then_some(key)
    }
}

/// Parses the whole argument list, reporting every mistake rather than only the first.
pub(crate) fn parse(args: TokenStream) -> syn::Result<Args> {
    let mut settings: Vec<Setting> = Vec::new();
    let mut errors: Option<Error> = None;
    let mut report = |error: Error| match &mut errors {
        Some(errors) => errors.combine(error),
        None => errors = Some(error),
    };
    let parser = syn::meta::parser(|meta| {
        if !meta.input.peek(Token![=]) {
            // Without `= value` there is no telling where the next argument starts.
            let name = meta.path.to_token_stream().to_string().replace(' ', "");
            let example = Key::from_name(&name).map_or("4", Key::example);
            return Err(Error::new_spanned(
                &meta.path,
                format!("`{name}` needs a value, such as `{name} = {example}`"),
            ));
        }
        match parse_setting(&meta, &settings) {
            Ok(setting) => settings.push(setting),
            Err(error) => report(error),
        }
        Ok(())
    });
    if let Err(error) = parser.parse2(args) {
        report(error);
    }
    if let Some(errors) = errors {
        return Err(errors);
    }
    let krate = settings
        .iter()
        .find_map(|setting| match (&setting.key, &setting.value) {
            (Key::Crate, Value::Path(path)) => path.parse().ok(),
            _ => None,
        })
        .unwrap_or_else(|| quote::quote!(::kamisama));
    Ok(Args { settings, krate })
}

/// Parses one `key = value`. The value is consumed even when the key is wrong, so that parsing
/// goes on to the next argument.
fn parse_setting(meta: &ParseNestedMeta<'_>, earlier: &[Setting]) -> syn::Result<Setting> {
    let value: Expr = meta.value()?.parse()?;
    let name = meta
        .path
        .get_ident()
        .map(ToString::to_string)
        .unwrap_or_default();
    let Some(key) = Key::from_name(&name) else {
        let written = meta.path.to_token_stream().to_string().replace(' ', "");
        let message = match Key::near(&written) {
            Some(key) => format!(
                "unknown argument `{written}`; did you mean `{}`?",
                key.name()
            ),
            None => {
                let expected = Key::ALL
                    .iter()
                    .map(|key| format!("`{}`", key.name()))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("unknown argument `{written}`; expected one of {expected}")
            }
        };
        return Err(Error::new_spanned(&meta.path, message));
    };
    if earlier.iter().any(|setting| setting.key == key) {
        return Err(Error::new_spanned(
            &meta.path,
            format!("duplicate argument `{name}`; remove one of the two"),
        ));
    }
    let wrong_kind = || wrong_kind_of(key, &value);
    if key == Key::Listen {
        let addresses = addresses(&value).ok_or_else(wrong_kind)?;
        let errors = addresses.iter().filter_map(|(address, span)| {
            address_error(address).map(|message| Error::new(*span, message))
        });
        if let Some(error) = errors.reduce(|mut all, error| {
            all.combine(error);
            all
        }) {
            return Err(error);
        }
        return Ok(Setting {
            key,
            key_span: meta.path.span(),
            value: Value::Addresses(addresses),
            span: value.span(),
        });
    }
    if key == Key::OomScoreAdj {
        return signed(key, &value).map(|number| Setting {
            key,
            key_span: meta.path.span(),
            value: Value::Signed(number),
            span: value.span(),
        });
    }
    let Expr::Lit(ExprLit { lit, .. }) = &value else {
        let computed = matches!(
            value,
            Expr::Path(_) | Expr::Binary(_) | Expr::Call(_) | Expr::Macro(_)
        );
        let integer = key.names().is_none() && !key.takes_string() && key != Key::NoNewPrivs;
        if computed && integer {
            // A constant or an expression: an attribute sees tokens, not values.
            let written = value.to_token_stream().to_string();
            return Err(Error::new_spanned(
                &value,
                format!(
                    "`{name}` takes a literal, such as `{name} = {}`: an attribute cannot \
                     evaluate `{written}`; to compute it, call the builder from a `main` of \
                     your own, as the documentation of `Supervisor` shows",
                    key.example()
                ),
            ));
        }
        return Err(wrong_kind());
    };
    if key == Key::HangSignal {
        let Lit::Str(name) = lit else {
            return Err(wrong_kind());
        };
        let signal = Signal::parse(&name.value()).ok_or_else(|| {
            Error::new(
                name.span(),
                format!(
                    "unknown signal {:?}; `{name}` takes {}",
                    name.value(),
                    key.kind(),
                    name = key.name()
                ),
            )
        })?;
        return Ok(Setting {
            key,
            key_span: meta.path.span(),
            value: Value::Signal(signal),
            span: lit.span(),
        });
    }
    let value = match (key.names(), lit) {
        (Some(names), Lit::Str(string)) => {
            let written = string.value();
            let Some((_, variant)) = names.variants.iter().find(|(name, _)| *name == written)
            else {
                // Every value is written kebab-case, as systemd writes `on-failure`.
                let kebab = written.replace('_', "-");
                let message = match names.variants.iter().find(|(name, _)| *name == kebab) {
                    Some((name, _)) => format!(
                        "unknown {} {written:?}; did you mean \"{name}\"? (values are written \
                         with dashes)",
                        names.what
                    ),
                    None => format!(
                        "unknown {} {written:?}; expected {}",
                        names.what,
                        key.kind()
                    ),
                };
                return Err(Error::new(string.span(), message));
            };
            Value::Variant {
                enumeration: names.enumeration,
                variant,
            }
        }
        (None, Lit::Str(path)) if key == Key::StatusFile && !path.value().is_empty() => {
            Value::Path(path.value())
        }
        (None, Lit::Str(address)) if key == Key::Metrics && !address.value().is_empty() => {
            if let Some(message) = address_error(&address.value()) {
                return Err(Error::new(address.span(), message));
            }
            Value::Path(address.value())
        }
        (None, Lit::Str(auto)) if key == Key::Instances && auto.value() == "auto" => Value::Auto,
        (None, Lit::Str(name)) if matches!(key, Key::User | Key::Group) => {
            let written = name.value();
            if written.is_empty() || written.contains('\0') {
                return Err(wrong_kind());
            }
            Value::Path(written)
        }
        (None, Lit::Bool(flag)) if key == Key::NoNewPrivs => Value::Bool(flag.value),
        (None, Lit::Str(path)) if key == Key::Crate => {
            path.parse::<syn::Path>().map_err(|_| wrong_kind())?;
            Value::Path(path.value())
        }
        (None, Lit::Int(literal)) if !key.takes_string() && key != Key::NoNewPrivs => {
            Value::Integer(parse_integer(key, literal)?)
        }
        _ => return Err(wrong_kind()),
    };
    Ok(Setting {
        key,
        key_span: meta.path.span(),
        value,
        span: lit.span(),
    })
}

/// The Levenshtein distance between `a` and `b`: the fewest insertions, deletions and
/// substitutions of a character that turn one into the other.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// Why `address` cannot be listened on, if it cannot: `unix:` and a path, or a host (a name,
/// an IPv4 address, or an IPv6 one in brackets) and a port.
fn address_error(address: &str) -> Option<String> {
    if let Some(path) = address.strip_prefix("unix:") {
        return path
            .is_empty()
            .then(|| format!("`{address}` has no path; write `unix:/run/app.sock`"));
    }
    if address.parse::<u16>().is_ok() {
        return Some(format!(
            "`{address}` is a port without a host; write `127.0.0.1:{address}`, or \
             `0.0.0.0:{address}` for every interface"
        ));
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Some(format!(
            "`{address}` has no port; write `{address}:8080`, or `unix:PATH` for a Unix socket"
        ));
    };
    if port.parse::<u16>().is_err() {
        return Some(format!(
            "`{address}` has no port a socket can have: `{port}` is not a number from 0 to 65535"
        ));
    }
    if host.is_empty() || (host.contains(':') && !(host.starts_with('[') && host.ends_with(']'))) {
        return Some(format!(
            "`{address}` has no host: write `127.0.0.1:{port}`, `localhost:{port}`, or an IPv6 \
             address in brackets, `[::1]:{port}`"
        ));
    }
    None
}

/// `"127.0.0.1:8080"` or `["127.0.0.1:8080", "unix:/run/app.sock"]`: non-empty strings.
fn addresses(value: &Expr) -> Option<Vec<(String, Span)>> {
    let literal = |expr: &Expr| match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(address),
            ..
        }) if !address.value().is_empty() => Some((address.value(), address.span())),
        _ => None,
    };
    match value {
        Expr::Array(array) if !array.elems.is_empty() => array.elems.iter().map(literal).collect(),
        single => literal(single).map(|address| vec![address]),
    }
}

/// `500` or `-500`, within what `key` takes: its maximum, and as far below zero.
fn signed(key: Key, value: &Expr) -> syn::Result<i64> {
    let name = key.name();
    let (negative, literal) = match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(literal),
            ..
        }) => (false, literal),
        Expr::Unary(syn::ExprUnary {
            op: syn::UnOp::Neg(_),
            expr,
            ..
        }) => match &**expr {
            Expr::Lit(ExprLit {
                lit: Lit::Int(literal),
                ..
            }) => (true, literal),
            _ => return Err(wrong_kind_of(key, value)),
        },
        _ => return Err(wrong_kind_of(key, value)),
    };
    let bound = key.maximum();
    match literal.base10_parse::<u64>() {
        Ok(number) if number <= bound => {
            let number = number as i64;
            Ok(if negative { -number } else { number })
        }
        _ => Err(Error::new_spanned(
            value,
            format!("`{name}` must be at least -{bound} and at most {bound}"),
        )),
    }
}

/// The error for a value of the wrong kind.
fn wrong_kind_of(key: Key, value: &Expr) -> Error {
    let name = key.name();
    Error::new_spanned(
        value,
        format!(
            "`{name}` takes {}, such as `{name} = {}`",
            key.kind(),
            key.example()
        ),
    )
}

fn parse_integer(key: Key, literal: &syn::LitInt) -> syn::Result<u64> {
    let name = key.name();
    let number = literal
        .base10_parse::<u64>()
        .ok()
        .filter(|n| *n <= key.maximum());
    let Some(number) = number else {
        return Err(Error::new(
            literal.span(),
            format!("`{name}` must be at most {}", key.maximum()),
        ));
    };
    if number < key.minimum() {
        return Err(Error::new(
            literal.span(),
            format!("`{name}` must be at least {}", key.minimum()),
        ));
    }
    Ok(number)
}
