//! Responding: the upstream's answer made the client's, and the answers apgate gives itself
//! (ListBuckets, GetBucketLocation, refusals). docs/SEMANTICS.md ("What an answer shows") is the
//! contract: a client sees only what the model gives the operation's answer, with the bucket and
//! URLs it used, no owner ids or KMS key ARNs, apgate's request id; every error is written by
//! apgate, with the upstream's code, S3's documented message and only details checked against the
//! client's own request.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;

use super::record::Ctx;
use crate::body::{self, ResponseBody};
use crate::error::{xml_escape_into, GatewayError, RelayedError, S3ErrorCode};
use crate::metrics::NONE;
use crate::s3::addressing::AddressingStyle;
use crate::s3::encoding::{uri_encode_into, Slash};
use crate::s3::headers::{X_AMZN_REQUESTID, X_AMZ_EXPIRATION, X_AMZ_ID_2, X_AMZ_REQUEST_ID};
use crate::s3::operation::{self, Answer, Spec};
use crate::s3::xml::{self, ClientView, Sanitized};
use crate::s3::{BucketName, S3Target};
use crate::state::State;
use crate::upstream::UpstreamBody;
use std::sync::{Arc, OnceLock};

/// The most an XML answer apgate rewrites may be (a 1000-key listing is well under this).
const MAX_REWRITTEN_RESPONSE: usize = 32 << 20;

/// The most of an upstream error document apgate reads (S3's are well under 2 KiB).
const MAX_ERROR_BODY: usize = 64 << 10;

/// Upstream error codes that mean apgate's own request was wrong: its signature, credentials,
/// clock or endpoint. The client did nothing wrong (its request passed apgate's checks), so it
/// gets `500 InternalError`; apgate logs the upstream's account of it and counts it
/// (`apgate_upstream_responses_total{code}`), which deploy/prometheus/alerts.yml alerts on.
pub(crate) const APGATE_FAULTS: &[&str] = &[
    "AuthorizationHeaderMalformed",
    "AuthorizationQueryParametersError",
    "ExpiredToken",
    "IllegalLocationConstraintException",
    "InvalidAccessKeyId",
    "InvalidSecurity",
    "InvalidToken",
    "MissingSecurityHeader",
    "PermanentRedirect",
    "Redirect",
    "RequestTimeTooSkewed",
    "SignatureDoesNotMatch",
    "TemporaryRedirect",
    "TokenRefreshRequired",
];

/// Fields of an upstream error apgate writes to its log. The others (a canonical request, a string
/// to sign, a token, a signature, an argument's value) may hold apgate's credentials: only their
/// names are logged.
const LOGGED_ERROR_FIELDS: &[&str] = &[
    "AWSAccessKeyId",
    "Code",
    "ActualObjectSize",
    "ArgumentName",
    "Bucket",
    "BucketName",
    "Condition",
    "Endpoint",
    "HostId",
    "Key",
    "MaxAllowedSkewMilliseconds",
    "Message",
    "Method",
    "PartNumber",
    "RangeRequested",
    "Region",
    "RequestTime",
    "Resource",
    "ResourceType",
    "ServerTime",
    "UploadId",
    "VersionId",
];

/// What the client sees of the request it sent, for URLs and details in answers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientSide<'a> {
    pub(crate) target: &'a S3Target,
    pub(crate) bucket: &'a BucketName,
    /// The client's Host header.
    pub(crate) host: Option<&'a str>,
    /// The client's Range header.
    pub(crate) range: Option<&'a str>,
}

