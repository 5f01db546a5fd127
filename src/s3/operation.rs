//! Which S3 operation a request is, from method + path + query + a few headers.
//!
//! The classification drives routing (operation classes), what apgate forwards at all, and the
//! `operation` metric label, so it is a closed set.

use http::{HeaderMap, Method};

use super::addressing::S3Target;

/// An S3 operation (the API names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    ListBuckets,
    HeadBucket,
    GetBucketLocation,
    ListObjects,
    ListObjectsV2,
    ListObjectVersions,
    ListMultipartUploads,
    DeleteObjects,
    GetObject,
    HeadObject,
    PutObject,
    CopyObject,
    DeleteObject,
    CreateMultipartUpload,
    UploadPart,
    UploadPartCopy,
    CompleteMultipartUpload,
    AbortMultipartUpload,
    ListParts,
    GetObjectTagging,
    PutObjectTagging,
    DeleteObjectTagging,
    GetObjectAcl,
    PutObjectAcl,
    GetObjectAttributes,
    GetObjectLegalHold,
    PutObjectLegalHold,
    GetObjectRetention,
    PutObjectRetention,
    RestoreObject,
    /// Any other bucket-level request: bucket creation, deletion and configuration.
    BucketManagement,
    /// A method S3 does not define on this resource.
    Unknown,
}

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

/// Whether apgate forwards an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Forwarded through the access point.
    Forwarded,
    /// Answered by apgate itself from the caller's routes.
    Synthesized,
    /// Allowed by access points but needing rewriting apgate does not do yet.
    NotYet,
    /// Access points do not allow it.
    NotThroughAccessPoints,
}

impl Operation {
    /// Classifies a request.
    pub fn classify(method: &Method, target: &S3Target, headers: &HeaderMap) -> Self {
        let has = |k: &str| target.has_param(k);
        if target.bucket.is_none() {
            return if *method == Method::GET {
                Self::ListBuckets
            } else {
                Self::Unknown
            };
        }
        if target.key.is_none() {
            return match *method {
                Method::HEAD => Self::HeadBucket,
                Method::GET if has("location") => Self::GetBucketLocation,
                Method::GET if has("uploads") => Self::ListMultipartUploads,
                Method::GET if has("versions") => Self::ListObjectVersions,
                Method::GET if target.param("list-type") == Some("2") => Self::ListObjectsV2,
                Method::GET if !has_bucket_subresource(target) => Self::ListObjects,
                Method::POST if has("delete") => Self::DeleteObjects,
                Method::GET | Method::PUT | Method::DELETE | Method::POST => Self::BucketManagement,
                _ => Self::Unknown,
            };
        }
        let copy = headers.contains_key(&crate::s3::headers::X_AMZ_COPY_SOURCE);
        match *method {
            Method::GET if has("uploadId") => Self::ListParts,
            Method::GET if has("tagging") => Self::GetObjectTagging,
            Method::GET if has("acl") => Self::GetObjectAcl,
            Method::GET if has("attributes") => Self::GetObjectAttributes,
            Method::GET if has("legal-hold") => Self::GetObjectLegalHold,
            Method::GET if has("retention") => Self::GetObjectRetention,
            Method::GET => Self::GetObject,
            Method::HEAD => Self::HeadObject,
            Method::PUT if has("partNumber") && has("uploadId") => {
                if copy {
                    Self::UploadPartCopy
                } else {
                    Self::UploadPart
                }
            }
            Method::PUT if has("tagging") => Self::PutObjectTagging,
            Method::PUT if has("acl") => Self::PutObjectAcl,
            Method::PUT if has("legal-hold") => Self::PutObjectLegalHold,
            Method::PUT if has("retention") => Self::PutObjectRetention,
            Method::PUT if copy => Self::CopyObject,
            Method::PUT => Self::PutObject,
            Method::POST if has("uploads") => Self::CreateMultipartUpload,
            Method::POST if has("uploadId") => Self::CompleteMultipartUpload,
            Method::POST if has("restore") => Self::RestoreObject,
            Method::DELETE if has("uploadId") => Self::AbortMultipartUpload,
            Method::DELETE if has("tagging") => Self::DeleteObjectTagging,
            Method::DELETE => Self::DeleteObject,
            _ => Self::Unknown,
        }
    }

