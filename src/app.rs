//! Building the running state from a validated [`Config`] and serving it.
//!
//! `serve` takes bound listeners and a shutdown future, so tests bind port 0 and stop it
//! themselves (mini-redis `server::run`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, ServerConfig};
use crate::connection::{Guard, GuardedIo, Signals};
use crate::tls::{client_subject, PeerCertificate, TlsListener};

pub use crate::state::{Gateway, ListenerState, ReloadError, StartError, State};

/// Bound sockets for every listener of a configuration.
#[derive(Debug)]
pub struct Bound {
    pub admin: TcpListener,
    /// (listener name, socket), in configuration order.
    pub data: Vec<(String, TcpListener)>,
}

impl Bound {
    /// Binds every address of the configuration.
    pub async fn bind(config: &Config) -> Result<Self, StartError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        let admin = bind(config.admin.address).await?;
        let mut data = Vec::new();
        for l in &config.listeners {
            data.push((l.name.clone(), bind(l.address).await?));
        }
        Ok(Self { admin, data })
    }
}

/// Serves the data plane and the admin port until `shutdown` completes, then drains: `/readyz`
/// turns false at once, the listeners stop accepting, and in-flight requests (long streams
/// included) get up to the configured grace period to finish.
///
/// The data plane runs on `server.threads` threads, each with a single-threaded event loop that
/// accepts on every listener (clones of the same sockets: the kernel hands each new connection to
/// one of them) and serves its connections start to end with an upstream pool of its own. A
/// request never moves between threads: no work stealing, no cross-thread wake-ups
/// (docs/PERFORMANCE.md). The admin port, reloads and credential refreshes stay on the caller's
/// runtime.
pub async fn serve(gateway: Arc<Gateway>, bound: Bound, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    // Shard threads keep their event loops (and the upstream connections on them) until every
    // shard has drained, so no in-flight request loses a connection another shard still serves.
    let (release_tx, release_rx) = watch::channel(false);
    let threads = gateway.state().config.server.threads.max(1);
    let mut sockets = Vec::new();
    for (name, socket) in bound.data {
        gateway.metrics.start_listener(&name);
        // Out of this runtime's reactor; each shard registers its own copy with its own.
        match socket.into_std() {
            Ok(socket) => sockets.push((Arc::<str>::from(name.as_str()), socket)),
            Err(error) => tracing::error!(%error, listener = %name, "Cannot hand a listener to the data plane."),
        }
    }
    let mut shards = Vec::new();
    match shard_sockets(&sockets, threads) {
        Ok(per_shard) => {
            drop(sockets);
            let balance = Arc::new(Balance::new(threads));
            for (i, mine) in per_shard.into_iter().enumerate() {
                shards.push(start_shard(
                    Shard {
                        index: i,
                        balance: balance.clone(),
                    },
                    mine,
                    gateway.clone(),
                    stop_rx.clone(),
                    release_rx.clone(),
                ));
            }
        }
        Err(error) => {
            // Could not duplicate the sockets (out of descriptors): serve them on this runtime.
            tracing::warn!(%error, "Serving every listener on the shared runtime.");
            for (name, socket) in sockets {
                match TcpListener::from_std(socket) {
                    Ok(socket) => {
                        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
                        let shard = Shard {
                            index: 0,
                            balance: Arc::new(Balance::new(1)),
                        };
                        let accept = accept_loop(gateway.clone(), name, socket, stop_rx.clone(), shard);
                        tokio::spawn(async move {
                            accept.await;
                            let _ = done_tx.send(());
                        });
                        shards.push(done_rx);
                    }
                    Err(error) => tracing::error!(%error, listener = %name, "Cannot accept on a listener."),
                }
            }
        }
    }
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let admin = tokio::spawn(crate::admin::serve(gateway.clone(), bound.admin, admin_stop_rx));
    shutdown.await;
    gateway.start_draining();
    tracing::info!("Shutting down: draining in-flight requests.");
    let _ = stop_tx.send(true);
    for done in shards {
        let _ = done.await;
    }
    let _ = release_tx.send(true);
    let _ = admin_stop_tx.send(true);
    let _ = admin.await;
    tracing::info!("Stopped.");
}