/// The upstream's answer, made the client's.
pub(crate) async fn upstream_answer(
    state: &State,
    ctx: &mut Ctx,
    client: ClientSide<'_>,
    up_resp: Response<UpstreamBody>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let (parts, resp_body) = up_resp.into_parts();
    let status = parts.status;
    // Kept as header values (a reference count, not a copy) until the log line is written.
    let header = |name: &HeaderName| parts.headers.get(name).filter(|v| v.to_str().is_ok()).cloned();
    ctx.upstream_request_id = header(&X_AMZ_REQUEST_ID).or_else(|| header(&X_AMZN_REQUESTID));
    ctx.upstream_id2 = header(&X_AMZ_ID_2);
    if status.is_informational() || status.as_u16() > 599 {
        return Err(GatewayError::upstream(
            S3ErrorCode::BadGateway,
            "The upstream sent an answer apgate could not read.",
        ));
    }
    let spec = ctx.operation.map(operation::Operation::spec);
    let headers = answer_headers(ctx.scheme, &ctx.request_id, client, spec, &parts.headers);
    // Built only for the answers that may carry an error (a success relayed as it is needs none).
    let errors = || ErrorContext::new(state, ctx, client);

    if !(status.is_success() || status == StatusCode::NOT_MODIFIED) {
        let document = if ctx.is_head() {
            Bytes::new()
        } else {
            read_bounded(state, resp_body, MAX_ERROR_BODY).await.unwrap_or_default()
        };
        let error = errors().relay(status, &document);
        ctx.error_code = Some(error.code().to_owned());
        return Ok(error_answer(error, ctx, status, headers));
    }

    let answer = spec.map_or(Answer::None, |s| s.answer);
    let mut rewritten = None;
    let body = match answer {
        _ if ctx.is_head() || status == StatusCode::NOT_MODIFIED => {
            body::IdleTimeout::new(resp_body, state.config.upstream.body_idle_timeout).boxed_unsync()
        }
        Answer::Blob => body::IdleTimeout::new(resp_body, state.config.upstream.body_idle_timeout).boxed_unsync(),
        // The model gives the answer no body: whatever an upstream sends there is not shown.
        Answer::None => {
            rewritten = Some(0);
            body::empty()
        }
        Answer::Xml if slow_answer(ctx.operation) => {
            // S3 sends the head at once and white space while it copies: so does apgate, and
            // the document (or the error it turned out to be) at the end.
            count_upstream_answer(state, ctx, status, None);
            let mut resp = Response::new(
                SlowAnswer::new(
                    body::IdleTimeout::new(resp_body, state.config.upstream.body_idle_timeout),
                    errors(),
                    spec.map_or(&[][..], |s| s.response_elements),
                    ctx.late_error_code.clone(),
                )
                .boxed_unsync(),
            );
            *resp.headers_mut() = headers;
            resp.headers_mut().remove(header::CONTENT_LENGTH);
            return Ok(resp);
        }
        Answer::Xml => {
            let document = read_bounded(state, resp_body, MAX_REWRITTEN_RESPONSE)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, request_id = %ctx.request_id, "Reading an upstream XML answer failed.");
                    GatewayError::upstream(S3ErrorCode::BadGateway, "The upstream answer could not be read.")
                })?;
            if document.trim_ascii().is_empty() {
                rewritten = Some(0);
                body::empty()
            } else {
                let errors = errors();
                match errors.sanitize(&document, spec.map_or(&[][..], |s| s.response_elements)) {
                    Ok(Sanitized::Document(out)) => {
                        rewritten = Some(out.len());
                        body::full(out)
                    }
                    // An error document with a 200: relayed like any other error, with the 200.
                    Ok(Sanitized::Error) => {
                        let error = errors.relay(status, &document);
                        ctx.error_code = Some(error.code().to_owned());
                        return Ok(error_answer(error, ctx, status, headers));
                    }
                    Err(error) => {
                        // An answer apgate cannot read might name anything: refuse rather than pass it on.
                        tracing::warn!(%error, request_id = %ctx.request_id, "An upstream XML answer could not be read.");
                        return Err(GatewayError::upstream(
                            S3ErrorCode::BadGateway,
                            "The upstream sent an answer apgate could not read.",
                        ));
                    }
                }
            }
        }
    };
    count_upstream_answer(state, ctx, status, None);
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    if let Some(len) = rewritten {
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Ok(resp)
}

/// Operations S3 answers slowly, keeping the connection alive with white space until the answer
/// (or an error document) is ready.
fn slow_answer(op: Option<operation::Operation>) -> bool {
    use operation::Operation as Op;
    matches!(
        op,
        Some(Op::CopyObject | Op::UploadPartCopy | Op::CompleteMultipartUpload)
    )
}

fn count_upstream_answer(state: &State, ctx: &Ctx, status: StatusCode, code: Option<&str>) {
    state
        .metrics
        .upstream_responses
        .with_label_values(&[ctx.access_point_label(), status.as_str(), code.unwrap_or(NONE)])
        .inc();
}

