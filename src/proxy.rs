//! One request, phase by phase: parse → authenticate → route → rewrite → sign → forward →
//! respond → log/metrics. See ARCHITECTURE.md for the chart.
//!
//! **Architecture invariant:** the request body is never polled before the caller is
//! authenticated and the request routed, so hyper only sends `100 Continue` to callers we accept,
//! and a refused request never reaches the upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::app::{Gateway, ListenerState, State};
use crate::body::{self, BodyEnd, Metered, ResponseBody};
use crate::chunked::{ChunkKey, FailureSlot, ResignChunks};
use crate::config::KeyLogging;
use crate::error::{xml_escape_into, GatewayError, S3ErrorCode};
use crate::identity::{self, CallerIdentity};
use crate::metrics::NONE;
use crate::retry::{self, BodyPlan};
use crate::routing::{Route, Scope};
use crate::s3::addressing::AddressingStyle;
use crate::s3::addressing::{parse_target, AddressingError};
use crate::s3::amzdate;
use crate::s3::copy_source::CopySource;
use crate::s3::encoding::{uri_encode_into, Slash};
use crate::s3::headers::{
    KEEP_ALIVE, PROXY_CONNECTION, X_AMZN_REQUESTID, X_AMZ_COPY_SOURCE, X_AMZ_DECODED_CONTENT_LENGTH, X_AMZ_ID_2,
    X_AMZ_REQUEST_ID,
};
use crate::s3::{AccessPoint, BucketName, Operation, OperationClass, PayloadHash, S3Target, Support};
use crate::signing::sign_request;
use crate::upstream::{UpstreamBody, UpstreamError};

/// What is known about a request so far, for its metrics and its log line.
#[derive(Debug)]
struct Ctx {
    request_id: String,
    started: Instant,
    listener: Arc<str>,
    remote: SocketAddr,
    /// The subject of the client's verified certificate (TLS listeners that ask for one).
    client_certificate: Option<Arc<str>>,
    /// `http` or `https`, for URLs that point back at apgate.
    scheme: &'static str,
    method: Method,
    head: bool,
    operation: Operation,
    identity: Option<Arc<str>>,
    bucket: Option<String>,
    access_point: Option<Arc<str>>,
    /// The decoded object key, for the access log (logged as configured).
    key: Option<String>,
    key_logging: KeyLogging,
    /// The S3 error code of the answer, apgate's own or the upstream's.
    error_code: Option<String>,
    /// Request body bytes received so far (shared with the body as it streams).
    bytes_in: Arc<AtomicU64>,
    /// Upstream attempts made (0: nothing was sent upstream).
    attempts: u32,
    upstream_ms: Option<f64>,
    upstream_request_id: Option<HeaderValue>,
    upstream_id2: Option<HeaderValue>,
    /// Whether this request holds one of its identity's concurrency slots.
    identity_slot: bool,
}

impl Ctx {
    /// A stand-in left where a context was moved out: no allocation.
    fn hollow(&self) -> Self {
        Self {
            request_id: String::new(),
            started: self.started,
            listener: self.listener.clone(),
            remote: self.remote,
            client_certificate: None,
            scheme: self.scheme,
            method: Method::GET,
            head: self.head,
            operation: self.operation,
            identity: None,
            bucket: None,
            access_point: None,
            key: None,
            key_logging: self.key_logging,
            error_code: None,
            bytes_in: self.bytes_in.clone(),
            attempts: self.attempts,
            upstream_ms: None,
            upstream_request_id: None,
            upstream_id2: None,
            identity_slot: false,
        }
    }

    fn identity_label(&self) -> &str {
        self.identity.as_deref().unwrap_or(NONE)
    }

    fn access_point_label(&self) -> &str {
        self.access_point.as_deref().unwrap_or(NONE)
    }
}

