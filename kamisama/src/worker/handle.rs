//! The public [`Worker`] handle: a worker's index and its cooperative stop.

use super::accept_wait;
use super::shared;
use super::stop::{self, Woken};
#[cfg(feature = "tokio")]
use crate::config::Heartbeat;
use crate::config::{Config, LogFormat};
use crate::listen::{Listener, Stream};
use std::fmt::Debug;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{self, UnixListener, UnixStream};
use std::time::Duration;

/// The handle a worker function can take: its index, and the cooperative stop.
///
/// A worker whose function takes a `Worker` is not killed by SIGTERM. The TERM of a shutdown,
/// a SIGTTOU, a rolling restart, or the kernel when the master dies, instead requests a stop:
/// [`stop_requested`](Worker::stop_requested) turns true and [`sleep`](Worker::sleep) returns
/// at once, so that the worker can finish the job in hand and return. The master still sends
/// SIGKILL after `shutdown_timeout`; when the master is dead, the worker's own `alarm` does.
///
/// ```no_run
/// use std::time::Duration;
///
/// #[kamisama::main(instances = 4)]
/// fn worker(worker: kamisama::Worker) {
///     while !worker.stop_requested() {
///         // ... take one job and finish it ...
///         worker.sleep(Duration::from_secs(60)); // wakes up at once on a stop request
///     }
/// }
/// ```
///
/// # Blocking calls
///
/// The stop request cannot cut short a call that blocks in the kernel: the handler returns,
/// the call resumes (std retries it), and a worker idle in `accept()` or `read()` sees its
/// stop only once a connection or data comes, or when SIGKILL ends it after
/// `shutdown_timeout`. Wait through the handle instead, which returns at once on a stop:
/// [`accept`](Worker::accept) for a listener, [`wait_readable`](Worker::wait_readable)
/// before reading any socket or pipe, [`sleep`](Worker::sleep) between jobs.
///
/// ```no_run
/// use std::io::Write;
/// use std::net::TcpListener;
///
/// fn main() -> std::process::ExitCode {
///     // Bound once by the master, shared by every worker.
///     let listener = TcpListener::bind("127.0.0.1:8080").expect("bind");
///     kamisama::Supervisor::new()
///         .instances(4)
///         .run(|worker: kamisama::Worker| {
///             // `None` as soon as a stop is requested, even with no client in sight.
///             while let Some(connection) = worker.accept(&listener) {
///                 if let Ok((mut stream, _)) = connection {
///                     let _ = stream.write_all(b"hello\n");
///                 }
///             }
///         })
/// }
/// ```
///
/// # How it works
///
/// Before the worker function runs, kamisama installs a SIGTERM handler that does only what is
/// async-signal-safe: it sets an atomic flag, writes one byte to a close-on-exec pipe (the
/// worker's two extra file descriptors), and, if the master is gone, arms `alarm` for
/// `shutdown_timeout` so that SIGALRM ends a worker that would not stop. `sleep` polls the
/// pipe, so every thread sleeping on it wakes up. The worker's own subprocesses are in its
/// process group and get the TERM too, with their default action.
#[derive(Clone, Debug)]
pub struct Worker {
    pub(super) index: usize,
    /// For the worker's own `worker-failed` line.
    pub(super) master: u32,
    pub(super) log: LogFormat,
    /// The runtime an async worker builds.
    #[cfg(feature = "tokio")]
    pub(super) runtime: crate::Runtime,
    #[cfg(feature = "tokio")]
    pub(super) worker_threads: Option<usize>,
    /// How often an async worker's runtime beats for it; `None` when hang detection is off,
    /// or when the worker beats itself.
    #[cfg(feature = "tokio")]
    pub(super) beat_every: Option<Duration>,
    /// How long a thread of its runtime may stay in one task.
    #[cfg(feature = "tokio")]
    pub(super) timeout: Duration,
}

impl Worker {
    /// Reports that the worker function failed with `error`, in the master's log format.
    pub(super) fn report_failure(&self, error: &dyn Debug) {
        crate::log::worker_failed(self.log, self.master, self.index, error);
    }

    pub(super) fn new(index: usize, master: u32, config: &Config) -> Self {
        Worker {
            index,
            master,
            log: config.log,
            #[cfg(feature = "tokio")]
            runtime: config.runtime,
            #[cfg(feature = "tokio")]
            worker_threads: config.worker_threads,
            #[cfg(feature = "tokio")]
            beat_every: (!config.timeout.is_zero() && config.heartbeat == Heartbeat::Runtime)
                .then(|| (config.timeout / 4).max(Duration::from_millis(10))),
            #[cfg(feature = "tokio")]
            timeout: config.timeout,
        }
    }

