//! The endpoint's sockets: a listener and at most [`CONNECTIONS`] connections, never blocking
//! and always bounded.

use super::http::{self, Answer, Format};
use crate::Error;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::socket::{
    accept4, bind, listen, setsockopt, shutdown, socket, sockopt, AddressFamily, Backlog, MsgFlags,
    Shutdown, SockFlag, SockType, SockaddrStorage, UnixAddr,
};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How many connections are open at once, at most.
pub(crate) const CONNECTIONS: usize = 8;

/// How long a connection has from its accept to the end of its answer.
pub(crate) const CONNECTION_TIME: Duration = Duration::from_secs(5);

/// The listening socket's queue: a flood beyond it waits in the clients' retries.
const BACKLOG: i32 = 64;

/// How many connections one turn of the loop accepts, at most: a flood costs each turn a
/// bounded amount of work, and the rest waits in the queue.
const ACCEPTS_PER_TURN: usize = 16;

/// The master's descriptors of the endpoint, which a worker closes after its fork.
pub(crate) type Fds = [RawFd; CONNECTIONS + 1];

pub(crate) struct Endpoint {
    listener: OwnedFd,
    /// The socket file of a `unix:` address, removed when the master is done if it is still
    /// the one this master made.
    socket_file: Option<SocketFile>,
    connections: Vec<Connection>,
    /// The text of the last answer, kept so that it is allocated once.
    text: String,
}

struct Connection {
    fd: OwnedFd,
    /// When it is closed, answered or not.
    until: Instant,
    stage: Stage,
}

enum Stage {
    /// The request so far.
    Reading(Vec<u8>),
    /// The answer, and how much of it went out.
    Answering(Vec<u8>, usize),
    /// Answered: the endpoint has shut its side, and reads (and drops) what the client still
    /// sends until it closes its own. Closed at once, a socket with bytes unread would reset
    /// the connection, and the client could lose the answer.
    Draining,
    /// Nothing more to do: closed at the end of the turn.
    Done,
}

struct SocketFile {
    path: PathBuf,
    /// Where the socket is bound until it is placed at `path`.
    beside: PathBuf,
    /// The file placed at `path`, once it is; until then the socket is at `beside` only.
    placed: Option<(u64, u64)>,
    /// Whether placing it was tried: it is tried once.
    tried: bool,
}

impl Endpoint {
    /// Binds `address` (`host:port`, or `unix:PATH`), before anything is forked. A Unix
    /// socket is bound beside its path, and placed there at once if `claim`, else by
    /// [`claim`](Endpoint::claim): the new master of an upgrade takes the path over only
    /// when the service is its own, so that a rollback leaves the old master's in place.
    pub(crate) fn open(address: &str, claim: bool) -> Result<Endpoint, Error> {
        let failed = |error: io::Error| Error::Metrics {
            address: address.to_owned(),
            error,
        };
        let (listener, socket_file) = match address.strip_prefix("unix:") {
            Some(path) => bind_unix(Path::new(path)).map_err(failed)?,
            None => (bind_tcp(address).map_err(failed)?, None),
        };
        let mut endpoint = Endpoint {
            listener,
            socket_file,
            connections: Vec::with_capacity(CONNECTIONS),
            text: String::new(),
        };
        if claim {
            endpoint.claim().map_err(failed)?;
        }
        Ok(endpoint)
    }

    /// Places a Unix socket at its path, over the socket file of an old master, the first time
    /// it is called; a socket that could not be placed stays where it is bound. A TCP listener (`SO_REUSEPORT`) serves beside the old master's from the
    /// start.
    pub(crate) fn claim(&mut self) -> io::Result<()> {
        let Some(file) = self.socket_file.as_mut().filter(|file| !file.tried) else {
            return Ok(());
        };
        file.tried = true;
        if let Ok(found) = std::fs::symlink_metadata(&file.path) {
            if !found.file_type().is_socket() {
                return Err(io::Error::other(
                    "something other than a socket is there; only a socket file is replaced",
                ));
            }
        }
        std::fs::rename(&file.beside, &file.path)?;
        let made = std::fs::symlink_metadata(&file.path)?;
        file.placed = Some((made.dev(), made.ino()));
        Ok(())
    }