/// The hyper service function of a data-plane listener.
pub async fn handle(
    gateway: Arc<Gateway>,
    listener_name: Arc<str>,
    remote: SocketAddr,
    client_certificate: Option<Arc<str>>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    // The state as of this request's start: a reload during it does not change it.
    let state = gateway.state();
    let Some(listener) = state.listeners.get(&*listener_name).cloned() else {
        let error = GatewayError::internal("the listener is no longer configured");
        return Ok(error.into_response(&new_request_id(), req.method() == Method::HEAD));
    };
    state.metrics.inflight.inc();
    let mut unanswered = Unanswered {
        state: &state,
        answered: false,
        ctx: Ctx {
            request_id: new_request_id(),
            started: Instant::now(),
            listener: listener.name.clone(),
            remote,
            client_certificate,
            scheme: listener.scheme,
            method: req.method().clone(),
            head: req.method() == Method::HEAD,
            operation: Operation::Unknown,
            identity: None,
            bucket: None,
            access_point: None,
            key: None,
            key_logging: state.config.access_log.key,
            error_code: None,
            bytes_in: Arc::default(),
            attempts: 0,
            upstream_ms: None,
            upstream_request_id: None,
            upstream_id2: None,
            identity_slot: false,
        },
    };
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, body) = req.into_parts();
    let mut unread_body = Some(body);
    let client_body_failed = Arc::new(AtomicBool::new(false));
    let limit = i64::try_from(state.config.server.max_concurrent_requests).unwrap_or(i64::MAX);
    let head_bytes = parts.method.as_str().len()
        + parts.uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + parts
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    let outcome = if parts.headers.contains_key(header::CONTENT_LENGTH)
        && parts.headers.contains_key(header::TRANSFER_ENCODING)
    {
        // Both framings at once is how requests are smuggled past proxies. hyper already frames such
        // a request by Transfer-Encoding and drops Content-Length (RFC 9112 §6.3), and apgate re-frames
        // every upstream request itself; this refusal stays as defence in depth.
        Err(GatewayError::client(
            S3ErrorCode::InvalidRequest,
            "A request may not carry both Content-Length and Transfer-Encoding.",
        ))
    } else if head_bytes > state.config.server.max_header_bytes {
        Err(GatewayError::client(
            S3ErrorCode::RequestHeaderSectionTooLarge,
            format!(
                "Your request header section exceeds the maximum allowed size ({} bytes).",
                state.config.server.max_header_bytes
            ),
        ))
    } else if state.metrics.inflight.get() > limit {
        Err(GatewayError::upstream(
            S3ErrorCode::SlowDown,
            "Please reduce your request rate (apgate is at its concurrency limit).",
        ))
    } else {
        proxy(
            &state,
            &listener,
            &mut unanswered.ctx,
            parts,
            &mut unread_body,
            &client_body_failed,
        )
        .await
    };
    unanswered.answered = true;
    let ctx = &mut unanswered.ctx;
    let mut resp = match outcome {
        Ok(resp) => resp,
        Err(error) => {
            ctx.error_code = Some(error.code().as_str().to_owned());
            let mut resp = error_response(&state, ctx, error);
            match unread_body.take() {
                Some(body) if has_body && !expects_continue => {
                    // The client is sending a body we refused. Closing now would make it fail with a
                    // broken pipe before it reads our answer; read and discard a bounded amount
                    // first, then close.
                    tokio::spawn(discard(body));
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Some(_) if has_body => {
                    // Expect: 100-continue: the client waits for our answer and sends nothing.
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Some(_) => {}
                None if has_body => {
                    // The body was (partly) streamed upstream: the connection cannot be reused.
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                None => {}
            }
            let len = resp.body().size_hint().exact().unwrap_or(0);
            finish(&state, ctx, resp.status(), len, BodyEnd::Complete);
            resp
        }
    };
    if gateway.is_draining() {
        // Shutting down: the client learns from this answer not to send another request on the
        // connection, which closes after it (app::Conn::serve).
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp)
}

/// A request being handled. hyper drops the handler when the client goes away before the answer
/// (while apgate waits on the upstream, or between retries); the request is then finished here:
/// counted and logged with status 499 (nginx's "client closed request"), and its concurrency slots
/// given back, which would otherwise stay taken for good.
struct Unanswered<'a> {
    state: &'a State,
    ctx: Ctx,
    answered: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.answered {
            let status = StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::BAD_REQUEST);
            finish(self.state, &self.ctx, status, 0, BodyEnd::Aborted);
        }
    }
}

/// The status logged and counted for requests the client abandoned before apgate answered.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

