//! Outbound SigV4 with aws-sigv4: signing name `s3`, the access point's region, single
//! percent-encoding and no path normalisation (PROTOCOL.md §1.2, §6.1).

pub mod credentials;

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_smithy_runtime_api::client::identity::Identity;
use http::request::Parts;

use crate::s3::PayloadHash;

/// Signing failed (a header value aws-sigv4 cannot take).
#[derive(Debug, thiserror::Error)]
#[error("cannot sign the upstream request: {0}")]
pub struct SignError(String);

/// Signs `parts` in place and returns the signature (the seed of a signed aws-chunked body). `signing_uri` is `https://{access point host}{path}?{query}`, already
/// encoded; the headers present in `parts` are signed (minus aws-sigv4's default exclusions:
/// `authorization`, `user-agent`, `x-amzn-trace-id`, `transfer-encoding`).
pub fn sign_request(
    parts: &mut Parts,
    signing_uri: &str,
    payload: &PayloadHash,
    credentials: &Credentials,
    region: &str,
    now: SystemTime,
) -> Result<String, SignError> {
    let identity: Identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("s3")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| SignError(e.to_string()))?
        .into();

    let mut headers = Vec::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let value = value
            .to_str()
            .map_err(|_| SignError(format!("header {name} is not visible ASCII")))?;
        headers.push((name.as_str(), value));
    }
    let body = match payload {
        PayloadHash::Sha256(hex) => SignableBody::Precomputed(hex.clone()),
        PayloadHash::Unsigned => SignableBody::UnsignedPayload,
        PayloadHash::StreamingUnsignedTrailer => SignableBody::StreamingUnsignedPayloadTrailer,
        other => SignableBody::Precomputed(other.as_str().to_owned()),
    };
    let signable = SignableRequest::new(parts.method.as_str(), signing_uri, headers.into_iter(), body)
        .map_err(|e| SignError(e.to_string()))?;
    let (instructions, signature) = sign(signable, &params)
        .map_err(|e| SignError(e.to_string()))?
        .into_parts();
    for (name, value) in instructions.headers() {
        let value = http::HeaderValue::from_str(value).map_err(|e| SignError(e.to_string()))?;
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| SignError(e.to_string()))?;
        parts.headers.insert(name, value);
    }
    Ok(signature)
}
