//! The hello server on tokio: the master binds the socket once, four async workers accept on
//! it, each connection is a task, and a rolling restart (`kill -HUP`) or an upgrade of the
//! binary (`kill -USR2`) loses no request, kept-alive connections included.
//!
//! ```text
//! cargo run --release --example async_hello_server --features tokio
//! curl http://127.0.0.1:8080/
//! ```
//!
//! `KAMISAMA_LISTEN` moves it elsewhere (`127.0.0.1:0` picks a free port, which the log's
//! `listening` line gives). `GET /sleep/MS` is answered `MS` milliseconds late (10 s at
//! most), standing for a request that waits on a slow backend; the servers bench sends one
//! request in ten there.
//!
//! When a worker is asked to stop, it accepts no more connections (the others accept them),
//! answers the next request on each kept-alive connection with `Connection: close`, and
//! closes a connection idle for the whole `Keep-Alive` time it advertises. Once its last
//! connection is done, it returns.

use kamisama::AsyncStream;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinSet;

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
async fn worker(worker: kamisama::Worker) -> io::Result<()> {
    let Some(listener) = worker.listeners().first() else {
        eprintln!("async_hello_server: no listener");
        return Ok(());
    };
    worker.ready();
    // The same for every answer of this worker: asked of the system once.
    let body: Arc<str> = format!(
        "hello from worker {} (pid {})\n",
        worker.index(),
        std::process::id()
    )
    .into();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // `None` once the worker is asked to stop.
            // One worker woken per connection, and each its share of them: a worker that
            // holds more than its share leaves new ones to the others for a moment.
            accepted = worker.accept_async(listener) => match accepted {
                Some(Ok(stream)) => {
                    connections.spawn(serve(worker.clone(), stream, Arc::clone(&body)));
                }
                Some(Err(_)) => {}
                None => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Serves one connection until the client closes it, asks for `Connection: close`, or the
/// worker stops.
async fn serve(worker: kamisama::Worker, stream: AsyncStream, body: Arc<str>) -> io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        if reader.buffer().is_empty() && !next_request_comes(&worker, &mut reader).await? {
            return Ok(());
        }
        let Some((keep_alive, wait)) = read_request(&mut reader).await? else {
            return Ok(());
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let close = !keep_alive || worker.stop_requested();
        let connection = if close { "close" } else { "keep-alive" };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: {connection}\r\nKeep-Alive: timeout={}\r\n\r\n{body}",
            body.len(),
            KEEP_ALIVE.as_secs()
        );
        reader.get_mut().write_all(response.as_bytes()).await?;
        // Counted for max_requests: a worker is replaced after 100,000 to 110,000 of them
        // (its successor first), as a guard against slow growth.
        worker.completed(1);
        if close {
            return Ok(());
        }
    }
}

/// Waits for the first bytes of the next request on an idle connection; `false` when the
/// client closed it, or, once the worker is stopping, stayed silent for as long as it may.
async fn next_request_comes(
    worker: &kamisama::Worker,
    reader: &mut BufReader<AsyncStream>,
) -> io::Result<bool> {
    // `fill_buf` is cancel-safe: a stop that wins the race has read nothing.
    tokio::select! {
        filled = reader.fill_buf() => return Ok(!filled?.is_empty()),
        _ = worker.stopped() => {}
    }
    match tokio::time::timeout(KEEP_ALIVE, reader.fill_buf()).await {
        Ok(filled) => Ok(!filled?.is_empty()),
        Err(_) => Ok(false),
    }
}

/// Reads one request's head; returns whether the client wants the connection kept alive and
/// how long to wait before the answer, or `None` when it closed the connection.
async fn read_request(reader: &mut BufReader<AsyncStream>) -> io::Result<Option<(bool, Duration)>> {
    let mut line = String::new();
    let mut keep_alive = true;
    let mut first = true;
    let mut wait = Duration::ZERO;
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(None);
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