async fn proxy(
    state: &Arc<State>,
    listener: &ListenerState,
    ctx: &mut Ctx,
    parts: http::request::Parts,
    unread_body: &mut Option<Incoming>,
    client_body_failed: &Arc<AtomicBool>,
) -> Result<Response<ResponseBody>, GatewayError> {
    // Parse.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        return Err(GatewayError::client(
            S3ErrorCode::InvalidRequest,
            "The request target must be an absolute path, not an absolute URI.",
        ));
    }
    let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let target = parse_target(
        host,
        parts.uri.path(),
        parts.uri.query(),
        &state.config.addressing.virtual_host_domains,
    )
    .map_err(addressing_error)?;
    // Request headers smuggled in as `x-amz-*` query parameters (as some SigV2 presigners do) would
    // reach the upstream unchecked, e.g. a copy source apgate never rewrote or routed; refuse them.
    if let Some(p) = target.query.iter().find(|p| {
        p.key.len() > 6
            && p.key[..6].eq_ignore_ascii_case("x-amz-")
            && !crate::identity::sigv4::PRESIGN_PARAMS.contains(&p.key.as_str())
    }) {
        return Err(GatewayError::client(
            S3ErrorCode::InvalidArgument,
            format!(
                "The query parameter {:?} is not supported; send x-amz-* values as headers.",
                p.key
            ),
        ));
    }
    ctx.operation = Operation::classify(&parts.method, &target, &parts.headers);
    ctx.bucket = target.bucket.as_ref().map(|b| b.as_str().to_owned());
    ctx.key = target.key.clone();

    // Authenticate, from the head alone.
    let head = identity::RequestHead {
        remote: ctx.remote.ip(),
        client_certificate: ctx.client_certificate.as_deref(),
        method: &parts.method,
        target: &target,
        headers: &parts.headers,
    };
    let caller = identity::authenticate(
        &listener.identity_methods,
        &state.verifier,
        &listener.sources,
        &listener.certificates,
        &head,
        SystemTime::now(),
    )
    .inspect_err(|e| {
        state
            .metrics
            .auth_failures
            .with_label_values(&[&listener.name, e.code().as_str()])
            .inc();
    })?;
    ctx.identity = Some(caller.name.clone());
    if let Some(limit) = state.config.server.max_concurrent_requests_per_identity {
        if let Some(counter) = state.identity_inflight.get(&caller.name) {
            if counter.fetch_add(1, Ordering::AcqRel) >= limit {
                counter.fetch_sub(1, Ordering::AcqRel);
                return Err(GatewayError::client(
                    S3ErrorCode::SlowDown,
                    "Please reduce your request rate (this caller is at its concurrency limit).",
                ));
            }
            ctx.identity_slot = true;
        }
    }

    // Route.
    match ctx.operation.support() {
        Support::Forwarded => {}
        Support::Synthesized => return Ok(list_buckets(state, ctx, &caller)),
        Support::NotYet => {
            return Err(GatewayError::client(
                S3ErrorCode::NotImplemented,
                format!("{} is not supported by this apgate version.", ctx.operation.as_str()),
            ))
        }
        Support::NotThroughAccessPoints if ctx.operation == Operation::Unknown => {
            return Err(GatewayError::client(
                S3ErrorCode::MethodNotAllowed,
                "The specified method is not allowed against this resource.",
            ))
        }
        Support::NotThroughAccessPoints => return Err(GatewayError::client(
            S3ErrorCode::NotImplemented,
            "Access points do not support bucket management operations (creating, deleting or configuring buckets).",
        )),
    }
    check_payload(&parts, &caller.payload)?;
    let bucket = target
        .bucket
        .as_ref()
        .ok_or_else(|| GatewayError::internal("a forwarded operation without a bucket"))?;
    let scope = match (&target.key, ctx.operation.list_prefix(&target)) {
        (Some(key), _) => Scope::Key(key),
        (None, Some(prefix)) => Scope::ListPrefix(prefix),
        (None, None) => Scope::Bucket,
    };
    let route: &Route = state
        .router
        .route(&caller.name, bucket, scope, ctx.operation.class())
        .map_err(|denial| GatewayError::client(S3ErrorCode::AccessDenied, denial.message()))?;
    ctx.access_point = Some(Arc::from(route.access_point.name()));
    let ap = route.access_point.clone();

    if ctx.operation == Operation::GetBucketLocation {
        return Ok(bucket_location(state, ctx, ap.region()));
    }
    // A copy reads its source through the access point the caller's routes give for the source.
    let copy_source = match ctx.operation {
        Operation::CopyObject | Operation::UploadPartCopy => Some(copy_source_header(state, &caller, &parts, &ap)?),
        _ => None,
    };

    // Rewrite and sign.
    let outbound = crate::rewrite::rewrite(
        &parts.method,
        &parts.headers,
        &target,
        &ap,
        &state.config.upstream.endpoint,
    );
    let credentials = state.credentials.for_identity(&caller.name).get().await.map_err(|e| {
        tracing::error!(error = %e, "No upstream credentials; refusing the request.");
        GatewayError::upstream(
            S3ErrorCode::ServiceUnavailable,
            "apgate has no credentials to sign the upstream request with.",
        )
    })?;
    let mut head = Request::new(()).into_parts().0;
    head.method = parts.method.clone();
    head.uri = outbound.connect_uri;
    head.headers = outbound.headers;
    if let Some(value) = copy_source {
        head.headers.insert(X_AMZ_COPY_SOURCE.clone(), value);
    }
    let outgoing = Outgoing {
        head,
        signing_uri: &outbound.signing_uri,
        payload: &caller.payload,
        credentials: &credentials,
        region: ap.region(),
        keys: &state.signing_keys,
    };

    // The body. DeleteObjects names its keys in the body, so that (small) body is read and every
    // key checked against the routes first. A body that may be sent again (retry::plan) is read into
    // memory before the first attempt; everything else streams as the upstream polls it, once.
    let received = state
        .metrics
        .received_bytes
        .with_label_values(&[ctx.identity_label(), ctx.access_point_label()]);
    let body = unread_body
        .take()
        .ok_or_else(|| GatewayError::internal("the request body was taken twice"))?;
    let client_idle = Arc::new(AtomicBool::new(false));
    let plan = match ctx.operation {
        Operation::DeleteObjects => BodyPlan::Stream,
        _ => retry::plan(
            &parts.method,
            &caller.payload,
            &parts.headers,
            &state.config.upstream.retry,
        ),
    };
    let up_resp = if let BodyPlan::Replay { len } = plan {
        let bytes = read_replay_body(state, ctx, body, len, received).await?;
        send_with_retries(state, ctx, &outgoing, bytes).await?
    } else {
        let signed_at = SystemTime::now();
        let (up_parts, seed) = outgoing.into_signed(signed_at)?;
        let chunk_failure: FailureSlot = Arc::default();
        let idle = state.config.server.client_body_idle_timeout;
        let upstream_body = match &caller.payload {
            _ if ctx.operation == Operation::DeleteObjects => {
                let bytes = read_delete_objects(state, &caller, bucket, &ap, &parts, body).await?;
                received.inc_by(bytes.len() as u64);
                ctx.bytes_in.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                body::full(bytes)
            }
            PayloadHash::StreamingSigned { trailer } => {
                // Every chunk is checked against the caller's key and re-signed with apgate's,
                // chained from the seed signature just put on the upstream request.
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
                let metered = metered_client_body(ctx, body, idle, &client_idle, client_body_failed, received);
                ResignChunks::new(
                    metered,
                    caller.chunks.clone(),
                    outbound_key,
                    seed,
                    *trailer,
                    decoded_length(&parts)?,
                    chunk_failure.clone(),
                )
                .boxed_unsync()
            }
            _ => metered_client_body(ctx, body, idle, &client_idle, client_body_failed, received).boxed_unsync(),
        };

        // Forward, once.
        ctx.attempts = 1;
        let sent_at = Instant::now();
        let sent = state.upstream.send(Request::from_parts(up_parts, upstream_body)).await;
        // A refused chunk aborted the upstream request: the caller hears why, whatever the upstream did.
        if let Some(failure) = chunk_failure.get() {
            tracing::info!(error = %failure, request_id = %ctx.request_id, "Signed aws-chunked body refused; upstream request aborted.");
            return Err(failure.to_gateway_error());
        }
        if sent.is_err() && client_idle.load(Ordering::Relaxed) {
            return Err(request_timeout());
        }
        if sent.is_err() && client_body_failed.load(Ordering::Relaxed) {
            return Err(incomplete_body());
        }
        let resp = sent.map_err(|e| upstream_failure(state, ctx, e))?;
        state
            .metrics
            .upstream_duration
            .with_label_values(&[ctx.access_point_label(), ctx.operation.as_str()])
            .observe(sent_at.elapsed().as_secs_f64());
        ctx.upstream_ms = Some(sent_at.elapsed().as_secs_f64() * 1000.0);
        resp
    };

    // Respond: bodies that name the bucket are rewritten (they are small); everything else streams
    // back as is. Either way bytes are counted and the request is logged when the body ends.
    let (mut resp_parts, resp_body) = up_resp.into_parts();
    strip_hop_by_hop(&mut resp_parts.headers);
    // A Location header names the upstream (access point) URL: point it at apgate's, or drop it.
    if resp_parts.headers.contains_key(header::LOCATION) {
        match client_location(ctx.scheme, &parts, &target, bucket).and_then(|l| HeaderValue::from_str(&l).ok()) {
            Some(v) => {
                resp_parts.headers.insert(header::LOCATION, v);
            }
            None => {
                resp_parts.headers.remove(header::LOCATION);
            }
        }
    }
    let status = resp_parts.status;
    // Kept as header values (a reference count, not a copy) until the log line is written.
    let header = |name: &HeaderName| resp_parts.headers.get(name).filter(|v| v.to_str().is_ok()).cloned();
    ctx.upstream_request_id = header(&X_AMZ_REQUEST_ID).or_else(|| header(&X_AMZN_REQUESTID));
    ctx.upstream_id2 = header(&X_AMZ_ID_2);
    let mut error_code = None;
    let resp_body: ResponseBody = if ctx.head || !reveals_bucket(ctx.operation, &resp_parts) {
        crate::body::IdleTimeout::new(resp_body, state.config.upstream.body_idle_timeout).boxed_unsync()
    } else {
        let view_location = client_location(ctx.scheme, &parts, &target, bucket);
        let endpoint = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let view = crate::s3::xml::ClientView {
            bucket: bucket.as_str(),
            location: view_location.as_deref(),
            endpoint,
        };
        let rewritten = rewrite_response_body(ctx, resp_body, &view).await?;
        if !status.is_success() {
            error_code = s3_error_code(&rewritten);
        }
        resp_parts.headers.remove(header::TRANSFER_ENCODING);
        resp_parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
        body::full(rewritten)
    };
    state
        .metrics
        .upstream_responses
        .with_label_values(&[
            ctx.access_point_label(),
            status.as_str(),
            error_code.as_deref().unwrap_or(NONE),
        ])
        .inc();
    if !status.is_success() {
        ctx.error_code = error_code.clone();
    }
    let state2 = state.clone();
    // The context moves into the body's end callback; what stays behind is never read again
    // (the request is answered once this returns).
    let done = std::mem::replace(ctx, ctx.hollow());
    let metered = Metered::new(resp_body, move |n, end| finish(&state2, &done, status, n, end));
    Ok(Response::from_parts(resp_parts, metered.boxed_unsync()))
}

