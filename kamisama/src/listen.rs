//! Listening sockets: bound once by the master before its first fork (or handed to it by
//! systemd's socket activation, or by the master it upgrades), and shared by every worker.

use crate::Error;
use nix::sys::socket::{
    bind, getsockname, getsockopt, listen, setsockopt, socket, sockopt, AddressFamily, Backlog,
    SockFlag, SockType, SockaddrLike, SockaddrStorage, UnixAddr,
};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::OnceLock;

/// A listening socket of the fleet, shared by every worker: take it from
/// [`Worker::listeners`](crate::Worker::listeners) and accept on it with
/// [`Worker::accept`](crate::Worker::accept), which returns at once on a stop.
///
/// ```no_run
/// #[kamisama::main(listen = ["127.0.0.1:8080", "unix:/run/app.sock"])]
/// fn worker(worker: &kamisama::Worker) {
///     for listener in worker.listeners() {
///         match listener {
///             kamisama::Listener::Tcp(tcp) => println!("TCP on {:?}", tcp.local_addr()),
///             kamisama::Listener::Unix(_) => println!("Unix on {listener}"),
///             _ => {}
///         }
///     }
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Listener {
    /// A TCP socket, from `listen = "127.0.0.1:8080"`.
    Tcp(TcpListener),
    /// A Unix socket, from `listen = "unix:/run/app.sock"`.
    Unix(UnixListener),
}

/// A connection accepted on a [`Listener`], counted among its worker's open connections until
/// it is dropped: what [`Worker::accept`](crate::Worker::accept) balances the fleet's
/// connections by, and what the metrics show (`kamisama_worker_connections`).
///
/// ```no_run
/// use std::io::{Read, Write};
///
/// #[kamisama::main(listen = "127.0.0.1:7000")]
/// fn worker(worker: &kamisama::Worker) {
///     while let Some(Ok(mut stream)) = worker.accept(&worker.listeners()[0]) {
///         let mut byte = [0; 1];
///         if stream.read(&mut byte).is_ok() {
///             let _ = stream.write_all(&byte); // an echo, one byte
///         }
///     }
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Stream {
    /// From a TCP listener.
    Tcp(TcpStream),
    /// From a Unix listener.
    Unix(UnixStream),
}

impl Listener {
    /// The TCP listener, if this is one. In an async fleet it is non-blocking, as
    /// `tokio::net::TcpListener::from_std` (after `try_clone`) or smol's `Async::new` take it;
    /// in a sync fleet, blocking, for a plain `accept`.
    ///
    /// ```no_run
    /// #[kamisama::main(listen = "127.0.0.1:8080")]
    /// fn worker(worker: &kamisama::Worker) -> std::io::Result<()> {
    ///     if let Some(tcp) = worker.listeners()[0].as_tcp() {
    ///         println!("listening on {}", tcp.local_addr()?);
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub fn as_tcp(&self) -> Option<&TcpListener> {
        match self {
            Listener::Tcp(listener) => Some(listener),
            Listener::Unix(_) => None,
        }
    }

    /// The Unix listener, if this is one.
    ///
    /// ```no_run
    /// #[kamisama::main(listen = "unix:/run/app.sock")]
    /// fn worker(worker: &kamisama::Worker) {
    ///     if let Some(unix) = worker.listeners()[0].as_unix() {
    ///         println!("{:?}", unix.local_addr());
    ///     }
    /// }
    /// ```
    pub fn as_unix(&self) -> Option<&UnixListener> {
        match self {
            Listener::Unix(listener) => Some(listener),
            Listener::Tcp(_) => None,
        }
    }

