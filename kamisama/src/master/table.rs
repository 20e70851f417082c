//! Memory the workers never see: the master's tables with an entry per worker, and its log's
//! pending lines, live in anonymous mappings marked `MADV_DONTFORK`.
//!
//! A fork copies the page table entries of every page the master has written, and write-
//! protects them in the master, so that the master's next write to each one copies it. With
//! 10,000 workers the master's tables are megabytes: every fork would copy their entries, and
//! every worker would keep the master's pages mapped, which the kernel's reverse map then
//! lists 10,000 times over (a `kdamond` or a reclaim that walks it holds a lock each fork
//! waits for). Left out of every fork, the tables cost a fork nothing, and a write to them
//! after a fork costs no copy. A worker never reads them: it runs the worker function, and
//! leaves with `_exit`.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// A growable array of `T` in memory left out of forks, zeroed when it grows.
pub(crate) struct Table<T: Copy> {
    memory: NonNull<T>,
    len: usize,
    capacity: usize,
}

impl<T: Copy> Table<T> {
    pub(super) fn new() -> Self {
        Table {
            memory: NonNull::dangling(),
            len: 0,
            capacity: 0,
        }
    }

    /// A table of `len` entries, each of them zero bytes: for a `T` whose zero is a value.
    ///
    /// # Safety
    ///
    /// All-zero bytes must be a valid `T`.
    pub(crate) unsafe fn zeroed(len: usize) -> Self {
        let mut table = Table::new();
        table.reserve(len);
        table.len = len;
        table
    }

    pub(super) fn push(&mut self, value: T) {
        if self.len == self.capacity {
            self.reserve((self.capacity * 2).max(16));
        }
        // SAFETY: `len < capacity`: the place is in the mapping, and is written before read.
        unsafe { self.memory.as_ptr().add(self.len).write(value) };
        self.len += 1;
    }

    pub(super) fn extend_from_slice(&mut self, values: &[T]) {
        for value in values {
            self.push(*value);
        }
    }

    /// Room for `capacity` entries, so that pushing up to that many maps nothing.
    pub(super) fn reserve_total(&mut self, capacity: usize) {
        if capacity > self.capacity {
            self.reserve(capacity);
        }
    }

    pub(super) fn clear(&mut self) {
        self.len = 0;
    }

    pub(super) fn pop(&mut self) -> Option<T> {
        self.len = self.len.checked_sub(1)?;
        // SAFETY: the entry at the old `len - 1` was written.
        Some(unsafe { self.memory.as_ptr().add(self.len).read() })
    }

    /// Grows the table to `len` entries, the new ones zero bytes.
    ///
    /// # Safety
    ///
    /// All-zero bytes must be a valid `T`.
    pub(super) unsafe fn grow_zeroed(&mut self, len: usize) {
        if len > self.capacity {
            self.reserve(len.max(self.capacity * 2));
        }
        // Fresh mappings are zero; past `len`, the memory may have held entries since popped.
        if len > self.len {
            // SAFETY: the places from `len` to the new `len` are in the mapping.
            unsafe {
                self.memory
                    .as_ptr()
                    .add(self.len)
                    .write_bytes(0, len - self.len)
            };
            self.len = len;
        }
    }

    /// Moves the entries to a mapping of `capacity` entries.
    fn reserve(&mut self, capacity: usize) {
        let bytes = capacity
            .checked_mul(std::mem::size_of::<T>())
            .expect("a table of at most 2^22 workers")
            .max(1);
        // SAFETY: a new private anonymous mapping, which nothing else refers to.
        let memory = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if memory == libc::MAP_FAILED {
            // As the global allocator does when it runs out.
            std::alloc::handle_alloc_error(std::alloc::Layout::new::<T>());
        }
        // SAFETY: the mapping just made. Were the advice refused, the table would only be
        // forked like any other memory.
        unsafe { libc::madvise(memory, bytes, libc::MADV_DONTFORK) };
        let memory = memory.cast::<T>();
        // SAFETY: both hold at least `len` entries, in mappings that do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.memory.as_ptr(), memory, self.len) };
        self.unmap();
        self.memory = NonNull::new(memory).expect("mmap gives no null mapping");
        self.capacity = capacity;
    }

    fn unmap(&mut self) {
        if self.capacity > 0 {
            let bytes = (self.capacity * std::mem::size_of::<T>()).max(1);
            // SAFETY: the mapping this table made, which nothing refers to once it is gone.
            unsafe { libc::munmap(self.memory.as_ptr().cast(), bytes) };
        }
    }
}

impl<T: Copy> Default for Table<T> {
    fn default() -> Self {
        Table::new()
    }
}

impl<T: Copy> Deref for Table<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: the first `len` entries are written, in a mapping of `capacity >= len`
        // (or, empty, at a dangling well-aligned pointer).
        unsafe { std::slice::from_raw_parts(self.memory.as_ptr(), self.len) }
    }
}

impl<T: Copy> DerefMut for Table<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, with `&mut self` for exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.memory.as_ptr(), self.len) }
    }
}

impl<T: Copy> Drop for Table<T> {
    fn drop(&mut self) {
        self.unmap();
    }
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn a_table_keeps_its_entries_as_it_grows_and_shrinks() {
        let mut table = Table::new();
        for value in 0..10_000u64 {
            table.push(value);
        }
        assert_eq!(table.len(), 10_000);
        assert!(table.iter().copied().eq(0..10_000));
        assert_eq!(table.pop(), Some(9_999));
        table[3] = 42;
        assert_eq!(table[3], 42);
        // SAFETY: zero is a u64.
        unsafe { table.grow_zeroed(10_005) };
        assert_eq!(&table[9_998..], &[9_998, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn a_table_is_left_out_of_forks() {
        // SAFETY: zero is a u32.
        let mut table = unsafe { Table::<u32>::zeroed(4096) };
        table[0] = 7;
        let address = table.as_ptr() as usize;
        // /proc/self/smaps marks the mapping that holds it `dc`: do not copy on fork.
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let holds = |line: &str| {
            let range = line.split_whitespace().next().unwrap_or("");
            let Some((start, end)) = range.split_once('-') else {
                return false;
            };
            let bound = |hex| usize::from_str_radix(hex, 16).unwrap_or(0);
            (bound(start)..bound(end)).contains(&address)
        };
        let mapping = smaps.lines().skip_while(|line| !holds(line));
        let flags = mapping
            .into_iter()
            .find(|line| line.starts_with("VmFlags:"))
            .unwrap();
        assert!(flags.split_whitespace().any(|flag| flag == "dc"), "{flags}");
    }
}
