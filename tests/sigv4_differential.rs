//! Differential test of the inbound SigV4 verifier against an independent signer: botocore.
//!
//! `tests/fixtures/sigv4/botocore_requests.jsonl` holds requests signed by botocore's
//! `S3SigV4Auth` (Authorization header) and `S3SigV4QueryAuth` (presigned URL): random methods,
//! keys with any unicode and every reserved character, path-style and virtual-hosted, empty and
//! valueless query parameters (each name once: apgate refuses repeated ones before verifying),
//! header values with runs of spaces and tabs. Every one must
//! verify, and every one-bit change of signed material (signature, a signed header value, the host,
//! the path, the query, the date, the method) must be refused with `SignatureDoesNotMatch`.
//!
//! Regenerate the fixture (deterministic: fixed seed and signing clock) with:
//!
//! ```text
//! target/e2e-venv/bin/python tests/fixtures/sigv4/generate_botocore.py \
//!     > tests/fixtures/sigv4/botocore_requests.jsonl
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use apgate::error::{GatewayError, S3ErrorCode};
use apgate::identity::sigv4::{is_presigned, Verified};
use apgate::identity::SigV4Verifier;
use apgate::s3::addressing::parse_target;
use apgate::s3::{amzdate, PayloadHash, S3Target};
use apgate::secret::Secret;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use serde_json::Value;

const FIXTURE: &str = include_str!("fixtures/sigv4/botocore_requests.jsonl");
const ACCESS_KEY: &str = "AKIDEXAMPLEDIFF00001";
const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const IDENTITY: &str = "botocore-differential";
const VHOST_DOMAIN: &str = "s3.example.internal";
const METHODS: [&str; 5] = ["GET", "PUT", "HEAD", "DELETE", "POST"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Header,
    Query,
}

/// One request as it was on the wire.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    raw_path: String,
    raw_query: String,
    headers: Vec<(String, String)>,
}

#[derive(Debug)]
struct Case {
    line: usize,
    kind: Kind,
    req: Req,
    now: SystemTime,
    bucket: String,
    key: Option<String>,
}

fn load() -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, line) in FIXTURE.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("fixture line {}: {e}", i + 1));
        let s = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("fixture line {}: {k} is not a string", i + 1))
                .to_owned()
        };
        let kind = match s("kind").as_str() {
            "header" => Kind::Header,
            "query" => Kind::Query,
            other => panic!("fixture line {}: unknown kind {other}", i + 1),
        };
        let headers = v["headers"]
            .as_array()
            .unwrap_or_else(|| panic!("fixture line {}: headers", i + 1))
            .iter()
            .map(|h| {
                let pair = |j: usize| h[j].as_str().expect("header pair of strings").to_owned();
                (pair(0), pair(1))
            })
            .collect();
        let fixture_time = amzdate::parse(&s("now")).unwrap_or_else(|| panic!("fixture line {}: now", i + 1));
        cases.push(Case {
            line: i + 1,
            kind,
            req: Req {
                method: s("method"),
                raw_path: s("raw_path"),
                raw_query: s("raw_query"),
                headers,
            },
            // The gateway sees the request a minute after botocore signed it.
            now: fixture_time + Duration::from_secs(60),
            bucket: s("bucket"),
            key: v["key"].as_str().map(str::to_owned),
        });
    }
    cases
}

fn verifier() -> SigV4Verifier {
    SigV4Verifier::new(
        [(ACCESS_KEY.to_owned(), Arc::from(IDENTITY), Secret::new(SECRET_KEY))],
        vec!["us-east-1".to_owned()],
        Duration::from_secs(15 * 60),
    )
}

/// Why a request never reached the verifier: the test, not apgate, built something invalid.
#[derive(Debug)]
struct IllFormed(String);