    /// This TCP listener on the current tokio runtime, for tokio's own `accept` (or a
    /// library that takes a tokio listener): a descriptor of the worker's own, on the socket
    /// every worker shares. An error of kind `InvalidInput` for a Unix listener.
    /// [`Worker::accept_async`](crate::Worker::accept_async) takes it too, but accepts
    /// better on the `Listener` itself: one wakeup per connection, and balanced.
    ///
    /// ```no_run
    /// #[kamisama::main(listen = "127.0.0.1:8080")]
    /// async fn worker(worker: kamisama::Worker) -> std::io::Result<()> {
    ///     let listener = worker.listeners()[0].to_tokio_tcp()?;
    ///     while let Some(connection) = worker.accept_async(&listener).await {
    ///         let (_stream, peer) = connection?;
    ///         println!("a client from {peer}");
    ///     }
    ///     Ok(()) // stopping
    /// }
    /// ```
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub fn to_tokio_tcp(&self) -> io::Result<tokio::net::TcpListener> {
        let Listener::Tcp(listener) = self else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a TCP listener",
            ));
        };
        let own = listener.try_clone()?;
        own.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(own)
    }

    /// This Unix listener on the current tokio runtime, as
    /// [`to_tokio_tcp`](Listener::to_tokio_tcp) gives a TCP one.
    ///
    /// ```no_run
    /// #[kamisama::main(listen = "unix:/run/app.sock")]
    /// async fn worker(worker: kamisama::Worker) -> std::io::Result<()> {
    ///     let listener = worker.listeners()[0].to_tokio_unix()?;
    ///     while let Some(connection) = worker.accept_async(&listener).await {
    ///         let (_stream, _) = connection?;
    ///     }
    ///     Ok(())
    /// }
    /// ```
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub fn to_tokio_unix(&self) -> io::Result<tokio::net::UnixListener> {
        let Listener::Unix(listener) = self else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a Unix listener",
            ));
        };
        let own = listener.try_clone()?;
        own.set_nonblocking(true)?;
        tokio::net::UnixListener::from_std(own)
    }

    pub(crate) fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            Listener::Tcp(listener) => listener.set_nonblocking(nonblocking),
            Listener::Unix(listener) => listener.set_nonblocking(nonblocking),
        }
    }

    /// Accepts a connection now, counted as open until its `Stream` is dropped.
    pub(crate) fn accept_now(&self) -> io::Result<Stream> {
        let stream = match self {
            Listener::Tcp(listener) => listener.accept().map(|(stream, _)| Stream::Tcp(stream)),
            Listener::Unix(listener) => listener.accept().map(|(stream, _)| Stream::Unix(stream)),
        }?;
        crate::worker::shared::opened();
        Ok(stream)
    }

    /// Accepts a connection now, non-blocking from the start (for tokio, with no call to
    /// make it so), counted as open until its `Stream` is dropped.
    pub(crate) fn accept_nonblocking(&self) -> io::Result<Stream> {
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        let fd = nix::sys::socket::accept4(self.as_fd(), flags)?;
        let stream = match self {
            Listener::Tcp(_) => Stream::Tcp(TcpStream::from(fd)),
            Listener::Unix(_) => Stream::Unix(UnixStream::from(fd)),
        };
        crate::worker::shared::opened();
        Ok(stream)
    }

    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<Listener> {
        if !getsockopt(&fd, sockopt::AcceptConn)? {
            return Err(io::Error::other("not a listening socket"));
        }
        let address: SockaddrStorage = getsockname(fd.as_raw_fd())?;
        Ok(match address.family() {
            Some(AddressFamily::Unix) => Listener::Unix(UnixListener::from(fd)),
            Some(AddressFamily::Inet | AddressFamily::Inet6) => {
                Listener::Tcp(TcpListener::from(fd))
            }
            _ => return Err(io::Error::other("neither a TCP nor a Unix socket")),
        })
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(listener) => listener.as_fd(),
            Listener::Unix(listener) => listener.as_fd(),
        }
    }
}

/// `127.0.0.1:8080` or `unix:/run/app.sock`.
impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listener::Tcp(listener) => match listener.local_addr() {
                Ok(address) => write!(f, "{address}"),
                Err(_) => f.write_str("tcp:?"),
            },
            Listener::Unix(listener) => {
                let address = listener.local_addr().ok();
                let path = address.as_ref().and_then(|address| address.as_pathname());
                match path {
                    Some(path) => write!(f, "unix:{}", path.display()),
                    None => f.write_str("unix:?"),
                }
            }
        }
    }
}

