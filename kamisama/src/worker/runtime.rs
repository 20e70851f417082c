//! Async workers (the `tokio` feature): the runtime each worker builds after its fork, the
//! task that beats for it, and the future of its stop request.

use super::function::sealed::Sealed;
use super::{shared, stop, Worker, WorkerFn, WorkerResult};
use crate::Runtime;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::unix::pipe;
use tokio::sync::Notify;

/// An async worker function, run to completion on a tokio runtime that each worker builds
/// for itself after its fork, never in the master.
///
/// `#[kamisama::main] async fn worker(...)` expands to `run(kamisama::Async(worker))`; wrap a
/// closure that returns a future the same way, with the type of its argument written out:
///
/// ```no_run
/// use std::time::Duration;
///
/// fn main() -> std::process::ExitCode {
///     kamisama::Supervisor::new()
///         .instances(4)
///         .run(kamisama::Async(|worker: kamisama::Worker| async move {
///             loop {
///                 tokio::select! {
///                     _ = worker.stopped() => return,
///                     _ = tokio::time::sleep(Duration::from_secs(1)) => {}
///                 }
///                 println!("worker {}: tick", worker.index());
///             }
///         }))
/// }
/// ```
///
/// It takes nothing, its index or a [`Worker`], as a sync worker does, and returns `()` or
/// `Result<(), E>` with `E: Debug`. The runtime is the one
/// [`Supervisor::runtime`](crate::Supervisor::runtime) picks, `current_thread` by default
/// ([`Runtime`] says why), with its IO and time drivers on. When hang detection is on, a task
/// on that runtime beats for the worker, so that an executor blocked by a task that never
/// yields is found hung.
#[derive(Clone, Copy, Debug)]
pub struct Async<F>(pub F);

/// The signature of an [`Async`] worker function; an implementation detail of [`WorkerFn`].
#[doc(hidden)]
pub struct AsyncSignature<S>(PhantomData<S>);

impl<F, Fut, R> Sealed<AsyncSignature<fn() -> R>> for Async<F> where F: FnMut() -> Fut {}
impl<F, Fut, R> Sealed<AsyncSignature<fn(usize) -> R>> for Async<F> where F: FnMut(usize) -> Fut {}
impl<F, Fut, R> Sealed<AsyncSignature<fn(Worker) -> R>> for Async<F> where F: FnMut(Worker) -> Fut {}

#[diagnostic::do_not_recommend]
impl<F, Fut, R> WorkerFn<AsyncSignature<fn() -> R>> for Async<F>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = R>,
    R: WorkerResult,
{
    const TAKES_HANDLE: bool = false;
    const IS_ASYNC: bool = true;

    fn call(&mut self, worker: Worker) -> i32 {
        block_on(&worker, || (self.0)())
    }
}

#[diagnostic::do_not_recommend]
impl<F, Fut, R> WorkerFn<AsyncSignature<fn(usize) -> R>> for Async<F>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = R>,
    R: WorkerResult,
{
    const TAKES_HANDLE: bool = false;
    const IS_ASYNC: bool = true;

    fn call(&mut self, worker: Worker) -> i32 {
        block_on(&worker, || (self.0)(worker.index))
    }
}

#[diagnostic::do_not_recommend]
impl<F, Fut, R> WorkerFn<AsyncSignature<fn(Worker) -> R>> for Async<F>
where
    F: FnMut(Worker) -> Fut,
    Fut: Future<Output = R>,
    R: WorkerResult,
{
    const TAKES_HANDLE: bool = true;
    const IS_ASYNC: bool = true;

    fn call(&mut self, worker: Worker) -> i32 {
        block_on(&worker, || (self.0)(worker.clone()))
    }
}

/// Builds the worker's runtime and runs the future `work` makes on it (inside the runtime,
/// so that the function may use tokio before its first await); returns the exit code.
fn block_on<Fut, R>(worker: &Worker, work: impl FnOnce() -> Fut) -> i32
where
    Fut: Future<Output = R>,
    R: WorkerResult,
{
    let mut builder = match worker.runtime {
        Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        Runtime::MultiThread => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(threads) = worker.worker_threads {
                builder.worker_threads(threads);
            }
            builder
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            worker.report_failure(&error);
            return 1;
        }
    };
    let beat_every = worker.beat_every;
    let timeout = worker.timeout;
    let result = runtime.block_on(async move {
        let main = Arc::new(PollClock::default());
        if let Some(every) = beat_every {
            tokio::spawn(beat_forever(every, timeout, Arc::clone(&main)));
        }
        // The worker's own future runs on this thread, which is none of a multi-thread
        // runtime's: its polls are timed here.
        let mut work = std::pin::pin!(work());
        std::future::poll_fn(|context| main.time(|| work.as_mut().poll(context))).await
    });
    // The worker exits right after: waiting for tasks still running would only delay it.
    runtime.shutdown_background();
    result.exit_code(worker)
}