    /// The API name, used as the `operation` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ListBuckets => "ListBuckets",
            Self::HeadBucket => "HeadBucket",
            Self::GetBucketLocation => "GetBucketLocation",
            Self::ListObjects => "ListObjects",
            Self::ListObjectsV2 => "ListObjectsV2",
            Self::ListObjectVersions => "ListObjectVersions",
            Self::ListMultipartUploads => "ListMultipartUploads",
            Self::DeleteObjects => "DeleteObjects",
            Self::GetObject => "GetObject",
            Self::HeadObject => "HeadObject",
            Self::PutObject => "PutObject",
            Self::CopyObject => "CopyObject",
            Self::DeleteObject => "DeleteObject",
            Self::CreateMultipartUpload => "CreateMultipartUpload",
            Self::UploadPart => "UploadPart",
            Self::UploadPartCopy => "UploadPartCopy",
            Self::CompleteMultipartUpload => "CompleteMultipartUpload",
            Self::AbortMultipartUpload => "AbortMultipartUpload",
            Self::ListParts => "ListParts",
            Self::GetObjectTagging => "GetObjectTagging",
            Self::PutObjectTagging => "PutObjectTagging",
            Self::DeleteObjectTagging => "DeleteObjectTagging",
            Self::GetObjectAcl => "GetObjectAcl",
            Self::PutObjectAcl => "PutObjectAcl",
            Self::GetObjectAttributes => "GetObjectAttributes",
            Self::GetObjectLegalHold => "GetObjectLegalHold",
            Self::PutObjectLegalHold => "PutObjectLegalHold",
            Self::GetObjectRetention => "GetObjectRetention",
            Self::PutObjectRetention => "PutObjectRetention",
            Self::RestoreObject => "RestoreObject",
            Self::BucketManagement => "BucketManagement",
            Self::Unknown => "Unknown",
        }
    }

    /// The class a route must allow for this operation.
    pub fn class(self) -> OperationClass {
        use OperationClass::{Delete, List, Read, Write};
        match self {
            Self::GetObject
            | Self::HeadObject
            | Self::GetObjectTagging
            | Self::GetObjectAcl
            | Self::GetObjectAttributes
            | Self::GetObjectLegalHold
            | Self::GetObjectRetention => Read,
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
            | Self::RestoreObject
            | Self::BucketManagement
            | Self::Unknown => Write,
            Self::DeleteObject | Self::DeleteObjects => Delete,
            Self::ListBuckets
            | Self::HeadBucket
            | Self::GetBucketLocation
            | Self::ListObjects
            | Self::ListObjectsV2
            | Self::ListObjectVersions
            | Self::ListMultipartUploads
            | Self::ListParts => List,
        }
    }

    /// Whether apgate forwards this operation today.
    pub fn support(self) -> Support {
        match self {
            Self::ListBuckets => Support::Synthesized,
            Self::BucketManagement => Support::NotThroughAccessPoints,
            Self::Unknown => Support::NotThroughAccessPoints,
            _ => Support::Forwarded,
        }
    }

    /// The key prefix a bucket-level listing is confined to, if the operation has one.
    pub fn list_prefix(self, target: &S3Target) -> Option<&str> {
        match self {
            Self::ListObjects | Self::ListObjectsV2 | Self::ListObjectVersions | Self::ListMultipartUploads => {
                Some(target.param("prefix").unwrap_or(""))
            }
            _ => None,
        }
    }
}

/// SigV2 presigned-URL parameters (authentication, not sub-resources).
const AUTH_V2_PARAMS: &[&str] = &["AWSAccessKeyId", "Expires", "Signature"];