/// A duplicate of every listening socket for each of `threads` shards (the originals are then
/// dropped, so the ports close when the last shard stops accepting).
fn shard_sockets(
    sockets: &[(Arc<str>, std::net::TcpListener)],
    threads: usize,
) -> std::io::Result<Vec<Vec<(Arc<str>, std::net::TcpListener)>>> {
    (0..threads)
        .map(|_| {
            sockets
                .iter()
                .map(|(name, socket)| Ok((name.clone(), socket.try_clone()?)))
                .collect()
        })
        .collect()
}

/// Live connections per data-plane thread. The kernel wakes every thread for a new connection
/// and whichever asks first gets it, so with long-lived connections (SDK pools, load tools) one
/// thread can end up with most of them and the other cores idle; a thread holding more than its
/// share lets the others take the next connection first.
#[derive(Debug)]
struct Balance {
    live: Vec<std::sync::atomic::AtomicUsize>,
}

impl Balance {
    fn new(threads: usize) -> Self {
        Self {
            live: (0..threads.max(1))
                .map(|_| std::sync::atomic::AtomicUsize::new(0))
                .collect(),
        }
    }

    /// Whether thread `index` holds more connections than the least loaded thread, plus one.
    fn over_share(&self, index: usize) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let mine = self.live.get(index).map_or(0, |n| n.load(Relaxed));
        let least = self.live.iter().map(|n| n.load(Relaxed)).min().unwrap_or(0);
        mine > least + 1
    }

    /// Counts a connection of thread `index` until the guard drops.
    fn hold(self: &Arc<Self>, index: usize) -> LiveConnection {
        if let Some(n) = self.live.get(index) {
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        LiveConnection {
            balance: self.clone(),
            index,
        }
    }
}