/// Beats for the worker as long as its runtime runs tasks, and no thread of it is stuck in
/// one task for `timeout`.
///
/// A `current_thread` runtime blocked by a task runs no other, this one included: its
/// silence shows. A `multi_thread` runtime runs this task on another thread, so the threads
/// are watched through tokio's metrics: a thread that is not parked, and whose counts
/// (parks and unparks, and time busy, which it publishes each time it parks and every 61
/// polls) have not moved for `timeout`, has spent that long in fewer than 61 polls of its
/// tasks without once running out of work: a task that blocks it.
async fn beat_forever(every: Duration, timeout: Duration, main: Arc<PollClock>) {
    let mut threads = Threads::default();
    loop {
        if !threads.one_stuck_for(timeout) && !main.in_one_poll_for(timeout) {
            shared::beat();
        }
        tokio::time::sleep(every).await;
    }
}

/// When the poll under way of the worker's own future began, if one is.
#[derive(Default)]
struct PollClock {
    /// Monotonic nanoseconds at the start of the poll under way, or 0.
    since: AtomicU64,
}

impl PollClock {
    fn time<T>(&self, poll: impl FnOnce() -> T) -> T {
        self.since.store(shared::now_nanos(), Ordering::Relaxed);
        let polled = poll();
        self.since.store(0, Ordering::Relaxed);
        polled
    }

    fn in_one_poll_for(&self, timeout: Duration) -> bool {
        match self.since.load(Ordering::Relaxed) {
            0 => false,
            since => Duration::from_nanos(shared::now_nanos().saturating_sub(since)) >= timeout,
        }
    }
}

/// What the beat task last saw of each thread of its runtime, and since when.
#[derive(Default)]
struct Threads {
    seen: Vec<(ThreadCounts, Instant)>,
}

/// A thread's counts, which move whenever it parks, unparks, or ends a run of polls.
#[derive(Clone, Copy, PartialEq, Eq)]
struct ThreadCounts {
    parks_and_unparks: u64,
    busy: Duration,
}

impl Threads {
    /// Whether a thread of the current runtime has been active with no count moving for
    /// `timeout`. Always false for a runtime of one thread, whose block stops this task too.
    #[cfg(target_has_atomic = "64")]
    fn one_stuck_for(&mut self, timeout: Duration) -> bool {
        let metrics = tokio::runtime::Handle::current().metrics();
        let now = Instant::now();
        let count = if metrics.num_workers() > 1 {
            metrics.num_workers()
        } else {
            0
        };
        self.seen.resize(count, (ThreadCounts::default(), now));
        let mut stuck = false;
        for (worker, (seen, since)) in self.seen.iter_mut().enumerate() {
            let counts = ThreadCounts {
                parks_and_unparks: metrics.worker_park_unpark_count(worker),
                busy: metrics.worker_total_busy_duration(worker),
            };
            // An odd count: parked, out of work.
            let active = counts.parks_and_unparks % 2 == 0;
            if counts != *seen || !active {
                *seen = counts;
                *since = now;
            }
            stuck |= now.duration_since(*since) >= timeout;
        }
        stuck
    }

    #[cfg(not(target_has_atomic = "64"))]
    fn one_stuck_for(&mut self, _timeout: Duration) -> bool {
        false
    }
}

impl Default for ThreadCounts {
    fn default() -> Self {
        ThreadCounts {
            // Never seen: differs from whatever comes first.
            parks_and_unparks: u64::MAX,
            busy: Duration::MAX,
        }
    }
}

/// A tokio listening socket [`Worker::accept_async`] takes: a `tokio::net::TcpListener` or
/// `UnixListener`, such as [`Listener::to_tokio_tcp`](crate::Listener::to_tokio_tcp) gives.
///
/// ```no_run
/// async fn serve<L: kamisama::AsyncAccept>(worker: &kamisama::Worker, listener: &L) -> usize {
///     let mut accepted = 0;
///     while let Some(Ok(_connection)) = worker.accept_async(listener).await {
///         accepted += 1;
///     }
///     accepted
/// }
/// ```
pub trait AsyncAccept: AsyncAcceptSealed {
    /// What `accept_async` returns: an [`AsyncStream`](crate::AsyncStream) for a fleet
    /// listener, the stream and the peer's address for a tokio one.
    type Connection;

    /// Whether the listener wakes the task on a stop itself, with no future of the stop
    /// beside it (a registration of the stop pipe with the reactor for each accept).
    #[doc(hidden)]
    const WAKES_ON_STOP: bool = false;

