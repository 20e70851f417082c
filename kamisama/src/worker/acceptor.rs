//! An async worker's accept on a listener of the fleet, with what a sync worker's has: one
//! wakeup per connection, and a share of the fleet's connections.
//!
//! tokio's reactor cannot be one of a listener's exclusive waiters: it waits on an epoll
//! instance of its own, and an epoll instance holding the listener with `EPOLLEXCLUSIVE`,
//! put inside it, is woken with every other one (the kernel counts an exclusive wakeup only
//! where a thread sleeps on that very instance). So the wait is a thread's: one *acceptor*
//! per listener a worker accepts on, which runs the sync worker's own accept (its exclusive
//! wait, its deferral to siblings past its share) whenever a task asks for a connection, and
//! hands over what it accepted. It accepts only while asked, so no connection waits in a
//! worker that stopped asking; and a stop ends a wait under way before `accept_async` says
//! `None`, so a connection the acceptor was woken for is handed over first, never dropped.
//!
//! A connection the acceptor waited for costs the hand-over: a lock, and a wakeup of the task
//! from another thread. One already queued when a task asks (most of them, under load) is
//! accepted by the task itself. The acceptor never beats for the worker (hang detection
//! watches the runtime).

use super::handle;
use crate::listen::{Listener, Stream};
use nix::sys::stat::fstat;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection an async worker accepted on a [`Listener`] with
/// [`Worker::accept_async`](crate::Worker::accept_async): a tokio stream, counted among its
/// worker's open connections until it is dropped, as a [`Stream`] is, so that the fleet's
/// connections are balanced. It reads and writes as the stream inside it does.
///
/// ```no_run
/// #[kamisama::main(listen = "127.0.0.1:8080")]
/// async fn worker(worker: kamisama::Worker) {
///     let listener = &worker.listeners()[0];
///     while let Some(Ok(stream)) = worker.accept_async(listener).await {
///         if let kamisama::AsyncStream::Tcp(tcp) = &stream {
///             println!("a client from {:?}", tcp.peer_addr());
///         }
///         // Read and write it with tokio's AsyncReadExt and AsyncWriteExt.
///         tokio::spawn(async move { drop(stream) });
///     }
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum AsyncStream {
    /// From a TCP listener.
    Tcp(tokio::net::TcpStream),
    /// From a Unix listener.
    Unix(tokio::net::UnixStream),
}

impl Stream {
    /// The same connection, accepted non-blocking ([`Listener::accept_nonblocking`]), as a
    /// tokio stream of the current runtime, still counted.
    fn into_async(self) -> io::Result<AsyncStream> {
        // The count goes over to the `AsyncStream`, or ends with the socket on an error.
        let converted = match self.into_counted() {
            Ok(tcp) => tokio::net::TcpStream::from_std(tcp).map(AsyncStream::Tcp),
            Err(unix) => tokio::net::UnixStream::from_std(unix).map(AsyncStream::Unix),
        };
        if converted.is_err() {
            super::shared::closed();
        }
        converted
    }
}

impl AsyncStream {
    /// The tokio TCP stream itself, for code that wants one; the `AsyncStream` back if it is
    /// a Unix one. The worker no longer counts it among its open connections (the share its
    /// balanced accept keeps, the status file, the metrics).
    ///
    /// ```no_run
    /// #[kamisama::main(listen = "127.0.0.1:8080")]
    /// async fn worker(worker: kamisama::Worker) -> std::io::Result<()> {
    ///     let listener = &worker.listeners()[0];
    ///     while let Some(stream) = worker.accept_async(listener).await {
    ///         if let Ok(tcp) = stream?.into_tcp() {
    ///             tcp.set_nodelay(true)?;
    ///         }
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub fn into_tcp(self) -> Result<tokio::net::TcpStream, Self> {
        match self.into_counted() {
            Ok(tcp) => {
                super::shared::closed();
                Ok(tcp)
            }
            Err(unix) => Err(AsyncStream::Unix(unix)),
        }
    }

    /// The tokio Unix stream itself; the `AsyncStream` back if it is a TCP one. Counted no
    /// more, as with [`into_tcp`](AsyncStream::into_tcp).
    pub fn into_unix(self) -> Result<tokio::net::UnixStream, Self> {
        match self.into_counted() {
            Ok(tcp) => Err(AsyncStream::Tcp(tcp)),
            Err(unix) => {
                super::shared::closed();
                Ok(unix)
            }
        }
    }

    /// The socket, out of an `AsyncStream` that is gone without being dropped: still
    /// counted as open.
    fn into_counted(self) -> Result<tokio::net::TcpStream, tokio::net::UnixStream> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the socket is read out once from an `AsyncStream` that is never dropped or
        // used again, so it has one owner.
        unsafe {
            match &*this {
                AsyncStream::Tcp(stream) => Ok(std::ptr::read(stream)),
                AsyncStream::Unix(stream) => Err(std::ptr::read(stream)),
            }
        }
    }
}

/// The connection is closed: one fewer open.
impl Drop for AsyncStream {
    fn drop(&mut self) {
        super::shared::closed();
    }
}

impl AsyncRead for AsyncStream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AsyncStream::Tcp(stream) => Pin::new(stream).poll_read(context, buffer),
            AsyncStream::Unix(stream) => Pin::new(stream).poll_read(context, buffer),
        }
    }
}