struct LiveConnection {
    balance: Arc<Balance>,
    index: usize,
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        if let Some(n) = self.balance.live.get(self.index) {
            n.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Which data-plane thread an accept loop runs on, and the connection counts of all of them.
#[derive(Debug, Clone)]
struct Shard {
    index: usize,
    balance: Arc<Balance>,
}

/// How long a thread over its share of connections leaves a new one to the others before taking
/// it itself (the others may be busy).
const BALANCE_DEFER: Duration = Duration::from_millis(1);

/// Starts one data-plane thread; the receiver completes when its listeners have drained.
fn start_shard(
    shard: Shard,
    sockets: Vec<(Arc<str>, std::net::TcpListener)>,
    gateway: Arc<Gateway>,
    stop: watch::Receiver<bool>,
    mut release: watch::Receiver<bool>,
) -> tokio::sync::oneshot::Receiver<()> {
    let index = shard.index;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    // The caller's log subscriber, scoped ones included (tests capture logs that way).
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    let spawned = std::thread::Builder::new()
        .name(format!("apgate-data-{index}"))
        .spawn(move || {
            let _log = tracing::dispatcher::set_default(&dispatch);
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(error) => {
                    tracing::error!(%error, shard = index, "Cannot start a data-plane event loop.");
                    return;
                }
            };
            runtime.block_on(async move {
                let mut loops = Vec::new();
                for (name, socket) in sockets {
                    match TcpListener::from_std(socket) {
                        Ok(socket) => loops.push(tokio::spawn(accept_loop(
                            gateway.clone(),
                            name,
                            socket,
                            stop.clone(),
                            shard.clone(),
                        ))),
                        Err(error) => {
                            tracing::error!(%error, listener = %name, shard = index, "Cannot accept on a listener.")
                        }
                    }
                }
                for l in loops {
                    let _ = l.await;
                }
                let _ = done_tx.send(());
                while !*release.borrow_and_update() {
                    if release.changed().await.is_err() {
                        break;
                    }
                }
            });
        });
    if let Err(error) = spawned {
        tracing::error!(%error, shard = index, "Cannot start a data-plane thread.");
    }
    done_rx
}

async fn accept_loop(
    gateway: Arc<Gateway>,
    name: Arc<str>,
    socket: TcpListener,
    mut stop: watch::Receiver<bool>,
    shard: Shard,
) {
    if let Ok(addr) = socket.local_addr() {
        tracing::info!(listener = %name, %addr, "Listening.");
    }
    let drain = Drain::new();
    loop {
        if shard.balance.over_share(shard.index) {
            tokio::select! {
                () = tokio::time::sleep(BALANCE_DEFER) => {}
                _ = stop.changed() => break,
            }
        }
        let accepted = tokio::select! {
            a = socket.accept() => a,
            _ = stop.changed() => break,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "Accept failed.");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // The listener's settings (TLS certificates included) as of now: a reload applies to the
        // connections accepted after it.
        let state = gateway.state();
        let Some(listener) = state.listeners.get(&*name).cloned() else {
            continue;
        };
        let server = state.config.server;
        let admitted = match gateway.connections.admit(
            &listener.name,
            remote.ip(),
            server.max_connections,
            server.max_connections_per_source,
        ) {
            Ok(admitted) => admitted,
            Err(reason) => {
                // Over a limit: closed at once, before any byte is read.
                gateway
                    .metrics
                    .client_connections_closed
                    .with_label_values(&[&listener.name, reason.as_str()])
                    .inc();
                tracing::debug!(%remote, listener = %listener.name, reason = reason.as_str(), "Connection refused: over a connection limit.");
                drop(stream);
                continue;
            }
        };
        let open = gateway.metrics.client_connections.with_label_values(&[&listener.name]);
        open.inc();
        let gateway = gateway.clone();
        let drain_watch = drain.watcher();
        let live = shard.balance.hold(shard.index);
        tokio::spawn(async move {
            let _live = live;
            // Locals drop in reverse: the gauge falls after the limit's count is released, so a
            // reader that sees the gauge fall can rely on the place being free.
            let _open = scopeguard_dec(open);
            let _admitted = admitted;
            let conn = Conn {
                gateway,
                listener: listener.name.clone(),
                remote,
                server,
            };
            match listener.tls.clone() {
                // Each kind of connection boxes its own future, so a plain connection's task does
                // not carry room for a TLS session (a task is as large as its largest state).
                None => Box::pin(conn.serve(None, stream, drain_watch)).await,
                Some(TlsListener {
                    acceptor,
                    identity_from: source,
                    ..
                }) => {
                    let handshake =
                        Box::pin(tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))).await;
                    let tls = match handshake {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => {
                            tracing::info!(%error, %remote, listener = %listener.name, "TLS handshake failed.");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%remote, listener = %listener.name, "TLS handshake timed out.");
                            return;
                        }
                    };
                    // A verified certificate without the configured kind of subject still counts as
                    // a certificate: its subject is empty, which no mapping names, so the `mtls`
                    // method refuses it rather than letting another method decide.
                    let peer = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .filter(|chain| !chain.is_empty())
                        .map(|chain| {
                            let subject = Arc::<str>::from(client_subject(chain, source).unwrap_or_default().as_str());
                            let owned = chain.iter().map(|c| c.clone().into_owned()).collect();
                            Arc::new(PeerCertificate::new(owned, state.generation, subject))
                        });
                    Box::pin(conn.serve(peer, tls, drain_watch)).await;
                }
            }
        });
    }
    // Stop listening now, so new connections are refused at once rather than accepted and left
    // unanswered while in-flight requests drain.
    drop(socket);
    // Let in-flight requests finish, for a bounded time.
    let grace = gateway.state().config.server.shutdown_grace_period;
    if tokio::time::timeout(grace, drain.start_and_wait(grace)).await.is_err() {
        tracing::warn!(listener = %name, grace_seconds = grace.as_secs_f64(), "In-flight requests did not finish within the grace period.");
    }
}

