//! What one connection may hold (issue 16, src/connection.rs): each test drives a hostile client
//! by hand and judges by what apgate answers, what its metrics count and whether a well-behaved
//! request is still served. The memory these bounds add up to is measured under load by
//! tests/e2e/test_resource_bounds.py.

#![allow(clippy::unwrap_used)] // Test code: a failure here is a test failure.

use crate::harness;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use harness::*;

const MIB: usize = 1 << 20;

/// A connection from `source` (a 127.0.0.0/8 address) to `to`.
async fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether apgate closed the connection (without answering) within `within`.
async fn closed_by_apgate(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Waits until apgate counts `n` open client connections: a connection the kernel completed is
/// not yet accepted, and each data thread accepts from its own socket, so the order in which
/// apgate admits connections is not the order in which they were made.
async fn until_open(gw: &Gw, n: usize) {
    let started = Instant::now();
    loop {
        let open = metric(&gw.metrics(), "apgate_client_connections", &[]);
        if open == Some(n as f64) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "apgate counts {open:?} open connections, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (a few seconds at most, for a loaded machine) until `parked` reads `n`.
async fn until_parked(parked: &impl Fn() -> Option<f64>, n: f64) {
    let started = Instant::now();
    while parked() != Some(n) {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "parked reads {:?}, not {n}",
            parked()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An upstream that answers `ok` to everything, and a gateway in front of it with `server` set.
async fn ok_gateway(server: &str) -> (Upstream, Gw) {
    let up = Upstream::start(|_, _| Act::ok(b"ok")).await;
    let gw = gateway(
        &format!("http://{}", up.addr),
        Tune {
            server,
            ..Tune::default()
        },
    )
    .await;
    (up, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_max_header_bytes_is_refused_even_after_the_buffer_grew_for_a_body() {
    let up = Upstream::start(|_, _| Act::ok(b"")).await;
    let gw = gateway(&format!("http://{}", up.addr), Tune::default()).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    // A 2 MiB upload grows the connection's read buffer to server.read_buffer_bytes (1 MiB).
    let body = pattern(0, 2 * MIB);
    stream
        .write_all(&head("PUT", "/shared/Bob/big", &[], Some(body.len())))
        .await
        .unwrap();
    stream.write_all(&body).await.unwrap();
    assert_eq!(
        read_reply(&mut stream, Duration::from_secs(10)).await.status(),
        Some(200)
    );
    // A head just under max_header_bytes (64 KiB) on the same connection is served...
    let near = "a".repeat(60 * 1024);
    stream
        .write_all(&head("GET", "/shared/Bob/big", &[("x-big", &near)], None))
        .await
        .unwrap();
    assert_eq!(
        read_reply(&mut stream, Duration::from_secs(10)).await.status(),
        Some(200)
    );
    // ...one over it is refused, though the buffer could hold it.
    let over = "a".repeat(200 * 1024);
    stream
        .write_all(&head("GET", "/shared/Bob/big", &[("x-big", &over)], None))
        .await
        .unwrap();
    let reply = read_reply(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(reply.error(), Some((400, "RequestHeaderSectionTooLarge")), "{reply:?}");
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(closed_by_apgate(&mut stream, Duration::from_secs(2)).await);
    let metrics = gw.metrics();
    let closed = metric(
        &metrics,
        "apgate_client_connections_closed_total",
        &[("reason", "head_too_large")],
    );
    assert_eq!(closed, Some(1.0), "{metrics}");
    // Only the two whole requests reached the upstream.
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_head_holds_no_more_than_max_header_bytes() {
    let (up, gw) = ok_gateway("max_header_bytes = 16384").await;
    // 1 MB of a head that never ends, sent as fast as the socket takes it: apgate stops reading at
    // 16 KiB and answers; the client cannot make it buffer the rest.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let mut bytes = b"GET /shared/Bob/k HTTP/1.1\r\nhost: apgate.test\r\nx-long: ".to_vec();
    bytes.extend(std::iter::repeat_n(b'a', 1_000_000));
    let (mut reader, mut writer) = stream.split();
    let write = async {
        let _ = writer.write_all(&bytes).await;
    };
    let read = async {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut got)).await;
        got
    };
    let (_, got) = tokio::join!(write, read);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert!(text.contains("<Code>RequestHeaderSectionTooLarge</Code>"), "{text}");
    assert!(text.contains("(16384 bytes)"), "{text}");
    assert!(up.seen().is_empty());
    // Another client is served meanwhile and after.
    let reply = request(gw.addr, "GET", "/shared/Bob/k", b"", Duration::from_secs(5)).await;
    assert_eq!(reply.status(), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_answer_is_cut_off_and_its_slot_freed() {
    let size = 64 * MIB;
    let up = Upstream::start(move |_, _| Act::ok(&pattern(0, size))).await;
    let gw = gateway(
        &format!("http://{}", up.addr),
        Tune {
            server: "client_send_timeout_seconds = 2\nmax_concurrent_requests_per_identity = 1",
            upstream: "body_idle_timeout_seconds = 30",
            ..Tune::default()
        },
    )
    .await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stalled = socket.connect(gw.addr).await.unwrap();
    stalled
        .write_all(&head("GET", "/shared/Bob/big", &[], None))
        .await
        .unwrap();
    assert_eq!(up.wait_for(1, Duration::from_secs(5)).await, 1);
    // While the reader holds bob's only slot (taken when he was authenticated), bob is at his limit.
    let busy = request(gw.addr, "GET", "/shared/Bob/small", b"", Duration::from_secs(5)).await;
    assert_eq!(busy.error(), Some((503, "SlowDown")), "{busy:?}");
    // It never reads: within the send timeout (plus the time to fill the socket buffers) it is
    // cut off, and the slot is free again.
    let started = Instant::now();
    let freed = loop {
        let reply = request(gw.addr, "GET", "/shared/Bob/small", b"", Duration::from_secs(5)).await;
        if reply.error() != Some((503, "SlowDown")) {
            break reply;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the slot was never freed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(freed.status(), Some(200), "{freed:?}");
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            "apgate_client_connections_closed_total",
            &[("reason", "not_reading")]
        ),
        Some(1.0),
        "{metrics}"
    );
    // The stalled client finds its connection ended (after what the buffers held).
    let mut sink = vec![0u8; MIB];
    let mut total = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut sink)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("the stalled connection was not closed"),
        }
    }
    assert!(total < size, "the whole answer went out ({total} bytes)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_listener_or_source_limit_are_closed_at_once() {
    let up = Upstream::start(|_, _| Act::ok(b"ok")).await;
    let gw = gateway(
        &format!("http://{}", up.addr),
        Tune {
            server: "max_connections = 3\nmax_connections_per_source = 2",
            ..Tune::default()
        },
    )
    .await;
    let _a1 = connect_from([127, 0, 0, 1], gw.addr).await;
    let _a2 = connect_from([127, 0, 0, 1], gw.addr).await;
    until_open(&gw, 2).await;
    // A third from the same source: over max_connections_per_source.
    let mut a3 = connect_from([127, 0, 0, 1], gw.addr).await;
    assert!(closed_by_apgate(&mut a3, Duration::from_secs(2)).await);
    // Another source still gets in and is served.
    let mut b1 = connect_from([127, 0, 0, 2], gw.addr).await;
    b1.write_all(&head("GET", "/shared/Bob/k", &[], None)).await.unwrap();
    assert_eq!(read_reply(&mut b1, Duration::from_secs(5)).await.status(), Some(200));
    // A fourth connection in all: over max_connections.
    let mut c1 = connect_from([127, 0, 0, 3], gw.addr).await;
    assert!(closed_by_apgate(&mut c1, Duration::from_secs(2)).await);
    let metrics = gw.metrics();
    let closed = |reason| {
        metric(
            &metrics,
            "apgate_client_connections_closed_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(closed("source_limit"), Some(1.0), "{metrics}");
    assert_eq!(closed("listener_limit"), Some(1.0), "{metrics}");
    assert_eq!(
        metric(&metrics, "apgate_client_connections", &[]),
        Some(3.0),
        "{metrics}"
    );
    // A connection that ends gives its place back.
    drop(b1);
    until_open(&gw, 2).await;
    let mut c2 = connect_from([127, 0, 0, 3], gw.addr).await;
    c2.write_all(&head("GET", "/shared/Bob/k", &[], None)).await.unwrap();
    assert_eq!(read_reply(&mut c2, Duration::from_secs(5)).await.status(), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_bodies_are_read_only_when_short() {
    let up = Upstream::start(|_, _| Act::ok(b"")).await;
    let gw = gateway(
        &format!("http://{}", up.addr),
        Tune {
            server: "max_discard_bytes = 65536",
            ..Tune::default()
        },
    )
    .await;
    // Short: read and thrown away, so the client reads its refusal whole.
    let short = pattern(0, 32 * 1024);
    let reply = request(gw.addr, "PUT", "/shared/Other/k", &short, Duration::from_secs(5)).await;
    assert_eq!(reply.error(), Some((403, "AccessDenied")), "{reply:?}");
    assert_eq!(reply.header("connection"), Some("close"));
    // Announced longer than max_discard_bytes: not read at all; the connection closes after the
    // answer (sent before the body, which the client may not get to read).
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(&head("PUT", "/shared/Other/k", &[], Some(64 * MIB)))
        .await
        .unwrap();
    let reply = read_reply(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(reply.error(), Some((403, "AccessDenied")), "{reply:?}");
    assert!(closed_by_apgate(&mut stream, Duration::from_secs(2)).await);
    let metrics = gw.metrics();
    let discarded = |outcome| metric(&metrics, "apgate_discarded_bodies_total", &[("outcome", outcome)]);
    assert_eq!(discarded("read"), Some(1.0), "{metrics}");
    assert_eq!(discarded("closed"), Some(1.0), "{metrics}");
    assert!(up.seen().is_empty());
}

/// An idle kept-alive connection is parked (src/app.rs: hyper and its buffers let go after
/// 0.5–1 s without a byte) and served again, on the same connection, when its client sends the
/// next request, here in two pieces with a pause, and again right after. A connection opened
/// ahead and idle before its first request is kept alive too (no `Connection: close`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_served_again_after_it_was_parked() {
    let (up, gw) = ok_gateway("").await;
    let kept = |reply: &Reply| match reply {
        Reply::Response {
            status: 200, headers, ..
        } => !headers
            .iter()
            .any(|(name, value)| name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close")),
        _ => false,
    };
    let parked = || metric(&gw.metrics(), "apgate_client_connections_parked", &[]);
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let get = head("GET", "/shared/Bob/k", &[], None);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // Not before its first answer: hyper holds no buffers yet, and would answer `Connection: close`.
    assert_eq!(parked(), Some(0.0));
    stream.write_all(&get).await.unwrap();
    let reply = read_reply(&mut stream, Duration::from_secs(5)).await;
    assert!(kept(&reply), "{reply:?}");
    for pause in [Duration::from_millis(1300), Duration::from_millis(2100)] {
        tokio::time::sleep(pause).await;
        until_parked(&parked, 1.0).await;
        stream.write_all(&get[..7]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        stream.write_all(&get[7..]).await.unwrap();
        let reply = read_reply(&mut stream, Duration::from_secs(5)).await;
        assert!(kept(&reply), "{reply:?}");
        assert_eq!(parked(), Some(0.0), "woken by its next request");
        stream.write_all(&get).await.unwrap();
        let reply = read_reply(&mut stream, Duration::from_secs(5)).await;
        assert!(kept(&reply), "{reply:?}");
    }
    assert_eq!(up.seen().len(), 5);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    until_parked(&parked, 1.0).await;
    drop(stream);
    let closed = Instant::now();
    while parked() != Some(0.0) && closed.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        parked(),
        Some(0.0),
        "a parked connection its client closed is no longer counted"
    );
}

/// `header_read_timeout_seconds` bounds the wait for a head and the head together, however often
/// the connection is parked and woken on the way: a client that sends a byte of a head now and
/// then is closed when it runs out, as is one that sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_deadline_holds_across_parking() {
    let (_up, gw) = ok_gateway("header_read_timeout_seconds = 3").await;
    let get = head("GET", "/shared/Bob/k", &[], None);
    for trickle in [true, false] {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        // The deadline counts from the answer, which is after this: apgate cannot close the
        // connection earlier than 3 s from here, however late this task reads the answer.
        let idle_from = Instant::now();
        stream.write_all(&get).await.unwrap();
        assert_eq!(
            read_reply(&mut stream, Duration::from_secs(5)).await.status(),
            Some(200)
        );
        let mut sent = 0;
        let closed_at = loop {
            if closed_by_apgate(&mut stream, Duration::from_millis(1100)).await {
                break idle_from.elapsed();
            }
            assert!(
                idle_from.elapsed() < Duration::from_secs(6),
                "still open after 6 s (trickle {trickle})"
            );
            if trickle && sent < get.len() - 4 {
                stream.write_all(&get[sent..=sent]).await.unwrap();
                sent += 1;
            }
        };
        assert!(
            closed_at >= Duration::from_millis(2950) && closed_at < Duration::from_millis(4000),
            "closed after {closed_at:?} (trickle {trickle})"
        );
    }
}

/// A client that reads its answer slowly gets all of it, whether it asked to close the connection
/// or keep it: a connection is never parked, nor its HTTP state dropped, while hyper still holds
/// bytes of an answer (the answer is whole, and a kept connection serves the next request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_its_whole_answer_across_the_idle_ticks() {
    for size in [512 << 10, 1 << 20, 2 << 20] {
        let body = pattern(7, size);
        let up = Upstream::start({
            let body = body.clone();
            move |_, _| Act::ok(&body)
        })
        .await;
        let gw = gateway(&format!("http://{}", up.addr), Tune::default()).await;
        for close in [true, false] {
            let mut stream = TcpStream::connect(gw.addr).await.unwrap();
            let extra: &[(&str, &str)] = if close { &[("connection", "close")] } else { &[] };
            stream
                .write_all(&head("GET", "/shared/Bob/k", extra, None))
                .await
                .unwrap();
            // Read nothing for two idle ticks, then everything.
            tokio::time::sleep(Duration::from_millis(1600)).await;
            let reply = read_reply(&mut stream, Duration::from_secs(10)).await;
            assert!(
                reply.whole() && reply.body() == &body[..],
                "{size} bytes, close {close}: {reply:?}"
            );
            if !close {
                stream
                    .write_all(&head("GET", "/shared/Bob/k", &[], None))
                    .await
                    .unwrap();
                let again = read_reply(&mut stream, Duration::from_secs(10)).await;
                assert!(again.whole() && again.body() == &body[..], "{size} bytes, again");
            }
        }
    }
}

/// A connection woken from parking late in its head deadline keeps the whole
/// `header_read_timeout_seconds` for the waits after its next answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_woken_late_keeps_the_whole_head_timeout_afterwards() {
    let (_up, gw) = ok_gateway("header_read_timeout_seconds = 4").await;
    let get = head("GET", "/shared/Bob/k", &[], None);
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    // Each pause leaves at least 1 s of its deadline; 3 s and then 2 s would overrun one 4 s
    // deadline that an answer failed to restart.
    for pause in [0, 3000, 2000, 3000] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        stream.write_all(&get).await.unwrap();
        let reply = read_reply(&mut stream, Duration::from_secs(5)).await;
        assert_eq!(reply.status(), Some(200), "after {pause} ms: {reply:?}");
    }
}
