//! Process titles: what `ps` and `top` show for the master (`crunch: master (17 workers)`)
//! and each worker (`crunch: worker 3`).
//!
//! Two places hold a process's name. `comm`, 15 bytes, which `prctl(PR_SET_NAME)` sets and
//! `top` shows (`crunch:w3`, `crunch:master`, the program's name cut to fit); and the command
//! line, which the kernel reads from the memory where it put the program's arguments
//! (`/proc/PID/cmdline`, shown by `ps`), so that rewriting that memory rewrites the title.
//!
//! That memory is short, as long as the command line was (`/usr/bin/crunch`: 16 bytes), so,
//! as nginx and PostgreSQL do, the master takes the environment's strings too, which the
//! kernel put right after the arguments: once, it copies every argument and every variable
//! to the heap and points `argv` and `environ` at the copies, so that `std::env::args()` and
//! `std::env::vars()` are unchanged, and the title may then run over into the environment's
//! memory. The kernel shows the arguments' memory as it is while its last byte is a NUL, and
//! a title that runs past it up to its own NUL (the `setproctitle` convention): so a title is
//! always ended by a NUL, and one that fits leaves the rest of the arguments' memory zeroed.
//! `/proc/PID/environ` shows that memory too, with the title over its first variables.
//!
//! `argv` itself comes from glibc, which passes it to the functions of `.init_array` (std gets
//! it the same way); on other C libraries only `comm` is set.

use crate::text::Text;
use std::ffi::{c_char, c_int, CStr, CString};
use std::fmt::{self, Write};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

static ARGC: AtomicUsize = AtomicUsize::new(0);
static ARGV: AtomicPtr<*mut c_char> = AtomicPtr::new(std::ptr::null_mut());

/// glibc calls the functions of `.init_array` with `argc`, `argv` and `envp`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[used]
#[link_section = ".init_array.00099"]
static CAPTURE_ARGV: extern "C" fn(c_int, *mut *mut c_char, *mut *mut c_char) = capture_argv;

#[cfg_attr(not(target_env = "gnu"), allow(dead_code))]
extern "C" fn capture_argv(argc: c_int, argv: *mut *mut c_char, _envp: *mut *mut c_char) {
    ARGC.store(usize::try_from(argc).unwrap_or(0), Ordering::Relaxed);
    ARGV.store(argv, Ordering::Relaxed);
}

/// The memory that holds the command line, taken over for titles.
#[derive(Debug)]
pub(crate) struct Titles {
    /// The program's name, from `argv[0]`: `crunch`.
    name: String,
    /// The memory taken over, `None` when it could not be (not glibc, or already rewritten
    /// by someone else): then only `comm` is set.
    area: Option<Area>,
    /// The `comm` the process had before, given back at the end.
    comm: [u8; 16],
}

/// The arguments' memory, and the environment's after it when it could be taken too.
#[derive(Debug)]
struct Area {
    start: *mut u8,
    /// The arguments' memory, from the first to the NUL that ends the last.
    arguments: usize,
    /// All of it, the environment's strings included.
    length: usize,
    /// The environment's strings as they were, given back at the end.
    environment: Vec<u8>,
}

impl Titles {
    /// Takes the arguments' memory over, and the environment's after it. Called once, in the
    /// master, while it is the only thread, before the first fork.
    pub(crate) fn take_over() -> Self {
        let argv = ARGV.load(Ordering::Relaxed);
        let argc = ARGC.load(Ordering::Relaxed);
        let arguments: Vec<*mut c_char> = if argv.is_null() {
            Vec::new()
        } else {
            // SAFETY: `argv` is glibc's array of `argc` C strings, valid for the life of the
            // process; only this single-threaded master reads or writes it now.
            (0..argc).map(|i| unsafe { *argv.add(i) }).collect()
        };
        let name = arguments
            .first()
            .map(|first| {
                // SAFETY: a C string of `argv`.
                let path = unsafe { CStr::from_ptr(*first) }.to_string_lossy();
                path.rsplit('/').next().unwrap_or_default().to_owned()
            })
            .unwrap_or_else(|| "kamisama".to_owned());
        let area = contiguous_area(&arguments).map(|(start, length)| {
            for (i, argument) in arguments.iter().enumerate() {
                // SAFETY: as above; the copy is leaked, so that it lives as long as `argv`
                // points at it, and `argv[i]` is a valid place to store a pointer.
                unsafe {
                    let copy = CString::from(CStr::from_ptr(*argument)).into_raw();
                    *argv.add(i) = copy;
                }
            }
            let environment = take_environment(start as usize + length);
            Area {
                start,
                arguments: length,
                length: length + environment.len(),
                environment,
            }
        });
        let mut comm = [0; 16];
        // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, to the buffer.
        unsafe { libc::prctl(libc::PR_GET_NAME, comm.as_mut_ptr(), 0, 0, 0) };
        Titles { name, area, comm }
    }

    /// Sets this process's title to `NAME: what`, such as `crunch: master (17 workers)`, and
    /// its `comm` to `NAME:role`, such as `crunch:master`.
    pub(crate) fn set(&self, what: fmt::Arguments<'_>, role: fmt::Arguments<'_>) {
        self.apply(&self.render(what, role));
    }

