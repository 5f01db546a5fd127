use std::time::UNIX_EPOCH;

use http::HeaderValue;

use super::*;
use crate::s3::addressing::parse_target;

const AKID: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn verifier() -> SigV4Verifier {
    SigV4Verifier::new(
        [(AKID.to_owned(), Arc::from("alice"), Secret::new(SECRET))],
        vec!["us-east-1".to_owned()],
        Duration::from_secs(900),
    )
}

fn t(s: &str) -> SystemTime {
    amzdate::parse(s).unwrap()
}

struct Req {
    method: &'static str,
    host: &'static str,
    path: &'static str,
    query: &'static str,
    headers: Vec<(&'static str, String)>,
}

impl Req {
    fn run(&self, v: &SigV4Verifier, now: SystemTime) -> Result<Verified, GatewayError> {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static(self.host));
        for (k, val) in &self.headers {
            h.append(*k, HeaderValue::from_str(val).unwrap());
        }
        let target = parse_target(
            Some(self.host),
            self.path,
            Some(self.query),
            &["s3.amazonaws.com".to_owned()],
        )
        .unwrap();
        v.verify(&self.method.parse().unwrap(), &target, &h, now)
    }
}

fn authz(signed: &str, sig: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential={AKID}/20130524/us-east-1/s3/aws4_request,SignedHeaders={signed},Signature={sig}"
    )
}

/// The worked examples of <https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html>.
fn aws_examples() -> Vec<(&'static str, Req)> {
    vec![
        (
            "example_get_object",
            Req {
                method: "GET",
                host: "examplebucket.s3.amazonaws.com",
                path: "/test.txt",
                query: "",
                headers: vec![
                    ("range", "bytes=0-9".into()),
                    ("x-amz-content-sha256", EMPTY.into()),
                    ("x-amz-date", "20130524T000000Z".into()),
                    (
                        "authorization",
                        authz(
                            "host;range;x-amz-content-sha256;x-amz-date",
                            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
                        ),
                    ),
                ],
            },
        ),
        (
            "example_put_object",
            Req {
                method: "PUT",
                host: "examplebucket.s3.amazonaws.com",
                path: "/test%24file.text",
                query: "",
                headers: vec![
                    ("date", "Fri, 24 May 2013 00:00:00 GMT".into()),
                    ("x-amz-date", "20130524T000000Z".into()),
                    ("x-amz-storage-class", "REDUCED_REDUNDANCY".into()),
                    (
                        "x-amz-content-sha256",
                        "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072".into(),
                    ),
                    (
                        "authorization",
                        authz(
                            "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
                            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
                        ),
                    ),
                ],
            },
        ),
        (
            "example_get_bucket_lifecycle",
            Req {
                method: "GET",
                host: "examplebucket.s3.amazonaws.com",
                path: "/",
                query: "lifecycle",
                headers: vec![
                    ("x-amz-date", "20130524T000000Z".into()),
                    ("x-amz-content-sha256", EMPTY.into()),
                    (
                        "authorization",
                        authz(
                            "host;x-amz-content-sha256;x-amz-date",
                            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
                        ),
                    ),
                ],
            },
        ),
        (
            "example_list_objects",
            Req {
                method: "GET",
                host: "examplebucket.s3.amazonaws.com",
                path: "/",
                query: "max-keys=2&prefix=J",
                headers: vec![
                    ("x-amz-date", "20130524T000000Z".into()),
                    ("x-amz-content-sha256", EMPTY.into()),
                    (
                        "authorization",
                        authz(
                            "host;x-amz-content-sha256;x-amz-date",
                            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
                        ),
                    ),
                ],
            },
        ),
    ]
}

#[test]
fn example_signatures_from_the_aws_documentation_verify() {
    let v = verifier();
    for (name, req) in aws_examples() {
        let got = req.run(&v, t("20130524T000500Z"));
        let ok = got.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&*ok.identity, "alice", "{name}");
    }
}

#[test]
fn tampering_with_any_signed_part_breaks_the_signature() {
    let v = verifier();
    let tamper: &[(&str, fn(&mut Req))] = &[
        ("path", |r| r.path = "/test.txx"),
        ("method", |r| r.method = "HEAD"),
        ("host", |r| r.host = "otherbucket.s3.amazonaws.com"),
        ("header", |r| r.headers[0].1 = "bytes=0-10".into()),
        ("query", |r| r.query = "x=1"),
    ];
    for (what, f) in tamper {
        let (_, mut req) = aws_examples().remove(0);
        f(&mut req);
        let err = req.run(&v, t("20130524T000500Z")).unwrap_err();
        assert_eq!(err.code(), S3ErrorCode::SignatureDoesNotMatch, "{what}");
    }
}

