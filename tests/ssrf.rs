//! No SSRF (issue 8, item 4), as a property: whatever an authenticated caller sends — Host headers,
//! absolute-form targets, virtual-hosted names, copy sources, keys that look like URLs — apgate only
//! ever connects to the configured upstream, and only for a configured access point.
//!
//! Generated hostile requests (seeded, so a failure replays) go to an in-process apgate whose
//! callers are authenticated by source address (so every request reaches routing). A decoy listener
//! stands for "anywhere else": every hostile input names it in some way, and it must never see a
//! connection. The recording upstream must only ever see access point hosts of the configuration.

#![allow(clippy::unwrap_used)] // Test helpers: a failure here is a test failure.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use apgate::app::{serve, Bound};
use apgate::config::Config;

const BOB_AP_HOST: &str = "bob-ap-123456789012.s3-accesspoint.us-east-1.amazonaws.com";
const ALICE_AP_HOST: &str = "alice-ap-123456789012.s3-accesspoint.eu-west-1.amazonaws.com";

/// Records the Host of every request it gets and answers 200.
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let hosts: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = hosts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = socket.accept().await else { return };
            let log = log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let host = req
                            .headers()
                            .get("host")
                            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
                        log.lock().unwrap().push(host.unwrap_or_default());
                        let _ = req.into_body().collect().await;
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, hosts)
}

/// "Anywhere else": counts connections and never answers.
async fn decoy() -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = socket.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (addr, count)
}

async fn gateway(upstream: SocketAddr) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let toml = format!(
        r#"
[admin]
address = "127.0.0.1:0"

[[listeners]]
name = "src"
address = "127.0.0.1:0"
identity_methods = ["source"]

[[listeners.sources]]
cidr = "127.0.0.0/8"
identity = "bob"

[addressing]
virtual_host_domains = ["s3.localhost"]

[upstream]
region = "us-east-1"
endpoint = {{ mode = "custom", url = "http://{upstream}" }}
response_header_timeout_seconds = 5

[credentials]
type = "static"
access_key_id = {{ insecure_inline = "AKIDUPSTREAM00000001" }}
secret_access_key = {{ insecure_inline = "upstream-secret-key-0123456789abcdef" }}

[[identities]]
name = "bob"

[[routes]]
identity = "bob"
bucket = "shared"
prefix = "Bob/"
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/bob-ap"

[[routes]]
identity = "bob"
bucket = "reports"
access_point = "arn:aws:s3:eu-west-1:123456789012:accesspoint/alice-ap"
"#
    );
    let config = Config::from_toml(&toml).unwrap();
    let bound = Bound::bind(&config).await.unwrap();
    let addr = bound.data[0].1.local_addr().unwrap();
    let state = apgate::app::Gateway::new(config).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(state, bound, async move {
        let _ = rx.await;
    }));
    (addr, tx)
}