/// Reads a whole upstream body, at most `limit` bytes and never idle for longer than the upstream
/// body idle timeout.
async fn read_bounded(state: &State, body: UpstreamBody, limit: usize) -> Result<Bytes, GatewayError> {
    let idle = body::IdleTimeout::new(body, state.config.upstream.body_idle_timeout);
    let collected = http_body_util::Limited::new(idle, limit)
        .collect()
        .await
        .map_err(|e| GatewayError::upstream(S3ErrorCode::BadGateway, format!("the upstream body: {e}")))?;
    Ok(collected.to_bytes())
}

/// The headers of the upstream's answer a client may see (the model's for the operation, and
/// HTTP's own, less those that name the upstream side) in the upstream's order, a `Location`
/// pointed at apgate, and apgate's request id in place of the upstream's. A new map: filtering the
/// upstream's in place costs more (each removal moves entries and their indices; measured).
fn answer_headers(
    scheme: &str,
    request_id: &str,
    client: ClientSide<'_>,
    spec: Option<&Spec>,
    upstream: &HeaderMap,
) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(upstream.len() + 1);
    for (name, value) in upstream {
        let shown = match spec {
            Some(spec) => spec.shows_response_header(name.as_str()),
            None => operation::is_http_response_header(name.as_str()),
        };
        if !shown || name == header::LOCATION {
            continue;
        }
        if name == X_AMZ_EXPIRATION {
            // `expiry-date="...", rule-id="..."`: the rule's id is the bucket owner's text.
            if let Some(v) = expiry_date_only(value) {
                out.append(name.clone(), v);
            }
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if upstream.contains_key(header::LOCATION) {
        if let Some(v) = client_location(scheme, client).and_then(|l| HeaderValue::from_str(&l).ok()) {
            out.insert(header::LOCATION, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        out.insert(X_AMZ_REQUEST_ID.clone(), v);
    }
    out
}

/// `x-amz-expiration` without its `rule-id` (the bucket's lifecycle rule's name).
fn expiry_date_only(value: &HeaderValue) -> Option<HeaderValue> {
    let text = value.to_str().ok()?;
    let date = text.split(", rule-id=").next().filter(|d| {
        // `expiry-date="` alone ends with its opening quote: no date, and no slice to take.
        d.len() > 13 && d.starts_with("expiry-date=\"") && d.ends_with('"') && !d[13..d.len() - 1].contains('"')
    })?;
    HeaderValue::from_str(date).ok()
}

/// What apgate needs to answer an upstream error (or sanitize an answer) in its own words, owned,
/// so an answer's body can do it after the head went out.
#[derive(Debug)]
struct ErrorContext {
    request_id: String,
    access_point: String,
    upstream_request_id: Option<HeaderValue>,
    metrics: crate::metrics::Metrics,
    /// apgate's credentials, kept out of the log whatever field an upstream quotes them in.
    secrets: Vec<crate::secret::Secret>,
    echo: Echo,
}

/// What of the client's own request an error may show back.
#[derive(Debug, Clone)]
struct Echo {
    key: Option<String>,
    bucket: String,
    location: Option<String>,
    upload_id: Option<String>,
    version_id: Option<String>,
    range: Option<String>,
}

impl ErrorContext {
    fn new(state: &State, ctx: &Ctx, client: ClientSide<'_>) -> Self {
        let held = ctx
            .identity
            .as_deref()
            .and_then(|identity| state.credentials.for_identity(identity).held());
        let secrets = held
            .as_deref()
            .map(|c| [c.session_token().unwrap_or(""), c.secret_access_key()])
            .into_iter()
            .flatten()
            .filter(|s| s.len() >= 8)
            .map(crate::secret::Secret::new)
            .collect();
        Self {
            request_id: ctx.request_id.clone(),
            access_point: ctx.access_point_label().to_owned(),
            upstream_request_id: ctx.upstream_request_id.clone(),
            metrics: state.metrics.clone(),
            secrets,
            echo: Echo {
                key: client.target.key.clone(),
                bucket: client.bucket.as_str().to_owned(),
                location: client_location(ctx.scheme, client),
                upload_id: client.target.param("uploadId").map(str::to_owned),
                version_id: client.target.param("versionId").map(str::to_owned),
                range: client.range.map(str::to_owned),
            },
        }
    }

    fn sanitize(&self, document: &[u8], elements: &[&str]) -> Result<Sanitized, xml::XmlError> {
        let view = ClientView {
            bucket: &self.echo.bucket,
            location: self.echo.location.as_deref(),
        };
        xml::sanitize_answer(document, elements, &view)
    }

    /// The upstream's error document (empty for HEAD), as apgate answers it: logged, counted.
    fn relay(&self, status: StatusCode, document: &[u8]) -> RelayedError {
        let fields = xml::error_fields(document).unwrap_or_default();
        let upstream_code = fields
            .iter()
            .find(|(n, _)| n == "Code")
            .map(|(_, v)| v.trim())
            .filter(|c| xml::is_plain_code(c))
            .map(str::to_owned);
        self.metrics
            .upstream_responses
            .with_label_values(&[
                &self.access_point,
                status.as_str(),
                upstream_code.as_deref().unwrap_or("Other"),
            ])
            .inc();
        let logged: Vec<String> = fields
            .iter()
            .map(|(name, value)| {
                if LOGGED_ERROR_FIELDS.contains(&name.as_str()) {
                    let value = self
                        .secrets
                        .iter()
                        .fold(value.clone(), |v, secret| v.replace(secret.expose(), "[redacted]"));
                    format!("{name}={}", value.chars().take(512).collect::<String>())
                } else {
                    name.clone()
                }
            })
            .collect();
        let code = upstream_code
            .clone()
            .unwrap_or_else(|| fallback_code(status).to_owned());
        // A redirect (any: 304 is not an error) means apgate addressed the wrong endpoint or region.
        let fault = APGATE_FAULTS.contains(&code.as_str()) || status.is_redirection();
        if fault {
            tracing::error!(
                request_id = %self.request_id,
                access_point = %self.access_point,
                status = status.as_u16(),
                upstream_code = %code,
                upstream_request_id = ?self.upstream_request_id,
                fields = ?logged,
                "The upstream refused apgate's own request (signature, credentials, clock or endpoint): answered as an internal error."
            );
            return RelayedError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                S3ErrorCode::InternalError.as_str(),
                operation::error_message("InternalError").unwrap_or("We encountered an internal error."),
            );
        }
        tracing::debug!(
            request_id = %self.request_id,
            access_point = %self.access_point,
            status = status.as_u16(),
            upstream_code = %code,
            upstream_request_id = ?self.upstream_request_id,
            fields = ?logged,
            "Upstream error relayed."
        );
        let message = operation::error_message(&code).unwrap_or("The request failed.");
        relay_details(RelayedError::new(status, &code, message), &fields, &self.echo)
    }
}

/// An error answer: apgate's document, and of the upstream's headers only the model's `x-amz-*`
/// ones (a delete marker's `x-amz-delete-marker` and version id on a 404), and only when the
/// status is the upstream's.
fn error_answer(error: RelayedError, ctx: &Ctx, status: StatusCode, headers: HeaderMap) -> Response<ResponseBody> {
    let same_status = error.status() == status;
    let mut resp = error.into_response(&ctx.request_id, ctx.is_head());
    if same_status {
        for (name, value) in &headers {
            if name.as_str().starts_with("x-amz-")
                && !name.as_str().starts_with("x-amz-meta-")
                && *name != X_AMZ_REQUEST_ID
            {
                resp.headers_mut().append(name.clone(), value.clone());
            }
        }
    }
    resp
}

/// The declaration a slow answer starts with, sent at once.
const XML_DECLARATION: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";

pin_project_lite::pin_project! {
    /// A slow XML answer (CopyObject, UploadPartCopy, CompleteMultipartUpload): apgate's XML
    /// declaration at once, a space for every piece of white space the upstream sends while it
    /// works (so the client's read timeout does not fire), then the document made the client's, or
    /// apgate's error document if the upstream's turned out to be one (the status stays 200, as
    /// S3's does). Holds at most [`MAX_REWRITTEN_RESPONSE`] of the upstream's document.
    struct SlowAnswer<B> {
        #[pin]
        inner: B,
        errors: ErrorContext,
        elements: &'static [&'static str],
        document: bytes::BytesMut,
        started: bool,
        done: bool,
        late_error_code: Arc<OnceLock<String>>,
    }
}

impl<B> SlowAnswer<B> {
    fn new(
        inner: B,
        errors: ErrorContext,
        elements: &'static [&'static str],
        late_error_code: Arc<OnceLock<String>>,
    ) -> Self {
        Self {
            inner,
            errors,
            elements,
            document: bytes::BytesMut::new(),
            started: false,
            done: false,
            late_error_code,
        }
    }
}

