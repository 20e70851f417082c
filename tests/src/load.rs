//! A bounded HTTP load on loopback, for the servers' tests and benchmark: client threads that
//! send `GET /` one request after another, on a new connection each or on kept-alive
//! connections, until told to stop (or a minute has passed), and count how every request
//! ended.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The longest a load runs, whatever the test does: the loops always end.
const LONGEST: Duration = Duration::from_secs(60);

/// A load under way.
pub struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    clients: Vec<JoinHandle<Tally>>,
}

/// How the requests of a load ended.
#[derive(Debug, Default)]
pub struct Tally {
    /// Answered with `200 OK`.
    pub ok: u64,
    /// Connections refused: nobody listened.
    pub refused: u64,
    /// Connections reset under a request.
    pub reset: u64,
    /// Connections closed before any byte of the answer.
    pub empty: u64,
    /// Anything else: a bad answer, a timeout.
    pub errors: u64,
    /// Each request's start and how long it took, answered or not; but for slow ones.
    pub requests: Vec<(Instant, Duration)>,
    /// The same, for the requests asked to be slow (see [`Load::with_slow_requests`]).
    pub slow_requests: Vec<(Instant, Duration)>,
    /// Connections each worker accepted, by the worker's pid (which its first answer names).
    pub accepted: BTreeMap<u32, u64>,
    /// Requests each worker answered, by the worker's pid.
    pub served: BTreeMap<u32, u64>,
    /// When each answer came, and from which worker.
    pub answers: Vec<(Instant, u32)>,
    /// When each failed request ended.
    pub failures: Vec<Instant>,
}

impl Tally {
    /// Requests that did not get their answer.
    pub fn failed(&self) -> u64 {
        self.refused + self.reset + self.empty + self.errors
    }

    /// The `percent` percentile of the latency of requests started in `from..until`.
    pub fn latency(&self, percent: usize, from: Instant, until: Instant) -> Option<Duration> {
        let mut latencies: Vec<Duration> = self
            .requests
            .iter()
            .filter(|(started, _)| (from..until).contains(started))
            .map(|(_, took)| *took)
            .collect();
        latencies.sort_unstable();
        let rank = (latencies.len() * percent).div_ceil(100).max(1) - 1;
        latencies.get(rank).copied()
    }

    /// The longest time between two answers, over the whole load.
    pub fn longest_gap(&self) -> Duration {
        self.longest_gap_in(None)
    }

    /// The longest time between two answers that came in `from..until`, or over the whole
    /// load. A failed request is no answer: a release that fails every request answers none.
    pub fn longest_gap_in(&self, window: Option<(Instant, Instant)>) -> Duration {
        let mut ends: Vec<Instant> = self
            .answers
            .iter()
            .map(|(at, _)| *at)
            .filter(|end| window.is_none_or(|(from, until)| (from..until).contains(end)))
            .collect();
        ends.sort_unstable();
        ends.windows(2)
            .map(|pair| pair[1] - pair[0])
            .max()
            .unwrap_or_default()
    }

    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.refused += other.refused;
        self.reset += other.reset;
        self.empty += other.empty;
        self.errors += other.errors;
        self.requests.extend(other.requests);
        self.slow_requests.extend(other.slow_requests);
        self.answers.extend(other.answers);
        self.failures.extend(other.failures);
        for (worker, count) in other.accepted {
            *self.accepted.entry(worker).or_default() += count;
        }
        for (worker, count) in other.served {
            *self.served.entry(worker).or_default() += count;
        }
    }
}

impl Load {
    /// Starts `clients` client threads against `address`, each on kept-alive connections
    /// (reopened when the server asks to close) or on a new connection per request.
    pub fn start(address: SocketAddr, clients: usize, keep_alive: bool) -> Load {
        Load::with_slow_requests(address, clients, keep_alive, None)
    }

    /// As [`start`](Load::start), with one request in `every` for `/sleep/MS` (`slow` is
    /// `(every, MS)`), which the hello servers answer `MS` milliseconds late: a request that
    /// waits on a slow backend.
    pub fn with_slow_requests(
        address: SocketAddr,
        clients: usize,
        keep_alive: bool,
        slow: Option<(u64, u64)>,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let clients = (0..clients)
            .map(|_| {
                let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
                thread::spawn(move || client(address, keep_alive, slow, &stop, &done))
            })
            .collect();
        Load {
            stop,
            done,
            clients,
        }
    }

