//! What a worker tells its master through memory they share: its signs of life, its
//! readiness, and the work it did. The master maps six words per worker (`MAP_SHARED`,
//! inherited by every fork). A worker stores in the first the time of its last beat on the
//! monotonic clock, so that a wall-clock jump changes nothing, in the second its pid as it
//! starts, marked once it is ready, and in the third how many units of work it completed; the
//! fourth is the master's word to it: after how many units it is to be recycled; the fifth
//! counts its threads at work, out of kamisama's waits, which the metrics call busy; the sixth
//! its open connections. A beat is a clock read, which the vDSO answers without entering the
//! kernel, and a store; a unit of work is an addition to a count of the worker's own and a
//! store: no system call. The master only reads, but for setting a worker's words before its
//! fork. The one system call is the worker's word that it reached its limit, once in its
//! life: `SIGURG` to the master, which replaces it.
//!
//! Each index has two sets of words, its two [`Half`]s: a worker being replaced serves on
//! beside its successor until the successor is ready, and each of the two writes only its
//! own, so that neither's beats hide the other's hang, nor its threads at work or its counts
//! end up in the other's.

use crate::config::MAX_INSTANCES;
use nix::errno::Errno;
use nix::sys::mman::{mmap_anonymous, munmap, MapFlags, ProtFlags};
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// A slot's value after a fork, before the worker's first sign of life.
pub(crate) const NOT_YET: u64 = 0;
/// A slot's value while the worker waits through its handle (a sleep, an accept): alive.
pub(crate) const WAITING: u64 = u64::MAX;

/// One index's words.
#[repr(C)]
pub(crate) struct Words {
    /// When the worker last showed a sign of life, or `NOT_YET`, or `WAITING`.
    pub(crate) beat: AtomicU64,
    /// Whose slot it is and whether that worker is ready: the pid of the worker that took
    /// the slot last, shifted left by one, with the low bit set once it declared itself ready
    /// (see [`holder_ready`]); 0 before any worker took it.
    pub(crate) ready: AtomicU64,
    /// Units of work the worker completed.
    pub(crate) done: AtomicU64,
    /// After how many units the worker is to be recycled; 0 for never. Set by the master
    /// before the fork.
    pub(crate) limit: AtomicU64,
    /// How many of the worker's threads are at work, out of kamisama's waits (as an `i64`):
    /// its main thread from the start, any other from its first wait on.
    pub(crate) at_work: AtomicU64,
    /// How many connections the worker holds open, accepted through its handle as a
    /// [`Stream`](crate::Stream).
    pub(crate) connections: AtomicU64,
}

/// Which of its index's two sets of words a worker has: the master gives a new worker the
/// set that no worker of the index still running has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Half {
    #[default]
    First,
    Second,
}

impl Half {
    /// The other set of the index.
    pub(crate) fn other(self) -> Half {
        match self {
            Half::First => Half::Second,
            Half::Second => Half::First,
        }
    }
}

/// The shared words of every index; owned by the master, which unmaps them when it is done.
pub(crate) struct SharedSlots {
    words: NonNull<Words>,
}

impl SharedSlots {
    /// Maps the words of every index there can be. Only the pages of indices in use are ever
    /// touched, and so allocated: 4 KiB for 42 indices.
    pub(crate) fn map() -> Result<Self, Errno> {
        let length = NonZeroUsize::new(SharedSlots::LENGTH).ok_or(Errno::EINVAL)?;
        // SAFETY: a new anonymous mapping aliases nothing; it is zero-filled, and all-zero
        // words are valid `Words` (`NOT_YET`, not ready).
        let words = unsafe {
            mmap_anonymous(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED | MapFlags::MAP_NORESERVE,
            )
        }?;
        Ok(SharedSlots {
            words: words.cast(),
        })
    }

    const LENGTH: usize = MAX_INSTANCES * 2 * std::mem::size_of::<Words>();

    /// The words `half` of `index`, which is below `MAX_INSTANCES`.
    pub(crate) fn words(&self, index: usize, half: Half) -> &Words {
        assert!(index < MAX_INSTANCES, "index {index} has no shared slot");
        // SAFETY: the mapping holds two sets of words for each of MAX_INSTANCES indices, and
        // lives as long as `self`.
        unsafe { &*self.words.as_ptr().add(index * 2 + half as usize) }
    }
}

