//! The S3 operations as the AWS API model describes them ([`model`], generated from botocore's S3
//! model by `scripts/gen_s3_model.py`), and apgate's policy for each: whether it is forwarded,
//! answered by apgate or refused, and which class of route it needs.
//!
//! The model is the protocol: which method, which resource (service, bucket, object), which literal
//! sub-resources mark the operation (`?tagging`, `?list-type=2`), which query parameters and headers
//! it takes. The policy below is apgate's own and is kept by hand: it is a decision, not a fact about
//! S3.

#[rustfmt::skip]
mod model;

pub use model::Operation;

/// The HTTP methods S3 operations use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Put,
    Post,
    Delete,
    Head,
}

impl HttpMethod {
    /// The model's method of an HTTP request method, if S3 uses it.
    pub fn of(method: &http::Method) -> Option<Self> {
        Some(match *method {
            http::Method::GET => Self::Get,
            http::Method::PUT => Self::Put,
            http::Method::POST => Self::Post,
            http::Method::DELETE => Self::Delete,
            http::Method::HEAD => Self::Head,
            _ => return None,
        })
    }
}

/// What an operation's URI template names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `/`: ListBuckets.
    Service,
    /// `/{Bucket}`.
    Bucket,
    /// `/{Bucket}/{Key+}`.
    Object,
}

/// A literal query parameter of an operation's URI template (`?tagging`, `?list-type=2`): its
/// presence (with that value, if the template gives one) selects the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub name: &'static str,
    pub value: Option<&'static str>,
}

/// Whether a request of the operation carries a checksum of its body (the model's `httpChecksum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    None,
    /// `x-amz-sdk-checksum-algorithm` and `x-amz-checksum-*` may be sent.
    Optional,
    /// S3 refuses the request without `Content-MD5` or an `x-amz-checksum-*`.
    Required,
}

/// What the body of a request of the operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    None,
    /// Bytes of the caller's (an object or a part).
    Blob,
    /// An XML document with this root element.
    Xml(&'static str),
}

/// What the body of an operation's answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    None,
    /// The object's bytes (GetObject): never read, never rewritten.
    Blob,
    /// An XML document of S3's (listings, multipart, ACLs, ...).
    Xml,
}

/// What the model says of an operation's request and answer.
#[derive(Debug)]
pub struct Spec {
    pub operation: Operation,
    pub method: HttpMethod,
    pub resource: Resource,
    pub markers: &'static [Marker],
    /// Query parameters the operation takes (wire names) and whether each is required.
    pub query: &'static [(&'static str, bool)],
    /// Headers the operation takes (lower case) and whether each is required.
    pub headers: &'static [(&'static str, bool)],
    /// Header name prefixes the operation takes (`x-amz-meta-`).
    pub header_prefixes: &'static [&'static str],
    pub checksum: Checksum,
    pub payload: Payload,
    /// Headers the model gives the operation's answer (lower case).
    pub response_headers: &'static [&'static str],
    /// Header name prefixes of the answer (`x-amz-meta-`).
    pub response_header_prefixes: &'static [&'static str],
    pub answer: Answer,
    /// The local names of the elements the model gives an XML answer (its root excepted).
    pub response_elements: &'static [&'static str],
}

impl Spec {
    /// Whether the operation takes this query parameter: one of its markers or members.
    pub fn takes_param(&self, name: &str) -> bool {
        self.markers.iter().any(|m| m.name == name) || self.query.iter().any(|(q, _)| *q == name)
    }

    /// Whether the operation takes this (lower-case) header: a member, or a member prefix.
    pub fn takes_header(&self, name: &str) -> bool {
        self.headers.iter().any(|(h, _)| *h == name) || self.header_prefixes.iter().any(|p| name.starts_with(p))
    }

    /// Whether the request has a body.
    pub fn has_body(&self) -> bool {
        self.payload != Payload::None
    }

    /// Whether a client may see this (lower-case) header of the operation's answer: one the model
    /// gives the answer or one of HTTP's own, and not one that names the upstream side.
    pub fn shows_response_header(&self, name: &str) -> bool {
        // HTTP's own first: most of an answer's headers are (entity headers, the date).
        let answer = is_http_response_header(name)
            || self.response_headers.contains(&name)
            || self.response_header_prefixes.iter().any(|p| name.starts_with(p));
        answer && !WITHHELD_RESPONSE_HEADERS.contains(&name)
    }
}

/// S3's documented message for an error code, if the model documents the code.
pub fn error_message(code: &str) -> Option<&'static str> {
    model::ERROR_MESSAGES
        .binary_search_by(|(c, _)| (*c).cmp(code))
        .ok()
        .map(|i| model::ERROR_MESSAGES[i].1)
}

/// Whether a (lower-case) header is one of HTTP's own a client may see of any answer.
pub fn is_http_response_header(name: &str) -> bool {
    HTTP_RESPONSE_HEADERS.contains(&name)
}