    /// The worker's index, in `0..instances`.
    ///
    /// ```no_run
    /// #[kamisama::main(instances = 4)]
    /// fn worker(worker: &kamisama::Worker) {
    ///     println!("shard {} of 4", worker.index());
    /// }
    /// ```
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether the master (or the kernel, on the master's death) asked this worker to stop.
    ///
    /// ```no_run
    /// # fn one_job() {}
    /// #[kamisama::main(instances = 4)]
    /// fn worker(worker: &kamisama::Worker) {
    ///     while !worker.stop_requested() {
    ///         one_job();
    ///     }
    /// }
    /// ```
    pub fn stop_requested(&self) -> bool {
        stop::requested()
    }

    /// Sleeps for `duration`, or until a stop is requested, whichever comes first.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// #[kamisama::main]
    /// fn worker(worker: &kamisama::Worker) {
    ///     while !worker.stop_requested() {
    ///         println!("tick");
    ///         worker.sleep(Duration::from_secs(30)); // returns at once on a stop
    ///     }
    /// }
    /// ```
    pub fn sleep(&self, duration: Duration) {
        waiting(|| stop::wait(None, Some(duration)));
    }

    /// A sign of life, for hang detection (see
    /// [`Supervisor::timeout`](crate::Supervisor::timeout)): a worker that shows none for
    /// `timeout` is hung. It costs no system call (a clock read through the vDSO and a store
    /// to memory the master shares), so call it as often as is convenient, such as once per
    /// job or per loop. Time spent waiting through the handle counts as alive too.
    ///
    /// ```no_run
    /// #[kamisama::main(instances = 4, timeout = 30)]
    /// fn worker(worker: kamisama::Worker) {
    ///     while !worker.stop_requested() {
    ///         worker.heartbeat();
    ///         // ... one job, which never takes 30 s unless something is stuck ...
    ///     }
    /// }
    /// ```
    pub fn heartbeat(&self) {
        shared::beat();
    }

    /// Declares this worker ready, once its start-up work is done: with
    /// [`Readiness::Declared`](crate::Readiness::Declared), the master reports the fleet ready
    /// to systemd (`READY=1`) only once every worker has, and a rolling restart moves on to
    /// the next index only once the replacement has, so that a server is never short of a
    /// worker that listens. A store to memory the master shares: no system call.
    ///
    /// ```no_run
    /// # fn connect_to_the_queue() {}
    /// #[kamisama::main(instances = 4, readiness = "declared")]
    /// fn worker(worker: kamisama::Worker) {
    ///     let queue = connect_to_the_queue();
    ///     worker.ready();
    ///     while !worker.stop_requested() {
    ///         // ... jobs from `queue` ...
    /// #       worker.sleep(std::time::Duration::from_secs(1));
    ///     }
    /// }
    /// ```
    pub fn ready(&self) {
        shared::ready();
    }

    /// Counts `units` of work done (a request answered, a job finished), in memory the
    /// master reads: no system call. The status file shows each worker's count, and with
    /// [`Supervisor::max_requests`](crate::Supervisor::max_requests) the worker is replaced
    /// once it has done that many (its successor first; the worker gets its cooperative stop
    /// once that one is ready, and finishes what it has in hand). Returns the count so far.
    ///
    /// ```no_run
    /// # fn one_job() {}
    /// #[kamisama::main(instances = 4, max_requests = 1000)]
    /// fn worker(worker: kamisama::Worker) {
    ///     while !worker.stop_requested() {
    ///         one_job();
    ///         worker.completed(1);
    ///     }
    /// }
    /// ```
    pub fn completed(&self, units: u64) -> u64 {
        shared::completed(units);
        shared::done()
    }

    /// The fleet's listening sockets, in the order of the `listen` settings (or of the
    /// sockets systemd passed): bound by the master before the first fork and shared by every
    /// worker. Empty when none is configured.
    ///
    /// ```no_run
    /// use std::io::Write;
    ///
    /// #[kamisama::main(instances = 4, listen = "127.0.0.1:8080")]
    /// fn worker(worker: kamisama::Worker) {
    ///     let listener = &worker.listeners()[0];
    ///     while let Some(connection) = worker.accept(listener) {
    ///         if let Ok(mut stream) = connection {
    ///             let _ = stream.write_all(b"hello\n");
    ///         }
    ///     }
    /// }
    /// ```
    pub fn listeners(&self) -> &'static [Listener] {
        crate::listen::listeners()
    }

