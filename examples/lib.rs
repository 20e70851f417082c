//! kamisama's examples, a package of their own so that the published crate carries none of
//! them. Each is a program: `cargo run --release --example NAME` from the repository's root.
//! `deploy/` holds the files that run them in production.
