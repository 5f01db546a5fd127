//! Shared by `tests/in_process/proxy.rs`, `tests/in_process/bad_input.rs` and
//! `tests/in_process/ssrf.rs`: a recording fake upstream, a hyper HTTP/1 server on 127.0.0.1:0 that
//! logs each request head at once, then reads the body and notes whether it arrived to its end,
//! then answers. (`tests/support/harness.rs` has the raw TCP upstream that misbehaves on cue.)

#![allow(dead_code, unreachable_pub)] // Not every test module uses every helper.
#![allow(clippy::unwrap_used)] // Test helpers: a failure here is a test failure.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    /// The request body arrived to its end (false until it has).
    pub complete: bool,
}

impl Recorded {
    /// The `Host` header ("" when absent or not visible ASCII).
    pub fn host(&self) -> &str {
        self.headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
    }
}

/// Every request the upstream got, in arrival order.
pub type Log = Arc<Mutex<Vec<Recorded>>>;

/// Starts an upstream that records each request and answers it with `answer(path)`.
pub async fn recording<F, Fut>(answer: F) -> (SocketAddr, Log)
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let seen: Log = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = socket.accept().await else { return };
            let log = log.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    let answer = answer.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let index = {
                            let mut log = log.lock().unwrap();
                            log.push(Recorded {
                                method: req.method().clone(),
                                path_and_query: req
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.as_str().to_owned())
                                    .unwrap_or_default(),
                                headers: req.headers().clone(),
                                complete: false,
                            });
                            log.len() - 1
                        };
                        let complete = req.into_body().collect().await.is_ok();
                        log.lock().unwrap()[index].complete = complete;
                        Ok::<_, std::convert::Infallible>(answer(path).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}
