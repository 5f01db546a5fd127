//! One request, phase by phase: parse → authenticate → route → rewrite → sign → forward →
//! respond → log/metrics. See ARCHITECTURE.md for the chart.
//!
//! **Architecture invariant:** the request body is never polled before the caller is
//! authenticated and the request routed, so hyper only sends `100 Continue` to callers we accept,
//! and a refused request never reaches the upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::app::{ListenerState, State};
use crate::body::{self, BodyEnd, Metered, ResponseBody};
use crate::error::{xml_escape_into, GatewayError, S3ErrorCode};
use crate::identity::{self, CallerIdentity};
use crate::metrics::NONE;
use crate::routing::{Route, Scope};
use crate::s3::addressing::{parse_target, AddressingError};
use crate::s3::{Operation, PayloadHash, Support};
use crate::signing::sign_request;

/// What is known about a request so far, for its metrics and its log line.
#[derive(Debug)]
struct Ctx {
    request_id: String,
    started: Instant,
    listener: Arc<str>,
    remote: SocketAddr,
    method: Method,
    head: bool,
    operation: Operation,
    identity: Option<Arc<str>>,
    bucket: Option<String>,
    access_point: Option<Arc<str>>,
}

impl Ctx {
    fn identity_label(&self) -> &str {
        self.identity.as_deref().unwrap_or(NONE)
    }

    fn access_point_label(&self) -> &str {
        self.access_point.as_deref().unwrap_or(NONE)
    }
}

/// The hyper service function of a data-plane listener.
pub async fn handle(
    state: Arc<State>,
    listener: Arc<ListenerState>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let mut ctx = Ctx {
        request_id: new_request_id(),
        started: Instant::now(),
        listener: listener.name.clone(),
        remote,
        method: req.method().clone(),
        head: req.method() == Method::HEAD,
        operation: Operation::Unknown,
        identity: None,
        bucket: None,
        access_point: None,
    };
    state.metrics.inflight.inc();
    let resp = match proxy(&state, &listener, &mut ctx, req).await {
        Ok(resp) => resp,
        Err(error) => {
            let resp = error_response(&state, &ctx, error);
            finish(&state, &ctx, resp.status(), 0, BodyEnd::Complete, None);
            resp
        }
    };
    Ok(resp)
}

