//! The upstream client: hyper's HTTP/1 connections over hyper-rustls, pooled per thread, with
//! connect and response-head timeouts. Bodies stream in both directions.
//!
//! **The response-head timeout never cuts a progressing upload.** While a request body is going
//! out, the clock only runs while the upstream takes none of it although apgate has a frame for
//! it; once the body is sent, the upstream has `response_header_timeout` to answer. A 5 GiB PUT
//! over a slow link is not a timeout; an upstream that stops reading, or never answers, is. Time
//! the body waits on the client is the client's, bounded by `client_body_idle_timeout`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

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

type Connector = HttpsConnector<HttpConnector>;
type Sender = hyper::client::conn::http1::SendRequest<ResponseBody>;

/// The upstream client: hyper's HTTP/1 connections over hyper-rustls, pooled per thread.
///
/// Each thread keeps its own idle connections (a data-plane thread runs one event loop, so a
/// request and its upstream connection never cross threads, and taking a connection is a `Vec`
/// pop: no lock, no shared map). A connection goes back to its thread's pool when the response
/// body has been read to its end; one whose body was dropped early, or that the upstream closes,
/// is not reused. Idle connections are dropped after `pool_idle_timeout`, and no more than
/// `pool_max_idle_per_host` are kept per host and thread. A pooled connection that turns out to
/// be closed before the request went out is replaced by another, transparently (nothing was
/// sent), as hyper-util's pooled client does.
#[derive(Debug, Clone)]
pub struct Upstream {
    connector: Connector,
    config: UpstreamConfig,
    /// Which `Upstream` a thread's pool belongs to (a reload builds a new one).
    generation: u64,
    response_header_timeout: Duration,
    /// [`POOL_MAX_IDLE_PER_THREAD`] (smaller in tests).
    max_idle_total: usize,
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static POOL: std::cell::RefCell<Pool> = std::cell::RefCell::new(Pool::default());
}

/// Idle connections one thread keeps across all hosts. Pattern routes make an access point host
/// per bucket a caller names, so without this bound a caller inventing bucket names would have
/// apgate keep a connection (a descriptor and a TLS session) per name for `pool_idle_timeout`.
pub const POOL_MAX_IDLE_PER_THREAD: usize = 1024;

/// Of those, how many may be connections whose read buffer grew past [`BIG_FRAME`] (up to
/// `upstream.read_buffer_bytes`, 1 MiB by default): hyper keeps a connection's grown buffer while it
/// sits idle, so without this bound the connections of a burst of large downloads, or of one
/// caller's downloads through many pattern hosts in turn, would keep ≈ 1.5 MiB each for
/// `pool_idle_timeout`. Past the bound such a connection closes after its answer; a large download
/// pays one more connection set-up, which its own transfer dwarfs.
pub const POOL_MAX_BIG_IDLE_PER_THREAD: usize = 4;

/// A response frame this large shows its connection's read buffer grew (hyper's buffer starts at
/// 8 KiB and doubles while reads fill it; its frames are cut from it).
const BIG_FRAME: usize = 64 * 1024;

/// One thread's idle upstream connections: by scheme (`https` or not), then host.
#[derive(Default)]
struct Pool {
    generation: u64,
    idle: [HashMap<Arc<str>, Vec<Idle>>; 2],
    /// How many connections `idle` holds.
    count: usize,
    /// How many of them are [`Idle::big`].
    big: usize,
    sweeping: bool,
}

struct Idle {
    sender: Sender,
    host: Arc<str>,
    since: Instant,
    /// Its read buffer grew past [`BIG_FRAME`] (see [`POOL_MAX_BIG_IDLE_PER_THREAD`]).
    big: bool,
}

impl Pool {
    /// Drops connections idle for longer than `timeout` (the oldest are at the front) and closed ones.
    fn sweep(&mut self, timeout: Duration) {
        let now = Instant::now();
        let (mut count, mut big) = (0, 0);
        for by_host in &mut self.idle {
            by_host.retain(|_, list| {
                list.retain(|i| !i.sender.is_closed() && now.duration_since(i.since) < timeout);
                count += list.len();
                big += list.iter().filter(|i| i.big).count();
                !list.is_empty()
            });
        }
        self.count = count;
        self.big = big;
    }
}

/// Where a connection goes back when its response body is done.
struct PoolReturn {
    sender: Sender,
    https: bool,
    host: Arc<str>,
    generation: u64,
    max_idle: usize,
    max_idle_total: usize,
    idle_timeout: Duration,
}

