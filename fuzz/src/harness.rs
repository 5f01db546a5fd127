//! The fuzz harnesses: each takes the fuzzer's bytes, drives apgate's public entry points the way
//! the gateway does, and asserts invariants (not only "does not panic").
//!
//! Shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`) and by `tests/fuzz_regressions.rs`,
//! which replays the seed corpora and the saved crashes (`fuzz/corpus/`, `fuzz/regressions/`)
//! through this same code on every `cargo test`. Only crates the main package already depends on
//! are used here, so both packages compile it.
//!
//! Request-shaped targets (`sigv4_header`, `sigv4_presigned`, `sigv2`, `addressing`) read a small
//! text format:
//!
//! ```text
//! METHOD            (a leading `!` asks the harness to sign the request correctly first)
//! request-target    (origin form, `/path?query`, parsed by `http::Uri` as hyper would)
//! now               (YYYYMMDDTHHMMSSZ: the gateway's clock)
//! name: value       (headers, one a line, any number; bytes a header value may hold)
//! ```
//!
//! With `!`, the harness recomputes the signature with the public canonical-request helpers and
//! puts it in place, so the fuzzer reaches the states after a good signature; verification must
//! then never answer `SignatureDoesNotMatch`.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use http_body::{Body, Frame};
use quick_xml::events::Event;
use quick_xml::Reader;

use apgate::chunked::{
    outbound_length, ChunkError, ChunkKey, Ending, FailureSlot, Inbound, ResignChunks, TrailerChecksum, MAX_CHUNK_SIZE,
    OUT_CHUNK,
};
use apgate::config::{Config, RouteAccessPoint, RouteBucket};
use apgate::error::{ErrorSource, GatewayError, S3ErrorCode};
use apgate::identity::sigv2;
use apgate::identity::sigv4::{
    canonical_request, is_presigned, parse_authorization, signing_key, string_to_sign, SigV4Verifier, Verified,
};
use apgate::routing::{Denial, Router, Scope};
use apgate::s3::addressing::{parse_target, AddressingStyle};
use apgate::s3::copy_source::CopySource;
use apgate::s3::encoding::{parse_query, percent_decode_path, percent_decode_query, uri_encode, Slash};
use apgate::s3::request;
use apgate::s3::xml::{self, delete_objects, ClientView};
use apgate::s3::{amzdate, AccessPoint, BucketName, Operation, OperationClass, PayloadHash, S3Target};
use apgate::secret::Secret;

/// The keys the verifier knows: the botocore fixtures' key, AWS's documentation example key and
/// the bad-input catalogue's key, so seeds taken from any of them verify.
pub const KEYS: &[(&str, &str, &str)] = &[
    (
        "AKIDEXAMPLEDIFF00001",
        "botocore",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ),
    (
        "AKIAIOSFODNN7EXAMPLE",
        "aws-example",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ),
    ("APGBOBTESTKEY0000001", "bob", "bob-secret-key-0123456789abcdefXYZ"),
];
/// Virtual-host base domains of the request targets.
pub const DOMAINS: &[&str] = &["s3.example.internal", "s3.amazonaws.com", "s3.localhost"];
const MAX_SKEW: Duration = Duration::from_secs(900);

fn verifier() -> &'static SigV4Verifier {
    static V: OnceLock<SigV4Verifier> = OnceLock::new();
    V.get_or_init(|| {
        SigV4Verifier::new(
            KEYS.iter()
                .map(|(akid, id, secret)| ((*akid).to_owned(), Arc::from(*id), Secret::new(*secret))),
            vec!["us-east-1".to_owned(), "eu-west-1".to_owned()],
            MAX_SKEW,
        )
    })
}

fn key_of(akid: &str) -> Option<(&'static str, &'static str)> {
    KEYS.iter().find(|k| k.0 == akid).map(|k| (k.1, k.2))
}

// ---------------------------------------------------------------------------------------------
// The request text format.

/// A request as the gateway has it after hyper parsed the head.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method line asked for the harness to sign the request (a leading `!`).
    pub sign: bool,
    pub method: Method,
    /// The request-target line exactly as given (lossy UTF-8), for `explain`.
    pub target_text: String,
    pub path: String,
    pub query: Option<String>,
    pub now: SystemTime,
    pub headers: HeaderMap,
    /// `x-fuzz-domain` pseudo-headers: extra virtual-host domains (addressing target only).
    pub domains: Vec<String>,
}

fn default_now() -> SystemTime {
    amzdate::parse("20250314T150926Z").unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Parses the request text format. `None` when hyper would not have accepted the head.
pub fn parse_request(data: &[u8]) -> Option<Request> {
    let mut lines = data.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let method_line = lines.next()?;
    let (sign, method_line) = match method_line.strip_prefix(b"!") {
        Some(rest) => (true, rest),
        None => (false, method_line),
    };
    let method = Method::from_bytes(method_line).ok()?;
    let target_line = lines.next().unwrap_or(b"/");
    let target_text = String::from_utf8_lossy(target_line).into_owned();
    // What hyper does with the request line: `http::Uri`; apgate refuses absolute forms.
    let uri = http::Uri::try_from(target_line).ok()?;
    if uri.scheme().is_some() || uri.authority().is_some() {
        return None;
    }
    let now = lines
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .and_then(amzdate::parse)
        .unwrap_or_else(default_now);
    let mut headers = HeaderMap::new();
    let mut domains = Vec::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        let Ok(name) = HeaderName::from_bytes(name) else {
            continue;
        };
        if name == "x-fuzz-domain" {
            domains.extend(std::str::from_utf8(value).ok().map(str::to_owned));
            continue;
        }
        // hyper refuses header values with control characters; so does HeaderValue.
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        headers.append(name, value);
    }
    Some(Request {
        sign,
        method,
        target_text,
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        now,
        headers,
        domains,
    })
}

/// With `APGATE_FUZZ_TRACE` set, each harness says how an input ended (to check that seeds reach
/// the states they were made for: `scripts/fuzz` never sets it).
fn trace(target: &str, outcome: &dyn std::fmt::Debug) {
    static ON: OnceLock<bool> = OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("APGATE_FUZZ_TRACE").is_some()) {
        eprintln!("{target}: {outcome:?}");
    }
}

fn host(headers: &HeaderMap) -> Option<&str> {
    headers.get(http::header::HOST).and_then(|h| h.to_str().ok())
}

fn domains() -> Vec<String> {
    DOMAINS.iter().map(|d| (*d).to_owned()).collect()
}

/// The request target as the gateway parses it (proxy.rs: Host header, path, query).
fn target_of(req: &Request, domains: &[String]) -> Option<S3Target> {
    parse_target(host(&req.headers), &req.path, req.query.as_deref(), domains).ok()
}

fn replace_query(req: &mut Request, query: String) -> Option<S3Target> {
    // The re-signed query must still be what hyper would hand over.
    let pq = format!("{}?{query}", req.path);
    let uri = http::Uri::try_from(pq.as_str()).ok()?;
    req.path = uri.path().to_owned();
    req.query = uri.query().map(str::to_owned);
    target_of(req, &domains())
}

/// Polls a body that never waits (everything here is in memory) to its end.
fn drain<B>(body: B) -> (Vec<u8>, Option<B::Error>)
where
    B: Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut out = Vec::new();
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            Poll::Ready(Some(Err(e))) => return (out, Some(e)),
            Poll::Ready(None) => return (out, None),
            Poll::Pending => panic!("an in-memory body returned Pending"),
        }
    }
}

/// Every event of an XML document, or the reader's error.
fn xml_events(xml: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().trim_text(false);
    let mut events = Vec::new();
    loop {
        let e = reader.read_event().map_err(|e| e.to_string())?;
        let item = match &e {
            Event::Eof => return Ok(events),
            Event::Start(s) => (b'S', s.to_vec()),
            Event::End(s) => (b'E', s.to_vec()),
            Event::Empty(s) => (b'M', s.to_vec()),
            Event::Text(t) => (b'T', t.to_vec()),
            Event::CData(t) => (b'C', t.to_vec()),
            Event::Comment(t) => (b'#', t.to_vec()),
            Event::Decl(t) => (b'D', t.to_vec()),
            Event::PI(t) => (b'P', t.to_vec()),
            Event::DocType(t) => (b'!', t.to_vec()),
            Event::GeneralRef(t) => (b'&', t.to_vec()),
        };
        events.push(item);
    }
}

