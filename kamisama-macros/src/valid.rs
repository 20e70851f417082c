//! Checking that the annotated item is a worker function kamisama can run.

use crate::attr::{Args, Key, Value};
use proc_macro2::TokenStream;
use syn::{Error, FnArg, ItemFn, ReturnType, Safety, Type};

/// Parses `item` as a function and checks its signature, reporting every mistake at once.
/// `krate` is the name the kamisama crate has in the user's crate, for `krate::Worker`.
pub(crate) fn worker(item: TokenStream, krate: &str) -> syn::Result<ItemFn> {
    let function: ItemFn = syn::parse2(item.clone()).map_err(|_| {
        Error::new_spanned(
            item,
            "`#[kamisama::main]` goes on a worker function, such as `fn worker(index: usize)`",
        )
    })?;
    let sig = &function.sig;
    let mut errors = Vec::new();
    for attribute in &function.attrs {
        let path = attribute.path();
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if segments == ["tokio", "main"] {
            errors.push(Error::new_spanned(
                attribute,
                "`#[tokio::main]` is not needed under `#[kamisama::main]`: each worker builds \
                 its own runtime after the fork; remove it, and pick the runtime with \
                 `runtime = \"multi-thread\"` if the default `current-thread` does not fit",
            ));
        }
    }
    if let Some(stmt) = expanded_by_tokio_main(&function) {
        errors.push(Error::new_spanned(
            stmt,
            "`#[tokio::main]` above `#[kamisama::main]` runs a runtime of its own in every \
             worker, around a function made sync: remove it and keep the `async fn`, whose \
             runtime kamisama builds in each worker (`runtime = \"multi-thread\"` for tokio's \
             default flavour)",
        ));
    }
    if let Safety::Unsafe(token) = &sig.safety {
        errors.push(Error::new_spanned(
            token,
            "the worker function cannot be `unsafe`",
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(Error::new_spanned(
            abi,
            "the worker function cannot have a foreign ABI: remove the `extern`; a worker is a \
             Rust function that kamisama calls in each worker process",
        ));
    }
    if !sig.generics.params.is_empty() {
        errors.push(Error::new_spanned(
            &sig.generics,
            "the worker function cannot be generic, nor take lifetime parameters",
        ));
    } else if let Some(clause) = &sig.generics.where_clause {
        errors.push(Error::new_spanned(
            clause,
            "the worker function cannot have a `where` clause: it is not generic",
        ));
    }
    check_inputs(&function, krate, &mut errors);
    if let ReturnType::Type(_, ty) = &sig.output {
        let never = matches!(**ty, Type::Never(_));
        if never && sig.asyncness.is_some() {
            errors.push(Error::new_spanned(
                ty,
                "an `async` worker returns `()` or `Result<(), E>`; to never return, loop \
                 without returning and leave the return type out",
            ));
        } else if !is_unit(ty) && !is_result(ty) && !never {
            errors.push(Error::new_spanned(
                ty,
                "the worker function returns `()`, `Result<(), E>` or `!`",
            ));
        }
    }
    match errors.into_iter().reduce(|mut all, error| {
        all.combine(error);
        all
    }) {
        Some(errors) => Err(errors),
        None => Ok(function),
    }
}

/// The worker takes nothing, its index as a `usize`, or a `kamisama::Worker` handle.
fn check_inputs(function: &ItemFn, krate: &str, errors: &mut Vec<Error>) {
    const SIGNATURES: &str = "`fn worker()`, `fn worker(index: usize)` or \
                              `fn worker(worker: kamisama::Worker)` (or `&kamisama::Worker`)";
    let mut inputs = function.sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver)) => errors.push(Error::new_spanned(
            receiver,
            format!("the worker function cannot take `self`; write {SIGNATURES}"),
        )),
        Some(FnArg::Typed(arg)) if !is_usize(&arg.ty) && !is_worker(&arg.ty, krate) => {
            let by_reference = match &*arg.ty {
                Type::Reference(reference) if reference.mutability.is_none() => {
                    Some(&reference.elem).filter(|ty| is_worker(ty, krate))
                }
                _ => None,
            };
            if by_reference.is_none() {
                errors.push(Error::new_spanned(
                    &arg.ty,
                    "the worker takes its index as `index: usize`, or a handle as \
                     `worker: kamisama::Worker` or `worker: &kamisama::Worker`",
                ));
            } else if function.sig.asyncness.is_some() {
                errors.push(Error::new_spanned(
                    &arg.ty,
                    "an `async` worker takes its handle by value, `worker: kamisama::Worker`, \
                     as its future owns it",
                ));
            }
        }
        _ => {}
    }
    if let Some(extra) = inputs.next() {
        errors.push(Error::new_spanned(
            extra,
            format!("the worker function takes one argument at most: {SIGNATURES}"),
        ));
    }
}

