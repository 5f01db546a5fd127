use std::sync::atomic::{AtomicUsize, Ordering};

use aws_credential_types::provider::error::CredentialsError;

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

fn cache(lifetime: Duration, fail_after: usize, policy: RefreshPolicy) -> (Arc<CredentialCache>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let p = Counting {
        calls: calls.clone(),
        lifetime,
        fail_after,
    };
    (
        Arc::new(CredentialCache::new(
            "base",
            SharedCredentialsProvider::new(p),
            policy,
            None,
        )),
        calls,
    )
}

#[tokio::test]
async fn valid_credentials_are_fetched_once() {
    let (c, calls) = cache(Duration::from_secs(3600), usize::MAX, RefreshPolicy::default());
    for _ in 0..100 {
        assert_eq!(c.get().await.unwrap().access_key_id(), "AKID0");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(c.is_ready());
    assert!(c.seconds_left().unwrap() > 3590.0);
}

#[tokio::test]
async fn concurrent_first_requests_share_one_fetch() {
    let (c, calls) = cache(Duration::from_secs(3600), usize::MAX, RefreshPolicy::default());
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn({
                let c = c.clone();
                async move { c.get().await.map(|x| x.access_key_id().to_owned()) }
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "AKID0");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn refresh_is_scheduled_ahead_of_expiry_with_jitter() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let policy = RefreshPolicy {
        before_expiry: Duration::from_secs(300),
        jitter: Duration::from_secs(60),
    };
    // An hour's credentials: refresh 300-360 s before expiry.
    let (c, _) = cache(Duration::from_secs(3600), usize::MAX, policy);
    rt.block_on(c.get()).unwrap();
    let expiry = c.current.load_full().unwrap().credentials.expiry().unwrap();
    for _ in 0..50 {
        let ahead = expiry.duration_since(c.next_refresh().unwrap()).unwrap();
        assert!(
            ahead >= Duration::from_secs(300) && ahead < Duration::from_secs(360),
            "{ahead:?}"
        );
    }
    // 60 s credentials: half their life (30 s), minus up to 15 s of jitter.
    let (c, _) = cache(Duration::from_secs(60), usize::MAX, policy);
    rt.block_on(c.get()).unwrap();
    let expiry = c.current.load_full().unwrap().credentials.expiry().unwrap();
    for _ in 0..50 {
        let ahead = expiry.duration_since(c.next_refresh().unwrap()).unwrap();
        assert!(
            ahead >= Duration::from_secs(29) && ahead <= Duration::from_secs(45),
            "{ahead:?}"
        );
    }
}

#[tokio::test]
async fn the_refresher_renews_before_expiry() {
    let policy = RefreshPolicy {
        before_expiry: Duration::from_secs(300),
        jitter: Duration::ZERO,
    };
    let (c, calls) = cache(Duration::from_millis(400), usize::MAX, policy);
    c.get().await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(c.clone().run_refresher(stop_rx));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Refreshed at half-life, several times, and never expired in between.
    assert!(
        calls.load(Ordering::SeqCst) >= 3,
        "{} calls",
        calls.load(Ordering::SeqCst)
    );
    assert!(c.is_ready());
    let _ = stop_tx.send(true);
    task.await.unwrap();
}

#[tokio::test]
async fn a_failed_refresh_keeps_serving_unexpired_credentials() {
    let (c, _) = cache(Duration::from_secs(120), 1, RefreshPolicy::default());
    assert_eq!(c.get().await.unwrap().access_key_id(), "AKID0");
    assert_eq!(
        c.refresh().await.unwrap().access_key_id(),
        "AKID0",
        "provider down: the cached ones serve"
    );
    assert!(c.is_ready());
}

#[tokio::test]
async fn expired_credentials_and_a_dead_provider_are_an_error_then_recover() {
    #[derive(Debug)]
    struct Switch(Arc<std::sync::atomic::AtomicBool>);
    impl ProvideCredentials for Switch {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            future::ProvideCredentials::ready(if self.0.load(Ordering::SeqCst) {
                Ok(Credentials::new(
                    "AKIDUP",
                    "s",
                    None,
                    Some(SystemTime::now() + Duration::from_millis(200)),
                    "t",
                ))
            } else {
                Err(CredentialsError::provider_error("down"))
            })
        }
    }
    let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let c = CredentialCache::new(
        "base",
        SharedCredentialsProvider::new(Switch(up.clone())),
        RefreshPolicy::default(),
        None,
    );
    assert!(c.get().await.is_ok());
    up.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!c.is_ready());
    assert!(c.get().await.is_err());
    up.store(true, Ordering::SeqCst);
    // A failure is remembered for a moment (FAILURE_MEMORY), then the next request fetches again.
    tokio::time::sleep(FAILURE_MEMORY).await;
    assert!(c.get().await.is_ok(), "recovers without a restart");
}

#[tokio::test]
async fn a_cache_serves_as_a_provider() {
    let (c, calls) = cache(Duration::from_secs(3600), usize::MAX, RefreshPolicy::default());
    let p = CachedProvider(c);
    for _ in 0..5 {
        assert_eq!(p.provide_credentials().await.unwrap().access_key_id(), "AKID0");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_outage_costs_one_provider_call_for_all_waiting_requests() {
    let (c, calls) = cache(Duration::from_secs(120), 0, RefreshPolicy::default());
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get().await.is_err() })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap(), "every request fails while the provider is down");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the failure is shared, not retried per request"
    );
    tokio::time::sleep(FAILURE_MEMORY + Duration::from_millis(50)).await;
    assert!(c.get().await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 2, "and retried after a moment");
}
