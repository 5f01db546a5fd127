//! apgate's own credentials: a base provider (static keys, or the aws-config default chain: env,
//! profile, web identity, ECS container credentials, IMDSv2) and per-identity AssumeRole providers,
//! each behind a [`CredentialCache`].
//!
//! Neither the default chain nor `AssumeRoleProvider` caches (PROTOCOL.md §6.2), so every provider
//! sits behind a single-flight cache with a background refresher: credentials are renewed ahead of
//! expiry (by `before_expiry`, or half their lifetime if that is shorter, minus a random jitter so
//! replicas do not refresh in step), and a request only ever waits for a provider when there are no
//! valid credentials at all. A failed refresh is logged and counted, and the current credentials keep
//! serving until they expire.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use aws_config::sts::AssumeRoleProvider;
use aws_credential_types::provider::{self, future, ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use prometheus::{HistogramVec, IntCounterVec};
use rand::Rng;

use crate::config::{Config, CredentialsConfig};

/// When to refresh.
#[derive(Debug, Clone, Copy)]
pub struct RefreshPolicy {
    /// Refresh this long before expiry (capped at half the credentials' lifetime).
    pub before_expiry: Duration,
    /// Up to this much earlier, at random.
    pub jitter: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            before_expiry: Duration::from_secs(300),
            jitter: Duration::from_secs(60),
        }
    }
}

/// Metrics a cache reports into.
#[derive(Debug, Clone)]
pub struct RefreshMetrics {
    pub attempts: IntCounterVec,
    pub duration: HistogramVec,
}

/// A cached, refreshing source of credentials for one principal.
#[derive(Debug)]
pub struct CredentialCache {
    principal: String,
    provider: SharedCredentialsProvider,
    current: ArcSwapOption<Fetched>,
    /// Single flight: one provider call at a time; the others wait and reuse its result.
    refresh: tokio::sync::Mutex<()>,
    policy: RefreshPolicy,
    metrics: Option<RefreshMetrics>,
    /// The last failed fetch, shared for a moment with every caller that queued behind it, so an
    /// outage costs one provider call per `FAILURE_MEMORY`, not one per waiting request.
    last_failure: ArcSwapOption<(Instant, CredentialsUnavailable)>,
}

/// How long a failed fetch answers for the callers queued behind it.
const FAILURE_MEMORY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Fetched {
    credentials: Arc<Credentials>,
    fetched_at: SystemTime,
}

/// Credentials could not be obtained.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no credentials for {principal}: {message}")]
pub struct CredentialsUnavailable {
    pub principal: String,
    pub message: String,
}

impl CredentialCache {
    pub fn new(
        principal: impl Into<String>,
        provider: SharedCredentialsProvider,
        policy: RefreshPolicy,
        metrics: Option<RefreshMetrics>,
    ) -> Self {
        let principal = principal.into();
        if let Some(m) = &metrics {
            // Both results exist from the start, at 0: the first failure is an increase that
            // `increase(...[15m]) > 0` alerts see (deploy/prometheus/alerts.yml).
            for result in ["success", "failure"] {
                m.attempts.with_label_values(&[&principal, result]);
            }
        }
        Self {
            principal,
            provider,
            current: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(()),
            policy,
            metrics,
            last_failure: ArcSwapOption::empty(),
        }
    }

    /// The principal label (`base`, or `identity:<name>` for an assumed role).
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// Valid credentials: the cached ones while they have not expired; otherwise (none yet, or
    /// expired because refreshes failed) a provider call, shared by every concurrent caller.
    pub async fn get(&self) -> Result<Arc<Credentials>, CredentialsUnavailable> {
        if let Some(c) = self.valid_now() {
            return Ok(c);
        }
        let _flight = self.refresh.lock().await;
        if let Some(c) = self.valid_now() {
            return Ok(c);
        }
        if let Some(failure) = self.last_failure.load_full() {
            if failure.0.elapsed() < FAILURE_MEMORY {
                return Err(failure.1.clone());
            }
        }
        self.fetch().await
    }

    /// The credentials held now, valid or not, without fetching (to keep them out of logs).
    pub fn held(&self) -> Option<Arc<Credentials>> {
        self.current.load_full().map(|f| f.credentials.clone())
    }

    /// Fetches new credentials now (single flight with `get`).
    pub async fn refresh(&self) -> Result<Arc<Credentials>, CredentialsUnavailable> {
        let _flight = self.refresh.lock().await;
        self.fetch().await
    }

