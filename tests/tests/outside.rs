//! A project outside the workspace, as a user makes one: it depends on kamisama by path,
//! puts the README's attribute on a function, builds, and runs. Inside the workspace the
//! features of every member are unified; only a crate of its own sees kamisama as
//! `cargo add kamisama` gives it, without the `tokio` feature.

use kamisama_tests::Master;
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh project `name` with `main` as its `src/main.rs`, depending on kamisama with
/// `features`; its build directory is kept between runs, so that only the first one
/// compiles the dependencies.
fn project(name: &str, features: &str, main: &str) -> PathBuf {
    project_as(name, "2021", "kamisama", features, main)
}

/// The same, in `edition`, with kamisama under the name `alias`.
fn project_as(name: &str, edition: &str, alias: &str, features: &str, main: &str) -> PathBuf {
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = scratch.join(name);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let kamisama = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kamisama");
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"{edition}\"\n\n\
         [dependencies]\n{alias} = {{ package = \"kamisama\", path = {:?}, \
         features = [{features}] }}\n\n[workspace]\n",
        kamisama.canonicalize().unwrap()
    );
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(dir.join("src/main.rs"), main).unwrap();
    dir
}

/// Builds `dir` offline (every dependency is in the workspace's lock file and cache),
/// returning whether it built and what cargo said.
fn build(dir: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO"))
        .args(["build", "--offline", "--quiet"])
        .current_dir(dir)
        .env(
            "CARGO_TARGET_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("outside-target"),
        )
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run cargo");
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), said)
}

/// Runs the binary a project built, checks that it forks `instances` workers, which say
/// `worker-started`, and stops it.
fn run(name: &str, instances: usize) {
    let binary = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("outside-target/debug")
        .join(name);
    let mut master = Master::launch(binary.to_str().unwrap())
        .env("KAMISAMA_INSTANCES", &instances.to_string())
        .start();
    master.wait_for_workers(instances);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
}

/// The README's first example, as it is written there.
fn readme_example() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let fence = "```rust,no_run\n";
    let start = readme.find(fence).unwrap() + fence.len();
    let length = readme[start..].find("```").unwrap();
    readme[start..start + length].to_owned()
}

#[test]
fn the_readme_example_builds_and_runs_in_a_project_of_its_own() {
    // Its workers print their own line first, which the harness waits for.
    let main = readme_example().replacen(
        "loop {",
        "println!(\"worker-started index={index} pid={}\", std::process::id());\n    loop {",
        1,
    );
    assert!(main.contains("worker-started"), "{main}");
    let dir = project("readme-example", "", &main);
    let (built, said) = build(&dir);
    assert!(built, "{said}");
    run("readme-example", 2);
}

#[test]
fn a_crate_renamed_in_cargo_toml_names_itself_in_the_attribute() {
    let main = r#"
#[km::main(instances = 2, restart = "always", crate = "km")]
fn worker(worker: km::Worker) {
    println!("worker-started index={} pid={}", worker.index(), std::process::id());
    while !worker.stop_requested() {
        worker.sleep(std::time::Duration::from_secs(30));
    }
}
"#;
    let dir = project_as("renamed-crate", "2021", "km", "", main);
    let (built, said) = build(&dir);
    assert!(built, "{said}");
    run("renamed-crate", 2);
}

#[test]
fn an_edition_2015_crate_uses_the_attribute() {
    // In 2015, `::core` is not in the crate root: the expansion must not need it.
    let main = r#"
extern crate kamisama;

#[kamisama::main(instances = 2, respawn_interval = 60, restart = "on-failure")]
fn worker(index: usize) {
    println!("worker-started index={} pid={}", index, std::process::id());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(30));
    }
}
"#;
    let dir = project_as("edition-2015", "2015", "kamisama", "", main);
    let (built, said) = build(&dir);
    assert!(built, "{said}");
    run("edition-2015", 2);
}

#[test]
fn an_async_worker_without_the_tokio_feature_is_an_error_that_names_it() {
    let main = "#[kamisama::main]\nasync fn worker() {}\n";
    let dir = project("async-without-tokio", "", main);
    let (built, said) = build(&dir);
    assert!(!built, "it built");
    assert!(
        said.contains("an `async` worker needs kamisama's `tokio` feature"),
        "{said}"
    );
    // At the `async`, on line 2, and alone: no cascade of other errors.
    assert!(said.contains("src/main.rs:2:1"), "{said}");
    assert!(said.contains("due to 1 previous error"), "{said}");
}

#[test]
fn the_builder_takes_what_the_attribute_takes_in_edition_2024() {
    // In 2024 a closure that never returns returns `!`, not `()`; a function of `&Worker` is
    // what clippy's pedantic lints ask for. Neither needs an adapter.
    let main = r#"
fn by_reference(worker: &kamisama::Worker) -> ! {
    println!("worker-started index={} pid={}", worker.index(), std::process::id());
    loop {
        worker.sleep(std::time::Duration::from_secs(30));
    }
}

fn main() -> std::process::ExitCode {
    if std::env::var_os("CLOSURE").is_some() {
        return kamisama::Supervisor::new().run(|index: usize| loop {
            println!("worker-started index={index} pid={}", std::process::id());
            std::thread::sleep(std::time::Duration::from_secs(30));
        });
    }
    kamisama::Supervisor::new().run(by_reference)
}
"#;
    let dir = project_as("builder-2024", "2024", "kamisama", "", main);
    let (built, said) = build(&dir);
    assert!(built, "{said}");
    run("builder-2024", 2);
}
