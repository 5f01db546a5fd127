//! Forwarding: the decided outbound head, signed with apgate's credentials, and the request body
//! as the decision planned it, sent to the upstream (with retries for bodies apgate holds).
//!
//! **Architecture invariant:** what goes upstream is the decision's [`OutboundHead`] (plus Host and
//! the signature) and the body its [`BodyPlan`] names: never the inbound request with parts
//! removed. A body apgate inspects is forwarded as the decoded content it checked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::Digest;

use super::record::Ctx;
use crate::body::{self, BodyEnd, Metered};
use crate::chunked::unsigned::CheckUnsignedChunks;
use crate::chunked::{ChunkKey, FailureSlot, ResignChunks};
use crate::config::Endpoint;
use crate::decision::{inspect_body, BodyPlan, Forward, Framing, OutboundHead, MAX_INSPECTED_BODY};
use crate::error::{GatewayError, S3ErrorCode};
use crate::identity::CallerIdentity;
use crate::metrics::NONE;
use crate::retry;
use crate::routing::Route;
use crate::s3::encoding::hex_lower;
use crate::s3::headers::X_AMZ_TRAILER;
use crate::s3::{amzdate, AccessPoint, Operation, PayloadHash};
use crate::signing::sign_request;
use crate::sigv4::SigningKeyCache;
use crate::state::State;
use crate::upstream::{UpstreamBody, UpstreamError};

/// Whether the client's request body failed, and how (the handler answers accordingly).
#[derive(Debug, Default)]
pub(crate) struct ClientBody {
    /// The client stopped sending for `client_body_idle_timeout`.
    pub(crate) idle: Arc<AtomicBool>,
    /// The client broke off or sent too little.
    pub(crate) failed: Arc<AtomicBool>,
}

/// A decided request to forward: who, what, the decision's forward, and the head as received.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Decided<'a> {
    pub(crate) caller: &'a CallerIdentity,
    pub(crate) operation: Operation,
    pub(crate) forward: &'a Forward,
    pub(crate) inbound: &'a http::request::Parts,
}

/// Sends the decided request upstream (`head`: the decision's outbound head, moved out of its
/// forward) and returns the upstream's answer.
pub(crate) async fn forward(
    state: &Arc<State>,
    ctx: &mut Ctx,
    decided: Decided<'_>,
    mut head: OutboundHead,
    body: Incoming,
    client: &ClientBody,
) -> Result<Response<UpstreamBody>, GatewayError> {
    let Decided {
        caller,
        operation,
        forward: fwd,
        inbound,
    } = decided;
    let credentials = state.credentials.for_identity(&caller.name).get().await.map_err(|e| {
        tracing::error!(error = %e, "No upstream credentials; refusing the request.");
        GatewayError::upstream(
            S3ErrorCode::ServiceUnavailable,
            "apgate has no credentials to sign the upstream request with.",
        )
    })?;
    // For DeleteObjects, the route of its keys, which it goes through instead of the decision's.
    let mut keys_route = None;
    let plan = match fwd.body {
        BodyPlan::Inspect { .. } => {
            let announced = inbound.headers.get(&X_AMZ_TRAILER).and_then(|v| v.to_str().ok());
            let read = read_inspected(state, ctx, body, fwd, operation, caller, announced, &mut head).await;
            if let Ok((_, Some(r))) = &read {
                ctx.access_point = Some(r.label.clone());
                ctx.access_point_name = Some(r.access_point.clone());
            }
            // Counted once the route, and so the label, is known (a refused body's bytes too).
            received_bytes(state, ctx).inc_by(ctx.bytes_in.load(Ordering::Relaxed));
            let (content, route) = read?;
            keys_route = route;
            Planned::Held(content)
        }
        BodyPlan::Empty => Planned::Held(Bytes::new()),
        BodyPlan::Stream => {
            match retry::plan(
                &inbound.method,
                &caller.payload,
                &inbound.headers,
                &state.config.upstream.retry,
            ) {
                retry::BodyPlan::Replay { len } => {
                    Planned::Held(read_replay_body(state, ctx, body, len, Some(received_bytes(state, ctx))).await?)
                }
                retry::BodyPlan::Stream => Planned::Stream(body),
            }
        }
        // aws-chunked: never held, so never sent twice (retry::plan would say so too).
        BodyPlan::SignedChunks { .. } | BodyPlan::UnsignedChunks { .. } => Planned::Stream(body),
    };
    let ap = &keys_route.as_ref().unwrap_or(&fwd.route).access_point;
    let outgoing = Outgoing::new(
        head,
        ap,
        &state.config.upstream.endpoint,
        &credentials,
        &state.signing_keys,
    )?;
    match plan {
        Planned::Held(bytes) if retries_allowed(&inbound.method) => {
            send_with_retries(state, ctx, &outgoing, bytes).await
        }
        Planned::Held(bytes) => send_once(state, ctx, outgoing, body::full(bytes), None, client).await,
        Planned::Stream(incoming) => {
            let idle = state.config.server.client_body_idle_timeout;
            let metered = metered_client_body(ctx, incoming, idle, client, Some(received_bytes(state, ctx)));
            match fwd.body {
                BodyPlan::SignedChunks { ending, decoded_length } => {
                    let failure: FailureSlot = Arc::default();
                    // Every chunk is checked against the caller's key and re-signed with apgate's,
                    // chained from the seed signature put on the upstream request's head.
                    let signed_at = SystemTime::now();
                    let (parts, seed) = outgoing.signed(signed_at)?;
                    let amz_date = amzdate::format(signed_at);
                    let date = &amz_date[..8];
                    let outbound_key = ChunkKey::new(
                        state.signing_keys.get(
                            credentials.access_key_id(),
                            credentials.secret_access_key(),
                            date,
                            ap.region(),
                        ),
                        amz_date.clone(),
                        format!("{date}/{}/s3/aws4_request", ap.region()),
                    );
                    let resigned = ResignChunks::new(
                        metered,
                        caller.chunks.clone(),
                        outbound_key,
                        seed,
                        ending,
                        decoded_length,
                        failure.clone(),
                    );
                    let resigned = held_idle(resigned, state, client).boxed_unsync();
                    send_signed(state, ctx, parts, resigned, Some(failure), client).await
                }
                BodyPlan::UnsignedChunks {
                    checksum,
                    decoded_length,
                } => {
                    // Forwarded byte for byte, each byte once its framing was read and accepted;
                    // the trailer only once checked (nothing but the announced checksum).
                    let failure: FailureSlot = Arc::default();
                    let checked = CheckUnsignedChunks::new(metered, checksum, decoded_length, failure.clone());
                    let checked = held_idle(checked, state, client).boxed_unsync();
                    send_once(state, ctx, outgoing, checked, Some(failure), client).await
                }
                _ => send_once(state, ctx, outgoing, metered.boxed_unsync(), None, client).await,
            }
        }
    }
}

