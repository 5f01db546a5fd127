//! apgate's outbound signer against aws-sigv4's `sign` (the reference): the same headers and the
//! same signature for a table of S3 requests and for generated ones.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_smithy_runtime_api::client::identity::Identity;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use http::header::HeaderName;

const HOST: &str = "bob-ap-123456789012.s3-accesspoint.us-east-1.amazonaws.com";

/// aws-sigv4's signature of the same request, as apgate signed with it before it had its own.
fn reference(
    parts: &Parts,
    signing_uri: &str,
    payload: &PayloadHash,
    credentials: &Credentials,
    region: &str,
    now: SystemTime,
) -> (http::HeaderMap, String) {
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
        .unwrap()
        .into();
    let headers: Vec<(&str, &str)> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
        .collect();
    let body = match payload {
        PayloadHash::Sha256(hex) => SignableBody::Precomputed(hex.as_str().to_owned()),
        PayloadHash::Unsigned => SignableBody::UnsignedPayload,
        PayloadHash::StreamingUnsignedTrailer => SignableBody::StreamingUnsignedPayloadTrailer,
        other => SignableBody::Precomputed(other.as_str().to_owned()),
    };
    let signable = SignableRequest::new(parts.method.as_str(), signing_uri, headers.into_iter(), body).unwrap();
    let (instructions, signature) = sign(signable, &params).unwrap().into_parts();
    let mut out = parts.headers.clone();
    for (name, value) in instructions.headers() {
        out.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    (out, signature)
}

struct Case {
    method: &'static str,
    path_and_query: String,
    headers: Vec<(&'static str, String)>,
    payload: PayloadHash,
    token: Option<&'static str>,
    region: &'static str,
}

fn check(case: &Case, now: SystemTime, keys: &SigningKeyCache) {
    let credentials = Credentials::new(
        "AKIDAPGATEUPSTREAM01",
        "upstream/secret/key/0123456789abcdefghij",
        case.token.map(str::to_owned),
        None,
        "test",
    );
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = case.method.parse().unwrap();
    parts.headers.insert("host", HeaderValue::from_static(HOST));
    for (name, value) in &case.headers {
        parts
            .headers
            .append(HeaderName::from_static(name), HeaderValue::from_str(value).unwrap());
    }
    let uri = format!("https://{HOST}{}", case.path_and_query);
    let (want_headers, want_signature) = reference(&parts, &uri, &case.payload, &credentials, case.region, now);
    let signature = sign_request(&mut parts, &uri, &case.payload, &credentials, case.region, now, keys).unwrap();
    let context = format!(
        "{} {} {:?} {:?}",
        case.method, case.path_and_query, case.headers, case.payload
    );
    assert_eq!(signature, want_signature, "{context}");
    assert_eq!(parts.headers, want_headers, "{context}");
}

#[test]
fn signs_like_aws_sigv4_a_table_of_s3_requests() {
    let keys = SigningKeyCache::new(16);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
    let sha = "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072".to_owned();
    let table = [
        Case {
            method: "GET",
            path_and_query: "/Bob/report.csv".into(),
            headers: vec![("range", "bytes=0-9".into())],
            payload: PayloadHash::Unsigned,
            token: None,
            region: "us-east-1",
        },
        Case {
            method: "GET",
            path_and_query: "/".into(),
            headers: vec![],
            payload: PayloadHash::parse(&sha).unwrap(),
            token: Some("FQoGZXIvYXdzEJr//////////wEaDOtoken+/="),
            region: "us-east-1",
        },
        Case {
            method: "GET",
            path_and_query: "/?list-type=2&prefix=Bob%2F&delimiter=%2F&max-keys=2".into(),
            headers: vec![],
            payload: PayloadHash::parse(&sha).unwrap(),
            token: None,
            region: "us-east-1",
        },
        Case {
            method: "POST",
            path_and_query: "/Bob/big?uploads".into(),
            headers: vec![("content-type", "application/octet-stream".into())],
            payload: PayloadHash::parse(&sha).unwrap(),
            token: None,
            region: "eu-west-1",
        },
        Case {
            method: "PUT",
            path_and_query: "/Bob/big?partNumber=2&uploadId=a%2Bb~c".into(),
            headers: vec![
                ("content-length", "5242880".into()),
                ("content-md5", "1B2M2Y8AsgTpgAmY7PhCfg==".into()),
            ],
            payload: PayloadHash::Unsigned,
            token: None,
            region: "us-east-1",
        },
        Case {
            method: "PUT",
            path_and_query: "/Bob/a%20b/%E2%82%AC%20%2B%3D%3A".into(),
            headers: vec![
                ("x-amz-meta-note", "  two   spaces  ".into()),
                ("user-agent", "legacy/1.0".into()),
                ("x-amzn-trace-id", "Root=1-abc".into()),
            ],
            payload: PayloadHash::StreamingSigned { trailer: true },
            token: None,
            region: "us-east-1",
        },
        Case {
            method: "PUT",
            path_and_query: "/Bob/copy".into(),
            headers: vec![
                (
                    "x-amz-copy-source",
                    "/arn%3Aaws%3As3%3Aus-east-1%3A123456789012%3Aaccesspoint%2Fbob/object/Bob/src".into(),
                ),
                ("x-amz-meta-a", "1".into()),
                ("x-amz-meta-a", "2".into()),
            ],
            payload: PayloadHash::StreamingUnsignedTrailer,
            token: Some("tok"),
            region: "us-east-1",
        },
        Case {
            method: "DELETE",
            path_and_query: "/Bob/x?versionId=3%2F4&tagging".into(),
            headers: vec![("transfer-encoding", "chunked".into())],
            payload: PayloadHash::StreamingSigned { trailer: false },
            token: None,
            region: "ap-southeast-2",
        },
        Case {
            method: "HEAD",
            path_and_query: "/Bob//double//slash".into(),
            headers: vec![
                ("x-amz-checksum-mode", "ENABLED".into()),
                ("if-none-match", "\"etag\"".into()),
            ],
            payload: PayloadHash::Unsigned,
            token: None,
            region: "us-east-1",
        },
        Case {
            method: "GET",
            path_and_query: "/Bob/x?a=2&a=1&b&A=0".into(),
            headers: vec![("x-amz-meta-tab", "a\tb".into())],
            payload: PayloadHash::Unsigned,
            token: None,
            region: "us-east-1",
        },
    ];
    for case in &table {
        check(case, now, &keys);
    }
    assert_eq!(keys.len(), 3, "one derived key per region");
}

#[test]
fn signs_like_aws_sigv4_generated_requests() {
    const PATH_CHARS: &[&str] = &[
        "a",
        "Z",
        "0",
        "-",
        "_",
        ".",
        "~",
        "/",
        "%20",
        "%2B",
        "%E2%82%AC",
        "%25",
        "%3D",
    ];
    const QUERY_KEYS: &[&str] = &[
        "prefix",
        "marker",
        "uploadId",
        "partNumber",
        "versionId",
        "acl",
        "x",
        "X",
    ];
    const QUERY_VALUES: &[&str] = &["", "1", "Bob%2F", "a%20b", "%E2%82%AC", "~", "a%2Bb", "%3D%26"];
    const HEADERS: &[&str] = &[
        "range",
        "content-type",
        "x-amz-meta-k",
        "if-match",
        "cache-control",
        "user-agent",
        "content-length",
    ];
    const VALUES: &[&str] = &[
        "v",
        " v",
        "v ",
        "a  b",
        "bytes=0-1",
        "\"x\"",
        "text/plain; charset=utf-8",
        "123",
    ];
    let mut rng = StdRng::seed_from_u64(0x5eed_a9a7e);
    let keys = SigningKeyCache::new(16);
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
    for i in 0..500 {
        let mut path = String::from("/");
        for _ in 0..rng.gen_range(0..12) {
            path.push_str(PATH_CHARS[rng.gen_range(0..PATH_CHARS.len())]);
        }
        for j in 0..rng.gen_range(0..4) {
            path.push(if j == 0 { '?' } else { '&' });
            path.push_str(QUERY_KEYS[rng.gen_range(0..QUERY_KEYS.len())]);
            let v = QUERY_VALUES[rng.gen_range(0..QUERY_VALUES.len())];
            if !v.is_empty() {
                path.push('=');
                path.push_str(v);
            }
        }
        let headers = (0..rng.gen_range(0..4))
            .map(|_| {
                (
                    HEADERS[rng.gen_range(0..HEADERS.len())],
                    VALUES[rng.gen_range(0..VALUES.len())].to_owned(),
                )
            })
            .collect();
        let payload = match rng.gen_range(0..4) {
            0 => PayloadHash::Unsigned,
            1 => PayloadHash::parse(&format!("{:064x}", rng.gen::<u128>())).unwrap(),
            2 => PayloadHash::StreamingSigned { trailer: rng.gen() },
            _ => PayloadHash::StreamingUnsignedTrailer,
        };
        let case = Case {
            method: ["GET", "PUT", "HEAD", "DELETE", "POST"][rng.gen_range(0..5)],
            path_and_query: path,
            headers,
            payload,
            token: rng.gen::<bool>().then_some("session/token+=="),
            region: ["us-east-1", "eu-central-1"][rng.gen_range(0..2)],
        };
        // Spread over a few days: the cache must hand out each day's key.
        check(&case, base + Duration::from_secs(3 * 3600 * (i % 40)), &keys);
    }
}

#[test]
fn the_key_cache_derives_once_per_key_date_and_region_and_stays_bounded() {
    let keys = SigningKeyCache::new(8);
    let a = keys.get("AKID1", "secret1", "20261128", "us-east-1");
    assert_eq!(a, keys.get("AKID1", "secret1", "20261128", "us-east-1"));
    assert_eq!(keys.len(), 1);
    assert_ne!(a, keys.get("AKID1", "secret1", "20261129", "us-east-1"), "another day");
    assert_ne!(
        a,
        keys.get("AKID1", "secret1", "20261128", "eu-west-1"),
        "another region"
    );
    assert_ne!(a, keys.get("AKID2", "secret2", "20261128", "us-east-1"), "another key");
    assert_eq!(keys.len(), 4);
    assert_eq!(
        a,
        crate::identity::sigv4::signing_key(&crate::secret::Secret::new("secret1"), "20261128", "us-east-1", "s3")
    );
    for day in 1..=28 {
        keys.get("AKID1", "secret1", &format!("202612{day:02}"), "us-east-1");
        assert!(keys.len() <= 8, "{}", keys.len());
    }
    for n in 0..40 {
        keys.get(&format!("AKID-{n}"), "s", "20261128", "us-east-1");
        assert!(keys.len() <= 8, "{}", keys.len());
    }
    let shown = format!("{keys:?}");
    assert!(
        shown.starts_with("SigningKeyCache(") && !shown.contains("secret"),
        "{shown}"
    );
}

#[test]
fn refuses_what_cannot_be_signed() {
    let keys = SigningKeyCache::new(4);
    let credentials = Credentials::new("AKID", "secret", None, None, "test");
    let mut parts = http::Request::new(()).into_parts().0;
    parts.headers.insert("host", HeaderValue::from_static(HOST));
    parts.headers.insert(
        "x-amz-meta-name",
        HeaderValue::from_bytes("caf\u{e9}".as_bytes()).unwrap(),
    );
    let now = SystemTime::now();
    let err = sign_request(
        &mut parts,
        &format!("https://{HOST}/k"),
        &PayloadHash::Unsigned,
        &credentials,
        "us-east-1",
        now,
        &keys,
    )
    .unwrap_err();
    assert!(err.to_string().contains("x-amz-meta-name"), "{err}");
    let err = sign_request(
        &mut parts,
        "http://elsewhere/k",
        &PayloadHash::Unsigned,
        &credentials,
        "us-east-1",
        now,
        &keys,
    )
    .unwrap_err();
    assert!(err.to_string().contains("not an https URI"), "{err}");
}