#[test]
fn refusals_carry_the_right_code() {
    let v = verifier();
    let base = || aws_examples().remove(0).1;
    let with_auth = |a: &str| {
        let mut r = base();
        r.headers[3].1 = a.to_owned();
        r
    };
    let now = t("20130524T000500Z");
    let sig = "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41";
    let cases: Vec<(&str, Req, SystemTime, S3ErrorCode)> = vec![
        (
            "unknown key",
            with_auth(&authz("host;range;x-amz-content-sha256;x-amz-date", sig).replace(AKID, "AKIDUNKNOWN000000000")),
            now,
            S3ErrorCode::InvalidAccessKeyId,
        ),
        (
            "16 minutes late",
            base(),
            t("20130524T001600Z"),
            S3ErrorCode::RequestTimeTooSkewed,
        ),
        (
            "16 minutes early",
            base(),
            t("20130523T234400Z"),
            S3ErrorCode::RequestTimeTooSkewed,
        ),
        (
            "garbage",
            with_auth("AWS4-HMAC-SHA256 garbage"),
            now,
            S3ErrorCode::AuthorizationHeaderMalformed,
        ),
        (
            "wrong algorithm",
            with_auth("AWS4-HMAC-SHA512 Credential=x"),
            now,
            S3ErrorCode::AuthorizationHeaderMalformed,
        ),
        (
            "sigv2 not enabled",
            with_auth("AWS AKIAIOSFODNN7EXAMPLE:abc="),
            now,
            S3ErrorCode::InvalidRequest,
        ),
        (
            "region not accepted",
            with_auth(&authz("host;range;x-amz-content-sha256;x-amz-date", sig).replace("us-east-1", "eu-west-1")),
            now,
            S3ErrorCode::AuthorizationHeaderMalformed,
        ),
        (
            "service",
            with_auth(&authz("host;range;x-amz-content-sha256;x-amz-date", sig).replace("/s3/", "/ec2/")),
            now,
            S3ErrorCode::AuthorizationHeaderMalformed,
        ),
        (
            "scope date",
            with_auth(&authz("host;range;x-amz-content-sha256;x-amz-date", sig).replace("/20130524/", "/20130523/")),
            now,
            S3ErrorCode::AuthorizationHeaderMalformed,
        ),
        (
            "unsorted signed headers",
            with_auth(&authz("range;host;x-amz-content-sha256;x-amz-date", sig)),
            now,
            S3ErrorCode::AuthorizationHeaderMalformed,
        ),
        (
            "host not signed",
            with_auth(&authz("range;x-amz-content-sha256;x-amz-date", sig)),
            now,
            S3ErrorCode::AuthorizationHeaderMalformed,
        ),
        (
            "short signature",
            with_auth(&authz("host;range;x-amz-content-sha256;x-amz-date", "abc")),
            now,
            S3ErrorCode::AuthorizationHeaderMalformed,
        ),
        (
            "x-amz header not signed",
            with_auth(&authz("host;range;x-amz-date", sig)),
            now,
            S3ErrorCode::AccessDenied,
        ),
    ];
    for (what, req, now, want) in cases {
        let err = req.run(&v, now).unwrap_err();
        assert_eq!(err.code(), want, "{what}: {err}");
    }

    let mut no_hash = base();
    no_hash.headers.remove(1);
    no_hash.headers[2].1 = authz("host;range;x-amz-date", sig);
    assert_eq!(
        no_hash.run(&v, now).unwrap_err().code(),
        S3ErrorCode::MissingSecurityHeader
    );

    let mut anonymous = base();
    anonymous.headers.pop();
    assert_eq!(anonymous.run(&v, now).unwrap_err().code(), S3ErrorCode::AccessDenied);
}

#[test]
fn canonical_query_sorts_and_reencodes() {
    let cases = [
        ("", ""),
        ("b=2&a=1", "a=1&b=2"),
        ("uploads", "uploads="),
        ("prefix=a%2fb&list-type=2", "list-type=2&prefix=a%2Fb"),
        ("prefix=a b", "prefix=a%20b"),
        ("prefix=a+b", "prefix=a%20b"),
        ("k=%7E~", "k=~~"),
        ("a=2&a=1", "a=1&a=2"),
    ];
    for (raw, want) in cases {
        assert_eq!(crate::sigv4::canonical_query(raw, &[]), want, "{raw}");
        // The typed parse gives the same canonical query (duplicates it refuses).
        if let Ok(params) = crate::s3::encoding::parse_query(raw) {
            if !raw.starts_with("a=2&a=1") {
                assert_eq!(canonical_query_of(&params, &[]), want, "{raw}");
            }
        }
    }
    assert_eq!(
        crate::sigv4::canonical_query("X-Amz-Signature=abc&a=1", &["X-Amz-Signature"]),
        "a=1"
    );
}

