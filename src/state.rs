//! The running state: [`Gateway`] (what lives as long as the process, with the current [`State`]
//! behind an `ArcSwap`), [`State`] (everything a request needs, built from one configuration) and
//! reloads.
//!
//! **Architecture invariant:** a reload is a start-up: the new state is built by the same
//! [`State::build`] and swapped in whole; a request keeps the state it started with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::Config;
use crate::decision::Policy;
use crate::identity::{ListenerIdentity, SigV4Verifier};
use crate::metrics::Metrics;
use crate::routing::Router;
use crate::signing::credentials::{CredentialCache, CredentialSet, ExpiryCollector, RefreshMetrics};
use crate::tls::TlsListener;
use crate::upstream::Upstream;

/// The running gateway: the current [`State`] (swapped atomically on reload), and what lives as long
/// as the process: metrics and the draining flag.
#[derive(Debug)]
pub struct Gateway {
    state: ArcSwap<State>,
    pub metrics: Metrics,
    draining: AtomicBool,
    /// The credential caches of the current state, read by the expiry gauge at scrape time.
    caches: Arc<ArcSwap<Vec<Arc<CredentialCache>>>>,
    /// Reloads are serialised.
    reload_lock: tokio::sync::Mutex<()>,
    /// Open client connections per listener and per source (kept across reloads).
    pub connections: Arc<crate::connection::Limits>,
    /// Refused bodies being read and thrown away now (`server.max_concurrent_discards`).
    pub discards: Arc<std::sync::atomic::AtomicUsize>,
}

/// Everything a request needs, built from one configuration. A reload builds a new one through the
/// same code as start-up; a request keeps the one it started with.
#[derive(Debug)]
pub struct State {
    /// Which configuration this is: 0 at start, one more at each reload (what a connection's
    /// client certificate was last checked under).
    pub generation: u64,
    pub config: Config,
    pub verifier: SigV4Verifier,
    pub router: Router,
    pub upstream: Upstream,
    /// apgate's base credentials and the roles assumed per identity.
    pub credentials: CredentialSet,
    pub metrics: Metrics,
    pub listeners: HashMap<String, Arc<ListenerState>>,
    /// Requests in flight per identity (for `max_concurrent_requests_per_identity`). A reload
    /// hands the running state's counters on: requests admitted before it still hold their slots.
    pub identity_inflight: HashMap<Arc<str>, Arc<std::sync::atomic::AtomicUsize>>,
    /// apgate's own derived signing keys (base and assumed-role credentials), by access key, date
    /// and region.
    pub signing_keys: crate::sigv4::SigningKeyCache,
    /// Dropping the state stops its credential refreshers.
    _stop_refreshers: watch::Sender<bool>,
}

/// A data-plane listener's own settings.
#[derive(Debug)]
pub struct ListenerState {
    pub name: Arc<str>,
    /// How the listener identifies callers.
    pub identity: ListenerIdentity,
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

/// A reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Start(#[from] StartError),
    #[error("{0} (listener and admin addresses are bound at start; restart apgate to change them)")]
    NeedsRestart(String),
}

