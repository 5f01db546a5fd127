//! Inbound SigV4 (`Authorization: AWS4-HMAC-SHA256 ...`) verification.
//!
//! The canonical request is rebuilt from the request exactly as received: the raw path (S3 never
//! normalises or re-encodes it), the query re-encoded with S3 `UriEncode` and sorted, and exactly
//! the headers the client listed in `SignedHeaders`. We build it ourselves rather than through
//! aws-sigv4's `sign` because verification must follow the client's `SignedHeaders` list to the
//! letter, while `sign` decides on its own which headers to add (`x-amz-date`,
//! `x-amz-content-sha256`) or exclude; the tests check both agree on every request aws-sigv4 can
//! sign, and botocore's signatures are checked end to end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method};

use crate::error::{GatewayError, S3ErrorCode};
use crate::s3::{amzdate, PayloadHash, S3Target};
use crate::secret::{ct_eq, Secret};
use crate::sigv4::{canonical_query_of, canonical_request_with_query, credential_scope, hmac, Trim};

pub use crate::sigv4::{
    canonical_request, canonical_request_of, is_signature, signing_key, string_to_sign, SigningKeyCache, ALGORITHM,
};

/// Verifies SigV4 header signatures against the keys apgate issued.
#[derive(Debug)]
pub struct SigV4Verifier {
    keys: HashMap<String, IssuedKey>,
    accepted_regions: Vec<String>,
    max_skew: Duration,
    /// Derived signing keys of the issued secrets.
    derived: SigningKeyCache,
}

#[derive(Debug)]
struct IssuedKey {
    identity: Arc<str>,
    secret: Secret,
}

/// A request whose signature checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    pub identity: Arc<str>,
    pub access_key_id: String,
    pub payload: PayloadHash,
    /// For signed aws-chunked payloads: what each chunk signature is checked against.
    pub chunks: Option<crate::chunked::Inbound>,
}

/// The parts of an `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationHeader<'a> {
    pub access_key_id: &'a str,
    pub date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    pub signed_headers: Vec<&'a str>,
    pub signature: &'a str,
}

impl SigV4Verifier {
    /// The signing key for (access key, date, region, `s3`), derived once and cached.
    fn derived_key(&self, access_key_id: &str, secret: &Secret, date: &str, region: &str) -> [u8; 32] {
        self.derived.get(access_key_id, secret.expose(), date, region)
    }

    /// How many derived keys are cached (for tests).
    #[cfg(test)]
    fn cached_keys(&self) -> usize {
        self.derived.len()
    }

    /// The identity and secret of an access key apgate issued.
    pub(crate) fn lookup(&self, access_key_id: &str) -> Option<(&Arc<str>, &Secret)> {
        self.keys.get(access_key_id).map(|k| (&k.identity, &k.secret))
    }

    /// How far a request's time may be from apgate's clock.
    pub(crate) fn max_skew(&self) -> Duration {
        self.max_skew
    }

    /// `keys` maps access key id → (identity, secret).
    pub fn new(
        keys: impl IntoIterator<Item = (String, Arc<str>, Secret)>,
        accepted_regions: Vec<String>,
        max_skew: Duration,
    ) -> Self {
        let keys: HashMap<String, IssuedKey> = keys
            .into_iter()
            .map(|(akid, identity, secret)| (akid, IssuedKey { identity, secret }))
            .collect();
        let (keys_len, regions_len) = (keys.len(), accepted_regions.len());
        Self {
            keys,
            accepted_regions,
            max_skew,
            derived: SigningKeyCache::new(4 * keys_len.max(1) * regions_len.max(1) + 16),
        }
    }

    /// The verifier of a configuration: the keys of its identities, its accepted regions and skew.
    pub fn from_config(config: &crate::config::Config) -> Self {
        let keys = config.identities.iter().flat_map(|i| {
            let name: Arc<str> = Arc::from(i.name.as_str());
            i.keys
                .iter()
                .map(move |k| (k.access_key_id.clone(), name.clone(), k.secret_access_key.clone()))
        });
        Self::new(keys, config.sigv4.accepted_regions.clone(), config.sigv4.max_clock_skew)
    }

