//! The admin port's bounds (src/admin.rs; fourth red-team pass, F4): a connection cap, a head
//! deadline, a small head buffer and one request per connection, so that nothing that reaches the
//! port can hold memory, descriptors or slots without a bound. Each test drives hostile clients by
//! hand against an in-process apgate and judges by what the admin port answers.

#![allow(clippy::unwrap_used)] // Test code: a failure here is a test failure.

use crate::harness;

use std::time::{Duration, Instant};

use apgate::admin::{HEADER_READ_TIMEOUT, MAX_BUF_BYTES, MAX_CONNECTIONS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use harness::*;

/// An in-process apgate; the admin port needs no upstream, so its endpoint is never dialled.
async fn admin_gateway() -> Gw {
    gateway("http://127.0.0.1:9", Tune::default()).await
}

/// A scrape: `GET /metrics` with `extra` headers.
fn scrape(extra: &[(&str, &str)]) -> Vec<u8> {
    head("GET", "/metrics", extra, None)
}

/// Whether `reply` is a whole Prometheus text answer.
fn is_metrics(reply: &Reply) -> bool {
    reply.status() == Some(200)
        && reply.whole()
        && String::from_utf8_lossy(reply.body()).contains("apgate_client_connections")
}

/// Reads until apgate closes the connection (end of stream or reset) and says when, or `None`
/// if it is still open after `within`; whatever apgate sends before is ignored.
async fn closed_at(stream: &mut (impl AsyncReadExt + Unpin), within: Duration) -> Option<Instant> {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// Review of the bounds (helper-16, F2): a cap that refused the newest connection let a client
/// that kept 64 silent connections open (reconnecting as each timed out) starve every scrape and
/// health check, and with them the orchestrator's liveness probe. A new connection now takes the
/// place of the oldest that has not sent its head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_a_new_connection_takes_the_place_of_the_oldest_silent_one() {
    let gw = admin_gateway().await;
    let started = Instant::now();
    // The cap, filled by clients that connect and send nothing (the header timeout would close
    // them; everything below happens well before it).
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        held.push(TcpStream::connect(gw.admin).await.unwrap());
    }
    // Let the accept loop register them all, in the order they were made.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A scrape gets in, and the oldest silent connection goes.
    let reply = exchange(gw.admin, &scrape(&[]), Duration::from_secs(2)).await;
    assert!(is_metrics(&reply), "a scrape at the cap: {:?}", reply.status());
    assert!(
        closed_at(&mut held[0], Duration::from_secs(1)).await.is_some(),
        "the oldest silent connection is still open"
    );
    // The scrape's place is free again: a silent newcomer takes it, and the cap is full once more.
    let newcomer = TcpStream::connect(gw.admin).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    held.push(newcomer);
    // The next scrape takes the place of the next oldest.
    let reply = exchange(gw.admin, &scrape(&[]), Duration::from_secs(2)).await;
    assert!(is_metrics(&reply), "a second scrape at the cap: {:?}", reply.status());
    assert!(
        closed_at(&mut held[1], Duration::from_secs(1)).await.is_some(),
        "the second oldest silent connection is still open"
    );
    // The others stay open: nothing to read and no end of stream.
    for (i, stream) in held.iter().enumerate().skip(2) {
        let mut byte = [0u8; 1];
        let probe = stream.try_read(&mut byte);
        assert!(
            matches!(&probe, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "held connection {i} ({:?} in): {probe:?}",
            started.elapsed()
        );
    }
    assert!(
        started.elapsed() < HEADER_READ_TIMEOUT,
        "too slow to tell the cap from the timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_slow_with_its_head_is_cut_off_at_the_header_timeout() {
    let gw = admin_gateway().await;
    let admin = gw.admin;
    // (client, what it sends at once, whether it then trickles a byte every 200 ms)
    let cases: [(&str, &[u8], bool); 3] = [
        ("connects and sends nothing", b"", false),
        (
            "sends part of a head and stalls",
            b"GET /metrics HTTP/1.1\r\nhost: apgate.test\r\n",
            false,
        ),
        (
            "trickles a head",
            b"GET /metrics HTTP/1.1\r\nhost: apgate.test\r\nx-slow: ",
            true,
        ),
    ];
    // All at once: one header timeout for the whole table.
    let clients = cases.map(|(what, first, trickle)| {
        tokio::spawn(async move {
            // Before the connect, so before apgate's accept, when its clock starts.
            let started = Instant::now();
            let mut stream = TcpStream::connect(admin).await.unwrap();
            stream.write_all(first).await.unwrap();
            let (mut reader, mut writer) = stream.split();
            let dribble = async {
                while trickle && writer.write_all(b"a").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                std::future::pending::<()>().await
            };
            let closed = tokio::select! {
                closed = closed_at(&mut reader, HEADER_READ_TIMEOUT + Duration::from_secs(2)) => closed,
                () = dribble => unreachable!(),
            };
            (what, closed.map(|at| at - started))
        })
    });
    for client in clients {
        let (what, closed) = client.await.unwrap();
        let closed = closed.unwrap_or_else(|| panic!("{what}: still open past the header timeout"));
        assert!(closed >= HEADER_READ_TIMEOUT, "{what}: closed after {closed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_head_over_the_buffer_is_refused_not_buffered() {
    let gw = admin_gateway().await;
    // (extra header bytes, answered with the metrics)
    let cases = [
        (1024, true),
        (MAX_BUF_BYTES / 2, true),
        (MAX_BUF_BYTES, false),
        // The red-team's slowloris head, under hyper's default ~400 KB buffer.
        (300 * 1024, false),
    ];
    for (size, answered) in cases {
        let filler = "a".repeat(size);
        let request = scrape(&[("x-filler", &filler)]);
        let mut stream = TcpStream::connect(gw.admin).await.unwrap();
        let (mut reader, mut writer) = stream.split();
        // apgate stops reading at its buffer's size, so the rest of a long head may never be
        // taken: write while reading the answer (one request per connection: read to the end).
        let within = Duration::from_secs(2);
        let write = async {
            let _ = tokio::time::timeout(within, writer.write_all(&request)).await;
        };
        let read = async {
            let mut got = Vec::new();
            let _ = tokio::time::timeout(within, reader.read_to_end(&mut got)).await;
            String::from_utf8_lossy(&got).into_owned()
        };
        let (_, got) = tokio::join!(write, read);
        let preview: String = got.chars().take(200).collect();
        if answered {
            assert!(
                got.starts_with("HTTP/1.1 200 ") && got.contains("apgate_client_connections"),
                "{size} bytes: {preview}"
            );
        } else {
            // 431, or nothing: a reset that reached the client before the answer (apgate closed
            // with the rest of the head unread).
            assert!(
                got.starts_with("HTTP/1.1 431 ") || got.is_empty(),
                "{size} bytes: {preview}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_connection_serves_one_request_then_closes() {
    let gw = admin_gateway().await;
    for path in ["/metrics", "/healthz", "/readyz", "/nothing"] {
        let mut stream = TcpStream::connect(gw.admin).await.unwrap();
        stream.write_all(&head("GET", path, &[], None)).await.unwrap();
        let reply = read_reply(&mut stream, Duration::from_secs(2)).await;
        assert!(reply.whole(), "{path}: {:?}", reply.status());
        assert_eq!(reply.header("connection"), Some("close"), "{path}");
        assert!(
            closed_at(&mut stream, Duration::from_secs(1)).await.is_some(),
            "{path}: left open after the answer"
        );
    }
}
