//! Waiting for a connection so that each one wakes one worker, not all of them.
//!
//! Every worker waits on the same listening socket. With `poll`, a connection wakes every
//! waiting worker, and all but one find nothing to accept and go back to sleep: a fleet of
//! `N` idle workers pays `N` wakeups per connection (the thundering herd). An epoll instance
//! that holds the listener with `EPOLLEXCLUSIVE` is woken alone, or with few others: the
//! kernel wakes exclusive waiters one at a time. Each thread that accepts keeps one such
//! instance per listener, with the worker's stop pipe beside it (not exclusive: a stop still
//! wakes every worker at once), made on its first accept and reused after.
//!
//! A thread woken for a connection takes it even if a stop came with it: no other waiter was
//! woken, and a connection left in the queue would wait for the next one to wake somebody.
//!
//! The kernel tries exclusive waiters in the order they joined the socket's queue, so the
//! first worker would take every connection it is idle for, and eight connections opened at
//! once would all go to one worker. A worker that accepted a connection joins the queue
//! again, at its end ([`accepted`]): connections go round the idle workers in turn.

use super::stop::{self, Woken};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::stat::fstat;
use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// The most listeners a thread keeps an epoll instance for; past it, the oldest is closed.
const KEPT: usize = 8;

const STOP: u64 = 0;
const LISTENER: u64 = 1;

/// A thread's epoll instance for one listener.
struct Waiter {
    /// The listener's descriptor, and the socket it named when the instance was made: a
    /// descriptor closed and taken again by another socket gets an instance of its own.
    listener: RawFd,
    inode: u64,
    epoll: Epoll,
}

thread_local! {
    static WAITERS: RefCell<Vec<Waiter>> = const { RefCell::new(Vec::new()) };
    /// The listener this thread last waited on, and its inode, for [`accepted`]: an `fstat`
    /// saved on every connection.
    static LAST: Cell<(RawFd, u64)> = const { Cell::new((-1, 0)) };
}

/// Blocks until `listener` has a connection to accept (and this thread is the one woken for
/// it), or a stop is requested. Without a descriptor to spare for the epoll instance, waits
/// as `stop::wait` does, woken with every other worker. `stable`: the descriptor stays open
/// as long as the thread, so that it names the socket it named before, with no `fstat`.
pub(crate) fn wait(listener: BorrowedFd<'_>, stable: bool) -> Woken {
    // A descriptor that stays open as long as the thread (a fleet listener, an acceptor's
    // own) names one socket: its instance is found by the descriptor alone.
    let kept = stable
        .then(|| {
            WAITERS.with_borrow(|waiters| {
                let waiter = waiters
                    .iter()
                    .find(|waiter| waiter.listener == listener.as_raw_fd());
                waiter.map(|waiter| waiter.inode)
            })
        })
        .flatten();
    let Some(inode) = kept.or_else(|| fstat(listener).map(|stat| stat.st_ino).ok()) else {
        return stop::wait(Some(listener), None);
    };
    LAST.set((listener.as_raw_fd(), inode));
    WAITERS.with_borrow_mut(|waiters| {
        let at = waiters
            .iter()
            .position(|waiter| waiter.listener == listener.as_raw_fd() && waiter.inode == inode);
        let at = match at {
            Some(at) => at,
            None => match Waiter::new(listener, inode) {
                Some(waiter) => {
                    if waiters.len() == KEPT {
                        waiters.remove(0);
                    }
                    waiters.push(waiter);
                    waiters.len() - 1
                }
                None => return stop::wait(Some(listener), None),
            },
        };
        waiters[at].wait(listener)
    })
}

/// After a connection was accepted on `listener`: this thread goes to the end of the queue
/// of those waiting for the next one.
pub(crate) fn accepted(listener: BorrowedFd<'_>) {
    let (fd, inode) = LAST.get();
    if fd != listener.as_raw_fd() {
        return;
    }
    WAITERS.with_borrow_mut(|waiters| {
        let at = waiters
            .iter()
            .position(|waiter| waiter.listener == fd && waiter.inode == inode);
        if let Some(at) = at {
            // Deleted and added again, which puts it at the end. An instance the listener
            // could not be added back to (out of kernel memory, or of `max_user_watches`)
            // is closed: the next wait makes another.
            let epoll = &waiters[at].epoll;
            if epoll.delete(listener).is_ok() && epoll.add(listener, Waiter::exclusive()).is_err() {
                waiters.remove(at);
            }
        }
    });
}

impl Waiter {
    fn exclusive() -> EpollEvent {
        EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, LISTENER)
    }

    fn new(listener: BorrowedFd<'_>, inode: u64) -> Option<Waiter> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).ok()?;
        epoll
            .add(stop::fd(), EpollEvent::new(EpollFlags::EPOLLIN, STOP))
            .ok()?;
        epoll.add(listener, Waiter::exclusive()).ok()?;
        Some(Waiter {
            listener: listener.as_raw_fd(),
            inode,
            epoll,
        })
    }

    fn wait(&self, listener: BorrowedFd<'_>) -> Woken {
        let mut events = [EpollEvent::empty(); 2];
        loop {
            if stop::requested() {
                return Woken::Stop;
            }
            let count = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(count) => count,
                Err(Errno::EINTR) => continue,
                Err(_) => return stop::wait(Some(listener), None),
            };
            // A connection this thread was woken for is its to take, stop or not: the
            // kernel woke no other waiter for it, and one left in the queue would wait for
            // the next connection to wake someone. The next wait returns the stop.
            if events[..count].iter().any(|event| event.data() == LISTENER) {
                return Woken::Ready;
            }
        }
    }
}
