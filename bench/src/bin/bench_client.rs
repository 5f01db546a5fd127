//! The client side of `scripts/bench`, signing with aws-sigv4 (not apgate's code) like an SDK would.
//!
//! - `bench_client sign METHOD URL` prints SigV4 headers (`Name: value` lines) for wrk/hey. The same
//!   request can be replayed for the signature's validity (15 minutes of clock skew).
//! - `bench_client stream GET|PUT URL SIZE` moves SIZE bytes over one connection (PUT with
//!   `UNSIGNED-PAYLOAD`, a shared buffer sent zero-copy) and prints `bytes seconds MiB/s`.
//! - `bench_client idle URL N` opens N keep-alive connections, sends one signed GET on each, prints
//!   `ready N`, holds them until stdin closes, then prints `open N` (how many apgate kept open).
//! - `bench_client paced URL RATE SECONDS CONNECTIONS [SIGN_URL]` sends GETs at RATE per second in
//!   all over CONNECTIONS keep-alive connections for SECONDS, each connection on its own schedule,
//!   the schedules evenly staggered (hey's `-q` starts all its workers' tickers together, so its
//!   requests come in bursts of one per connection), and prints `requests N errors E late L rps R
//!   p50_ms A p99_ms B p999_ms C`: latency from each request's send to the end of its response.
//!   `late` counts requests sent more than 2 ms after their scheduled time (the target, or this
//!   client, could not keep up). Headers are signed for SIGN_URL (default URL), as wrk and hey
//!   are given the same signed header set for every target.
//!
//! Keys come from `BENCH_ACCESS_KEY_ID` / `BENCH_SECRET_ACCESS_KEY` (unsigned requests when unset);
//! the region is `us-east-1`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use apgate_bench::Repeat;

const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn signed_headers(method: &str, uri: &Uri, payload: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let host = uri.authority().expect("the URL has a host").as_str().to_owned();
    headers.insert("host", HeaderValue::from_str(&host).unwrap());
    headers.insert("x-amz-content-sha256", HeaderValue::from_str(payload).unwrap());
    let (Ok(akid), Ok(secret)) = (
        std::env::var("BENCH_ACCESS_KEY_ID"),
        std::env::var("BENCH_SECRET_ACCESS_KEY"),
    ) else {
        return headers;
    };
    let identity: Identity = Credentials::new(akid, secret, None, None, "bench").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect();
    let body = if payload == "UNSIGNED-PAYLOAD" {
        SignableBody::UnsignedPayload
    } else {
        SignableBody::Precomputed(payload.to_owned())
    };
    let signable = SignableRequest::new(method, uri.to_string(), pairs.into_iter(), body).unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut out = headers.clone();
    for (name, value) in instructions.headers() {
        out.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    out
}

async fn connect(uri: &Uri) -> TcpStream {
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap_or(80));
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
}

async fn stream(method: &str, url: &str, size: u64) {
    let uri: Uri = url.parse().expect("URL");
    let (mut sender, conn) = http1::handshake(TokioIo::new(connect(&uri).await)).await.unwrap();
    tokio::spawn(conn);
    let path = uri.path_and_query().unwrap().as_str().to_owned();
    let started = Instant::now();
    let moved = if method == "PUT" {
        let headers = signed_headers("PUT", &uri, "UNSIGNED-PAYLOAD");
        let mut req = Request::builder().method(Method::PUT).uri(path);
        *req.headers_mut().unwrap() = headers;
        let body = Repeat {
            buffer: Bytes::from(vec![b'x'; 1 << 20]),
            left: size,
        };
        let req = req.header("content-length", size).body(body).unwrap();
        let resp = sender.send_request(req).await.expect("PUT");
        assert!(resp.status().is_success(), "PUT answered {}", resp.status());
        resp.into_body().collect().await.unwrap();
        size
    } else {
        let headers = signed_headers("GET", &uri, EMPTY_SHA256);
        let mut req = Request::builder().method(Method::GET).uri(path);
        *req.headers_mut().unwrap() = headers;
        let req = req
            .body(Repeat {
                buffer: Bytes::new(),
                left: 0,
            })
            .unwrap();
        let resp = sender.send_request(req).await.expect("GET");
        assert!(resp.status().is_success(), "GET answered {}", resp.status());
        let mut body = resp.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            n += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
        }
        assert_eq!(n, size, "GET body length");
        n
    };
    let secs = started.elapsed().as_secs_f64();
    println!("{moved} {secs:.3} {:.1}", moved as f64 / secs / (1 << 20) as f64);
}

