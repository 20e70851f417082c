//! Checking that the annotated item is a worker function kamisama can run.

use proc_macro2::TokenStream;
use syn::{Error, FnArg, ItemFn, ReturnType, Safety, Type};

/// Parses `item` as a function and checks its signature, reporting every mistake at once.
pub(crate) fn worker(item: TokenStream) -> syn::Result<ItemFn> {
    let function: ItemFn = syn::parse2(item.clone()).map_err(|_| {
        Error::new_spanned(
            item,
            "`#[kamisama::main]` goes on a worker function, such as `fn worker(index: usize)`",
        )
    })?;
    let sig = &function.sig;
    let mut errors = Vec::new();
    if let Some(token) = &sig.asyncness {
        errors.push(Error::new_spanned(
            token,
            "the worker function cannot be `async`; start a runtime inside it if it needs one",
        ));
    }
    if let Safety::Unsafe(token) = &sig.safety {
        errors.push(Error::new_spanned(
            token,
            "the worker function cannot be `unsafe`",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(Error::new_spanned(
            &sig.generics,
            "the worker function cannot be generic",
        ));
    }
    check_inputs(&function, &mut errors);
    if let ReturnType::Type(_, ty) = &sig.output {
        if !is_unit(ty) {
            errors.push(Error::new_spanned(
                ty,
                "the worker function returns `()`; remove the return type",
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

/// The worker takes exactly one argument, its index, as a `usize`.
fn check_inputs(function: &ItemFn, errors: &mut Vec<Error>) {
    let sig = &function.sig;
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        None => errors.push(Error::new(
            sig.paren_token.span.join(),
            "the worker function takes its index: `fn worker(index: usize)`",
        )),
        Some(FnArg::Receiver(receiver)) => errors.push(Error::new_spanned(
            receiver,
            "the worker function cannot take `self`; write `fn worker(index: usize)`",
        )),
        Some(FnArg::Typed(arg)) if !is_usize(&arg.ty) => errors.push(Error::new_spanned(
            &arg.ty,
            "the worker's index is a `usize`: write `index: usize`",
        )),
        Some(FnArg::Typed(_)) => {}
    }
    if let Some(extra) = inputs.next() {
        errors.push(Error::new_spanned(
            extra,
            "the worker function takes one argument, its index: `fn worker(index: usize)`",
        ));
    }
}

fn is_usize(ty: &Type) -> bool {
    matches!(ty, Type::Path(path) if path.qself.is_none() && path.path.is_ident("usize"))
}

fn is_unit(ty: &Type) -> bool {
    matches!(ty, Type::Tuple(tuple) if tuple.elems.is_empty())
}