/// An XML document without its declaration (apgate sent its own first).
fn without_declaration(xml: &[u8]) -> &[u8] {
    let xml = xml.trim_ascii_start();
    match xml.strip_prefix(b"<?xml") {
        Some(rest) => rest
            .windows(2)
            .position(|w| w == b"?>")
            .map_or(xml, |end| rest[end + 2..].trim_ascii_start()),
        None => xml,
    }
}

impl<B> http_body::Body for SlowAnswer<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::body::BoxError>,
{
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        let mut this = self.project();
        if !*this.started {
            *this.started = true;
            return Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(XML_DECLARATION)))));
        }
        if *this.done {
            return Poll::Ready(None);
        }
        loop {
            match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    if this.document.len() + data.len() > MAX_REWRITTEN_RESPONSE {
                        return Poll::Ready(Some(Err("the upstream answer is too long".into())));
                    }
                    this.document.extend_from_slice(&data);
                    // Still waiting for the document: keep the client's connection alive.
                    if !data.is_empty() && !without_declaration(this.document).starts_with(b"<") {
                        return Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(b" ")))));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    *this.done = true;
                    let relay = |status| {
                        let error = this.errors.relay(status, this.document);
                        let _ = this.late_error_code.set(error.code().to_owned());
                        error.to_xml(&this.errors.request_id)
                    };
                    let out = match this.errors.sanitize(this.document, this.elements) {
                        Ok(Sanitized::Document(out)) => out,
                        Ok(Sanitized::Error) => relay(StatusCode::OK).into_bytes(),
                        Err(error) => {
                            tracing::warn!(%error, request_id = %this.errors.request_id, "An upstream XML answer could not be read.");
                            // The 200 is out: the client learns of the failure from the document.
                            relay(StatusCode::BAD_GATEWAY).into_bytes()
                        }
                    };
                    let out = Bytes::copy_from_slice(without_declaration(&out));
                    return Poll::Ready(Some(Ok(http_body::Frame::data(out))));
                }
            }
        }
    }
}

