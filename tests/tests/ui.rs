//! Every mistake the attribute reports: one file per error under `ui/`, with the compiler's
//! output reviewed and kept beside it.

#[test]
fn attribute_errors() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("ui/*.rs");
}