/// Decrements a gauge when dropped (the connection ended).
fn scopeguard_dec(gauge: prometheus::IntGauge) -> impl Drop {
    struct Dec(prometheus::IntGauge);
    impl Drop for Dec {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    Dec(gauge)
}

/// How long a client may take to complete a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One accepted connection.
struct Conn {
    gateway: Arc<Gateway>,
    listener: Arc<str>,
    remote: SocketAddr,
    server: ServerConfig,
}

impl Conn {
    /// Serves HTTP/1.1 on the connection (plain or TLS).
    async fn serve<I>(self, client_certificate: Option<Arc<PeerCertificate>>, io: I, mut drain: DrainWatch)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            gateway,
            listener,
            remote,
            server,
        } = self;
        let signals = Arc::new(Signals::default());
        let mut io = GuardedIo::new(
            io,
            Guard {
                signals: signals.clone(),
                head_budget: server.max_header_bytes,
                send_timeout: server.client_send_timeout,
                listener: listener.clone(),
                closed: gateway.metrics.client_connections_closed.clone(),
            },
        );
        let parked = gateway
            .metrics
            .client_connections_parked
            .with_label_values(&[&listener]);
        // Boxed: hyper keeps room for one in-flight service future per connection from the moment
        // it is accepted, and the proxy's future is large. Boxing it makes an idle connection cost
        // a pointer instead (docs/PERFORMANCE.md), for one allocation per request.
        let svc = {
            let signals = signals.clone();
            service_fn(move |req| {
                Box::pin(crate::proxy::handle(
                    gateway.clone(),
                    listener.clone(),
                    remote,
                    client_certificate.clone(),
                    signals.clone(),
                    req,
                ))
            })
        };
        let mut drain_state = ConnDrain::default();
        // hyper serves the connection while it is in use. When it has been idle for a while,
        // hyper is taken off it (its read and write buffers and cached headers freed: ≈ 10 KiB
        // of an idle connection's ≈ 14) and the connection is parked until its client sends a
        // byte, then served by a new hyper connection. One deadline covers the wait for a head
        // and the head itself, parked or not (`Signals::head_deadline`).
        loop {
            let deadline: tokio::time::Instant = signals.head_deadline(server.header_read_timeout).into();
            if deadline <= tokio::time::Instant::now() {
                return;
            }
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                // hyper restarts this for every head after an answer; the first head on a woken
                // connection is held to the shared deadline by `serve_until_idle`.
                .header_read_timeout(server.header_read_timeout)
                // The read buffer grows to this for bodies; until a head is parsed, GuardedIo gives hyper
                // at most max_header_bytes of it (400 RequestHeaderSectionTooLarge beyond).
                .max_buf_size(server.read_buffer_bytes.max(server.max_header_bytes))
                .keep_alive(true);
            let mut conn = builder.serve_connection(TokioIo::new(io), svc.clone());
            match serve_until_idle(&mut conn, &signals, deadline, &mut drain, &mut drain_state).await {
                Served::Closed(Ok(())) => return,
                Served::Closed(Err(error)) => {
                    tracing::debug!(%error, %remote, "Connection ended with an error.");
                    return;
                }
                Served::Unused => {
                    // Shutdown, and nothing asked on this hyper connection: close cleanly.
                    let mut io = conn.into_parts().io.into_inner();
                    close_quietly(&mut io).await;
                    return;
                }
                Served::Idle => {
                    let parts = conn.into_parts();
                    io = parts.io.into_inner();
                    if !parts.read_buf.is_empty() {
                        // A copy: the frozen buffer would keep hyper's whole read buffer.
                        io.unread(bytes::Bytes::copy_from_slice(&parts.read_buf));
                    }
                }
            }
            // Parked: no HTTP state, until the client sends a byte, closes, the head deadline
            // passes (closed without a word, as hyper does), or shutdown's idle window ends. The
            // deadline as of now: it counts from this hyper connection's last answer.
            let deadline: tokio::time::Instant = signals.head_deadline(server.header_read_timeout).into();
            parked.inc();
            // Dropped before a close: a connection apgate is closing is no longer parked.
            let parked_now = scopeguard_dec(parked.clone());
            let woken = loop {
                let until = drain_state.closes_at.map_or(deadline, |at| at.min(deadline));
                tokio::select! {
                    r = std::future::poll_fn(|cx| io.poll_wait_readable(cx)) => break r,
                    () = tokio::time::sleep_until(until) => {
                        if until < deadline {
                            drop(parked_now);
                            close_quietly(&mut io).await;
                        }
                        return;
                    }
                    window = drain.started(), if drain_state.closes_at.is_none() => drain_state.start(window),
                }
            };
            match woken {
                Ok(true) => drain_state.woken(),
                // The client closed: so does apgate.
                Ok(false) => {
                    drop(parked_now);
                    close_quietly(&mut io).await;
                    return;
                }
                Err(_) => return,
            }
            drop(parked_now);
        }
    }
}

/// Shutdown as one connection sees it.
#[derive(Debug, Default)]
struct ConnDrain {
    /// When the connection closes if it is idle (shutdown's idle window from when it started, or
    /// from a request that woke the connection during it); `None` while not shutting down.
    closes_at: Option<tokio::time::Instant>,
    window: Duration,
}

impl ConnDrain {
    fn start(&mut self, window: Duration) {
        self.window = window;
        self.closes_at = Some(tokio::time::Instant::now() + window);
    }

    /// A parked connection was woken by its client during shutdown: the request it is sending
    /// gets the idle window to come in and be answered (with `Connection: close`).
    fn woken(&mut self) {
        if let Some(at) = self.closes_at.as_mut() {
            *at = (*at).max(tokio::time::Instant::now() + self.window);
        }
    }
}

