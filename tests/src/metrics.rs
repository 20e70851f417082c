//! Scrapes of a master's metrics endpoint, read back by a real parser: the reference Python
//! client's (`prometheus_client` from PyPI, installed by `.ci/run`), which checks the
//! Prometheus text format, and strictly, OpenMetrics.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// How many connections the endpoint keeps open at once, at most.
pub const CONNECTIONS: usize = 8;

/// One sample: its name (with `_total` for a counter's), labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// With `_total` for a counter's.
    pub name: String,
    /// By name.
    pub labels: BTreeMap<String, String>,
    /// As the parser read it.
    pub value: f64,
}

/// A scrape, parsed.
#[derive(Debug)]
pub struct Scrape {
    /// In the order of the text.
    pub samples: Vec<Sample>,
    /// The families, by name, and their type.
    pub families: BTreeMap<String, String>,
}

impl Scrape {
    /// The value of the sample `name` whose labels include `labels`; panics if none or
    /// several match.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self.find(name, labels);
        match found.as_slice() {
            [one] => one.value,
            _ => panic!(
                "{} samples {name} {labels:?} in {:#?}",
                found.len(),
                self.samples
            ),
        }
    }

    /// The samples `name` whose labels include `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|sample| sample.name == name)
            .filter(|sample| {
                labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(value))
            })
            .collect()
    }

    /// The value by index of the per-worker family `name`.
    pub fn by_index(&self, name: &str) -> BTreeMap<usize, f64> {
        self.find(name, &[])
            .into_iter()
            .map(|sample| (sample.labels["index"].parse().unwrap(), sample.value))
            .collect()
    }
}

/// An HTTP answer: its status code, headers (names in lower case) and body.
pub struct Answer {
    /// `200`, `404` and the like.
    pub status: u16,
    /// By name, in lower case.
    pub headers: BTreeMap<String, String>,
    /// All of it.
    pub body: String,
}

/// Sends `request` on a new connection to the endpoint at the Unix socket `path`, and reads
/// the answer to its end (the endpoint closes each connection after its answer).
pub fn ask(path: &Path, request: &[u8]) -> Answer {
    let mut stream = UnixStream::connect(path).expect("connect to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("the whole answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(": ").unwrap();
            (name.to_ascii_lowercase(), value.to_owned())
        })
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Scrapes the endpoint at `path` in the Prometheus format, and parses what it says.
pub fn scrape(path: &Path) -> Scrape {
    let answer = ask(path, b"GET /metrics HTTP/1.1\r\nHost: kamisama\r\n\r\n");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    parse(&answer.body, false)
}

/// Scrapes the endpoint at `path` asking for OpenMetrics, as Prometheus does, and parses it
/// with the strict OpenMetrics parser.
pub fn scrape_openmetrics(path: &Path) -> Scrape {
    let request = b"GET /metrics HTTP/1.1\r\nHost: kamisama\r\nAccept: \
        application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\r\n";
    let answer = ask(path, request);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.headers["content-type"].starts_with("application/openmetrics-text"));
    parse(&answer.body, true)
}

/// What the parser makes of `text`; panics with the parser's complaint if it refuses it.
pub fn parse(text: &str, openmetrics: bool) -> Scrape {
    const SCRIPT: &str = r#"
import json, sys
if sys.argv[1] == "openmetrics":
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    print(json.dumps({"family": family.name, "type": family.type}))
    for sample in family.samples:
        print(json.dumps({"name": sample.name, "labels": sample.labels, "value": sample.value}))
"#;
    let format = if openmetrics {
        "openmetrics"
    } else {
        "prometheus"
    };
    let mut python = Command::new("python3");
    python.args(["-c", SCRIPT, format]);
    let output = crate::run_probe(&mut python, text.as_bytes());
    assert!(
        output.status.success(),
        "the {format} parser refused the scrape (is prometheus_client installed? \
         `python3 -m pip install prometheus_client`):\n{}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut scrape = Scrape {
        samples: Vec::new(),
        families: BTreeMap::new(),
    };
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let parsed: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(family) = parsed["family"].as_str() {
            let kind = parsed["type"].as_str().unwrap().to_owned();
            scrape.families.insert(family.to_owned(), kind);
            continue;
        }
        let labels = parsed["labels"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(key, value)| (key.clone(), value.as_str().unwrap().to_owned()))
            .collect();
        scrape.samples.push(Sample {
            name: parsed["name"].as_str().unwrap().to_owned(),
            labels,
            value: parsed["value"].as_f64().unwrap(),
        });
    }
    // Prometheus refuses a scrape with two samples of one series; the parser does not check.
    let mut series = std::collections::BTreeSet::new();
    for sample in &scrape.samples {
        assert!(
            series.insert((&sample.name, &sample.labels)),
            "two samples of {} {:?} in:\n{text}",
            sample.name,
            sample.labels
        );
    }
    scrape
}
