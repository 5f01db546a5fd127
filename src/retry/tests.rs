use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::*;

fn policy() -> RetryConfig {
    RetryConfig {
        max_attempts: 3,
        replay_buffer_bytes: 1024,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(1000),
        deadline: Duration::from_secs(10),
    }
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_static(v));
    }
    h
}

#[test]
fn plans_replay_only_for_idempotent_requests_with_small_fixed_bodies() {
    let unsigned = PayloadHash::Unsigned;
    let trailer = PayloadHash::StreamingUnsignedTrailer;
    let signed = PayloadHash::StreamingSigned { trailer: false };
    let cases: &[(Method, &PayloadHash, &[(&str, &str)], BodyPlan)] = &[
        (Method::GET, &unsigned, &[], BodyPlan::Replay { len: 0 }),
        (Method::HEAD, &unsigned, &[], BodyPlan::Replay { len: 0 }),
        (
            Method::DELETE,
            &unsigned,
            &[("content-length", "0")],
            BodyPlan::Replay { len: 0 },
        ),
        (
            Method::PUT,
            &unsigned,
            &[("content-length", "1024")],
            BodyPlan::Replay { len: 1024 },
        ),
        // One byte over the buffer: streams, one attempt.
        (Method::PUT, &unsigned, &[("content-length", "1025")], BodyPlan::Stream),
        // Not idempotent.
        (Method::POST, &unsigned, &[], BodyPlan::Stream),
        (Method::POST, &unsigned, &[("content-length", "10")], BodyPlan::Stream),
        (Method::PATCH, &unsigned, &[], BodyPlan::Stream),
        // aws-chunked, however small: never retried.
        (Method::PUT, &trailer, &[("content-length", "100")], BodyPlan::Stream),
        (Method::PUT, &signed, &[("content-length", "100")], BodyPlan::Stream),
        (
            Method::PUT,
            &unsigned,
            &[("content-length", "100"), ("content-encoding", "aws-chunked")],
            BodyPlan::Stream,
        ),
        (
            Method::PUT,
            &unsigned,
            &[("transfer-encoding", "chunked")],
            BodyPlan::Stream,
        ),
        // A length apgate cannot read: not held.
        (Method::PUT, &unsigned, &[("content-length", "ten")], BodyPlan::Stream),
        (
            Method::PUT,
            &unsigned,
            &[("content-length", "10"), ("content-length", "10")],
            BodyPlan::Stream,
        ),
    ];
    for (method, payload, hs, want) in cases {
        assert_eq!(
            plan(method, payload, &headers(hs), &policy()),
            *want,
            "{method} {payload:?} {hs:?}"
        );
    }
    let disabled = RetryConfig {
        max_attempts: 1,
        ..policy()
    };
    assert_eq!(
        plan(&Method::GET, &unsigned, &HeaderMap::new(), &disabled),
        BodyPlan::Stream,
        "max_attempts = 1 buffers nothing"
    );
}

#[test]
fn retries_500_and_503_only() {
    let cases = [
        (200, None),
        (404, None),
        (412, None),
        (500, Some(RetryReason::Status500)),
        (501, None),
        (502, None),
        (503, Some(RetryReason::Status503)),
        (504, None),
    ];
    for (status, want) in cases {
        assert_eq!(status_reason(StatusCode::from_u16(status).unwrap()), want, "{status}");
    }
}

#[test]
fn retries_connection_failures_always_and_timeouts_for_reads_only() {
    let connect = UpstreamError::Connect("refused".into());
    let closed = UpstreamError::Closed("reset".into());
    let timeout = UpstreamError::Timeout(Duration::from_secs(1));
    let exchange = UpstreamError::Exchange("bad response".into());
    let cases: &[(&UpstreamError, Method, Option<RetryReason>)] = &[
        (&connect, Method::GET, Some(RetryReason::ConnectError)),
        (&connect, Method::PUT, Some(RetryReason::ConnectError)),
        (&closed, Method::DELETE, Some(RetryReason::ConnectError)),
        (&timeout, Method::GET, Some(RetryReason::Timeout)),
        (&timeout, Method::HEAD, Some(RetryReason::Timeout)),
        (&timeout, Method::PUT, None),
        (&timeout, Method::DELETE, None),
        (&exchange, Method::GET, None),
    ];
    for (error, method, want) in cases {
        assert_eq!(error_reason(error, method), *want, "{error:?} {method}");
    }
}

#[test]
fn backoff_doubles_up_to_the_maximum() {
    let ms = Duration::from_millis;
    let cases = [
        (0, ms(50)),
        (1, ms(100)),
        (2, ms(200)),
        (4, ms(800)),
        (5, ms(1000)),
        (30, ms(1000)),
        (u32::MAX, ms(1000)),
    ];
    for (retry, want) in cases {
        assert_eq!(backoff_ceiling(retry, &policy()), want, "retry {retry}");
    }
}

#[test]
fn jitter_spans_zero_to_the_ceiling() {
    let ceiling = Duration::from_millis(200);
    let cases = [
        (0.0, Duration::ZERO),
        (0.5, Duration::from_millis(100)),
        (0.999, Duration::from_micros(199_800)),
        (1.5, ceiling),
        (-1.0, Duration::ZERO),
    ];
    for (unit, want) in cases {
        assert_eq!(jittered(ceiling, unit), want, "{unit}");
    }
}

#[test]
fn stops_at_the_attempt_limit_or_the_deadline() {
    let s = Duration::from_secs;
    let ms = Duration::from_millis;
    let cases = [
        // (attempts made, elapsed, next sleep) → another attempt?
        (1, s(0), ms(50), true),
        (2, s(1), ms(100), true),
        (3, s(0), ms(0), false),
        (1, ms(9_900), ms(99), true),
        (1, ms(9_900), ms(100), false),
        (1, s(11), ms(0), false),
    ];
    for (made, elapsed, sleep, want) in cases {
        assert_eq!(
            may_retry(made, elapsed, sleep, &policy()),
            want,
            "{made} {elapsed:?} {sleep:?}"
        );
    }
}

#[test]
fn reason_labels_are_distinct() {
    let labels: std::collections::HashSet<_> = RetryReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels.len(), RetryReason::ALL.len());
}
