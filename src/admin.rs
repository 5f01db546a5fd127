//! The admin port: `/metrics` (Prometheus text), `/healthz` (the process is alive) and `/readyz`
//! (configuration loaded and upstream credentials obtained). It is separate from the data plane
//! because metrics should not be reachable by S3 clients.
//!
//! Its clients are a scraper and a health checker, which need a handful of connections, one short
//! GET each; but the port is often bound on every interface, and a sidecar's application can reach
//! it, so whatever connects may be hostile. Every connection is therefore bounded by fixed
//! constants (none is configurable: no legitimate client comes near them): how many are open at
//! once, how long a head may take, how large it may be, and how long a connection may live. The
//! cap is also what keeps the admin port from taking file descriptors the data plane needs.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::AbortHandle;

use crate::body::{self, ResponseBody};
use crate::state::Gateway;

/// Admin connections open at once (a scraper and a health checker or two need a handful), so
/// hostile connections hold at most this many descriptors and buffers. When all are taken, a new
/// connection takes the place of the oldest one that has not sent its head yet (a probe sends its
/// head at once; a connection that holds a place without a word is the likelier attacker), or,
/// when every one has, is closed before a byte is read.
pub const MAX_CONNECTIONS: usize = 64;

/// The most hyper buffers of one admin connection's reads, and so the largest head it takes:
/// admin requests are short GETs. A longer head is answered `431 Request Header Fields Too Large`
/// and the connection closed. 16 KiB: twice hyper's smallest allowed value.
pub const MAX_BUF_BYTES: usize = 16 * 1024;

/// How long a client may take to send its request head, from the moment the connection is
/// accepted; then it is closed without an answer. A scraper or a probe sends its GET at once;
/// this leaves room for a lost packet to be sent again.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(3);

/// How long an admin connection may stay open at all, whatever its client does; it bounds a
/// client that sends its head in time but then does not read the answer (hyper has no write
/// timeout). Prometheus's default scrape timeout is the same 10 s.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

/// How long the accept loop waits after a failed accept (out of descriptors: EMFILE, ENFILE)
/// before trying again; the same pause as the data plane's accept loop (`app::accept_loop`).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves the admin port on `socket` until `stop` changes.
pub(crate) async fn serve(gateway: Arc<Gateway>, socket: TcpListener, mut stop: watch::Receiver<bool>) {
    if let Ok(addr) = socket.local_addr() {
        tracing::info!(%addr, "Admin listening (/metrics, /healthz, /readyz).");
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let open = Arc::new(Mutex::new(Open::default()));
    loop {
        let accepted = tokio::select! {
            a = socket.accept() => a,
            _ = stop.changed() => break,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(error) => {
                // Out of file descriptors and the like: the error repeats at once until one is
                // freed, so trying again straight away would spin a core and flood the log.
                tracing::warn!(%error, "Admin accept failed.");
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    _ = stop.changed() => break,
                }
            }
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                let evicted = lock(&open).evict_silent();
                let slot = match evicted {
                    // Its slot comes back once the aborted task is dropped, at once.
                    Some(abort) => {
                        abort.abort();
                        tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned())
                            .await
                            .ok()
                            .and_then(Result::ok)
                    }
                    None => None,
                };
                let Some(slot) = slot else {
                    // Every place is taken by a connection that sent its head: closed at once,
                    // before any byte is read.
                    tracing::debug!(%remote, "Admin connection refused: over the admin connection cap.");
                    drop(stream);
                    continue;
                };
                slot
            }
        };
        let gateway = gateway.clone();
        let head = Arc::new(AtomicBool::new(false));
        let seen = head.clone();
        // Registered under the lock, so the task cannot end (and deregister) before it is in.
        let mut registry = lock(&open);
        registry.next_id += 1;
        let id = registry.next_id;
        let left = Left { open: open.clone(), id };
        let task = tokio::spawn(async move {
            // The slot goes back, and the connection leaves the registry, when it ends, however
            // it ends (an eviction included).
            let _slot = slot;
            let _left = left;
            let svc = service_fn(move |req| {
                seen.store(true, Ordering::Release);
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(route(&gateway, &req)) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_BUF_BYTES)
                // One request per connection: a kept-alive connection would wait for its next
                // head with a slot held. Prometheus and probes open a new connection per scrape
                // when an answer says `Connection: close`.
                .keep_alive(false);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            // Dropping the connection at the deadline closes it.
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
        });
        registry.conns.push_back(Conn {
            id,
            head,
            abort: task.abort_handle(),
        });
        drop(registry);
    }
}

/// How long a new connection waits for the slot of the connection it evicted.
const EVICTION_WAIT: Duration = Duration::from_millis(100);

/// The admin connections open now, oldest first.
#[derive(Default)]
struct Open {
    conns: VecDeque<Conn>,
    next_id: u64,
}

struct Conn {
    id: u64,
    /// Its request head came in.
    head: Arc<AtomicBool>,
    abort: AbortHandle,
}

impl Open {
    /// Takes the oldest connection that has not sent its head out of the registry, to be ended.
    /// (A probe's connection, the newest, is taken only after all 63 others that are silent: a
    /// flood must open connections faster than hyper reads a probe's head to keep it out.)
    fn evict_silent(&mut self) -> Option<AbortHandle> {
        let i = self.conns.iter().position(|c| !c.head.load(Ordering::Acquire))?;
        self.conns.remove(i).map(|c| c.abort)
    }
}

/// Takes a connection out of the registry when its task ends.
struct Left {
    open: Arc<Mutex<Open>>,
    id: u64,
}

impl Drop for Left {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(i) = open.conns.iter().position(|c| c.id == self.id) {
            open.conns.remove(i);
        }
    }
}

fn lock(open: &Mutex<Open>) -> std::sync::MutexGuard<'_, Open> {
    open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
