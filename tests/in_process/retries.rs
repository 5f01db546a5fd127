//! Safe retries (issue 8), in process against a scripted upstream (tests/support/harness.rs): what
//! is retried (idempotent requests whose body apgate holds), what never is (POST, aws-chunked,
//! bodies over the replay buffer), that each attempt is signed afresh and carries the whole body,
//! that the deadline and the attempt limit hold, that a client leaving stops the retries, and that
//! retries are counted and logged.

#![allow(clippy::unwrap_used)] // Test code: a failure here is a test failure.

use crate::harness;

use std::time::{Duration, Instant};

use harness::*;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const WITHIN: Duration = Duration::from_secs(10);

fn url(up: &Upstream) -> String {
    format!("http://{}", up.addr)
}

/// Answers the i-th request with `acts[i]`, and every later one with the last.
fn script(acts: Vec<Act>) -> impl Fn(usize, &Seen) -> Act + Send + Sync + 'static {
    move |i, _| acts[i.min(acts.len() - 1)].clone()
}

#[tokio::test(flavor = "current_thread")]
async fn a_get_is_retried_after_a_503_and_the_client_gets_the_200() {
    let (log, _guard) = capture_access_log();
    let up = Upstream::start(script(vec![Act::s3_error(503, "SlowDown"), Act::ok(b"second time")])).await;
    let gw = gateway(&url(&up), Tune::default()).await;
    let reply = request(gw.addr, "GET", "/shared/Bob/k", b"", WITHIN).await;
    assert_eq!(reply.status(), Some(200), "{reply:?}");
    assert_eq!(reply.body(), b"second time");
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for s in &seen {
        assert_eq!(s.target, "/Bob/k");
        assert_eq!(s.headers["host"], AP_HOST);
        assert!(
            signed_by_apgate(s),
            "attempt {} is not validly signed: {:?}",
            s.index,
            s.headers
        );
    }
    let m = gw.metrics();
    let retries = [("access_point", "bob-ap"), ("reason", "status_503")];
    assert_eq!(metric(&m, "apgate_upstream_retries_total", &retries), Some(1.0), "{m}");
    let slow_down = [("status", "503"), ("code", "SlowDown")];
    assert_eq!(
        metric(&m, "apgate_upstream_responses_total", &slow_down),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "apgate_upstream_responses_total", &[("status", "200")]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "apgate_requests_total",
            &[("operation", "GetObject"), ("status", "200")]
        ),
        Some(1.0)
    );
    let lines = access_lines(&log);
    assert_eq!(
        lines.len(),
        1,
        "{lines:?} {}",
        String::from_utf8_lossy(&log.lock().unwrap())
    );
    assert_eq!(lines[0]["attempts"], "2", "{lines:?}");
    assert_eq!(lines[0]["status"], "200");
    assert_eq!(
        lines[0]["upstream_request_id"], "UP1",
        "the answer's id is the last attempt's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_put_is_sent_again_whole_after_a_reset_before_the_response() {
    let up = Upstream::start(script(vec![Act::ResetAfterBody, Act::ok(b"")])).await;
    let gw = gateway(&url(&up), Tune::default()).await;
    let body = pattern(7, 10 * KIB);
    let reply = request(gw.addr, "PUT", "/shared/Bob/ten-kib", &body, WITHIN).await;
    assert_eq!(reply.status(), Some(200), "{reply:?}");
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for s in &seen {
        assert!(
            s.complete && s.body == body,
            "attempt {} did not carry the whole body",
            s.index
        );
        assert_eq!(s.headers["content-length"], "10240");
        assert!(signed_by_apgate(s));
    }
    assert_eq!(
        up.stored("/Bob/ten-kib"),
        vec![body],
        "written once, with the right bytes"
    );
    let m = gw.metrics();
    assert_eq!(
        metric(&m, "apgate_upstream_retries_total", &[("reason", "connect_error")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "apgate_upstream_errors_total", &[("kind", "exchange")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "apgate_received_bytes_total", &[("identity", "bob")]),
        Some(10240.0),
        "the client's bytes are counted once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_larger_than_the_replay_buffer_is_not_retried() {
    let up = Upstream::start(script(vec![Act::s3_error(503, "SlowDown"), Act::ok(b"")])).await;
    let gw = gateway(&url(&up), Tune::default()).await;
    let body = pattern(0, 2 * MIB);
    let reply = request(gw.addr, "PUT", "/shared/Bob/two-mib", &body, WITHIN).await;
    assert_eq!(reply.error(), Some((503, "SlowDown")), "{reply:?}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].complete && seen[0].body.len() == 2 * MIB);
    assert_eq!(
        metric(&gw.metrics(), "apgate_upstream_retries_total", &[]),
        None,
        "no retry counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_at_the_replay_buffer_size_is_retried() {
    let up = Upstream::start(script(vec![Act::s3_error(500, "InternalError"), Act::ok(b"")])).await;
    let gw = gateway(
        &url(&up),
        Tune {
            retry: "replay_buffer_bytes = 65536",
            ..Tune::default()
        },
    )
    .await;
    let body = pattern(3, 64 * KIB);
    let reply = request(gw.addr, "PUT", "/shared/Bob/exactly", &body, WITHIN).await;
    assert_eq!(reply.status(), Some(200), "{reply:?}");
    assert_eq!(up.seen().len(), 2);
    assert_eq!(up.stored("/Bob/exactly"), vec![body]);
    assert_eq!(
        metric(
            &gw.metrics(),
            "apgate_upstream_retries_total",
            &[("reason", "status_500")]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_never_retried() {
    let up = Upstream::start(script(vec![
        Act::s3_error(503, "SlowDown"),
        Act::ResetAfterBody,
        Act::ok(b""),
    ]))
    .await;
    let gw = gateway(&url(&up), Tune::default()).await;
    // CreateMultipartUpload: a 503 passes through after one attempt.
    let reply = request(gw.addr, "POST", "/shared/Bob/mp?uploads", b"", WITHIN).await;
    assert_eq!(reply.error(), Some((503, "SlowDown")), "{reply:?}");
    assert_eq!(up.seen().len(), 1);
    // CompleteMultipartUpload with a body: a reset is a 502, not a second attempt.
    let xml =
        b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>x</ETag></Part></CompleteMultipartUpload>";
    let reply = request(gw.addr, "POST", "/shared/Bob/mp?uploadId=u1", xml, WITHIN).await;
    assert_eq!(reply.error(), Some((502, "BadGateway")), "{reply:?}");
    assert_eq!(up.seen().len(), 2, "one attempt each");
    assert_eq!(metric(&gw.metrics(), "apgate_upstream_retries_total", &[]), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aws_chunked_body_is_never_retried() {
    let up = Upstream::start(script(vec![Act::s3_error(503, "SlowDown"), Act::ok(b"")])).await;
    let gw = gateway(&url(&up), Tune::default()).await;
    let data = b"hello";
    let chunked = format!(
        "{:x}\r\n{}\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\r\n\r\n",
        data.len(),
        std::str::from_utf8(data).unwrap()
    );
    let mut bytes = head(
        "PUT",
        "/shared/Bob/chunked",
        &[
            ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "5"),
            ("x-amz-trailer", "x-amz-checksum-crc32"),
        ],
        Some(chunked.len()),
    );
    bytes.extend_from_slice(chunked.as_bytes());
    let reply = exchange(gw.addr, &bytes, WITHIN).await;
    assert_eq!(reply.error(), Some((503, "SlowDown")), "{reply:?}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].body,
        chunked.as_bytes(),
        "the aws-chunked bytes went through once, unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_the_deadline_and_the_last_503_passes_through() {
    let up = Upstream::start(|_, _| Act::s3_error(503, "SlowDown")).await;
    let gw = gateway(
        &url(&up),
        Tune {
            retry: "max_attempts = 10\ninitial_backoff_ms = 200\nmax_backoff_ms = 400\ndeadline_seconds = 1",
            ..Tune::default()
        },
    )
    .await;
    let started = Instant::now();
    let reply = request(gw.addr, "GET", "/shared/Bob/k", b"", WITHIN).await;
    let took = started.elapsed();
    assert_eq!(reply.error(), Some((503, "SlowDown")), "{reply:?}");
    assert!(took < Duration::from_millis(1500), "took {took:?} with a 1 s deadline");
    let attempts = up.seen().len();
    assert!((2..10).contains(&attempts), "{attempts} attempts");
    let retried = metric(
        &gw.metrics(),
        "apgate_upstream_retries_total",
        &[("reason", "status_503")],
    );
    assert_eq!(retried, Some((attempts - 1) as f64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_after_max_attempts() {
    let up = Upstream::start(|_, _| Act::s3_error(500, "InternalError")).await;
    let gw = gateway(&url(&up), Tune::default()).await;
    let reply = request(gw.addr, "DELETE", "/shared/Bob/k", b"", WITHIN).await;
    assert_eq!(reply.error(), Some((500, "InternalError")), "{reply:?}");
    assert_eq!(up.seen().len(), 3, "max_attempts defaults to 3");
    assert!(up
        .seen()
        .iter()
        .all(|s| s.method == http::Method::DELETE && signed_by_apgate(s)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_1_disables_retries() {
    let up = Upstream::start(script(vec![Act::s3_error(503, "SlowDown"), Act::ok(b"")])).await;
    let gw = gateway(
        &url(&up),
        Tune {
            retry: "max_attempts = 1",
            ..Tune::default()
        },
    )
    .await;
    let reply = request(gw.addr, "GET", "/shared/Bob/k", b"", WITHIN).await;
    assert_eq!(reply.error(), Some((503, "SlowDown")), "{reply:?}");
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_retried_for_a_get_but_not_for_a_put() {
    let up = Upstream::start(|i, s| match (s.method.as_str(), i) {
        ("GET", 0) | ("PUT", _) => Act::NeverAnswer,
        _ => Act::ok(b"late but fine"),
    })
    .await;
    let gw = gateway(
        &url(&up),
        Tune {
            // Long enough that the retried GET's answer surely comes within it on a loaded machine.
            upstream: "response_header_timeout_seconds = 1",
            ..Tune::default()
        },
    )
    .await;
    let reply = request(gw.addr, "GET", "/shared/Bob/k", b"", WITHIN).await;
    assert_eq!(reply.status(), Some(200), "{reply:?}");
    assert_eq!(reply.body(), b"late but fine");
    assert_eq!(up.seen().len(), 2);
    let reply = request(gw.addr, "PUT", "/shared/Bob/k", b"small", WITHIN).await;
    assert_eq!(reply.error(), Some((504, "GatewayTimeout")), "{reply:?}");
    assert_eq!(up.seen().len(), 3, "the PUT was sent once");
    let m = gw.metrics();
    assert_eq!(
        metric(&m, "apgate_upstream_retries_total", &[("reason", "timeout")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "apgate_upstream_errors_total", &[("kind", "timeout")]),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_during_the_backoff_stops_the_retries() {
    let up = Upstream::start(|_, _| Act::s3_error(503, "SlowDown")).await;
    let gw = gateway(
        &url(&up),
        Tune {
            retry: "max_attempts = 10\ninitial_backoff_ms = 2000\nmax_backoff_ms = 2000\ndeadline_seconds = 60",
            ..Tune::default()
        },
    )
    .await;
    let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut client, &head("GET", "/shared/Bob/k", &[], None))
        .await
        .unwrap();
    assert_eq!(up.wait_for(1, WITHIN).await, 1);
    drop(client);
    // Without cancellation, ten attempts a second apart on average would keep coming.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let attempts = up.seen().len();
    assert!(attempts <= 2, "{attempts} attempts after the client left");
    let m = gw.metrics();
    assert_eq!(metric(&m, "apgate_inflight_requests", &[]), Some(0.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_body_shorter_than_declared_is_an_incomplete_body_and_never_sent() {
    let up = Upstream::start(|_, _| Act::ok(b"")).await;
    let gw = gateway(&url(&up), Tune::default()).await;
    let mut bytes = head("PUT", "/shared/Bob/short", &[], Some(10 * KIB));
    bytes.extend_from_slice(&pattern(0, 5 * KIB));
    let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut client, &bytes).await.unwrap();
    tokio::io::AsyncWriteExt::shutdown(&mut client).await.unwrap();
    let reply = read_reply(&mut client, WITHIN).await;
    assert_eq!(reply.error(), Some((400, "IncompleteBody")), "{reply:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        up.seen().is_empty(),
        "a body apgate holds is only sent once it is whole"
    );
}
