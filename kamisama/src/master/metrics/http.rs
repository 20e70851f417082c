//! The little HTTP the endpoint speaks: one request per connection, parsed by httparse, and
//! one answer, after which the master closes the connection.

/// The most a request may hold, headers included; a longer one is refused.
pub(crate) const REQUEST_MAX: usize = 4096;

/// How many headers a request may have.
const HEADERS_MAX: usize = 32;

/// What a request asks for, once it is whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// `GET /metrics` (or `HEAD`), in `format`.
    Metrics { format: Format, head: bool },
    /// A path other than `/metrics`.
    NotFound { head: bool },
    /// A method other than `GET` or `HEAD`.
    MethodNotAllowed,
    /// Bytes that are not an HTTP/1 request, or too many of them.
    BadRequest,
}

/// The text format the scraper gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// Prometheus's text exposition format, 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0, for a scraper whose `Accept` asks for it.
    OpenMetrics,
}

impl Format {
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Reads `request`, all the bytes received so far: `None` while it may still grow into a
/// request.
pub(crate) fn answer(request: &[u8]) -> Option<Answer> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(request) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if request.len() < REQUEST_MAX => return None,
        Ok(httparse::Status::Partial) | Err(_) => return Some(Answer::BadRequest),
    }
    let head = match parsed.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Some(Answer::MethodNotAllowed),
    };
    let path = parsed.path.unwrap_or_default();
    let path = path.split_once('?').map_or(path, |(path, _query)| path);
    if path != "/metrics" {
        return Some(Answer::NotFound { head });
    }
    let openmetrics = parsed.headers.iter().any(|header| {
        header.name.eq_ignore_ascii_case("accept")
            && contains(header.value, b"application/openmetrics-text")
    });
    let format = if openmetrics {
        Format::OpenMetrics
    } else {
        Format::Prometheus
    };
    Some(Answer::Metrics { format, head })
}

/// Whether `needle` is in `haystack`, ignoring ASCII case.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
}

/// The status line and headers of an answer with a body of `length` bytes of `content_type`.
pub(crate) fn head(status: &str, content_type: &str, length: usize) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_is_answered_in_the_format_it_accepts() {
        let prometheus = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n";
        assert_eq!(
            answer(prometheus),
            Some(Answer::Metrics {
                format: Format::Prometheus,
                head: false
            })
        );
        let openmetrics = b"HEAD /metrics?x=1 HTTP/1.1\r\nACCEPT: Application/OpenMetrics-Text; \
                            version=1.0.0,text/plain;q=0.5\r\n\r\n";
        assert_eq!(
            answer(openmetrics),
            Some(Answer::Metrics {
                format: Format::OpenMetrics,
                head: true
            })
        );
    }

    #[test]
    fn anything_else_is_refused_and_a_partial_request_waits() {
        assert_eq!(answer(b"GET /metrics HTTP/1.1\r\nHost:"), None);
        assert_eq!(answer(b""), None);
        assert_eq!(
            answer(b"GET / HTTP/1.0\r\n\r\n"),
            Some(Answer::NotFound { head: false })
        );
        assert_eq!(
            answer(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Answer::MethodNotAllowed)
        );
        assert_eq!(answer(b"\x16\x03\x01\x02\x00"), Some(Answer::BadRequest));
        let mut long = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        long.resize(REQUEST_MAX, b'a');
        assert_eq!(answer(&long), Some(Answer::BadRequest));
        let many = format!("GET /metrics HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(40));
        assert_eq!(answer(many.as_bytes()), Some(Answer::BadRequest));
    }

    /// Every prefix, and random bytes spliced into a request: never a panic, and an answer
    /// for anything as long as the limit.
    #[test]
    fn no_bytes_make_it_panic() {
        let request = b"GET /metrics?a=b HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n";
        for end in 0..=request.len() {
            let _ = answer(&request[..end]);
        }
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut bytes = request.to_vec();
            for _ in 0..next() % 8 {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
            bytes.truncate((next() as usize) % (bytes.len() + 1));
            let _ = answer(&bytes);
            let mut noise = vec![0; REQUEST_MAX];
            noise.iter_mut().for_each(|byte| *byte = next() as u8);
            assert!(answer(&noise).is_some());
        }
    }
}