    /// Waits until `fd` (a socket, a pipe...) can be read without blocking, or a stop is
    /// requested: `true` when it is readable (or at its end, or in error, which a read then
    /// reports), `false` on a stop, which wins when both come at once.
    ///
    /// ```no_run
    /// use std::io::Read;
    ///
    /// # fn next_message(worker: &kamisama::Worker, socket: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    /// let mut message = vec![0; 4096];
    /// if !worker.wait_readable(&*socket) {
    ///     return None; // stopping
    /// }
    /// let read = socket.read(&mut message).ok()?;
    /// message.truncate(read);
    /// Some(message)
    /// # }
    /// ```
    pub fn wait_readable(&self, fd: impl AsFd) -> bool {
        waiting(|| stop::wait(Some(fd.as_fd()), None)) == Woken::Ready
    }

    /// Accepts the next connection on `listener` (one of [`listeners`](Worker::listeners),
    /// or a [`TcpListener`] or [`UnixListener`] of your own), or returns `None` as soon as a
    /// stop is requested.
    ///
    /// A connection wakes one waiting worker, not every worker that shares the listener
    /// (the thread keeps an epoll instance per listener, holding it with `EPOLLEXCLUSIVE`: one
    /// descriptor per listener and thread that accepts); a stop wakes them all at once. The
    /// listener is put in non-blocking mode, for all the processes that share it: when two
    /// workers are woken for one connection, the one that finds nothing goes back to waiting
    /// instead of blocking in `accept` where a stop cannot reach it. The connection itself is
    /// in blocking mode (on Linux, an accepted socket does not inherit the listener's).
    ///
    /// On a fleet listener, connections are balanced by how many each worker holds open (a
    /// [`Stream`] counts as open until it is dropped): a worker that holds more than one past
    /// the fleet's average leaves new connections to the others until its own close, for
    /// 5 ms at most, so that kept-alive connections opened at once spread over the fleet
    /// instead of going to the worker that woke first (64 over 4 workers: 15 to 17 each,
    /// where one worker took 51 without it). Up to 1024 workers: past that, each accept
    /// would read too many siblings' counts.
    ///
    /// ```no_run
    /// use std::net::TcpListener;
    /// use std::io::Write;
    ///
    /// let listener = TcpListener::bind("127.0.0.1:8080")?; // before run: shared by all
    /// kamisama::Supervisor::new().instances(4).run(|worker: kamisama::Worker| {
    ///     while let Some(connection) = worker.accept(&listener) {
    ///         if let Ok((mut stream, _peer)) = connection {
    ///             let _ = stream.write_all(b"hello\n");
    ///         }
    ///     }
    /// });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn accept<L: Accept>(&self, listener: &L) -> Option<io::Result<L::Connection>> {
        accept(listener, true)
    }

    /// How many times the worker received `signal` (USR1 or USR2) since the last call: the
    /// master forwards `USR1` to every worker, the signal with which operators ask a program
    /// to reopen its log files (logrotate, Unicorn, nginx). Until the worker installs a
    /// handler of its own for them (signal-hook, `tokio::signal::unix`), kamisama's counts
    /// them, so that a worker that does not care is not ended by their default action.
    ///
    /// ```no_run
    /// # fn reopen_logs() {}
    /// # fn one_job() {}
    /// use kamisama::Signal;
    ///
    /// #[kamisama::main(instances = 4)]
    /// fn worker(worker: &kamisama::Worker) {
    ///     while !worker.stop_requested() {
    ///         if worker.received(Signal::USR1) > 0 {
    ///             reopen_logs();
    ///         }
    ///         one_job();
    ///     }
    /// }
    /// ```
    pub fn received(&self, signal: crate::Signal) -> u32 {
        super::forwarded::take(signal)
    }

    /// Completes once a stop is requested, for `tokio::select!` in an async worker:
    ///
    /// ```no_run
    /// # async fn next_job() -> u32 { 0 }
    /// # async fn run(job: u32) {}
    /// #[kamisama::main(instances = 4)]
    /// async fn worker(worker: kamisama::Worker) {
    ///     loop {
    ///         let job = tokio::select! {
    ///             _ = worker.stopped() => break,
    ///             job = next_job() => job,
    ///         };
    ///         run(job).await; // the job in hand is finished before the next stop check
    ///     }
    /// }
    /// ```
    ///
    /// Any number of tasks may wait on it at once, at no system call each: they share one
    /// wakeup, from a thread of the worker (`kamisama-stop`, started by the first wait) that
    /// waits for the stop. Without a thread to spare, each wait registers the stop pipe with
    /// the runtime's reactor instead: await it on a tokio runtime with its IO driver on, such
    /// as the one kamisama builds for an async worker.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn stopped(&self) {
        super::runtime::stopped().await;
    }

    /// Accepts the next connection on `listener`, or completes with `None` once a stop is
    /// requested, for an async worker's accept loop. `listener` is one of the fleet's
    /// [`listeners`](Worker::listeners), or a tokio `TcpListener` or `UnixListener`.
    ///
    /// On a fleet listener, it does what [`accept`](Worker::accept) does for a sync worker:
    /// a connection wakes one waiting worker, and a worker that holds more than its share of
    /// the fleet's open connections (an [`AsyncStream`](crate::AsyncStream) counts as open
    /// until dropped) leaves new ones to the others for a moment. tokio cannot wait that way
    /// itself, so a thread of the worker, its acceptor, waits for it while a task awaits
    /// this (one thread and two descriptors per listener); a connection already queued is
    /// accepted by the task directly. A stop ends the acceptor's wait, and a connection it
    /// was woken for comes out before the `None`. The hand-over costs a thread switch per
    /// connection waited for: on two cores, with 64 clients opening a connection per
    /// request, up to a tenth fewer connections a second than on a tokio listener; kept
    /// alive, the same.
    ///
    /// ```no_run
    /// #[kamisama::main(instances = 4, listen = "127.0.0.1:8080")]
    /// async fn worker(worker: kamisama::Worker) -> std::io::Result<()> {
    ///     let listener = &worker.listeners()[0];
    ///     while let Some(connection) = worker.accept_async(listener).await {
    ///         let stream = connection?;
    ///         tokio::spawn(async move { drop(stream) /* serve it */ });
    ///     }
    ///     Ok(()) // asked to stop: the connections in hand are the tasks' to finish
    /// }
    /// ```
    ///
    /// On a tokio listener (such as [`Listener::to_tokio_tcp`] gives), every waiting worker's
    /// runtime is woken by each connection and one takes it, with no balance; a stop wins
    /// over a connection ready at the same time, which stays queued for another worker.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn accept_async<L: super::runtime::AsyncAccept>(
        &self,
        listener: &L,
    ) -> Option<io::Result<L::Connection>> {
        super::runtime::accept(listener).await
    }

    /// A file descriptor that becomes readable when a stop is requested, to wait on with the
    /// worker's own `poll`, `epoll` or async runtime. Do not read from it.
    ///
    /// ```no_run
    /// use std::os::fd::AsRawFd;
    ///
    /// #[kamisama::main]
    /// fn worker(worker: &kamisama::Worker) {
    ///     // Register it with an event loop of your own, beside its other descriptors.
    ///     println!("stop requests on fd {}", worker.stop_fd().as_raw_fd());
    /// }
    /// ```
    pub fn stop_fd(&self) -> BorrowedFd<'_> {
        stop::fd()
    }
}