impl Drop for SharedSlots {
    fn drop(&mut self) {
        // SAFETY: the mapping is this object's own, and no reference to it outlives `self`
        // in this process (a worker keeps its copy of the mapping, never this object).
        let _ = unsafe { munmap(self.words.cast(), SharedSlots::LENGTH) };
    }
}

/// This worker's words, or null when the master watches neither hangs nor readiness.
static SLOT: AtomicPtr<Words> = AtomicPtr::new(std::ptr::null_mut());

/// Units of work this worker completed, mirrored to its words.
static DONE: AtomicU64 = AtomicU64::new(0);

/// Connections this worker holds open: its own count, mirrored to its slot.
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// The first words of the mapping, and how many indices the fleet had at this one's fork: the
/// siblings whose open connections this worker compares its own with.
static FIRST: AtomicPtr<Words> = AtomicPtr::new(std::ptr::null_mut());
static FLEET: AtomicU64 = AtomicU64::new(0);

/// After how many units this worker asks to be recycled, and its master; read at start.
static LIMIT: AtomicU64 = AtomicU64::new(0);
static MASTER: AtomicU64 = AtomicU64::new(0);

/// In a new worker: beats and readiness go to the words `half` of `index` from now on. The
/// mapping is never unmapped in a worker, so they are valid for the rest of its life.
pub(crate) fn install(
    shared: Option<&SharedSlots>,
    index: usize,
    half: Half,
    fleet: usize,
    master: u32,
) {
    // Without words, nothing is written: the master never set any, and a store of null over
    // null would still copy the page after the fork.
    if let Some(shared) = shared {
        let slot = shared.words(index, half);
        FIRST.store(shared.words.as_ptr(), Ordering::Relaxed);
        FLEET.store(fleet.min(MAX_INSTANCES) as u64, Ordering::Relaxed);
        SLOT.store((slot as *const Words).cast_mut(), Ordering::Relaxed);
        LIMIT.store(slot.limit.load(Ordering::Relaxed), Ordering::Relaxed);
        MASTER.store(u64::from(master), Ordering::Relaxed);
        // The words are this worker's from now on: were they still those of a worker of
        // the index (three of them at once: a successor that died while its predecessor
        // stopped), that one could no longer declare itself ready over this one.
        slot.ready
            .store(holder(std::process::id()), Ordering::Relaxed);
        // The main thread is at work from the start.
        slot.at_work.store(1, Ordering::Relaxed);
        let _ = THREAD.try_with(|thread| thread.set(Thread::Working));
    }
}

/// Where a thread of the worker is, for the count of threads at work.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Thread {
    /// Never seen in a wait: not counted (a thread kamisama knows nothing of).
    Unseen,
    Working,
    Waiting,
}

/// This thread's place in the count; a thread that ends at work leaves it.
struct ThisThread(std::cell::Cell<Thread>);

impl ThisThread {
    fn set(&self, thread: Thread) {
        self.0.set(thread);
    }
}

impl Drop for ThisThread {
    fn drop(&mut self) {
        if self.0.get() == Thread::Working {
            add_at_work(-1);
        }
    }
}

thread_local! {
    static THREAD: ThisThread = const { ThisThread(std::cell::Cell::new(Thread::Unseen)) };
}

fn add_at_work(change: i64) {
    if let Some(slot) = own_slot() {
        slot.at_work.fetch_add(change as u64, Ordering::Relaxed);
    }
}

/// Counts `units` of work done; at the limit the master set, asks it for a successor.
pub(crate) fn completed(units: u64) {
    let before = DONE.fetch_add(units, Ordering::Relaxed);
    let done = before.saturating_add(units);
    let Some(slot) = own_slot() else {
        return;
    };
    slot.done.store(done, Ordering::Relaxed);
    let limit = LIMIT.load(Ordering::Relaxed);
    if limit > 0 && before < limit && done >= limit {
        let master = MASTER.load(Ordering::Relaxed) as libc::pid_t;
        // SAFETY: kill has no memory preconditions. A master gone has nothing to replace.
        unsafe { libc::kill(master, libc::SIGURG) };
    }
}