impl Stream {
    /// Sets how long a read may block; see `TcpStream::set_read_timeout`.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// #[kamisama::main(listen = "127.0.0.1:8080")]
    /// fn worker(worker: &kamisama::Worker) -> std::io::Result<()> {
    ///     while let Some(stream) = worker.accept(&worker.listeners()[0]) {
    ///         stream?.set_read_timeout(Some(Duration::from_secs(5)))?;
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.set_read_timeout(timeout),
            Stream::Unix(stream) => stream.set_read_timeout(timeout),
        }
    }

    /// The TCP connection itself, for code that wants a `TcpStream`; the `Stream` back if it
    /// is a Unix one. The worker no longer counts it among its open connections (the share
    /// its balanced accept keeps, the status file, the metrics): count it with the
    /// `Stream` if that matters.
    ///
    /// ```no_run
    /// #[kamisama::main(listen = "127.0.0.1:8080")]
    /// fn worker(worker: &kamisama::Worker) -> std::io::Result<()> {
    ///     while let Some(stream) = worker.accept(&worker.listeners()[0]) {
    ///         if let Ok(tcp) = stream?.into_tcp() {
    ///             tcp.set_nodelay(true)?;
    ///         }
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub fn into_tcp(self) -> Result<TcpStream, Self> {
        match self.into_counted() {
            Ok(tcp) => {
                crate::worker::shared::closed();
                Ok(tcp)
            }
            Err(unix) => Err(Stream::Unix(unix)),
        }
    }

    /// The Unix connection itself; the `Stream` back if it is a TCP one. Counted no more, as
    /// with [`into_tcp`](Stream::into_tcp).
    pub fn into_unix(self) -> Result<UnixStream, Self> {
        match self.into_counted() {
            Ok(tcp) => Err(Stream::Tcp(tcp)),
            Err(unix) => {
                crate::worker::shared::closed();
                Ok(unix)
            }
        }
    }

    /// The socket, out of a `Stream` that is gone without being dropped: still counted as
    /// open, for the caller to hand on or uncount.
    pub(crate) fn into_counted(self) -> Result<TcpStream, UnixStream> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the socket is read out once from a `Stream` that is never dropped or used
        // again, so it has one owner.
        unsafe {
            match &*this {
                Stream::Tcp(stream) => Ok(std::ptr::read(stream)),
                Stream::Unix(stream) => Err(std::ptr::read(stream)),
            }
        }
    }
}

/// The connection is closed: one fewer open, for the worker's share of the fleet's
/// connections (see [`Worker::accept`](crate::Worker::accept)).
impl Drop for Stream {
    fn drop(&mut self) {
        crate::worker::shared::closed();
    }
}

impl Read for Stream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.read(buffer),
            Stream::Unix(stream) => stream.read(buffer),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.write(buffer),
            Stream::Unix(stream) => stream.write(buffer),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.flush(),
            Stream::Unix(stream) => stream.flush(),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(stream) => stream.as_fd(),
            Stream::Unix(stream) => stream.as_fd(),
        }
    }
}

/// The fleet's listeners, set once by the master before its first fork; a worker inherits
/// them with the rest of its memory.
static LISTENERS: OnceLock<Vec<Listener>> = OnceLock::new();

/// The fleet's listeners; empty when none was configured.
pub(crate) fn listeners() -> &'static [Listener] {
    LISTENERS.get().map_or(&[], Vec::as_slice)
}

/// Where `listener` is among the fleet's listeners, if it is one of them (the very object, not
/// another with the same socket): then it is open as long as the process.
pub(crate) fn fleet_position(listener: &Listener) -> Option<usize> {
    listeners()
        .iter()
        .position(|own| std::ptr::eq(own, listener))
}

/// Whether `listener` is one of the fleet's listeners.
pub(crate) fn is_the_fleets(listener: &Listener) -> bool {
    fleet_position(listener).is_some()
}

/// The listeners the master starts with: the sockets a service manager (or the master this
/// one upgrades) passed it through `LISTEN_FDS`, if any are meant for this process, else
/// those of `addresses`, bound now. The `LISTEN_*` variables are removed from the environment
/// either way, so that no worker inherits them.
pub(crate) fn open(addresses: &[String], backlog: u32) -> Result<&'static [Listener], Error> {
    // Bound once per process: `Worker::listeners` lends them for the process's life, and a
    // later run serves the same sockets.
    if let Some(open) = LISTENERS.get() {
        return Ok(open);
    }
    let opened = match inherited()? {
        Some(inherited) => inherited,
        None => addresses
            .iter()
            .map(|address| bind_to(address, backlog))
            .collect::<Result<_, _>>()?,
    };
    if opened.is_empty() {
        return Ok(&[]);
    }
    Ok(LISTENERS.get_or_init(|| opened))
}

