//! Fault injection (issue 8): one test per fault, each against an in-process apgate in front of a
//! fake upstream that misbehaves on cue (tests/support/harness.rs), asserting what the client sees
//! (status and S3 code, or an aborted body) and what the upstream saw.

#![allow(clippy::unwrap_used)] // Test code: a failure here is a test failure.

#[path = "support/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use harness::*;

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upload_longer_than_the_response_header_timeout_succeeds() {
    let up = Upstream::start(|_, _| Act::ok(b"")).await;
    let gw = gateway(
        &format!("http://{}", up.addr),
        Tune {
            upstream: "",
            ..Tune::default()
        },
    )
    .await;
    let body = pattern(0, 2 * MIB);
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(&head("PUT", "/shared/Bob/slow-upload", &[], Some(body.len())))
        .await
        .unwrap();
    let started = Instant::now();
    for piece in body.chunks(128 * 1024) {
        if stream.write_all(piece).await.is_err() {
            break; // apgate gave up on the upload: the reply says why
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reply = read_reply(&mut stream, Duration::from_secs(10)).await;
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "the upload must outlast the 2 s timeout"
    );
    assert_eq!(reply.status(), Some(200), "{reply:?}");
    assert_eq!(up.stored("/Bob/slow-upload"), vec![body]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pausing_a_download_longer_than_the_body_idle_timeout_still_gets_it_all() {
    let size = 64 * MIB;
    let up = Upstream::start(move |_, _| Act::ok(&pattern(0, size))).await;
    let gw = gateway(
        &format!("http://{}", up.addr),
        Tune {
            upstream: "body_idle_timeout_seconds = 1",
            ..Tune::default()
        },
    )
    .await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut stream = socket.connect(gw.addr).await.unwrap();
    stream
        .write_all(&head("GET", "/shared/Bob/big", &[], None))
        .await
        .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while got < 256 * 1024 {
        got += stream.read(&mut buf).await.unwrap();
    }
    // The reader stops for longer than the upstream body idle timeout; the upstream is not idle.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got += n,
        }
        if got >= size {
            break;
        }
    }
    assert!(got >= size, "the download was cut after {got} bytes (head included)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnecting_while_the_upstream_is_slow_frees_its_slot() {
    let up = Upstream::start(|i, _| match i {
        0 => Act::NeverAnswer,
        _ => Act::ok(b"served"),
    })
    .await;
    let gw = gateway(
        &format!("http://{}", up.addr),
        Tune {
            server: "max_concurrent_requests_per_identity = 1",
            upstream: "response_header_timeout_seconds = 30",
            ..Tune::default()
        },
    )
    .await;
    let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    client.write_all(&head("GET", "/shared/Bob/stuck", &[], None)).await.unwrap();
    assert_eq!(up.wait_for(1, Duration::from_secs(5)).await, 1);
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // bob's only slot is free again: the next request is served, not refused with SlowDown.
    let reply = request(gw.addr, "GET", "/shared/Bob/next", b"", Duration::from_secs(5)).await;
    assert_eq!(reply.status(), Some(200), "{reply:?}");
    let m = gw.metrics();
    assert_eq!(metric(&m, "apgate_inflight_requests", &[]), Some(0.0), "{m}");
    let abandoned = [("operation", "GetObject"), ("status", "499")];
    assert_eq!(metric(&m, "apgate_requests_total", &abandoned), Some(1.0), "{m}");
}