/// The body as it will go upstream.
enum Planned {
    /// Held in memory (sent again on a retry, when the method allows).
    Held(Bytes),
    /// The client's body, streamed once.
    Stream(Incoming),
}

/// GET, HEAD, PUT and DELETE may be sent again (S3's PUT object and part are idempotent in effect).
fn retries_allowed(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::PUT | http::Method::DELETE
    )
}

/// The outbound request, ready to be signed for each attempt.
struct Outgoing<'a> {
    head: http::request::Parts,
    /// What the signature covers: `https://{access point host}{path}?{query}`.
    signing_uri: String,
    payload: PayloadHash,
    credentials: &'a aws_credential_types::Credentials,
    region: &'a str,
    keys: &'a SigningKeyCache,
}

impl<'a> Outgoing<'a> {
    /// The decided head, addressed to the access point: Host is always the access point's host,
    /// and the connection always goes to the configured endpoint (nothing the client sent chooses
    /// where apgate connects).
    fn new(
        decided: OutboundHead,
        ap: &'a AccessPoint,
        endpoint: &Endpoint,
        credentials: &'a aws_credential_types::Credentials,
        keys: &'a SigningKeyCache,
    ) -> Result<Self, GatewayError> {
        let pq = &decided.path_and_query;
        let signing_uri = concat(&["https://", ap.host(), pq]);
        let connect = match endpoint {
            Endpoint::Aws => signing_uri.clone(),
            Endpoint::Custom(base) => {
                let scheme = base.scheme_str().unwrap_or("https");
                let authority = base.authority().map_or("", |a| a.as_str());
                concat(&[scheme, "://", authority, pq])
            }
        };
        let uri = http::Uri::from_maybe_shared(Bytes::from(connect))
            .map_err(|_| GatewayError::internal("the outbound URI does not parse"))?;
        let mut head = Request::new(()).into_parts().0;
        head.method = decided.method;
        head.uri = uri;
        head.headers = decided.headers;
        let host = HeaderValue::from_str(ap.host())
            .map_err(|_| GatewayError::internal("an access point host is not a header value"))?;
        head.headers.insert(header::HOST, host);
        Ok(Self {
            head,
            signing_uri,
            payload: decided.payload,
            credentials,
            region: ap.region(),
            keys,
        })
    }