    /// Verifies a request from its head alone (the body is never touched).
    pub fn verify(
        &self,
        method: &Method,
        target: &S3Target,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Result<Verified, GatewayError> {
        let authz = headers.get(http::header::AUTHORIZATION).ok_or_else(|| {
            GatewayError::client(
                S3ErrorCode::AccessDenied,
                "Anonymous access is not allowed: sign the request with a key apgate issued.",
            )
        })?;
        if headers.get_all(http::header::AUTHORIZATION).iter().count() > 1 {
            return Err(malformed("The request carries more than one Authorization header."));
        }
        let authz = authz
            .to_str()
            .map_err(|_| malformed("The Authorization header is not ASCII."))?;
        let auth = parse_authorization(authz)?;

        if auth.service != "s3" {
            return Err(malformed(&format!(
                "The service '{}' in the credential scope is wrong; expecting 's3'.",
                auth.service
            )));
        }
        if !self.accepted_regions.iter().any(|r| r == auth.region) {
            return Err(malformed(&format!(
                "The region '{}' is wrong; expecting '{}'.",
                auth.region,
                self.accepted_regions.first().map_or("", String::as_str)
            ))
            .with_detail("Region", self.accepted_regions.first().cloned().unwrap_or_default()));
        }
        let dated = RequestDate::of(headers)?;
        let amz_date = dated.amz_date.as_str();
        let request_time = dated.time;
        if !amz_date.starts_with(auth.date) {
            return Err(malformed(&format!(
                "The credential scope date '{}' does not match the {} date '{}'.",
                auth.date,
                dated.header,
                &amz_date[..8]
            )));
        }
        if !auth.signed_headers.contains(&"host") {
            return Err(malformed("SignedHeaders must include host."));
        }
        if !auth.signed_headers.contains(&dated.header) {
            return Err(malformed(&format!("SignedHeaders must include {}.", dated.header)));
        }
        let key = self.keys.get(auth.access_key_id).ok_or_else(|| {
            GatewayError::client(
                S3ErrorCode::InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records.",
            )
            .with_detail("AWSAccessKeyId", auth.access_key_id)
        })?;

        let skew = match now.duration_since(request_time) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        if skew > self.max_skew {
            return Err(GatewayError::client(
                S3ErrorCode::RequestTimeTooSkewed,
                "The difference between the request time and the current time is too large.",
            )
            .with_detail("RequestTime", amz_date)
            .with_detail("ServerTime", amzdate::format(now))
            .with_detail("MaxAllowedSkewMilliseconds", self.max_skew.as_millis().to_string()));
        }

        require_signed_amz_headers(headers, &auth.signed_headers)?;
        refuse_session_token(headers.contains_key(&crate::s3::headers::X_AMZ_SECURITY_TOKEN))?;

        let payload_value = headers.get(&crate::s3::headers::X_AMZ_CONTENT_SHA256).ok_or_else(|| {
            GatewayError::client(
                S3ErrorCode::MissingSecurityHeader,
                "Your request is missing the required header x-amz-content-sha256.",
            )
            .with_detail("MissingHeaderName", "x-amz-content-sha256")
        })?;
        let payload = payload_value
            .to_str()
            .ok()
            .and_then(PayloadHash::parse)
            .ok_or_else(|| GatewayError::client(S3ErrorCode::InvalidArgument, "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER], or a valid sha256 value."))?;

        let query = canonical_query_of(&target.query, &[]);
        let scope = credential_scope(auth.date, auth.region, auth.service);
        let signing_key = self.derived_key(auth.access_key_id, &key.secret, auth.date, auth.region);
        let signed_with = |trim: Trim| {
            let creq = canonical_request_with_query(
                method.as_str(),
                &target.raw_path,
                &query,
                headers,
                &auth.signed_headers,
                payload_value.as_bytes(),
                trim,
            );
            let sts = string_to_sign(amz_date, &scope, &creq);
            ct_eq(
                &crate::s3::encoding::hex32(&hmac(&signing_key, sts.as_bytes())),
                auth.signature.as_bytes(),
            )
        };
        if !(signed_with(Trim::Whitespace) || (has_tab(headers, &auth.signed_headers) && signed_with(Trim::Spaces))) {
            return Err(GatewayError::client(
                S3ErrorCode::SignatureDoesNotMatch,
                "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
            )
            .with_detail("AWSAccessKeyId", auth.access_key_id));
        }
        let chunks = matches!(payload, PayloadHash::StreamingSigned { .. }).then(|| crate::chunked::Inbound {
            key: crate::chunked::ChunkKey::new(signing_key, amz_date, scope),
            seed: auth.signature.to_owned(),
        });
        Ok(Verified {
            identity: key.identity.clone(),
            access_key_id: auth.access_key_id.to_owned(),
            payload,
            chunks,
        })
    }
}

pub use crate::s3::request::PRESIGN_PARAMS;

/// The longest validity S3 accepts for a presigned URL (7 days).
pub const MAX_PRESIGN_EXPIRES_SECONDS: u64 = 604_800;

/// Whether the request carries SigV4 query authentication.
pub fn is_presigned(target: &S3Target) -> bool {
    target.has_param("X-Amz-Signature") || target.has_param("X-Amz-Algorithm") || target.has_param("X-Amz-Credential")
}

impl SigV4Verifier {
    /// Verifies a presigned URL (<https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html>):
    /// the signature is over the query without `X-Amz-Signature`, with `UNSIGNED-PAYLOAD` as the
    /// payload hash; the URL is valid from `X-Amz-Date` for `X-Amz-Expires` seconds (at most 7 days).
    pub fn verify_presigned(
        &self,
        method: &Method,
        target: &S3Target,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Result<Verified, GatewayError> {
        if headers.contains_key(http::header::AUTHORIZATION) {
            return Err(GatewayError::client(
                S3ErrorCode::InvalidArgument,
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter or the Authorization header should be specified.",
            ));
        }
        let param = |name: &str| {
            target
                .param(name)
                .ok_or_else(|| query_error(&format!("Query-string authentication requires the {name} parameter.")))
        };
        if param("X-Amz-Algorithm")? != ALGORITHM {
            return Err(query_error("X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"."));
        }
        let credential = param("X-Amz-Credential")?;
        let amz_date = param("X-Amz-Date")?;
        let expires = param("X-Amz-Expires")?;
        let signed = param("X-Amz-SignedHeaders")?;
        let signature = param("X-Amz-Signature")?;

        let scope: Vec<&str> = split_at_byte(credential, b'/').collect();
        if scope.len() != 5 || scope[4] != "aws4_request" || scope[0].is_empty() {
            return Err(query_error(
                "X-Amz-Credential must be ACCESS_KEY/YYYYMMDD/REGION/s3/aws4_request.",
            ));
        }
        let (akid, date, region, service) = (scope[0], scope[1], scope[2], scope[3]);
        if service != "s3" {
            return Err(query_error(&format!(
                "The service '{service}' in X-Amz-Credential is wrong; expecting 's3'."
            )));
        }
        if !self.accepted_regions.iter().any(|r| r == region) {
            return Err(query_error(&format!(
                "The region '{region}' is wrong; expecting '{}'.",
                self.accepted_regions.first().map_or("", String::as_str)
            )));
        }
        let request_time = amzdate::parse(amz_date)
            .ok_or_else(|| query_error("X-Amz-Date must be in the ISO8601 basic format YYYYMMDD'T'HHMMSS'Z'."))?;
        if !amz_date.starts_with(date) || date.len() != 8 {
            return Err(query_error("The date in X-Amz-Credential does not match X-Amz-Date."));
        }
        let expires: u64 = expires
            .parse()
            .map_err(|_| query_error("X-Amz-Expires should be a number of seconds."))?;
        if expires == 0 {
            return Err(query_error("X-Amz-Expires must be positive."));
        }
        if expires > MAX_PRESIGN_EXPIRES_SECONDS {
            return Err(query_error(
                "X-Amz-Expires must be less than a week (in seconds) that is 604800.",
            ));
        }
        let signed_headers = parse_signed_headers(signed);
        if !signed_headers.as_ref().is_some_and(|h| h.contains(&"host")) {
            return Err(query_error(
                "X-Amz-SignedHeaders must be sorted lowercase header names including host.",
            ));
        }
        let signed_headers = signed_headers.unwrap_or_default();
        if !is_signature(signature) {
            return Err(query_error("X-Amz-Signature must be 64 lowercase hex characters."));
        }
        let key = self.keys.get(akid).ok_or_else(|| {
            GatewayError::client(
                S3ErrorCode::InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records.",
            )
            .with_detail("AWSAccessKeyId", akid)
        })?;
        if request_time > now + self.max_skew {
            return Err(
                GatewayError::client(S3ErrorCode::AccessDenied, "Request is not valid yet.")
                    .with_detail("X-Amz-Date", amz_date)
                    .with_detail("ServerTime", amzdate::format(now)),
            );
        }
        if now > request_time + Duration::from_secs(expires) {
            return Err(GatewayError::client(S3ErrorCode::AccessDenied, "Request has expired.")
                .with_detail("X-Amz-Expires", expires.to_string())
                .with_detail("Expires", amzdate::format(request_time + Duration::from_secs(expires)))
                .with_detail("ServerTime", amzdate::format(now)));
        }
        require_signed_amz_headers(headers, &signed_headers)?;
        refuse_session_token(
            target.has_param("X-Amz-Security-Token") || headers.contains_key(&crate::s3::headers::X_AMZ_SECURITY_TOKEN),
        )?;

        let payload = PayloadHash::Unsigned;
        let query = canonical_query_of(&target.query, &["X-Amz-Signature"]);
        let scope = format!("{date}/{region}/{service}/aws4_request");
        let signing_key = self.derived_key(akid, &key.secret, date, region);
        let signed_with = |trim: Trim| {
            let creq = canonical_request_with_query(
                method.as_str(),
                &target.raw_path,
                &query,
                headers,
                &signed_headers,
                payload.as_str().as_bytes(),
                trim,
            );
            let sts = string_to_sign(amz_date, &scope, &creq);
            ct_eq(
                crate::s3::encoding::hex_lower(&hmac(&signing_key, sts.as_bytes())).as_bytes(),
                signature.as_bytes(),
            )
        };
        if !(signed_with(Trim::Whitespace) || (has_tab(headers, &signed_headers) && signed_with(Trim::Spaces))) {
            return Err(GatewayError::client(
                S3ErrorCode::SignatureDoesNotMatch,
                "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
            )
            .with_detail("AWSAccessKeyId", akid));
        }
        Ok(Verified {
            identity: key.identity.clone(),
            access_key_id: akid.to_owned(),
            payload,
            chunks: None,
        })
    }
}

/// Whether a signed header's value holds a tab. Signers disagree on tabs: botocore collapses every
/// run of white space (what moto checks), aws-sigv4 only runs of spaces (what the smithy SDKs send,
/// and, they say, S3 checks). A signature made either way is accepted; both need the secret, and the
/// two readings differ only in white space apgate does not forward as received (the outbound value
/// has its runs made one space).
fn has_tab(headers: &HeaderMap, signed: &[&str]) -> bool {
    signed
        .iter()
        .any(|name| headers.get_all(*name).iter().any(|v| v.as_bytes().contains(&b'\t')))
}

/// When a SigV4 request was made: `x-amz-date`, or else the `Date` header ("If AWS can't find a
/// value for x-amz-date, it looks for the date header":
/// <https://docs.aws.amazon.com/general/latest/gr/sigv4-date-handling.html>), in ISO 8601 basic
/// form or as an HTTP date. The string to sign carries the time in ISO 8601 basic form either way,
/// and the header it came from must be signed.
#[derive(Debug)]
struct RequestDate {
    header: &'static str,
    time: SystemTime,
    /// The time as `YYYYMMDD'T'HHMMSS'Z'`.
    amz_date: String,
}

impl RequestDate {
    fn of(headers: &HeaderMap) -> Result<Self, GatewayError> {
        let invalid = || {
            GatewayError::client(
                S3ErrorCode::AccessDenied,
                "AWS authentication requires a valid Date or x-amz-date header.",
            )
        };
        let (header, values) = match headers.get_all(&crate::s3::headers::X_AMZ_DATE).iter().count() {
            0 => ("date", headers.get_all(http::header::DATE)),
            _ => ("x-amz-date", headers.get_all(&crate::s3::headers::X_AMZ_DATE)),
        };
        let mut values = values.iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(invalid());
        };
        let value = value.to_str().map_err(|_| invalid())?;
        let time = match header {
            "x-amz-date" => amzdate::parse(value),
            _ => amzdate::parse(value).or_else(|| amzdate::parse_http_date(value)),
        }
        .ok_or_else(invalid)?;
        Ok(Self {
            header,
            time,
            // The signer's own text when it is already the basic format (`parse` accepted it):
            // what it put in its string to sign; a `Date` is turned into that format.
            amz_date: if header == "x-amz-date" {
                value.to_owned()
            } else {
                amzdate::format(time)
            },
        })
    }
}

/// The keys apgate issues are long-term keys: a session token beside one belongs to other
/// credentials (S3 would answer `InvalidToken`), and is never forwarded.
fn refuse_session_token(present: bool) -> Result<(), GatewayError> {
    if present {
        return Err(GatewayError::client(
            S3ErrorCode::InvalidToken,
            "The provided token is not valid with this key: keys apgate issues take no session token.",
        ));
    }
    Ok(())
}

/// S3 requires every `x-amz-*` header of a request to be signed: an unsigned one could be added by
/// anyone on the way (a copy source, an ACL) and apgate would forward and sign it.
fn require_signed_amz_headers(headers: &HeaderMap, signed: &[&str]) -> Result<(), GatewayError> {
    let unsigned: Vec<&str> = headers
        .keys()
        .map(http::HeaderName::as_str)
        .filter(|h| h.starts_with("x-amz-") && !signed.contains(h))
        .collect();
    if unsigned.is_empty() {
        return Ok(());
    }
    Err(GatewayError::client(
        S3ErrorCode::AccessDenied,
        "There were headers present in the request which were not signed.",
    )
    .with_detail("HeadersNotSigned", unsigned.join(", ")))
}

/// A `SignedHeaders` list: lowercase header names, sorted, each once.
fn parse_signed_headers(list: &str) -> Option<Vec<&str>> {
    let names: Vec<&str> = split_at_byte(list, b';').collect();
    let well_formed = names.iter().all(|h| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.')
    });
    (well_formed && names.windows(2).all(|w| w[0] < w[1])).then_some(names)
}

/// `s` split at an ASCII byte, as `str::split` would: a plain byte scan, which on the short parts
/// of an `Authorization` header costs a fraction of the general searcher's set-up.
fn split_at_byte(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    // A constant for every caller (a literal), so the check compiles away.
    assert!(sep.is_ascii(), "a byte of a multi-byte character is no boundary");
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.bytes().position(|b| b == sep) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// `s` split at the first `sep` (an ASCII byte), as `str::split_once` would.
fn split_once_at_byte(s: &str, sep: u8) -> Option<(&str, &str)> {
    // A constant for every caller (a literal), so the check compiles away.
    assert!(sep.is_ascii(), "a byte of a multi-byte character is no boundary");
    let i = s.bytes().position(|b| b == sep)?;
    Some((&s[..i], &s[i + 1..]))
}

fn query_error(message: &str) -> GatewayError {
    GatewayError::client(S3ErrorCode::AuthorizationQueryParametersError, message)
}

fn malformed(message: &str) -> GatewayError {
    GatewayError::client(S3ErrorCode::AuthorizationHeaderMalformed, message)
}

/// Parses `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request, SignedHeaders=a;b, Signature=hex`.
pub fn parse_authorization(value: &str) -> Result<AuthorizationHeader<'_>, GatewayError> {
    let (algorithm, rest) = split_once_at_byte(value, b' ').unwrap_or((value, ""));
    if algorithm != ALGORITHM {
        if algorithm == "AWS" {
            return Err(GatewayError::client(
                S3ErrorCode::InvalidRequest,
                "The authorization mechanism you have provided is not supported on this listener. Please use AWS4-HMAC-SHA256.",
            ));
        }
        return Err(malformed(
            "The authorization header is malformed; the algorithm must be AWS4-HMAC-SHA256.",
        ));
    }
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in split_at_byte(rest, b',') {
        let part = part.trim();
        let (k, v) = split_once_at_byte(part, b'=').ok_or_else(|| {
            malformed(&format!(
                "The authorization header is malformed; '{part}' is not a key=value pair."
            ))
        })?;
        let slot = match k {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            _ => {
                return Err(malformed(&format!(
                    "The authorization header is malformed; unknown component '{k}'."
                )))
            }
        };
        if slot.replace(v).is_some() {
            return Err(malformed(&format!(
                "The authorization header is malformed; '{k}' is given twice."
            )));
        }
    }
    let credential =
        credential.ok_or_else(|| malformed("The authorization header is malformed; Credential is missing."))?;
    let signed = signed.ok_or_else(|| malformed("The authorization header is malformed; SignedHeaders is missing."))?;
    let signature =
        signature.ok_or_else(|| malformed("The authorization header is malformed; Signature is missing."))?;

    let mut parts = split_at_byte(credential, b'/');
    let mut scope = [""; 5];
    let mut n = 0;
    for part in parts.by_ref().take(5) {
        scope[n] = part;
        n += 1;
    }
    if n != 5 || parts.next().is_some() || scope[4] != "aws4_request" || scope[0].is_empty() {
        return Err(malformed(
            "The authorization header is malformed; the Credential must be ACCESS_KEY/YYYYMMDD/REGION/s3/aws4_request.",
        ));
    }
    if scope[1].len() != 8 || !scope[1].bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(&format!(
            "The authorization header is malformed; invalid date '{}' in the credential scope.",
            scope[1]
        )));
    }
    if !is_signature(signature) {
        return Err(malformed(
            "The authorization header is malformed; the Signature must be 64 lowercase hex characters.",
        ));
    }
    let signed_headers = parse_signed_headers(signed).ok_or_else(|| {
        malformed("The authorization header is malformed; SignedHeaders must be lowercase names, sorted, each once.")
    })?;
    Ok(AuthorizationHeader {
        access_key_id: scope[0],
        date: scope[1],
        region: scope[2],
        service: scope[3],
        signed_headers,
        signature,
    })
}

#[cfg(test)]
mod tests;