/// The outbound request head before signing, and what each attempt signs it with.
struct Outgoing<'a> {
    head: http::request::Parts,
    signing_uri: &'a str,
    payload: &'a PayloadHash,
    credentials: &'a aws_credential_types::Credentials,
    region: &'a str,
    keys: &'a crate::identity::sigv4::SigningKeyCache,
}

impl Outgoing<'_> {
    /// A signed copy of the head (a fresh `x-amz-date` for each attempt) and its signature.
    fn sign(&self, now: SystemTime) -> Result<(http::request::Parts, String), GatewayError> {
        let mut head = self.head.clone();
        let seed = self.sign_head(&mut head, now)?;
        Ok((head, seed))
    }

    /// The head itself, signed, for a request sent once.
    fn into_signed(mut self, now: SystemTime) -> Result<(http::request::Parts, String), GatewayError> {
        let mut head = std::mem::replace(&mut self.head, Request::new(()).into_parts().0);
        let seed = self.sign_head(&mut head, now)?;
        Ok((head, seed))
    }

    fn sign_head(&self, head: &mut http::request::Parts, now: SystemTime) -> Result<String, GatewayError> {
        sign_request(
            head,
            self.signing_uri,
            self.payload,
            self.credentials,
            self.region,
            now,
            self.keys,
        )
        .map_err(|e| GatewayError::client(S3ErrorCode::InvalidArgument, e.to_string()))
    }
}