impl AsyncWrite for AsyncStream {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AsyncStream::Tcp(stream) => Pin::new(stream).poll_write(context, buffer),
            AsyncStream::Unix(stream) => Pin::new(stream).poll_write(context, buffer),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AsyncStream::Tcp(stream) => Pin::new(stream).poll_write_vectored(context, buffers),
            AsyncStream::Unix(stream) => Pin::new(stream).poll_write_vectored(context, buffers),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AsyncStream::Tcp(stream) => Pin::new(stream).poll_flush(context),
            AsyncStream::Unix(stream) => Pin::new(stream).poll_flush(context),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AsyncStream::Tcp(stream) => Pin::new(stream).poll_shutdown(context),
            AsyncStream::Unix(stream) => Pin::new(stream).poll_shutdown(context),
        }
    }
}

impl AsFd for AsyncStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            AsyncStream::Tcp(stream) => stream.as_fd(),
            AsyncStream::Unix(stream) => stream.as_fd(),
        }
    }
}

/// What a task and the acceptor of a listener tell each other.
#[derive(Default)]
struct Handoff {
    state: Mutex<State>,
    asked: Condvar,
}

#[derive(Default)]
struct State {
    /// A task waits for a connection.
    asked: bool,
    /// The acceptor is in its accept: a connection may come out of it.
    accepting: bool,
    /// A connection accepted, and not yet taken.
    accepted: Option<io::Result<Stream>>,
    /// The tasks to wake when it comes, or when the acceptor gives up for a stop.
    wakers: Vec<Waker>,
}

impl Handoff {
    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics with the lock held; a poisoned state is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The acceptors of this worker, by the inode of the socket each accepts on.
static ACCEPTORS: Mutex<Vec<(u64, Arc<Handoff>)>> = Mutex::new(Vec::new());

/// The next connection on `listener` for the task of `context`; `None` once `stopped` and
/// no connection is on its way.
pub(super) fn poll_accept(
    listener: &Listener,
    context: &mut Context<'_>,
    stopped: bool,
) -> Poll<Option<io::Result<AsyncStream>>> {
    let handoff = match acceptor(listener) {
        Ok(handoff) => handoff,
        Err(error) => return Poll::Ready(Some(Err(error))),
    };
    let mut state = handoff.state();
    if let Some(accepted) = state.accepted.take() {
        return Poll::Ready(Some(accepted.and_then(Stream::into_async)));
    }
    // A connection already queued (a burst, a busy fleet) is taken at once, with no
    // hand-over: only the waits are the acceptor's.
    if !stopped && !super::shared::over_share() {
        match listener.accept_nonblocking() {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            accepted => return Poll::Ready(Some(accepted.and_then(Stream::into_async))),
        }
    }
    if stopped && !state.accepting {
        return Poll::Ready(None);
    }
    if !state
        .wakers
        .iter()
        .any(|waker| waker.will_wake(context.waker()))
    {
        state.wakers.push(context.waker().clone());
    }
    if !stopped {
        state.asked = true;
        handoff.asked.notify_one();
    }
    Poll::Pending
}

/// The acceptors of the fleet's listeners, by their place among them: found with no system
/// call and no lock, as a fleet listener is open as long as the worker.
static FLEET_ACCEPTORS: OnceLock<Box<[OnceLock<Arc<Handoff>>]>> = OnceLock::new();

/// The acceptor of `listener`, started on the first call.
fn acceptor(listener: &Listener) -> io::Result<Arc<Handoff>> {
    let Some(at) = crate::listen::fleet_position(listener) else {
        return acceptor_by_inode(listener);
    };
    let fleet = FLEET_ACCEPTORS.get_or_init(|| {
        let count = crate::listen::listeners().len();
        (0..count).map(|_| OnceLock::new()).collect()
    });
    if let Some(handoff) = fleet[at].get() {
        return Ok(Arc::clone(handoff));
    }
    let handoff = acceptor_by_inode(listener)?;
    Ok(Arc::clone(fleet[at].get_or_init(|| handoff)))
}

/// The acceptor of the socket `listener` is a descriptor of, started on the first call.
fn acceptor_by_inode(listener: &Listener) -> io::Result<Arc<Handoff>> {
    let inode = fstat(listener.as_fd())?.st_ino;
    let mut acceptors = ACCEPTORS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, handoff)) = acceptors.iter().find(|(of, _)| *of == inode) {
        return Ok(Arc::clone(handoff));
    }
    // Its own descriptor of the socket, which the thread keeps open for its life, and
    // non-blocking for it (it shares the socket's flags with every descriptor of it).
    let own = Listener::from_fd(listener.as_fd().try_clone_to_owned()?)?;
    own.set_nonblocking(true)?;
    let handoff = Arc::new(Handoff::default());
    let theirs = Arc::clone(&handoff);
    std::thread::Builder::new()
        .name("kamisama-accept".into())
        .spawn(move || accept_while_asked(&own, &theirs))?;
    acceptors.push((inode, Arc::clone(&handoff)));
    Ok(handoff)
}

/// The acceptor's life: the sync worker's accept, each time a task asks and the last
/// connection was taken; the worker's exit ends it.
fn accept_while_asked(listener: &Listener, handoff: &Handoff) {
    loop {
        let mut state = handoff.state();
        while !state.asked || state.accepted.is_some() {
            state = handoff
                .asked
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.accepting = true;
        drop(state);
        let accepted = handle::accept(listener, false);
        let mut state = handoff.state();
        state.accepting = false;
        state.asked = false;
        state.accepted = accepted;
        let wakers = std::mem::take(&mut state.wakers);
        drop(state);
        wakers.into_iter().for_each(Waker::wake);
    }
}