/// The code of an error answer without a readable document (a HEAD, a load balancer's page).
fn fallback_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        403 => "AccessDenied",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "OperationAborted",
        411 => "MissingContentLength",
        412 => "PreconditionFailed",
        416 => "InvalidRange",
        503 => "ServiceUnavailable",
        500..=599 => "InternalError",
        300..=399 => "PermanentRedirect",
        _ => "InvalidRequest",
    }
}

/// The details of an upstream error a client may see: each checked against the client's own
/// request, or of a form that cannot carry anything else (a number, a header name).
fn relay_details(mut error: RelayedError, fields: &[(String, String)], echo: &Echo) -> RelayedError {
    let digits = |v: &str| !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit());
    for (name, value) in fields {
        let value = value.trim();
        let detail: Option<(&'static str, String)> = match name.as_str() {
            "Key" => echo.key.clone().map(|k| ("Key", k)),
            "BucketName" => Some(("BucketName", echo.bucket.clone())),
            "UploadId" if echo.upload_id.as_deref() == Some(value) => Some(("UploadId", value.to_owned())),
            "VersionId" if echo.version_id.as_deref() == Some(value) => Some(("VersionId", value.to_owned())),
            "RangeRequested" if echo.range.as_deref() == Some(value) => Some(("RangeRequested", value.to_owned())),
            "ActualObjectSize" if digits(value) => Some(("ActualObjectSize", value.to_owned())),
            "PartNumber" if digits(value) => Some(("PartNumber", value.to_owned())),
            "MinSizeAllowed" if digits(value) => Some(("MinSizeAllowed", value.to_owned())),
            "ProposedSize" if digits(value) => Some(("ProposedSize", value.to_owned())),
            "MaxSizeAllowed" if digits(value) => Some(("MaxSizeAllowed", value.to_owned())),
            "Condition"
                if !value.is_empty()
                    && value.len() <= 64
                    && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
            {
                Some(("Condition", value.to_owned()))
            }
            "Method" if !value.is_empty() && value.len() <= 16 && value.bytes().all(|b| b.is_ascii_uppercase()) => {
                Some(("Method", value.to_owned()))
            }
            "ResourceType"
                if !value.is_empty() && value.len() <= 32 && value.bytes().all(|b| b.is_ascii_alphabetic()) =>
            {
                Some(("ResourceType", value.to_owned()))
            }
            _ => None,
        };
        if let Some((name, value)) = detail {
            error = error.with_detail(name, value);
        }
    }
    error
}

