//! The S3 header names apgate reads or writes on every request, as constants: a lookup by a
//! `HeaderName` hashes it, where a lookup by `&str` first parses and validates the name.

use http::HeaderName;

pub static X_AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");
pub static X_AMZ_CONTENT_SHA256: HeaderName = HeaderName::from_static("x-amz-content-sha256");
pub static X_AMZ_SECURITY_TOKEN: HeaderName = HeaderName::from_static("x-amz-security-token");
pub static X_AMZ_COPY_SOURCE: HeaderName = HeaderName::from_static("x-amz-copy-source");
pub static X_AMZ_DECODED_CONTENT_LENGTH: HeaderName = HeaderName::from_static("x-amz-decoded-content-length");
pub static X_AMZ_REQUEST_ID: HeaderName = HeaderName::from_static("x-amz-request-id");
pub static X_AMZN_REQUESTID: HeaderName = HeaderName::from_static("x-amzn-requestid");
pub static X_AMZ_ID_2: HeaderName = HeaderName::from_static("x-amz-id-2");
pub static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub static X_AMZ_TRAILER: HeaderName = HeaderName::from_static("x-amz-trailer");
pub static X_AMZ_ACL: HeaderName = HeaderName::from_static("x-amz-acl");
pub static X_AMZ_EXPIRATION: HeaderName = HeaderName::from_static("x-amz-expiration");
pub static X_AMZ_BYPASS_GOVERNANCE_RETENTION: HeaderName = HeaderName::from_static("x-amz-bypass-governance-retention");
pub static X_AMZ_SSE_KMS_KEY_ID: HeaderName = HeaderName::from_static("x-amz-server-side-encryption-aws-kms-key-id");
pub static X_AMZ_EXPECTED_BUCKET_OWNER: HeaderName = HeaderName::from_static("x-amz-expected-bucket-owner");
pub static X_AMZ_SOURCE_EXPECTED_BUCKET_OWNER: HeaderName =
    HeaderName::from_static("x-amz-source-expected-bucket-owner");