/// Independent check: aws-sigv4 signs, apgate verifies, over keys with every awkward character.
#[test]
fn verifies_what_aws_sigv4_signs() {
    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{
        sign, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, UriPathNormalizationMode,
    };
    use aws_smithy_runtime_api::client::identity::Identity;

    let v = verifier();
    let now = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
    let identity: Identity = Credentials::new(AKID, SECRET, None, None, "test").into();
    let keys = [
        "plain.txt",
        "a%20b%2Bc",
        "%C3%BC%E2%82%AC",
        "x%3Dy%3Az~%21%27%28%29",
        "dir//double",
        "%2Flead",
    ];
    let queries = [
        "",
        "list-type=2&prefix=Bob%2F&delimiter=%2F&encoding-type=url",
        "uploadId=abc&partNumber=3",
    ];
    for key in keys {
        for query in queries {
            let path = format!("/bucket/{key}");
            let uri = if query.is_empty() {
                format!("http://127.0.0.1:8080{path}")
            } else {
                format!("http://127.0.0.1:8080{path}?{query}")
            };
            let mut settings = SigningSettings::default();
            settings.percent_encoding_mode = PercentEncodingMode::Single;
            settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
            settings.payload_checksum_kind = aws_sigv4::http_request::PayloadChecksumKind::XAmzSha256;
            let params = aws_sigv4::sign::v4::SigningParams::builder()
                .identity(&identity)
                .region("us-east-1")
                .name("s3")
                .time(now)
                .settings(settings)
                .build()
                .unwrap()
                .into();
            let headers = [
                ("host", "127.0.0.1:8080"),
                ("range", "bytes=0-9"),
                ("x-amz-meta-note", "  two  spaces "),
                // aws-sigv4 keeps tabs in the canonical value (botocore would collapse them): a
                // signature made that way verifies too (issue 16).
                ("x-amz-meta-tab", "a\t\tb \t c"),
            ];
            let signable = SignableRequest::new(
                "GET",
                &uri,
                headers.iter().copied(),
                SignableBody::Precomputed(EMPTY.into()),
            )
            .unwrap();
            let (instructions, _) = sign(signable, &params).unwrap().into_parts();
            let mut req = http::Request::builder().method("GET").uri(&uri).body(()).unwrap();
            for (k, val) in headers {
                req.headers_mut().insert(k, HeaderValue::from_static(val));
            }
            instructions.apply_to_request_http1x(&mut req);
            let target = parse_target(Some("127.0.0.1:8080"), &path, Some(query), &[]).unwrap();
            let got = v.verify(req.method(), &target, req.headers(), now);
            assert!(got.is_ok(), "{uri}: {:?}", got.err());
        }
    }
}

/// <https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html>, "An Example".
const EXAMPLE_PRESIGNED_QUERY: &str = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";

fn presigned(query: &str, now: SystemTime) -> Result<Verified, GatewayError> {
    let host = "examplebucket.s3.amazonaws.com";
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static(host));
    let target = parse_target(Some(host), "/test.txt", Some(query), &["s3.amazonaws.com".to_owned()]).unwrap();
    assert!(is_presigned(&target));
    verifier().verify_presigned(&Method::GET, &target, &h, now)
}

#[test]
fn example_presigned_get_object_verifies() {
    let ok = presigned(EXAMPLE_PRESIGNED_QUERY, t("20130524T120000Z")).unwrap();
    assert_eq!(&*ok.identity, "alice");
    assert_eq!(ok.payload, PayloadHash::Unsigned);
}