async fn proxy(
    state: &Arc<State>,
    listener: &ListenerState,
    ctx: &mut Ctx,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let (parts, body) = req.into_parts();

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
    ctx.operation = Operation::classify(&parts.method, &target, &parts.headers);
    ctx.bucket = target.bucket.as_ref().map(|b| b.as_str().to_owned());

    // Authenticate, from the head alone.
    let head = identity::RequestHead {
        remote: ctx.remote.ip(),
        method: &parts.method,
        target: &target,
        headers: &parts.headers,
    };
    let caller = identity::authenticate(
        &listener.identity_methods,
        &state.verifier,
        &listener.sources,
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

    // Rewrite and sign.
    let outbound = crate::rewrite::rewrite(
        &parts.method,
        &parts.headers,
        &target,
        &ap,
        &state.config.upstream.endpoint,
    );
    let credentials = state.credentials.get().await.map_err(|e| {
        tracing::error!(error = %e, "No upstream credentials; refusing the request.");
        GatewayError::upstream(
            S3ErrorCode::ServiceUnavailable,
            "apgate has no credentials to sign the upstream request with.",
        )
    })?;
    let mut up_parts = Request::new(()).into_parts().0;
    up_parts.method = parts.method.clone();
    up_parts.uri = outbound.connect_uri;
    up_parts.headers = outbound.headers;
    sign_request(
        &mut up_parts,
        &outbound.signing_uri,
        &caller.payload,
        &credentials,
        ap.region(),
        SystemTime::now(),
    )
    .map_err(|e| GatewayError::client(S3ErrorCode::InvalidArgument, e.to_string()))?;

    // Forward: the inbound body streams upstream as the upstream client polls it.
    let received = state
        .metrics
        .received_bytes
        .with_label_values(&[ctx.identity_label(), ctx.access_point_label()]);
    let upstream_body = Metered::new(body, move |n, _| received.inc_by(n))
        .map_err(Into::into)
        .boxed_unsync();
    let up_req = Request::from_parts(up_parts, upstream_body);
    let sent_at = Instant::now();
    let up_resp = state.upstream.send(up_req).await.map_err(|e| {
        state
            .metrics
            .upstream_errors
            .with_label_values(&[ctx.access_point_label(), e.kind()])
            .inc();
        tracing::warn!(error = %e, request_id = %ctx.request_id, access_point = %ap, "Upstream exchange failed.");
        match e {
            crate::upstream::UpstreamError::Timeout(_) => {
                GatewayError::upstream(S3ErrorCode::GatewayTimeout, "The upstream did not answer in time.")
            }
            _ => GatewayError::upstream(
                S3ErrorCode::BadGateway,
                "The upstream could not be reached or broke the exchange.",
            ),
        }
    })?;
    state
        .metrics
        .upstream_duration
        .with_label_values(&[ctx.access_point_label(), ctx.operation.as_str()])
        .observe(sent_at.elapsed().as_secs_f64());

    // Respond: stream the upstream body back, counting it, and log when it ends.
    let (mut resp_parts, resp_body) = up_resp.into_parts();
    strip_hop_by_hop(&mut resp_parts.headers);
    let status = resp_parts.status;
    let upstream_request_id = resp_parts
        .headers
        .get("x-amz-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let state2 = state.clone();
    let done = clone_ctx(ctx);
    let metered = Metered::new(resp_body, move |n, end| {
        finish(&state2, &done, status, n, end, upstream_request_id.as_deref())
    });
    Ok(Response::from_parts(
        resp_parts,
        metered.map_err(Into::into).boxed_unsync(),
    ))
}

fn clone_ctx(c: &Ctx) -> Ctx {
    Ctx {
        request_id: c.request_id.clone(),
        started: c.started,
        listener: c.listener.clone(),
        remote: c.remote,
        method: c.method.clone(),
        head: c.head,
        operation: c.operation,
        identity: c.identity.clone(),
        bucket: c.bucket.clone(),
        access_point: c.access_point.clone(),
    }
}

/// Refuses payload modes apgate cannot forward safely.
fn check_payload(parts: &http::request::Parts, payload: &PayloadHash) -> Result<(), GatewayError> {
    match payload {
        PayloadHash::StreamingSigned { .. } | PayloadHash::StreamingSigV4a => {
            return Err(GatewayError::client(
                S3ErrorCode::NotImplemented,
                "Signed aws-chunked payloads (STREAMING-AWS4-*) are not supported by this apgate version; sign the payload hash or use UNSIGNED-PAYLOAD.",
            ))
        }
        PayloadHash::Sha256(_) | PayloadHash::Unsigned | PayloadHash::StreamingUnsignedTrailer => {}
    }
    let chunked = parts
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    let aws_chunked = matches!(payload, PayloadHash::StreamingUnsignedTrailer);
    if chunked && !aws_chunked {
        return Err(GatewayError::client(
            S3ErrorCode::MissingContentLength,
            "You must provide the Content-Length HTTP header (or an aws-chunked body with x-amz-decoded-content-length).",
        ));
    }
    if aws_chunked && !parts.headers.contains_key("x-amz-decoded-content-length") {
        return Err(GatewayError::client(
            S3ErrorCode::MissingContentLength,
            "aws-chunked bodies need x-amz-decoded-content-length.",
        ));
    }
    Ok(())
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
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
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
    let len = xml.len();
    let mut resp = Response::new(body::full(Bytes::from(xml)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        resp.headers_mut().insert("x-amz-request-id", v);
    }
    finish(state, ctx, StatusCode::OK, len as u64, BodyEnd::Complete, None);
    resp
}

fn error_response(state: &State, ctx: &Ctx, error: GatewayError) -> Response<ResponseBody> {
    let _ = state;
    tracing::debug!(request_id = %ctx.request_id, code = %error.code(), message = %error.message(), source = ?error.source(), "Request refused.");
    error.into_response(&ctx.request_id, ctx.head)
}

/// Records metrics and writes the access log line for a finished request.
fn finish(
    state: &State,
    ctx: &Ctx,
    status: StatusCode,
    bytes_out: u64,
    end: BodyEnd,
    upstream_request_id: Option<&str>,
) {
    let m = &state.metrics;
    m.inflight.dec();
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
    tracing::info!(
        target: "apgate::access",
        request_id = %ctx.request_id,
        listener = %ctx.listener,
        remote = %ctx.remote,
        identity = ctx.identity_label(),
        method = %ctx.method,
        operation = ctx.operation.as_str(),
        bucket = ctx.bucket.as_deref().unwrap_or(NONE),
        access_point = ctx.access_point_label(),
        status = status.as_u16(),
        bytes_out,
        complete = end == BodyEnd::Complete,
        duration_ms = ctx.started.elapsed().as_secs_f64() * 1000.0,
        upstream_request_id = upstream_request_id.unwrap_or(NONE),
        "request"
    );
}

fn new_request_id() -> String {
    format!("{:016X}", rand::random::<u64>())
}
