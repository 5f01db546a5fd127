//! Inbound SigV2 (`Authorization: AWS AKID:base64(hmac-sha1)` and presigned
//! `?AWSAccessKeyId=&Expires=&Signature=`), for legacy clients such as s3cmd `--signature-v2` and
//! botocore's default presigner (DG2021 `RESTAuthentication.md`, PROTOCOL.md §4.5). Opt-in per
//! listener; outbound apgate always signs with SigV4, which access points require.
//!
//! StringToSign = `VERB\nContent-MD5\nContent-Type\nDate\n` + CanonicalizedAmzHeaders +
//! CanonicalizedResource. With `x-amz-date` present the Date line is empty (and `x-amz-date` is one
//! of the amz headers); presigned URLs put `Expires` in the Date line. The resource is `/bucket` +
//! the undecoded path (the whole path for path-style requests) + the sorted sub-resources.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use http::{HeaderMap, Method};
use sha1::Sha1;

use super::sigv4::{SigV4Verifier, Verified, MAX_PRESIGN_EXPIRES_SECONDS};
use crate::error::{GatewayError, S3ErrorCode};
use crate::s3::addressing::AddressingStyle;
use crate::s3::operation::{Operation, Spec};
use crate::s3::{PayloadHash, S3Target};
use crate::secret::{ct_eq, Secret};

/// Query parameters that are sub-resources, and so part of the signed resource: botocore's
/// `HmacV1Auth.QSAOfInterest`, and the markers of the object operations access points take that it
/// lacks (`attributes`, `legal-hold`, `retention`). Matched by decoded name (`?%61cl` is `acl`, as S3
/// reads it). `tests` check that every parameter that selects an operation apgate forwards is here,
/// but `list-type` (see [`covers`]).
pub const SUBRESOURCES: &[&str] = &[
    "accelerate",
    "acl",
    "analytics",
    "attributes",
    "cors",
    "defaultObjectAcl",
    "delete",
    "inventory",
    "legal-hold",
    "lifecycle",
    "location",
    "logging",
    "metrics",
    "notification",
    "object-lock",
    "partNumber",
    "policy",
    "replication",
    "requestPayment",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
    "restore",
    "retention",
    "select",
    "select-type",
    "storageClass",
    "tagging",
    "torrent",
    "uploadId",
    "uploads",
    "versionId",
    "versioning",
    "versions",
    "website",
];

pub use crate::s3::request::PRESIGN_V2_PARAMS;

/// Whether the request carries a SigV2 `Authorization` header.
pub fn is_header_v2(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes().starts_with(b"AWS "))
}

/// Whether the request is a SigV2 presigned URL.
pub fn is_presigned_v2(target: &S3Target) -> bool {
    target.has_param("AWSAccessKeyId") && target.has_param("Signature")
}