impl PoolReturn {
    /// Pools the connection, if there is room; `big` when its read buffer grew.
    fn put_back(self, big: bool) {
        if self.sender.is_closed() || self.max_idle == 0 {
            return;
        }
        let _ = POOL.try_with(|pool| {
            let Ok(mut pool) = pool.try_borrow_mut() else {
                return;
            };
            if pool.generation != self.generation {
                return;
            }
            let pool = &mut *pool;
            let by_host = &mut pool.idle[usize::from(self.https)];
            if pool.count >= self.max_idle_total && !by_host.contains_key(&self.host) {
                // Full: no new host's entry (the sweep makes room as connections expire).
                return;
            }
            let list = by_host.entry(self.host.clone()).or_default();
            // Entries are pushed in time order: the expired ones are a prefix.
            let now = Instant::now();
            let expired = list
                .iter()
                .take_while(|i| now.duration_since(i.since) >= self.idle_timeout)
                .count();
            for idle in list.drain(..expired) {
                pool.count -= 1;
                pool.big -= usize::from(idle.big);
            }
            if list.len() < self.max_idle
                && pool.count < self.max_idle_total
                && (!big || pool.big < POOL_MAX_BIG_IDLE_PER_THREAD)
            {
                list.push(Idle {
                    sender: self.sender,
                    host: self.host,
                    since: now,
                    big,
                });
                pool.count += 1;
                pool.big += usize::from(big);
            }
        });
    }
}