/// Runs one request through addressing and the verifier the way the gateway does.
fn check(
    v: &SigV4Verifier,
    kind: Kind,
    req: &Req,
    now: SystemTime,
) -> Result<(S3Target, Result<Verified, GatewayError>), IllFormed> {
    let method = Method::from_bytes(req.method.as_bytes()).map_err(|e| IllFormed(format!("method: {e}")))?;
    let mut headers = HeaderMap::new();
    for (name, value) in &req.headers {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|e| IllFormed(format!("header name {name:?}: {e}")))?;
        let value = HeaderValue::from_str(value).map_err(|e| IllFormed(format!("header value {value:?}: {e}")))?;
        headers.append(name, value);
    }
    let host = headers.get(http::header::HOST).and_then(|h| h.to_str().ok());
    let query = (!req.raw_query.is_empty()).then_some(req.raw_query.as_str());
    let target = parse_target(host, &req.raw_path, query, &[VHOST_DOMAIN.to_owned()])
        .map_err(|e| IllFormed(format!("target: {e}")))?;
    let presigned = is_presigned(&target);
    if presigned != (kind == Kind::Query) {
        return Err(IllFormed(format!("is_presigned is {presigned} for a {kind:?} request")));
    }
    let result = match kind {
        Kind::Header => v.verify(&method, &target, &headers, now),
        Kind::Query => v.verify_presigned(&method, &target, &headers, now),
    };
    Ok((target, result))
}

fn header<'a>(req: &'a Req, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The byte range of a query parameter's raw value.
fn query_value_range(raw_query: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let mut start = 0;
    for part in raw_query.split('&') {
        if let Some(value) = part.strip_prefix(key).and_then(|r| r.strip_prefix('=')) {
            let at = start + key.len() + 1;
            return Some(at..at + value.len());
        }
        start += part.len() + 1;
    }
    None
}