/// Verifies a SigV2 request (header or presigned) against the keys apgate issued.
pub fn verify(
    verifier: &SigV4Verifier,
    method: &Method,
    target: &S3Target,
    headers: &HeaderMap,
    now: SystemTime,
) -> Result<Verified, GatewayError> {
    let presigned = is_presigned_v2(target);
    if headers.contains_key(&crate::s3::headers::X_AMZ_SECURITY_TOKEN) {
        // apgate's keys are long-term: a session token belongs to other credentials.
        return Err(GatewayError::client(
            S3ErrorCode::InvalidToken,
            "The provided token is not valid with this key: keys apgate issues take no session token.",
        ));
    }
    if presigned && headers.contains_key(http::header::AUTHORIZATION) {
        return Err(GatewayError::client(
            S3ErrorCode::InvalidArgument,
            "Only one auth mechanism allowed.",
        ));
    }
    let (akid, signature, date_line) = if presigned {
        let akid = target.param("AWSAccessKeyId").unwrap_or_default();
        let signature = target.param("Signature").unwrap_or_default();
        let expires = target.param("Expires").ok_or_else(|| {
            GatewayError::client(
                S3ErrorCode::AccessDenied,
                "Query-string authentication requires the Expires parameter.",
            )
        })?;
        let epoch: u64 = expires.parse().map_err(|_| {
            GatewayError::client(
                S3ErrorCode::AccessDenied,
                "Expires must be a number of seconds since the epoch.",
            )
        })?;
        let too_far = || {
            GatewayError::client(
                S3ErrorCode::AuthorizationQueryParametersError,
                "A presigned URL may be valid for at most 7 days (604800 seconds).",
            )
        };
        // Checked: an Expires past what SystemTime holds is "too far", not a panic (found by the
        // `sigv2` fuzz target).
        let expiry = UNIX_EPOCH.checked_add(Duration::from_secs(epoch)).ok_or_else(too_far)?;
        if now > expiry {
            return Err(GatewayError::client(S3ErrorCode::AccessDenied, "Request has expired.")
                .with_detail("Expires", expires.to_owned()));
        }
        if expiry > now + Duration::from_secs(MAX_PRESIGN_EXPIRES_SECONDS) {
            return Err(too_far());
        }
        (akid.to_owned(), signature.to_owned(), expires.to_owned())
    } else {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                GatewayError::client(
                    S3ErrorCode::AuthorizationHeaderMalformed,
                    "The Authorization header is not ASCII.",
                )
            })?;
        let creds = value.strip_prefix("AWS ").unwrap_or_default();
        let (akid, signature) = creds
            .split_once(':')
            .filter(|(a, s)| !a.is_empty() && !s.is_empty())
            .ok_or_else(|| {
                GatewayError::client(
                    S3ErrorCode::AuthorizationHeaderMalformed,
                    "The authorization header is malformed; want AWS AccessKeyId:Signature.",
                )
            })?;
        let amz_date = header_str(headers, "x-amz-date");
        let date = amz_date.or_else(|| header_str(headers, "date")).ok_or_else(|| {
            GatewayError::client(
                S3ErrorCode::AccessDenied,
                "AWS authentication requires a valid Date or x-amz-date header.",
            )
        })?;
        let when = crate::s3::amzdate::parse_http_date(date).ok_or_else(|| {
            GatewayError::client(
                S3ErrorCode::AccessDenied,
                "AWS authentication requires a valid Date or x-amz-date header.",
            )
        })?;
        let skew = now.duration_since(when).unwrap_or_else(|e| e.duration());
        if skew > verifier.max_skew() {
            return Err(GatewayError::client(
                S3ErrorCode::RequestTimeTooSkewed,
                "The difference between the request time and the current time is too large.",
            )
            .with_detail("RequestTime", date.to_owned()));
        }
        // With x-amz-date the Date line is empty; x-amz-date is signed among the amz headers.
        let date_line = if amz_date.is_some() {
            String::new()
        } else {
            date.to_owned()
        };
        (akid.to_owned(), signature.to_owned(), date_line)
    };
    let (identity, secret) = verifier.lookup(&akid).ok_or_else(|| {
        GatewayError::client(
            S3ErrorCode::InvalidAccessKeyId,
            "The AWS Access Key Id you provided does not exist in our records.",
        )
        .with_detail("AWSAccessKeyId", akid.clone())
    })?;
    let sts = string_to_sign(method, target, headers, &date_line);
    let expected = sign(secret, &sts);
    if !ct_eq(expected.as_bytes(), signature.as_bytes()) {
        return Err(GatewayError::client(
            S3ErrorCode::SignatureDoesNotMatch,
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
        )
        .with_detail("AWSAccessKeyId", akid));
    }
    let payload = match headers
        .get(&crate::s3::headers::X_AMZ_CONTENT_SHA256)
        .and_then(|v| v.to_str().ok())
        .and_then(PayloadHash::parse)
    {
        Some(p @ (PayloadHash::Sha256(_) | PayloadHash::Unsigned)) => p,
        _ => PayloadHash::Unsigned,
    };
    Ok(Verified {
        identity: identity.clone(),
        access_key_id: akid,
        payload,
        chunks: None,
    })
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The SigV2 string to sign.
pub fn string_to_sign(method: &Method, target: &S3Target, headers: &HeaderMap, date_line: &str) -> String {
    let mut s = String::with_capacity(256);
    s.push_str(method.as_str());
    s.push('\n');
    s.push_str(header_str(headers, "content-md5").unwrap_or("").trim());
    s.push('\n');
    s.push_str(header_str(headers, "content-type").unwrap_or("").trim());
    s.push('\n');
    s.push_str(date_line);
    s.push('\n');
    let mut amz: Vec<(&str, String)> = Vec::new();
    for name in headers
        .keys()
        .map(http::HeaderName::as_str)
        .filter(|n| n.starts_with("x-amz-"))
    {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
            .collect();
        amz.push((name, values.join(",")));
    }
    amz.sort();
    for (name, value) in amz {
        s.push_str(name);
        s.push(':');
        s.push_str(&value);
        s.push('\n');
    }
    if target.style == AddressingStyle::VirtualHosted {
        if let Some(bucket) = &target.bucket {
            s.push('/');
            s.push_str(bucket.as_str());
        }
    }
    s.push_str(&target.raw_path);
    // A bucket's own resource is `/bucket/`, with or without the slash on the wire (botocore signs
    // `/bucket/` for `GET /bucket?prefix=`).
    if target.style == AddressingStyle::Path
        && target.bucket.is_some()
        && target.key.is_none()
        && !target.raw_path.ends_with('/')
    {
        s.push('/');
    }
    // The sub-resources by decoded name, with their decoded values (botocore unquotes values),
    // sorted by name; a valueless one (`?acl`) is the name alone. A name is at most once: the
    // typed parse refused duplicates.
    let mut subs: Vec<&crate::s3::encoding::QueryParam> = target
        .query
        .iter()
        .filter(|p| SUBRESOURCES.contains(&p.key.as_str()))
        .collect();
    subs.sort_by(|a, b| a.key.cmp(&b.key));
    for (i, p) in subs.iter().enumerate() {
        s.push(if i == 0 { '?' } else { '&' });
        s.push_str(&p.key);
        if p.has_value {
            s.push('=');
            s.push_str(&p.value);
        }
    }
    s
}

/// Whether a SigV2 signature covers every query parameter that selects `operation`: its markers and
/// required parameters must be sub-resources, or an unsigned parameter could turn the signed
/// request into another operation (a presigned PutObject plus `&tagging`). The one exception is
/// `list-type=2`, which S3's SigV2 never signed and botocore's SigV2 presigner sends unsigned: it
/// only chooses between ListObjects and ListObjectsV2, two readings of the same listing under the
/// same route class and prefix. Returns the first uncovered parameter.
pub fn covers(spec: &Spec) -> Result<(), &'static str> {
    let selecting = spec
        .markers
        .iter()
        .map(|m| m.name)
        .chain(spec.query.iter().filter(|(_, required)| *required).map(|(q, _)| *q));
    for name in selecting {
        let exception = spec.operation == Operation::ListObjectsV2 && name == "list-type";
        if !(SUBRESOURCES.contains(&name) || exception) {
            return Err(name);
        }
    }
    Ok(())
}

/// base64(HMAC-SHA1(secret, string to sign)).
pub fn sign(secret: &Secret, string_to_sign: &str) -> String {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(string_to_sign.as_bytes());
    base64_encode(&mac.finalize().into_bytes())
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