    /// What the master waits on for the endpoint: its listener, and each connection, for
    /// bytes to read or, while it is answered, for room to send.
    pub(crate) fn poll_fds(&self) -> impl Iterator<Item = PollFd<'_>> {
        let listener = PollFd::new(self.listener.as_fd(), PollFlags::POLLIN);
        let connections = self.connections.iter().map(|connection| {
            let flags = match connection.stage {
                Stage::Answering(..) => PollFlags::POLLOUT,
                _ => PollFlags::POLLIN,
            };
            PollFd::new(connection.fd.as_fd(), flags)
        });
        std::iter::once(listener).chain(connections)
    }

    /// The descriptors a forked worker closes.
    pub(crate) fn fds(&self) -> Fds {
        let mut fds = [-1; CONNECTIONS + 1];
        fds[0] = self.listener.as_raw_fd();
        for (place, connection) in fds[1..].iter_mut().zip(&self.connections) {
            *place = connection.fd.as_raw_fd();
        }
        fds
    }

    /// When the oldest connection runs out of time.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.connections
            .iter()
            .map(|connection| connection.until)
            .min()
    }

    /// Accepts what is waiting, reads what came, answers what is whole (with the text
    /// `render` writes, in the format asked), sends what fits, and closes what is done or out
    /// of time; never blocks. Returns whether the set of descriptors changed.
    pub(crate) fn serve(
        &mut self,
        now: Instant,
        mut render: impl FnMut(&mut String, Format),
    ) -> bool {
        let before = self.fds();
        self.accept(now);
        for connection in &mut self.connections {
            connection.advance(&mut |answer| respond(answer, &mut self.text, &mut render));
        }
        self.connections.retain(|connection| {
            connection.until > now && !matches!(connection.stage, Stage::Done)
        });
        self.fds() != before
    }

    fn accept(&mut self, now: Instant) {
        for _ in 0..ACCEPTS_PER_TURN {
            let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
            let fd = match accept4(&self.listener, flags) {
                Ok(fd) => fd,
                // EAGAIN: none waits. Anything else (out of descriptors, a connection reset
                // before its accept) leaves the rest to the next turn.
                Err(_) => return,
            };
            if self.connections.len() == CONNECTIONS {
                // The oldest goes: a slow client cannot hold the endpoint.
                let oldest = (0..self.connections.len())
                    .min_by_key(|&at| self.connections[at].until)
                    .unwrap_or(0);
                self.connections.swap_remove(oldest);
            }
            self.connections.push(Connection {
                fd,
                until: now + CONNECTION_TIME,
                stage: Stage::Reading(Vec::new()),
            });
        }
    }
}

impl Connection {
    /// Takes the connection as far as it goes without blocking: reads the request, answers
    /// it with what `respond` makes of it, sends the answer, drains what follows.
    fn advance(&mut self, respond: &mut impl FnMut(Answer) -> Vec<u8>) {
        if let Stage::Reading(received) = &mut self.stage {
            let ended = read(&self.fd, received, http::REQUEST_MAX);
            self.stage = match http::answer(received) {
                Some(answer) => Stage::Answering(respond(answer), 0),
                // Closed, or failed, before a whole request: nothing to answer.
                None if ended => Stage::Done,
                None => return,
            };
        }
        if let Stage::Answering(answer, sent) = &mut self.stage {
            while *sent < answer.len() {
                let flags = MsgFlags::MSG_NOSIGNAL;
                match nix::sys::socket::send(self.fd.as_raw_fd(), &answer[*sent..], flags) {
                    Ok(written) => *sent += written,
                    Err(Errno::EINTR) => {}
                    Err(Errno::EAGAIN) => return,
                    Err(_) => {
                        self.stage = Stage::Done;
                        return;
                    }
                }
            }
            let _ = shutdown(self.fd.as_raw_fd(), Shutdown::Write);
            self.stage = Stage::Draining;
        }
        if let Stage::Draining = self.stage {
            if read(&self.fd, &mut Vec::new(), 0) {
                self.stage = Stage::Done;
            }
        }
    }
}

/// Reads what `fd` has, keeping at most `keep` bytes in `kept` (and dropping the rest);
/// returns whether the client has sent all it will (it shut its side, or the connection
/// failed).
fn read(fd: &OwnedFd, kept: &mut Vec<u8>, keep: usize) -> bool {
    let mut buffer = [0; http::REQUEST_MAX];
    loop {
        match nix::unistd::read(fd, &mut buffer) {
            Ok(0) => return true,
            Ok(read) => {
                let room = keep.saturating_sub(kept.len()).min(read);
                kept.extend_from_slice(&buffer[..room]);
            }
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return false,
            Err(_) => return true,
        }
    }
}

