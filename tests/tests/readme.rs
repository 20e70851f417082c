//! The README reads right wherever it is shown: on the repository, on crates.io and on
//! docs.rs, where a relative link would lead nowhere.

use std::path::Path;

const REPOSITORY: &str = "https://github.com/kamisama-rs/kamisama/";

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Every `](target)` of a Markdown text.
fn link_targets(text: &str) -> Vec<&str> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .collect()
}

/// The anchor GitHub and docs.rs give a heading: lowercase, spaces to dashes, no punctuation.
fn anchor(heading: &str) -> String {
    heading
        .trim_start_matches('#')
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_link_of_the_readme_is_absolute_and_leads_somewhere() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let anchors: Vec<String> = readme
        .lines()
        .filter(|line| line.starts_with('#'))
        .map(anchor)
        .collect();
    let targets = link_targets(&readme);
    assert!(targets.len() >= 10, "{targets:?}");
    for target in targets {
        if let Some(fragment) = target.strip_prefix('#') {
            assert!(
                anchors.iter().any(|a| a == fragment),
                "no heading for {target}"
            );
        } else if let Some(rest) = target.strip_prefix(REPOSITORY) {
            let path = rest
                .strip_prefix("blob/main/")
                .or_else(|| rest.strip_prefix("tree/main/"))
                .unwrap_or_else(|| panic!("{target}: not a file or folder on main"));
            assert!(workspace().join(path).exists(), "{target}: no {path} here");
        } else {
            assert!(target.starts_with("https://"), "{target}: a relative link");
        }
    }
}