    /// A signed copy of the head (a fresh `x-amz-date` for each attempt) and its signature.
    fn signed(&self, now: SystemTime) -> Result<(http::request::Parts, String), GatewayError> {
        let mut head = self.head.clone();
        let seed = sign_request(
            &mut head,
            &self.signing_uri,
            &self.payload,
            self.credentials,
            self.region,
            now,
            self.keys,
        )
        .map_err(|e| GatewayError::client(S3ErrorCode::InvalidArgument, e.to_string()))?;
        Ok((head, seed))
    }
}

fn concat(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.push_str(p);
    }
    out
}

/// Sends a request once (a body that streams, or one that may not be sent twice).
async fn send_once(
    state: &State,
    ctx: &mut Ctx,
    outgoing: Outgoing<'_>,
    body: body::ResponseBody,
    failure: Option<FailureSlot>,
    client: &ClientBody,
) -> Result<Response<UpstreamBody>, GatewayError> {
    let (parts, _) = outgoing.signed(SystemTime::now())?;
    send_signed(state, ctx, parts, body, failure, client).await
}

async fn send_signed(
    state: &State,
    ctx: &mut Ctx,
    parts: http::request::Parts,
    body: body::ResponseBody,
    failure: Option<FailureSlot>,
    client: &ClientBody,
) -> Result<Response<UpstreamBody>, GatewayError> {
    ctx.attempts = 1;
    let sent_at = Instant::now();
    let sent = state.upstream.send(Request::from_parts(parts, body)).await;
    // A refused chunk or trailer aborted the upstream request: the caller hears why, whatever the
    // upstream did.
    if let Some(failure) = failure.as_ref().and_then(|f| f.get()) {
        tracing::info!(error = %failure, request_id = %ctx.request_id, "aws-chunked body refused; upstream request aborted.");
        return Err(failure.to_gateway_error());
    }
    if sent.is_err() && client.idle.load(Ordering::Relaxed) {
        return Err(request_timeout());
    }
    if sent.is_err() && client.failed.load(Ordering::Relaxed) {
        return Err(incomplete_body());
    }
    let resp = sent.map_err(|e| upstream_failure(state, ctx, e))?;
    state
        .metrics
        .upstream_duration
        .with_label_values(&[ctx.access_point_label(), ctx.operation_label()])
        .observe(sent_at.elapsed().as_secs_f64());
    ctx.upstream_ms = Some(sent_at.elapsed().as_secs_f64() * 1000.0);
    Ok(resp)
}

/// The client's request body as it streams upstream: counted, and failed if the client stops
/// sending for `idle` (which sets `client.idle`) or breaks off (which sets `client.failed`).
fn metered_client_body(
    ctx: &Ctx,
    body: Incoming,
    idle: std::time::Duration,
    client: &ClientBody,
    received: Option<prometheus::IntCounter>,
) -> Metered<crate::body::IdleTimeout<Incoming>, impl FnOnce(u64, BodyEnd)> {
    let failed = client.failed.clone();
    let bytes_in = ctx.bytes_in.clone();
    let connection = ctx.connection.clone();
    let body = crate::body::IdleTimeout::new(body, idle).flagging(client.idle.clone());
    Metered::new(body, move |n, end| {
        if let Some(received) = received {
            received.inc_by(n);
        }
        bytes_in.fetch_add(n, Ordering::Relaxed);
        match end {
            BodyEnd::Complete => connection.body_completed(),
            BodyEnd::Failed => failed.store(true, Ordering::Relaxed),
            BodyEnd::Aborted => {}
        }
    })
}

/// A body that holds the client's bytes until it has checked them (a signed aws-chunked piece of
/// up to 64 KiB, an unsigned body's size line or its final chunk and trailer) fails as idle, like
/// the client's own body, once it has given the upstream nothing for the longer of
/// `client_body_idle_timeout` and `upstream.response_header_timeout`: the upstream's stall clock
/// does not run while a body waits on its client (`upstream::Progress`), so this bounds a client
/// that trickles what apgate holds, never idle itself, as the stall clock did before, with the
/// client blamed. A slow but steady client (a 64 KiB piece a minute, on the defaults) is not cut.
fn held_idle<B>(body: B, state: &State, client: &ClientBody) -> crate::body::IdleTimeout<B> {
    let limit = state
        .config
        .server
        .client_body_idle_timeout
        .max(state.config.upstream.response_header_timeout);
    crate::body::IdleTimeout::new(body, limit).flagging(client.idle.clone())
}