async fn idle(url: &str, n: usize) {
    let uri: Uri = url.parse().expect("URL");
    let headers = Arc::new(signed_headers("GET", &uri, EMPTY_SHA256));
    let path = uri.path_and_query().unwrap().as_str().to_owned();
    let gate = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (uri, headers, path, gate) = (uri.clone(), headers.clone(), path.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.unwrap();
            let (mut sender, conn) = http1::handshake(TokioIo::new(connect(&uri).await)).await.unwrap();
            let conn = tokio::spawn(conn);
            let mut req = Request::builder().method(Method::GET).uri(path);
            *req.headers_mut().unwrap() = (*headers).clone();
            let resp = sender
                .send_request(req.body(Empty::<Bytes>::new()).unwrap())
                .await
                .expect("GET");
            assert!(resp.status().is_success(), "GET answered {}", resp.status());
            resp.into_body().collect().await.unwrap();
            drop(permit);
            (sender, conn)
        }));
    }
    let mut held = Vec::with_capacity(n);
    for t in tasks {
        held.push(t.await.unwrap());
    }
    println!("ready {}", held.len());
    // Plain std stdin on a blocking thread: tokio's io-std feature would give this package a tokio
    // build of its own (apgate's feature set has no io-std), and with it a second build of apgate.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink)
    })
    .await;
    let open = held.iter().filter(|(sender, _)| !sender.is_closed()).count();
    println!("open {open}");
}

async fn paced(url: &str, rate: f64, seconds: f64, connections: usize, sign_for: &str) {
    let uri: Uri = url.parse().expect("URL");
    let mut headers = signed_headers("GET", &sign_for.parse().expect("SIGN_URL"), EMPTY_SHA256);
    headers.insert(
        "host",
        HeaderValue::from_str(uri.authority().expect("the URL has a host").as_str()).unwrap(),
    );
    let headers = Arc::new(headers);
    let path = uri.path_and_query().unwrap().as_str().to_owned();
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(300);
    let end = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::with_capacity(connections);
    for i in 0..connections {
        let (uri, headers, path) = (uri.clone(), headers.clone(), path.clone());
        let mut next = start + interval.mul_f64(i as f64 / connections as f64);
        tasks.push(tokio::spawn(async move {
            let (mut sender, conn) = http1::handshake(TokioIo::new(connect(&uri).await)).await.unwrap();
            tokio::spawn(conn);
            let (mut latencies, mut errors, mut late) = (Vec::new(), 0u64, 0u64);
            while next < end {
                tokio::time::sleep_until(next).await;
                let sent = tokio::time::Instant::now();
                if sent.duration_since(next) > Duration::from_millis(2) {
                    late += 1;
                }
                let mut req = Request::builder().method(Method::GET).uri(path.as_str());
                *req.headers_mut().unwrap() = (*headers).clone();
                let ok = match sender.send_request(req.body(Empty::<Bytes>::new()).unwrap()).await {
                    Ok(resp) if resp.status().is_success() => resp.into_body().collect().await.is_ok(),
                    _ => false,
                };
                if ok {
                    latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
                } else {
                    errors += 1;
                    let (s, conn) = http1::handshake(TokioIo::new(connect(&uri).await)).await.unwrap();
                    tokio::spawn(conn);
                    sender = s;
                }
                // Behind schedule, the next request goes at once.
                next += interval;
            }
            (latencies, errors, late)
        }));
    }
    let (mut all, mut errors, mut late) = (Vec::new(), 0, 0);
    for t in tasks {
        let (l, e, d) = t.await.unwrap();
        all.extend(l);
        errors += e;
        late += d;
    }
    all.sort_unstable();
    let at = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "requests {} errors {errors} late {late} rps {:.0} p50_ms {:.3} p99_ms {:.3} p999_ms {:.3}",
        all.len(),
        all.len() as f64 / seconds,
        f64::from(at(0.5)) / 1000.0,
        f64::from(at(0.99)) / 1000.0,
        f64::from(at(0.999)) / 1000.0,
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bench_client sign METHOD URL | stream GET|PUT URL SIZE | idle URL N \
                 | paced URL RATE SECONDS CONNECTIONS [SIGN_URL]";
    match args.get(1).map(String::as_str) {
        Some("sign") => {
            let uri: Uri = args.get(3).expect(usage).parse().expect("URL");
            let method = args.get(2).expect(usage);
            let payload = if method == "PUT" {
                "UNSIGNED-PAYLOAD"
            } else {
                EMPTY_SHA256
            };
            for (name, value) in &signed_headers(method, &uri, payload) {
                if name != "host" {
                    println!("{name}: {}", value.to_str().unwrap());
                }
            }
        }
        Some("stream") => {
            let size = args.get(4).expect(usage).parse().expect("SIZE");
            stream(args.get(2).expect(usage), args.get(3).expect(usage), size).await;
        }
        Some("paced") => {
            let url = args.get(2).expect(usage);
            let rate = args.get(3).expect(usage).parse().expect("RATE");
            let seconds = args.get(4).expect(usage).parse().expect("SECONDS");
            let connections = args.get(5).expect(usage).parse().expect("CONNECTIONS");
            paced(url, rate, seconds, connections, args.get(6).unwrap_or(url)).await;
        }
        Some("idle") => {
            let n = args.get(3).expect(usage).parse().expect("N");
            idle(args.get(2).expect(usage), n).await;
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(64);
        }
    }
}