/// The signed header names, lower case.
fn signed_headers(kind: Kind, req: &Req) -> Vec<String> {
    let list = match kind {
        Kind::Header => header(req, "authorization")
            .and_then(|a| a.split("SignedHeaders=").nth(1))
            .and_then(|s| s.split(',').next())
            .unwrap_or("")
            .to_owned(),
        Kind::Query => query_value_range(&req.raw_query, "X-Amz-SignedHeaders")
            .map(|r| req.raw_query[r].replace("%3B", ";"))
            .unwrap_or_default(),
    };
    list.split(';').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// Flips one bit of the byte at `pos`.
fn flip(s: &str, pos: usize, bit: u8) -> String {
    let mut bytes = s.as_bytes().to_vec();
    bytes[pos] ^= 1 << bit;
    String::from_utf8(bytes).expect("an ASCII byte flipped within ASCII")
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// Positions in `s[range]` whose lowest bit can flip while staying an ASCII letter or digit (so
/// the text stays well formed), skipping the two hex digits of every `%XX` escape.
fn alnum_flips(s: &str, range: std::ops::Range<usize>) -> Vec<usize> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = range.start;
    while i < range.end {
        if b[i] == b'%' {
            i += 3;
            continue;
        }
        if b[i].is_ascii_alphanumeric() && (b[i] ^ 1).is_ascii_alphanumeric() {
            out.push(i);
        }
        i += 1;
    }
    out
}

/// The one-bit changes of one request, each with what it changed. All are changes to signed
/// material that keep the request well formed, so each must be refused with `SignatureDoesNotMatch`.
fn mutations(kind: Kind, req: &Req, rot: usize) -> Vec<(String, Req)> {
    let mut out = Vec::new();

    // The signature: one bit of one hex digit, staying lowercase hex.
    let (sig_at, sig_in_query) = match kind {
        Kind::Header => {
            let auth = header(req, "authorization").unwrap_or("");
            let at = auth.find("Signature=").map(|p| p + "Signature=".len());
            (at, false)
        }
        Kind::Query => (
            query_value_range(&req.raw_query, "X-Amz-Signature").map(|r| r.start),
            true,
        ),
    };
    if let Some(at) = sig_at {
        let pos = at + rot % 64;
        let mut m = req.clone();
        let text = if sig_in_query {
            &mut m.raw_query
        } else {
            let i = m
                .headers
                .iter()
                .position(|(n, _)| n.eq_ignore_ascii_case("authorization"))
                .expect("authorization");
            &mut m.headers[i].1
        };
        if let Some(bit) = (0..4).find(|&bit| is_lower_hex(text.as_bytes()[pos] ^ (1 << bit))) {
            *text = flip(text, pos, bit);
            out.push((format!("signature bit {bit} at {pos}"), m));
        }
    }

    // A signed header value other than host (below) and x-amz-date (below).
    let signed = signed_headers(kind, req);
    let mut candidates = Vec::new();
    for (i, (name, value)) in req.headers.iter().enumerate() {
        let lname = name.to_ascii_lowercase();
        if lname == "host" || lname == "x-amz-date" || !signed.contains(&lname) {
            continue;
        }
        for pos in alnum_flips(value, 0..value.len()) {
            // x-amz-content-sha256 must stay a hash (UNSIGNED-PAYLOAD and the like cannot change).
            if lname != "x-amz-content-sha256" || is_lower_hex(value.as_bytes()[pos] ^ 1) {
                candidates.push((i, pos));
            }
        }
    }
    if !candidates.is_empty() {
        let (i, pos) = candidates[rot % candidates.len()];
        let mut m = req.clone();
        m.headers[i].1 = flip(&m.headers[i].1, pos, 0);
        out.push((format!("header {} at {pos}", req.headers[i].0), m));
    }

    // The host: a port digit, or a letter of the first label (the bucket, when virtual-hosted).
    if let Some(i) = req.headers.iter().position(|(n, _)| n == "host") {
        let host = &req.headers[i].1;
        let positions = match host.rfind(':') {
            Some(colon) => alnum_flips(host, colon + 1..host.len()),
            None => alnum_flips(host, 0..host.find('.').unwrap_or(host.len())),
        };
        if !positions.is_empty() {
            let pos = positions[rot % positions.len()];
            let mut m = req.clone();
            m.headers[i].1 = flip(host, pos, 0);
            out.push((format!("host at {pos}"), m));
        }
    }

    // The path: an unescaped letter or digit (the bucket name too, when path-style).
    let positions = alnum_flips(&req.raw_path, 0..req.raw_path.len());
    if !positions.is_empty() {
        let pos = positions[rot % positions.len()];
        let mut m = req.clone();
        m.raw_path = flip(&req.raw_path, pos, 0);
        out.push((format!("path at {pos}"), m));
    }

    // The query: an unescaped letter or digit of an operation parameter, or of X-Amz-Expires.
    let q = &req.raw_query;
    let mut positions = Vec::new();
    let mut start = 0;
    for part in q.split('&') {
        let range = start..start + part.len();
        start += part.len() + 1;
        if let Some(expires) = part.strip_prefix("X-Amz-Expires=") {
            // Still a validity apgate accepts (over the minute since signing, at most a week).
            let at = range.start + "X-Amz-Expires=".len();
            positions.extend(alnum_flips(q, at..range.end).into_iter().filter(|&pos| {
                let changed = flip(expires, pos - at, 0).parse::<u64>().unwrap_or(0);
                (61..=604_800).contains(&changed)
            }));
        } else if kind == Kind::Header || !part.starts_with("X-Amz-") {
            positions.extend(alnum_flips(q, range));
        }
    }
    if !positions.is_empty() {
        let pos = positions[rot % positions.len()];
        let mut m = req.clone();
        m.raw_query = flip(q, pos, 0);
        out.push((format!("query at {pos}"), m));
    }

    // The date: the last digit of the seconds, so it stays a valid time on the same day.
    let mut m = req.clone();
    let date_text = match kind {
        Kind::Header => m
            .headers
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case("x-amz-date"))
            .map(|(_, v)| (v, 0..16)),
        Kind::Query => query_value_range(&req.raw_query, "X-Amz-Date").map(|r| (&mut m.raw_query, r)),
    };
    if let Some((text, range)) = date_text {
        let pos = range.start + 14;
        *text = flip(text, pos, 0);
        out.push((format!("date at {pos}"), m));
    }

    // The method.
    let others: Vec<&str> = METHODS.iter().copied().filter(|m| *m != req.method).collect();
    let mut m = req.clone();
    m.method = others[rot % others.len()].to_owned();
    out.push((format!("method {} -> {}", req.method, m.method), m));

    out
}

fn describe(case: &Case) -> String {
    format!(
        "line {} ({:?}): {} {} ?{} host={}",
        case.line,
        case.kind,
        case.req.method,
        case.req.raw_path,
        case.req.raw_query,
        header(&case.req, "host").unwrap_or("-"),
    )
}