fn is_usize(ty: &Type) -> bool {
    matches!(ty, Type::Path(path) if path.qself.is_none() && path.path.is_ident("usize"))
}

/// `Worker`, `kamisama::Worker` or `::kamisama::Worker` (with the crate's own name).
fn is_worker(ty: &Type, krate: &str) -> bool {
    let Type::Path(path) = ty else {
        return false;
    };
    let segments: Vec<String> = path
        .path
        .segments
        .iter()
        .map(|segment| segment.ident.to_string())
        .collect();
    let plain = path
        .path
        .segments
        .iter()
        .all(|segment| segment.arguments.is_none());
    path.qself.is_none()
        && plain
        && matches!(segments.as_slice(), [w] | [_, w] if w == "Worker")
        && (segments.len() == 1 || segments[0] == krate)
}

/// Any `Result<...>`: the compiler checks the rest through `kamisama::WorkerResult`.
fn is_result(ty: &Type) -> bool {
    matches!(ty, Type::Path(path) if path.qself.is_none()
        && path.path.segments.last().is_some_and(|segment| segment.ident == "Result"))
}

fn is_unit(ty: &Type) -> bool {
    matches!(ty, Type::Tuple(tuple) if tuple.elems.is_empty())
}

/// The settings for an async worker's runtime go with an `async` worker only.
pub(crate) fn settings_fit(args: &Args, worker: &ItemFn) -> syn::Result<()> {
    if worker.sig.asyncness.is_some() {
        return threads_fit_the_runtime(args);
    }
    let misplaced = args
        .settings
        .iter()
        .filter(|setting| setting.key.is_async_only());
    let errors = misplaced.map(|setting| {
        let name = setting.key.name();
        Error::new(
            setting.key_span,
            format!("`{name}` sets up the runtime of an `async` worker; this one is not `async`"),
        )
    });
    match errors.reduce(|mut all, error| {
        all.combine(error);
        all
    }) {
        Some(errors) => Err(errors),
        None => Ok(()),
    }
}

/// `worker_threads` beside `runtime = "current-thread"`, whose one thread runs every task.
fn threads_fit_the_runtime(args: &Args) -> syn::Result<()> {
    let current_thread = args.settings.iter().any(|setting| {
        matches!(
            setting.value,
            Value::Variant {
                variant: "CurrentThread",
                ..
            }
        )
    });
    let threads = args
        .settings
        .iter()
        .find(|setting| setting.key == Key::WorkerThreads);
    match threads {
        Some(threads) if current_thread => Err(Error::new(
            threads.key_span,
            "`worker_threads` sets up a `\"multi-thread\"` runtime, and this one is \
             `\"current-thread\"`, whose one thread runs every task; remove one of the two",
        )),
        _ => Ok(()),
    }
}

/// The first statement of a function `#[tokio::main]` has already expanded, if this is one:
/// it binds the original body, made a future, as `body` (`let body = async { ... };`), and
/// ends with a runtime's `block_on(body)`.
fn expanded_by_tokio_main(function: &ItemFn) -> Option<&syn::Stmt> {
    let first = function.block.stmts.first()?;
    let syn::Stmt::Local(local) = first else {
        return None;
    };
    let binds_body = matches!(&local.pat, syn::Pat::Ident(pat) if pat.ident == "body");
    let future = local
        .init
        .as_ref()
        .is_some_and(|init| matches!(*init.expr, syn::Expr::Async(_)));
    (binds_body && future && function.sig.asyncness.is_none()).then_some(first)
}