    /// The next connection, or `None` once `stopped` (whether it comes first, if both are
    /// there, is the listener's to say).
    #[doc(hidden)]
    fn poll_accept_until(
        &self,
        context: &mut Context<'_>,
        stopped: bool,
    ) -> Poll<Option<io::Result<Self::Connection>>>;
}

/// One wakeup per connection and a balanced share of the fleet's connections, through the
/// worker's acceptor thread for the listener; a connection the acceptor was woken for before
/// a stop is handed over before the `None`.
impl AsyncAccept for crate::Listener {
    type Connection = super::acceptor::AsyncStream;

    /// The acceptor's wait ends on a stop, and wakes the task.
    const WAKES_ON_STOP: bool = true;

    fn poll_accept_until(
        &self,
        context: &mut Context<'_>,
        stopped: bool,
    ) -> Poll<Option<io::Result<Self::Connection>>> {
        super::acceptor::poll_accept(self, context, stopped)
    }
}

/// Every waiting worker is woken by a connection, and one takes it; a stop wins over a
/// connection ready at the same time, which stays queued for another worker.
impl AsyncAccept for tokio::net::TcpListener {
    type Connection = (tokio::net::TcpStream, std::net::SocketAddr);

    fn poll_accept_until(
        &self,
        context: &mut Context<'_>,
        stopped: bool,
    ) -> Poll<Option<io::Result<Self::Connection>>> {
        if stopped {
            return Poll::Ready(None);
        }
        tokio::net::TcpListener::poll_accept(self, context).map(Some)
    }
}

/// As a tokio `TcpListener`.
impl AsyncAccept for tokio::net::UnixListener {
    type Connection = (tokio::net::UnixStream, tokio::net::unix::SocketAddr);

    fn poll_accept_until(
        &self,
        context: &mut Context<'_>,
        stopped: bool,
    ) -> Poll<Option<io::Result<Self::Connection>>> {
        if stopped {
            return Poll::Ready(None);
        }
        tokio::net::UnixListener::poll_accept(self, context).map(Some)
    }
}

#[doc(hidden)]
pub trait AsyncAcceptSealed {}

impl AsyncAcceptSealed for crate::Listener {}
impl AsyncAcceptSealed for tokio::net::TcpListener {}
impl AsyncAcceptSealed for tokio::net::UnixListener {}

/// Accepts the next connection on `listener`, or completes with `None` once a stop is
/// requested.
pub(super) async fn accept<L: AsyncAccept>(listener: &L) -> Option<io::Result<L::Connection>> {
    if L::WAKES_ON_STOP {
        return std::future::poll_fn(|context| {
            listener.poll_accept_until(context, stop::requested())
        })
        .await;
    }
    let mut stop = std::pin::pin!(stopped());
    let mut stopped = false;
    std::future::poll_fn(|context| {
        // Polled no more once it completed.
        stopped = stopped || stop.as_mut().poll(context).is_ready();
        listener.poll_accept_until(context, stopped)
    })
    .await
}

/// Completes once a stop is requested. Every waiter of the worker waits on one [`Notify`],
/// which a thread of the worker, its stop watcher (started by the first waiter), wakes once
/// the stop pipe is written: a wait costs no system call and no registration with a
/// reactor, where a copy of the pipe registered for each one cost six system calls (an
/// example server waits for a stop beside every request it reads).
pub(super) async fn stopped() {
    let notified = STOPPED.notified();
    let mut notified = std::pin::pin!(notified);
    // Enabled before the flag is read: the wakeup that follows the flag's store is not
    // missed.
    notified.as_mut().enable();
    if stop::requested() {
        return;
    }
    if watch_for_the_stop() {
        return notified.await;
    }
    // No thread to spare: each wait registers its own copy of the pipe.
    let pipe = stop::fd()
        .try_clone_to_owned()
        .and_then(pipe::Receiver::from_owned_fd);
    if let Ok(pipe) = pipe {
        // The pipe stays readable once written, and the flag is set before the write.
        while !stop::requested() {
            if pipe.readable().await.is_err() {
                break;
            }
        }
    }
    // With no descriptor to spare either: look at the flag now and then.
    while !stop::requested() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The waiters for the stop.
static STOPPED: Notify = Notify::const_new();

/// Starts the stop watcher, once: a thread that waits on the stop pipe (whose write follows
/// the flag's store) and wakes every waiter. Returns whether it runs.
fn watch_for_the_stop() -> bool {
    static WATCHING: OnceLock<bool> = OnceLock::new();
    *WATCHING.get_or_init(|| {
        std::thread::Builder::new()
            .name("kamisama-stop".into())
            .stack_size(64 * 1024)
            .spawn(|| {
                stop::wait(None, None);
                STOPPED.notify_waiters();
            })
            .is_ok()
    })
}