/// An error apgate answers a client with: the client caused it, and its S3 XML body is
/// well-formed, whatever hostile text the message quotes.
fn check_client_error(e: GatewayError, context: &str) -> S3ErrorCode {
    assert_eq!(e.source(), ErrorSource::Downstream, "{context}: {e}");
    assert_ne!(e.code(), S3ErrorCode::InternalError, "{context}: {e}");
    let code = e.code();
    let (body, err) = drain(e.into_response("fuzz-request-id", false).into_body());
    assert!(err.is_none(), "{context}: error body failed");
    let events = xml_events(&body).unwrap_or_else(|x| panic!("{context}: error XML is not well-formed: {x}"));
    let depth = events.iter().fold(0i64, |d, (k, _)| match k {
        b'S' => d + 1,
        b'E' => d - 1,
        _ => d,
    });
    assert_eq!(depth, 0, "{context}: error XML leaves elements open");
    code
}

// ---------------------------------------------------------------------------------------------
// SigV4 (Authorization header).

/// Signs `req` (in place) the way a client with the key in its Authorization header would.
fn sign_v4_header(req: &mut Request) -> bool {
    let Some(target) = target_of(req, &domains()) else {
        return false;
    };
    let Some(authz) = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Ok(auth) = parse_authorization(authz) else {
        return false;
    };
    // Signing the Authorization header itself cannot be done.
    if auth.signed_headers.contains(&"authorization") {
        return false;
    }
    let Some((_, secret)) = key_of(auth.access_key_id) else {
        return false;
    };
    let Some(amz_date) = req.headers.get("x-amz-date").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(payload) = req.headers.get("x-amz-content-sha256") else {
        return false;
    };
    let creq = canonical_request(
        req.method.as_str(),
        &target.raw_path,
        &target.raw_query,
        &req.headers,
        &auth.signed_headers,
        payload.as_bytes(),
    );
    let scope = format!("{}/{}/{}/aws4_request", auth.date, auth.region, auth.service);
    let sts = string_to_sign(amz_date, &scope, &creq);
    let key = signing_key(&Secret::new(secret), auth.date, auth.region, auth.service);
    let signature = hmac_hex(&key, sts.as_bytes());
    let Some(at) = authz.find(auth.signature) else {
        return false;
    };
    let new = format!("{}{signature}{}", &authz[..at], &authz[at + auth.signature.len()..]);
    let Ok(v) = HeaderValue::from_str(&new) else {
        return false;
    };
    req.headers.insert(http::header::AUTHORIZATION, v);
    true
}

