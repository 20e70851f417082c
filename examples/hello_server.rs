//! A preforking HTTP/1.1 server on std alone: the master binds the socket once, four workers
//! accept on it, and a rolling restart (`kill -HUP`) or an upgrade of the binary
//! (`kill -USR2`) loses no request, kept-alive connections included.
//!
//! ```text
//! cargo run --release --example hello_server
//! curl http://127.0.0.1:8080/
//! ```
//!
//! `KAMISAMA_LISTEN` moves it elsewhere (`127.0.0.1:0` picks a free port, which the log's
//! `listening` line gives). `GET /sleep/MS` is answered `MS` milliseconds late (10 s at
//! most), standing for a request that waits on a slow backend; the servers bench sends one
//! request in ten there.
//!
//! A worker serves each connection on a thread of its own. When it is asked to stop, it
//! accepts no more connections (the others accept them), and answers the next request on each
//! kept-alive connection with `Connection: close`; a connection idle for the whole
//! `Keep-Alive` time it advertises is closed, as a client that honours the header does not
//! send on it any more. Then it returns.

use std::io::{self, BufRead, BufReader, Write};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// How long a kept-alive connection may stay idle, as every response says.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

#[kamisama::main(
    instances = 4,
    listen = "127.0.0.1:8080",
    readiness = "declared",
    shutdown_timeout = 30,
    max_requests = 100_000,
    max_requests_jitter = 10_000
)]
fn worker(worker: kamisama::Worker) {
    let Some(listener) = worker.listeners().first() else {
        eprintln!("hello_server: no listener");
        return;
    };
    let worker = Arc::new(worker);
    worker.ready();
    // The same for every answer of this worker: asked of the system once.
    let body: Arc<str> = format!(
        "hello from worker {} (pid {})\n",
        worker.index(),
        std::process::id()
    )
    .into();
    let mut connections = Vec::new();
    while let Some(accepted) = worker.accept(listener) {
        let Ok(stream) = accepted else { continue };
        let (worker, body) = (Arc::clone(&worker), Arc::clone(&body));
        connections.push(thread::spawn(move || {
            let _ = serve(&worker, stream, &body);
        }));
        connections.retain(|connection| !connection.is_finished());
    }
    for connection in connections {
        let _ = connection.join();
    }
}

/// Serves one connection until the client closes it, asks for `Connection: close`, or the
/// worker stops.
fn serve(worker: &kamisama::Worker, stream: kamisama::Stream, body: &str) -> io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let idle = reader.buffer().is_empty();
        if idle && !worker.wait_readable(reader.get_ref()) {
            // Stopping, with no request under way: wait for one no longer than the client
            // may wait to send it.
            reader.get_ref().set_read_timeout(Some(KEEP_ALIVE))?;
        }
        let Some((keep_alive, wait)) = read_request(&mut reader)? else {
            return Ok(());
        };
        thread::sleep(wait);
        let close = !keep_alive || worker.stop_requested();
        let connection = if close { "close" } else { "keep-alive" };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: {connection}\r\nKeep-Alive: timeout={}\r\n\r\n{body}",
            body.len(),
            KEEP_ALIVE.as_secs()
        );
        reader.get_mut().write_all(response.as_bytes())?;
        // Counted for max_requests: a worker is replaced after 100,000 to 110,000 of them
        // (its successor first), as a guard against slow growth.
        worker.completed(1);
        if close {
            return Ok(());
        }
    }
}

/// Reads one request's head; returns whether the client wants the connection kept alive and
/// how long to wait before the answer, or `None` when it closed the connection (or stayed
/// silent past a stop's wait).
fn read_request(reader: &mut BufReader<kamisama::Stream>) -> io::Result<Option<(bool, Duration)>> {
    let mut line = String::new();
    let mut keep_alive = true;
    let mut first = true;
    let mut wait = Duration::ZERO;
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock && first => return Ok(None),
            Err(error) => return Err(error),
        }
        let header = line.trim_end();
        if first {
            keep_alive = header.ends_with("HTTP/1.1");
            wait = asked_wait(header);
            first = false;
        } else if header.is_empty() {
            return Ok(Some((keep_alive, wait)));
        } else if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("connection") {
                keep_alive = !value.trim().eq_ignore_ascii_case("close");
            }
        }
    }
}

/// How long `GET /sleep/MS HTTP/1.1` asks to wait: `MS` milliseconds, 10 s at most.
fn asked_wait(request_line: &str) -> Duration {
    let ms = request_line
        .split(' ')
        .nth(1)
        .and_then(|path| path.strip_prefix("/sleep/"))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0);
    Duration::from_millis(ms).min(Duration::from_secs(10))
}