/// Accepts the next connection on `listener`, or returns `None` once a stop is requested: a
/// sync worker's accept, and the one an async worker's acceptor thread makes for it. Only
/// the first counts its waits as the worker's (`on_handle`): an acceptor thread waiting says
/// nothing of whether the worker is alive.
pub(super) fn accept<L: Accept>(
    listener: &L,
    on_handle: bool,
) -> Option<io::Result<L::Connection>> {
    // An acceptor's listener is its own descriptor, made non-blocking as it started, and
    // open for its life; a fleet listener is open for the worker's.
    let stable = !on_handle || listener.is_the_fleets();
    if on_handle {
        if let Err(error) = listener.set_nonblocking() {
            return Some(Err(error));
        }
    }
    let wait = |how: &dyn Fn() -> Woken| if on_handle { waiting(how) } else { how() };
    loop {
        // Past its share of the fleet's connections, a worker lets the others accept
        // first: it leaves the listener to them until its own connections close, or for
        // a moment at most, then takes what they left.
        let deferred = shared::over_share() && wait(&defer_to_siblings) == Woken::Stop;
        if deferred || wait(&|| accept_wait::wait(listener.as_fd(), stable)) != Woken::Ready {
            return None;
        }
        // An acceptor's connection goes to a task: non-blocking, as tokio wants it.
        let accepted = if on_handle {
            listener.accept_now()
        } else {
            listener.accept_nonblocking()
        };
        match accepted {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            connection => {
                accept_wait::accepted(listener.as_fd());
                return Some(connection);
            }
        }
    }
}