/// Reads a body into memory, at most `limit` bytes: `exact` when it must be exactly that long.
async fn read_body(
    state: &State,
    ctx: &Ctx,
    body: Incoming,
    limit: usize,
    exact: bool,
    received: Option<prometheus::IntCounter>,
    too_large: fn() -> GatewayError,
) -> Result<Bytes, GatewayError> {
    let client = ClientBody::default();
    let metered = metered_client_body(
        ctx,
        body,
        state.config.server.client_body_idle_timeout,
        &client,
        received,
    );
    // One allocation; each frame is copied in and dropped at once, so hyper reuses its read buffer
    // instead of the frames pinning it (what `collect` does).
    let mut buf = bytes::BytesMut::with_capacity(if exact { limit } else { limit.min(64 << 10) });
    let mut metered = std::pin::pin!(metered);
    loop {
        match metered.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if data.len() > limit - buf.len() {
                        return Err(if exact { incomplete_body() } else { too_large() });
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(_)) if client.idle.load(Ordering::Relaxed) => return Err(request_timeout()),
            Some(Err(_)) => return Err(incomplete_body()),
        }
    }
    if exact && buf.len() != limit {
        return Err(incomplete_body());
    }
    Ok(buf.freeze())
}

/// Reads a body that may be sent more than once: exactly its declared `len` bytes (at most
/// `replay_buffer_bytes`, which `retry::plan` checked).
async fn read_replay_body(
    state: &State,
    ctx: &Ctx,
    body: Incoming,
    len: u64,
    received: Option<prometheus::IntCounter>,
) -> Result<Bytes, GatewayError> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let limit = usize::try_from(len).map_err(|_| GatewayError::internal("a replay body over usize"))?;
    read_body(state, ctx, body, limit, true, received, incomplete_body).await
}

/// Reads a body apgate inspects (bounded), decodes and checks it ([`inspect_body`]), and makes the
/// outbound head describe the content forwarded: its length, its SHA-256 as the signed payload
/// hash, the trailer's checksum as a header. Returns the content and, for DeleteObjects, the route
/// of its keys, which it goes through. The bytes are not counted as received here: the caller
/// counts them once it knows the route.
#[allow(clippy::too_many_arguments)]
async fn read_inspected(
    state: &State,
    ctx: &Ctx,
    body: Incoming,
    fwd: &Forward,
    operation: Operation,
    caller: &CallerIdentity,
    announced: Option<&str>,
    head: &mut OutboundHead,
) -> Result<(Bytes, Option<Arc<Route>>), GatewayError> {
    fn too_large() -> GatewayError {
        GatewayError::client(S3ErrorCode::MalformedXML, "The request body is too large.")
    }
    let BodyPlan::Inspect { framing, length } = fwd.body else {
        return Err(GatewayError::internal("a body inspected without an inspection plan"));
    };
    let wire = match framing {
        Framing::Plain => {
            let limit = usize::try_from(length).map_err(|_| too_large())?;
            read_body(state, ctx, body, limit, true, None, too_large).await?
        }
        // The framing adds a chunk header per chunk and the trailer; twice the cap is plenty.
        _ => {
            let limit = usize::try_from(2 * MAX_INSPECTED_BODY).unwrap_or(usize::MAX);
            read_body(state, ctx, body, limit, false, None, too_large).await?
        }
    };
    let inspected = inspect_body(fwd, operation, &state.router, caller, announced, &wire)?;
    let sha = hex_lower(&sha2::Sha256::digest(&inspected.content));
    if let PayloadHash::Sha256(declared) = &caller.payload {
        if declared.as_str() != sha {
            return Err(GatewayError::client(
                S3ErrorCode::XAmzContentSHA256Mismatch,
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            ));
        }
    }
    head.payload = PayloadHash::parse(&sha).ok_or_else(|| GatewayError::internal("a SHA-256 that is not hex"))?;
    head.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(inspected.content.len()));
    if let Some((name, value)) = inspected.trailer_checksum {
        head.headers.insert(name, value);
    }
    Ok((inspected.content, inspected.route))
}

/// The counter of body bytes received from this caller for this access point.
fn received_bytes(state: &State, ctx: &Ctx) -> prometheus::IntCounter {
    state
        .metrics
        .received_bytes
        .with_label_values(&[ctx.identity_label(), ctx.access_point_label()])
}