    /// Requests sent so far, answered or not.
    pub fn requests(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until `more` requests past those sent so far have been sent.
    pub fn wait_for(&self, more: u64) {
        let until = self.requests() + more;
        let deadline = Instant::now() + crate::deadline();
        while self.requests() < until {
            assert!(
                Instant::now() < deadline,
                "the load stalled at {}",
                self.requests()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops every client and adds up how their requests ended.
    pub fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut tally = Tally::default();
        for client in self.clients {
            tally.add(client.join().expect("a load client"));
        }
        tally
    }
}

/// One client's loop.
fn client(
    address: SocketAddr,
    keep_alive: bool,
    slow: Option<(u64, u64)>,
    stop: &AtomicBool,
    done: &AtomicU64,
) -> Tally {
    let mut tally = Tally::default();
    let began = Instant::now();
    let mut connection: Option<BufReader<TcpStream>> = None;
    // Requests until the next slow one.
    let mut until_slow = slow.map_or(0, |(every, _)| every);
    while !stop.load(Ordering::Relaxed) && began.elapsed() < LONGEST {
        let started = Instant::now();
        let fresh = connection.is_none();
        until_slow = until_slow.saturating_sub(1);
        let path = match slow {
            Some((every, ms)) if until_slow == 0 => {
                until_slow = every;
                format!("/sleep/{ms}")
            }
            _ => "/".to_owned(),
        };
        let outcome = request(address, keep_alive, &path, &mut connection);
        let took = started.elapsed();
        if path == "/" {
            tally.requests.push((started, took));
        } else {
            tally.slow_requests.push((started, took));
        }
        done.fetch_add(1, Ordering::Relaxed);
        if outcome.is_err() {
            tally.failures.push(started + took);
        }
        match outcome {
            Ok(worker) => {
                tally.answers.push((started + took, worker));
                tally.ok += 1;
                *tally.served.entry(worker).or_default() += 1;
                if fresh {
                    *tally.accepted.entry(worker).or_default() += 1;
                }
            }
            Err(Failure::Refused) => tally.refused += 1,
            Err(Failure::Reset) => tally.reset += 1,
            Err(Failure::Empty) => tally.empty += 1,
            Err(Failure::Other(_)) => tally.errors += 1,
        }
    }
    tally
}

enum Failure {
    Refused,
    Reset,
    Empty,
    Other(#[allow(dead_code)] String),
}

impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::ConnectionRefused => Failure::Refused,
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => Failure::Reset,
            _ => Failure::Other(error.to_string()),
        }
    }
}

/// Sends one request and reads its answer; returns the pid of the worker that answered. The
/// connection is kept for the next request when both sides want it.
fn request(
    address: SocketAddr,
    keep_alive: bool,
    path: &str,
    connection: &mut Option<BufReader<TcpStream>>,
) -> Result<u32, Failure> {
    let mut reader = match connection.take() {
        Some(reader) => reader,
        None => {
            let stream = TcpStream::connect(address)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            BufReader::new(stream)
        }
    };
    let close = if keep_alive {
        ""
    } else {
        "Connection: close\r\n"
    };
    let head = format!("GET {path} HTTP/1.1\r\nHost: load\r\n{close}\r\n");
    reader.get_mut().write_all(head.as_bytes())?;
    let mut status = String::new();
    if reader.read_line(&mut status)? == 0 {
        return Err(Failure::Empty);
    }
    if !status.starts_with("HTTP/1.1 200") {
        return Err(Failure::Other(status));
    }
    let (mut length, mut close) = (0, !keep_alive);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(Failure::Other("the answer's head was cut short".to_owned()));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("connection") {
                close |= value.eq_ignore_ascii_case("close");
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body);
    let worker = body
        .split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next()?.parse().ok())
        .unwrap_or(0);
    if !close {
        *connection = Some(reader);
    }
    Ok(worker)
}

/// Opens `count` connections to `address` at once, each with one kept-alive request
/// answered; returns them open, with the pid of the worker that answered each.
pub fn kept_alive(address: &str, count: usize) -> Vec<(TcpStream, u32)> {
    let mut streams: Vec<TcpStream> = (0..count)
        .map(|_| TcpStream::connect(address).unwrap())
        .collect();
    for stream in &mut streams {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
    }
    streams
        .into_iter()
        .map(|mut stream| {
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut answer = Vec::new();
            let mut byte = [0; 1];
            // Up to the body's line: "hello from worker I (pid P)\n".
            while !answer.ends_with(b")\n") {
                stream.read_exact(&mut byte).unwrap();
                answer.push(byte[0]);
            }
            let answer = String::from_utf8(answer).unwrap();
            let pid = answer
                .rsplit("(pid ")
                .next()
                .unwrap()
                .trim_end_matches(")\n");
            (stream, pid.parse().unwrap())
        })
        .collect()
}
