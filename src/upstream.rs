//! The one pooled upstream client: hyper-util over hyper-rustls, with connect and response-head
//! timeouts. Bodies stream in both directions.
//!
//! **The response-head timeout never cuts a progressing upload.** While a request body is going
//! out, the clock only runs while the upstream takes none of it; once the body is sent, the
//! upstream has `response_header_timeout` to answer. A 5 GiB PUT over a slow link is not a
//! timeout; an upstream that stops reading, or never answers, is.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{BoxError, ResponseBody};
use crate::config::UpstreamConfig;

/// Why an upstream exchange produced no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection: refused, unreachable, DNS, TLS, connect timeout.
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    /// No response head in time, or the upstream stopped reading the request body.
    #[error("the upstream did not send a response head within {0:?}")]
    Timeout(Duration),
    /// The connection broke (reset, or closed by the upstream) before a response head arrived.
    #[error("the upstream connection broke before a response: {0}")]
    Closed(String),
    /// Anything else: an unreadable response, or the request body failed.
    #[error("the upstream exchange failed: {0}")]
    Exchange(String),
}

impl UpstreamError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Timeout(_) => "timeout",
            Self::Closed(_) | Self::Exchange(_) => "exchange",
        }
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, ResponseBody>;

/// The pooled client.
///
/// On a data-plane thread (see `app::serve`: one event loop per thread) each thread uses a client
/// of its own, built from the same settings on first use: a request and its upstream connection
/// then never cross threads, and a thread's connections end with it. Elsewhere (tests, embedders,
/// the admin side) the shared client is used.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: HttpClient,
    config: UpstreamConfig,
    /// Which `Upstream` a thread's own client was built for (a reload builds a new one).
    generation: u64,
    response_header_timeout: Duration,
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static DATA_PLANE_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static THREAD_CLIENT: std::cell::RefCell<Option<(u64, HttpClient)>> = const { std::cell::RefCell::new(None) };
}

/// Marks the calling thread as a data-plane thread: its requests use a client of their own.
pub fn use_thread_client() {
    DATA_PLANE_THREAD.with(|t| t.set(true));
}

fn build_client(config: &UpstreamConfig) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_max_idle_per_host(config.pool_max_idle_per_host)
        .http1_max_buf_size(config.read_buffer_bytes)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https)
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Self, std::io::Error> {
        Ok(Self {
            client: build_client(config),
            config: config.clone(),
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            response_header_timeout: config.response_header_timeout,
        })
    }

    /// This thread's client for this `Upstream`: its own on a data-plane thread, else the shared one.
    /// Starts an exchange on this thread's client (no clone of it per request).
    fn request(&self, req: Request<ResponseBody>) -> hyper_util::client::legacy::ResponseFuture {
        if !DATA_PLANE_THREAD.with(std::cell::Cell::get) {
            return self.client.request(req);
        }
        THREAD_CLIENT.with(|slot| {
            let mut slot = slot.borrow_mut();
            if !matches!(&*slot, Some((generation, _)) if *generation == self.generation) {
                *slot = Some((self.generation, build_client(&self.config)));
            }
            match &*slot {
                Some((_, client)) => client.request(req),
                None => self.client.request(req),
            }
        })
    }

    /// Sends a request and waits for the response head (the body streams afterwards).
    pub async fn send(&self, req: Request<ResponseBody>) -> Result<Response<Incoming>, UpstreamError> {
        let limit = self.response_header_timeout;
        let (parts, body) = req.into_parts();
        if body.is_end_stream() {
            let exchange = self.request(Request::from_parts(parts, body));
            return match tokio::time::timeout(limit, exchange).await {
                Err(_) => Err(UpstreamError::Timeout(limit)),
                Ok(result) => result.map_err(classify),
            };
        }
        let progress = Arc::new(Progress::new(body));
        // On a timeout, or when the request is abandoned, the body is dropped here and now: the
        // upstream connection may hold on to it for as long as the upstream stalls, and the client
        // connection it streams from would wait with it.
        let mut abandon = DropBodyUnlessAnswered(Some(progress.clone()));
        let body = Tracked {
            progress: progress.clone(),
        }
        .boxed_unsync();
        let exchange = self.request(Request::from_parts(parts, body));
        tokio::pin!(exchange);
        let result = async {
            // While the body goes out, only time in which the upstream takes none of it counts.
            while !progress.is_done() {
                let stalled = progress.stalled_for();
                if stalled >= limit {
                    return Err(UpstreamError::Timeout(limit));
                }
                tokio::select! {
                    result = &mut exchange => return result.map_err(classify),
                    () = progress.done.notified() => {}
                    () = tokio::time::sleep(limit - stalled) => {}
                }
            }
            match tokio::time::timeout(limit, &mut exchange).await {
                Err(_) => Err(UpstreamError::Timeout(limit)),
                Ok(result) => result.map_err(classify),
            }
        }
        .await;
        if result.is_ok() {
            // The upstream may answer before it has read the whole body (an early error); the rest
            // of the body still goes out as the connection asks for it.
            abandon.0 = None;
        }
        result
    }
}