/// The client-facing URL of the target object, for `Location`.
fn client_location(scheme: &str, client: ClientSide<'_>) -> Option<String> {
    let host = client.host?;
    let key = client.target.key.as_deref()?;
    let mut url = format!("{scheme}://{host}/");
    if client.target.style == AddressingStyle::Path {
        url.push_str(client.bucket.as_str());
        url.push('/');
    }
    uri_encode_into(&mut url, key.as_bytes(), Slash::Keep);
    Some(url)
}

/// ListBuckets, answered from the caller's routes: the client-facing bucket names it may use.
pub(crate) fn list_buckets(ctx: &Ctx, caller: &str, buckets: &[BucketName]) -> Response<ResponseBody> {
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListAllMyBucketsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Owner><ID>apgate</ID><DisplayName>",
    );
    xml_escape_into(&mut xml, caller);
    xml.push_str("</DisplayName></Owner><Buckets>");
    for b in buckets {
        xml.push_str("<Bucket><Name>");
        xml_escape_into(&mut xml, b.as_str());
        xml.push_str("</Name><CreationDate>1970-01-01T00:00:00.000Z</CreationDate></Bucket>");
    }
    xml.push_str("</Buckets></ListAllMyBucketsResult>");
    xml_response(ctx, xml)
}

/// GetBucketLocation, answered from the access point's region (empty for us-east-1, as S3 does).
pub(crate) fn bucket_location(ctx: &Ctx, region: &str) -> Response<ResponseBody> {
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<LocationConstraint xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
    );
    if region != "us-east-1" {
        xml_escape_into(&mut xml, region);
    }
    xml.push_str("</LocationConstraint>");
    xml_response(ctx, xml)
}

fn xml_response(ctx: &Ctx, xml: String) -> Response<ResponseBody> {
    let len = xml.len();
    let mut resp = Response::new(if ctx.is_head() {
        body::empty()
    } else {
        body::full(Bytes::from(xml))
    });
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        resp.headers_mut().insert("x-amz-request-id", v);
    }
    resp
}

