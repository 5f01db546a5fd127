//! SigV4 as S3 uses it, the parts inbound verification, outbound signing and aws-chunked bodies
//! share: canonical requests (no path normalisation, single encoding), strings to sign, derived
//! signing keys and their cache, chunk and trailer signatures.
//!
//! **Architecture invariant:** pure computation over values it is given: no IO, no clock, no
//! knowledge of who is calling. `identity::sigv4` (verification), `signing` (apgate's own
//! signatures) and `chunked` (streaming bodies) build on it; it depends on none of them.

use std::collections::HashMap;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::s3::encoding::{uri_encode_into, QueryParam, Slash};
use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// The algorithm name in `Authorization`.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The SHA-256 of the empty string, part of every chunk's string to sign.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

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

/// A SigV4 signature: 64 lowercase hex characters.
pub fn is_signature(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
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

/// As [`canonical_request`], from the request's decoded query parameters (the one parse every
/// phase reads).
pub fn canonical_request_of(
    method: &str,
    raw_path: &str,
    params: &[QueryParam],
    headers: &HeaderMap,
    signed_headers: &[&str],
    payload_hash: &[u8],
) -> Vec<u8> {
    canonical_request_with_query(
        method,
        raw_path,
        &canonical_query_of(params, &[]),
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
    // Most values have nothing to trim (no tab, no space at either end, no run of two): as is.
    if !value.contains(&b'\t')
        && value.first() != Some(&b' ')
        && value.last() != Some(&b' ')
        && !value.windows(2).any(|w| w == b"  ")
    {
        out.extend_from_slice(value);
        return;
    }
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
    let pairs: Vec<(String, String)> = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let k = reencode(k);
            (!exclude.contains(&k.as_str())).then(|| (k, reencode(v)))
        })
        .collect();
    join_sorted(pairs)
}

/// The canonical query string of decoded parameters: names and values S3-`UriEncode`d, sorted by
/// name then value; those named in `exclude` left out.
pub fn canonical_query_of(params: &[QueryParam], exclude: &[&str]) -> String {
    let pairs: Vec<(String, String)> = params
        .iter()
        .filter(|p| !exclude.contains(&p.key.as_str()))
        .map(|p| {
            let mut k = String::with_capacity(p.key.len());
            uri_encode_into(&mut k, p.key.as_bytes(), Slash::Encode);
            let mut v = String::with_capacity(p.value.len());
            uri_encode_into(&mut v, p.value.as_bytes(), Slash::Encode);
            (k, v)
        })
        .collect();
    join_sorted(pairs)
}

/// Encoded (name, value) pairs sorted by name then value and joined as `k=v&k=v`.
fn join_sorted(mut pairs: Vec<(String, String)>) -> String {
    pairs.sort();
    let mut out = String::with_capacity(pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
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

pub(crate) fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The signing context of one side of a streaming upload: derived key, timestamp and scope.
#[derive(Clone)]
pub struct ChunkKey {
    key: [u8; 32],
    amz_date: String,
    scope: String,
}

impl std::fmt::Debug for ChunkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkKey")
            .field("amz_date", &self.amz_date)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl ChunkKey {
    pub fn new(signing_key: [u8; 32], amz_date: impl Into<String>, scope: impl Into<String>) -> Self {
        Self {
            key: signing_key,
            amz_date: amz_date.into(),
            scope: scope.into(),
        }
    }

    /// `AWS4-HMAC-SHA256-PAYLOAD\n<date>\n<scope>\n<previous>\n<sha256("")>\n<sha256(data)>`.
    pub fn chunk_signature(&self, previous: &str, data: &[u8]) -> String {
        self.chunk_signature_of_hash(previous, &crate::s3::encoding::hex_lower(&Sha256::digest(data)))
    }

    /// As [`ChunkKey::chunk_signature`], with the chunk's hex SHA-256 already computed (the inbound
    /// check and the outbound signature share one hash of each chunk).
    pub fn chunk_signature_of_hash(&self, previous: &str, data_sha256_hex: &str) -> String {
        let sts = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{previous}\n{EMPTY_SHA256}\n{data_sha256_hex}",
            self.amz_date, self.scope
        );
        self.sign(&sts)
    }

    /// `AWS4-HMAC-SHA256-TRAILER\n<date>\n<scope>\n<previous>\n<sha256(canonical trailers)>`.
    pub fn trailer_signature(&self, previous: &str, canonical_trailers: &[u8]) -> String {
        let sts = format!(
            "AWS4-HMAC-SHA256-TRAILER\n{}\n{}\n{previous}\n{}",
            self.amz_date,
            self.scope,
            crate::s3::encoding::hex_lower(&Sha256::digest(canonical_trailers))
        );
        self.sign(&sts)
    }

    fn sign(&self, sts: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(sts.as_bytes());
        crate::s3::encoding::hex_lower(&mac.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    /// AWS's SigV4 test suite (aws-signing-test-suite, as shipped with aws-sigv4 1.6.4),
    /// `get-header-value-trim`: leading spaces trimmed, runs of spaces inside a value made one.
    /// Both trimming rules read it alike.
    #[test]
    fn example_get_header_value_trim() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example.amazonaws.com"));
        h.insert("my-header1", HeaderValue::from_static(" value1"));
        h.insert("my-header2", HeaderValue::from_static("\"a   b   c\""));
        h.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        let want = "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\nmy-header2:\"a b c\"\n\
                    x-amz-date:20150830T123600Z\n\nhost;my-header1;my-header2;x-amz-date\n\
                    e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let signed = ["host", "my-header1", "my-header2", "x-amz-date"];
        for trim in [Trim::Whitespace, Trim::Spaces] {
            let creq = canonical_request_with_query("GET", "/", "", &h, &signed, EMPTY_SHA256.as_bytes(), trim);
            assert_eq!(String::from_utf8(creq).unwrap(), want, "{trim:?}");
        }
    }

    /// Trimming, with its fast path for values that need none, against the rules written out:
    /// split at runs of spaces (and tabs, for botocore's), drop the empty pieces, join with one space.
    #[test]
    fn values_are_trimmed_by_the_rules() {
        let values = [
            "",
            " ",
            "  ",
            "a",
            "a b",
            "a  b",
            " a",
            "a ",
            "\ta",
            "a\t",
            "a\tb",
            "a \t b",
            "\"a   b\"",
            "x  y \t z\t",
        ];
        for value in values {
            for (trim, seps) in [(Trim::Whitespace, &[' ', '\t'][..]), (Trim::Spaces, &[' '][..])] {
                let want = value
                    .split(seps)
                    .filter(|p| !p.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                let mut out = b"k:".to_vec();
                push_trimmed(&mut out, value.as_bytes(), trim);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    format!("k:{want}"),
                    "{value:?} {trim:?}"
                );
            }
        }
    }

    /// The rules differ on tabs only: botocore's collapses them, aws-sigv4's keeps them.
    #[test]
    fn the_trimming_rules_differ_on_tabs_only() {
        let mut h = HeaderMap::new();
        h.insert("a", HeaderValue::from_static(" x  y \t z\t"));
        let canonical =
            |trim| String::from_utf8(canonical_request_with_query("GET", "/", "", &h, &["a"], b"-", trim)).unwrap();
        assert!(canonical(Trim::Whitespace).contains("\na:x y z\n"));
        assert!(canonical(Trim::Spaces).contains("\na:x y \t z\t\n"));
    }
}
