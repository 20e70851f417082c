//! Any bytes a client sends the metrics endpoint: never a panic, and an answer, when there is
//! one, that is whole HTTP with a body as long as it says.
//!
//! ```text
//! cargo install cargo-fuzz
//! RUSTC_BOOTSTRAP=1 cargo fuzz run metrics_request   # RUSTC_BOOTSTRAP on a stable toolchain
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|request: &[u8]| {
    let Some(answer) = kamisama::__private::metrics_answer(request) else {
        // Only a request that may still grow waits for more, and never past the limit.
        assert!(request.len() < 4096);
        return;
    };
    let text = String::from_utf8(answer).expect("an answer in UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head, then a body");
    assert!(head.starts_with("HTTP/1.1 "), "{head}");
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .expect("a Content-Length")
        .parse::<usize>()
        .expect("a number");
    // HEAD gets the length of the body it does not get.
    assert!(body.len() == length || body.is_empty(), "{head}");
});