/// Sends a request whose body apgate holds, again on the failures `retry` allows, with
/// full-jitter backoff, until an attempt succeeds, the attempts run out or the deadline nears.
/// Nothing has reached the client while this runs, so a retry is never visible to it.
async fn send_with_retries(
    state: &State,
    ctx: &mut Ctx,
    outgoing: &Outgoing<'_>,
    body: Bytes,
) -> Result<Response<UpstreamBody>, GatewayError> {
    let policy = state.config.upstream.retry;
    let first_sent = Instant::now();
    loop {
        ctx.attempts += 1;
        let (head, _) = outgoing.signed(SystemTime::now())?;
        let sent_at = Instant::now();
        let outcome = state
            .upstream
            .send(Request::from_parts(head, body::full(body.clone())))
            .await;
        if outcome.is_ok() {
            state
                .metrics
                .upstream_duration
                .with_label_values(&[ctx.access_point_label(), ctx.operation_label()])
                .observe(sent_at.elapsed().as_secs_f64());
        }
        let reason = match &outcome {
            Ok(resp) => retry::status_reason(resp.status()),
            Err(e) => retry::error_reason(e, &ctx.method),
        };
        let backoff = retry::jittered(retry::backoff_ceiling(ctx.attempts - 1, &policy), rand::random());
        let Some(reason) = reason.filter(|_| retry::may_retry(ctx.attempts, first_sent.elapsed(), backoff, &policy))
        else {
            ctx.upstream_ms = Some(first_sent.elapsed().as_secs_f64() * 1000.0);
            return outcome.map_err(|e| upstream_failure(state, ctx, e));
        };
        match outcome {
            Ok(resp) => {
                // The answer is not passed on: read what little there is of it, for its code.
                let status = resp.status();
                let code = drain_error(resp.into_body()).await;
                state
                    .metrics
                    .upstream_responses
                    .with_label_values(&[
                        ctx.access_point_label(),
                        status.as_str(),
                        code.as_deref().unwrap_or(NONE),
                    ])
                    .inc();
            }
            Err(e) => {
                state
                    .metrics
                    .upstream_errors
                    .with_label_values(&[ctx.access_point_label(), e.kind()])
                    .inc();
                tracing::info!(error = %e, request_id = %ctx.request_id, "Upstream exchange failed; retrying.");
            }
        }
        state
            .metrics
            .upstream_retries
            .with_label_values(&[ctx.access_point_label(), reason.as_str()])
            .inc();
        tracing::info!(
            request_id = %ctx.request_id,
            access_point = ctx.access_point_label(),
            attempt = ctx.attempts,
            reason = reason.as_str(),
            backoff_ms = backoff.as_secs_f64() * 1000.0,
            "Retrying the upstream request."
        );
        tokio::time::sleep(backoff).await;
    }
}

/// The most of a retried error answer apgate reads before dropping it (and its connection).
const MAX_DRAINED_ERROR: usize = 64 << 10;

/// Reads a bounded amount of an upstream error body and returns its S3 code.
async fn drain_error(body: UpstreamBody) -> Option<String> {
    let limited = http_body_util::Limited::new(body, MAX_DRAINED_ERROR);
    match tokio::time::timeout(std::time::Duration::from_secs(1), limited.collect()).await {
        Ok(Ok(collected)) => crate::s3::xml::error_fields(&collected.to_bytes())
            .ok()?
            .into_iter()
            .find(|(name, _)| name == "Code")
            .map(|(_, code)| {
                if crate::s3::xml::is_plain_code(code.trim()) {
                    code.trim().to_owned()
                } else {
                    "Other".to_owned()
                }
            }),
        _ => None,
    }
}

/// Counts and logs an exchange that produced no response, and says so to the client.
fn upstream_failure(state: &State, ctx: &Ctx, e: UpstreamError) -> GatewayError {
    state
        .metrics
        .upstream_errors
        .with_label_values(&[ctx.access_point_label(), e.kind()])
        .inc();
    tracing::warn!(error = %e, request_id = %ctx.request_id, access_point = ctx.access_point_label(), attempts = ctx.attempts, "Upstream exchange failed.");
    match e {
        UpstreamError::Timeout(_) => {
            GatewayError::upstream(S3ErrorCode::GatewayTimeout, "The upstream did not answer in time.")
        }
        _ => GatewayError::upstream(
            S3ErrorCode::BadGateway,
            "The upstream could not be reached or broke the exchange.",
        ),
    }
}

fn incomplete_body() -> GatewayError {
    GatewayError::client(
        S3ErrorCode::IncompleteBody,
        "You did not provide the number of bytes specified by the Content-Length HTTP header.",
    )
}

fn request_timeout() -> GatewayError {
    GatewayError::client(
        S3ErrorCode::RequestTimeout,
        "Your socket connection to the server was not read from or written to within the timeout period. Idle connections will be closed.",
    )
}