/// SigV4's last step: hex HMAC-SHA256 of the string to sign under the derived key.
fn hmac_hex(key: &[u8], data: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

/// Checks what every verified request must satisfy, whichever way it was signed.
fn check_verified(v: &Verified, req: &Request, signed_header_list: &[&str], context: &str) {
    let (identity, _) = key_of(&v.access_key_id).unwrap_or_else(|| panic!("{context}: unknown key verified"));
    assert_eq!(&*v.identity, identity, "{context}: identity of another key");
    // S3's rule: every x-amz-* header is signed.
    for name in req.headers.keys() {
        if name.as_str().starts_with("x-amz-") {
            assert!(
                signed_header_list.contains(&name.as_str()),
                "{context}: unsigned {name} accepted"
            );
        }
    }
}

/// A different method must break any signature.
fn other_method(m: &Method) -> Method {
    if *m == Method::PUT {
        Method::GET
    } else {
        Method::PUT
    }
}

/// `sigv4_header`: the Authorization header parser and `SigV4Verifier::verify`.
pub fn sigv4_header(data: &[u8]) {
    let Some(mut req) = parse_request(data) else { return };
    let resigned = req.sign && sign_v4_header(&mut req);
    let Some(target) = target_of(&req, &domains()) else {
        return;
    };
    let v = verifier();
    if let Some(authz) = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|a| a.to_str().ok())
    {
        // The parser alone: whatever it accepts is well-formed.
        if let Ok(a) = parse_authorization(authz) {
            assert_eq!(a.signature.len(), 64);
            assert_eq!(a.date.len(), 8);
            assert!(a.signed_headers.windows(2).all(|w| w[0] < w[1]), "sorted, each once");
            assert!(!a.access_key_id.is_empty());
        }
    }
    let result = v.verify(&req.method, &target, &req.headers, req.now);
    trace(
        "sigv4_header",
        &result.as_ref().map(|ok| &ok.payload).map_err(GatewayError::code),
    );
    match result {
        Ok(ok) => {
            let authz = req
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|a| a.to_str().ok())
                .unwrap_or_else(|| panic!("verified without an Authorization header"));
            assert_eq!(req.headers.get_all(http::header::AUTHORIZATION).iter().count(), 1);
            let auth = parse_authorization(authz).unwrap_or_else(|_| panic!("verified a malformed Authorization"));
            assert!(auth.signed_headers.contains(&"host") && auth.signed_headers.contains(&"x-amz-date"));
            assert_eq!(auth.access_key_id, ok.access_key_id);
            check_verified(&ok, &req, &auth.signed_headers, "sigv4 header");
            let amz = req
                .headers
                .get("x-amz-date")
                .and_then(|d| d.to_str().ok())
                .and_then(amzdate::parse);
            let amz = amz.unwrap_or_else(|| panic!("verified without a valid x-amz-date"));
            let skew = req.now.duration_since(amz).unwrap_or_else(|e| e.duration());
            assert!(skew <= MAX_SKEW, "verified a request {skew:?} away from now");
            let declared = req
                .headers
                .get("x-amz-content-sha256")
                .and_then(|p| p.to_str().ok())
                .and_then(PayloadHash::parse);
            assert_eq!(Some(&ok.payload), declared.as_ref(), "payload is what was declared");
            let streaming = matches!(ok.payload, PayloadHash::StreamingSigned { .. });
            assert_eq!(ok.chunks.is_some(), streaming, "chunk key exactly for signed streaming");
            if let Some(c) = &ok.chunks {
                assert_eq!(c.seed, auth.signature, "chunks chain from the header signature");
            }
            // The signature is bound to the method.
            match v.verify(&other_method(&req.method), &target, &req.headers, req.now) {
                Err(e) => assert_eq!(e.code(), S3ErrorCode::SignatureDoesNotMatch),
                Ok(_) => panic!("the signature verified for another method too"),
            }
        }
        Err(e) => {
            let code = check_client_error(e, "sigv4 header");
            if resigned {
                assert_ne!(
                    code,
                    S3ErrorCode::SignatureDoesNotMatch,
                    "canonical_request/string_to_sign/signing_key disagree with verify"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SigV4 presigned URLs.

fn reencoded_key(raw: &str) -> String {
    match percent_decode_query(raw) {
        Ok(b) => uri_encode(&b, Slash::Encode),
        Err(_) => raw.to_owned(),
    }
}

fn sign_v4_presigned(req: &mut Request) -> Option<S3Target> {
    let target = target_of(req, &domains())?;
    let credential = target.param("X-Amz-Credential")?;
    let amz_date = target.param("X-Amz-Date")?.to_owned();
    let scope: Vec<&str> = credential.split('/').collect();
    let [akid, date, region, service, _] = scope.as_slice() else {
        return None;
    };
    let (_, secret) = key_of(akid)?;
    let signed: Vec<&str> = target.param("X-Amz-SignedHeaders")?.split(';').collect();
    let raw_query = req.query.clone().unwrap_or_default();
    // The canonical query leaves X-Amz-Signature out.
    let unsigned: Vec<&str> = raw_query
        .split('&')
        .filter(|p| {
            let k = p.split_once('=').map_or(*p, |(k, _)| k);
            reencoded_key(k) != "X-Amz-Signature"
        })
        .collect();
    let creq = canonical_request(
        req.method.as_str(),
        &target.raw_path,
        &unsigned.join("&"),
        &req.headers,
        &signed,
        b"UNSIGNED-PAYLOAD",
    );
    let sts = string_to_sign(&amz_date, &format!("{date}/{region}/{service}/aws4_request"), &creq);
    let signature = hmac_hex(
        &signing_key(&Secret::new(secret), date, region, service),
        sts.as_bytes(),
    );
    let query: Vec<String> = raw_query
        .split('&')
        .map(|p| {
            let k = p.split_once('=').map_or(p, |(k, _)| k);
            if reencoded_key(k) == "X-Amz-Signature" {
                format!("{k}={signature}")
            } else {
                p.to_owned()
            }
        })
        .collect();
    replace_query(req, query.join("&"))
}

/// `sigv4_presigned`: query authentication, `SigV4Verifier::verify_presigned`.
pub fn sigv4_presigned(data: &[u8]) {
    let Some(mut req) = parse_request(data) else { return };
    let resigned = if req.sign {
        sign_v4_presigned(&mut req).is_some()
    } else {
        false
    };
    let Some(target) = target_of(&req, &domains()) else {
        return;
    };
    let _ = is_presigned(&target);
    let v = verifier();
    let result = v.verify_presigned(&req.method, &target, &req.headers, req.now);
    trace(
        "sigv4_presigned",
        &result.as_ref().map(|ok| &ok.access_key_id).map_err(GatewayError::code),
    );
    match result {
        Ok(ok) => {
            assert!(
                !req.headers.contains_key(http::header::AUTHORIZATION),
                "two auth mechanisms"
            );
            assert_eq!(ok.payload, PayloadHash::Unsigned);
            assert!(ok.chunks.is_none());
            let credential = target.param("X-Amz-Credential").unwrap_or_default();
            assert_eq!(credential.split('/').next(), Some(ok.access_key_id.as_str()));
            let signed: Vec<&str> = target
                .param("X-Amz-SignedHeaders")
                .unwrap_or_default()
                .split(';')
                .collect();
            assert!(signed.contains(&"host"));
            check_verified(&ok, &req, &signed, "sigv4 presigned");
            let date = target.param("X-Amz-Date").and_then(amzdate::parse);
            let date = date.unwrap_or_else(|| panic!("verified without X-Amz-Date"));
            let expires: u64 = target
                .param("X-Amz-Expires")
                .and_then(|e| e.parse().ok())
                .unwrap_or_else(|| panic!("verified without X-Amz-Expires"));
            assert!((1..=604_800).contains(&expires), "expiry {expires} out of range");
            assert!(req.now + MAX_SKEW >= date, "verified before its date");
            assert!(req.now <= date + Duration::from_secs(expires), "verified after expiry");
            match v.verify_presigned(&other_method(&req.method), &target, &req.headers, req.now) {
                Err(e) => assert_eq!(e.code(), S3ErrorCode::SignatureDoesNotMatch),
                Ok(_) => panic!("the presigned URL verified for another method too"),
            }
        }
        Err(e) => {
            let code = check_client_error(e, "sigv4 presigned");
            if resigned {
                assert_ne!(code, S3ErrorCode::SignatureDoesNotMatch, "presigned helpers disagree");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SigV2.

fn sign_v2(req: &mut Request) -> bool {
    let Some(target) = target_of(req, &domains()) else {
        return false;
    };
    if sigv2::is_presigned_v2(&target) {
        let Some((_, secret)) = target.param("AWSAccessKeyId").and_then(key_of) else {
            return false;
        };
        let Some(expires) = target.param("Expires").map(str::to_owned) else {
            return false;
        };
        let sts = sigv2::string_to_sign(&req.method, &target, &req.headers, &expires);
        let sig = uri_encode(sigv2::sign(&Secret::new(secret), &sts).as_bytes(), Slash::Encode);
        let raw_query = req.query.clone().unwrap_or_default();
        let query: Vec<String> = raw_query
            .split('&')
            .map(|p| {
                let k = p.split_once('=').map_or(p, |(k, _)| k);
                if percent_decode_query(k).is_ok_and(|k| k == b"Signature") {
                    format!("{k}={sig}")
                } else {
                    p.to_owned()
                }
            })
            .collect();
        return replace_query(req, query.join("&")).is_some();
    }
    let Some(value) = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((akid, _)) = value.strip_prefix("AWS ").and_then(|c| c.split_once(':')) else {
        return false;
    };
    let Some((_, secret)) = key_of(akid) else {
        return false;
    };
    // As verify reads it: an x-amz-date that is not text counts as absent.
    let date_line = if req.headers.get("x-amz-date").and_then(|d| d.to_str().ok()).is_some() {
        String::new()
    } else {
        match req.headers.get("date").and_then(|d| d.to_str().ok()) {
            Some(d) => d.to_owned(),
            None => return false,
        }
    };
    let new = format!("AWS {akid}:{}", {
        let sts = sigv2::string_to_sign(&req.method, &target, &req.headers, &date_line);
        sigv2::sign(&Secret::new(secret), &sts)
    });
    match HeaderValue::from_str(&new) {
        Ok(v) => {
            req.headers.insert(http::header::AUTHORIZATION, v);
            true
        }
        Err(_) => false,
    }
}

/// `sigv2`: the SigV2 header and presigned-URL verification, the HTTP date parser.
pub fn sigv2(data: &[u8]) {
    let Some(mut req) = parse_request(data) else { return };
    let resigned = req.sign && sign_v2(&mut req);
    let Some(target) = target_of(&req, &domains()) else {
        return;
    };
    if let Some(d) = req.headers.get("date").and_then(|d| d.to_str().ok()) {
        let _ = amzdate::parse_http_date(d);
    }
    if !(sigv2::is_header_v2(&req.headers) || sigv2::is_presigned_v2(&target)) {
        return;
    }
    let v = verifier();
    let result = sigv2::verify(v, &req.method, &target, &req.headers, req.now);
    trace(
        "sigv2",
        &result.as_ref().map(|ok| &ok.access_key_id).map_err(GatewayError::code),
    );
    match result {
        Ok(ok) => {
            assert!(ok.chunks.is_none());
            assert!(matches!(ok.payload, PayloadHash::Unsigned | PayloadHash::Sha256(_)));
            let presigned = sigv2::is_presigned_v2(&target);
            if presigned {
                assert!(
                    !req.headers.contains_key(http::header::AUTHORIZATION),
                    "two auth mechanisms"
                );
                assert_eq!(target.param("AWSAccessKeyId"), Some(ok.access_key_id.as_str()));
            }
            let (identity, _) = key_of(&ok.access_key_id).unwrap_or_else(|| panic!("unknown key verified"));
            assert_eq!(&*ok.identity, identity);
            match sigv2::verify(v, &other_method(&req.method), &target, &req.headers, req.now) {
                Err(e) => assert_eq!(e.code(), S3ErrorCode::SignatureDoesNotMatch),
                Ok(_) => panic!("the SigV2 signature verified for another method too"),
            }
        }
        Err(e) => {
            let code = check_client_error(e, "sigv2");
            if resigned {
                assert_ne!(
                    code,
                    S3ErrorCode::SignatureDoesNotMatch,
                    "sigv2 string_to_sign/sign disagree"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Addressing, operation classification, the outbound rewrite, copy sources, explain.

fn access_point() -> &'static AccessPoint {
    static AP: OnceLock<AccessPoint> = OnceLock::new();
    AP.get_or_init(|| {
        AccessPoint::parse("arn:aws:s3:us-west-2:123456789012:accesspoint/myap")
            .unwrap_or_else(|e| panic!("test access point: {e}"))
    })
}

/// A configuration for `explain`, with inline secrets only.
const EXPLAIN_CONFIG: &str = r#"
[admin]
address = "127.0.0.1:9090"
[[listeners]]
name = "shared"
address = "127.0.0.1:8080"
identity_methods = ["sigv4"]
[sigv4]
accepted_regions = ["us-east-1"]
[addressing]
virtual_host_domains = ["s3.example.internal", "s3.localhost"]
[upstream]
region = "us-east-1"
[credentials]
type = "default"
[[identities]]
name = "bob"
[[identities.keys]]
access_key_id = "APGBOBTESTKEY0000001"
secret_access_key = { insecure_inline = "bob-secret-key-0123456789abcdefXYZ" }
[[routes]]
identity = "bob"
bucket = "access-point-test"
prefix = "Bob/"
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/bob-ap"
[[routes]]
identity = "bob"
bucket = "access-point-test"
prefix = "Bob/ro/"
operations = ["read", "list"]
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/bob-ro"
"#;

fn explain_config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| Config::from_toml(EXPLAIN_CONFIG).unwrap_or_else(|e| panic!("explain config: {e}")))
}

/// The same rule the configuration applies to virtual-host domains.
fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// `addressing`: `parse_target`, the S3-model classification (`request::classify`),
/// `CopySource::parse` and `apgate explain`.
pub fn addressing(data: &[u8]) {
    let Some(req) = parse_request(data) else {
        // hyper would refuse the request line; `apgate explain` takes any text, though.
        explain_text(data);
        return;
    };
    let mut doms: Vec<String> = req
        .domains
        .iter()
        .map(|d| d.trim_start_matches('.').to_ascii_lowercase())
        .filter(|d| valid_domain(d))
        .collect();
    if doms.is_empty() {
        doms = domains();
    }
    let host = host(&req.headers);
    let explained = format!("http://{}{}", host.unwrap_or(""), req.target_text);
    explain(req.method.as_str(), &explained, None);
    explain_text(data);
    let Ok(t) = parse_target(host, &req.path, req.query.as_deref(), &doms) else {
        return;
    };
    let raw_query = req.query.as_deref().unwrap_or("");
    assert_eq!(t.raw_path, req.path, "the raw path is kept as received");
    assert_eq!(t.raw_query, raw_query, "the raw query is kept as received");
    assert_eq!(parse_query(raw_query).ok().as_ref(), Some(&t.query));
    for (i, p) in t.query.iter().enumerate() {
        assert!(
            !t.query[..i].iter().any(|q| q.key == p.key),
            "a duplicated parameter {} passed",
            p.key
        );
    }
    // The bucket is one the client named, in the Host or in the path, and valid.
    let raw_key = match (t.style, &t.bucket) {
        (AddressingStyle::VirtualHosted, b) => {
            let b = b.as_ref().unwrap_or_else(|| panic!("virtual-hosted without a bucket"));
            let h = host
                .unwrap_or_else(|| panic!("virtual-hosted without a Host"))
                .to_ascii_lowercase();
            let rest = h
                .strip_prefix(b.as_str())
                .and_then(|r| r.strip_prefix('.'))
                .unwrap_or_else(|| panic!("bucket {b} is not the Host's first label ({h})"));
            assert!(
                doms.iter().any(|d| rest
                    .strip_prefix(d.as_str())
                    .is_some_and(|p| p.is_empty() || p.starts_with(':'))),
                "{rest} is not a configured domain"
            );
            &req.path[1..]
        }
        (AddressingStyle::Path, None) => {
            assert_eq!(req.path, "/", "service-level only for /");
            ""
        }
        (AddressingStyle::Path, Some(b)) => {
            let rest = &req.path[1..];
            let (raw_bucket, raw_key) = rest.split_once('/').unwrap_or((rest, ""));
            assert_eq!(
                percent_decode_path(raw_bucket).ok().as_deref(),
                Some(b.as_str().as_bytes())
            );
            raw_key
        }
    };
    if let Some(b) = &t.bucket {
        assert_eq!(
            BucketName::parse(b.as_str()).ok().as_ref(),
            Some(b),
            "bucket names round-trip"
        );
    }
    match &t.key {
        None => assert!(raw_key.is_empty()),
        Some(k) => {
            assert!(!k.is_empty());
            assert_eq!(percent_decode_path(raw_key).ok().as_deref(), Some(k.as_bytes()));
        }
    }

    let classified = request::classify(&req.method, &t, &req.headers);
    trace("addressing", &classified);
    if let Ok(op) = classified {
        let spec = op.spec();
        assert_eq!(spec.resource, request::resource(&t), "{op:?} on another resource");
        for m in spec.markers {
            assert!(t.has_param(m.name), "{op:?} without its marker {}", m.name);
        }
        for p in &t.query {
            assert!(
                spec.takes_param(&p.key) || request::is_auth_param(&p.key) || p.key == "x-id",
                "{op:?} with a parameter it does not take: {}",
                p.key
            );
        }
        if req.headers.contains_key("x-amz-copy-source") {
            assert!(
                matches!(op, Operation::CopyObject | Operation::UploadPartCopy),
                "{op:?} with a copy source"
            );
        }
    }
    if let Some(cs) = req.headers.get("x-amz-copy-source").and_then(|v| v.to_str().ok()) {
        if let Ok(c) = CopySource::parse(cs) {
            assert_eq!(BucketName::parse(c.bucket.as_str()).ok().as_ref(), Some(&c.bucket));
            assert!(!c.key.is_empty());
            let header = c.to_access_point_header(access_point());
            // A failure here would be a 500.
            assert!(HeaderValue::from_str(&header).is_ok(), "copy source header {header:?}");
        }
    }
}

/// `apgate explain` with any text: method line and target line as given.
fn explain_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let method = lines.next().unwrap_or("");
    let target = lines.next().unwrap_or("/");
    let copy = lines.next();
    explain(method, target, copy);
}

fn explain(method: &str, target: &str, copy: Option<&str>) {
    static E: OnceLock<apgate::explain::Explainer<'static>> = OnceLock::new();
    let explainer = E.get_or_init(|| apgate::explain::Explainer::new(explain_config()));
    let req = apgate::explain::Request {
        caller: apgate::explain::Caller::Identity("bob".to_owned()),
        method: method.to_owned(),
        target: target.to_owned(),
        headers: copy
            .map(|c| vec![("x-amz-copy-source".to_owned(), c.to_owned())])
            .unwrap_or_default(),
        remote: None,
        body: None,
    };
    let _ = explainer.explain(&req, default_now());
}

// ---------------------------------------------------------------------------------------------
// The decision.

/// The routes the `decide` target decides against: bob reads and writes `Bob/` through one access
/// point, only reads and lists `Bob/ro/` through another, may change ACLs under `Bob/acl/`; app
/// reads `app/`; ops owns the `logs` bucket. 127.0.0.0/8 is bob by its source network.
const DECIDE_CONFIG: &str = r#"
[admin]
address = "127.0.0.1:9090"
[[listeners]]
name = "shared"
address = "127.0.0.1:8080"
identity_methods = ["sigv4", "sigv2", "source"]
[[listeners.sources]]
cidr = "127.0.0.0/8"
identity = "bob"
[sigv4]
accepted_regions = ["us-east-1", "eu-west-1"]
[addressing]
virtual_host_domains = ["s3.example.internal", "s3.localhost"]
[upstream]
region = "us-east-1"
[credentials]
type = "default"
[[identities]]
name = "bob"
[[identities.keys]]
access_key_id = "APGBOBTESTKEY0000001"
secret_access_key = { insecure_inline = "bob-secret-key-0123456789abcdefXYZ" }
[[identities]]
name = "app"
[[identities]]
name = "ops"
[[routes]]
identity = "bob"
bucket = "access-point-test"
prefix = "Bob/"
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/bob-ap"
[[routes]]
identity = "bob"
bucket = "access-point-test"
prefix = "Bob/ro/"
operations = ["read", "list"]
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/bob-ro"
[[routes]]
identity = "bob"
bucket = "access-point-test"
prefix = "Bob/acl/"
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/bob-ap"
allow = ["acl", "bypass-governance-retention", "object-lock"]
kms_key_ids = ["alias/bob"]
[[routes]]
identity = "bob"
bucket = "access-point-test"
prefix = "T/"
operations = ["read", "write", "delete"]
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/bob-team"
[[routes]]
identity = "app"
bucket = "access-point-test"
prefix = "app/"
operations = ["read", "list"]
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/app-ap"
[[routes]]
identity = "ops"
bucket = "logs"
access_point = "arn:aws:s3:eu-west-1:123456789012:accesspoint/ops-ap"
"#;

struct Decider {
    router: Router,
    listener: apgate::identity::ListenerIdentity,
    config: Config,
}

fn decider() -> &'static Decider {
    static D: OnceLock<Decider> = OnceLock::new();
    D.get_or_init(|| {
        let config = Config::from_toml(DECIDE_CONFIG).unwrap_or_else(|e| panic!("decide config: {e}"));
        let listener = apgate::identity::ListenerIdentity::from_config(&config.listeners[0]);
        Decider {
            router: Router::new(&config.routes),
            listener,
            config,
        }
    })
}

/// `decide`: the whole decision over an arbitrary request head (and, after a `--` line, a body),
/// from the shared listener (SigV4 and SigV2 with the harness's keys, else bob by its source
/// address unless an `x-fuzz-remote` pseudo-header moves it). Checks that what is allowed is
/// exactly what the routes give: the operation the upstream will read from the outbound request
/// is the one decided, its class is one the route allows, every key it touches (the object, the
/// listing prefix, the copy source, each key of a DeleteObjects body) is under a route of the
/// caller that allows it, access changes (ACL, governance bypass, object lock, KMS key) have the
/// opt-in of the route of each key they touch, and nothing of inbound
/// authentication or outside the operation's model goes upstream.
pub fn decide(data: &[u8]) {
    let (head_bytes, body) = match data.windows(4).position(|w| w == b"\n--\n") {
        Some(i) => (&data[..i], Some(&data[i + 4..])),
        None => (data, None),
    };
    let Some(mut req) = parse_request(head_bytes) else {
        return;
    };
    if req.sign {
        let _ = sign_v4_header(&mut req);
    }
    let d = decider();
    let remote: std::net::IpAddr = req
        .headers
        .get("x-fuzz-remote")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    req.headers.remove("x-fuzz-remote");
    let uri: http::Uri = match req.query.as_deref() {
        Some(q) => format!("{}?{q}", req.path).parse(),
        None => req.path.parse(),
    }
    .unwrap_or_else(|_| http::Uri::from_static("/"));
    let policy = apgate::decision::Policy {
        domains: &d.config.addressing.virtual_host_domains,
        verifier: verifier(),
        router: &d.router,
        listener: &d.listener,
    };
    let head = apgate::decision::Head {
        method: &req.method,
        uri: &uri,
        headers: &req.headers,
        remote,
        client_certificate: None,
    };
    let decision = apgate::decision::decide(&head, &policy, req.now);
    trace(
        "decide",
        &decision
            .outcome
            .as_ref()
            .map(|_| decision.operation)
            .map_err(GatewayError::code),
    );
    let Ok(apgate::decision::Outcome::Forward(fwd)) = &decision.outcome else {
        return;
    };
    let op = decision
        .operation
        .unwrap_or_else(|| panic!("a forward without an operation"));
    let caller = decision
        .caller
        .as_ref()
        .unwrap_or_else(|| panic!("a forward without a caller"));
    let target = decision
        .target
        .as_ref()
        .unwrap_or_else(|| panic!("a forward without a target"));
    let route = &fwd.route;
    let class = op.class().unwrap_or_else(|| panic!("{op:?} forwarded without a class"));
    assert_eq!(*route.identity, *caller.name, "another identity's route");
    assert!(
        route.operations.contains(&class),
        "{op:?} through a route without {class:?}"
    );
    assert_eq!(Some(&route.bucket), target.bucket.as_ref(), "another bucket's route");

    // What the upstream reads: the outbound head, path-style on the access point's bucket.
    let out = &fwd.head;
    assert_eq!(out.method, req.method);
    let (path, query) = out.path_and_query.split_once('?').unwrap_or((&out.path_and_query, ""));
    let upstream_target = parse_target(
        Some("upstream.invalid"),
        &format!("/{}{path}", route.bucket.as_str()),
        Some(query),
        &[],
    )
    .unwrap_or_else(|e| panic!("the outbound target {:?} does not parse: {e}", out.path_and_query));
    assert_eq!(upstream_target.key, target.key, "the key changed on the way");
    let upstream_op = request::select(&out.method, &upstream_target, &out.headers)
        .unwrap_or_else(|e| panic!("the outbound request is no operation: {e}"))
        .operation;
    assert_eq!(upstream_op, op, "decided {op:?}, the upstream reads {upstream_op:?}");
    let spec = op.spec();
    for p in &upstream_target.query {
        assert!(spec.takes_param(&p.key), "{op:?} forwarded with {}", p.key);
    }
    for (name, _) in out.headers.iter() {
        let n = name.as_str();
        assert!(
            !matches!(
                n,
                "authorization" | "x-amz-date" | "x-amz-security-token" | "x-amz-content-sha256" | "host"
            ),
            "{n} forwarded as received"
        );
        if n.starts_with("x-amz-") {
            assert!(
                spec.takes_header(n)
                    || request::FRAMING_HEADERS.contains(&n)
                    || n.starts_with("x-amz-checksum-")
                    || n == "x-amz-sdk-checksum-algorithm",
                "{op:?} forwarded with {n}"
            );
        }
    }
    match (&target.key, op.list_prefix_param()) {
        (Some(key), _) => assert!(key.starts_with(&route.prefix), "{key:?} outside {:?}", route.prefix),
        (None, Some(param)) => {
            let prefix = upstream_target.param(param).unwrap_or("");
            assert!(
                prefix.starts_with(&route.prefix),
                "listing {prefix:?} outside {:?}",
                route.prefix
            );
        }
        (None, None) => {}
    }
    // A body goes upstream saying aws-chunked only when apgate read it as aws-chunked.
    let says_chunked = out.headers.get_all("content-encoding").iter().any(|v| {
        v.as_bytes()
            .to_ascii_lowercase()
            .windows(11)
            .any(|w| w == b"aws-chunked")
    });
    assert!(
        !says_chunked
            || matches!(
                fwd.body,
                apgate::decision::BodyPlan::UnsignedChunks { .. } | apgate::decision::BodyPlan::SignedChunks { .. }
            ),
        "a body read as {:?} forwarded as aws-chunked",
        fwd.body
    );
    // Every access change the outbound request makes, judged against a route: what the upstream
    // will read from the headers, not apgate's reading of them.
    let acl_change = op == Operation::PutObjectAcl
        || out
            .headers
            .get("x-amz-acl")
            .is_some_and(|v| !matches!(v.as_bytes(), b"private" | b"bucket-owner-full-control"))
        || out.headers.keys().any(|k| k.as_str().starts_with("x-amz-grant-"));
    let bypass = out
        .headers
        .get("x-amz-bypass-governance-retention")
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"false"));
    let lock = matches!(op, Operation::PutObjectRetention | Operation::PutObjectLegalHold)
        || out.headers.keys().any(|k| k.as_str().starts_with("x-amz-object-lock-"));
    let judge = |r: &apgate::routing::Route, what: &str| {
        use apgate::config::AccessChange;
        for (needed, change) in [
            (acl_change, AccessChange::Acl),
            (bypass, AccessChange::BypassGovernanceRetention),
            (lock, AccessChange::ObjectLock),
        ] {
            assert!(
                !needed || r.allow.contains(&change),
                "{what}: {change:?} without the opt-in"
            );
        }
        if let Some(kms_key) = out.headers.get("x-amz-server-side-encryption-aws-kms-key-id") {
            assert!(
                r.kms_key_ids.iter().any(|k| k.as_bytes() == kms_key.as_bytes()),
                "{what}: a KMS key the route does not list: {kms_key:?}"
            );
        }
    };
    // DeleteObjects: judged per key below, once its body is read.
    if op != Operation::DeleteObjects {
        judge(route, "the request");
    }
    match (out.headers.get("x-amz-copy-source"), fwd.copy_source.as_deref()) {
        (None, None) => assert!(!matches!(op, Operation::CopyObject | Operation::UploadPartCopy)),
        (Some(_), Some(source)) => {
            assert!(matches!(op, Operation::CopyObject | Operation::UploadPartCopy));
            let raw = req
                .headers
                .get("x-amz-copy-source")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let c = CopySource::parse(raw).unwrap_or_else(|e| panic!("copied from an unparsed source: {e}"));
            assert!(
                c.key.starts_with(&source.prefix),
                "copy source {:?} outside {:?}",
                c.key,
                source.prefix
            );
            assert!(
                source.operations.contains(&OperationClass::Read),
                "copy source without read"
            );
            assert_eq!(*source.identity, *caller.name);
        }
        other => panic!("copy source and its route disagree: {other:?}"),
    }
    if let (apgate::decision::BodyPlan::Inspect { .. }, Some(body)) = (fwd.body, body) {
        let announced = req.headers.get("x-amz-trailer").and_then(|v| v.to_str().ok());
        if let Ok(inspected) = apgate::decision::inspect_body(fwd, op, &d.router, caller, announced, body) {
            if op == Operation::DeleteObjects {
                let entries = apgate::s3::xml::delete_objects(&inspected.content)
                    .unwrap_or_else(|e| panic!("forwarded a body that does not parse: {e}"));
                assert_eq!(entries.len(), inspected.keys.len());
                // Sent through the access point of its keys, each deletable there with every
                // access change the request makes.
                let through = inspected
                    .route
                    .as_ref()
                    .unwrap_or_else(|| panic!("a DeleteObjects forwarded without its keys' route"));
                for e in entries {
                    let r = d
                        .router
                        .route(&caller.name, &route.bucket, Scope::Key(&e.key), OperationClass::Delete)
                        .unwrap_or_else(|denial| panic!("deletes {:?}: {denial:?}", e.key));
                    assert_eq!(r.access_point.arn(), through.access_point.arn());
                    judge(&r, &e.key);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The configuration.

/// `config`: `Config::from_toml` (parse and validate), then what is built from a valid one.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Secrets and TLS material can name files: keep the fuzzer away from device and kernel files
    // that never end or block.
    if ["/dev", "/proc", "/sys", "/run", "\\"].iter().any(|p| text.contains(p)) {
        return;
    }
    let c = match Config::from_toml(text) {
        Ok(c) => c,
        Err(e) => {
            trace("config", &e.problems.len());
            assert!(!e.problems.is_empty(), "an error without problems");
            let _ = e.to_string();
            return;
        }
    };
    assert!(!c.listeners.is_empty());
    assert!(!c.sigv4.accepted_regions.is_empty());
    let _ = apgate::explain::warnings(&c);
    let router = Router::new(&c.routes);
    for r in &c.routes {
        assert!(
            c.identities.iter().any(|i| i.name == r.identity),
            "route for an unknown identity"
        );
        assert!(!r.operations.is_empty());
        let (bucket, exact) = match (&r.bucket, &r.access_point) {
            (RouteBucket::Name(b), RouteAccessPoint::Fixed(_)) => (b.clone(), true),
            (RouteBucket::Name(_), RouteAccessPoint::Template(_)) => panic!("a template left on a named bucket"),
            // A bucket the pattern matches ('*' as "x"); a more specific rule may decide it.
            (RouteBucket::Pattern(p), _) => {
                let sample = p.as_str().replace('*', "x");
                assert!(p.matches(&sample), "{p:?} does not match {sample:?}");
                match BucketName::parse(&sample) {
                    Ok(b) => (b, false),
                    Err(_) => continue,
                }
            }
        };
        if exact {
            assert!(router.buckets_of(&r.identity).contains(&bucket));
        }
        let key = format!("{}x", r.prefix);
        for class in OperationClass::ALL {
            for scope in [Scope::Key(&key), Scope::ListPrefix(&r.prefix)] {
                let covered = match scope {
                    Scope::Key(k) | Scope::ListPrefix(k) => k,
                    Scope::Bucket => "",
                };
                let routed = router.route(&r.identity, &bucket, scope, class);
                if let Ok(route) = &routed {
                    let host = route.access_point.host();
                    assert!(HeaderValue::from_str(host).is_ok(), "access point host {host:?}");
                    assert!(
                        host.parse::<http::uri::Authority>().is_ok(),
                        "access point host {host:?} is not an authority"
                    );
                    assert_eq!(route.bucket, bucket);
                }
                if !exact {
                    continue;
                }
                match routed {
                    Ok(route) => {
                        assert!(
                            route.operations.contains(&class),
                            "routed a class the route does not allow"
                        );
                        assert!(covered.starts_with(&route.prefix), "routed outside the route's prefix");
                        assert!(route.prefix.len() >= r.prefix.len(), "a less specific route won");
                    }
                    Err(Denial::OperationNotAllowed { .. }) => {}
                    // A listing of the route's prefix is refused when a narrower prefix inside it
                    // has no rule that allows the class: check that claim against the routes.
                    Err(Denial::ListingCoversUnlisted { route, prefix }) => {
                        assert!(matches!(scope, Scope::ListPrefix(_)), "a listing denial for a key");
                        let hidden = &c.routes[route];
                        assert_eq!(hidden.prefix, prefix);
                        assert!(
                            prefix.len() > covered.len() && prefix.starts_with(covered),
                            "{prefix:?} is not inside the listing of {covered:?}"
                        );
                        assert!(
                            !c.routes.iter().any(|o| o.identity == r.identity
                                && o.bucket == r.bucket
                                && o.prefix == prefix
                                && o.operations.contains(&class)),
                            "a route for {prefix:?} allows {class:?}"
                        );
                    }
                    Err(d) => panic!("route {r:?} does not route its own prefix: {d:?}"),
                }
            }
        }
    }
    let keys = c.identities.iter().flat_map(|i| {
        i.keys.iter().map(move |k| {
            (
                k.access_key_id.clone(),
                Arc::from(i.name.as_str()),
                k.secret_access_key.clone(),
            )
        })
    });
    let _ = SigV4Verifier::new(keys, c.sigv4.accepted_regions.clone(), c.sigv4.max_clock_skew);
}

// ---------------------------------------------------------------------------------------------
// The XML response rewriter and the DeleteObjects reader.

/// The operations whose answers are XML documents apgate rewrites.
const XML_ANSWERS: &[Operation] = &[
    Operation::ListObjects,
    Operation::ListObjectsV2,
    Operation::ListObjectVersions,
    Operation::ListMultipartUploads,
    Operation::ListParts,
    Operation::GetObjectAcl,
    Operation::DeleteObjects,
    Operation::CompleteMultipartUpload,
    Operation::CreateMultipartUpload,
    Operation::CopyObject,
    Operation::GetObjectAttributes,
    Operation::GetObjectTagging,
];

/// An element of a rewritten answer, as an independent reading (quick-xml's, empty elements
/// expanded) gives it.
struct Node {
    name: Vec<u8>,
    attributes: Vec<(Vec<u8>, String)>,
    text: String,
    children: Vec<Node>,
}

/// Reads a rewritten answer into a tree; panics on anything but elements, text and references
/// a client resolves (a comment, an instruction or a document type must not survive).
fn answer_tree(xml: &[u8]) -> Node {
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().trim_text(false);
    reader.config_mut().expand_empty_elements = true;
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Node> = Vec::new();
    let mut root = None;
    loop {
        match reader
            .read_event()
            .unwrap_or_else(|e| panic!("the rewritten answer is not well-formed: {e}"))
        {
            Event::Eof => break,
            Event::Start(s) => stack.push(Node {
                name: s.local_name().as_ref().to_vec(),
                attributes: s
                    .attributes()
                    .map(|a| {
                        let a = a.expect("an attribute of the rewritten answer");
                        (
                            a.key.as_ref().to_vec(),
                            a.unescape_value().expect("attribute value").into_owned(),
                        )
                    })
                    .collect(),
                text: String::new(),
                children: Vec::new(),
            }),
            Event::End(_) => {
                let node = stack.pop().expect("an end without a start");
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            Event::Text(t) => {
                if let Some(open) = stack.last_mut() {
                    open.text.push_str(&t.decode().expect("text"));
                }
            }
            Event::CData(t) => {
                if let Some(open) = stack.last_mut() {
                    open.text.push_str(&t.decode().expect("cdata"));
                }
            }
            Event::GeneralRef(r) => {
                let text = if r.is_char_ref() {
                    r.resolve_char_ref()
                        .expect("char ref")
                        .map(String::from)
                        .expect("a character")
                } else {
                    let name: &[u8] = &r;
                    match name {
                        b"lt" => "<",
                        b"gt" => ">",
                        b"amp" => "&",
                        b"apos" => "'",
                        b"quot" => "\"",
                        other => panic!("the answer keeps the entity &{};", String::from_utf8_lossy(other)),
                    }
                    .to_owned()
                };
                if let Some(open) = stack.last_mut() {
                    open.text.push_str(&text);
                }
            }
            Event::Decl(_) => {}
            other => panic!("the rewritten answer keeps {other:?}"),
        }
    }
    root.expect("the rewritten answer has a root")
}

/// Checks what a client may see of an answer (docs/SEMANTICS.md, "What an answer shows").
fn check_answer(node: &Node, parent: &[u8], depth: usize, op: Operation, bucket: &str, location: Option<&str>) {
    let name = String::from_utf8_lossy(&node.name);
    if depth > 1 {
        let parent_name = if depth == 2 {
            ""
        } else {
            std::str::from_utf8(parent).unwrap_or("?")
        };
        let pair = format!("{parent_name}/{name}");
        assert!(
            op.spec().response_elements.contains(&pair.as_str()),
            "{op:?}: {pair} is not an element of the answer"
        );
    }
    for (key, value) in &node.attributes {
        let allowed = match key.as_slice() {
            b"xmlns" => depth == 1 && value == "http://s3.amazonaws.com/doc/2006-03-01/",
            b"xmlns:xsi" => node.name == b"Grantee" && value == "http://www.w3.org/2001/XMLSchema-instance",
            b"xsi:type" => {
                node.name == b"Grantee" && ["AmazonCustomerByEmail", "CanonicalUser", "Group"].contains(&value.as_str())
            }
            _ => false,
        };
        assert!(
            allowed,
            "{op:?}: the attribute {}={value:?}",
            String::from_utf8_lossy(key)
        );
    }
    let children_only = node.children.is_empty();
    match (parent, node.name.as_slice()) {
        (_, b"Name" | b"Bucket") if depth == 2 && children_only => assert_eq!(node.text, bucket, "{op:?}"),
        (_, b"Location") if depth == 2 => assert_eq!(Some(node.text.as_str()), location, "{op:?}"),
        (b"Owner" | b"Initiator" | b"Grantee", b"ID") => assert_eq!(node.text, xml::ANSWER_OWNER_ID),
        (b"Owner" | b"Initiator" | b"Grantee", b"DisplayName" | b"EmailAddress") => {
            panic!("{op:?}: an owner's {name} is shown")
        }
        (b"Error", b"Code") => assert!(xml::is_plain_code(&node.text), "{op:?}: code {:?}", node.text),
        (_, b"Error") if depth > 1 => {
            let text = |n: &[u8]| node.children.iter().find(|c| c.name == n).map(|c| c.text.as_str());
            if let Some(message) = text(b"Message") {
                let documented = text(b"Code").and_then(apgate::s3::operation::error_message);
                assert!(
                    message == "The object could not be deleted." || Some(message) == documented,
                    "{op:?}: message {message:?}"
                );
            }
        }
        _ => {}
    }
    for child in &node.children {
        check_answer(child, &node.name, depth + 1, op, bucket, location);
    }
}

/// `xml_rewrite`: `sanitize_answer` (upstream XML answers), `error_fields` (upstream errors) and
/// `delete_objects` (DeleteObjects request bodies, read strictly). The first byte picks the
/// operation and the client view.
pub fn xml_rewrite(data: &[u8]) {
    let (selector, body) = match data.split_first() {
        Some((s, rest)) => (*s, rest),
        None => (0, data),
    };
    const VIEWS: &[(&str, Option<&str>)] = &[
        ("shared", Some("http://127.0.0.1:8080/shared/Bob/a%20b")),
        ("access-point-test", None),
        ("a.b-c", Some("https://a.b-c.s3.example.internal/k?x=<&>\"'")),
    ];
    let (bucket, location) = VIEWS[usize::from(selector) % VIEWS.len()];
    let op = XML_ANSWERS[usize::from(selector / 3) % XML_ANSWERS.len()];
    let view = ClientView { bucket, location };
    let result = xml::sanitize_answer(body, op.spec().response_elements, &view);
    trace(
        "xml_rewrite",
        &result.as_ref().map(|s| matches!(s, xml::Sanitized::Error)),
    );
    if let Ok(xml::Sanitized::Document(out)) = &result {
        let root = answer_tree(out);
        check_answer(&root, b"", 1, op, bucket, location);
    }
    if let Ok(fields) = xml::error_fields(body) {
        assert!(fields.len() <= 64);
    }
    if let Ok(entries) = delete_objects(body) {
        // `<Key>`, or `<Key` then white space before its `>` (a start tag may hold it).
        let mentions = body
            .windows(5)
            .filter(|w| w.starts_with(b"<Key") && matches!(w[4], b'>' | b' ' | b'\t' | b'\r' | b'\n'))
            .count();
        assert!(entries.len() <= mentions, "more keys than Key elements");
        for e in entries {
            assert!(!e.key.is_empty());
            assert!(
                !e.key.contains('\r') || body.windows(5).any(|w| w == b"&#13;" || w == b"&#xD;" || w == b"&#xd;"),
                "a raw carriage return read as part of a key"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Signed aws-chunked bodies.

const SEED_IN: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const SEED_OUT: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn chunk_key(secret: &str) -> ChunkKey {
    ChunkKey::new(
        signing_key(&Secret::new(secret), "20261127", "us-east-1", "s3"),
        "20261127T120000Z",
        "20261127/us-east-1/s3/aws4_request",
    )
}

/// A body that yields its bytes in frames of a fixed size, then ends.
struct Pieces {
    rest: Bytes,
    piece: usize,
}

impl Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.piece.min(self.rest.len());
        let frame = self.rest.split_to(n);
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }
}

/// Reads the fuzzer's bytes as a little program.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
}

/// One chunk read back from a body: its data and its signature.
#[derive(Debug, PartialEq, Eq)]
struct Chunk {
    data: Vec<u8>,
    signature: String,
}

/// An independent reader of aws-chunked framing (the same acceptance rules as apgate's): the
/// complete chunks from the start of `wire`, and the rest.
fn read_chunks(wire: &[u8]) -> (Vec<Chunk>, &[u8]) {
    let mut chunks = Vec::new();
    let mut rest = wire;
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return (chunks, rest);
        };
        let Ok(line) = std::str::from_utf8(&rest[..eol]) else {
            return (chunks, rest);
        };
        let Some((hex, sig)) = line.split_once(";chunk-signature=") else {
            return (chunks, rest);
        };
        let Ok(size) = usize::from_str_radix(hex, 16) else {
            return (chunks, rest);
        };
        if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) || size > MAX_CHUNK_SIZE {
            return (chunks, rest);
        }
        let body = &rest[eol + 2..];
        if size == 0 {
            chunks.push(Chunk {
                data: Vec::new(),
                signature: sig.to_owned(),
            });
            return (chunks, body);
        }
        if body.len() < size + 2 || &body[size..size + 2] != b"\r\n" {
            return (chunks, rest);
        }
        chunks.push(Chunk {
            data: body[..size].to_vec(),
            signature: sig.to_owned(),
        });
        rest = &body[size + 2..];
    }
}

/// Whether `chunks` carry a valid signature chain from `seed` under `key`.
fn chain_ok(key: &ChunkKey, seed: &str, chunks: &[Chunk]) -> Vec<bool> {
    let mut prev = seed.to_owned();
    chunks
        .iter()
        .map(|c| {
            let ok = key.chunk_signature(&prev, &c.data) == c.signature;
            prev.clone_from(&c.signature);
            ok
        })
        .collect()
}

/// An unsigned aws-chunked body (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`) through apgate's streaming
/// check, fed in pieces. Input: a flags byte (bits 0-1: the checksum `x-amz-trailer` announced,
/// none, CRC32, SHA-256 or CRC64NVME; bits 2-4: the piece size; bit 5: the body has no
/// Content-Length), the decoded length (u16), then the body. Whatever the input: accepted means
/// forwarded unchanged, and what was forwarded is, read again here independently, hex chunk sizes
/// without extensions adding up to the decoded length and a trailer of nothing but the announced
/// checksum, once, with nothing after it; refused means the upstream never got the whole body
/// (with a Content-Length, the upstream's too, never as many bytes; without one, the upstream's
/// HTTP chunked framing is never ended).
pub fn unsigned_chunks(data: &[u8]) {
    use apgate::chunked::unsigned::UnsignedFraming;
    use apgate::s3::operation::{checksum_header, checksum_value_len};
    let mut input = Input(data);
    let flags = input.byte();
    let checksum = [None, Some("crc32"), Some("sha256"), Some("crc64nvme")][usize::from(flags & 3)].map(|alg| {
        let name = format!("x-amz-checksum-{alg}");
        TrailerChecksum {
            header: checksum_header(&name).expect("a checksum header"),
            value_len: checksum_value_len(&name).expect("its length"),
        }
    });
    let piece = [1usize, 2, 3, 5, 8, 17, 64, 4096][usize::from(flags >> 2 & 7)];
    let sized = flags & 0x20 == 0;
    let decoded = u64::from(input.u16());
    let wire = input.0;

    let mut framing = UnsignedFraming::new(checksum, decoded, sized.then_some(wire.len() as u64));
    let mut out = std::collections::VecDeque::new();
    let mut fed = Ok(());
    for part in wire.chunks(piece) {
        fed = framing.feed(Bytes::copy_from_slice(part), &mut out);
        if fed.is_err() {
            break;
        }
    }
    let end = fed.and_then(|()| framing.finish());
    let mut sent: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
    match end {
        Ok(last) => {
            sent.extend_from_slice(&last);
            assert_eq!(sent, wire, "accepted, but forwarded something else");
            check_unsigned_body(wire, checksum, decoded);
        }
        Err(e) => {
            let _ = e.to_gateway_error();
            assert!(
                wire.starts_with(&sent),
                "refused, and forwarded bytes that are not the body's"
            );
            assert!(
                !sized || sent.len() < wire.len() || wire.is_empty(),
                "refused, but forwarded the whole body"
            );
        }
    }
}

/// An accepted unsigned aws-chunked body, read again with no code of apgate's.
fn check_unsigned_body(wire: &[u8], checksum: Option<TrailerChecksum>, decoded: u64) {
    fn line(wire: &[u8], at: usize) -> (&[u8], usize) {
        let end = wire[at..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("an accepted body has CRLF-ended lines");
        (&wire[at..at + end], at + end + 2)
    }
    let mut at = 0;
    let mut total = 0u64;
    loop {
        let (size_line, next) = line(wire, at);
        assert!(
            !size_line.is_empty() && size_line.iter().all(u8::is_ascii_hexdigit),
            "accepted a chunk-size line {:?}",
            String::from_utf8_lossy(size_line)
        );
        let size = u64::from_str_radix(std::str::from_utf8(size_line).unwrap_or("x"), 16).expect("hex");
        at = next;
        if size == 0 {
            break;
        }
        let size = usize::try_from(size).expect("a size that fits");
        assert_eq!(
            &wire[at + size..at + size + 2],
            b"\r\n",
            "chunk data not followed by CRLF"
        );
        at += size + 2;
        total += size as u64;
    }
    assert_eq!(
        total, decoded,
        "accepted chunks that do not add up to the decoded length"
    );
    let mut lines = 0;
    loop {
        let (trailer_line, next) = line(wire, at);
        at = next;
        if trailer_line.is_empty() {
            break;
        }
        lines += 1;
        let c = checksum.expect("accepted a trailer line with no checksum announced");
        let text = std::str::from_utf8(trailer_line).expect("an ASCII trailer line");
        let (name, value) = text.split_once(':').expect("a trailer line is a header");
        assert!(
            name.eq_ignore_ascii_case(c.header),
            "accepted the trailer line {text:?}"
        );
        let value = value.trim_matches([' ', '\t']);
        assert_eq!(
            value.len(),
            c.value_len,
            "accepted a checksum of the wrong length: {text:?}"
        );
        let pad = apgate::s3::operation::checksum_padding(c.header).expect("a checksum");
        let (digits, padding) = value.split_at(value.len() - pad);
        assert!(
            digits
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/'))
                && padding.bytes().all(|b| b == b'='),
            "accepted a checksum that is not base64 of its digest: {text:?}"
        );
    }
    assert_eq!(
        lines,
        usize::from(checksum.is_some()),
        "accepted {lines} checksum lines"
    );
    assert_eq!(at, wire.len(), "accepted bytes after the end");
}

/// `aws_chunked`: `ResignChunks` over a body the fuzzer describes. First byte: bit 0 verify the
/// caller's signatures (else re-sign unchecked, as for `source` callers), bit 1 trailer expected,
/// bit 2 raw (the rest is the wire body as is), bits 3-5 how the body is split into frames. Then
/// two bytes of `x-amz-decoded-content-length` adjustment. In structured mode the rest is a list
/// of ops (see the match below; a data chunk is op, u16 size, a length byte and that many data
/// bytes, the rest of the chunk repeating the last one) that write correctly signed chunks (or deliberately broken ones) so the fuzzer reaches
/// every state past the signature checks.
pub fn aws_chunked(data: &[u8]) {
    let mut input = Input(data);
    let flags = input.byte();
    let (verify, trailer, raw) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
    let piece = [1usize, 2, 7, 64, 100, 8192, 8193, 1 << 20][usize::from(flags >> 3 & 7)];
    let length_delta = i64::from(input.u16() as i16);
    let client = chunk_key("client-secret-0123456789");
    let apgate = chunk_key("apgate-secret-0123456789");

    let mut wire = Vec::new();
    let mut total: u64 = 0;
    if raw {
        wire = input.0.to_vec();
        let (chunks, _) = read_chunks(&wire);
        total = chunks.iter().map(|c| c.data.len() as u64).sum();
    } else {
        let mut prev = SEED_IN.to_owned();
        let mut trailer_lines: Vec<String> = Vec::new();
        let mut steps = 0;
        // Bounded, so one input stays cheap: a few chunks of at least 8 KiB reach every state.
        while !input.0.is_empty() && steps < 32 && wire.len() < 40 << 10 {
            steps += 1;
            let op = input.byte();
            match op % 8 {
                // A data chunk: size, fill, signature mode.
                0..=2 => {
                    let n = usize::from(input.u16());
                    let size = if op & 0x80 != 0 { 8192 + n % 256 } else { n % 9000 };
                    let given = usize::from(input.byte() % 64);
                    let mut chunk = input.bytes(given);
                    chunk.truncate(size);
                    let fill = chunk.last().copied().unwrap_or(b'a');
                    chunk.resize(size, fill);
                    let sig = signature(&mut input, &client, &prev, &chunk, op);
                    let hex = if op & 0x40 != 0 {
                        format!("{size:06X}")
                    } else {
                        format!("{size:x}")
                    };
                    wire.extend_from_slice(format!("{hex};chunk-signature={sig}\r\n").as_bytes());
                    wire.extend_from_slice(&chunk);
                    if op & 0x20 == 0 {
                        wire.extend_from_slice(b"\r\n");
                    }
                    total += size as u64;
                    prev = sig;
                }
                // The final chunk.
                3 => {
                    let sig = signature(&mut input, &client, &prev, b"", op);
                    wire.extend_from_slice(format!("0;chunk-signature={sig}\r\n").as_bytes());
                    prev = sig;
                }
                // A trailer line.
                4 => {
                    let n = usize::from(input.byte() % 48);
                    let line = String::from_utf8_lossy(&input.bytes(n)).replace(['\r', '\n'], "");
                    // Bit 6: a (second) signature line with whatever value.
                    let line = if op & 0x40 != 0 {
                        format!("x-amz-trailer-signature:{line}")
                    } else if line.contains(':') {
                        line
                    } else {
                        format!("x-amz-checksum-crc32:{line}")
                    };
                    wire.extend_from_slice(line.as_bytes());
                    wire.extend_from_slice(b"\r\n");
                    trailer_lines.push(line);
                }
                // The trailer signature over the lines so far, then (usually) the end.
                5 => {
                    let mut canonical: Vec<(String, String)> = trailer_lines
                        .iter()
                        .filter_map(|l| l.split_once(':'))
                        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                        .filter(|(n, _)| n != "x-amz-trailer-signature")
                        .collect();
                    canonical.sort();
                    let text: String = canonical.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
                    let mut sig = client.trailer_signature(&prev, text.as_bytes());
                    if op & 0x80 != 0 {
                        sig = flip(&sig);
                    }
                    wire.extend_from_slice(format!("x-amz-trailer-signature:{sig}\r\n").as_bytes());
                    // Bit 6: more trailer lines may follow (a second signature line, say).
                    if op & 0x40 == 0 {
                        wire.extend_from_slice(b"\r\n");
                    }
                }
                // Raw bytes.
                6 => {
                    let n = usize::from(input.byte() % 32);
                    wire.extend_from_slice(&input.bytes(n));
                }
                _ => wire.extend_from_slice(b"\r\n"),
            }
        }
    }
    let decoded = u64::try_from(i64::try_from(total).unwrap_or(i64::MAX).saturating_add(length_delta)).unwrap_or(0);

    let failure: FailureSlot = Arc::default();
    let inbound = verify.then(|| Inbound {
        key: client.clone(),
        seed: SEED_IN.to_owned(),
    });
    let ending = match (trailer, flags & 0x80 != 0) {
        (false, _) => Ending::Plain,
        (true, false) => Ending::Trailer(Some(TrailerChecksum {
            header: "x-amz-checksum-crc32",
            value_len: 8,
        })),
        (true, true) => Ending::Trailer(None),
    };
    let body = ResignChunks::new(
        Pieces {
            rest: Bytes::from(wire.clone()),
            // Byte-by-byte delivery of a long body costs much and finds nothing more.
            piece: if wire.len() > 4096 { piece.max(64) } else { piece },
        },
        inbound,
        apgate.clone(),
        SEED_OUT.to_owned(),
        ending,
        decoded,
        failure.clone(),
    );
    let (out, err) = drain(body);
    let recorded = failure.get().cloned();
    trace("aws_chunked", &(out.len(), &recorded));
    let expected_len = outbound_length(decoded, ending);
    match &err {
        None => {
            assert!(recorded.is_none(), "a failure recorded on success");
            // apgate's own chunks add up to the length it announced upstream.
            assert_eq!(
                out.len() as u64,
                expected_len,
                "re-signed body is not the announced length"
            );
        }
        Some(_) => {
            let recorded = recorded.unwrap_or_else(|| panic!("the body failed without recording why"));
            let _ = recorded.to_gateway_error();
            if recorded == ChunkError::SignatureDoesNotMatch {
                assert!(verify, "signatures checked while not verifying");
            }
            // A failed body never completes upstream.
            assert!((out.len() as u64) < expected_len, "a failed body went out whole");
        }
    }
    // What was forwarded: apgate's chunks, OUT_CHUNK bytes each but the last, each signed in
    // apgate's chain, carrying the caller's data in order and nothing else.
    let (sent, _) = read_chunks(&out);
    let (received, _) = read_chunks(&wire);
    let out_ok = chain_ok(&apgate, SEED_OUT, &sent);
    assert!(
        out_ok.iter().all(|ok| *ok),
        "a forwarded chunk is not signed by apgate's chain"
    );
    let data_chunks: Vec<&Chunk> = sent.iter().filter(|c| !c.data.is_empty()).collect();
    for c in data_chunks.iter().rev().skip(1) {
        assert_eq!(c.data.len(), OUT_CHUNK, "a chunk of apgate's but the last is short");
    }
    let sent_data: Vec<u8> = sent.iter().flat_map(|c| c.data.iter().copied()).collect();
    let received_data: Vec<u8> = received.iter().flat_map(|c| c.data.iter().copied()).collect();
    assert!(
        received_data.starts_with(&sent_data),
        "forwarded data the caller did not send, or out of order"
    );
    if err.is_none() {
        assert_eq!(
            sent_data.len() as u64,
            decoded,
            "forwarded data does not add up to the declared length"
        );
        assert!(
            sent.last().is_some_and(|c| c.data.is_empty()),
            "ended without a final chunk"
        );
        if verify {
            let in_ok = chain_ok(&client, SEED_IN, &received);
            assert!(
                in_ok.iter().all(|ok| *ok),
                "a body with a bad caller signature went out whole"
            );
        }
    }
}

fn flip(sig: &str) -> String {
    let mut s = sig.to_owned();
    let last = if s.ends_with('0') { "1" } else { "0" };
    s.pop();
    s.push_str(last);
    s
}

/// The signature for a chunk: correct (most of the time), or broken in a way the op picks.
fn signature(input: &mut Input<'_>, key: &ChunkKey, prev: &str, data: &[u8], op: u8) -> String {
    let good = key.chunk_signature(prev, data);
    match op >> 3 & 3 {
        0 | 1 => good,
        2 => flip(&good),
        _ => match input.byte() % 4 {
            0 => good.to_uppercase(),
            1 => good[..63].to_owned(),
            2 => format!("{good}0"),
            _ => String::from_utf8_lossy(&input.bytes(64)).into_owned(),
        },
    }
}