/// Runs a wait through the handle, during which the worker counts as alive.
/// How long a worker past its share of the fleet's open connections leaves a new connection
/// to the others at most before it takes one itself: long enough for a sibling woken for it
/// to run, short enough that a connection no sibling can take waits no longer.
const SHARE_DEFERRAL: Duration = Duration::from_millis(5);

/// How often a deferring worker looks again at its share: its connections may close within
/// a fraction of a millisecond, and a worker that deferred for the whole of
/// [`SHARE_DEFERRAL`] each time took 1,560 connections a second where it takes 14,000.
const SHARE_LOOK_AGAIN: Duration = Duration::from_micros(200);

/// Leaves the listener to the worker's siblings while it is past its share, for
/// [`SHARE_DEFERRAL`] at most, or until a stop.
fn defer_to_siblings() -> Woken {
    let until = std::time::Instant::now() + SHARE_DEFERRAL;
    while shared::over_share() && std::time::Instant::now() < until {
        if stop::requested() {
            return Woken::Stop;
        }
        std::thread::sleep(SHARE_LOOK_AGAIN);
    }
    if stop::requested() {
        Woken::Stop
    } else {
        Woken::Timeout
    }
}

fn waiting<T>(wait: impl FnOnce() -> T) -> T {
    shared::waiting();
    let woken = wait();
    shared::woken();
    woken
}

/// A listening socket [`Worker::accept`] takes: a [`Listener`] of the fleet, or a
/// [`TcpListener`] or [`UnixListener`].
///
/// ```no_run
/// fn serve<L: kamisama::Accept>(worker: &kamisama::Worker, listener: &L) -> usize {
///     let mut accepted = 0;
///     while let Some(Ok(_connection)) = worker.accept(listener) {
///         accepted += 1;
///     }
///     accepted
/// }
/// ```
pub trait Accept: AsFd + sealed::Sealed {
    /// What `accept` returns: the stream and the peer's address.
    type Connection;

    #[doc(hidden)]
    fn set_nonblocking(&self) -> io::Result<()>;

    #[doc(hidden)]
    fn accept_now(&self) -> io::Result<Self::Connection>;

    /// A connection that is non-blocking already.
    #[doc(hidden)]
    fn accept_nonblocking(&self) -> io::Result<Self::Connection> {
        self.accept_now()
    }

    /// Whether it is one of the fleet's listeners, open as long as the worker.
    #[doc(hidden)]
    fn is_the_fleets(&self) -> bool {
        false
    }
}

impl Accept for Listener {
    type Connection = Stream;

    fn set_nonblocking(&self) -> io::Result<()> {
        Listener::set_nonblocking(self, true)
    }

    fn accept_now(&self) -> io::Result<Self::Connection> {
        Listener::accept_now(self)
    }

    fn accept_nonblocking(&self) -> io::Result<Self::Connection> {
        Listener::accept_nonblocking(self)
    }

    fn is_the_fleets(&self) -> bool {
        crate::listen::is_the_fleets(self)
    }
}

impl Accept for TcpListener {
    type Connection = (TcpStream, SocketAddr);

    fn set_nonblocking(&self) -> io::Result<()> {
        TcpListener::set_nonblocking(self, true)
    }

    fn accept_now(&self) -> io::Result<Self::Connection> {
        self.accept()
    }
}

impl Accept for UnixListener {
    type Connection = (UnixStream, net::SocketAddr);

    fn set_nonblocking(&self) -> io::Result<()> {
        UnixListener::set_nonblocking(self, true)
    }

    fn accept_now(&self) -> io::Result<Self::Connection> {
        self.accept()
    }
}

mod sealed {
    pub trait Sealed {}

    impl Sealed for crate::Listener {}
    impl Sealed for std::net::TcpListener {}
    impl Sealed for std::os::unix::net::UnixListener {}
}