/// Units of work this worker completed.
pub(crate) fn done() -> u64 {
    DONE.load(Ordering::Relaxed)
}

/// Declares this worker ready, if the slot is still its own: a successor forked since took
/// it, and is the one whose readiness the master waits for.
pub(crate) fn ready() {
    if let Some(slot) = own_slot() {
        let holder = holder(std::process::id());
        let _ =
            slot.ready
                .compare_exchange(holder, holder | 1, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The `ready` word of a slot that `pid` holds, not ready yet.
fn holder(pid: u32) -> u64 {
    u64::from(pid) << 1
}

/// Whether the worker `pid` holds the slot `words` and declared itself ready.
pub(crate) fn holder_ready(words: &Words, pid: u32) -> bool {
    words.ready.load(Ordering::Relaxed) == holder(pid) | 1
}

/// A sign of life, now.
pub(crate) fn beat() {
    store(now_nanos());
}

/// Marks the worker as waiting through its handle, alive until its next beat, and this
/// thread as not at work.
pub(crate) fn waiting() {
    store(WAITING);
    let _ = THREAD.try_with(|thread| {
        if thread.0.get() == Thread::Working {
            add_at_work(-1);
        }
        thread.set(Thread::Waiting);
    });
}

/// Back from a wait through the handle: a sign of life, and this thread at work again.
pub(crate) fn woken() {
    beat();
    let _ = THREAD.try_with(|thread| {
        if thread.0.get() != Thread::Working {
            add_at_work(1);
        }
        thread.set(Thread::Working);
    });
}

/// A connection was accepted through the handle: one more open.
pub(crate) fn opened() {
    let open = CONNECTIONS.fetch_add(1, Ordering::Relaxed) + 1;
    if let Some(slot) = own_slot() {
        slot.connections.store(open, Ordering::Relaxed);
    }
}

/// A connection accepted through the handle was closed: one fewer open.
pub(crate) fn closed() {
    let before = CONNECTIONS.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
        Some(open.saturating_sub(1))
    });
    if let (Some(slot), Ok(before)) = (own_slot(), before) {
        slot.connections
            .store(before.saturating_sub(1), Ordering::Relaxed);
    }
}

/// Whether this worker holds more than its share of the fleet's open connections: more than
/// one past the fleet's average. The words of every sibling are read, so past
/// [`BALANCED_UP_TO`] workers the answer is always no.
pub(crate) fn over_share() -> bool {
    let first = FIRST.load(Ordering::Relaxed);
    let fleet = FLEET.load(Ordering::Relaxed) as usize;
    if first.is_null() || !(2..=BALANCED_UP_TO).contains(&fleet) {
        return false;
    }
    let mine = CONNECTIONS.load(Ordering::Relaxed);
    // Both halves of each index: a worker being replaced still holds its connections.
    // SAFETY: `install` set `first` to the mapping's first words, and `fleet` is at most
    // MAX_INSTANCES, whose two halves the mapping holds; it lives as long as the worker.
    let total: u64 = (0..fleet * 2)
        .map(|words| unsafe { &*first.add(words) })
        .map(|words| words.connections.load(Ordering::Relaxed))
        .sum();
    mine * fleet as u64 > total + fleet as u64
}

/// The largest fleet whose workers balance their connections: each accept reads a word per
/// sibling.
pub(crate) const BALANCED_UP_TO: usize = 1024;

/// Whether a worker whose slot says `at_work` has a thread at work.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) fn is_at_work(at_work: u64) -> bool {
    (at_work as i64) > 0
}

fn store(value: u64) {
    if let Some(slot) = own_slot() {
        slot.beat.store(value, Ordering::Relaxed);
    }
}

fn own_slot() -> Option<&'static Words> {
    let slot = SLOT.load(Ordering::Relaxed);
    // SAFETY: `install` set it to a slot of the shared mapping, valid for the worker's life,
    // or left it null.
    unsafe { slot.as_ref() }
}

/// Nanoseconds on CLOCK_MONOTONIC, which every process shares; never `NOT_YET` or `WAITING`.
pub(crate) fn now_nanos() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid out-parameter; CLOCK_MONOTONIC cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let nanos = (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64);
    nanos.clamp(NOT_YET + 1, WAITING - 1)
}
