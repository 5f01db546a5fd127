//! A fast stand-in for S3 that does no S3 work, for `scripts/bench`: the proxy's own cost dominates.
//!
//! - `GET /<anything>/<size>` answers `<size>` bytes (a shared buffer, sent zero-copy in 1 MiB frames)
//!   with the headers S3 sends for an object (ETag, Last-Modified, Content-Type, request ids).
//! - `HEAD` answers the same head without a body.
//! - `PUT` reads and discards the body, then answers 200 with an ETag and the byte count it read
//!   in `x-bench-received`.
//!
//! Usage: `bench_upstream 127.0.0.1:PORT` (prints `listening ADDR` once bound).
#![allow(clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use apgate_bench::Repeat;

const FRAME: usize = 1 << 20;

fn object_size(path: &str) -> Option<u64> {
    path.rsplit('/').next()?.parse().ok()
}

fn object_body(buffer: Bytes, size: u64) -> BoxBody<Bytes, Infallible> {
    BoxBody::new(Repeat { buffer, left: size })
}

async fn handle(req: Request<Incoming>, buffer: Bytes) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let object = |status: StatusCode, size: u64| {
        Response::builder()
            .status(status)
            .header("content-type", "application/octet-stream")
            .header("content-length", size)
            .header("etag", "\"0f343b0931126a20f133d67c2b018a3b\"")
            .header("last-modified", "Sat, 28 Nov 2026 00:00:00 GMT")
            .header("accept-ranges", "bytes")
            .header("x-amz-request-id", "0123456789ABCDEF")
            .header("x-amz-id-2", "bench")
            .header("server", "AmazonS3")
    };
    let size = object_size(req.uri().path());
    let resp = match (req.method(), size) {
        (&Method::GET, Some(size)) => object(StatusCode::OK, size).body(object_body(buffer, size)),
        (&Method::HEAD, Some(size)) => object(StatusCode::OK, size).body(BoxBody::new(Empty::new())),
        (&Method::PUT, _) => {
            let mut body = req.into_body();
            let mut received = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => received += frame.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            Response::builder()
                .status(StatusCode::OK)
                .header("etag", "\"0f343b0931126a20f133d67c2b018a3b\"")
                .header("x-bench-received", received)
                .header("x-amz-request-id", "0123456789ABCDEF")
                .header("content-length", 0)
                .body(BoxBody::new(Empty::new()))
        }
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header("content-length", 0)
            .body(BoxBody::new(Empty::new())),
    };
    Ok(resp.unwrap())
}

#[tokio::main]
async fn main() {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned())
        .parse()
        .expect("usage: bench_upstream 127.0.0.1:PORT");
    let listener = TcpListener::bind(addr).await.unwrap();
    println!("listening {}", listener.local_addr().unwrap());
    let buffer = Bytes::from(vec![b'x'; FRAME]);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let buffer = buffer.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, buffer.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