/// The whole answer to `answer`, its body written by `render` for a scrape.
pub(super) fn respond(
    answer: Answer,
    text: &mut String,
    render: &mut impl FnMut(&mut String, Format),
) -> Vec<u8> {
    let (status, content_type, body, head) = match answer {
        Answer::Metrics { format, head } => {
            text.clear();
            render(text, format);
            ("200 OK", format.content_type(), text.as_str(), head)
        }
        Answer::NotFound { head } => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "Not found: the metrics are at /metrics.\n",
            head,
        ),
        Answer::MethodNotAllowed => (
            "405 Method Not Allowed\r\nAllow: GET, HEAD",
            "text/plain; charset=utf-8",
            "Only GET and HEAD.\n",
            false,
        ),
        Answer::BadRequest => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "Bad request.\n",
            false,
        ),
    };
    let mut whole = http::head(status, content_type, body.len()).into_bytes();
    if !head {
        whole.extend_from_slice(body.as_bytes());
    }
    whole
}

fn backlog() -> Backlog {
    Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN)
}

/// A TCP listener on `address`. `SO_REUSEPORT` lets the new master of an upgrade bind it
/// while the old one still does (the kernel allows it to processes of the same user only).
fn bind_tcp(address: &str) -> io::Result<OwnedFd> {
    let resolved: Vec<SocketAddr> = address.to_socket_addrs()?.collect();
    let mut last_error = io::Error::other("no address to bind");
    for address in resolved {
        let family = match address {
            SocketAddr::V4(_) => AddressFamily::Inet,
            SocketAddr::V6(_) => AddressFamily::Inet6,
        };
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        let bound = socket(family, SockType::Stream, flags, None).and_then(|fd| {
            setsockopt(&fd, sockopt::ReuseAddr, &true)?;
            setsockopt(&fd, sockopt::ReusePort, &true)?;
            bind(fd.as_raw_fd(), &SockaddrStorage::from(address))?;
            listen(&fd, backlog())?;
            Ok(fd)
        });
        match bound {
            Ok(fd) => return Ok(fd),
            Err(errno) => last_error = errno.into(),
        }
    }
    Err(last_error)
}

/// A Unix listener bound beside `path`, until [`Endpoint::claim`] places it there. Only a
/// socket file is ever replaced at `path`.
fn bind_unix(path: &Path) -> io::Result<(OwnedFd, Option<SocketFile>)> {
    if path.as_os_str().is_empty() {
        return Err(io::Error::other("no path"));
    }
    match std::fs::symlink_metadata(path) {
        Ok(found) if !found.file_type().is_socket() => {
            return Err(io::Error::other(
                "something other than a socket is there; only a socket file is replaced",
            ));
        }
        _ => {}
    }
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or(path.as_os_str()));
    name.push(format!(".{}.tmp", std::process::id()));
    let beside = path.with_file_name(name);
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let fd = socket(AddressFamily::Unix, SockType::Stream, flags, None)?;
    // A file of that name is a socket this pid left behind: only sockets are ever made there.
    if std::fs::symlink_metadata(&beside).is_ok_and(|found| found.file_type().is_socket()) {
        std::fs::remove_file(&beside)?;
    }
    bind(fd.as_raw_fd(), &UnixAddr::new(&beside)?)?;
    if let Err(errno) = listen(&fd, backlog()) {
        let _ = std::fs::remove_file(&beside);
        return Err(errno.into());
    }
    let socket_file = SocketFile {
        path: path.to_owned(),
        beside,
        placed: None,
        tried: false,
    };
    Ok((fd, Some(socket_file)))
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // Only the master drops it (a worker leaves with `_exit`), and only its own file goes:
        // a new master may have put its own there since.
        let Some(file) = &self.socket_file else {
            return;
        };
        let Some((device, inode)) = file.placed else {
            let _ = std::fs::remove_file(&file.beside);
            return;
        };
        let ours = std::fs::symlink_metadata(&file.path)
            .is_ok_and(|found| found.dev() == device && found.ino() == inode);
        if ours {
            let _ = std::fs::remove_file(&file.path);
        }
    }
}
