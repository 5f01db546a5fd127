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
use crate::s3::headers::{X_AMZN_REQUESTID, X_AMZ_ID_2, X_AMZ_REQUEST_ID};
use crate::s3::operation::{self, Answer, Spec};
use crate::s3::xml::{self, ClientView, Sanitized};
use crate::s3::{BucketName, S3Target};
use crate::state::State;
use crate::upstream::UpstreamBody;

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
    let spec = ctx.operation.map(operation::Operation::spec);
    let headers = answer_headers(ctx, client, spec, &parts.headers);

    if status.is_client_error()
        || status.is_server_error()
        || (status.is_redirection() && status != StatusCode::NOT_MODIFIED)
    {
        let document = if ctx.is_head() {
            Bytes::new()
        } else {
            read_bounded(state, resp_body, MAX_ERROR_BODY).await.unwrap_or_default()
        };
        return Ok(relay_error(state, ctx, client, status, headers, &document));
    }

    let xml_answer = spec.is_some_and(|s| s.answer == Answer::Xml);
    let mut rewritten = None;
    let body = if ctx.is_head() || status == StatusCode::NOT_MODIFIED || !xml_answer {
        body::IdleTimeout::new(resp_body, state.config.upstream.body_idle_timeout).boxed_unsync()
    } else {
        let elements = spec.map_or(&[][..], |s| s.response_elements);
        let document = read_bounded(state, resp_body, MAX_REWRITTEN_RESPONSE)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, request_id = %ctx.request_id, "Reading an upstream XML answer failed.");
                GatewayError::upstream(S3ErrorCode::BadGateway, "The upstream answer could not be read.")
            })?;
        let location = client_location(ctx.scheme, client);
        let view = ClientView {
            bucket: client.bucket.as_str(),
            location: location.as_deref(),
        };
        match xml::sanitize_answer(&document, elements, &view) {
            _ if document.trim_ascii().is_empty() => {
                rewritten = Some(0);
                body::empty()
            }
            Ok(Sanitized::Document(out)) => {
                rewritten = Some(out.len());
                body::full(out)
            }
            // S3 answers some failures of CopyObject and CompleteMultipartUpload with a 200 and an
            // error document: the error is relayed like any other, with the 200.
            Ok(Sanitized::Error) => return Ok(relay_error(state, ctx, client, status, headers, &document)),
            Err(error) => {
                // An answer apgate cannot read might name anything: refuse rather than pass it on.
                tracing::warn!(%error, request_id = %ctx.request_id, "An upstream XML answer could not be read.");
                return Err(GatewayError::upstream(
                    S3ErrorCode::BadGateway,
                    "The upstream sent an answer apgate could not read.",
                ));
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
/// HTTP's own, less those that name the upstream side), a `Location` pointed at apgate, and
/// apgate's request id in place of the upstream's.
fn answer_headers(ctx: &Ctx, client: ClientSide<'_>, spec: Option<&Spec>, upstream: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(upstream.len() + 1);
    for (name, value) in upstream {
        let shown = match spec {
            Some(spec) => spec.shows_response_header(name.as_str()),
            None => operation::is_http_response_header(name.as_str()),
        };
        if shown && name != header::LOCATION {
            out.append(name.clone(), value.clone());
        }
    }
    if upstream.contains_key(header::LOCATION) {
        if let Some(v) = client_location(ctx.scheme, client).and_then(|l| HeaderValue::from_str(&l).ok()) {
            out.insert(header::LOCATION, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        out.insert(X_AMZ_REQUEST_ID.clone(), v);
    }
    out
}

/// The upstream's error, answered in apgate's words.
fn relay_error(
    state: &State,
    ctx: &mut Ctx,
    client: ClientSide<'_>,
    status: StatusCode,
    mut headers: HeaderMap,
    document: &[u8],
) -> Response<ResponseBody> {
    let fields = xml::error_fields(document).unwrap_or_default();
    let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.trim());
    let upstream_code = field("Code").filter(|c| xml::is_plain_code(c)).map(str::to_owned);
    count_upstream_answer(state, ctx, status, Some(upstream_code.as_deref().unwrap_or("Other")));
    // An upstream may quote anything of the request it refused: the credentials apgate signed it
    // with never reach the log, whatever field they are in.
    let held = ctx
        .identity
        .as_deref()
        .and_then(|identity| state.credentials.for_identity(identity).held());
    let secrets: Vec<&str> = held
        .as_deref()
        .map(|c| [c.session_token().unwrap_or(""), c.secret_access_key()])
        .into_iter()
        .flatten()
        .filter(|s| s.len() >= 8)
        .collect();
    let logged: Vec<String> = fields
        .iter()
        .map(|(name, value)| {
            if LOGGED_ERROR_FIELDS.contains(&name.as_str()) {
                let value = secrets
                    .iter()
                    .fold(value.clone(), |v, secret| v.replace(secret, "[redacted]"));
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
    let error = if fault {
        tracing::error!(
            request_id = %ctx.request_id,
            access_point = ctx.access_point_label(),
            status = status.as_u16(),
            upstream_code = %code,
            upstream_request_id = ?ctx.upstream_request_id,
            fields = ?logged,
            "The upstream refused apgate's own request (signature, credentials, clock or endpoint): answered as an internal error."
        );
        RelayedError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            S3ErrorCode::InternalError.as_str(),
            operation::error_message("InternalError").unwrap_or("We encountered an internal error."),
        )
    } else {
        tracing::debug!(
            request_id = %ctx.request_id,
            access_point = ctx.access_point_label(),
            status = status.as_u16(),
            upstream_code = %code,
            upstream_request_id = ?ctx.upstream_request_id,
            fields = ?logged,
            "Upstream error relayed."
        );
        let message = operation::error_message(&code).unwrap_or("The request failed.");
        relay_details(RelayedError::new(status, &code, message), &fields, client)
    };
    ctx.error_code = Some(error.code().to_owned());
    let error_status = error.status();
    let mut resp = error.into_response(&ctx.request_id, ctx.is_head());
    // The model's headers of the answer stay (a delete marker's `x-amz-delete-marker` and version
    // id on a 404); the entity's are apgate's document's.
    for name in [
        header::CONTENT_LENGTH,
        header::CONTENT_TYPE,
        header::CONTENT_RANGE,
        header::ETAG,
        header::LAST_MODIFIED,
    ] {
        headers.remove(name);
    }
    if error_status != status {
        headers.clear();
    }
    for (name, value) in resp.headers() {
        headers.insert(name.clone(), value.clone());
    }
    *resp.headers_mut() = headers;
    resp
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
fn relay_details(mut error: RelayedError, fields: &[(String, String)], client: ClientSide<'_>) -> RelayedError {
    let digits = |v: &str| !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit());
    for (name, value) in fields {
        let value = value.trim();
        let detail: Option<(&'static str, String)> = match name.as_str() {
            "Key" => client.target.key.clone().map(|k| ("Key", k)),
            "BucketName" => Some(("BucketName", client.bucket.as_str().to_owned())),
            "UploadId" if client.target.param("uploadId") == Some(value) => Some(("UploadId", value.to_owned())),
            "VersionId" if client.target.param("versionId") == Some(value) => Some(("VersionId", value.to_owned())),
            "RangeRequested" if client.range == Some(value) => Some(("RangeRequested", value.to_owned())),
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
    use crate::s3::encoding::QueryParam;

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
        let target = S3Target {
            style: AddressingStyle::Path,
            bucket: Some(BucketName::parse("shared").unwrap()),
            key: Some("Bob/k".to_owned()),
            raw_path: "/shared/Bob/k".to_owned(),
            raw_query: "uploadId=u-1".to_owned(),
            query: vec![QueryParam {
                key: "uploadId".to_owned(),
                value: "u-1".to_owned(),
                has_value: true,
            }],
        };
        let bucket = BucketName::parse("shared").unwrap();
        let client = ClientSide {
            target: &target,
            bucket: &bucket,
            host: Some("127.0.0.1:8080"),
            range: Some("bytes=5-9"),
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
            client,
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