/// The client's request body as it streams upstream: counted, and failed if the client stops
/// sending for `idle` (which sets `client_idle`) or breaks off (which sets `failed`).
fn metered_client_body(
    ctx: &Ctx,
    body: Incoming,
    idle: std::time::Duration,
    client_idle: &Arc<AtomicBool>,
    failed: &Arc<AtomicBool>,
    received: prometheus::IntCounter,
) -> Metered<crate::body::IdleTimeout<Incoming>, impl FnOnce(u64, BodyEnd)> {
    let failed = failed.clone();
    let bytes_in = ctx.bytes_in.clone();
    let body = crate::body::IdleTimeout::new(body, idle).flagging(client_idle.clone());
    Metered::new(body, move |n, end| {
        received.inc_by(n);
        bytes_in.fetch_add(n, Ordering::Relaxed);
        if end == BodyEnd::Failed {
            failed.store(true, Ordering::Relaxed);
        }
    })
}

/// Reads a body that may be sent more than once: exactly its declared `len` bytes (at most
/// `replay_buffer_bytes`, which `retry::plan` checked).
async fn read_replay_body(
    state: &State,
    ctx: &Ctx,
    body: Incoming,
    len: u64,
    received: prometheus::IntCounter,
) -> Result<Bytes, GatewayError> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let limit = usize::try_from(len).map_err(|_| GatewayError::internal("a replay body over usize"))?;
    let idle = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicBool::new(false));
    let metered = metered_client_body(
        ctx,
        body,
        state.config.server.client_body_idle_timeout,
        &idle,
        &failed,
        received,
    );
    // One allocation of exactly the declared length; each frame is copied in and dropped at once,
    // so hyper reuses its read buffer instead of the frames pinning it (what `collect` does).
    let mut buf = bytes::BytesMut::with_capacity(limit);
    let mut metered = std::pin::pin!(metered);
    loop {
        match metered.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if data.len() > limit - buf.len() {
                        return Err(incomplete_body());
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(_)) if idle.load(Ordering::Relaxed) => return Err(request_timeout()),
            Some(Err(_)) => return Err(incomplete_body()),
        }
    }
    if buf.len() == limit {
        Ok(buf.freeze())
    } else {
        Err(incomplete_body())
    }
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
        let (head, _) = outgoing.sign(SystemTime::now())?;
        let sent_at = Instant::now();
        let outcome = state
            .upstream
            .send(Request::from_parts(head, body::full(body.clone())))
            .await;
        if outcome.is_ok() {
            state
                .metrics
                .upstream_duration
                .with_label_values(&[ctx.access_point_label(), ctx.operation.as_str()])
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
        Ok(Ok(collected)) => s3_error_code(&collected.to_bytes()),
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

/// The `<Code>` of an S3 error body, if it is a plain identifier (so it is safe as a metric label:
/// S3's codes are a closed set of CamelCase words).
fn s3_error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    let code = &text[start..start + len];
    let plain = !code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric());
    Some(if plain { code.to_owned() } else { "Other".to_owned() })
}