    fn valid_now(&self) -> Option<Arc<Credentials>> {
        let f = self.current.load_full()?;
        f.credentials
            .expiry()
            .is_none_or(|e| e > SystemTime::now())
            .then(|| f.credentials.clone())
    }

    async fn fetch(&self) -> Result<Arc<Credentials>, CredentialsUnavailable> {
        let started = Instant::now();
        let result = self.provider.provide_credentials().await;
        let result_label = if result.is_ok() { "success" } else { "failure" };
        if let Some(m) = &self.metrics {
            m.attempts.with_label_values(&[&self.principal, result_label]).inc();
            m.duration
                .with_label_values(&[&self.principal])
                .observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                self.current.store(Some(Arc::new(Fetched {
                    credentials: fresh.clone(),
                    fetched_at: SystemTime::now(),
                })));
                tracing::info!(principal = %self.principal, expires_in_seconds = self.seconds_left().unwrap_or(-1.0), "Credentials obtained.");
                Ok(fresh)
            }
            Err(error) => {
                let message = error_chain(&error);
                match self.valid_now() {
                    Some(c) => {
                        tracing::warn!(principal = %self.principal, error = %message, "Credential refresh failed; the current credentials keep serving until they expire.");
                        Ok(c)
                    }
                    None => {
                        tracing::error!(principal = %self.principal, error = %message, "No valid credentials: this principal's requests fail until a fetch succeeds.");
                        let failure = CredentialsUnavailable {
                            principal: self.principal.clone(),
                            message,
                        };
                        self.last_failure
                            .store(Some(Arc::new((Instant::now(), failure.clone()))));
                        Err(failure)
                    }
                }
            }
        }
    }

    /// Whether valid credentials are cached.
    pub fn is_ready(&self) -> bool {
        self.valid_now().is_some()
    }

    /// Seconds until the cached credentials expire; `None` when there are none or they never expire.
    pub fn seconds_left(&self) -> Option<f64> {
        let f = self.current.load_full()?;
        let expiry = f.credentials.expiry()?;
        Some(match expiry.duration_since(SystemTime::now()) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        })
    }

    /// When the background refresher should next refresh, if the credentials expire at all.
    fn next_refresh(&self) -> Option<SystemTime> {
        let f = self.current.load_full()?;
        let expiry = f.credentials.expiry()?;
        let lifetime = expiry.duration_since(f.fetched_at).unwrap_or_default();
        let ahead = self.policy.before_expiry.min(lifetime / 2);
        let jitter_cap = self.policy.jitter.min(lifetime / 4);
        let jitter = if jitter_cap.is_zero() {
            Duration::ZERO
        } else {
            rand::thread_rng().gen_range(Duration::ZERO..jitter_cap)
        };
        Some(expiry - ahead - jitter)
    }

    /// Runs until `stop` fires: refreshes ahead of expiry, retrying failures with backoff.
    pub async fn run_refresher(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = match (self.is_ready(), self.next_refresh()) {
                (false, _) => backoff,
                (true, None) => return, // static credentials: nothing to refresh
                (true, Some(at)) => at.duration_since(SystemTime::now()).unwrap_or_default(),
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            let before = self.current.load_full().map(|f| f.fetched_at);
            let _ = self.refresh().await;
            let after = self.current.load_full().map(|f| f.fetched_at);
            if after != before {
                backoff = Duration::from_secs(1);
            } else {
                // Failed: try again soon, but never more often than every second, nor less than
                // every 30 s.
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Every principal apgate signs as: its base credentials and one assumed role per identity that
/// names a `role_arn`.
#[derive(Debug)]
pub struct CredentialSet {
    pub base: Arc<CredentialCache>,
    pub roles: HashMap<Arc<str>, Arc<CredentialCache>>,
}

impl CredentialSet {
    /// Builds the providers the configuration names. Nothing is fetched yet.
    pub async fn build(config: &Config, metrics: Option<RefreshMetrics>) -> Self {
        let policy = RefreshPolicy {
            before_expiry: config.credential_refresh.before_expiry,
            jitter: config.credential_refresh.jitter,
        };
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(config.sts.region.clone()));
        if let Some(url) = &config.sts.endpoint_url {
            // Only STS calls use this SdkConfig, so the endpoint override only reaches STS.
            loader = loader.endpoint_url(url.clone());
        }
        if let CredentialsConfig::Static {
            access_key_id,
            secret_access_key,
            session_token,
        } = &config.credentials
        {
            loader = loader.credentials_provider(Credentials::new(
                access_key_id,
                secret_access_key.expose(),
                session_token.as_ref().map(|t| t.expose().to_owned()),
                None,
                "apgate-static",
            ));
        }
        let sdk = loader.load().await;
        let base_provider = match sdk.credentials_provider() {
            Some(p) => p,
            None => SharedCredentialsProvider::new(aws_config::default_provider::credentials::default_provider().await),
        };
        let base = Arc::new(CredentialCache::new("base", base_provider, policy, metrics.clone()));
        let mut roles = HashMap::new();
        for identity in &config.identities {
            let Some(role) = &identity.role else { continue };
            let mut builder = AssumeRoleProvider::builder(role.arn.clone())
                .configure(&sdk)
                .session_name(role.session_name.clone());
            if let Some(id) = &role.external_id {
                builder = builder.external_id(id.clone());
            }
            if let Some(policy) = &role.session_policy {
                builder = builder.policy(policy.clone());
            }
            if let Some(d) = role.session_duration {
                builder = builder.session_length(d);
            }
            let provider = builder.build_from_provider(CachedProvider(base.clone())).await;
            let principal = format!("identity:{}", identity.name);
            let cache = CredentialCache::new(
                principal,
                SharedCredentialsProvider::new(provider),
                policy,
                metrics.clone(),
            );
            roles.insert(Arc::from(identity.name.as_str()), Arc::new(cache));
        }
        Self { base, roles }
    }

    /// The cache whose credentials sign `identity`'s requests.
    pub fn for_identity(&self, identity: &str) -> &Arc<CredentialCache> {
        self.roles.get(identity).unwrap_or(&self.base)
    }

    /// Every cache, base first.
    pub fn all(&self) -> impl Iterator<Item = &Arc<CredentialCache>> {
        std::iter::once(&self.base).chain(self.roles.values())
    }

    /// Whether every principal has valid credentials.
    pub fn is_ready(&self) -> bool {
        self.all().all(|c| c.is_ready())
    }

    /// Fetches every principal's credentials once (at start-up); failures are logged, not fatal.
    pub async fn warm_up(&self) {
        let _ = self.base.get().await;
        for cache in self.roles.values() {
            let _ = cache.get().await;
        }
    }
}

/// Reports `apgate_credentials_expiry_seconds{principal}`, computed when scraped.
#[derive(Debug)]
pub struct ExpiryCollector {
    /// The current state's caches (replaced on reload).
    caches: Arc<arc_swap::ArcSwap<Vec<Arc<CredentialCache>>>>,
    desc: Vec<prometheus::core::Desc>,
}

impl ExpiryCollector {
    pub fn new(caches: Arc<arc_swap::ArcSwap<Vec<Arc<CredentialCache>>>>) -> Result<Self, prometheus::Error> {
        let desc = prometheus::core::Desc::new(
            EXPIRY_SECONDS.to_owned(),
            "Seconds until each principal's cached credentials expire (absent when they never expire).".to_owned(),
            vec!["principal".to_owned()],
            HashMap::new(),
        )?;
        Ok(Self {
            caches,
            desc: vec![desc],
        })
    }
}

impl prometheus::core::Collector for ExpiryCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.desc.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let Ok(gauge) = prometheus::GaugeVec::new(
            prometheus::Opts::new(
                EXPIRY_SECONDS,
                "Seconds until each principal's cached credentials expire (absent when they never expire).",
            ),
            &["principal"],
        ) else {
            return Vec::new();
        };
        for cache in self.caches.load().iter() {
            if let Some(left) = cache.seconds_left() {
                gauge.with_label_values(&[cache.principal()]).set(left);
            }
        }
        prometheus::core::Collector::collect(&gauge)
    }
}

/// The metric [`ExpiryCollector`] reports.
pub const EXPIRY_SECONDS: &str = "apgate_credentials_expiry_seconds";

/// An error and its sources on one line: the SDK's top-level messages ("an error occurred while
/// loading credentials") say nothing of the cause.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut s = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

/// A cache as a credentials provider, so assumed roles are obtained with cached base credentials.
#[derive(Debug, Clone)]
pub struct CachedProvider(pub Arc<CredentialCache>);

impl ProvideCredentials for CachedProvider {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            self.0
                .get()
                .await
                .map(|c| (*c).clone())
                .map_err(provider::error::CredentialsError::provider_error)
        })
    }
}

#[cfg(test)]
mod tests;