/// One generated request: method, request target, Host, optional copy source.
fn hostile(rng: &mut StdRng, decoy: SocketAddr) -> (String, String, String, Option<String>) {
    let d = decoy.to_string();
    let hosts = [
        d.clone(),
        format!("localhost:{}", decoy.port()),
        format!("[::1]:{}", decoy.port()),
        format!("user@{d}"),
        format!("{d}.s3.localhost"),
        "shared.s3.localhost".to_owned(),
        "reports.s3.localhost".to_owned(),
        "169.254.169.254".to_owned(),
        "metadata.google.internal".to_owned(),
        BOB_AP_HOST.to_owned(),
        "evil-ap-999999999999.s3-accesspoint.us-east-1.amazonaws.com".to_owned(),
        "s3.amazonaws.com".to_owned(),
        format!("shared.s3.localhost:{}", decoy.port()),
    ];
    let keys = [
        "Bob/x".to_owned(),
        "Bob/../../etc/passwd".to_owned(),
        "Bob/%2e%2e/%2e%2e/x".to_owned(),
        format!("Bob/http://{d}/x"),
        format!("Bob/@{d}"),
        "Bob/%00".to_owned(),
        "Bob/a\\b".to_owned(),
        format!("Bob//{d}/x"),
        "x".to_owned(),
        String::new(),
    ];
    let buckets = ["shared", "reports", "other", "169.254.169.254", &d];
    let key = &keys[rng.gen_range(0..keys.len())];
    let bucket = buckets[rng.gen_range(0..buckets.len())];
    let path = format!("/{bucket}/{key}").replace('\\', "%5C");
    let target = match rng.gen_range(0..5) {
        0 => format!("http://{d}{path}"),
        1 => format!("http://{d}/{key}"),
        2 => format!("/{key}"),
        3 => format!("{path}?uploads&x-id=http://{d}/"),
        _ => path,
    };
    let copy_sources = [
        "/shared/Bob/src".to_owned(),
        format!("http://{d}/shared/Bob/src"),
        format!("//{d}/shared/Bob/src"),
        "/reports/r".to_owned(),
        "/other/x".to_owned(),
        "arn:aws:s3:us-east-1:999999999999:accesspoint/evil/object/Bob/x".to_owned(),
        format!("{d}/shared/Bob/x"),
    ];
    let copy = rng
        .gen_bool(0.3)
        .then(|| copy_sources[rng.gen_range(0..copy_sources.len())].clone());
    let method = if copy.is_some() {
        "PUT"
    } else {
        ["GET", "HEAD", "PUT", "DELETE", "POST"][rng.gen_range(0..5)]
    };
    (
        method.to_owned(),
        target,
        hosts[rng.gen_range(0..hosts.len())].clone(),
        copy,
    )
}

async fn send(addr: SocketAddr, method: &str, target: &str, host: &str, copy: Option<&str>) {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(c) = copy {
        head.push_str(&format!("x-amz-copy-source: {c}\r\n"));
    }
    if method == "PUT" || method == "POST" {
        head.push_str("Content-Length: 2\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\n\r\nhi");
    } else {
        head.push_str("\r\n");
    }
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "apgate did not answer {method} {target} (Host {host})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_never_make_apgate_connect_anywhere_but_the_configured_upstream() {
    let (upstream, hosts) = recording_upstream().await;
    let (decoy, decoy_connections) = decoy().await;
    let (addr, _stop) = gateway(upstream).await;
    let mut rng = StdRng::seed_from_u64(0x055f_000d);
    let cases = 600;
    for _ in 0..cases {
        let (method, target, host, copy) = hostile(&mut rng, decoy);
        send(addr, &method, &target, &host, copy.as_deref()).await;
        assert_eq!(
            decoy_connections.load(Ordering::SeqCst),
            0,
            "apgate connected to the decoy after {method} {target} (Host {host}, copy source {copy:?})"
        );
    }
    let hosts = hosts.lock().unwrap().clone();
    let allowed = [BOB_AP_HOST, ALICE_AP_HOST];
    let foreign: Vec<&String> = hosts.iter().filter(|h| !allowed.contains(&h.as_str())).collect();
    assert!(
        foreign.is_empty(),
        "the upstream was asked for other hosts: {foreign:?}"
    );
    // Not vacuous: many requests were forwarded (to both access points) and many refused.
    let to_bob = hosts.iter().filter(|h| *h == BOB_AP_HOST).count();
    let to_alice = hosts.iter().filter(|h| *h == ALICE_AP_HOST).count();
    assert!(
        to_bob >= 20 && to_alice >= 20,
        "bob-ap {to_bob}, alice-ap {to_alice} of {cases}"
    );
    assert!(hosts.len() < cases, "some hostile requests must have been refused");
    println!(
        "{cases} hostile requests: {} forwarded (bob-ap {to_bob}, alice-ap {to_alice}), {} refused, 0 connections elsewhere",
        hosts.len(),
        cases - hosts.len()
    );
}
