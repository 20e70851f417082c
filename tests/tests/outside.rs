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
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = scratch.join(name);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let kamisama = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kamisama");
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [dependencies]\nkamisama = {{ path = {:?}, features = [{features}] }}\n\n\
         [workspace]\n",
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

#[test]
fn the_readme_example_builds_and_runs_in_a_project_of_its_own() {
    let main = r#"
#[kamisama::main(instances = 2, respawn_limit = 10, respawn_interval = 60)]
fn worker(index: usize) {
    println!("worker-started index={index} pid={}", std::process::id());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}
"#;
    let dir = project("readme-example", "", main);
    let (built, said) = build(&dir);
    assert!(built, "{said}");
    let binary = Path::new(env!("CARGO_TARGET_TMPDIR")).join("outside-target/debug/readme-example");
    let mut master = Master::launch(binary.to_str().unwrap()).start();
    master.wait_for_workers(2);
    master.signal(Signal::SIGTERM);
    master.expect_exit_code(0);
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
