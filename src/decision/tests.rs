//! The decision, table-driven: what is refused, and what is forwarded (judged by the outbound head
//! the upstream would receive). Issue 15's findings each have a row.

use std::sync::Arc;

use http::HeaderMap;

use super::*;
use crate::config::Config;
use crate::identity::SourceMap;

const CONFIG: &str = r#"
[admin]
address = "127.0.0.1:9090"
[[listeners]]
name = "shared"
address = "127.0.0.1:8080"
identity_methods = ["source"]
[[listeners.sources]]
cidr = "127.0.0.0/8"
identity = "bob"
[upstream]
region = "us-east-1"
[credentials]
type = "default"
[[identities]]
name = "bob"
[[routes]]
identity = "bob"
bucket = "shared"
prefix = "Bob/"
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/bob-ap"
[[routes]]
identity = "bob"
bucket = "shared"
prefix = "lo/"
operations = ["list"]
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/bob-ap"
[[routes]]
identity = "bob"
bucket = "shared"
prefix = "ro/"
operations = ["read"]
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/ro-ap"
[[routes]]
identity = "bob"
bucket = "shared"
prefix = "/"
operations = ["read"]
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/bob-ap"
[[routes]]
identity = "bob"
bucket = "shared"
prefix = "Bob/open/"
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/bob-ap"
allow = ["acl", "bypass-governance-retention", "object-lock"]
kms_key_ids = ["arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab", "alias/bob"]
[[routes]]
identity = "bob"
bucket = "shared"
prefix = "t/"
operations = ["read", "write", "delete"]
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/team-ap"
"#;

const KEY_ARN: &str = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";

struct World {
    config: Config,
    router: Router,
    listener: ListenerIdentity,
    verifier: SigV4Verifier,
}

fn world() -> World {
    let config = Config::from_toml(CONFIG).unwrap();
    let router = Router::new(&config.routes);
    let listener = ListenerIdentity {
        methods: vec![crate::config::IdentityMethod::Source],
        sources: SourceMap::new(vec![("127.0.0.0/8".parse().unwrap(), Arc::from("bob"))]),
        certificates: Default::default(),
    };
    let verifier = SigV4Verifier::new(
        Vec::new(),
        vec!["us-east-1".to_owned()],
        std::time::Duration::from_secs(900),
    );
    World {
        config,
        router,
        listener,
        verifier,
    }
}

