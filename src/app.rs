//! Building the running state from a validated [`Config`] and serving it.
//!
//! `serve` takes bound listeners and a shutdown future, so tests bind port 0 and stop it
//! themselves (mini-redis `server::run`).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, IdentityMethod};
use crate::identity::{SigV4Verifier, SourceMap};
use crate::metrics::Metrics;
use crate::routing::Router;
use crate::signing::credentials::{CredentialSet, ExpiryCollector, RefreshMetrics};
use crate::tls::{client_subject, TlsListener};
use crate::upstream::Upstream;

/// Everything a request needs, built once from the configuration.
#[derive(Debug)]
pub struct State {
    pub config: Config,
    pub verifier: SigV4Verifier,
    pub router: Router,
    pub upstream: Upstream,
    /// apgate's base credentials and the roles assumed per identity.
    pub credentials: CredentialSet,
    pub metrics: Metrics,
    pub listeners: HashMap<String, Arc<ListenerState>>,
}

/// A data-plane listener's own settings.
#[derive(Debug)]
pub struct ListenerState {
    pub name: Arc<str>,
    pub identity_methods: Vec<IdentityMethod>,
    pub sources: SourceMap,
    /// Client-certificate subject → identity (the `mtls` method).
    pub certificates: HashMap<String, Arc<str>>,
    /// The TLS acceptor of an HTTPS listener, and where client identities come from.
    pub tls: Option<TlsListener>,
    /// `http` or `https`.
    pub scheme: &'static str,
}

/// apgate could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot build the metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot build the upstream client: {0}")]
    Upstream(std::io::Error),
    #[error("TLS: {0}")]
    Tls(crate::tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

impl State {
    /// Builds the state. Credentials are fetched once here so `/readyz` can tell; a failure is
    /// logged, not fatal (the credential source may come up later).
    pub async fn build(config: Config) -> Result<Arc<Self>, StartError> {
        let keys = config.identities.iter().flat_map(|i| {
            let name: Arc<str> = Arc::from(i.name.as_str());
            i.keys
                .iter()
                .map(move |k| (k.access_key_id.clone(), name.clone(), k.secret_access_key.clone()))
        });
        let verifier = SigV4Verifier::new(keys, config.sigv4.accepted_regions.clone(), config.sigv4.max_clock_skew);
        let router = Router::new(&config.routes);
        let upstream = Upstream::new(&config.upstream).map_err(StartError::Upstream)?;
        let metrics = Metrics::new()?;
        let refresh_metrics = RefreshMetrics {
            attempts: metrics.credential_refreshes.clone(),
            duration: metrics.credential_refresh_duration.clone(),
        };
        let credentials = CredentialSet::build(&config, Some(refresh_metrics)).await;
        credentials.warm_up().await;
        if !credentials.is_ready() {
            tracing::warn!("Some principals have no credentials yet; their requests fail until they can be obtained.");
        }
        metrics.register(Box::new(ExpiryCollector::new(&credentials)?))?;
        let mut listeners = HashMap::new();
        for l in &config.listeners {
            let sources = SourceMap::new(
                l.sources
                    .iter()
                    .map(|(net, id)| (*net, Arc::from(id.as_str())))
                    .collect(),
            );
            let certificates = l
                .client_certificates
                .iter()
                .map(|(subject, id)| (subject.clone(), Arc::from(id.as_str())))
                .collect();
            let tls = match &l.tls {
                None => None,
                Some(t) => {
                    let server = t.material.server_config().map_err(StartError::Tls)?;
                    Some(TlsListener {
                        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
                        identity_from: t.identity_from,
                    })
                }
            };
            let scheme = if tls.is_some() { "https" } else { "http" };
            let state = ListenerState {
                name: Arc::from(l.name.as_str()),
                identity_methods: l.identity_methods.clone(),
                sources,
                certificates,
                tls,
                scheme,
            };
            listeners.insert(l.name.clone(), Arc::new(state));
        }
        Ok(Arc::new(Self {
            verifier,
            router,
            upstream,
            credentials,
            metrics,
            listeners,
            config,
        }))
    }

    /// Whether apgate can serve: configuration loaded and every principal's credentials valid.
    pub fn is_ready(&self) -> bool {
        self.credentials.is_ready()
    }
}

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

/// Serves the data plane and the admin port until `shutdown` completes.
pub async fn serve(state: Arc<State>, bound: Bound, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for (name, socket) in bound.data {
        let Some(listener) = state.listeners.get(&name).cloned() else {
            continue;
        };
        tasks.push(tokio::spawn(accept_loop(
            state.clone(),
            listener,
            socket,
            stop_rx.clone(),
        )));
    }
    for cache in state.credentials.all() {
        tasks.push(tokio::spawn(cache.clone().run_refresher(stop_rx.clone())));
    }
    tasks.push(tokio::spawn(crate::admin::serve(
        state.clone(),
        bound.admin,
        stop_rx.clone(),
    )));
    shutdown.await;
    tracing::info!("Shutting down.");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
}

async fn accept_loop(
    state: Arc<State>,
    listener: Arc<ListenerState>,
    socket: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    if let Ok(addr) = socket.local_addr() {
        tracing::info!(listener = %listener.name, %addr, "Listening.");
    }
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
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
        let state = state.clone();
        let listener = listener.clone();
        let graceful_watch = graceful.watcher();
        tokio::spawn(async move {
            match listener.tls.clone() {
                None => serve_connection(state, listener, remote, None, TokioIo::new(stream), graceful_watch).await,
                Some(TlsListener {
                    acceptor,
                    identity_from: source,
                }) => {
                    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
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
                    let subject = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|cert| Arc::<str>::from(client_subject(cert, source).unwrap_or_default().as_str()));
                    serve_connection(state, listener, remote, subject, TokioIo::new(tls), graceful_watch).await;
                }
            }
        });
    }
    // Let in-flight requests finish, for a bounded time.
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(listener = %listener.name, "In-flight requests did not finish within 30 s.");
    }
}

/// How long a client may take to complete a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP/1.1 on one accepted connection (plain or TLS).
async fn serve_connection<I>(
    state: Arc<State>,
    listener: Arc<ListenerState>,
    remote: SocketAddr,
    client_certificate: Option<Arc<str>>,
    io: TokioIo<I>,
    graceful: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        crate::proxy::handle(state.clone(), listener.clone(), remote, client_certificate.clone(), req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    let conn = graceful.watch(builder.serve_connection(io, svc));
    if let Err(error) = conn.await {
        tracing::debug!(%error, %remote, "Connection ended with an error.");
    }
}

/// Builds the state, binds every address and serves until `shutdown`.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let bound = Bound::bind(&config).await?;
    let state = State::build(config).await?;
    serve(state, bound, shutdown).await;
    Ok(())
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    if text {
        let _ = builder.try_init();
    } else {
        let _ = builder.json().flatten_event(true).with_current_span(false).try_init();
    }
}