#[test]
fn presigned_refusals_carry_the_right_code() {
    let q = EXAMPLE_PRESIGNED_QUERY;
    let ok_now = t("20130524T120000Z");
    let cases: Vec<(&str, String, SystemTime, S3ErrorCode)> = vec![
        ("expired", q.into(), t("20130525T000001Z"), S3ErrorCode::AccessDenied),
        (
            "not yet valid",
            q.into(),
            t("20130523T230000Z"),
            S3ErrorCode::AccessDenied,
        ),
        (
            "expiry over a week",
            q.replace("X-Amz-Expires=86400", "X-Amz-Expires=604801"),
            ok_now,
            S3ErrorCode::AuthorizationQueryParametersError,
        ),
        (
            "expiry not a number",
            q.replace("X-Amz-Expires=86400", "X-Amz-Expires=-5"),
            ok_now,
            S3ErrorCode::AuthorizationQueryParametersError,
        ),
        (
            "no signature",
            q.replace("&X-Amz-Signature=", "&X-Amz-Nothing="),
            ok_now,
            S3ErrorCode::AuthorizationQueryParametersError,
        ),
        (
            "wrong algorithm",
            q.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA1"),
            ok_now,
            S3ErrorCode::AuthorizationQueryParametersError,
        ),
        (
            "bad date",
            q.replace("X-Amz-Date=20130524T000000Z", "X-Amz-Date=2013-05-24"),
            ok_now,
            S3ErrorCode::AuthorizationQueryParametersError,
        ),
        (
            "region",
            q.replace("us-east-1", "eu-west-1"),
            ok_now,
            S3ErrorCode::AuthorizationQueryParametersError,
        ),
        (
            "unknown key",
            q.replace("AKIAIOSFODNN7EXAMPLE", "AKIDUNKNOWN000000000"),
            ok_now,
            S3ErrorCode::InvalidAccessKeyId,
        ),
        (
            "tampered expiry",
            q.replace("X-Amz-Expires=86400", "X-Amz-Expires=86401"),
            ok_now,
            S3ErrorCode::SignatureDoesNotMatch,
        ),
        (
            "extra parameter",
            format!("{q}&versionId=1"),
            ok_now,
            S3ErrorCode::SignatureDoesNotMatch,
        ),
    ];
    for (what, query, now, want) in cases {
        let err = presigned(&query, now).unwrap_err();
        assert_eq!(err.code(), want, "{what}: {err}");
    }
}

#[test]
fn presigned_and_header_auth_together_are_refused() {
    let host = "examplebucket.s3.amazonaws.com";
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static(host));
    h.insert("authorization", HeaderValue::from_static("AWS4-HMAC-SHA256 x"));
    let target = parse_target(
        Some(host),
        "/test.txt",
        Some(EXAMPLE_PRESIGNED_QUERY),
        &["s3.amazonaws.com".to_owned()],
    )
    .unwrap();
    let err = verifier()
        .verify_presigned(&Method::GET, &target, &h, t("20130524T120000Z"))
        .unwrap_err();
    assert_eq!(err.code(), S3ErrorCode::InvalidArgument);
}

/// Independent check: what aws-sigv4 presigns (query signature location) verifies.
#[test]
fn verifies_what_aws_sigv4_presigns() {
    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{
        sign, PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
        UriPathNormalizationMode,
    };
    use aws_smithy_runtime_api::client::identity::Identity;

    let now = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
    let identity: Identity = Credentials::new(AKID, SECRET, None, None, "test").into();
    for (path, query) in [
        ("/bucket/a%20b%2Bc%C3%BC", ""),
        ("/bucket/k", "versionId=3%2F4&response-content-type=text%2Fplain"),
    ] {
        let uri = if query.is_empty() {
            format!("http://127.0.0.1:8080{path}")
        } else {
            format!("http://127.0.0.1:8080{path}?{query}")
        };
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(Duration::from_secs(3600));
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("s3")
            .time(now)
            .settings(settings)
            .build()
            .unwrap()
            .into();
        let headers = [("host", "127.0.0.1:8080")];
        let signable =
            SignableRequest::new("GET", &uri, headers.iter().copied(), SignableBody::UnsignedPayload).unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let mut req = http::Request::builder().method("GET").uri(&uri).body(()).unwrap();
        req.headers_mut()
            .insert("host", HeaderValue::from_static("127.0.0.1:8080"));
        instructions.apply_to_request_http1x(&mut req);
        let signed_uri = req.uri().clone();
        let target = parse_target(Some("127.0.0.1:8080"), signed_uri.path(), signed_uri.query(), &[]).unwrap();
        let got = verifier().verify_presigned(req.method(), &target, req.headers(), now + Duration::from_secs(60));
        assert!(got.is_ok(), "{signed_uri}: {:?}", got.err());
        let late = verifier().verify_presigned(req.method(), &target, req.headers(), now + Duration::from_secs(3601));
        assert_eq!(
            late.unwrap_err().code(),
            S3ErrorCode::AccessDenied,
            "expired after X-Amz-Expires"
        );
    }
}