/// How a hyper connection's service ended.
enum Served {
    /// hyper is done with the connection and has flushed and shut it down (`Ok`), or it failed.
    Closed(hyper::Result<()>),
    /// The connection has been idle for [`PARK_AFTER`] and hyper let go of it.
    Idle,
    /// Shutdown's idle window ended before a request came on this hyper connection.
    Unused,
}

/// How long a connection waits for its next request with hyper on it before it is parked. Long
/// enough that a busy connection is never parked between its requests; idle pools' connections
/// cost ≈ 4 KiB instead of ≈ 14 after it.
const PARK_AFTER: Duration = Duration::from_millis(500);

/// How long closing an idle connection cleanly may take (a TLS close_notify to a client not reading).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Shuts the connection down (FIN, or TLS close_notify first), for at most [`CLOSE_TIMEOUT`].
async fn close_quietly<I: tokio::io::AsyncWrite + Unpin>(io: &mut I) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, tokio::io::AsyncWriteExt::shutdown(io)).await;
}

/// Runs hyper on the connection until the exchange ends (then hyper flushes and shuts it down,
/// as a plain `await` of the connection does), or the connection is idle: nothing read, nothing
/// left to send and no request open for a whole [`PARK_AFTER`] tick after an answer, when hyper
/// is asked to let go of it (on an idle connection hyper closes at once, without a byte written).
/// Until this hyper connection has answered, its first head must be in by `deadline`.
/// Shutdown: answers say `Connection: close` (proxy::handle); a kept-alive connection stays open
/// for the idle window, for a request its client may already be sending, then hyper closes it.
async fn serve_until_idle<I, S>(
    conn: &mut hyper::server::conn::http1::Connection<I, S>,
    signals: &Signals,
    deadline: tokio::time::Instant,
    drain: &mut DrainWatch,
    drain_state: &mut ConnDrain,
) -> Served
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming> + Unpin,
    S::Future: Unpin,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PARK_AFTER, PARK_AFTER);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = signals.activity();
    let mut seen = started;
    let mut parking = false;
    let mut first_head_pending = true;
    loop {
        let close_at = drain_state.closes_at.unwrap_or_else(far_future);
        tokio::select! {
            ended = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => {
                return match ended {
                    Ok(()) if parking => Served::Idle,
                    // Over: hyper flushes what it holds and shuts the connection down.
                    Ok(()) => Served::Closed((&mut *conn).await),
                    Err(error) => Served::Closed(Err(error)),
                };
            }
            window = drain.started(), if drain_state.closes_at.is_none() => drain_state.start(window),
            () = tokio::time::sleep_until(close_at), if drain_state.closes_at.is_some() => {
                let now = signals.activity();
                if !now.answered_since(started) && !now.in_request() {
                    return Served::Unused;
                }
                // hyper closes an idle connection at once, a busy one after its answer, and
                // flushes and shuts down either way.
                std::pin::Pin::new(&mut *conn).graceful_shutdown();
                return Served::Closed((&mut *conn).await);
            }
            () = tokio::time::sleep_until(deadline), if first_head_pending => {
                first_head_pending = false;
                let now = signals.activity();
                if !now.answered_since(started) && !now.in_request() {
                    // The head did not come in time: closed without a word, as hyper does.
                    return Served::Closed(Ok(()));
                }
            }
            _ = tick.tick(), if !parking && drain_state.closes_at.is_none() => {
                let now = signals.activity();
                if now.answered_since(started) {
                    // Later heads are hyper's to time (its full timeout from each answer).
                    first_head_pending = false;
                }
                // Only once this hyper connection has answered a request: before that, hyper
                // would not let go at once but answer the next request `Connection: close`.
                if now == seen && now.between_requests() && now.answered_since(started) {
                    parking = true;
                    std::pin::Pin::new(&mut *conn).graceful_shutdown();
                }
                seen = now;
            }
        }
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

/// How long a kept-alive connection stays open for one more request once shutdown starts (at most
/// the grace period). A client sends its next request within milliseconds of the last answer, or
/// its connection is parked in a pool, where a close is seen before reuse.
const DRAIN_IDLE_WINDOW: Duration = Duration::from_secs(1);

/// The connections of one listener, for draining them at shutdown: each holds a [`DrainWatch`];
/// the drain is over when the last is dropped.
struct Drain {
    tx: watch::Sender<Option<Duration>>,
}

/// A connection's view of its listener's [`Drain`]: whether shutdown has started, and how long an
/// idle connection then stays open.
struct DrainWatch {
    rx: watch::Receiver<Option<Duration>>,
}

impl Drain {
    fn new() -> Self {
        Self {
            tx: watch::Sender::new(None),
        }
    }

    fn watcher(&self) -> DrainWatch {
        DrainWatch {
            rx: self.tx.subscribe(),
        }
    }

    /// Starts the drain and waits until every connection has ended.
    async fn start_and_wait(self, grace: Duration) {
        self.tx.send_replace(Some(DRAIN_IDLE_WINDOW.min(grace)));
        self.tx.closed().await;
    }
}

impl DrainWatch {
    /// Completes when shutdown starts, with the connection's idle window.
    async fn started(&mut self) -> Duration {
        match self.rx.wait_for(Option::is_some).await {
            Ok(window) => window.unwrap_or_default(),
            // The listener is gone: nothing left to wait for.
            Err(_) => Duration::ZERO,
        }
    }
}

/// Builds the gateway, binds every address and serves until `shutdown`; with a config path, also
/// reloads on SIGHUP and when the file changes.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Take over SIGHUP before anything else: its default action would end the process.
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    #[cfg(not(unix))]
    let hup = None::<()>;
    let bound = Bound::bind(&config).await?;
    let gateway = Gateway::new(config).await?;
    let watcher = config_path.map(|path| tokio::spawn(watch_config(gateway.clone(), path, hup)));
    serve(gateway, bound, shutdown).await;
    if let Some(w) = watcher {
        w.abort();
    }
    Ok(())
}

