//! apgate's own credentials: a provider (static, or the aws-config default chain) behind a
//! single-flight cache that refreshes ahead of expiry.
//!
//! The default chain (env, profile, web identity, ECS container credentials, IMDSv2) has no cache
//! of its own, so without this every request would call the metadata endpoint.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;

use crate::config::CredentialsConfig;

/// Refresh this long before the credentials expire.
const REFRESH_AHEAD: Duration = Duration::from_secs(300);

/// A cached, refreshing source of credentials.
#[derive(Debug)]
pub struct CredentialCache {
    provider: SharedCredentialsProvider,
    current: ArcSwapOption<Credentials>,
    /// Single flight: one refresh at a time; the others wait and reuse its result.
    refresh: tokio::sync::Mutex<()>,
}

/// Credentials could not be obtained.
#[derive(Debug, thiserror::Error)]
#[error("no credentials: {0}")]
pub struct CredentialsUnavailable(String);

impl CredentialCache {
    /// Builds the provider the configuration names.
    pub async fn from_config(config: &CredentialsConfig, region: &str) -> Self {
        let provider = match config {
            CredentialsConfig::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => SharedCredentialsProvider::new(Credentials::new(
                access_key_id,
                secret_access_key.expose(),
                session_token.as_ref().map(|t| t.expose().to_owned()),
                None,
                "apgate-static",
            )),
            CredentialsConfig::Default => {
                let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(region.to_owned()))
                    .load()
                    .await;
                match sdk.credentials_provider() {
                    Some(p) => p,
                    None => SharedCredentialsProvider::new(
                        aws_config::default_provider::credentials::default_provider().await,
                    ),
                }
            }
        };
        Self::new(provider)
    }

    pub fn new(provider: SharedCredentialsProvider) -> Self {
        Self {
            provider,
            current: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    /// Current credentials; refreshes when they are missing or about to expire. When a refresh
    /// fails, credentials that have not yet expired keep serving.
    pub async fn get(&self) -> Result<Arc<Credentials>, CredentialsUnavailable> {
        let now = SystemTime::now();
        if let Some(c) = self.current.load_full() {
            if !needs_refresh(&c, now) {
                return Ok(c);
            }
        }
        let _flight = self.refresh.lock().await;
        // Someone else may have refreshed while we waited.
        let now = SystemTime::now();
        let cached = self.current.load_full();
        if let Some(c) = &cached {
            if !needs_refresh(c, now) {
                return Ok(c.clone());
            }
        }
        match self.provider.provide_credentials().await {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                self.current.store(Some(fresh.clone()));
                Ok(fresh)
            }
            Err(error) => match cached {
                Some(c) if c.expiry().is_none_or(|e| e > now) => {
                    tracing::warn!(%error, "Credential refresh failed; the current credentials keep serving until they expire.");
                    Ok(c)
                }
                _ => Err(CredentialsUnavailable(error.to_string())),
            },
        }
    }

    /// Whether valid credentials are cached.
    pub fn is_ready(&self) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|c| c.expiry().is_none_or(|e| e > SystemTime::now()))
    }
}

fn needs_refresh(c: &Credentials, now: SystemTime) -> bool {
    c.expiry().is_some_and(|e| e <= now + REFRESH_AHEAD)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use aws_credential_types::provider::{error::CredentialsError, future};

    use super::*;

    #[derive(Debug)]
    struct Counting {
        calls: Arc<AtomicUsize>,
        lifetime: Duration,
        fail_after: usize,
    }

    impl ProvideCredentials for Counting {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let result = if n >= self.fail_after {
                Err(CredentialsError::provider_error("metadata endpoint down"))
            } else {
                Ok(Credentials::new(
                    format!("AKID{n}"),
                    "secret",
                    None,
                    Some(SystemTime::now() + self.lifetime),
                    "test",
                ))
            };
            future::ProvideCredentials::ready(result)
        }
    }

    fn cache(lifetime: Duration, fail_after: usize) -> (CredentialCache, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let p = Counting {
            calls: calls.clone(),
            lifetime,
            fail_after,
        };
        (CredentialCache::new(SharedCredentialsProvider::new(p)), calls)
    }

    #[tokio::test]
    async fn long_lived_credentials_are_fetched_once() {
        let (c, calls) = cache(Duration::from_secs(3600), usize::MAX);
        for _ in 0..100 {
            assert_eq!(c.get().await.unwrap().access_key_id(), "AKID0");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(c.is_ready());
    }

    #[tokio::test]
    async fn credentials_near_expiry_are_refreshed() {
        let (c, calls) = cache(Duration::from_secs(120), usize::MAX);
        assert_eq!(c.get().await.unwrap().access_key_id(), "AKID0");
        assert_eq!(
            c.get().await.unwrap().access_key_id(),
            "AKID1",
            "inside the refresh window"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_serving_unexpired_credentials() {
        let (c, _) = cache(Duration::from_secs(120), 1);
        assert_eq!(c.get().await.unwrap().access_key_id(), "AKID0");
        assert_eq!(c.get().await.unwrap().access_key_id(), "AKID0");
    }

    #[tokio::test]
    async fn no_credentials_at_all_is_an_error() {
        let (c, _) = cache(Duration::from_secs(120), 0);
        assert!(c.get().await.is_err());
        assert!(!c.is_ready());
    }
}