/// Headers of any HTTP answer a client may see (the entity's, and the date).
const HTTP_RESPONSE_HEADERS: &[&str] = &[
    "accept-ranges",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expires",
    "last-modified",
    "location",
];

/// Headers of the model's answers that name the upstream side, never shown (docs/SEMANTICS.md):
/// the bucket's lifecycle rule an upload will be aborted by (its id is the owner's text), a KMS
/// key's ARN (its account), an encryption context (which holds the real bucket's ARN), the
/// bucket's ARN, whether the bucket is an access point alias, and the bucket's location name (a
/// zone id for a directory bucket; an upstream may put the real bucket's name there).
const WITHHELD_RESPONSE_HEADERS: &[&str] = &[
    "x-amz-abort-rule-id",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-context",
    "x-amz-bucket-arn",
    "x-amz-access-point-alias",
    "x-amz-bucket-location-name",
];

/// What a route may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OperationClass {
    /// Reading objects and their metadata.
    Read,
    /// Creating or overwriting objects and their metadata, multipart uploads included.
    Write,
    /// Deleting objects.
    Delete,
    /// Listing keys and uploads, and bucket-level existence checks.
    List,
}

impl OperationClass {
    pub const ALL: [Self; 4] = [Self::Read, Self::Write, Self::Delete, Self::List];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "delete" => Some(Self::Delete),
            "list" => Some(Self::List),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Delete => "delete",
            Self::List => "list",
        }
    }
}

/// What apgate does with an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Forwarded through the access point a route of this class gives.
    Forwarded(OperationClass),
    /// Answered by apgate itself (ListBuckets from the caller's routes; GetBucketLocation from the
    /// access point of a route of this class).
    Synthesized(Option<OperationClass>),
    /// Access points take it, apgate does not forward it: the answer would show the bucket's
    /// configuration, owner or policy, which belong to the upstream side (`501 NotImplemented`).
    Withheld,
    /// Access points do not take it: bucket management, S3 Express, Object Lambda and the like
    /// (`501 NotImplemented`).
    NotThroughAccessPoints,
}

impl Operation {
    /// What apgate does with this operation (docs/SEMANTICS.md lists the same).
    pub fn support(self) -> Support {
        use OperationClass::{Delete, List, Read, Write};
        use Support::{Forwarded, NotThroughAccessPoints, Synthesized, Withheld};
        match self {
            Self::ListBuckets => Synthesized(None),
            Self::GetBucketLocation => Synthesized(Some(List)),
            Self::GetObject
            | Self::HeadObject
            | Self::GetObjectTagging
            | Self::GetObjectAcl
            | Self::GetObjectAttributes
            | Self::GetObjectLegalHold
            | Self::GetObjectRetention => Forwarded(Read),
            Self::PutObject
            | Self::CopyObject
            | Self::CreateMultipartUpload
            | Self::UploadPart
            | Self::UploadPartCopy
            | Self::CompleteMultipartUpload
            | Self::AbortMultipartUpload
            | Self::PutObjectTagging
            | Self::DeleteObjectTagging
            | Self::PutObjectAcl
            | Self::PutObjectLegalHold
            | Self::PutObjectRetention
            | Self::RestoreObject => Forwarded(Write),
            Self::DeleteObject | Self::DeleteObjects => Forwarded(Delete),
            Self::HeadBucket
            | Self::ListObjects
            | Self::ListObjectsV2
            | Self::ListObjectVersions
            | Self::ListMultipartUploads
            | Self::ListParts => Forwarded(List),
            Self::GetBucketAcl
            | Self::GetBucketCors
            | Self::GetBucketPolicy
            | Self::GetBucketNotificationConfiguration => Withheld,
            _ => NotThroughAccessPoints,
        }
    }

    /// The class a route must allow, for operations that are routed.
    pub fn class(self) -> Option<OperationClass> {
        match self.support() {
            Support::Forwarded(class) | Support::Synthesized(Some(class)) => Some(class),
            _ => None,
        }
    }

    /// The query parameter a listing is confined by, for operations that list keys.
    pub fn list_prefix_param(self) -> Option<&'static str> {
        match self {
            Self::ListObjects | Self::ListObjectsV2 | Self::ListObjectVersions | Self::ListMultipartUploads => {
                Some("prefix")
            }
            _ => None,
        }
    }
}

/// Whether `name` is an `x-amz-checksum-{algorithm}` header (the model's checksum algorithms).
pub fn is_checksum_header(name: &str) -> bool {
    model::CHECKSUM_ALGORITHMS.iter().any(|(_, h)| *h == name)
}

/// The digest size in bytes of each checksum algorithm of the model (what the algorithm is, not
/// something the model says; a unit test fails when the model adds one this does not know).
const CHECKSUM_DIGEST_BYTES: &[(&str, usize)] = &[
    ("CRC32", 4),
    ("CRC32C", 4),
    ("CRC64NVME", 8),
    ("MD5", 16),
    ("SHA1", 20),
    ("SHA256", 32),
    ("SHA512", 64),
    ("XXHASH128", 16),
    ("XXHASH3", 8),
    ("XXHASH64", 8),
];