/// Reloads the configuration on SIGHUP, and when the file's contents change (checked every 2 s;
/// a rename-over, as Kubernetes does for ConfigMaps, counts).
#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

async fn watch_config(gateway: Arc<Gateway>, path: PathBuf, hup: Hangup) {
    let fingerprint = |p: &Path| {
        std::fs::read(p).ok().map(|bytes| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            h.finish()
        })
    };
    let mut last = fingerprint(&path);
    #[cfg(unix)]
    let mut hup = hup;
    #[cfg(not(unix))]
    let _ = hup;
    loop {
        #[cfg(unix)]
        let signal = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let signal = std::future::pending::<()>();
        let by_signal = tokio::select! {
            () = signal => true,
            () = tokio::time::sleep(Duration::from_secs(2)) => false,
        };
        let now = fingerprint(&path);
        if by_signal || (now.is_some() && now != last) {
            tracing::info!(path = %path.display(), trigger = if by_signal { "SIGHUP" } else { "file change" }, "Reloading the configuration.");
            let _ = gateway.reload_from(&path).await;
            last = now;
        }
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Structured logs on stdout: JSON lines by default, `APGATE_LOG_FORMAT=text` for people;
/// the level from `RUST_LOG` (default `info`).
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let text = std::env::var("APGATE_LOG_FORMAT").is_ok_and(|v| v == "text");
    crate::access_log::set_text_format(text);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::access_log::Stdout);
    if text {
        let _ = builder.try_init();
    } else {
        let _ = builder.json().flatten_event(true).with_current_span(false).try_init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_over_its_share_of_connections_defers_until_the_others_catch_up() {
        let balance = Arc::new(Balance::new(2));
        // (connections thread 0 holds, thread 1 holds, thread 0 over its share, thread 1 over)
        let cases = [
            (0, 0, false, false),
            (1, 0, false, false),
            (2, 0, true, false),
            (5, 3, true, false),
            (3, 4, false, false),
            (0, 2, false, true),
        ];
        for (zero, one, want_zero, want_one) in cases {
            let held: Vec<LiveConnection> = (0..zero)
                .map(|_| balance.hold(0))
                .chain((0..one).map(|_| balance.hold(1)))
                .collect();
            assert_eq!(balance.over_share(0), want_zero, "{zero}/{one}");
            assert_eq!(balance.over_share(1), want_one, "{zero}/{one}");
            drop(held);
            assert!(
                !balance.over_share(0) && !balance.over_share(1),
                "connections ended: {zero}/{one}"
            );
        }
        // One thread is never over its share.
        let single = Arc::new(Balance::new(1));
        let _held: Vec<LiveConnection> = (0..10).map(|_| single.hold(0)).collect();
        assert!(!single.over_share(0));
    }
}
