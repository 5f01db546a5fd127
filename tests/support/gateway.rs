//! Shared by the in-process integration tests (tests/in_process/: `proxy`, `bad_input`, `ssrf`, and
//! through `tests/support/harness.rs` `faults` and `retries`): the configuration every test starts
//! from, an in-process apgate started from it, the check that a request the upstream got was signed
//! by apgate, and the pieces of reading apgate's raw answers that every raw-socket client shares.

#![allow(dead_code, unreachable_pub)] // Not every test module uses every helper.
#![allow(missing_debug_implementations)]
#![allow(clippy::unwrap_used)] // Test helpers: a failure here is a test failure.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method};

use apgate::app::{serve, Bound};
use apgate::config::Config;
use apgate::identity::sigv4::Verified;
use apgate::identity::SigV4Verifier;
use apgate::s3::addressing::parse_target;
use apgate::secret::Secret;

/// The host of `bob-ap`, the access point of bob's route.
pub const AP_HOST: &str = "bob-ap-123456789012.s3-accesspoint.us-east-1.amazonaws.com";
/// apgate's own (upstream) key.
pub const UPSTREAM_AKID: &str = "AKIDUPSTREAM00000001";
pub const UPSTREAM_SECRET: &str = "upstream-secret-key-0123456789abcdef";

// ---------------------------------------------------------------------------------------------
// The configuration.

/// A `[[listeners]]` table: `name` on 127.0.0.1:0 with the given `identity_methods` (TOML array).
pub fn listener(name: &str, identity_methods: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "{name}"
address = "127.0.0.1:0"
identity_methods = {identity_methods}
"#
    )
}

/// A `source` listener that makes every local caller (127.0.0.0/8) `bob`.
pub fn source_listener(name: &str) -> String {
    format!(
        r#"{}
[[listeners.sources]]
cidr = "127.0.0.0/8"
identity = "bob"
"#,
        listener(name, r#"["source"]"#)
    )
}

/// What a test adds to the shared configuration; each part is TOML text, empty for none.
#[derive(Debug, Default, Clone, Copy)]
pub struct Conf<'a> {
    /// The `[[listeners]]` tables; when empty, one `source_listener("sidecar")`.
    pub listeners: &'a str,
    /// More top-level tables (`[server]`, `[sigv4]`, `[addressing]`, ...).
    pub tables: &'a str,
    /// Lines of `[upstream]` after its region and endpoint (and tables below it, such as
    /// `[upstream.retry]`).
    pub upstream: &'a str,
    /// What follows the `bob` identity: its keys, more identities.
    pub identities: &'a str,
    /// Routes after bob's (`shared/Bob/*` through `bob-ap`).
    pub routes: &'a str,
}

/// The configuration text: an admin listener, the listeners, `[upstream]` in us-east-1 at
/// `endpoint` (a URL) with apgate's static key, the identity `bob` who may use `shared/Bob/*`
/// through `bob-ap`, and what `conf` adds. Every address is 127.0.0.1:0, the admin one first.
pub fn config_toml(endpoint: &str, conf: Conf<'_>) -> String {
    let listeners = if conf.listeners.is_empty() {
        source_listener("sidecar")
    } else {
        conf.listeners.to_owned()
    };
    format!(
        r#"
[admin]
address = "127.0.0.1:0"
{listeners}
{tables}

[upstream]
region = "us-east-1"
endpoint = {{ mode = "custom", url = "{endpoint}" }}
{upstream}

[credentials]
type = "static"
access_key_id = {{ insecure_inline = "{UPSTREAM_AKID}" }}
secret_access_key = {{ insecure_inline = "{UPSTREAM_SECRET}" }}

[[identities]]
name = "bob"
{identities}

[[routes]]
identity = "bob"
bucket = "shared"
prefix = "Bob/"
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/bob-ap"
{routes}
"#,
        tables = conf.tables,
        upstream = conf.upstream,
        identities = conf.identities,
        routes = conf.routes,
    )
}

// ---------------------------------------------------------------------------------------------
// apgate.

/// An in-process apgate; it drains when this is dropped or `shut_down`.
pub struct Gw {
    /// The first data listener.
    pub addr: SocketAddr,
    /// Every data listener: (name, address), in configuration order.
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin: SocketAddr,
    pub running: Arc<apgate::app::Gateway>,
    /// The configuration text it started from.
    pub toml: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub served: tokio::task::JoinHandle<()>,
}

impl Gw {
    /// Binds every address of `toml` and serves it.
    pub async fn start(toml: String) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let config = Config::from_toml(&toml).unwrap();
        let bound = Bound::bind(&config).await.unwrap();
        let listeners: Vec<(String, SocketAddr)> = bound
            .data
            .iter()
            .map(|(name, socket)| (name.clone(), socket.local_addr().unwrap()))
            .collect();
        let admin = bound.admin.local_addr().unwrap();
        let running = apgate::app::Gateway::new(config).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve(running.clone(), bound, async move {
            let _ = rx.await;
        }));
        Self {
            addr: listeners[0].1,
            listeners,
            admin,
            running,
            toml,
            stop: Some(tx),
            served,
        }
    }

    /// The address of the data listener called `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.listeners.iter().find(|(n, _)| n == name).unwrap().1
    }

    pub fn metrics(&self) -> String {
        self.running.metrics.render()
    }

    /// Starts draining (as SIGTERM does).
    pub fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the upstream can check.

/// Verifies a request the upstream got (`path_and_query` as sent to `AP_HOST`) as the upstream
/// would: a SigV4 signature by apgate's upstream key, valid now.
pub fn verify_upstream_signature(
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
) -> Result<Verified, String> {
    let verifier = SigV4Verifier::new(
        [(
            UPSTREAM_AKID.to_owned(),
            Arc::from("apgate"),
            Secret::new(UPSTREAM_SECRET),
        )],
        vec!["us-east-1".to_owned()],
        Duration::from_secs(900),
    );
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let target = parse_target(
        Some(AP_HOST),
        path,
        query,
        &["s3-accesspoint.us-east-1.amazonaws.com".to_owned()],
    )
    .map_err(|e| format!("{e:?}"))?;
    verifier
        .verify(method, &target, headers, SystemTime::now())
        .map_err(|e| format!("{e:?}"))
}

// ---------------------------------------------------------------------------------------------
// apgate's answers, as raw bytes.

/// The first final (not `100 Continue`) response head in `buf`: its status, its text (status line
/// and header lines) and the bytes after it; `None` until a whole head has arrived.
pub fn final_head(mut buf: &[u8]) -> Option<(u16, &str, &[u8])> {
    loop {
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&buf[..end]).ok()?;
        let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
        if status == 100 {
            buf = &buf[end + 4..];
            continue;
        }
        return Some((status, head, &buf[end + 4..]));
    }
}

/// The S3 `<Code>` of an error body.
pub fn s3_code(body: &str) -> Option<&str> {
    let start = body.find("<Code>")? + "<Code>".len();
    let end = body[start..].find("</Code>")? + start;
    Some(&body[start..end])
}
