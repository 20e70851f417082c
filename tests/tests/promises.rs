//! The ledger of promises (`tests/PROMISES.md`) names a test for each promise of the README
//! and the rustdoc: every test it names must exist, so that renaming or deleting one leaves
//! no promise unchecked without this test failing.

use std::path::Path;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Every `` `a::b` `` the ledger names.
fn named_tests(ledger: &str) -> Vec<&str> {
    ledger
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|code| {
            code.contains("::")
                && code
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':')
        })
        .collect()
}

/// Whether `file` holds a test function `name`.
fn has_test(file: &Path, name: &str) -> bool {
    let source = read(file);
    let mut lines = source.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line == "#[test]" {
            let next = lines.next().unwrap_or_default();
            if next.starts_with(&format!("fn {name}(")) {
                return true;
            }
        }
    }
    false
}

#[test]
fn every_test_the_ledger_names_exists() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ledger = read(&tests.join("PROMISES.md"));
    let named = named_tests(&ledger);
    assert!(named.len() >= 100, "only {} tests named", named.len());
    let mut missing = Vec::new();
    for path in named {
        let parts: Vec<&str> = path.split("::").collect();
        let (file, name) = match parts.as_slice() {
            // A unit test of the runtime crate: kamisama::MODULE::tests::NAME, the module
            // perhaps in a parent one (kamisama::master::reaper::tests::NAME).
            ["kamisama", modules @ .., "tests", name] if !modules.is_empty() => {
                let module = modules.join("/");
                let file = tests.join(format!("../kamisama/src/{module}.rs"));
                // Or a module with children of its own: MODULE/mod.rs.
                let folder = tests.join(format!("../kamisama/src/{module}/mod.rs"));
                (if file.exists() { file } else { folder }, *name)
            }
            [file, name] => (tests.join(format!("tests/{file}.rs")), *name),
            _ => {
                missing.push(path);
                continue;
            }
        };
        if !file.exists() || !has_test(&file, name) {
            missing.push(path);
        }
    }
    assert!(
        missing.is_empty(),
        "named in PROMISES.md, but no such test: {missing:#?}"
    );
}

#[test]
fn the_ledger_check_finds_a_test_that_is_not_there() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(has_test(
        &tests.join("tests/promises.rs"),
        "every_test_the_ledger_names_exists"
    ));
    assert!(!has_test(&tests.join("tests/promises.rs"), "no_such_test"));
}
