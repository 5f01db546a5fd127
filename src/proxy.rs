//! One request, phase by phase (ARCHITECTURE.md has the chart):
//!
//! 1. **admission** ([`admission`]): a slot of the concurrency limit, a head within its size;
//! 2. **decision** ([`crate::decision::decide`]): the one parse of the head, the caller, the
//!    operation, the route, the outbound head and body plan; pure;
//! 3. **forwarding** ([`forward`]): the decided head signed with apgate's credentials, the body as
//!    planned, retries for bodies apgate holds;
//! 4. **responding** ([`respond`]): the upstream's answer made the client's, apgate's own answers,
//!    refusals as S3 XML;
//! 5. **recording** ([`record`]): metrics and the access log line, once, by a guard that travels
//!    with the response body.
//!
//! **Architecture invariant:** the request body is never polled before the caller is
//! authenticated and the request decided, so hyper only sends `100 Continue` to callers we accept,
//! and a refused request never reaches the upstream.

mod admission;
mod forward;
mod record;
mod respond;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{header, HeaderValue, Method, Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

pub(crate) use record::new_request_id;
pub use record::CLIENT_CLOSED_REQUEST;

use crate::body::{BodyEnd, Metered, ResponseBody};
use crate::connection::Signals;
use crate::decision::{decide, Head, Outcome};
use crate::error::GatewayError;
use crate::state::{Gateway, ListenerState, State};
use crate::tls::PeerCertificate;
use admission::Slots;
use forward::ClientBody;
use record::Record;

/// The hyper service function of a data-plane listener.
pub async fn handle(
    gateway: Arc<Gateway>,
    listener_name: Arc<str>,
    remote: SocketAddr,
    peer: Option<Arc<PeerCertificate>>,
    connection: Arc<Signals>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    connection.request_started(has_body);
    let client_keeps_alive = keeps_alive(req.version(), req.headers());
    // The state as of this request's start: a reload during it does not change it.
    let state = gateway.state();
    let Some(listener) = state.listeners.get(&*listener_name).cloned() else {
        let error = GatewayError::internal("the listener is no longer configured");
        return Ok(error.into_response("0000000000000000", req.method() == Method::HEAD));
    };
    // A connection's client certificate, checked again when the configuration changed since it
    // was: one the listener no longer trusts names nobody, and the connection is closed after
    // the answer.
    let (client_certificate, untrusted) = match &peer {
        None => (None, false),
        Some(peer) => match peer.subject(state.generation, listener.tls.as_ref()) {
            Some(subject) => (Some(subject), false),
            None => (Some(Arc::<str>::from("")), true),
        },
    };
    let (slots, admitted) = Slots::arrive(&state);
    let mut record = Record::open(
        &state,
        listener.name.clone(),
        listener.scheme,
        remote,
        req.method(),
        slots,
        connection.clone(),
    );
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, body) = req.into_parts();
    let mut unread_body = Some(body);
    let outcome = match admitted {
        Ok(()) => {
            proxy(
                &state,
                &listener,
                &mut record,
                &parts,
                client_certificate.as_deref(),
                &mut unread_body,
            )
            .await
        }
        Err(e) => Err(e),
    };
    let mut resp = match outcome {
        Ok(resp) => resp,
        Err(error) => {
            record.ctx_mut().error_code = Some(error.code().as_str().to_owned());
            let mut resp = respond::error_response(record.ctx(), error);
            match unread_body.take() {
                Some(body) if has_body && !expects_continue => {
                    // The client is sending a body we refused. Closing now would make it fail with a
                    // broken pipe before it reads our answer; read and discard a bounded amount
                    // first (if it is short, and not too many are being read), then close.
                    discard(&gateway, &state, body);
                    close(&mut resp);
                }
                // Expect: 100-continue: the client waits for our answer and sends nothing; or the
                // body was (partly) streamed upstream: either way the connection cannot be reused.
                Some(_) | None if has_body => close(&mut resp),
                _ => {}
            }
            resp
        }
    };
    if gateway.is_draining() || untrusted {
        // Shutting down: the client learns from this answer not to send another request on the
        // connection, which closes after it (app::Conn::serve).
        close(&mut resp);
    }
    if has_body && !connection.body_is_complete() {
        // Answered before the body was read whole (the upstream answered early): what the client
        // sends next is the rest of it, not a request head.
        close(&mut resp);
    }
    // As hyper decides it: the client's wish (HTTP/1.0 keeps only on request, HTTP/1.1 unless
    // told to close) and the answer's.
    let keep_alive = client_keeps_alive && resp.headers().get(header::CONNECTION).is_none_or(|v| v != "close");
    // The record travels with the body and is written when it ends (or is dropped).
    let status = resp.status();
    let (resp_parts, resp_body) = resp.into_parts();
    let metered = Metered::new(resp_body, move |n, end: BodyEnd| {
        record.finish(status, n, end);
        connection.request_finished(keep_alive && end == BodyEnd::Complete);
    });
    Ok(Response::from_parts(resp_parts, metered.boxed_unsync()))
}