/// Drops the request body of an exchange that ended without a response (or was abandoned).
struct DropBodyUnlessAnswered(Option<Arc<Progress>>);

impl Drop for DropBodyUnlessAnswered {
    fn drop(&mut self) {
        if let Some(progress) = self.0.take() {
            drop(progress.take_body());
        }
    }
}

fn classify(e: hyper_util::client::legacy::Error) -> UpstreamError {
    if e.is_connect() {
        UpstreamError::Connect(error_chain(&e))
    } else if broke_before_response(&e) {
        UpstreamError::Closed(error_chain(&e))
    } else {
        UpstreamError::Exchange(error_chain(&e))
    }
}

/// Whether the connection itself failed (reset, closed, broken pipe) rather than apgate's request
/// body (a client that broke off) or the upstream's response (unparseable). The legacy client only
/// returns an error when no response head arrived, so nothing of a response was passed on.
fn broke_before_response(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_user() || h.is_parse() {
                return false;
            }
            if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                return true;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
            return matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            );
        }
        cause = err.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// A request body on its way out: how far it has gone, and the body itself, which
/// [`DropBodyUnlessAnswered`] can take away from the connection that holds it.
#[derive(Debug)]
struct Progress {
    body: Mutex<Option<ResponseBody>>,
    origin: Instant,
    /// Milliseconds after `origin` when the upstream last took a frame.
    last_ms: AtomicU64,
    finished: AtomicBool,
    done: tokio::sync::Notify,
}

impl Progress {
    fn new(body: ResponseBody) -> Self {
        Self {
            body: Mutex::new(Some(body)),
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            done: tokio::sync::Notify::new(),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<ResponseBody>> {
        self.body.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take_body(&self) -> Option<ResponseBody> {
        self.slot().take()
    }

    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn finish(&self) {
        if !self.finished.swap(true, Ordering::AcqRel) {
            self.done.notify_one();
        }
    }

    fn is_done(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    fn stalled_for(&self) -> Duration {
        self.origin
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// The request body was dropped because the exchange timed out or was abandoned.
#[derive(Debug, thiserror::Error)]
#[error("the upstream exchange was abandoned")]
struct Abandoned;

/// A request body that reports each frame the upstream connection takes, and its end.
#[derive(Debug)]
struct Tracked {
    progress: Arc<Progress>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let progress = &self.progress;
        let mut slot = progress.slot();
        let Some(body) = slot.as_mut() else {
            return Poll::Ready(Some(Err(Box::new(Abandoned))));
        };
        let polled = Pin::new(&mut *body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => {
                progress.touch();
                // hyper stops polling a body that reports its end after its last frame.
                if body.is_end_stream() {
                    progress.finish();
                }
            }
            Poll::Ready(None) => progress.finish(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.progress.slot().as_ref().is_some_and(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.progress
            .slot()
            .as_ref()
            .map_or_else(SizeHint::default, Body::size_hint)
    }
}
