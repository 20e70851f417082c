//! The `#[kamisama::main]` attribute.
//!
//! Depend on [`kamisama`](https://docs.rs/kamisama) and write `#[kamisama::main]`: this crate is
//! its implementation detail and is versioned in lockstep with it.

#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]

mod attr;
mod expand;
mod valid;

use proc_macro::TokenStream;

/// Turns a worker function into the `main` of a supervising master process.
///
/// ```no_run
/// #[kamisama::main(instances = 17, respawn_limit = 10, respawn_interval = 60)]
/// fn worker(index: usize) {
///     loop {
///         println!("worker {index}: crunching data...");
///         std::thread::sleep(std::time::Duration::from_secs(5));
///     }
/// }
/// ```
///
/// The binary's `main` forks 17 workers, each running `worker(index)` with its own `index` in
/// `0..17`, and supervises them: a worker that dies is respawned with the same index, and the
/// master obeys the signals described in the [crate documentation](https://docs.rs/kamisama/latest/kamisama/#signals).
///
/// # Arguments
///
/// Every argument is optional.
///
/// | argument           | default    | meaning                                                        |
/// |--------------------|------------|----------------------------------------------------------------|
/// | `instances`        | `1`        | how many workers run at once, at least 1, at most 4194304; `"auto"` for one per usable CPU |
/// | `respawn_limit`    | `3`        | respawns allowed within `respawn_interval` before giving up    |
/// | `respawn_interval` | `60`       | the sliding window for `respawn_limit`, in seconds, at least 1 |
/// | `shutdown_timeout` | `10`       | seconds a stopping worker gets before SIGKILL, at least 1      |
/// | `restart`          | `"always"` | `"always"`, `"on-failure"` or `"never"`: see [`Restart`](https://docs.rs/kamisama/latest/kamisama/enum.Restart.html) |
/// | `backoff_max`      | `0`        | the longest wait before respawning a crash-looping index, in seconds; 0 is off |
/// | `timeout`          | `0`        | seconds a worker may show no sign of life before it is hung; 0 is off |
/// | `boot_timeout`     | `60`       | the same for a new worker's first sign of life, in seconds, at least 1 |
/// | `hang_grace`       | `1`        | seconds a hung worker has after its hang signal, before SIGKILL, at least 1 |
/// | `hang_signal`      | `"SIGABRT"` | what a hung worker gets first: `"SIGQUIT"`, `"SIGTRAP"`, `"SIGUSR1"`, `"SIGRTMIN+2"`... |
/// | `runtime`          | `"current-thread"` | an `async` worker's tokio runtime: `"current-thread"` or `"multi-thread"` |
/// | `worker_threads`   | one per core | the threads of a `"multi-thread"` runtime, at least 1, at most 1024 (and sets it) |
/// | `heartbeat`        | `"runtime"` | what shows an `async` worker alive: its `"runtime"`, or only its own beats (`"manual"`) |
/// | `log`              | `"text"`   | the log format: `"text"`, `"json"` or `"off"`                  |
/// | `readiness`        | `"forked"` | when a worker counts as ready: `"forked"`, or `"declared"` by `Worker::ready` |
/// | `status_file`      | none       | a JSON file with the live status of every worker, such as `"/run/app/status.json"` |
/// | `listen`           | none       | addresses the master binds for its workers: `"127.0.0.1:8080"`, `"unix:/run/app.sock"`, or a list |
/// | `metrics`          | none       | where the master answers `GET /metrics` (Prometheus): `"127.0.0.1:9464"` or `"unix:PATH"`; needs the `metrics` feature |
/// | `backlog`          | `1024`     | each listener's queue of connections not yet accepted, at most 4096 |
/// | `upgrade_timeout`  | `60`       | seconds the new master of an upgrade (`USR2`) has to get its fleet ready, at least 1 |
/// | `max_lifetime`     | `0`        | seconds a worker runs before it is replaced (forked anew, then stopped); 0 is never |
/// | `max_lifetime_jitter` | `0`     | the most seconds added to each worker's `max_lifetime`, at random |
/// | `max_requests`     | `0`        | units of work (`Worker::completed`) a worker does before it is replaced; 0 is no limit |
/// | `max_requests_jitter` | `0`     | the most added to each worker's `max_requests`, at random |
/// | `max_memory`       | `0`        | bytes of proportional set size past which a worker is replaced, sampled every 5 seconds; 0 is no limit |
/// | `recycle_at_once`  | `1`        | how many workers may be recycled at once, at least 1            |
/// | `upgrade_trial`    | `10`       | seconds the old master stays after the hand-over, to fork its fleet again if the new one crashes; 0 is off |
/// | `user`             | none       | the user workers run as: `"www-data"`, or a number as a string |
/// | `group`            | the user's | the group workers run as                                       |
/// | `no_new_privs`     | with `user` or `group` | `true` or `false`: programs a worker runs gain no privileges |
/// | `limit_nofile`     | the master's | each worker's limit of open files                            |
/// | `limit_core`       | the master's | each worker's largest core dump, in bytes                    |
/// | `limit_as`         | the master's | each worker's largest address space, in bytes                |
/// | `oom_score_adj`    | the master's + 500 | each worker's OOM score adjustment, -1000 to 1000      |
/// | `cpu_affinity`     | `"off"`    | `"auto"` pins worker `i` to the `i`-th usable CPU              |
/// | `crate`            | `"kamisama"` | the crate's path where Cargo.toml renames it: `crate = "km"` |
///
/// Each can be overridden at run time with an environment variable such as
/// `KAMISAMA_INSTANCES` or `KAMISAMA_RESTART`.
///
/// # The worker function
///
/// It takes nothing, its index (`index: usize`) or a handle (`worker: kamisama::Worker`, or
/// `&kamisama::Worker`, for a
/// [cooperative stop](https://docs.rs/kamisama/latest/kamisama/struct.Worker.html)), and
/// returns `()`, `Result<(), E>` with `E: Debug`, or `!` (it never returns). It may be named
/// `main`. It cannot be `unsafe`, `extern`, generic, nor have lifetime parameters or a `where`
/// clause. It may be `async` with kamisama's `tokio` feature (taking the handle by value, and
/// returning `()` or a `Result`): each worker then runs it on a runtime of its own (see
/// `kamisama::Async`); `#[tokio::main]` is not needed, and is an error next to this attribute.
///
/// Values are literals, checked as the crate compiles: a constant (`instances = WORKERS`) is
/// an error that says to compute it with the builder instead.
///
/// ```no_run
/// #[kamisama::main(instances = 8, restart = "on-failure", backoff_max = 30)]
/// fn main() -> Result<(), std::io::Error> {
///     std::fs::write("/tmp/shard", b"done")
/// }
/// ```
///
/// ```no_run
/// #[kamisama::main(instances = 4, shutdown_timeout = 30)]
/// fn worker(worker: kamisama::Worker) {
///     while !worker.stop_requested() {
///         println!("worker {}: one job", worker.index());
///         worker.sleep(std::time::Duration::from_secs(30));
///     }
/// }
/// ```
///
/// # Expansion
///
/// The attribute keeps the function as written and adds a `main` that calls the public
/// [`Supervisor`](https://docs.rs/kamisama/latest/kamisama/struct.Supervisor.html) builder, so the example above is the same as:
///
/// ```no_run
/// fn worker(index: usize) {
///     // ...
/// }
///
/// fn main() -> std::process::ExitCode {
///     kamisama::Supervisor::new()
///         .instances(17)
///         .respawn_limit(10)
///         .respawn_interval(std::time::Duration::from_secs(60))
///         .run(worker)
/// }
/// ```
#[proc_macro_attribute]
pub fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::main(args.into(), item.into()).into()
}
