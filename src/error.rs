//! The one place where refusals become S3-shaped XML responses.
//!
//! Every [`GatewayError`] records who caused it ([`ErrorSource`]) and carries an [`S3ErrorCode`],
//! which fixes the HTTP status. Callers build errors with the constructors below and never format
//! XML themselves.

use std::fmt;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{self, ResponseBody};

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something we refuse.
    Downstream,
    /// The upstream (S3) failed or could not be reached.
    Upstream,
    /// apgate itself failed (no credentials, a bug).
    Internal,
}

/// The S3 error codes apgate answers with, each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum S3ErrorCode {
    AccessDenied,
    AuthorizationHeaderMalformed,
    AuthorizationQueryParametersError,
    InvalidAccessKeyId,
    SignatureDoesNotMatch,
    RequestTimeTooSkewed,
    MissingSecurityHeader,
    InvalidRequest,
    InvalidArgument,
    InvalidBucketName,
    InvalidURI,
    MalformedXML,
    RequestHeaderSectionTooLarge,
    IncompleteBody,
    /// The client stopped sending its request body.
    RequestTimeout,
    InvalidChunkSizeError,
    /// A trailer line other than the checksum `x-amz-trailer` announced, or that checksum
    /// malformed.
    MalformedTrailerError,
    MissingContentLength,
    /// A body over S3's 5 GiB limit for one PUT.
    EntityTooLarge,
    /// A session token that does not belong with the key used.
    InvalidToken,
    /// The body's SHA-256 is not the `x-amz-content-sha256` the client signed.
    XAmzContentSHA256Mismatch,
    NotImplemented,
    MethodNotAllowed,
    InternalError,
    ServiceUnavailable,
    SlowDown,
    /// Not an S3 code: the upstream could not be reached or broke the exchange.
    BadGateway,
    /// Not an S3 code: the upstream did not answer in time.
    GatewayTimeout,
}

impl S3ErrorCode {
    /// The code as it appears in `<Code>`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AccessDenied => "AccessDenied",
            Self::AuthorizationHeaderMalformed => "AuthorizationHeaderMalformed",
            Self::AuthorizationQueryParametersError => "AuthorizationQueryParametersError",
            Self::InvalidAccessKeyId => "InvalidAccessKeyId",
            Self::SignatureDoesNotMatch => "SignatureDoesNotMatch",
            Self::RequestTimeTooSkewed => "RequestTimeTooSkewed",
            Self::MissingSecurityHeader => "MissingSecurityHeader",
            Self::InvalidRequest => "InvalidRequest",
            Self::InvalidArgument => "InvalidArgument",
            Self::InvalidBucketName => "InvalidBucketName",
            Self::InvalidURI => "InvalidURI",
            Self::MalformedXML => "MalformedXML",
            Self::RequestHeaderSectionTooLarge => "RequestHeaderSectionTooLarge",
            Self::IncompleteBody => "IncompleteBody",
            Self::RequestTimeout => "RequestTimeout",
            Self::InvalidChunkSizeError => "InvalidChunkSizeError",
            Self::MalformedTrailerError => "MalformedTrailerError",
            Self::MissingContentLength => "MissingContentLength",
            Self::EntityTooLarge => "EntityTooLarge",
            Self::InvalidToken => "InvalidToken",
            Self::XAmzContentSHA256Mismatch => "XAmzContentSHA256Mismatch",
            Self::NotImplemented => "NotImplemented",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::InternalError => "InternalError",
            Self::ServiceUnavailable => "ServiceUnavailable",
            Self::SlowDown => "SlowDown",
            Self::BadGateway => "BadGateway",
            Self::GatewayTimeout => "GatewayTimeout",
        }
    }

    /// The HTTP status S3 uses for this code.
    pub fn status(self) -> StatusCode {
        match self {
            Self::AccessDenied
            | Self::InvalidAccessKeyId
            | Self::SignatureDoesNotMatch
            | Self::RequestTimeTooSkewed
            | Self::InvalidChunkSizeError => StatusCode::FORBIDDEN,
            Self::AuthorizationHeaderMalformed
            | Self::AuthorizationQueryParametersError
            | Self::MissingSecurityHeader
            | Self::InvalidRequest
            | Self::InvalidArgument
            | Self::InvalidBucketName
            | Self::InvalidURI
            | Self::MalformedXML
            | Self::RequestHeaderSectionTooLarge
            | Self::IncompleteBody
            | Self::MalformedTrailerError
            | Self::EntityTooLarge
            | Self::InvalidToken
            | Self::XAmzContentSHA256Mismatch
            | Self::RequestTimeout => StatusCode::BAD_REQUEST,
            Self::MissingContentLength => StatusCode::LENGTH_REQUIRED,
            Self::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ServiceUnavailable | Self::SlowDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

impl fmt::Display for S3ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal or failure that ends a request with an S3 error response.
#[derive(Debug)]
pub struct GatewayError {
    code: S3ErrorCode,
    message: String,
    source: ErrorSource,
    /// Extra `<Name>value</Name>` elements S3 adds for some codes (e.g. `RequestTime`, `ServerTime`).
    extra: Vec<(&'static str, String)>,
}

impl GatewayError {
    /// An error the client caused.
    pub fn client(code: S3ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            source: ErrorSource::Downstream,
            extra: Vec::new(),
        }
    }

    /// An error the upstream caused.
    pub fn upstream(code: S3ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            source: ErrorSource::Upstream,
            extra: Vec::new(),
        }
    }

    /// An error inside apgate.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            code: S3ErrorCode::InternalError,
            message: message.into(),
            source: ErrorSource::Internal,
            extra: Vec::new(),
        }
    }

    /// Adds an extra element to the XML body.
    #[must_use]
    pub fn with_detail(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.extra.push((name, value.into()));
        self
    }

    pub fn code(&self) -> S3ErrorCode {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn source(&self) -> ErrorSource {
        self.source
    }

    /// The S3 XML error response. HEAD responses carry no body, as in S3.
    pub fn into_response(self, request_id: &str, head: bool) -> Response<ResponseBody> {
        let xml = error_xml(self.code.as_str(), &self.message, &self.extra, request_id);
        error_response(self.code.status(), xml, request_id, head)
    }
}

