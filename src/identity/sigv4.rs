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

use hmac::{Hmac, Mac};
use http::{HeaderMap, Method};
use sha2::{Digest, Sha256};

use crate::error::{GatewayError, S3ErrorCode};
use crate::s3::encoding::{uri_encode_into, Slash};
use crate::s3::{amzdate, PayloadHash, S3Target};
use crate::secret::{ct_eq, Secret};

type HmacSha256 = Hmac<Sha256>;

/// The algorithm name in `Authorization`.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Verifies SigV4 header signatures against the keys apgate issued.
#[derive(Debug)]
pub struct SigV4Verifier {
    keys: HashMap<String, IssuedKey>,
    accepted_regions: Vec<String>,
    max_skew: Duration,
    /// Derived signing keys of the issued secrets.
    derived: SigningKeyCache,
}

/// Derived SigV4 signing keys (four chained HMACs each) by (access key, date, region), for service
/// `s3`: the same for a whole day, so derived once instead of per request. Used for inbound
/// verification and outbound signing alike.
///
/// Copy-on-write: a hit takes no lock and allocates nothing (a map lookup by access key, then a scan
/// of that key's few (date, region) entries); a miss copies the map. Bounded: past `capacity`
/// entries it starts over rather than track ages. Its `Debug` never shows key material.
pub struct SigningKeyCache {
    map: arc_swap::ArcSwap<HashMap<String, Vec<DerivedKey>>>,
    capacity: usize,
}

#[derive(Clone)]
struct DerivedKey {
    date: String,
    region: String,
    key: [u8; 32],
}

