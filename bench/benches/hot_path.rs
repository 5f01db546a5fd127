//! Micro-benchmarks of the request hot path: inbound SigV4 verification, outbound signing, routing,
//! operation classification, and aws-chunked verify + re-sign per MiB. Run: `cargo bench --bench hot_path`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, Method};
use http_body_util::BodyExt;

use apgate::chunked::{ChunkKey, Ending, FailureSlot, Inbound, ResignChunks};
use apgate::config::{RouteAccessPoint, RouteBucket, RouteConfig};
use apgate::identity::sigv4::signing_key;
use apgate::identity::SigV4Verifier;
use apgate::routing::pattern::{AccessPointTemplate, BucketPattern};
use apgate::routing::{Router, Scope};
use apgate::s3::addressing::parse_target;
use apgate::s3::{AccessPoint, BucketName, OperationClass, PayloadHash};
use apgate::secret::Secret;

const AKID: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

fn verify(c: &mut Criterion) {
    let v = SigV4Verifier::new(
        [(AKID.to_owned(), Arc::from("alice"), Secret::new(SECRET))],
        vec!["us-east-1".to_owned()],
        Duration::from_secs(900),
    );
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("examplebucket.s3.amazonaws.com"));
    h.insert("range", HeaderValue::from_static("bytes=0-9"));
    h.insert(
        "x-amz-content-sha256",
        HeaderValue::from_static("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    );
    h.insert("x-amz-date", HeaderValue::from_static("20130524T000000Z"));
    h.insert("authorization", HeaderValue::from_static("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"));
    let target = parse_target(
        Some("examplebucket.s3.amazonaws.com"),
        "/test.txt",
        None,
        &["s3.amazonaws.com".to_owned()],
    )
    .unwrap();
    let now = apgate::s3::amzdate::parse("20130524T000500Z").unwrap();
    c.bench_function("inbound_sigv4_verify", |b| {
        b.iter(|| v.verify(black_box(&Method::GET), &target, &h, now).unwrap())
    });
}

fn sign(c: &mut Criterion) {
    let creds = Credentials::new(AKID, SECRET, None, None, "bench");
    let keys = apgate::identity::sigv4::SigningKeyCache::new(16);
    c.bench_function("outbound_sigv4_sign", |b| {
        b.iter(|| {
            let mut parts = http::Request::new(()).into_parts().0;
            parts.method = Method::GET;
            parts.headers.insert(
                "host",
                HeaderValue::from_static("bob-ap-123456789012.s3-accesspoint.us-east-1.amazonaws.com"),
            );
            parts.headers.insert("range", HeaderValue::from_static("bytes=0-1023"));
            apgate::signing::sign_request(
                &mut parts,
                "https://bob-ap-123456789012.s3-accesspoint.us-east-1.amazonaws.com/Bob/report.csv",
                &PayloadHash::Unsigned,
                &creds,
                "us-east-1",
                SystemTime::now(),
                &keys,
            )
            .unwrap()
        })
    });
}

fn route_and_classify(c: &mut Criterion) {
    let routes: Vec<RouteConfig> = (0..100)
        .map(|i| RouteConfig {
            identity: format!("id{}", i % 10),
            bucket: RouteBucket::Name(BucketName::parse(&format!("bucket-{}", i % 7)).unwrap()),
            prefix: format!("team{i}/"),
            operations: OperationClass::ALL.to_vec(),
            access_point: RouteAccessPoint::Fixed(
                AccessPoint::parse(&format!("arn:aws:s3:us-east-1:123456789012:accesspoint/ap-{i}")).unwrap(),
            ),
            allow: Vec::new(),
            kms_key_ids: Vec::new(),
        })
        .collect();
    let router = Router::new(&routes);
    let bucket = BucketName::parse("bucket-3").unwrap();
    c.bench_function("routing_lookup_100_routes", |b| {
        b.iter(|| {
            router
                .route(
                    black_box("id3"),
                    &bucket,
                    Scope::Key("team73/some/key.csv"),
                    OperationClass::Read,
                )
                .unwrap()
        })
    });
    // A platform's table (issue 17): 10,000 named buckets and 100 patterns with templates, all
    // of one identity; a lookup of a named bucket, and of one only the least specific pattern
    // matches (every pattern is tried before it).
    let mut platform: Vec<RouteConfig> = (0..10_000)
        .map(|i| RouteConfig {
            identity: "platform".to_owned(),
            bucket: RouteBucket::Name(BucketName::parse(&format!("bucket-{i}")).unwrap()),
            prefix: String::new(),
            operations: OperationClass::ALL.to_vec(),
            access_point: RouteAccessPoint::Fixed(
                AccessPoint::parse(&format!("arn:aws:s3:us-east-1:123456789012:accesspoint/ap-{i}")).unwrap(),
            ),
            allow: Vec::new(),
            kms_key_ids: Vec::new(),
        })
        .collect();
    platform.extend((0..100).map(|i| RouteConfig {
        identity: "platform".to_owned(),
        bucket: RouteBucket::Pattern(BucketPattern::parse(&format!("team{i:02}-*")).unwrap()),
        prefix: String::new(),
        operations: OperationClass::ALL.to_vec(),
        access_point: RouteAccessPoint::Template(
            AccessPointTemplate::parse("arn:aws:s3:us-east-1:123456789012:accesspoint/{bucket}-rw").unwrap(),
        ),
        allow: Vec::new(),
        kms_key_ids: Vec::new(),
    }));
    platform.push(RouteConfig {
        identity: "platform".to_owned(),
        bucket: RouteBucket::Pattern(BucketPattern::parse("*").unwrap()),
        prefix: String::new(),
        operations: OperationClass::ALL.to_vec(),
        access_point: RouteAccessPoint::Template(
            AccessPointTemplate::parse("arn:aws:s3:us-east-1:123456789012:accesspoint/{bucket}-any").unwrap(),
        ),
        allow: Vec::new(),
        kms_key_ids: Vec::new(),
    });
    let platform = Router::new(&platform);
    for (name, bucket) in [
        ("routing_10k_exact_100_patterns/exact", "bucket-7345"),
        ("routing_10k_exact_100_patterns/pattern", "team57-web"),
        ("routing_10k_exact_100_patterns/last_pattern", "other-web"),
    ] {
        let bucket = BucketName::parse(bucket).unwrap();
        c.bench_function(name, |b| {
            b.iter(|| {
                platform
                    .route(
                        black_box("platform"),
                        &bucket,
                        Scope::Key("some/key.csv"),
                        OperationClass::Read,
                    )
                    .unwrap()
            })
        });
    }
    let headers = HeaderMap::new();
    c.bench_function("parse_and_classify", |b| {
        b.iter(|| {
            let t = parse_target(
                Some("127.0.0.1:8080"),
                black_box("/bucket-3/team73/a%20b%2Bc.csv"),
                Some("partNumber=2&uploadId=abc"),
                &[],
            )
            .unwrap();
            apgate::s3::request::classify(&Method::PUT, &t, &headers).unwrap()
        })
    });
}

fn chunked(c: &mut Criterion) {
    let key = |s: &str| {
        ChunkKey::new(
            signing_key(&Secret::new(s), "20261127", "us-east-1", "s3"),
            "20261127T120000Z",
            "20261127/us-east-1/s3/aws4_request",
        )
    };
    let client = key("client-secret-0123456789");
    let data = vec![7u8; 1 << 20];
    let mut wire = Vec::new();
    let mut prev = "1".repeat(64);
    for piece in data.chunks(64 << 10).chain(std::iter::once(&[][..])) {
        let sig = client.chunk_signature(&prev, piece);
        wire.extend_from_slice(format!("{:x};chunk-signature={sig}\r\n", piece.len()).as_bytes());
        if !piece.is_empty() {
            wire.extend_from_slice(piece);
            wire.extend_from_slice(b"\r\n");
        }
        prev = sig;
    }
    wire.extend_from_slice(b"\r\n");
    let wire = Bytes::from(wire);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut group = c.benchmark_group("aws_chunked");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("verify_and_resign_1MiB_64KiB_chunks", |b| {
        b.iter(|| {
            let failure: FailureSlot = Arc::default();
            let inbound = Inbound {
                key: client.clone(),
                seed: "1".repeat(64),
            };
            let body = ResignChunks::new(
                http_body_util::Full::new(wire.clone()),
                Some(inbound),
                key("apgate-secret-0123456789"),
                "2".repeat(64),
                Ending::Plain,
                data.len() as u64,
                failure,
            );
            rt.block_on(body.collect()).unwrap().to_bytes().len()
        })
    });
    group.finish();
}

criterion_group!(benches, verify, sign, route_and_classify, chunked);
criterion_main!(benches);
