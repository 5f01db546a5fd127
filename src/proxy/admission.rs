//! Admission: whether apgate takes a request on at all, before anything is decided about it. A
//! request holds a slot of the process-wide limit (`server.max_concurrent_requests`) from its
//! arrival, and one of its identity's (`server.max_concurrent_requests_per_identity`) once it is
//! authenticated, until its record is written (its response body ended, or it was abandoned);
//! requests over a limit are shed with `503 SlowDown`. Slots are RAII guards: whatever ends a
//! request gives them back, once.
//!
//! Not a tower `ConcurrencyLimit`/`LoadShed` stack: those release the permit when the service's
//! response future resolves, at the response head, while a streaming answer holds apgate's
//! resources until its body ends; and the per-identity limit can only apply after authentication,
//! in the middle of the request (ARCHITECTURE.md).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::HeaderMap;

use crate::error::{GatewayError, S3ErrorCode};
use crate::state::State;

/// The concurrency slots a request holds.
#[derive(Debug)]
pub(crate) struct Slots {
    global: GlobalSlot,
    identity: Option<IdentitySlot>,
}

#[derive(Debug)]
struct GlobalSlot(Arc<State>);

impl Drop for GlobalSlot {
    fn drop(&mut self) {
        self.0.metrics.inflight.dec();
    }
}

/// A slot of an identity's count: the counter it took it from, whichever state is running when
/// it is given back.
#[derive(Debug)]
struct IdentitySlot(Arc<AtomicUsize>);

impl Drop for IdentitySlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slots {
    /// Takes a slot of the process-wide limit; the request is shed (`Err`, with the slots to record it
    /// under) when that makes one too many.
    pub(crate) fn arrive(state: &Arc<State>) -> (Self, Result<(), GatewayError>) {
        state.metrics.inflight.inc();
        let slots = Self {
            global: GlobalSlot(state.clone()),
            identity: None,
        };
        let limit = i64::try_from(state.config.server.max_concurrent_requests).unwrap_or(i64::MAX);
        let admitted = if state.metrics.inflight.get() > limit {
            Err(GatewayError::upstream(
                S3ErrorCode::SlowDown,
                "Please reduce your request rate (apgate is at its concurrency limit).",
            ))
        } else {
            Ok(())
        };
        (slots, admitted)
    }

    /// Takes a slot of the identity's limit.
    pub(crate) fn authenticated(&mut self, identity: &Arc<str>) -> Result<(), GatewayError> {
        let state = &self.global.0;
        let limit = state.config.server.max_concurrent_requests_per_identity;
        let Some(counter) = state.identity_inflight.get(identity) else {
            return Ok(());
        };
        if counter.fetch_add(1, Ordering::AcqRel) >= limit {
            counter.fetch_sub(1, Ordering::AcqRel);
            return Err(GatewayError::client(
                S3ErrorCode::SlowDown,
                "Please reduce your request rate (this caller is at its concurrency limit).",
            ));
        }
        self.identity = Some(IdentitySlot(Arc::clone(counter)));
        Ok(())
    }
}

/// The size of a request head as received (request line and headers).
pub(crate) fn head_bytes(method: &http::Method, uri: &http::Uri, headers: &HeaderMap) -> usize {
    method.as_str().len()
        + uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>()
}

/// Refuses a head over `server.max_header_bytes`.
pub(crate) fn check_head_size(state: &State, bytes: usize) -> Result<(), GatewayError> {
    if bytes > state.config.server.max_header_bytes {
        return Err(GatewayError::client(
            S3ErrorCode::RequestHeaderSectionTooLarge,
            format!(
                "Your request header section exceeds the maximum allowed size ({} bytes).",
                state.config.server.max_header_bytes
            ),
        ));
    }
    Ok(())
}