/// An upstream's error, answered by apgate in its own words: the upstream's status and code (when
/// it is a plain identifier), S3's documented message for the code, and only the details apgate
/// checked against the client's own request (proxy/respond.rs); never the upstream's message or
/// other fields.
#[derive(Debug)]
pub struct RelayedError {
    status: StatusCode,
    code: String,
    message: &'static str,
    details: Vec<(&'static str, String)>,
}

impl RelayedError {
    /// `code` must be a plain identifier ([`crate::s3::xml::is_plain_code`]); anything else
    /// becomes `InternalError`.
    pub fn new(status: StatusCode, code: &str, message: &'static str) -> Self {
        let code = if crate::s3::xml::is_plain_code(code) {
            code.to_owned()
        } else {
            S3ErrorCode::InternalError.as_str().to_owned()
        };
        Self {
            status,
            code,
            message,
            details: Vec::new(),
        }
    }

    /// Adds a detail element (its value checked by the caller).
    #[must_use]
    pub fn with_detail(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.details.push((name, value.into()));
        self
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The S3 XML error response (no body for HEAD).
    pub fn into_response(self, request_id: &str, head: bool) -> Response<ResponseBody> {
        let xml = self.to_xml(request_id);
        error_response(self.status, xml, request_id, head)
    }

    /// The S3 XML error document.
    pub fn to_xml(&self, request_id: &str) -> String {
        error_xml(&self.code, self.message, &self.details, request_id)
    }
}

/// An S3 error document.
fn error_xml(code: &str, message: &str, extra: &[(&'static str, String)], request_id: &str) -> String {
    let mut s = String::with_capacity(256);
    s.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>");
    xml_escape_into(&mut s, code);
    s.push_str("</Code><Message>");
    xml_escape_into(&mut s, message);
    s.push_str("</Message>");
    for (name, value) in extra {
        s.push('<');
        s.push_str(name);
        s.push('>');
        xml_escape_into(&mut s, value);
        s.push_str("</");
        s.push_str(name);
        s.push('>');
    }
    s.push_str("<RequestId>");
    xml_escape_into(&mut s, request_id);
    s.push_str("</RequestId></Error>");
    s
}

/// An error answer: the document, its type and length, and apgate's request id.
fn error_response(status: StatusCode, xml: String, request_id: &str, head: bool) -> Response<ResponseBody> {
    let len = xml.len();
    let body = if head {
        body::empty()
    } else {
        body::full(Bytes::from(xml))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    if !head {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amz-request-id", v);
    }
    resp
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for GatewayError {}

/// Escapes text for an XML element body.
pub fn xml_escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_the_statuses_s3_uses() {
        let cases = [
            (S3ErrorCode::AccessDenied, 403),
            (S3ErrorCode::InvalidAccessKeyId, 403),
            (S3ErrorCode::SignatureDoesNotMatch, 403),
            (S3ErrorCode::RequestTimeTooSkewed, 403),
            (S3ErrorCode::AuthorizationHeaderMalformed, 400),
            (S3ErrorCode::MissingSecurityHeader, 400),
            (S3ErrorCode::InvalidRequest, 400),
            (S3ErrorCode::MalformedTrailerError, 400),
            (S3ErrorCode::MissingContentLength, 411),
            (S3ErrorCode::NotImplemented, 501),
            (S3ErrorCode::BadGateway, 502),
            (S3ErrorCode::GatewayTimeout, 504),
        ];
        for (code, status) in cases {
            assert_eq!(code.status().as_u16(), status, "{code}");
        }
    }

    #[test]
    fn xml_body_is_escaped_and_carries_the_request_id() {
        let e =
            GatewayError::client(S3ErrorCode::AccessDenied, "no <route> for \"x\" & y").with_detail("Resource", "/b/k");
        let xml = error_xml(e.code.as_str(), &e.message, &e.extra, "req-1");
        assert_eq!(
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code>\
             <Message>no &lt;route&gt; for &quot;x&quot; &amp; y</Message>\
             <Resource>/b/k</Resource><RequestId>req-1</RequestId></Error>"
        );
    }

    #[test]
    fn relayed_errors_keep_only_plain_codes() {
        let cases = [
            ("NoSuchKey", "NoSuchKey"),
            ("", "InternalError"),
            ("Access Denied", "InternalError"),
            ("arn:aws:iam::123456789012:role/x", "InternalError"),
            (&*"A".repeat(65), "InternalError"),
        ];
        for (code, want) in cases {
            let e = RelayedError::new(StatusCode::NOT_FOUND, code, "m");
            assert_eq!(e.code(), want, "{code:?}");
        }
    }
}
