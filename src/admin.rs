//! The admin port: `/metrics` (Prometheus text), `/healthz` (the process is alive) and `/readyz`
//! (configuration loaded and upstream credentials obtained). It is separate from the data plane
//! because metrics should not be reachable by S3 clients.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{self, ResponseBody};
use crate::state::Gateway;

pub(crate) async fn serve(gateway: Arc<Gateway>, socket: TcpListener, mut stop: watch::Receiver<bool>) {
    if let Ok(addr) = socket.local_addr() {
        tracing::info!(%addr, "Admin listening (/metrics, /healthz, /readyz).");
    }
    loop {
        let (stream, _) = tokio::select! {
            a = socket.accept() => match a { Ok(a) => a, Err(_) => continue },
            _ = stop.changed() => break,
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(route(&gateway, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn route(gateway: &Gateway, req: &Request<Incoming>) -> Response<ResponseBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = text(StatusCode::OK, gateway.metrics.render());
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(prometheus::TEXT_FORMAT));
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if gateway.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: draining, or some principal has no valid credentials (see apgate_credentials_expiry_seconds and the log)\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n"),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut r = Response::new(body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