/// The most a DeleteObjects body may be: 1000 keys of up to 1024 bytes, escaped, plus framing.
const MAX_DELETE_OBJECTS_BODY: usize = 8 << 20;
/// The most a response body apgate rewrites may be (a 1000-key listing is well under this).
const MAX_REWRITTEN_RESPONSE: usize = 32 << 20;

/// Whether a response body may name the upstream bucket or access point and must be rewritten.
fn reveals_bucket(op: Operation, parts: &http::response::Parts) -> bool {
    let xml = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.contains("xml"));
    let listing = matches!(
        op,
        Operation::ListObjects
            | Operation::ListObjectsV2
            | Operation::ListObjectVersions
            | Operation::ListMultipartUploads
            | Operation::CreateMultipartUpload
            | Operation::CompleteMultipartUpload
            | Operation::ListParts
    );
    xml && (listing || !parts.status.is_success())
}

/// The client-facing URL of the target object, for `Location` elements.
fn client_location(
    scheme: &str,
    parts: &http::request::Parts,
    target: &S3Target,
    bucket: &BucketName,
) -> Option<String> {
    let host = parts.headers.get(header::HOST)?.to_str().ok()?;
    let key = target.key.as_deref()?;
    let mut url = format!("{scheme}://{host}/");
    if target.style == AddressingStyle::Path {
        url.push_str(bucket.as_str());
        url.push('/');
    }
    uri_encode_into(&mut url, key.as_bytes(), Slash::Keep);
    Some(url)
}

async fn rewrite_response_body(
    ctx: &Ctx,
    body: UpstreamBody,
    view: &crate::s3::xml::ClientView<'_>,
) -> Result<Bytes, GatewayError> {
    let limited = http_body_util::Limited::new(body, MAX_REWRITTEN_RESPONSE);
    let bytes = limited.collect().await.map_err(|e| {
        tracing::warn!(error = %e, request_id = %ctx.request_id, "Reading an upstream XML body failed.");
        GatewayError::upstream(S3ErrorCode::BadGateway, "The upstream response could not be read.")
    })?;
    let bytes = bytes.to_bytes();
    match crate::s3::xml::rewrite_response(&bytes, view) {
        Ok(out) => Ok(Bytes::from(out)),
        Err(_) if bytes.is_empty() || !bytes.trim_ascii_start().starts_with(b"<") => Ok(bytes),
        Err(error) => {
            // A body we cannot parse might still name the access point: refuse rather than leak it.
            tracing::warn!(%error, request_id = %ctx.request_id, "Upstream XML body could not be rewritten.");
            Err(GatewayError::upstream(
                S3ErrorCode::BadGateway,
                "The upstream sent a response apgate could not read.",
            ))
        }
    }
}

/// The `x-amz-copy-source` to send upstream: the source's access point object ARN. The caller
/// must be allowed to read the source; source and destination must be in the same region.
fn copy_source_header(
    state: &State,
    caller: &CallerIdentity,
    parts: &http::request::Parts,
    dest: &AccessPoint,
) -> Result<HeaderValue, GatewayError> {
    let raw = parts
        .headers
        .get(&X_AMZ_COPY_SOURCE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| GatewayError::client(S3ErrorCode::InvalidArgument, "x-amz-copy-source is not valid ASCII."))?;
    let source = CopySource::parse(raw).map_err(|e| {
        GatewayError::client(
            S3ErrorCode::InvalidArgument,
            format!("Copy Source must mention the source bucket and key: {e}."),
        )
    })?;
    let route = state
        .router
        .route(
            &caller.name,
            &source.bucket,
            Scope::Key(&source.key),
            OperationClass::Read,
        )
        .map_err(|denial| {
            GatewayError::client(S3ErrorCode::AccessDenied, format!("{} (copy source)", denial.message()))
        })?;
    if route.access_point.region() != dest.region() {
        return Err(GatewayError::client(
            S3ErrorCode::InvalidRequest,
            "Copies through access points must stay within one region.",
        ));
    }
    HeaderValue::from_str(&source.to_access_point_header(&route.access_point))
        .map_err(|_| GatewayError::internal("the rewritten copy source is not a valid header"))
}