#[test]
fn derived_keys_are_cached_per_key_date_and_region_and_bounded() {
    let v = verifier();
    let (_, req) = aws_examples().remove(0);
    for _ in 0..5 {
        assert!(req.run(&v, t("20130524T000500Z")).is_ok());
    }
    assert_eq!(v.cached_keys(), 1, "one derivation for one key, date and region");
    // A wrong signature still fails with the cached key.
    let mut bad = aws_examples().remove(0).1;
    bad.headers[3].1 = bad.headers[3].1.replace("f0e8", "f0e9");
    assert_eq!(
        bad.run(&v, t("20130524T000500Z")).unwrap_err().code(),
        S3ErrorCode::SignatureDoesNotMatch
    );
    // Many dates: the cache stays bounded.
    let secret = Secret::new(SECRET);
    for day in 1..=28 {
        v.derived_key(AKID, &secret, &format!("201305{day:02}"), "us-east-1");
    }
    assert!(v.cached_keys() <= 4 + 16, "{}", v.cached_keys());
    assert_eq!(
        v.derived_key(AKID, &secret, "20130524", "us-east-1"),
        signing_key(&secret, "20130524", "us-east-1", "s3")
    );
}

#[test]
fn debug_output_never_shows_key_material() {
    let v = verifier();
    let (_, req) = aws_examples().remove(0);
    req.run(&v, t("20130524T000500Z")).unwrap();
    let shown = format!("{v:?}");
    assert!(
        !shown.contains(SECRET) && shown.contains("SigningKeyCache(1 cached)"),
        "{shown}"
    );
}

/// AWS's original SigV4 test suite (aws4_testsuite, 2011), `get-vanilla`: a request dated by its
/// `Date` header alone, which the string to sign carries in ISO 8601 basic form. Service `host`
/// (the suite's), so the pieces are checked rather than `verify`, which only takes `s3`.
#[test]
fn example_get_vanilla_dated_by_the_date_header() {
    let mut headers = HeaderMap::new();
    headers.insert("date", HeaderValue::from_static("Mon, 09 Sep 2011 23:36:00 GMT"));
    headers.insert("host", HeaderValue::from_static("host.foo.com"));
    let dated = RequestDate::of(&headers).unwrap();
    assert_eq!((dated.header, dated.amz_date.as_str()), ("date", "20110909T233600Z"));
    let creq = canonical_request_of("GET", "/", &[], &headers, &["date", "host"], EMPTY.as_bytes());
    assert_eq!(
        String::from_utf8(creq.clone()).unwrap(),
        "GET\n/\n\ndate:Mon, 09 Sep 2011 23:36:00 GMT\nhost:host.foo.com\n\ndate;host\n".to_owned() + EMPTY
    );
    let sts = string_to_sign(&dated.amz_date, "20110909/us-east-1/host/aws4_request", &creq);
    assert!(
        sts.ends_with("366b91fb121d72a00f46bbe8d395f53a102b06dfb7e79636515208ed3fa606b1"),
        "{sts}"
    );
    let key = signing_key(
        &Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        "20110909",
        "us-east-1",
        "host",
    );
    assert_eq!(
        crate::s3::encoding::hex32(&hmac(&key, sts.as_bytes())),
        *b"b27ccfbfa7df52a200ff74193ca6e32d4b48b8856fab7ebf1c595d0670a7e470"
    );
    // x-amz-date wins over Date when both are present.
    headers.insert("x-amz-date", HeaderValue::from_static("20110909T233700Z"));
    let dated = RequestDate::of(&headers).unwrap();
    assert_eq!(
        (dated.header, dated.amz_date.as_str()),
        ("x-amz-date", "20110909T233700Z")
    );
}

/// The byte splitters read a header as `str::split` and `str::split_once` do, whatever the text
/// around the separator (empty parts, separators at the ends, non-ASCII text).
#[test]
fn byte_splits_agree_with_str_split() {
    let texts = [
        "",
        ",",
        ",,",
        "a",
        "a,b",
        ",a,",
        "Credential=AKID/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=ab",
        "é,ü=ß,",
        "=",
        "k==v",
    ];
    for text in texts {
        for sep in [',', '=', '/', ';', ' '] {
            let byte = u8::try_from(sep).unwrap();
            let ours: Vec<&str> = super::split_at_byte(text, byte).collect();
            let std: Vec<&str> = text.split(sep).collect();
            assert_eq!(ours, std, "{text:?} at {sep:?}");
            assert_eq!(
                super::split_once_at_byte(text, byte),
                text.split_once(sep),
                "{text:?} at {sep:?}"
            );
        }
    }
}
