//! When a failed upstream exchange is tried again: the pure decisions (which requests may be
//! retried, on which failures, how long to wait), tested with tables. The loop that applies them is
//! `proxy::send_with_retries`.
//!
//! **Architecture invariant:** a request is only retried when sending it twice cannot differ from
//! sending it once: an idempotent method (GET, HEAD, PUT, DELETE; S3's PUT object and part are
//! idempotent in effect) whose body apgate holds in full (none, or a `Content-Length` body of at most
//! `replay_buffer_bytes`, never aws-chunked), and only on failures that reached the client with no
//! response byte. Streaming bodies get exactly one attempt; nothing is buffered for them.

use std::time::Duration;

use http::{header, HeaderMap, Method, StatusCode};

use crate::config::RetryConfig;
use crate::s3::PayloadHash;
use crate::upstream::UpstreamError;

/// How a request's body is sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPlan {
    /// Streamed as the upstream reads it: exactly one attempt.
    Stream,
    /// Read into memory first (`len` bytes, 0 for no body) and sent again on each attempt.
    Replay { len: u64 },
}

/// Why an attempt is retried (the `reason` label of `apgate_upstream_retries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The connection failed, or broke before the response head (refused, reset, closed, DNS).
    ConnectError,
    /// The upstream answered `500 Internal Server Error` (S3's `InternalError`).
    Status500,
    /// The upstream answered `503` (S3's `SlowDown`, `ServiceUnavailable`).
    Status503,
    /// No response head in time (GET and HEAD only).
    Timeout,
}

impl RetryReason {
    pub const ALL: [Self; 4] = [Self::ConnectError, Self::Status500, Self::Status503, Self::Timeout];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectError => "connect_error",
            Self::Status500 => "status_500",
            Self::Status503 => "status_503",
            Self::Timeout => "timeout",
        }
    }
}

/// Decides how a request's body goes upstream, from its head alone (before the body is read).
pub fn plan(method: &Method, payload: &PayloadHash, headers: &HeaderMap, policy: &RetryConfig) -> BodyPlan {
    if policy.max_attempts <= 1 {
        return BodyPlan::Stream;
    }
    let idempotent = matches!(*method, Method::GET | Method::HEAD | Method::PUT | Method::DELETE);
    let streaming_payload = matches!(
        payload,
        PayloadHash::StreamingUnsignedTrailer | PayloadHash::StreamingSigned { .. } | PayloadHash::StreamingSigV4a
    );
    let aws_chunked = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.to_ascii_lowercase().contains("aws-chunked")));
    if !idempotent || streaming_payload || aws_chunked || headers.contains_key(header::TRANSFER_ENCODING) {
        return BodyPlan::Stream;
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let len = match (lengths.next(), lengths.next()) {
        (None, _) => 0,
        (Some(v), None) => match v.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
            Some(n) => n,
            None => return BodyPlan::Stream,
        },
        (Some(_), Some(_)) => return BodyPlan::Stream,
    };
    if len > policy.replay_buffer_bytes as u64 {
        return BodyPlan::Stream;
    }
    BodyPlan::Replay { len }
}

/// Whether an upstream response is worth another attempt.
pub fn status_reason(status: StatusCode) -> Option<RetryReason> {
    match status {
        StatusCode::INTERNAL_SERVER_ERROR => Some(RetryReason::Status500),
        StatusCode::SERVICE_UNAVAILABLE => Some(RetryReason::Status503),
        _ => None,
    }
}

/// Whether an exchange that produced no response is worth another attempt. A timeout is only
/// retried for reads: a PUT or DELETE that timed out may still be running upstream, and sending it
/// again would add load exactly when the upstream is struggling.
pub fn error_reason(error: &UpstreamError, method: &Method) -> Option<RetryReason> {
    match error {
        UpstreamError::Connect(_) | UpstreamError::Closed(_) => Some(RetryReason::ConnectError),
        UpstreamError::Timeout(_) if matches!(*method, Method::GET | Method::HEAD) => Some(RetryReason::Timeout),
        UpstreamError::Timeout(_) | UpstreamError::Exchange(_) => None,
    }
}

/// The most the backoff before retry number `retry` (0 for the first) may be:
/// `min(max_backoff, initial_backoff * 2^retry)`.
pub fn backoff_ceiling(retry: u32, policy: &RetryConfig) -> Duration {
    let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
    policy
        .initial_backoff
        .checked_mul(factor)
        .unwrap_or(Duration::MAX)
        .min(policy.max_backoff)
}

/// Full jitter: a point in `[0, ceiling]` chosen by `unit` (uniform in `[0, 1)`), so that clients
/// failing together do not retry together.
pub fn jittered(ceiling: Duration, unit: f64) -> Duration {
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// Whether another attempt may follow `attempts_made`, sleeping `sleep` first, when `elapsed` has
/// passed since the first attempt was sent.
pub fn may_retry(attempts_made: u32, elapsed: Duration, sleep: Duration, policy: &RetryConfig) -> bool {
    attempts_made < policy.max_attempts && elapsed.saturating_add(sleep) < policy.deadline
}

#[cfg(test)]
mod tests;