/// Decides `METHOD target` with `headers` (Host `h` unless given) and passes the result to `check`.
fn with_decision(method: &str, target: &str, headers: &[(&str, &str)], check: impl FnOnce(&Decision<'_>)) {
    let w = world();
    let policy = Policy {
        domains: &w.config.addressing.virtual_host_domains,
        verifier: &w.verifier,
        router: &w.router,
        listener: &w.listener,
    };
    let mut h = HeaderMap::new();
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        h.insert(header::HOST, HeaderValue::from_static("h"));
    }
    for (k, v) in headers {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let method: Method = method.parse().unwrap();
    let uri: Uri = target.parse().unwrap();
    let head = Head {
        method: &method,
        uri: &uri,
        headers: &h,
        remote: "127.0.0.1".parse().unwrap(),
        client_certificate: None,
    };
    let d = decide(&head, &policy, SystemTime::now());
    check(&d);
}

/// The code of a refusal, or `Forward <path_and_query>`.
fn verdict(method: &str, target: &str, headers: &[(&str, &str)]) -> String {
    let mut out = String::new();
    with_decision(method, target, headers, |d| {
        out = match &d.outcome {
            Err(e) => e.code().as_str().to_owned(),
            Ok(Outcome::Forward(f)) => format!("Forward {}", f.head.path_and_query),
            Ok(Outcome::ListBuckets(_)) => "ListBuckets".to_owned(),
            Ok(Outcome::BucketLocation(_)) => "BucketLocation".to_owned(),
        }
    });
    out
}

#[test]
fn refuses_each_finding_of_issue_15_from_the_head() {
    let cases: &[(&str, &str, &[(&str, &str)], &str)] = &[
        // 2: a list-only route reading bucket configuration through a second sub-resource.
        ("GET", "/shared?list-type=2&prefix=lo/&tagging", &[], "InvalidRequest"),
        ("GET", "/shared?list-type=2&prefix=lo/&acl", &[], "InvalidRequest"),
        ("GET", "/shared?list-type=2&prefix=lo/&cors", &[], "InvalidRequest"),
        (
            "GET",
            "/shared?list-type=2&prefix=lo/&versioning",
            &[],
            "InvalidRequest",
        ),
        ("GET", "/shared?list-type=2&prefix=lo/&policy", &[], "InvalidRequest"),
        ("GET", "/shared?versions&prefix=lo/&policy", &[], "InvalidRequest"),
        ("GET", "/shared?uploads&prefix=lo/&acl", &[], "InvalidRequest"),
        ("GET", "/shared?list-type=2&prefix=lo/&%74agging", &[], "InvalidRequest"),
        // 3: an encoded sub-resource is the sub-resource S3 reads.
        (
            "PUT",
            "/shared/Bob/k?%74agging",
            &[("content-length", "0")],
            "Forward /Bob/k?tagging",
        ),
        (
            "PUT",
            "/shared/ro/k?%74agging",
            &[("content-length", "0")],
            "AccessDenied",
        ),
        // 4: the multi-byte query key that once panicked.
        ("GET", "/shared/Bob/x?abcde%C3%A9=1", &[], "InvalidArgument"),
        // 5: a copy source outside the copies; duplicated parameters; widening headers.
        (
            "GET",
            "/shared/Bob/k",
            &[("x-amz-copy-source", "shared/ro/secret")],
            "InvalidArgument",
        ),
        (
            "PUT",
            "/shared/Bob/k?tagging",
            &[("x-amz-copy-source", "shared/ro/secret"), ("content-length", "0")],
            "InvalidRequest",
        ),
        (
            "GET",
            "/shared?list-type=2&prefix=lo/&prefix=ro/",
            &[],
            "InvalidArgument",
        ),
        (
            "PUT",
            "/shared/Bob/k",
            &[("x-amz-acl", "public-read"), ("content-length", "0")],
            "AccessDenied",
        ),
        (
            "PUT",
            "/shared/Bob/k",
            &[
                (
                    "x-amz-grant-read",
                    "uri=\"http://acs.amazonaws.com/groups/global/AllUsers\"",
                ),
                ("content-length", "0"),
            ],
            "AccessDenied",
        ),
        ("PUT", "/shared/Bob/k?acl", &[("content-length", "0")], "NotImplemented"),
        (
            "PUT",
            "/shared/Bob/open/k?acl",
            &[("content-length", "0")],
            "Forward /Bob/open/k?acl",
        ),
        (
            "DELETE",
            "/shared/Bob/k",
            &[("x-amz-bypass-governance-retention", "true")],
            "AccessDenied",
        ),
        // Object lock needs "object-lock": a lock set on a write, retention, a legal hold.
        (
            "PUT",
            "/shared/Bob/k",
            &[
                ("x-amz-object-lock-mode", "COMPLIANCE"),
                ("x-amz-object-lock-retain-until-date", "2126-01-01T00:00:00Z"),
                ("content-length", "0"),
            ],
            "AccessDenied",
        ),
        (
            "PUT",
            "/shared/Bob/k",
            &[("x-amz-object-lock-legal-hold", "ON"), ("content-length", "0")],
            "AccessDenied",
        ),
        (
            "PUT",
            "/shared/Bob/k?retention",
            &[("content-length", "0")],
            "AccessDenied",
        ),
        (
            "PUT",
            "/shared/Bob/k?legal-hold",
            &[("content-length", "0")],
            "AccessDenied",
        ),
        (
            "PUT",
            "/shared/Bob/open/k",
            &[("x-amz-object-lock-legal-hold", "ON"), ("content-length", "0")],
            "Forward /Bob/open/k",
        ),
        (
            "PUT",
            "/shared/Bob/open/k?retention",
            &[("content-length", "0")],
            "Forward /Bob/open/k?retention",
        ),
        // A KMS key named for encryption must be one the route lists, as it lists it.
        (
            "PUT",
            "/shared/Bob/k",
            &[
                ("x-amz-server-side-encryption", "aws:kms"),
                ("x-amz-server-side-encryption-aws-kms-key-id", KEY_ARN),
                ("content-length", "0"),
            ],
            "AccessDenied",
        ),
        (
            "PUT",
            "/shared/Bob/k",
            &[("x-amz-server-side-encryption", "aws:kms"), ("content-length", "0")],
            "Forward /Bob/k",
        ),
        (
            "PUT",
            "/shared/Bob/open/k",
            &[
                ("x-amz-server-side-encryption", "aws:kms"),
                ("x-amz-server-side-encryption-aws-kms-key-id", KEY_ARN),
                ("content-length", "0"),
            ],
            "Forward /Bob/open/k",
        ),
        (
            "PUT",
            "/shared/Bob/open/k",
            &[
                ("x-amz-server-side-encryption", "aws:kms:dsse"),
                ("x-amz-server-side-encryption-aws-kms-key-id", "alias/bob"),
                ("content-length", "0"),
            ],
            "Forward /Bob/open/k",
        ),
        (
            "PUT",
            "/shared/Bob/open/k",
            &[
                ("x-amz-server-side-encryption", "aws:kms"),
                (
                    "x-amz-server-side-encryption-aws-kms-key-id",
                    "1234abcd-12ab-34cd-56ef-1234567890ab",
                ),
                ("content-length", "0"),
            ],
            "AccessDenied",
        ),
        (
            "PUT",
            "/shared/Bob/open/k",
            &[
                ("x-amz-server-side-encryption", "aws:kms"),
                ("x-amz-server-side-encryption-aws-kms-key-id", "alias/Bob"),
                ("content-length", "0"),
            ],
            "AccessDenied",
        ),
        (
            "PUT",
            "/shared/Bob/open/k",
            &[
                ("x-amz-server-side-encryption", "aws:kms"),
                ("x-amz-server-side-encryption-aws-kms-key-id", "alias/bob"),
                ("x-amz-server-side-encryption-aws-kms-key-id", "alias/other"),
                ("content-length", "0"),
            ],
            "InvalidArgument",
        ),
        (
            "POST",
            "/shared/Bob/k?uploads",
            &[
                ("x-amz-server-side-encryption", "aws:kms"),
                ("x-amz-server-side-encryption-aws-kms-key-id", "alias/bob"),
            ],
            "AccessDenied",
        ),
        (
            "POST",
            "/shared/Bob/open/k?uploads",
            &[
                ("x-amz-server-side-encryption", "aws:kms"),
                ("x-amz-server-side-encryption-aws-kms-key-id", "alias/bob"),
            ],
            "Forward /Bob/open/k?uploads",
        ),
        (
            "PUT",
            "/shared/Bob/k",
            &[
                ("x-amz-copy-source", "shared/Bob/open/src"),
                ("x-amz-server-side-encryption", "aws:kms"),
                ("x-amz-server-side-encryption-aws-kms-key-id", "alias/bob"),
                ("content-length", "0"),
            ],
            "AccessDenied",
        ),
        // 6: the fidelity rules of the head.
        (
            "GET",
            "/shared/Bob/k",
            &[("host", "a"), ("host", "b")],
            "InvalidRequest",
        ),
        (
            "PUT",
            "/shared/Bob/k",
            &[("content-length", "6442450944")],
            "EntityTooLarge",
        ),
        (
            "PUT",
            "/shared/Bob/k?partNumber=1&uploadId=u",
            &[("content-length", "5368709121")],
            "EntityTooLarge",
        ),
        ("PUT", "/shared/Bob/k", &[], "MissingContentLength"),
        (
            "PUT",
            "/shared/Bob/k",
            &[("transfer-encoding", "chunked")],
            "MissingContentLength",
        ),
        ("GET", "/shared", &[], "AccessDenied"), // a listing outside every prefix
        ("GET", "/shared?acl", &[], "NotImplemented"),
        ("GET", "/shared?cors", &[], "NotImplemented"),
        ("GET", "/shared?policy", &[], "NotImplemented"),
        ("GET", "/shared?notification", &[], "NotImplemented"),
        ("PUT", "/shared?policy", &[("content-length", "0")], "NotImplemented"),
        ("DELETE", "/shared", &[], "NotImplemented"),
        ("PATCH", "/shared/Bob/k", &[], "MethodNotAllowed"),
        // Headers that would be quietly dropped, or would name the account.
        (
            "GET",
            "/shared/Bob/k",
            &[("range", "bytes=0-7"), ("connection", "range")],
            "InvalidRequest",
        ),
        (
            "GET",
            "/shared/Bob/k",
            &[("x-amz-expected-bucket-owner", "123456789012")],
            "InvalidArgument",
        ),
        ("GET", "/shared/Bob/k", &[("content-length", "5")], "InvalidRequest"),
        ("GET", "/shared/Bob/k?Signature=x", &[], "InvalidArgument"),
        ("GET", "/shared/Bob/k?x-id=PutObject", &[], "InvalidArgument"),
    ];
    for (method, target, headers, want) in cases {
        assert_eq!(verdict(method, target, headers), *want, "{method} {target} {headers:?}");
    }
}

#[test]
fn a_missing_host_is_refused() {
    with_decision("GET", "/shared/Bob/k", &[], |_| {});
    let w = world();
    let policy = Policy {
        domains: &w.config.addressing.virtual_host_domains,
        verifier: &w.verifier,
        router: &w.router,
        listener: &w.listener,
    };
    let (method, uri, headers) = (Method::GET, "/shared/Bob/k".parse::<Uri>().unwrap(), HeaderMap::new());
    let head = Head {
        method: &method,
        uri: &uri,
        headers: &headers,
        remote: "127.0.0.1".parse().unwrap(),
        client_certificate: None,
    };
    let d = decide(&head, &policy, SystemTime::now());
    assert_eq!(d.outcome.err().map(|e| e.code()), Some(S3ErrorCode::InvalidRequest));
}

#[test]
fn forwards_only_what_was_decided() {
    let cases: &[(&str, &str, &[(&str, &str)], &str, &[&str])] = &[
        // (method, target, headers, outbound path and query, outbound header names)
        (
            "GET",
            "/shared/Bob/a%20b?x-id=GetObject&response-content-type=text%2Fplain",
            &[
                ("range", "bytes=0-7"),
                ("user-agent", "curl"),
                ("x-forwarded-for", "10.0.0.1"),
                ("accept", "*/*"),
                ("x-amz-checksum-mode", "ENABLED"),
            ],
            "/Bob/a%20b?response-content-type=text%2Fplain",
            &["range", "x-amz-checksum-mode"],
        ),
        (
            "GET",
            "/shared?list-type=2&prefix=lo%2F&delimiter=%2F&encoding-type=url",
            &[],
            "/?list-type=2&prefix=lo%2F&delimiter=%2F&encoding-type=url",
            &[],
        ),
        (
            "PUT",
            "/shared/Bob/k",
            &[
                ("content-length", "5"),
                ("content-type", "text/plain"),
                ("x-amz-meta-a", "b"),
                ("x-amz-acl", "private"),
                ("content-md5", "XUFAKrxLKna5cZ2REBfFkg=="),
                ("expect", "100-continue"),
                ("cookie", "x=1"),
            ],
            "/Bob/k",
            &[
                "content-length",
                "content-md5",
                "content-type",
                "x-amz-acl",
                "x-amz-meta-a",
            ],
        ),
        (
            "PUT",
            "/shared/Bob/open/k",
            &[("content-length", "0"), ("x-amz-acl", "public-read")],
            "/Bob/open/k",
            &["content-length", "x-amz-acl"],
        ),
        (
            "PUT",
            "/shared/Bob/copy",
            &[("content-length", "0"), ("x-amz-copy-source", "shared/ro/src%20x")],
            "/Bob/copy",
            &["content-length", "x-amz-copy-source"],
        ),
        (
            "PUT",
            "/shared/Bob/k?partNumber=2&uploadId=u%2F1",
            &[
                ("content-encoding", "aws-chunked"),
                ("transfer-encoding", "chunked"),
                ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
                ("x-amz-decoded-content-length", "5"),
                ("x-amz-trailer", "x-amz-checksum-crc32"),
                ("x-amz-sdk-checksum-algorithm", "CRC32"),
            ],
            "/Bob/k?partNumber=2&uploadId=u%2F1",
            &[
                "content-encoding",
                "x-amz-decoded-content-length",
                "x-amz-sdk-checksum-algorithm",
                "x-amz-trailer",
            ],
        ),
        ("GET", "/shared//lead//x", &[], "/%2Flead//x", &[]),
        (
            "DELETE",
            "/shared/Bob//lead",
            &[("x-amz-bypass-governance-retention", "false")],
            "/Bob//lead",
            &["x-amz-bypass-governance-retention"],
        ),
    ];
    for (method, target, headers, want_pq, want_headers) in cases {
        with_decision(method, target, headers, |d| {
            let Ok(Outcome::Forward(f)) = &d.outcome else {
                panic!("{method} {target}: {:?}", d.outcome.as_ref().err());
            };
            assert_eq!(f.head.path_and_query, *want_pq, "{method} {target}");
            let mut names: Vec<&str> = f.head.headers.keys().map(HeaderName::as_str).collect();
            names.sort_unstable();
            assert_eq!(names, *want_headers, "{method} {target}");
        });
    }
    with_decision(
        "PUT",
        "/shared/Bob/copy",
        &[("content-length", "0"), ("x-amz-copy-source", "shared/ro/src%20x")],
        |d| {
            let Ok(Outcome::Forward(f)) = &d.outcome else { panic!() };
            assert_eq!(
                f.head.headers["x-amz-copy-source"],
                "arn%3Aaws%3As3%3Aus-east-1%3A123456789012%3Aaccesspoint/ro-ap/object/ro/src%20x"
            );
            assert_eq!(f.copy_source.as_ref().map(|r| r.prefix.as_str()), Some("ro/"));
        },
    );
}

/// Issue 15, finding 1: a DeleteObjects body is checked as the payload it carries, never as its
/// framing; what is forwarded is what was checked.
#[test]
fn delete_objects_bodies_are_checked_decoded_key_by_key() {
    fn inspect(headers: &[(&str, &str)], wire: &[u8]) -> Result<Vec<String>, String> {
        let mut out = Err(String::new());
        with_decision("POST", "/shared?delete", headers, |d| {
            let Ok(Outcome::Forward(f)) = &d.outcome else {
                out = Err(format!("head refused: {:?}", d.outcome.as_ref().err()));
                return;
            };
            let announced = headers.iter().find(|(n, _)| *n == "x-amz-trailer").map(|(_, v)| *v);
            out = inspect_body(
                f,
                Operation::DeleteObjects,
                &world().router,
                d.caller.as_ref().unwrap(),
                announced,
                wire,
            )
            .map(|i| i.keys)
            .map_err(|e| e.code().as_str().to_owned());
        });
        out
    }
    let xml = "<Delete><Object><Key>Bob/a</Key></Object><!-- x --><Object><Key>ro/b</Key></Object></Delete>";
    let plain = [("content-length", xml.len().to_string())];
    let plain: Vec<(&str, &str)> = plain.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(inspect(&plain, xml.as_bytes()), Err("AccessDenied".to_owned()));
    // The attack: a chunk boundary inside `-->` (aws-chunked, unsigned trailer). Decoded first, the
    // comment closes and `ro/b` is seen and refused.
    let split = xml.find("-->").unwrap() + 1;
    let (a, b) = xml.as_bytes().split_at(split);
    let mut wire = Vec::new();
    for part in [a, b] {
        wire.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        wire.extend_from_slice(part);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n");
    let len = xml.len().to_string();
    let chunked = [
        ("transfer-encoding", "chunked"),
        ("content-encoding", "aws-chunked"),
        ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
        ("x-amz-decoded-content-length", len.as_str()),
        ("x-amz-trailer", "x-amz-checksum-crc32"),
    ];
    assert_eq!(inspect(&chunked, &wire), Err("AccessDenied".to_owned()));
    let ok = "<Delete><Object><Key>Bob/a</Key></Object><Object><Key>Bob/b</Key></Object></Delete>";
    let len = ok.len().to_string();
    let ok_headers = [("content-length", len.as_str())];
    assert_eq!(
        inspect(&ok_headers, ok.as_bytes()),
        Ok(vec!["Bob/a".to_owned(), "Bob/b".to_owned()])
    );
    // A DTD is refused whatever it declares.
    let dtd = "<!DOCTYPE d [<!ENTITY e \"ro/b\">]><Delete><Object><Key>&e;</Key></Object></Delete>";
    let len = dtd.len().to_string();
    assert_eq!(
        inspect(&[("content-length", len.as_str())], dtd.as_bytes()),
        Err("MalformedXML".to_owned())
    );
}

/// Red-team pass 3, F1: DeleteObjects is routed for its bucket (any route that may delete, here
/// `Bob/open/`, which allows a governance bypass); its keys are in its body. Each key's own route
/// must allow what the request asks for, and the request goes through the access point of its
/// keys, not the one found for the bucket.
#[test]
fn delete_objects_are_judged_by_the_route_of_each_key() {
    let bypass = [("x-amz-bypass-governance-retention", "true")];
    let no_bypass = [("x-amz-bypass-governance-retention", "false")];
    #[allow(clippy::type_complexity)]
    let rows: &[(&[(&str, &str)], &[&str], Result<&str, &str>)] = &[
        // The bypass is allowed under Bob/open/ only: one key elsewhere refuses the request.
        (&bypass, &["Bob/open/a"], Ok("bob-ap")),
        (&bypass, &["Bob/locked"], Err("AccessDenied")),
        (&bypass, &["Bob/open/a", "Bob/locked"], Err("AccessDenied")),
        (&bypass, &["Bob/locked", "Bob/open/a"], Err("AccessDenied")),
        (&no_bypass, &["Bob/open/a", "Bob/locked"], Ok("bob-ap")),
        (&[], &["Bob/locked"], Ok("bob-ap")),
        // Keys of another access point's route go through that access point…
        (&[], &["t/x", "t/y"], Ok("team-ap")),
        (&bypass, &["t/x"], Err("AccessDenied")),
        // …but one request never mixes access points, nor reaches a key no route deletes.
        (&[], &["t/x", "Bob/a"], Err("AccessDenied")),
        (&[], &["ro/x"], Err("AccessDenied")),
    ];
    for (headers, keys, want) in rows {
        let xml: String = keys
            .iter()
            .map(|k| format!("<Object><Key>{k}</Key></Object>"))
            .collect();
        let xml = format!("<Delete>{xml}</Delete>");
        let len = xml.len().to_string();
        let mut all = headers.to_vec();
        all.push(("content-length", len.as_str()));
        with_decision("POST", "/shared?delete", &all, |d| {
            let Ok(Outcome::Forward(f)) = &d.outcome else {
                panic!("{keys:?}: head refused: {:?}", d.outcome.as_ref().err())
            };
            let got = inspect_body(
                f,
                Operation::DeleteObjects,
                &world().router,
                d.caller.as_ref().unwrap(),
                None,
                xml.as_bytes(),
            );
            let got = got
                .as_ref()
                .map(|i| i.route.as_ref().unwrap().access_point.name())
                .map_err(|e| e.code().as_str());
            assert_eq!(got, *want, "{headers:?} {keys:?}");
            if let Ok(i) = inspect_body(
                f,
                Operation::DeleteObjects,
                &world().router,
                d.caller.as_ref().unwrap(),
                None,
                xml.as_bytes(),
            ) {
                assert_eq!(i.keys, *keys);
            }
        });
    }
}

/// Red-team pass 3: a plain body (framed by x-amz-content-sha256) never goes upstream saying
/// aws-chunked in its Content-Encoding, which an upstream reading framing from that header would
/// read as chunks and a trailer apgate never checked.
#[test]
fn a_plain_body_never_goes_as_aws_chunked() {
    let plain = [("content-length", "5"), ("x-amz-content-sha256", "UNSIGNED-PAYLOAD")];
    let rows: &[(&[(&str, &str)], &str)] = &[
        (&[("content-encoding", "aws-chunked")], "InvalidArgument"),
        (&[("content-encoding", "AWS-Chunked")], "InvalidArgument"),
        (&[("content-encoding", "gzip, aws-chunked")], "InvalidArgument"),
        (&[("content-encoding", "aws-chunked,gzip")], "InvalidArgument"),
        (
            &[("content-encoding", "gzip"), ("content-encoding", " aws-chunked ")],
            "InvalidArgument",
        ),
        // Other spellings an upstream might still read as the token (review of 2026-12-03).
        (&[("content-encoding", "\"aws-chunked\"")], "InvalidArgument"),
        (&[("content-encoding", "aws-chunked;q=1")], "InvalidArgument"),
        (&[("content-encoding", "aws-chunked/1")], "InvalidArgument"),
        (&[("content-encoding", "x-aws-chunked")], "InvalidArgument"),
        (&[("content-encoding", "gzip")], "Forward /Bob/k"),
        (&[("content-encoding", "aws-chunk")], "Forward /Bob/k"),
    ];
    for (extra, want) in rows {
        let mut headers = plain.to_vec();
        headers.extend_from_slice(extra);
        assert_eq!(verdict("PUT", "/shared/Bob/k", &headers), *want, "{extra:?}");
    }
    // The framed bodies it belongs to go through.
    let framed = [
        ("content-length", "40"),
        ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
        ("content-encoding", "aws-chunked"),
        ("x-amz-decoded-content-length", "5"),
        ("x-amz-trailer", "x-amz-checksum-crc32"),
    ];
    assert_eq!(verdict("PUT", "/shared/Bob/k", &framed), "Forward /Bob/k");
}

/// Issue 16: a forwarded value with a tab has its white space runs made one space, so botocore's
/// and aws-sigv4's canonicalizations of apgate's outbound request agree; others go as they came.
#[test]
fn forwarded_values_read_alike_under_every_trimming_rule() {
    for (given, want) in [
        ("a\tb", "a b"),
        (" a \t\t b  c\t", "a b c"),
        ("a  b", "a  b"),
        (" lead and trail ", " lead and trail "),
        ("plain", "plain"),
    ] {
        let v = canonical_value(&HeaderValue::from_str(given).unwrap());
        assert_eq!(v.to_str().unwrap(), want, "{given:?}");
        let mut h = HeaderMap::new();
        h.insert("x-amz-meta-a", v);
        let creq =
            |trim| crate::sigv4::canonical_request_with_query("PUT", "/k", "", &h, &["x-amz-meta-a"], b"-", trim);
        assert_eq!(
            creq(crate::sigv4::Trim::Whitespace),
            creq(crate::sigv4::Trim::Spaces),
            "{given:?}"
        );
    }
}

/// Red-team finding F1: an unsigned-trailer body (botocore's default PUT) is read as it streams,
/// its trailer held to the checksum `x-amz-trailer` announced; never streamed unread. Bodies apgate
/// reads whole still are; other bodies still stream.
#[test]
fn plans_each_body_by_its_framing() {
    let crc32 = Some(chunked::TrailerChecksum {
        header: "x-amz-checksum-crc32",
        value_len: 8,
    });
    let unsigned: &[(&str, &str)] = &[
        ("content-encoding", "aws-chunked"),
        ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
        ("x-amz-decoded-content-length", "5"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        unsigned.iter().copied().chain(extra.iter().copied()).collect()
    };
    let cases: Vec<(&str, &str, Vec<(&str, &str)>, BodyPlan, Option<&str>)> = vec![
        (
            "PUT",
            "/shared/Bob/k",
            with(&[
                ("transfer-encoding", "chunked"),
                ("x-amz-trailer", "x-amz-checksum-crc32"),
            ]),
            BodyPlan::UnsignedChunks {
                checksum: crc32,
                decoded_length: 5,
            },
            None,
        ),
        (
            "PUT",
            "/shared/Bob/k?partNumber=2&uploadId=u",
            with(&[("content-length", "46"), ("x-amz-trailer", "x-amz-checksum-crc32")]),
            BodyPlan::UnsignedChunks {
                checksum: crc32,
                decoded_length: 5,
            },
            Some("46"),
        ),
        // Nothing announced: the trailer must be empty.
        (
            "PUT",
            "/shared/Bob/k",
            with(&[("content-length", "15")]),
            BodyPlan::UnsignedChunks {
                checksum: None,
                decoded_length: 5,
            },
            Some("15"),
        ),
        (
            "PUT",
            "/shared/Bob/k",
            vec![("content-length", "5"), ("x-amz-content-sha256", "UNSIGNED-PAYLOAD")],
            BodyPlan::Stream,
            Some("5"),
        ),
        (
            "POST",
            "/shared?delete",
            with(&[
                ("transfer-encoding", "chunked"),
                ("x-amz-trailer", "x-amz-checksum-crc32"),
            ]),
            BodyPlan::Inspect {
                framing: Framing::UnsignedChunks { trailer: true },
                length: 5,
            },
            None,
        ),
    ];
    for (method, target, headers, want, length) in cases {
        with_decision(method, target, &headers, |d| {
            let Ok(Outcome::Forward(f)) = &d.outcome else {
                panic!("{method} {target}: {:?}", d.outcome.as_ref().err());
            };
            assert_eq!(f.body, want, "{method} {target}");
            let sent = f.head.headers.get(header::CONTENT_LENGTH).map(|v| v.to_str().unwrap());
            assert_eq!(sent, length, "{method} {target}: the bytes go as they came");
        });
    }
}