/// Reads a DeleteObjects body (bounded) and checks every key against the caller's routes: each must
/// be deletable, through the same access point as the request.
async fn read_delete_objects(
    state: &State,
    caller: &CallerIdentity,
    bucket: &BucketName,
    ap: &AccessPoint,
    parts: &http::request::Parts,
    body: Incoming,
) -> Result<Bytes, GatewayError> {
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_DELETE_OBJECTS_BODY) {
        return Err(GatewayError::client(
            S3ErrorCode::MalformedXML,
            "The DeleteObjects request body is too large.",
        ));
    }
    let bytes = http_body_util::Limited::new(body, MAX_DELETE_OBJECTS_BODY)
        .collect()
        .await
        .map_err(|_| {
            GatewayError::client(
                S3ErrorCode::MalformedXML,
                "The DeleteObjects request body could not be read or is too large.",
            )
        })?
        .to_bytes();
    let entries = crate::s3::xml::delete_objects_keys(&bytes).map_err(|e| {
        GatewayError::client(
            S3ErrorCode::MalformedXML,
            format!("The XML you provided was not well-formed: {e}."),
        )
    })?;
    if entries.is_empty() || entries.len() > 1000 {
        return Err(GatewayError::client(
            S3ErrorCode::MalformedXML,
            "DeleteObjects takes 1 to 1000 keys.",
        ));
    }
    for entry in &entries {
        let route = state
            .router
            .route(&caller.name, bucket, Scope::Key(&entry.key), OperationClass::Delete)
            .map_err(|denial| GatewayError::client(S3ErrorCode::AccessDenied, denial.message()))?;
        if route.access_point.arn() != ap.arn() {
            return Err(GatewayError::client(
                S3ErrorCode::AccessDenied,
                "Access Denied: the keys of one DeleteObjects request must all be reachable through the same access point.",
            ));
        }
    }
    Ok(bytes)
}

/// GetBucketLocation, answered from the access point's region (empty for us-east-1, as S3 does).
fn bucket_location(state: &Arc<State>, ctx: &Ctx, region: &str) -> Response<ResponseBody> {
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<LocationConstraint xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
    );
    if region != "us-east-1" {
        xml_escape_into(&mut xml, region);
    }
    xml.push_str("</LocationConstraint>");
    xml_response(state, ctx, xml)
}

fn xml_response(state: &Arc<State>, ctx: &Ctx, xml: String) -> Response<ResponseBody> {
    let len = xml.len();
    let mut resp = Response::new(body::full(Bytes::from(xml)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        resp.headers_mut().insert("x-amz-request-id", v);
    }
    finish(state, ctx, StatusCode::OK, len as u64, BodyEnd::Complete);
    resp
}

/// The most of a refused body apgate reads (and throws away) before closing the connection.
const MAX_DISCARD_BYTES: u64 = 64 << 20;
const MAX_DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads and drops a refused request body, bounded in bytes and time, so the client can finish
/// writing and read the refusal.
async fn discard(body: Incoming) {
    let mut body = std::pin::pin!(body);
    let mut read = 0u64;
    let _ = tokio::time::timeout(MAX_DISCARD_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                read += data.len() as u64;
                if read > MAX_DISCARD_BYTES {
                    break;
                }
            }
        }
    })
    .await;
}

/// Refuses payload modes apgate cannot forward safely.
fn check_payload(parts: &http::request::Parts, payload: &PayloadHash) -> Result<(), GatewayError> {
    if *payload == PayloadHash::StreamingSigV4a {
        return Err(GatewayError::client(
            S3ErrorCode::NotImplemented,
            "SigV4a streaming payloads (STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD) are not supported; use SigV4.",
        ));
    }
    let chunked = parts
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    let aws_chunked = matches!(
        payload,
        PayloadHash::StreamingUnsignedTrailer | PayloadHash::StreamingSigned { .. }
    );
    if chunked && !aws_chunked {
        return Err(GatewayError::client(
            S3ErrorCode::MissingContentLength,
            "You must provide the Content-Length HTTP header (or an aws-chunked body with x-amz-decoded-content-length).",
        ));
    }
    if aws_chunked {
        decoded_length(parts)?;
    }
    Ok(())
}

/// `x-amz-decoded-content-length`, required on every aws-chunked body.
fn decoded_length(parts: &http::request::Parts) -> Result<u64, GatewayError> {
    parts
        .headers
        .get(&X_AMZ_DECODED_CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            GatewayError::client(
                S3ErrorCode::MissingContentLength,
                "aws-chunked bodies need a numeric x-amz-decoded-content-length.",
            )
        })
}