    /// The title `NAME: what`, and the `comm` `NAME:role`, the name cut so that the role fits
    /// in 15 bytes. The master renders a worker's before the fork, so that the worker, which
    /// applies it, runs none of the formatting code: each page of code a new process runs is
    /// a page fault on its way to the worker function.
    pub(crate) fn render(&self, what: fmt::Arguments<'_>, role: fmt::Arguments<'_>) -> Title {
        let mut title = Title::default();
        let _ = write!(title.line, "{}: {what}", self.name);
        let mut short = Text::<15>::default();
        let _ = write!(short, ":{role}");
        let _ = title.comm.push_within(&self.name, 15 - short.len());
        let _ = title.comm.write_str(short.as_str());
        title
    }

    /// Sets this process's title and `comm`. Allocates nothing and formats nothing: a worker
    /// calls it right after its fork.
    pub(crate) fn apply(&self, title: &Title) {
        let mut comm = [0u8; 16];
        comm[..title.comm.len()].copy_from_slice(title.comm.as_bytes());
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes: `comm` holds
        // at most 15, and a NUL after them.
        unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr(), 0, 0, 0) };
        if let Some(area) = &self.area {
            let shown = title.line.len().min(area.length - 1);
            // The rest of the arguments' memory zeroed, or one NUL to end a longer title.
            let padding = area.arguments.saturating_sub(shown).max(1);
            // SAFETY: the area is the arguments' and the environment's memory, `length`
            // bytes, which this process owns since `take_over` moved their strings out; the
            // title and the NULs after it stay inside it (`shown + padding <= length`).
            unsafe {
                std::ptr::copy_nonoverlapping(title.line.as_bytes().as_ptr(), area.start, shown);
                std::ptr::write_bytes(area.start.add(shown), 0, padding);
            }
        }
    }
}

/// Gives the command line and `comm` back, for a program that goes on after
/// `Supervisor::try_run`. Only the master drops its `Titles`: a worker leaves with `_exit`.
impl Drop for Titles {
    fn drop(&mut self) {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes; `comm` came
        // from PR_GET_NAME, which ends it with a NUL.
        unsafe { libc::prctl(libc::PR_SET_NAME, self.comm.as_ptr(), 0, 0, 0) };
        let Some(area) = &self.area else {
            return;
        };
        // SAFETY: the environment's memory follows the arguments', and `environment` is its
        // length, copied from it before any title; `environ` points at copies elsewhere.
        unsafe {
            let environment = area.start.add(area.arguments);
            let saved = &area.environment;
            std::ptr::copy_nonoverlapping(saved.as_ptr(), environment, saved.len());
        }
        let mut place = area.start;
        let argv = ARGV.load(Ordering::Relaxed);
        for i in 0..ARGC.load(Ordering::Relaxed) {
            // SAFETY: since `take_over`, `argv[i]` is a copy made by `CString::into_raw`, and
            // the arguments, written back one after the other, fill the area exactly as the
            // kernel laid them out; `argv[i]` points at its own again, and the copy is freed.
            unsafe {
                let copy = CString::from_raw(*argv.add(i));
                let bytes = copy.as_bytes_with_nul();
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), place, bytes.len());
                *argv.add(i) = place.cast();
                place = place.add(bytes.len());
            }
        }
    }
}

/// A title rendered, ready to apply.
#[derive(Default)]
pub(crate) struct Title {
    line: Text<127>,
    /// Without the NUL that ends it.
    comm: Text<15>,
}

// SAFETY: the area is only written by the process's single thread: the master before it
// starts any, a worker right after its fork.
unsafe impl Send for Titles {}
// SAFETY: as above.
unsafe impl Sync for Titles {}

/// The memory from the first argument to the NUL that ends the last, if the arguments lie one
/// after the other in it, as the kernel laid them out.
fn contiguous_area(arguments: &[*mut c_char]) -> Option<(*mut u8, usize)> {
    let first = *arguments.first()?;
    let mut end = first;
    for argument in arguments {
        if *argument != end {
            return None;
        }
        // SAFETY: a C string of `argv`; the next one starts after its NUL.
        end = unsafe { argument.add(CStr::from_ptr(*argument).to_bytes().len() + 1) };
    }
    // SAFETY: both point into the same block of arguments.
    let length = usize::try_from(unsafe { end.offset_from(first) }).ok()?;
    (length > 1).then_some((first.cast(), length))
}

/// Moves the environment's strings to the heap, if the kernel put them at `arguments_end`,
/// right after the arguments, and returns a copy of the memory they were in (empty when it
/// could not be taken). Every variable whose string lies there is pointed at a copy; one set
/// since the start already lives on the heap.
fn take_environment(arguments_end: usize) -> Vec<u8> {
    let Some([_, _, start, end]) = crate::procfs::argument_memory() else {
        return Vec::new();
    };
    if start != arguments_end || end <= start {
        return Vec::new();
    }
    // SAFETY: the kernel mapped the environment's strings at `start..end` for the process's
    // life; nothing writes them before this.
    let saved = unsafe { std::slice::from_raw_parts(start as *const u8, end - start) }.to_vec();
    // SAFETY: `environ` is glibc's array of C strings, ended by a null pointer, which this
    // single-threaded master alone reads or writes now; each copy is leaked, so that it
    // lives as long as `environ` points at it.
    unsafe {
        let mut variable = libc::environ;
        while !variable.is_null() && !(*variable).is_null() {
            let at = *variable as usize;
            if (start..end).contains(&at) {
                *variable = CString::from(CStr::from_ptr(*variable)).into_raw();
            }
            variable = variable.add(1);
        }
    }
    saved
}
