//! No SSRF (issue 8, item 4), as a property: whatever an authenticated caller sends — Host headers,
//! absolute-form targets, virtual-hosted names, copy sources, keys that look like URLs — apgate only
//! ever connects to the configured upstream, and only for a configured access point.
//!
//! Generated hostile requests (seeded, so a failure replays) go to an in-process apgate whose
//! callers are authenticated by source address (so every request reaches routing). A decoy listener
//! stands for "anywhere else": every hostile input names it in some way, and it must never see a
//! connection. The recording upstream must only ever see access point hosts of the configuration.

#![allow(clippy::unwrap_used)] // Test helpers: a failure here is a test failure.
use crate::gateway;
use crate::upstream;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use gateway::{config_toml, source_listener, Conf, Gw, AP_HOST as BOB_AP_HOST};
use upstream::Log;

const ALICE_AP_HOST: &str = "alice-ap-123456789012.s3-accesspoint.eu-west-1.amazonaws.com";

/// Records every request (the Host of each is what counts here) and answers 200.
async fn recording_upstream() -> (SocketAddr, Log) {
    upstream::recording(|_| async { Response::new(Full::new(Bytes::from_static(b"ok"))) }).await
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

/// apgate with one `source` listener (every local caller is bob), virtual-hosted names under
/// `s3.localhost`, and a second route for bob: `reports` through alice-ap (eu-west-1).
async fn gateway(upstream: SocketAddr) -> Gw {
    let listeners = source_listener("src");
    let conf = Conf {
        listeners: &listeners,
        tables: r#"
[addressing]
virtual_host_domains = ["s3.localhost"]
"#,
        upstream: "response_header_timeout_seconds = 5",
        routes: r#"
[[routes]]
identity = "bob"
bucket = "reports"
access_point = "arn:aws:s3:eu-west-1:123456789012:accesspoint/alice-ap"
"#,
        ..Conf::default()
    };
    Gw::start(config_toml(&format!("http://{upstream}"), conf)).await
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
    let gw = gateway(upstream).await;
    let addr = gw.addr;
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
    // The Host of every request the upstream got.
    let hosts: Vec<String> = hosts
        .lock()
        .unwrap()
        .iter()
        .map(|r| {
            r.headers
                .get("host")
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                .unwrap_or_default()
        })
        .collect();
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