fn addressing_error(e: AddressingError) -> GatewayError {
    match e {
        AddressingError::InvalidBucketName(_) => GatewayError::client(S3ErrorCode::InvalidBucketName, e.to_string()),
        AddressingError::InvalidPath | AddressingError::InvalidQuery => GatewayError::client(
            S3ErrorCode::InvalidURI,
            format!("Couldn't parse the specified URI: {e}."),
        ),
        AddressingError::NotOriginForm => GatewayError::client(S3ErrorCode::InvalidRequest, e.to_string()),
    }
}

/// Hop-by-hop response headers are the connection's, not the response's.
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    for h in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::UPGRADE,
    ] {
        headers.remove(h);
    }
}

/// ListBuckets, answered from the caller's routes: the client-facing bucket names it may use.
fn list_buckets(state: &Arc<State>, ctx: &Ctx, caller: &CallerIdentity) -> Response<ResponseBody> {
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListAllMyBucketsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Owner><ID>apgate</ID><DisplayName>",
    );
    xml_escape_into(&mut xml, &caller.name);
    xml.push_str("</DisplayName></Owner><Buckets>");
    for b in state.router.buckets_of(&caller.name) {
        xml.push_str("<Bucket><Name>");
        xml_escape_into(&mut xml, b.as_str());
        xml.push_str("</Name><CreationDate>1970-01-01T00:00:00.000Z</CreationDate></Bucket>");
    }
    xml.push_str("</Buckets></ListAllMyBucketsResult>");
    xml_response(state, ctx, xml)
}

fn error_response(state: &State, ctx: &Ctx, error: GatewayError) -> Response<ResponseBody> {
    let _ = state;
    tracing::debug!(request_id = %ctx.request_id, code = %error.code(), message = %error.message(), source = ?error.source(), "Request refused.");
    error.into_response(&ctx.request_id, ctx.head)
}

/// Records metrics and writes the access log line for a finished request.
fn finish(state: &State, ctx: &Ctx, status: StatusCode, bytes_out: u64, end: BodyEnd) {
    let m = &state.metrics;
    m.inflight.dec();
    if ctx.identity_slot {
        if let Some(counter) = ctx.identity.as_ref().and_then(|id| state.identity_inflight.get(id)) {
            counter.fetch_sub(1, Ordering::AcqRel);
        }
    }
    m.requests
        .with_label_values(&[
            ctx.identity_label(),
            ctx.access_point_label(),
            ctx.operation.as_str(),
            status.as_str(),
        ])
        .inc();
    m.request_duration
        .with_label_values(&[ctx.access_point_label(), ctx.operation.as_str()])
        .observe(ctx.started.elapsed().as_secs_f64());
    if ctx.access_point.is_some() {
        m.sent_bytes
            .with_label_values(&[ctx.identity_label(), ctx.access_point_label()])
            .inc_by(bytes_out);
    }
    let key: std::borrow::Cow<'_, str> = match (ctx.key.as_deref(), ctx.key_logging) {
        (None, _) | (Some(_), KeyLogging::Omitted) => NONE.into(),
        (Some(k), KeyLogging::Full) => k.into(),
        (Some(k), KeyLogging::Hashed) => {
            use sha2::Digest;
            crate::s3::encoding::hex_lower(&sha2::Sha256::digest(k.as_bytes())[..8]).into()
        }
    };
    crate::access_log::Record {
        request_id: &ctx.request_id,
        listener: &ctx.listener,
        remote: ctx.remote,
        identity: ctx.identity_label(),
        method: ctx.method.as_str(),
        operation: ctx.operation.as_str(),
        bucket: ctx.bucket.as_deref().unwrap_or(NONE),
        key: &key,
        access_point: ctx.access_point_label(),
        status: status.as_u16(),
        error_code: ctx.error_code.as_deref().unwrap_or(NONE),
        bytes_in: ctx.bytes_in.load(Ordering::Relaxed),
        bytes_out,
        complete: end == BodyEnd::Complete,
        duration_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
        attempts: ctx.attempts,
        upstream_ms: ctx.upstream_ms.unwrap_or(0.0),
        upstream_request_id: header_str(ctx.upstream_request_id.as_ref()),
        upstream_id2: header_str(ctx.upstream_id2.as_ref()),
    }
    .emit();
}

fn header_str(value: Option<&HeaderValue>) -> &str {
    value.and_then(|v| v.to_str().ok()).unwrap_or(NONE)
}

/// 16 uppercase hex digits, like S3's own request ids.
fn new_request_id() -> String {
    let mut id = String::with_capacity(16);
    crate::s3::encoding::push_hex(
        &mut id,
        &rand::random::<u64>().to_be_bytes(),
        crate::s3::encoding::HEX_UPPER,
    );
    id
}