/// A refusal or failure as the S3 XML error the client gets.
pub(crate) fn error_response(ctx: &Ctx, error: GatewayError) -> Response<ResponseBody> {
    tracing::debug!(request_id = %ctx.request_id, code = %error.code(), message = %error.message(), source = ?error.source(), "Request refused.");
    error.into_response(&ctx.request_id, ctx.is_head())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alert_covers_exactly_apgates_faults() {
        // Read at run time: an include_str! would make the release build depend on deploy/.
        let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml"))
            .expect("deploy/prometheus/alerts.yml");
        let block = &rules[rules
            .find("alert: ApgateUpstreamRefusesItsOwnRequests")
            .expect("the alert")..];
        let block = &block[..block.find("- alert:").unwrap_or(block.len())];
        let mut regexes: Vec<&str> = block
            .match_indices("code=~\"")
            .map(|(i, m)| {
                let rest = &block[i + m.len()..];
                &rest[..rest.find('"').expect("the regex ends")]
            })
            .collect();
        regexes.dedup();
        assert_eq!(regexes.len(), 1, "one code regex, used alike in every clause");
        let mut alerted: Vec<&str> = regexes[0].split('|').collect();
        alerted.sort_unstable();
        assert_eq!(alerted, APGATE_FAULTS);
    }

    #[test]
    fn error_details_are_the_clients_own_or_cannot_carry_anything_else() {
        let echo = Echo {
            key: Some("Bob/k".to_owned()),
            bucket: "shared".to_owned(),
            location: None,
            upload_id: Some("u-1".to_owned()),
            version_id: None,
            range: Some("bytes=5-9".to_owned()),
        };
        let upstream = [
            ("Key", "Bob/k"),
            ("BucketName", "bob-ap-123456789012-s3alias"),
            ("UploadId", "u-1"),
            ("VersionId", "v-not-asked-for"),
            ("RangeRequested", "bytes=5-9"),
            ("ActualObjectSize", "4"),
            ("PartNumber", "123456789012345678901"),
            ("Condition", "If-Match"),
            ("Method", "PUT"),
            ("ResourceType", "OBJECT"),
            ("ArgumentName", "x-amz-security-token"),
            ("ArgumentValue", "FwoGZXIvYXdzE"),
            ("StringToSign", "AWS4-HMAC-SHA256"),
            ("CanonicalRequest", "GET /"),
            ("AWSAccessKeyId", "AKIA"),
            ("HostId", "h"),
            ("Resource", "/bob-ap/Bob/k"),
        ];
        let fields: Vec<(String, String)> = upstream
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        let resp = relay_details(
            RelayedError::new(StatusCode::NOT_FOUND, "NoSuchKey", "m"),
            &fields,
            &echo,
        )
        .into_response("rid", false);
        let body = body_text(resp);
        assert_eq!(
            body,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code><Message>m</Message>\
             <Key>Bob/k</Key><BucketName>shared</BucketName><UploadId>u-1</UploadId>\
             <RangeRequested>bytes=5-9</RangeRequested><ActualObjectSize>4</ActualObjectSize>\
             <Condition>If-Match</Condition><Method>PUT</Method><ResourceType>OBJECT</ResourceType>\
             <RequestId>rid</RequestId></Error>"
        );
    }

    fn body_text(resp: Response<ResponseBody>) -> String {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let bytes = rt.block_on(resp.into_body().collect()).unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn error_context() -> ErrorContext {
        ErrorContext {
            request_id: "RID".to_owned(),
            access_point: "bob-ap".to_owned(),
            upstream_request_id: None,
            metrics: crate::metrics::Metrics::new().unwrap(),
            secrets: Vec::new(),
            echo: Echo {
                key: Some("Bob/k".to_owned()),
                bucket: "shared".to_owned(),
                location: None,
                upload_id: None,
                version_id: None,
                range: None,
            },
        }
    }

    /// A body of these frames.
    struct Frames(std::collections::VecDeque<Bytes>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
        }
    }

    /// What a slow answer sends, frame by frame, for these upstream frames.
    fn slow_answer_frames(upstream: &[&str]) -> Vec<String> {
        let inner = Frames(upstream.iter().map(|f| Bytes::copy_from_slice(f.as_bytes())).collect());
        let late = Arc::new(OnceLock::new());
        let elements = operation::Operation::CopyObject.spec().response_elements;
        let mut body = std::pin::pin!(SlowAnswer::new(inner, error_context(), elements, late));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut out = Vec::new();
        rt.block_on(async {
            while let Some(frame) = body.frame().await {
                let data = frame.unwrap().into_data().unwrap();
                out.push(String::from_utf8(data.to_vec()).unwrap());
            }
        });
        out
    }

    #[test]
    fn a_slow_answer_keeps_the_client_waiting_with_white_space_then_sends_the_document() {
        let decl = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
        let out = slow_answer_frames(&[
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
            " ",
            "\n ",
            "<CopyObjectResult><ETag>&quot;e&quot;</ETag><Debug>123456789012</Debug></Copy",
            "ObjectResult>",
        ]);
        assert_eq!(
            out,
            [
                decl,
                " ",
                " ",
                " ",
                "<CopyObjectResult><ETag>&quot;e&quot;</ETag></CopyObjectResult>"
            ]
        );
        // An error document after the white space: apgate's own, after the same declaration.
        let out = slow_answer_frames(&[
            " ",
            "<Error><Code>SlowDown</Code><Message>at bob-ap-123456789012</Message></Error>",
        ]);
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(
            out[2],
            "<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message><RequestId>RID</RequestId></Error>"
        );
        // Not XML at all: an error document too, never the upstream's bytes.
        let out = slow_answer_frames(&["<CopyObjectResult>123456789012"]);
        assert!(
            out.last().unwrap().starts_with("<Error><Code>InternalError</Code>"),
            "{out:?}"
        );
    }

    /// What a client sees of an upstream answer's head: the operation's headers and HTTP's own in
    /// the upstream's order, never the withheld or unknown ones, an expiration without its rule,
    /// the Location pointed at apgate, and apgate's request id in place of the upstream's.
    #[test]
    fn an_answer_shows_the_operations_headers_and_nothing_of_the_upstream_side() {
        type Case = (
            Option<Op>,
            &'static [(&'static str, &'static str)],
            &'static [(&'static str, &'static str)],
        );
        use operation::Operation as Op;
        let cases: &[Case] = &[
            (
                Some(Op::GetObject),
                &[
                    ("content-length", "5"),
                    ("server", "upstream/1.0"),
                    ("etag", "\"e\""),
                    ("x-amz-request-id", "UPSTREAM"),
                    ("x-amz-id-2", "host-id"),
                    ("x-amz-meta-a", "1"),
                    ("x-amz-version-id", "v1"),
                ],
                &[
                    ("content-length", "5"),
                    ("etag", "\"e\""),
                    ("x-amz-meta-a", "1"),
                    ("x-amz-version-id", "v1"),
                    ("x-amz-request-id", "RID"),
                ],
            ),
            (
                Some(Op::PutObject),
                &[
                    (
                        "x-amz-expiration",
                        "expiry-date=\"Fri, 23 Dec 2012 00:00:00 GMT\", rule-id=\"r-123456789012\"",
                    ),
                    ("x-amz-expiration", "rule-id=\"only\""),
                    ("x-amz-server-side-encryption-context", "arn:aws:s3:::real-bucket"),
                    ("etag", "\"p\""),
                ],
                &[
                    ("x-amz-expiration", "expiry-date=\"Fri, 23 Dec 2012 00:00:00 GMT\""),
                    ("etag", "\"p\""),
                    ("x-amz-request-id", "RID"),
                ],
            ),
            (
                None,
                &[
                    ("location", "http://real-bucket.s3.amazonaws.com/dir/k"),
                    ("date", "Wed, 02 Dec 2026 00:00:00 GMT"),
                    ("x-amz-version-id", "v1"),
                ],
                &[
                    ("date", "Wed, 02 Dec 2026 00:00:00 GMT"),
                    ("location", "http://gw.example:8080/shared/dir/k"),
                    ("x-amz-request-id", "RID"),
                ],
            ),
        ];
        let target = crate::s3::addressing::parse_target(Some("gw.example:8080"), "/shared/dir/k", None, &[]).unwrap();
        let bucket = target.bucket.clone().unwrap();
        let client = ClientSide {
            target: &target,
            bucket: &bucket,
            host: Some("gw.example:8080"),
            range: None,
        };
        for (op, upstream, want) in cases {
            let mut headers = HeaderMap::new();
            for (name, value) in *upstream {
                headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
            }
            let out = answer_headers("http", "RID", client, op.map(Op::spec), &headers);
            let got: Vec<(&str, &str)> = out.iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect();
            assert_eq!(got, *want, "{op:?}");
        }
    }

    #[test]
    fn only_the_expiry_date_of_an_expiration_is_shown() {
        let cases = [
            (
                "expiry-date=\"Fri, 23 Dec 2012 00:00:00 GMT\", rule-id=\"expire-realbucket-123456789012\"",
                Some("expiry-date=\"Fri, 23 Dec 2012 00:00:00 GMT\""),
            ),
            (
                "expiry-date=\"Fri, 23 Dec 2012 00:00:00 GMT\"",
                Some("expiry-date=\"Fri, 23 Dec 2012 00:00:00 GMT\""),
            ),
            ("rule-id=\"x\", expiry-date=\"Fri, 23 Dec 2012 00:00:00 GMT\"", None),
            ("expiry-date=\"a\" \"123456789012\"", None),
            // An opening quote and nothing after it (this slice used to panic).
            ("expiry-date=\"", None),
            ("expiry-date=\", rule-id=\"x\"", None),
            ("expiry-date=\"\"", Some("expiry-date=\"\"")),
        ];
        for (value, want) in cases {
            let got = expiry_date_only(&HeaderValue::from_str(value).unwrap());
            assert_eq!(got.as_ref().map(|v| v.to_str().unwrap()), want, "{value}");
        }
    }

    #[test]
    fn errors_without_a_document_get_a_code_for_their_status() {
        let cases = [
            (403, "AccessDenied"),
            (404, "NotFound"),
            (412, "PreconditionFailed"),
            (416, "InvalidRange"),
            (400, "InvalidRequest"),
            (500, "InternalError"),
            (502, "InternalError"),
            (503, "ServiceUnavailable"),
            (301, "PermanentRedirect"),
        ];
        for (status, code) in cases {
            assert_eq!(fallback_code(StatusCode::from_u16(status).unwrap()), code, "{status}");
        }
    }
}