pin_project_lite::pin_project! {
    /// An upstream response body. Read to its end, it gives its connection back to the pool.
    pub struct UpstreamBody {
        #[pin]
        inner: Incoming,
        pool: Option<PoolReturn>,
        // A frame of at least `BIG_FRAME` bytes came through, in this answer or one before on
        // the same connection.
        big: bool,
    }

    impl PinnedDrop for UpstreamBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(ret) = this.pool.take() {
                // A body dropped before its end leaves its connection unusable; hyper closes it.
                if this.inner.is_end_stream() {
                    ret.put_back(*this.big);
                }
            }
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(frame))) => {
                if frame.data_ref().is_some_and(|d| d.len() >= BIG_FRAME) {
                    *this.big = true;
                }
                this.inner.is_end_stream()
            }
            Poll::Ready(Some(Err(_))) => {
                this.pool.take();
                false
            }
            Poll::Pending => false,
        };
        if ended {
            if let Some(ret) = this.pool.take() {
                ret.put_back(*this.big);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn build_connector(config: &UpstreamConfig) -> Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Self, std::io::Error> {
        Ok(Self {
            connector: build_connector(config),
            config: config.clone(),
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            response_header_timeout: config.response_header_timeout,
            max_idle_total: POOL_MAX_IDLE_PER_THREAD,
        })
    }

    /// An idle connection to `host` from this thread's pool.
    /// With it, whether its read buffer grew before ([`Idle::big`]: hyper never shrinks it).
    fn checkout(&self, https: bool, host: &str) -> Option<(Sender, Arc<str>, bool)> {
        POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.generation != self.generation {
                *pool = Pool {
                    generation: self.generation,
                    ..Pool::default()
                };
            }
            if !pool.sweeping {
                // Connections idle past the timeout are closed even on a thread that sends
                // nothing more.
                pool.sweeping = true;
                let (generation, every) = (self.generation, self.config.pool_idle_timeout);
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        loop {
                            tokio::time::sleep(every.max(Duration::from_millis(100))).await;
                            let current = POOL.with(|pool| {
                                let mut pool = pool.borrow_mut();
                                pool.sweep(every);
                                pool.generation == generation
                            });
                            if !current {
                                break;
                            }
                        }
                    });
                }
            }
            let now = Instant::now();
            let pool = &mut *pool;
            let list = pool.idle[usize::from(https)].get_mut(host)?;
            while let Some(idle) = list.pop() {
                pool.count -= 1;
                pool.big -= usize::from(idle.big);
                if !idle.sender.is_closed() && now.duration_since(idle.since) < self.config.pool_idle_timeout {
                    return Some((idle.sender, idle.host, idle.big));
                }
            }
            None
        })
    }

    /// A new connection to the request's host (DNS, TCP, TLS for `https`).
    async fn connect(&self, uri: &Uri, host: &str) -> Result<(Sender, Arc<str>), UpstreamError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut connector, cx))
            .await
            .map_err(|e| UpstreamError::Connect(error_chain(&*e)))?;
        let io = tower_service::Service::call(&mut connector, uri.clone())
            .await
            .map_err(|e| UpstreamError::Connect(error_chain(&*e)))?;
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(self.config.read_buffer_bytes)
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::Connect(error_chain(&e)))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "Upstream connection ended with an error.");
            }
        });
        Ok((sender, Arc::from(host)))
    }

    /// One exchange: a pooled connection or a new one; the response head, its body still to come.
    async fn request(&self, mut req: Request<ResponseBody>) -> Result<Response<UpstreamBody>, UpstreamError> {
        let uri = req.uri().clone();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let host = uri
            .authority()
            .map(http::uri::Authority::as_str)
            .ok_or_else(|| UpstreamError::Exchange("the upstream URI has no host".to_owned()))?;
        // On the wire: origin form (the Host header was set by the rewrite).
        *req.uri_mut() = uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
        loop {
            let (mut sender, host, reused, big) = match self.checkout(https, host) {
                Some((sender, host, big)) => (sender, host, true, big),
                None => {
                    // Boxed: a new connection is the rare case, and its future (DNS, TCP, TLS,
                    // handshake) is large; inline it would enlarge every request's future.
                    let (sender, host) = Box::pin(self.connect(&uri, host)).await?;
                    (sender, host, false, false)
                }
            };
            if let Err(e) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(classify(&e));
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let pool = PoolReturn {
                        sender,
                        https,
                        host,
                        generation: self.generation,
                        max_idle: self.config.pool_max_idle_per_host,
                        max_idle_total: self.max_idle_total,
                        idle_timeout: self.config.pool_idle_timeout,
                    };
                    return Ok(resp.map(|inner| UpstreamBody {
                        inner,
                        pool: Some(pool),
                        big,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // The pooled connection closed before the request went out: nothing was sent,
                    // so another connection may take it.
                    Some(back) if reused => req = back,
                    _ => return Err(classify(&e.into_error())),
                },
            }
        }
    }

    /// Sends a request and waits for the response head (the body streams afterwards).
    pub async fn send(&self, req: Request<ResponseBody>) -> Result<Response<UpstreamBody>, UpstreamError> {
        let limit = self.response_header_timeout;
        let (parts, body) = req.into_parts();
        if body.is_end_stream() {
            let exchange = self.request(Request::from_parts(parts, body));
            return match tokio::time::timeout(limit, exchange).await {
                Err(_) => Err(UpstreamError::Timeout(limit)),
                Ok(result) => result,
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
                    result = &mut exchange => return result,
                    () = progress.done.notified() => {}
                    () = tokio::time::sleep(limit - stalled) => {}
                }
            }
            match tokio::time::timeout(limit, &mut exchange).await {
                Err(_) => Err(UpstreamError::Timeout(limit)),
                Ok(result) => result,
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

fn classify(e: &hyper::Error) -> UpstreamError {
    if broke_before_response(e) {
        UpstreamError::Closed(error_chain(e))
    } else {
        UpstreamError::Exchange(error_chain(e))
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
    /// The upstream connection asked for the next frame and the body had none yet: it waits on the
    /// client (or on bytes apgate holds until they are checked), not the upstream on apgate.
    waiting_on_client: AtomicBool,
    finished: AtomicBool,
    done: tokio::sync::Notify,
}

impl Progress {
    fn new(body: ResponseBody) -> Self {
        Self {
            body: Mutex::new(Some(body)),
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            waiting_on_client: AtomicBool::new(false),
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

    /// Records that the upstream connection asked for a frame: it got one (`Some(true)`: the
    /// stall clock starts again), the body has none yet (`Some(false)`: the clock stops until it
    /// has), or the body ended or failed (`None`).
    fn polled(&self, frame: Option<bool>) {
        if frame == Some(true) {
            self.touch();
        }
        // Release: whoever sees the flag cleared sees the touch before it.
        self.waiting_on_client.store(frame == Some(false), Ordering::Release);
    }

    /// How long the upstream has taken none of the body while it had a frame to take. Time in
    /// which the body waits on the client is the client's (`client_body_idle_timeout` bounds it)
    /// and is not counted: a client that trickles the bytes apgate holds until they are checked
    /// (an aws-chunked piece or trailer) is not an upstream that stopped reading.
    fn stalled_for(&self) -> Duration {
        if self.waiting_on_client.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
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
                progress.polled(Some(true));
                // hyper stops polling a body that reports its end after its last frame.
                if body.is_end_stream() {
                    progress.finish();
                }
            }
            Poll::Ready(None) => {
                progress.polled(None);
                progress.finish();
            }
            Poll::Ready(Some(Err(_))) => progress.polled(None),
            Poll::Pending => progress.polled(Some(false)),
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::{Endpoint, RetryConfig};

    /// How the test upstream treats a connection after each answer.
    #[derive(Clone, Copy)]
    enum Then {
        KeepOpen,
        /// Closes the connection without saying so (no `Connection: close`): an upstream that
        /// drops idle connections.
        Close,
        /// The same, a while after the answer.
        CloseLater(Duration),
    }

    /// An HTTP/1.1 upstream answering every request with `body_len` bytes; counts connections.
    async fn upstream(after: Then, body_len: usize) -> (String, Arc<AtomicUsize>) {
        upstream_sized(after, Arc::new(AtomicUsize::new(body_len))).await
    }

    /// The same, answering with as many bytes as `body_len` says at the time.
    async fn upstream_sized(after: Then, body_len: Arc<AtomicUsize>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let body_len = body_len.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        let body_len = body_len.load(Ordering::SeqCst);
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {body_len}\r\n\r\n");
                        let mut answer = head.into_bytes();
                        answer.resize(answer.len() + body_len, b'x');
                        if socket.write_all(&answer).await.is_err() {
                            return;
                        }
                        match after {
                            Then::KeepOpen => {}
                            Then::Close => return,
                            Then::CloseLater(wait) => {
                                tokio::time::sleep(wait).await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    fn config(url: &str, max_idle: usize, idle_timeout: Duration) -> UpstreamConfig {
        UpstreamConfig {
            region: "us-east-1".to_owned(),
            endpoint: Endpoint::Custom(url.parse().unwrap()),
            connect_timeout: Duration::from_secs(2),
            response_header_timeout: Duration::from_secs(2),
            body_idle_timeout: Duration::from_secs(2),
            pool_idle_timeout: idle_timeout,
            pool_max_idle_per_host: max_idle,
            read_buffer_bytes: 1 << 20,
            retry: RetryConfig {
                max_attempts: 1,
                replay_buffer_bytes: 0,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(10),
                deadline: Duration::from_secs(1),
            },
        }
    }

    fn get(url: &str) -> Request<ResponseBody> {
        let mut req = Request::new(crate::body::empty());
        *req.uri_mut() = format!("{url}/bucket/key").parse().unwrap();
        let host = url.trim_start_matches("http://").parse().unwrap();
        req.headers_mut().insert(http::header::HOST, host);
        req
    }

    async fn read_all(up: &Upstream, url: &str) -> usize {
        let resp = up.send(get(url)).await.unwrap();
        resp.into_body().collect().await.unwrap().to_bytes().len()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pooling_follows_how_each_response_ended() {
        let long = Duration::from_secs(30);
        // (what the upstream does, body size, pool size, idle timeout, pause between requests,
        //  read the body or drop it, connections expected for 3 requests)
        let cases = [
            (
                "kept-alive, read to the end: one connection",
                Then::KeepOpen,
                5,
                4,
                long,
                0,
                true,
                1,
            ),
            (
                "a body dropped unread: its connection is not reused",
                Then::KeepOpen,
                200_000,
                4,
                long,
                0,
                false,
                3,
            ),
            ("pool of 0: never reused", Then::KeepOpen, 5, 0, long, 0, true, 3),
            (
                "idle past the timeout: not reused",
                Then::KeepOpen,
                5,
                4,
                Duration::from_millis(50),
                150,
                true,
                3,
            ),
            (
                "closed by the upstream while idle: replaced, no error",
                Then::Close,
                5,
                4,
                long,
                50,
                true,
                3,
            ),
        ];
        for (name, after, body_len, max_idle, idle_timeout, pause_ms, read, want) in cases {
            let (url, accepted) = upstream(after, body_len).await;
            let up = Upstream::new(&config(&url, max_idle, idle_timeout)).unwrap();
            for _ in 0..3 {
                if read {
                    assert_eq!(read_all(&up, &url).await, body_len, "{name}");
                } else {
                    let resp = up.send(get(&url)).await.unwrap();
                    assert_eq!(resp.status(), 200, "{name}");
                    drop(resp);
                }
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            }
            assert_eq!(accepted.load(Ordering::SeqCst), want, "{name}");
        }
    }

    /// However many hosts a thread talks to, it keeps at most `max_idle_total` idle connections:
    /// a connection to a host past that bound is closed after its answer, not pooled.
    #[tokio::test(flavor = "current_thread")]
    async fn the_pool_keeps_a_bounded_number_of_connections_across_hosts() {
        let mut hosts = Vec::new();
        for _ in 0..3 {
            hosts.push(upstream(Then::KeepOpen, 5).await);
        }
        let mut up = Upstream::new(&config(&hosts[0].0, 4, Duration::from_secs(30))).unwrap();
        up.max_idle_total = 2;
        for _ in 0..3 {
            for (url, _) in &hosts {
                assert_eq!(read_all(&up, url).await, 5);
            }
        }
        let accepted: Vec<usize> = hosts.iter().map(|(_, n)| n.load(Ordering::SeqCst)).collect();
        // The first two hosts' connections are pooled and reused; the third host's never is.
        assert_eq!(accepted, [1, 1, 3]);
        POOL.with(|pool| assert_eq!(pool.borrow().count, 2));
    }

    /// Red-team pass 4, F2: hyper keeps a connection's grown read buffer while it sits idle, so
    /// a burst of large downloads left every connection of it pooled with ≈ 1.5 MiB. At most
    /// `POOL_MAX_BIG_IDLE_PER_THREAD` such connections stay; connections of small answers pool
    /// as before.
    #[tokio::test(flavor = "current_thread")]
    async fn the_pool_keeps_few_connections_whose_buffers_grew() {
        let burst = 2 * POOL_MAX_BIG_IDLE_PER_THREAD;
        let size = Arc::new(AtomicUsize::new(0));
        let (url, _) = upstream_sized(Then::KeepOpen, size.clone()).await;
        let url = url.as_str();
        // (body size, connections pooled after a burst of `burst` concurrent requests, big ones,
        //  start from an empty pool)
        let cases = [
            (
                4 << 20,
                POOL_MAX_BIG_IDLE_PER_THREAD,
                POOL_MAX_BIG_IDLE_PER_THREAD,
                true,
            ),
            (1024, burst, 0, true),
            (
                4 << 20,
                POOL_MAX_BIG_IDLE_PER_THREAD,
                POOL_MAX_BIG_IDLE_PER_THREAD,
                true,
            ),
            // A connection stays big once its buffer grew (review of the change: reused for a
            // small answer, it went back as small, buffer and all): small answers after the big
            // burst take the 4 big connections and 4 new ones, and the 4 stay big.
            (1024, burst, POOL_MAX_BIG_IDLE_PER_THREAD, false),
        ];
        let up = Upstream::new(&config(url, 64, Duration::from_secs(30))).unwrap();
        for (body_len, pooled, big, fresh) in cases {
            if fresh {
                POOL.with(|pool| *pool.borrow_mut() = Pool::default());
            }
            size.store(body_len, Ordering::SeqCst);
            // All connected before any answer is read, so the burst takes `burst` connections.
            let mut responses = Vec::new();
            for _ in 0..burst {
                responses.push(up.send(get(url)).await.unwrap());
            }
            let reads: Vec<_> = responses
                .into_iter()
                .map(|resp| tokio::spawn(async move { resp.into_body().collect().await.unwrap().to_bytes().len() }))
                .collect();
            for read in reads {
                assert_eq!(read.await.unwrap(), body_len);
            }
            POOL.with(|pool| {
                let pool = pool.borrow();
                assert_eq!((pool.count, pool.big), (pooled, big), "{body_len}-byte answers");
            });
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_upstream_closing_keep_alive_connections_only_ever_causes_retryable_errors() {
        // The upstream closes each connection 20 ms after its answer; the next request comes at
        // 18 to 22 ms, so some go out on a connection that is closing. Nothing of a response has
        // arrived then: the error must be `Closed`, which the retry policy retries for methods
        // that allow it, never `Exchange` (not retried).
        let (url, accepted) = upstream(Then::CloseLater(Duration::from_millis(20)), 5).await;
        let up = Upstream::new(&config(&url, 4, Duration::from_secs(30))).unwrap();
        let (mut ok, mut closed) = (0, 0);
        for round in 0..5u64 {
            for step in 0..=16u64 {
                match up.send(get(&url)).await {
                    Ok(resp) => {
                        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes().len(), 5);
                        ok += 1;
                    }
                    Err(UpstreamError::Closed(_)) => closed += 1,
                    Err(other) => panic!("round {round} step {step}: {other}"),
                }
                tokio::time::sleep(Duration::from_micros(18_000 + step * 250)).await;
            }
        }
        assert!(
            ok > 0 && accepted.load(Ordering::SeqCst) > 1,
            "{ok} answered, {closed} closed"
        );
    }
}