/// Bucket sub-resources that make a bucket-level GET something other than ListObjects.
fn has_bucket_subresource(target: &S3Target) -> bool {
    const LIST_PARAMS: &[&str] = &["prefix", "delimiter", "marker", "max-keys", "encoding-type", "x-id"];
    target.query.iter().any(|p| {
        !LIST_PARAMS.contains(&p.key.as_str())
            && !p.key.starts_with("X-Amz-")
            && !AUTH_V2_PARAMS.contains(&p.key.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::addressing::parse_target;

    fn check(method: &str, path: &str, query: &str, copy: bool, want: Operation) {
        let t = parse_target(Some("h"), path, Some(query), &[]).unwrap();
        let mut headers = HeaderMap::new();
        if copy {
            headers.insert("x-amz-copy-source", "src/k".parse().unwrap());
        }
        let m: Method = method.parse().unwrap();
        assert_eq!(Operation::classify(&m, &t, &headers), want, "{method} {path}?{query}");
    }

    #[test]
    fn classifies_operations() {
        use Operation::*;
        let cases: &[(&str, &str, &str, bool, Operation)] = &[
            ("GET", "/", "", false, ListBuckets),
            ("HEAD", "/bkt", "", false, HeadBucket),
            ("GET", "/bkt", "location", false, GetBucketLocation),
            ("GET", "/bkt", "list-type=2&prefix=a", false, ListObjectsV2),
            ("GET", "/bkt/", "prefix=a&delimiter=%2F", false, ListObjects),
            ("GET", "/bkt", "versions", false, ListObjectVersions),
            ("GET", "/bkt", "uploads", false, ListMultipartUploads),
            ("GET", "/bkt", "policy", false, BucketManagement),
            (
                "GET",
                "/bkt",
                "prefix=a&X-Amz-Signature=00&X-Amz-Date=x",
                false,
                ListObjects,
            ),
            ("PUT", "/bkt", "", false, BucketManagement),
            ("DELETE", "/bkt", "", false, BucketManagement),
            ("POST", "/bkt", "delete", false, DeleteObjects),
            ("GET", "/bkt/k", "", false, GetObject),
            ("GET", "/bkt/k", "partNumber=1", false, GetObject),
            ("HEAD", "/bkt/k", "", false, HeadObject),
            ("PUT", "/bkt/k", "", false, PutObject),
            ("PUT", "/bkt/k", "", true, CopyObject),
            ("PUT", "/bkt/k", "partNumber=2&uploadId=u", false, UploadPart),
            ("PUT", "/bkt/k", "partNumber=2&uploadId=u", true, UploadPartCopy),
            ("POST", "/bkt/k", "uploads", false, CreateMultipartUpload),
            ("POST", "/bkt/k", "uploadId=u", false, CompleteMultipartUpload),
            ("DELETE", "/bkt/k", "uploadId=u", false, AbortMultipartUpload),
            ("GET", "/bkt/k", "uploadId=u", false, ListParts),
            ("DELETE", "/bkt/k", "", false, DeleteObject),
            ("GET", "/bkt/k", "tagging", false, GetObjectTagging),
            ("PUT", "/bkt/k", "tagging", false, PutObjectTagging),
            ("DELETE", "/bkt/k", "tagging", false, DeleteObjectTagging),
            ("GET", "/bkt/k", "acl", false, GetObjectAcl),
            ("GET", "/bkt/k", "attributes", false, GetObjectAttributes),
            ("POST", "/bkt/k", "restore", false, RestoreObject),
            ("PATCH", "/bkt/k", "", false, Unknown),
            ("POST", "/", "", false, Unknown),
        ];
        for (m, p, q, c, want) in cases {
            check(m, p, q, *c, *want);
        }
    }

    #[test]
    fn support_is_decided_per_operation() {
        for op in [
            Operation::CopyObject,
            Operation::UploadPartCopy,
            Operation::DeleteObjects,
            Operation::GetBucketLocation,
        ] {
            assert_eq!(op.support(), Support::Forwarded, "{op:?}");
        }
        assert_eq!(Operation::ListBuckets.support(), Support::Synthesized);
        assert_eq!(Operation::BucketManagement.support(), Support::NotThroughAccessPoints);
        assert_eq!(Operation::GetObject.support(), Support::Forwarded);
    }
}
