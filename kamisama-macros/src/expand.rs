//! Emitting the user's function and a `main` that hands it to `kamisama::Supervisor`.

use crate::attr::{self, Args, Key, Setting, Signal, Value};
use crate::valid;
use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{ItemFn, ReturnType};

pub(crate) fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    let args = attr::parse(args);
    let krate = args
        .as_ref()
        .map_or("kamisama".to_owned(), Args::crate_name);
    let checked = match (args, valid::worker(item.clone(), &krate)) {
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
///
/// Every token the macro makes has the macro's own span, so that paths resolve at the macro's
/// site and lints see generated code; only the values the user wrote keep their span, for
/// errors to point at them.
fn supervise(args: &Args, worker: &ItemFn) -> TokenStream {
    let name = &worker.sig.ident;
    let krate = &args.krate;
    let settings = args
        .settings
        .iter()
        .map(|setting| builder_call(krate, setting));
    let function = match &worker.sig.asyncness {
        // Through a macro of the runtime crate, which without its `tokio` feature is an error
        // that says so, at the `async`.
        Some(token) => {
            let krate = respanned(krate, token.span);
            quote_spanned!(token.span=> #krate::__async_worker!(#name))
        }
        None => adapted(worker),
    };
    let mut supervisor = quote! {
        #krate::Supervisor::new()
            #(#settings)*
    };
    // Through a macro of the runtime crate, which without its `metrics` feature is an error
    // that says so, at the key.
    if let Some(metrics) = args.settings.iter().find(|s| s.key == Key::Metrics) {
        if let Value::Path(address) = &metrics.value {
            let mut literal = Literal::string(address);
            literal.set_span(metrics.span);
            let krate = respanned(krate, metrics.key_span);
            supervisor =
                quote_spanned!(metrics.key_span=> #krate::__metrics!(#supervisor, #literal));
        }
    }
    let run = quote! {
        #supervisor
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

/// `tokens` with every span set to `span` (async code exists from edition 2018 on, where
/// paths from the user's span resolve as the macro's do).
fn respanned(tokens: &TokenStream, span: Span) -> TokenStream {
    tokens
        .clone()
        .into_iter()
        .map(|mut token| {
            token.set_span(span);
            token
        })
        .collect()
}

/// The worker as the builder takes it: the function itself, which the builder takes with any
/// signature the attribute does. A result whose error is not `Debug` is the one way a checked
/// signature can fail the builder's bound: the name carries the return type's span, so that
/// the error points at it.
fn adapted(worker: &ItemFn) -> TokenStream {
    let mut name = worker.sig.ident.clone();
    if let ReturnType::Type(_, ty) = &worker.sig.output {
        name.set_span(ty.span());
    }
    quote!(#name)
}

fn builder_call(krate: &TokenStream, setting: &Setting) -> TokenStream {
    let span = setting.span;
    if let Value::Addresses(addresses) = &setting.value {
        let calls = addresses.iter().map(|(address, span)| {
            let mut literal = Literal::string(address);
            literal.set_span(*span);
            quote!(.listen(#literal))
        });
        return quote!(#(#calls)*);
    }
    if let (Key::Instances, Value::Auto) = (setting.key, &setting.value) {
        let usable = Ident::new("usable_cpus", span);
        return quote!(.instances(#krate::#usable()));
    }
    let value = match setting.value {
        Value::Integer(number) => {
            let mut literal = Literal::u64_unsuffixed(number);
            literal.set_span(span);
            literal.into_token_stream()
        }
        Value::Signed(number) => {
            let mut literal = Literal::i64_unsuffixed(number);
            literal.set_span(span);
            literal.into_token_stream()
        }
        Value::Bool(flag) => {
            let flag = Ident::new(if flag { "true" } else { "false" }, span);
            flag.into_token_stream()
        }
        Value::Auto => TokenStream::new(),
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
            let enumeration = Ident::new(enumeration, Span::call_site());
            let variant = Ident::new(variant, span);
            quote!(#krate::#enumeration::#variant)
        }
        Value::Signal(Signal::Named(name)) => {
            let name = Ident::new(name, span);
            quote!(#krate::Signal::#name)
        }
        Value::Signal(Signal::RealTime(n)) => {
            let mut literal = Literal::u8_unsuffixed(n);
            literal.set_span(span);
            quote!(#krate::Signal::rt(#literal))
        }
    };
    // `::std`, found in the crate root of every edition; `::core` is not, in 2015.
    let seconds = quote!(::std::time::Duration::from_secs(#value));
    match setting.key {
        Key::Instances => quote!(.instances(#value)),
        Key::RespawnLimit => quote!(.respawn_limit(#value)),
        Key::RespawnInterval => quote!(.respawn_interval(#seconds)),
        Key::ShutdownTimeout => quote!(.shutdown_timeout(#seconds)),
        Key::Restart => quote!(.restart(#value)),
        Key::BackoffMax => quote!(.backoff_max(#seconds)),
        Key::Timeout => quote!(.timeout(#seconds)),
        Key::BootTimeout => quote!(.boot_timeout(#seconds)),
        Key::HangGrace => quote!(.hang_grace(#seconds)),
        Key::HangSignal => quote!(.hang_signal(#value)),
        Key::Runtime => quote!(.runtime(#value)),
        Key::WorkerThreads => quote!(.worker_threads(#value)),
        Key::Heartbeat => quote!(.heartbeat(#value)),
        Key::Log => quote!(.log_format(#value)),
        Key::Readiness => quote!(.readiness(#value)),
        Key::StatusFile => quote!(.status_file(#value)),
        Key::Backlog => quote!(.backlog(#value)),
        Key::UpgradeTimeout => quote!(.upgrade_timeout(#seconds)),
        Key::UpgradeTrial => quote!(.upgrade_trial(#seconds)),
        Key::MaxLifetime => quote!(.max_lifetime(#seconds)),
        Key::MaxLifetimeJitter => quote!(.max_lifetime_jitter(#seconds)),
        Key::MaxRequests => quote!(.max_requests(#value)),
        Key::MaxRequestsJitter => quote!(.max_requests_jitter(#value)),
        Key::MaxMemory => quote!(.max_memory(#value)),
        Key::RecycleAtOnce => quote!(.recycle_at_once(#value)),
        Key::User => quote!(.user(#value)),
        Key::Group => quote!(.group(#value)),
        Key::NoNewPrivs => quote!(.no_new_privs(#value)),
        Key::LimitNofile => quote!(.limit_nofile(#value)),
        Key::LimitCore => quote!(.limit_core(#value)),
        Key::LimitAs => quote!(.limit_as(#value)),
        Key::OomScoreAdj => quote!(.oom_score_adj(#value)),
        Key::CpuAffinity => quote!(.cpu_affinity(#value)),
        // Emitted above, one call per address; `crate` is where the paths start; `metrics`
        // wraps the whole chain.
        Key::Listen | Key::Metrics | Key::Crate => TokenStream::new(),
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
