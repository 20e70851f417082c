//! What a worker function may be: the signatures [`WorkerFn`] takes and the results
//! [`WorkerResult`] turns into an exit status.

use super::Worker;
use std::fmt::Debug;

/// A function kamisama can run as a worker.
///
/// Implemented for every `FnMut` with one of these signatures, where `R` is `()`,
/// `Result<(), E>` with `E: Debug`, or `!` for a worker that never returns:
///
/// - `fn() -> R`
/// - `fn(index: usize) -> R`
/// - `fn(worker: Worker) -> R` or `fn(worker: &Worker) -> R`, for a
///   [cooperative stop](Worker).
///
/// A worker that returns `Err(error)` prints `kamisama[PID]: worker-failed index=I
/// error={error:?}` to stderr and exits with status 1, as `main` does.
///
/// A closure passed to [`Supervisor::run`](crate::Supervisor::run) needs the type of its
/// argument written out, as in `|index: usize|`, since that is what picks the signature (the
/// compiler says `type annotations needed` otherwise); a closure that never returns needs
/// nothing more:
///
/// ```no_run
/// kamisama::Supervisor::new().instances(4).run(|index: usize| loop {
///     println!("worker {index}");
///     std::thread::sleep(std::time::Duration::from_secs(1));
/// });
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a worker function kamisama can run",
    label = "not a worker function",
    note = "a worker is `fn()`, `fn(index: usize)`, `fn(worker: kamisama::Worker)` or \
            `fn(worker: &kamisama::Worker)`, and returns `()`, `Result<(), E>` where `E: Debug` \
            (which prints the error when it fails), or `!`",
    note = "a closure names its argument's type: `|index: usize|`, `|worker: kamisama::Worker|` \
            or `|worker: &kamisama::Worker|`",
    note = "an async worker is wrapped: `kamisama::Async(|worker: kamisama::Worker| async move {{ ... }})`, \
            with kamisama's `tokio` feature"
)]
pub trait WorkerFn<Signature>: sealed::Sealed<Signature> {
    #[doc(hidden)]
    const TAKES_HANDLE: bool;

    /// Whether it runs on an async runtime, which takes its listeners non-blocking.
    #[doc(hidden)]
    const IS_ASYNC: bool = false;

    #[doc(hidden)]
    fn call(&mut self, worker: Worker) -> i32;
}

/// What a worker function may return.
#[diagnostic::on_unimplemented(
    message = "a worker function cannot return `{Self}`",
    label = "a worker returns `()`, `Result<(), E>` where `E: Debug`, or `!`",
    note = "an error type must implement `Debug`: the worker prints it when it fails"
)]
///
/// ```no_run
/// #[derive(Debug)]
/// struct QueueDown;
///
/// #[kamisama::main]
/// fn worker() -> Result<(), QueueDown> {
///     Err(QueueDown) // worker-failed index=0 error=QueueDown, exit status 1
/// }
/// ```
pub trait WorkerResult: sealed::Sealed<()> {
    #[doc(hidden)]
    fn exit_code(self, worker: &Worker) -> i32;
}

impl WorkerResult for () {
    fn exit_code(self, _worker: &Worker) -> i32 {
        0
    }
}

/// What a function that never returns returns: `!`, named on stable Rust as the output of
/// `fn() -> !`.
pub(super) type Never = <fn() -> ! as crate::__private::FnOutput>::Output;

impl WorkerResult for Never {
    fn exit_code(self, _worker: &Worker) -> i32 {
        self
    }
}

impl<E: Debug> WorkerResult for Result<(), E> {
    fn exit_code(self, worker: &Worker) -> i32 {
        match self {
            Ok(()) => 0,
            Err(error) => {
                worker.report_failure(&error);
                1
            }
        }
    }
}

impl<F: FnMut() -> R, R: WorkerResult> WorkerFn<fn() -> R> for F {
    const TAKES_HANDLE: bool = false;

    fn call(&mut self, worker: Worker) -> i32 {
        self().exit_code(&worker)
    }
}

impl<F: FnMut(usize) -> R, R: WorkerResult> WorkerFn<fn(usize) -> R> for F {
    const TAKES_HANDLE: bool = false;

    fn call(&mut self, worker: Worker) -> i32 {
        self(worker.index).exit_code(&worker)
    }
}

impl<F: FnMut(Worker) -> R, R: WorkerResult> WorkerFn<fn(Worker) -> R> for F {
    const TAKES_HANDLE: bool = true;

    fn call(&mut self, worker: Worker) -> i32 {
        self(worker.clone()).exit_code(&worker)
    }
}

impl<F: FnMut(&Worker) -> R, R: WorkerResult> WorkerFn<fn(&Worker) -> R> for F {
    const TAKES_HANDLE: bool = true;

    fn call(&mut self, worker: Worker) -> i32 {
        self(&worker).exit_code(&worker)
    }
}

pub(super) mod sealed {
    use super::{Worker, WorkerResult};

    pub trait Sealed<Signature> {}

    impl Sealed<()> for () {}
    impl Sealed<()> for super::Never {}
    impl<E> Sealed<()> for Result<(), E> {}
    impl<F: FnMut() -> R, R: WorkerResult> Sealed<fn() -> R> for F {}
    impl<F: FnMut(usize) -> R, R: WorkerResult> Sealed<fn(usize) -> R> for F {}
    impl<F: FnMut(Worker) -> R, R: WorkerResult> Sealed<fn(Worker) -> R> for F {}
    impl<F: FnMut(&Worker) -> R, R: WorkerResult> Sealed<fn(&Worker) -> R> for F {}
}