/// The length of an `x-amz-checksum-{algorithm}` header's value (the digest in base64).
pub fn checksum_value_len(header: &str) -> Option<usize> {
    let (algorithm, _) = model::CHECKSUM_ALGORITHMS.iter().find(|(_, h)| *h == header)?;
    let (_, bytes) = CHECKSUM_DIGEST_BYTES.iter().find(|(a, _)| a == algorithm)?;
    Some(bytes.div_ceil(3) * 4)
}

/// How many `=` end the base64 value of a checksum header (the model's name): its digest's length
/// decides it, which the value's length alone does not.
pub fn checksum_padding(header: &str) -> Option<usize> {
    let (algorithm, _) = model::CHECKSUM_ALGORITHMS.iter().find(|(_, h)| *h == header)?;
    let (_, bytes) = CHECKSUM_DIGEST_BYTES.iter().find(|(a, _)| a == algorithm)?;
    Some((3 - bytes % 3) % 3)
}

/// The model's header name for a (lower-case) checksum header, as a static string.
pub fn checksum_header(name: &str) -> Option<&'static str> {
    model::CHECKSUM_ALGORITHMS
        .iter()
        .find(|(_, h)| *h == name)
        .map(|(_, h)| *h)
}

/// Whether `value` names a checksum algorithm (`x-amz-sdk-checksum-algorithm`).
pub fn is_checksum_algorithm(value: &str) -> bool {
    model::CHECKSUM_ALGORITHMS
        .iter()
        .any(|(a, _)| a.eq_ignore_ascii_case(value))
}

/// The metric and log label of an operation, `Unknown` when the request is none.
pub fn label(op: Option<Operation>) -> &'static str {
    op.map_or("Unknown", Operation::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_checksum_algorithm_of_the_model_has_a_value_length() {
        for (algorithm, header) in model::CHECKSUM_ALGORITHMS {
            assert!(checksum_value_len(header).is_some(), "{algorithm}: add its digest size");
        }
        assert_eq!(checksum_value_len("x-amz-checksum-crc32"), Some(8));
        assert_eq!(checksum_value_len("x-amz-checksum-sha256"), Some(44));
        assert_eq!(checksum_value_len("x-amz-checksum-crc64nvme"), Some(12));
        assert_eq!(checksum_value_len("x-amz-checksum-sha512"), Some(88));
        assert_eq!(checksum_value_len("x-amz-checksum-nope"), None);
    }

    #[test]
    fn the_table_is_in_enum_order_and_complete() {
        for (i, op) in Operation::ALL.iter().enumerate() {
            assert_eq!(model::SPECS[i].operation, *op, "{op:?}");
            assert_eq!(op.spec().operation, *op);
        }
        assert!(Operation::ALL.len() >= 100, "the whole model, not a hand-picked list");
    }

    #[test]
    fn every_operation_apgate_forwards_exists_in_the_model_as_an_object_or_bucket_operation() {
        // The access point operations of PROTOCOL.md §2 (AWS's list).
        let through_access_points = [
            "AbortMultipartUpload",
            "CompleteMultipartUpload",
            "CreateMultipartUpload",
            "CopyObject",
            "DeleteObject",
            "DeleteObjects",
            "DeleteObjectTagging",
            "GetBucketAcl",
            "GetBucketCors",
            "GetBucketLocation",
            "GetBucketNotificationConfiguration",
            "GetBucketPolicy",
            "GetObject",
            "GetObjectAcl",
            "GetObjectAttributes",
            "GetObjectLegalHold",
            "GetObjectRetention",
            "GetObjectTagging",
            "HeadBucket",
            "HeadObject",
            "ListMultipartUploads",
            "ListObjects",
            "ListObjectsV2",
            "ListObjectVersions",
            "ListParts",
            "PutObject",
            "PutObjectAcl",
            "PutObjectLegalHold",
            "PutObjectRetention",
            "PutObjectTagging",
            "RestoreObject",
            "UploadPart",
            "UploadPartCopy",
        ];
        for op in Operation::ALL {
            let listed = through_access_points.contains(&op.as_str());
            match op.support() {
                Support::Forwarded(_) | Support::Withheld => assert!(listed, "{op:?}"),
                Support::Synthesized(_) => assert!(listed || op == Operation::ListBuckets, "{op:?}"),
                Support::NotThroughAccessPoints => assert!(!listed, "{op:?} is taken by access points"),
            }
            if let Support::Forwarded(_) = op.support() {
                assert_ne!(op.spec().resource, Resource::Service, "{op:?}");
            }
        }
        assert_eq!(
            Operation::ALL
                .iter()
                .filter(|op| through_access_points.contains(&op.as_str()))
                .count(),
            through_access_points.len(),
            "every access point operation is in the model"
        );
    }
}