impl Drop for DerivedKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl SigningKeyCache {
    /// A cache holding at most about `capacity` derived keys.
    pub fn new(capacity: usize) -> Self {
        Self {
            map: arc_swap::ArcSwap::from_pointee(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The signing key of `secret` (whose access key id is `access_key_id`) for `date` (YYYYMMDD)
    /// and `region`. An access key id names one secret for its whole life (AWS never reissues one),
    /// so it identifies the entry.
    pub fn get(&self, access_key_id: &str, secret: &str, date: &str, region: &str) -> [u8; 32] {
        let map = self.map.load();
        if let Some(found) = map
            .get(access_key_id)
            .and_then(|entries| entries.iter().find(|e| e.date == date && e.region == region))
        {
            return found.key;
        }
        let key = derive_signing_key(secret, date, region, "s3");
        let mut next = HashMap::clone(&map);
        if next.values().map(Vec::len).sum::<usize>() >= self.capacity {
            next.clear();
        }
        let entries = next.entry(access_key_id.to_owned()).or_default();
        // Yesterday's key for the same region is kept (clocks of clients straddle midnight) but no
        // more than a few per access key.
        if entries.len() >= 4 {
            entries.remove(0);
        }
        entries.push(DerivedKey {
            date: date.to_owned(),
            region: region.to_owned(),
            key,
        });
        self.map.store(Arc::new(next));
        key
    }

    /// How many derived keys are cached.
    pub fn len(&self) -> usize {
        self.map.load().values().map(Vec::len).sum()
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for SigningKeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKeyCache({} cached)", self.len())
    }
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
        let amz_date = headers
            .get(&crate::s3::headers::X_AMZ_DATE)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                GatewayError::client(
                    S3ErrorCode::AccessDenied,
                    "AWS authentication requires a valid x-amz-date header.",
                )
            })?;
        let request_time = amzdate::parse(amz_date).ok_or_else(|| {
            GatewayError::client(
                S3ErrorCode::AccessDenied,
                "AWS authentication requires a valid x-amz-date header.",
            )
        })?;
        if !amz_date.starts_with(auth.date) {
            return Err(malformed(&format!(
                "The credential scope date '{}' does not match the x-amz-date date '{}'.",
                auth.date,
                &amz_date[..8]
            )));
        }
        if !auth.signed_headers.contains(&"host") {
            return Err(malformed("SignedHeaders must include host."));
        }
        if !auth.signed_headers.contains(&"x-amz-date") {
            return Err(malformed("SignedHeaders must include x-amz-date."));
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

        let creq = canonical_request(
            method.as_str(),
            &target.raw_path,
            &target.raw_query,
            headers,
            &auth.signed_headers,
            payload_value.as_bytes(),
        );
        let scope = credential_scope(auth.date, auth.region, auth.service);
        let sts = string_to_sign(amz_date, &scope, &creq);
        let signing_key = self.derived_key(auth.access_key_id, &key.secret, auth.date, auth.region);
        let expected = crate::s3::encoding::hex32(&hmac(&signing_key, sts.as_bytes()));
        if !ct_eq(&expected, auth.signature.as_bytes()) {
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

/// The query parameters of a presigned (query-authenticated) SigV4 request.
pub const PRESIGN_PARAMS: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

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

        let scope: Vec<&str> = credential.split('/').collect();
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

        let payload = PayloadHash::Unsigned;
        let creq = canonical_request_with_query(
            method.as_str(),
            &target.raw_path,
            &canonical_query(&target.raw_query, &["X-Amz-Signature"]),
            headers,
            &signed_headers,
            payload.as_str().as_bytes(),
            Trim::Whitespace,
        );
        let scope = format!("{date}/{region}/{service}/aws4_request");
        let sts = string_to_sign(amz_date, &scope, &creq);
        let expected = crate::s3::encoding::hex_lower(&hmac(
            &self.derived_key(akid, &key.secret, date, region),
            sts.as_bytes(),
        ));
        if !ct_eq(expected.as_bytes(), signature.as_bytes()) {
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
    let names: Vec<&str> = list.split(';').collect();
    let well_formed = names.iter().all(|h| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.')
    });
    (well_formed && names.windows(2).all(|w| w[0] < w[1])).then_some(names)
}

/// A SigV4 signature: 64 lowercase hex characters.
pub(crate) fn is_signature(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn query_error(message: &str) -> GatewayError {
    GatewayError::client(S3ErrorCode::AuthorizationQueryParametersError, message)
}

fn malformed(message: &str) -> GatewayError {
    GatewayError::client(S3ErrorCode::AuthorizationHeaderMalformed, message)
}

/// Parses `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request, SignedHeaders=a;b, Signature=hex`.
pub fn parse_authorization(value: &str) -> Result<AuthorizationHeader<'_>, GatewayError> {
    let (algorithm, rest) = value.split_once(' ').unwrap_or((value, ""));
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
    for part in rest.split(',') {
        let part = part.trim();
        let (k, v) = part.split_once('=').ok_or_else(|| {
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

    let mut parts = credential.split('/');
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

/// The SigV4 canonical request for S3 (no path normalisation, single encoding).
pub fn canonical_request(
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: &HeaderMap,
    signed_headers: &[&str],
    payload_hash: &[u8],
) -> Vec<u8> {
    let query = canonical_query(raw_query, &[]);
    canonical_request_with_query(
        method,
        raw_path,
        &query,
        headers,
        signed_headers,
        payload_hash,
        Trim::Whitespace,
    )
}

/// How header values are trimmed in a canonical request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trim {
    /// Spaces and tabs, runs collapsed to one space (botocore's `' '.join(value.split())`): what
    /// inbound verification accepts.
    Whitespace,
    /// Spaces only (aws-sigv4, the AWS SDKs' Rust signer): what apgate signs outbound.
    Spaces,
}

/// As [`canonical_request`], with the canonical query string already built.
pub(crate) fn canonical_request_with_query(
    method: &str,
    raw_path: &str,
    canonical_query: &str,
    headers: &HeaderMap,
    signed_headers: &[&str],
    payload_hash: &[u8],
    trim: Trim,
) -> Vec<u8> {
    let mut out = canonical_prefix(method, raw_path, canonical_query);
    for name in signed_headers {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        let mut first = true;
        for value in headers.get_all(*name) {
            if !first {
                out.push(b',');
            }
            first = false;
            push_trimmed(&mut out, value.as_bytes(), trim);
        }
        out.push(b'\n');
    }
    out.push(b'\n');
    for (i, name) in signed_headers.iter().enumerate() {
        if i > 0 {
            out.push(b';');
        }
        out.extend_from_slice(name.as_bytes());
    }
    out.push(b'\n');
    out.extend_from_slice(payload_hash);
    out
}

/// A canonical request from header (name, value) pairs already sorted by name (a stable sort, so
/// the values of a name keep their order), each name lowercase: what outbound signing builds
/// from the whole outbound head, without looking any header up by name. Returns the request and
/// the `SignedHeaders` list.
pub(crate) fn canonical_request_sorted(
    method: &str,
    raw_path: &str,
    canonical_query: &str,
    pairs: &[(&str, &[u8])],
    payload_hash: &[u8],
    trim: Trim,
) -> (Vec<u8>, String) {
    let mut out = canonical_prefix(method, raw_path, canonical_query);
    let mut signed = String::with_capacity(16 * pairs.len());
    let mut previous: Option<&str> = None;
    for &(name, value) in pairs {
        if previous == Some(name) {
            out.push(b',');
        } else {
            if previous.is_some() {
                out.push(b'\n');
                signed.push(';');
            }
            out.extend_from_slice(name.as_bytes());
            out.push(b':');
            signed.push_str(name);
            previous = Some(name);
        }
        push_trimmed(&mut out, value, trim);
    }
    if previous.is_some() {
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(signed.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload_hash);
    (out, signed)
}

/// The first three lines of a canonical request: method, path, canonical query.
fn canonical_prefix(method: &str, raw_path: &str, canonical_query: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    for part in [method, raw_path, canonical_query] {
        out.extend_from_slice(part.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Trims a header value and collapses runs of spaces (and, for [`Trim::Whitespace`], tabs) to one.
fn push_trimmed(out: &mut Vec<u8>, value: &[u8], trim: Trim) {
    let mut in_space = false;
    let start = out.len();
    for &b in value {
        if b == b' ' || (b == b'\t' && trim == Trim::Whitespace) {
            in_space = true;
        } else {
            if in_space && out.len() > start {
                out.push(b' ');
            }
            in_space = false;
            out.push(b);
        }
    }
}

/// Query parameters decoded, re-encoded with S3 `UriEncode`, sorted by key then value. Parameters
/// named in `exclude` (the presigned `X-Amz-Signature`) are left out. Invalid escapes were already
/// refused by addressing, so they cannot reach here; if they do, they are kept verbatim.
pub fn canonical_query(raw_query: &str, exclude: &[&str]) -> String {
    if raw_query.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<(String, String)> = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let k = reencode(k);
            (!exclude.contains(&k.as_str())).then(|| (k, reencode(v)))
        })
        .collect();
    pairs.sort();
    let mut out = String::with_capacity(raw_query.len() + 16);
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

fn reencode(raw: &str) -> String {
    match crate::s3::encoding::percent_decode_query(raw) {
        Ok(bytes) => {
            let mut s = String::with_capacity(bytes.len());
            uri_encode_into(&mut s, &bytes, Slash::Encode);
            s
        }
        Err(_) => raw.to_owned(),
    }
}

/// `{date}/{region}/{service}/aws4_request`.
pub(crate) fn credential_scope(date: &str, region: &str, service: &str) -> String {
    let mut scope = String::with_capacity(date.len() + region.len() + service.len() + 16);
    for part in [date, "/", region, "/", service, "/aws4_request"] {
        scope.push_str(part);
    }
    scope
}

/// `AWS4-HMAC-SHA256\n<timestamp>\n<scope>\n<hex sha256(canonical request)>`.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &[u8]) -> String {
    let mut out = String::with_capacity(ALGORITHM.len() + amz_date.len() + scope.len() + 67);
    out.push_str(ALGORITHM);
    out.push('\n');
    out.push_str(amz_date);
    out.push('\n');
    out.push_str(scope);
    out.push('\n');
    crate::s3::encoding::push_hex(
        &mut out,
        &Sha256::digest(canonical_request),
        crate::s3::encoding::HEX_LOWER,
    );
    out
}

/// The derived signing key: four chained HMACs from the secret.
pub fn signing_key(secret: &Secret, date: &str, region: &str, service: &str) -> [u8; 32] {
    derive_signing_key(secret.expose(), date, region, service)
}

fn derive_signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests;