#[test]
fn botocore_signed_requests_verify_and_one_bit_changes_do_not() {
    let started = std::time::Instant::now();
    let cases = load();
    let headers = cases.iter().filter(|c| c.kind == Kind::Header).count();
    let queries = cases.iter().filter(|c| c.kind == Kind::Query).count();
    assert!(
        headers >= 1000,
        "only {headers} Authorization-header cases in the fixture"
    );
    assert!(queries >= 200, "only {queries} presigned cases in the fixture");

    let v = verifier();
    let mut false_rejects = Vec::new(); // botocore signed it, apgate refused it
    let mut false_accepts = Vec::new(); // one bit changed, apgate accepted it (or refused it for another reason)
    let mut ill_formed = Vec::new(); // the test built something the gateway would never see
    let mut mutated = 0usize;
    let mut by_kind: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();

    for (n, case) in cases.iter().enumerate() {
        match check(&v, case.kind, &case.req, case.now) {
            Err(IllFormed(why)) => ill_formed.push(format!("{}: {why}", describe(case))),
            Ok((_, Err(e))) => false_rejects.push(format!("{}: {:?}: {}", describe(case), e.code(), e.message())),
            Ok((target, Ok(verified))) => {
                let mut wrong = Vec::new();
                if &*verified.identity != IDENTITY || verified.access_key_id != ACCESS_KEY {
                    wrong.push(format!("identity {} / {}", verified.identity, verified.access_key_id));
                }
                let payload = match case.kind {
                    Kind::Header => header(&case.req, "x-amz-content-sha256").and_then(PayloadHash::parse),
                    Kind::Query => Some(PayloadHash::Unsigned),
                };
                if Some(&verified.payload) != payload.as_ref() {
                    wrong.push(format!("payload {:?}", verified.payload));
                }
                if target.bucket.as_ref().map(|b| b.as_str()) != Some(case.bucket.as_str()) || target.key != case.key {
                    wrong.push(format!("addressed {:?} {:?}", target.bucket, target.key));
                }
                if !wrong.is_empty() {
                    false_rejects.push(format!("{}: verified but {}", describe(case), wrong.join(", ")));
                }
            }
        }

        for (what, req) in mutations(case.kind, &case.req, n) {
            mutated += 1;
            let label = what.split(' ').next().unwrap_or("").to_owned();
            *by_kind.entry(label).or_default() += 1;
            match check(&v, case.kind, &req, case.now) {
                Err(IllFormed(why)) => ill_formed.push(format!("{} after {what}: {why}", describe(case))),
                Ok((_, Ok(_))) => false_accepts.push(format!("{} after {what}: accepted", describe(case))),
                Ok((_, Err(e))) if e.code() != S3ErrorCode::SignatureDoesNotMatch => false_accepts.push(format!(
                    "{} after {what}: {:?} ({}) instead of SignatureDoesNotMatch",
                    describe(case),
                    e.code(),
                    e.message()
                )),
                Ok((_, Err(_))) => {}
            }
        }
    }

    println!(
        "{} botocore requests ({headers} Authorization header, {queries} presigned); \
         {mutated} one-bit changes {by_kind:?}; {} false rejects, {} false accepts, {} ill-formed; {:?}",
        cases.len(),
        false_rejects.len(),
        false_accepts.len(),
        ill_formed.len(),
        started.elapsed(),
    );
    for (title, list) in [
        ("valid botocore requests apgate refused", &false_rejects),
        (
            "changed requests apgate did not refuse with SignatureDoesNotMatch",
            &false_accepts,
        ),
        ("ill-formed test requests", &ill_formed),
    ] {
        if !list.is_empty() {
            println!("{title} ({}):", list.len());
            for line in list.iter().take(40) {
                println!("  {line}");
            }
        }
    }
    assert!(
        false_rejects.is_empty() && false_accepts.is_empty() && ill_formed.is_empty(),
        "{} false rejects, {} false accepts, {} ill-formed requests (details above)",
        false_rejects.len(),
        false_accepts.len(),
        ill_formed.len()
    );
}
