//! Outbound SigV4: signing name `s3`, the access point's region, single percent-encoding and no
//! path normalisation (PROTOCOL.md §1.2, §6.1).
//!
//! The canonical request is apgate's own (the one inbound verification uses, checked against AWS's
//! published examples and 1,360 botocore-signed requests); the cryptography is aws-sigv4's
//! (`generate_signing_key`, `calculate_signature`). The derived signing key is cached per access
//! key, date and region ([`SigningKeyCache`]): aws-sigv4's `sign` re-derives it (four HMACs) and
//! rebuilds its canonical request with several allocations on every call, about half of the cost
//! of a forwarded small GET. `tests` cross-check every signature with aws-sigv4's `sign`.

pub mod credentials;

use std::time::SystemTime;

use aws_credential_types::Credentials;
use http::header::{HeaderValue, AUTHORIZATION};
use http::request::Parts;

use crate::s3::{amzdate, PayloadHash};
use crate::sigv4::{
    canonical_query, canonical_request_sorted, credential_scope, string_to_sign, SigningKeyCache, Trim, ALGORITHM,
};

/// Signing failed (a header value that cannot be signed).
#[derive(Debug, thiserror::Error)]
#[error("cannot sign the upstream request: {0}")]
pub struct SignError(String);

/// Headers never signed, as aws-sigv4's defaults: recomputed by the signer or changed by proxies.
const UNSIGNED_HEADERS: &[&str] = &["authorization", "user-agent", "x-amzn-trace-id", "transfer-encoding"];

use crate::s3::headers::{X_AMZ_CONTENT_SHA256, X_AMZ_DATE, X_AMZ_SECURITY_TOKEN};

/// Signs `parts` in place and returns the signature (the seed of a signed aws-chunked body).
/// `signing_uri` is `https://{access point host}{path}?{query}`, already encoded; every header
/// present in `parts` is signed but those in [`UNSIGNED_HEADERS`]; `x-amz-date`,
/// `x-amz-content-sha256` and, for session credentials, `x-amz-security-token` are set here.
pub fn sign_request(
    parts: &mut Parts,
    signing_uri: &str,
    payload: &PayloadHash,
    credentials: &Credentials,
    region: &str,
    now: SystemTime,
    keys: &SigningKeyCache,
) -> Result<String, SignError> {
    let path_and_query = signing_uri
        .strip_prefix("https://")
        .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
        .ok_or_else(|| SignError(format!("not an https URI with a path: {signing_uri}")))?;
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));

    let mut amz_date = String::with_capacity(16);
    amzdate::push(&mut amz_date, now);
    let date = &amz_date[..8];
    let headers = &mut parts.headers;
    headers.remove(AUTHORIZATION);
    headers.insert(X_AMZ_DATE.clone(), value(&amz_date)?);
    headers.insert(X_AMZ_CONTENT_SHA256.clone(), payload_value(payload)?);
    match credentials.session_token() {
        Some(token) => {
            let mut token = value(token)?;
            token.set_sensitive(true);
            headers.insert(X_AMZ_SECURITY_TOKEN.clone(), token);
        }
        None => {
            headers.remove(&X_AMZ_SECURITY_TOKEN);
        }
    }
    // Every header but the unsigned ones, sorted by name; a stable sort keeps the values of a
    // repeated header in order.
    let mut pairs: Vec<(&str, &[u8])> = Vec::with_capacity(headers.len());
    for (name, v) in headers.iter() {
        if !UNSIGNED_HEADERS.contains(&name.as_str()) {
            v.to_str()
                .map_err(|_| SignError(format!("header {name} is not visible ASCII")))?;
            pairs.push((name.as_str(), v.as_bytes()));
        }
    }
    pairs.sort_by(|a, b| a.0.cmp(b.0));

    let (canonical, signed) = canonical_request_sorted(
        parts.method.as_str(),
        path,
        &canonical_query(query, &[]),
        &pairs,
        payload.as_str().as_bytes(),
        Trim::Spaces,
    );
    drop(pairs);
    let scope = credential_scope(date, region, "s3");
    let sts = string_to_sign(&amz_date, &scope, &canonical);
    let key = keys.get(
        credentials.access_key_id(),
        credentials.secret_access_key(),
        date,
        region,
    );
    let signature = aws_sigv4::sign::v4::calculate_signature(key, sts.as_bytes());

    let mut authorization = String::with_capacity(160 + signed.len());
    authorization.push_str(ALGORITHM);
    authorization.push_str(" Credential=");
    authorization.push_str(credentials.access_key_id());
    authorization.push('/');
    authorization.push_str(&scope);
    authorization.push_str(", SignedHeaders=");
    authorization.push_str(&signed);
    authorization.push_str(", Signature=");
    authorization.push_str(&signature);
    // The value takes the string's buffer as it is (no copy).
    let mut authorization =
        HeaderValue::from_maybe_shared(bytes::Bytes::from(authorization)).map_err(|e| SignError(e.to_string()))?;
    authorization.set_sensitive(true);
    parts.headers.insert(AUTHORIZATION, authorization);
    Ok(signature)
}

/// The `x-amz-content-sha256` value: a static one for the fixed forms.
fn payload_value(payload: &PayloadHash) -> Result<HeaderValue, SignError> {
    Ok(match payload {
        PayloadHash::Unsigned => HeaderValue::from_static("UNSIGNED-PAYLOAD"),
        PayloadHash::StreamingSigned { trailer: false } => {
            HeaderValue::from_static("STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
        }
        PayloadHash::StreamingSigned { trailer: true } => {
            HeaderValue::from_static("STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER")
        }
        PayloadHash::StreamingUnsignedTrailer => HeaderValue::from_static("STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
        other => value(other.as_str())?,
    })
}

fn value(v: &str) -> Result<HeaderValue, SignError> {
    HeaderValue::from_str(v).map_err(|e| SignError(e.to_string()))
}

#[cfg(test)]
mod tests;
