//! Responding: the upstream's answer made the client's (hop-by-hop headers dropped, `Location` and
//! bucket-revealing XML rewritten to the client-facing bucket and URL), the answers apgate gives
//! itself (ListBuckets, GetBucketLocation), and refusals as S3 XML errors.

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response};
use http_body_util::BodyExt;

use super::record::Ctx;
use crate::body::{self, ResponseBody};
use crate::error::{xml_escape_into, GatewayError, S3ErrorCode};
use crate::metrics::NONE;
use crate::s3::addressing::AddressingStyle;
use crate::s3::encoding::{uri_encode_into, Slash};
use crate::s3::headers::{KEEP_ALIVE, PROXY_CONNECTION, X_AMZN_REQUESTID, X_AMZ_ID_2, X_AMZ_REQUEST_ID};
use crate::s3::{BucketName, Operation, S3Target};
use crate::state::State;
use crate::upstream::UpstreamBody;

/// The most a response body apgate rewrites may be (a 1000-key listing is well under this).
const MAX_REWRITTEN_RESPONSE: usize = 32 << 20;

/// What the client sees of the request it sent, for URLs in answers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientSide<'a> {
    pub(crate) target: &'a S3Target,
    pub(crate) bucket: &'a BucketName,
    /// The client's Host header.
    pub(crate) host: Option<&'a str>,
}

/// The upstream's answer, made the client's.
pub(crate) async fn upstream_answer(
    state: &State,
    ctx: &mut Ctx,
    client: ClientSide<'_>,
    up_resp: Response<UpstreamBody>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let (mut parts, resp_body) = up_resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // A Location header names the upstream (access point) URL: point it at apgate's, or drop it.
    if parts.headers.contains_key(header::LOCATION) {
        match client_location(ctx.scheme, client).and_then(|l| HeaderValue::from_str(&l).ok()) {
            Some(v) => {
                parts.headers.insert(header::LOCATION, v);
            }
            None => {
                parts.headers.remove(header::LOCATION);
            }
        }
    }
    let status = parts.status;
    // Kept as header values (a reference count, not a copy) until the log line is written.
    let header = |name: &HeaderName| parts.headers.get(name).filter(|v| v.to_str().is_ok()).cloned();
    ctx.upstream_request_id = header(&X_AMZ_REQUEST_ID).or_else(|| header(&X_AMZN_REQUESTID));
    ctx.upstream_id2 = header(&X_AMZ_ID_2);
    let mut error_code = None;
    let body: ResponseBody = if ctx.is_head() || !reveals_bucket(ctx.operation, &parts) {
        crate::body::IdleTimeout::new(resp_body, state.config.upstream.body_idle_timeout).boxed_unsync()
    } else {
        let location = client_location(ctx.scheme, client);
        let view = crate::s3::xml::ClientView {
            bucket: client.bucket.as_str(),
            location: location.as_deref(),
            endpoint: client.host.unwrap_or(""),
        };
        let rewritten = rewrite_response_body(ctx, resp_body, &view).await?;
        if !status.is_success() {
            error_code = s3_error_code(&rewritten);
        }
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts
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
        ctx.error_code = error_code;
    }
    Ok(Response::from_parts(parts, body))
}

/// The `<Code>` of an S3 error body, if it is a plain identifier (so it is safe as a metric label:
/// S3's codes are a closed set of CamelCase words).
pub(crate) fn s3_error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    let code = &text[start..start + len];
    let plain = !code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric());
    Some(if plain { code.to_owned() } else { "Other".to_owned() })
}

/// Whether a response body may name the upstream bucket or access point and must be rewritten.
fn reveals_bucket(op: Option<Operation>, parts: &http::response::Parts) -> bool {
    let xml = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.contains("xml"));
    let listing = matches!(
        op,
        Some(
            Operation::ListObjects
                | Operation::ListObjectsV2
                | Operation::ListObjectVersions
                | Operation::ListMultipartUploads
                | Operation::CreateMultipartUpload
                | Operation::CompleteMultipartUpload
                | Operation::ListParts
        )
    );
    xml && (listing || !parts.status.is_success())
}

/// The client-facing URL of the target object, for `Location` elements.
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