/// Puts the fleet's listeners in non-blocking mode, as an async runtime takes them. A mode
/// belongs to the socket, and so holds in every process that shares it.
pub(crate) fn set_nonblocking(listeners: &[Listener]) -> Result<(), Error> {
    for listener in listeners {
        listener
            .set_nonblocking(true)
            .map_err(|error| Error::Listen {
                address: listener.to_string(),
                error,
            })?;
    }
    Ok(())
}

/// Parses and binds one `listen` address.
fn bind_to(address: &str, backlog: u32) -> Result<Listener, Error> {
    let failed = |error: io::Error| Error::Listen {
        address: address.to_owned(),
        error,
    };
    let backlog = i32::try_from(backlog)
        .ok()
        .and_then(|backlog| Backlog::new(backlog).ok())
        .ok_or_else(|| failed(io::Error::other("the backlog is too large")))?;
    if let Some(path) = address.strip_prefix("unix:") {
        return bind_unix(Path::new(path), backlog).map_err(failed);
    }
    let resolved: Vec<SocketAddr> = address.to_socket_addrs().map_err(failed)?.collect();
    let mut last_error = io::Error::other("no address to bind");
    for address in resolved {
        match bind_tcp(address, backlog) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = error,
        }
    }
    Err(failed(last_error))
}

fn bind_tcp(address: SocketAddr, backlog: Backlog) -> io::Result<Listener> {
    let family = match address {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    // Bind again at once after a restart, past the old connections in TIME_WAIT.
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(address))?;
    listen(&fd, backlog)?;
    Ok(Listener::Tcp(TcpListener::from(fd)))
}

fn bind_unix(path: &Path, backlog: Backlog) -> io::Result<Listener> {
    if path.as_os_str().is_empty() {
        return Err(io::Error::other(
            "no path: a socket without one is one no client can find",
        ));
    }
    // A socket file left by a master that is gone is replaced; one that still answers is a
    // live server's, and binding fails on it as it should. Anything else at the path is
    // not ours to delete.
    match std::fs::symlink_metadata(path) {
        Ok(found) if !found.file_type().is_socket() => {
            return Err(io::Error::other(format!(
                "not a socket but {}; only a socket file is replaced",
                describe(found.file_type())
            )));
        }
        Ok(_) => {
            let stale = matches!(
                UnixStream::connect(path),
                Err(error) if error.kind() == io::ErrorKind::ConnectionRefused
            );
            if stale {
                std::fs::remove_file(path)?;
            }
        }
        Err(_) => {}
    }
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    listen(&fd, backlog)?;
    Ok(Listener::Unix(UnixListener::from(fd)))
}

/// What a file that is not a socket is, for an error.
fn describe(kind: std::fs::FileType) -> &'static str {
    if kind.is_file() {
        "a regular file"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_fifo() {
        "a FIFO"
    } else {
        "a device"
    }
}

/// The sockets `LISTEN_FDS` gives this process, from descriptor 3 on (systemd's socket
/// activation protocol), or `None` when the variables are not set or are for another process
/// (`LISTEN_PID`). They get close-on-exec, so that nothing a worker runs inherits them.
fn inherited() -> Result<Option<Vec<Listener>>, Error> {
    let count = std::env::var("LISTEN_FDS").ok();
    let pid = std::env::var("LISTEN_PID").ok();
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        // The master is single-threaded, as changing the environment requires.
        std::env::remove_var(var);
    }
    let (Some(count), Some(pid)) = (count, pid) else {
        return Ok(None);
    };
    if pid.parse() != Ok(std::process::id()) {
        return Ok(None);
    }
    let invalid = |error: io::Error| Error::Listen {
        address: format!("LISTEN_FDS={count}"),
        error,
    };
    // Zero, as sd_listen_fds reads it, is no socket passed: the settings are bound instead.
    let last = match count.parse::<RawFd>() {
        Ok(0) => return Ok(None),
        Ok(count @ 1..) => count.checked_add(2),
        _ => None,
    }
    .ok_or_else(|| invalid(io::Error::other("not a number of descriptors")))?;
    (3..=last)
        .map(|raw| {
            // Made close-on-exec, which also tells whether it is open at all.
            // SAFETY: fcntl with integer arguments on a number that may not be open.
            if unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: the protocol hands this process descriptors 3 and up, open (checked
            // above) and its own, and nothing else in the process owns them.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            Listener::from_fd(fd)
        })
        .collect::<io::Result<Vec<_>>>()
        .map(Some)
        .map_err(invalid)
}