impl State {
    /// Builds the state: keys, routes, the upstream client, TLS acceptors, and credentials (fetched
    /// once here so `/readyz` can tell; a failure is logged, not fatal: the credential source may
    /// come up later). The credential refreshers run until the state is dropped.
    pub async fn build(config: Config, metrics: &Metrics) -> Result<Self, StartError> {
        let verifier = SigV4Verifier::from_config(&config);
        let router = Router::new(&config.routes);
        let upstream = Upstream::new(&config.upstream).map_err(StartError::Upstream)?;
        let mut listeners = HashMap::new();
        for l in &config.listeners {
            let tls = match &l.tls {
                None => None,
                Some(t) => {
                    let server = t.material.server_config().map_err(StartError::Tls)?;
                    Some(TlsListener {
                        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
                        identity_from: t.identity_from,
                        client_verifier: t.material.client_verifier().map_err(StartError::Tls)?,
                    })
                }
            };
            let scheme = if tls.is_some() { "https" } else { "http" };
            let state = ListenerState {
                name: Arc::from(l.name.as_str()),
                identity: ListenerIdentity::from_config(l),
                tls,
                scheme,
            };
            listeners.insert(l.name.clone(), Arc::new(state));
        }
        let refresh_metrics = RefreshMetrics {
            attempts: metrics.credential_refreshes.clone(),
            duration: metrics.credential_refresh_duration.clone(),
        };
        let credentials = CredentialSet::build(&config, Some(refresh_metrics)).await;
        credentials.warm_up().await;
        if !credentials.is_ready() {
            tracing::warn!("Some principals have no credentials yet; their requests fail until they can be obtained.");
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        for cache in credentials.all() {
            tokio::spawn(cache.clone().run_refresher(stop_rx.clone()));
        }
        let identity_inflight = config
            .identities
            .iter()
            .map(|i| (Arc::from(i.name.as_str()), Arc::default()))
            .collect();
        Ok(Self {
            generation: 0,
            identity_inflight,
            signing_keys: crate::sigv4::SigningKeyCache::new(256),
            verifier,
            router,
            upstream,
            credentials,
            metrics: metrics.clone(),
            listeners,
            config,
            _stop_refreshers: stop_tx,
        })
    }

    /// Whether every principal's credentials are valid.
    pub fn is_ready(&self) -> bool {
        self.credentials.is_ready()
    }

    /// What [`crate::decision::decide`] reads for a request on `listener`.
    pub fn policy<'a>(&'a self, listener: &'a ListenerState) -> Policy<'a> {
        Policy {
            domains: &self.config.addressing.virtual_host_domains,
            verifier: &self.verifier,
            router: &self.router,
            listener: &listener.identity,
        }
    }
}

impl Gateway {
    /// Builds the metrics and the first state.
    pub async fn new(config: Config) -> Result<Arc<Self>, StartError> {
        let metrics = Metrics::new()?;
        let state = State::build(config, &metrics).await?;
        let caches = Arc::new(ArcSwap::from_pointee(
            state.credentials.all().cloned().collect::<Vec<_>>(),
        ));
        metrics.register(Box::new(ExpiryCollector::new(caches.clone())?))?;
        metrics.config_last_reload_success.set(unix_now());
        Ok(Arc::new(Self {
            state: ArcSwap::from_pointee(state),
            metrics,
            draining: AtomicBool::new(false),
            caches,
            reload_lock: tokio::sync::Mutex::new(()),
            connections: Arc::default(),
            discards: Arc::default(),
        }))
    }

    /// The current state (requests hold on to the one they started with).
    pub fn state(&self) -> Arc<State> {
        self.state.load_full()
    }

    /// Ready to take traffic: not draining, and every principal has valid credentials.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && self.state.load().is_ready()
    }

    /// Marks the gateway as draining: `/readyz` turns false at once, and every answer from now on
    /// says `Connection: close`.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the gateway is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Reloads from a file: parse and validate, build a new state through the same code as
    /// start-up, swap it in. On any error the running state stays, the error is logged with its
    /// key paths and counted.
    pub async fn reload_from(&self, path: &Path) -> Result<(), ReloadError> {
        let result = match Config::load(path) {
            Ok(config) => self.reload(config).await,
            Err(e) => Err(ReloadError::Config(e)),
        };
        match &result {
            Ok(()) => tracing::info!(path = %path.display(), "Configuration reloaded."),
            Err(error) => {
                self.metrics.config_reloads.with_label_values(&["failure"]).inc();
                tracing::error!(path = %path.display(), %error, "Configuration reload failed; the running configuration stays.");
            }
        }
        result
    }

    /// Swaps in a new configuration (see [`Gateway::reload_from`]).
    pub async fn reload(&self, config: Config) -> Result<(), ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let running = self.state.load_full();
        check_addresses(&running.config, &config)?;
        let mut state = State::build(config, &self.metrics).await?;
        state.generation = running.generation + 1;
        // Counts go on (a fresh 0 would give an identity a new budget on top of its requests still
        // running): for the identities that stay, and, while requests of it still run, for one the
        // file dropped, so that adding it back later does not start it at 0 either.
        for (name, running) in &running.identity_inflight {
            match state.identity_inflight.get_mut(name) {
                Some(counter) => *counter = Arc::clone(running),
                None if running.load(std::sync::atomic::Ordering::Acquire) > 0 => {
                    state.identity_inflight.insert(name.clone(), Arc::clone(running));
                }
                None => {}
            }
        }
        self.caches.store(Arc::new(state.credentials.all().cloned().collect()));
        self.state.store(Arc::new(state));
        self.metrics.config_reloads.with_label_values(&["success"]).inc();
        self.metrics.config_last_reload_success.set(unix_now());
        Ok(())
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Listener names and addresses, and the admin address, are bound at start and cannot change on a
/// reload.
fn check_addresses(running: &Config, new: &Config) -> Result<(), ReloadError> {
    let addresses = |c: &Config| -> Vec<(String, SocketAddr)> {
        let mut v: Vec<_> = c.listeners.iter().map(|l| (l.name.clone(), l.address)).collect();
        v.sort();
        v
    };
    if addresses(running) != addresses(new) {
        return Err(ReloadError::NeedsRestart(
            "the set of listeners or their addresses changed".to_owned(),
        ));
    }
    if running.admin.address != new.admin.address {
        return Err(ReloadError::NeedsRestart("admin.address changed".to_owned()));
    }
    Ok(())
}
