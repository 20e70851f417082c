//! Emitting the user's function and a `main` that hands it to `kamisama::Supervisor`.

use crate::attr::{self, Args, Key, Setting, Value};
use crate::valid;
use proc_macro2::{Ident, Literal, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::ItemFn;

pub(crate) fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    let checked = match (attr::parse(args), valid::worker(item.clone())) {
        (Ok(args), Ok(worker)) => valid::settings_fit(&args, &worker).map(|()| (args, worker)),
        (Err(mut error), Err(other)) => {
            error.combine(other);
            Err(error)
        }
        (Err(error), _) | (_, Err(error)) => Err(error),
    };
    match checked {
        Ok((args, worker)) => supervise(&args, &worker),
        Err(error) => failed(item, &error),
    }
}

/// The function as written, plus a `main` that is one call chain on the public builder.
fn supervise(args: &Args, worker: &ItemFn) -> TokenStream {
    let name = &worker.sig.ident;
    let settings = args.settings.iter().map(builder_call);
    let function = match &worker.sig.asyncness {
        // Through a macro of the runtime crate, which without its `tokio` feature is an error
        // that says so, at the `async`.
        Some(token) => quote_spanned!(token.span=> ::kamisama::__async_worker!(#name)),
        None => quote!(#name),
    };
    let run = quote! {
        ::kamisama::Supervisor::new()
            #(#settings)*
            .run(#function)
    };
    // A worker named `main` lives inside the generated `main`, where it shadows it.
    if name == "main" {
        quote! {
            fn main() -> ::std::process::ExitCode {
                #worker
                #run
            }
        }
    } else {
        quote! {
            #worker
            fn main() -> ::std::process::ExitCode {
                #run
            }
        }
    }
}

fn builder_call(setting: &Setting) -> TokenStream {
    let span = setting.span;
    if let Value::Addresses(addresses) = &setting.value {
        let calls = addresses.iter().map(|(address, span)| {
            let mut literal = Literal::string(address);
            literal.set_span(*span);
            quote_spanned!(*span=> .listen(#literal))
        });
        return quote!(#(#calls)*);
    }
    let value = match setting.value {
        Value::Integer(number) => {
            let mut literal = Literal::u64_unsuffixed(number);
            literal.set_span(span);
            literal.into_token_stream()
        }
        Value::Addresses(_) => TokenStream::new(),
        Value::Path(ref path) => {
            let mut literal = Literal::string(path);
            literal.set_span(span);
            literal.into_token_stream()
        }
        Value::Variant {
            enumeration,
            variant,
        } => {
            let enumeration = Ident::new(enumeration, span);
            let variant = Ident::new(variant, span);
            quote_spanned!(span=> ::kamisama::#enumeration::#variant)
        }
    };
    let seconds = quote_spanned!(span=> ::core::time::Duration::from_secs(#value));
    match setting.key {
        Key::Instances => quote_spanned!(span=> .instances(#value)),
        Key::RespawnLimit => quote_spanned!(span=> .respawn_limit(#value)),
        Key::RespawnInterval => quote_spanned!(span=> .respawn_interval(#seconds)),
        Key::ShutdownTimeout => quote_spanned!(span=> .shutdown_timeout(#seconds)),
        Key::Restart => quote_spanned!(span=> .restart(#value)),
        Key::BackoffMax => quote_spanned!(span=> .backoff_max(#seconds)),
        Key::Timeout => quote_spanned!(span=> .timeout(#seconds)),
        Key::BootTimeout => quote_spanned!(span=> .boot_timeout(#seconds)),
        Key::Runtime => quote_spanned!(span=> .runtime(#value)),
        Key::WorkerThreads => quote_spanned!(span=> .worker_threads(#value)),
        Key::Log => quote_spanned!(span=> .log_format(#value)),
        Key::Readiness => quote_spanned!(span=> .readiness(#value)),
        Key::StatusFile => quote_spanned!(span=> .status_file(#value)),
        Key::Backlog => quote_spanned!(span=> .backlog(#value)),
        Key::UpgradeTimeout => quote_spanned!(span=> .upgrade_timeout(#seconds)),
        // Emitted above, one call per address.
        Key::Listen => TokenStream::new(),
    }
}

/// The item as written, the errors, and a stub `main`, so that the user sees only the errors
/// that matter and not a cascade of "`main` function not found" or "function is never used".
fn failed(item: TokenStream, error: &syn::Error) -> TokenStream {
    let error = error.to_compile_error();
    let is_main = syn::parse2::<ItemFn>(item.clone()).is_ok_and(|f| f.sig.ident == "main");
    if is_main {
        quote! {
            fn main() {
                #[allow(dead_code)]
                #item
            }
            #error
        }
    } else {
        quote! {
            #[allow(dead_code)]
            #item
            fn main() {}
            #error
        }
    }
}