/// Whether the client wants the connection kept after this request.
fn keeps_alive(version: http::Version, headers: &http::HeaderMap) -> bool {
    let has = |token: &str| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    match version {
        http::Version::HTTP_11 => !has("close"),
        http::Version::HTTP_10 => has("keep-alive"),
        _ => false,
    }
}

fn close(resp: &mut Response<ResponseBody>) {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// Admission, decision, forwarding and the answer; an `Err` is answered by the caller.
async fn proxy(
    state: &Arc<State>,
    listener: &ListenerState,
    record: &mut Record,
    parts: &http::request::Parts,
    client_certificate: Option<&str>,
    unread_body: &mut Option<Incoming>,
) -> Result<Response<ResponseBody>, GatewayError> {
    admission::check_head_size(state, admission::head_bytes(&parts.method, &parts.uri, &parts.headers))?;

    // Decide, from the head alone.
    let ctx = record.ctx_mut();
    let head = Head {
        method: &parts.method,
        uri: &parts.uri,
        headers: &parts.headers,
        remote: ctx.remote.ip(),
        client_certificate,
    };
    let decision = decide(&head, &state.policy(listener), SystemTime::now());
    ctx.operation = decision.operation;
    ctx.bucket = decision.bucket().map(|b| b.as_str().to_owned());
    ctx.key = decision.key().map(str::to_owned);
    ctx.identity = decision.caller.as_ref().map(|c| c.name.clone());
    ctx.access_point = decision.route().map(|r| r.label.clone());
    ctx.access_point_name = decision.route().map(|r| r.access_point.clone());
    let outcome = decision.outcome.inspect_err(|e| {
        // Authentication is the one step between the parse and knowing the caller.
        if decision.target.is_some() && decision.caller.is_none() {
            state
                .metrics
                .auth_failures
                .with_label_values(&[&listener.name, e.code().as_str()])
                .inc();
        }
    })?;
    let caller = decision
        .caller
        .as_ref()
        .ok_or_else(|| GatewayError::internal("a decision without a caller"))?;
    record.slots_mut().authenticated(&caller.name)?;
    let ctx = record.ctx_mut();
    let forward = match outcome {
        Outcome::ListBuckets(buckets) => return Ok(respond::list_buckets(ctx, &caller.name, buckets)),
        Outcome::BucketLocation(route) => return Ok(respond::bucket_location(ctx, route.access_point.region())),
        Outcome::Forward(forward) => forward,
    };
    let mut forward = forward;
    let head = forward.take_head();
    let (target, operation) = match (&decision.target, decision.operation) {
        (Some(t), Some(op)) => (t, op),
        _ => return Err(GatewayError::internal("a forwarded request without a target")),
    };

    // Forward, and answer.
    let body = unread_body
        .take()
        .ok_or_else(|| GatewayError::internal("the request body was taken twice"))?;
    let client = ClientBody::default();
    let decided = forward::Decided {
        caller,
        operation,
        forward: &forward,
        inbound: parts,
    };
    let up_resp = forward::forward(state, ctx, decided, head, body, &client).await?;
    let client_side = respond::ClientSide {
        target,
        bucket: &forward.route.bucket,
        host: parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()),
        range: parts.headers.get(header::RANGE).and_then(|h| h.to_str().ok()),
    };
    respond::upstream_answer(state, ctx, client_side, up_resp).await
}

/// How long apgate reads a refused body before closing the connection anyway.
const MAX_DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads and drops a refused request body in the background, so the client can finish writing
/// and read the refusal: at most `server.max_discard_bytes` of it, for at most
/// [`MAX_DISCARD_TIME`], and no more than `server.max_concurrent_discards` bodies at once. A body
/// announced longer, or one over the concurrent limit, is not read: the connection closes after
/// the answer (the client may see a reset instead of the refusal).
fn discard(gateway: &Arc<Gateway>, state: &State, body: Incoming) {
    let server = &state.config.server;
    let counter = gateway.discards.clone();
    let outcome = &gateway.metrics.discarded_bodies;
    if body.size_hint().lower() > server.max_discard_bytes
        || counter.fetch_add(1, std::sync::atomic::Ordering::AcqRel) >= server.max_concurrent_discards
    {
        if body.size_hint().lower() <= server.max_discard_bytes {
            counter.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
        outcome.with_label_values(&["closed"]).inc();
        return;
    }
    outcome.with_label_values(&["read"]).inc();
    let limit = server.max_discard_bytes;
    tokio::spawn(async move {
        let mut body = std::pin::pin!(body);
        let mut read = 0u64;
        let _ = tokio::time::timeout(MAX_DISCARD_TIME, async {
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    read += data.len() as u64;
                    if read > limit {
                        break;
                    }
                }
            }
        })
        .await;
        counter.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    });
}
