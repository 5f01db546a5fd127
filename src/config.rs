//! Configuration: parsed once from TOML ([`raw`]) into validated types ([`validate`]).
//!
//! Nothing downstream of [`Config::from_toml`] sees strings it must still check: addresses are
//! `SocketAddr`s, access points are [`AccessPoint`]s, secrets are [`Secret`]s.

mod raw;
mod validate;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

pub use validate::{ConfigError, Problem, PLACEHOLDER_SECRET};

use crate::routing::pattern::{AccessPointTemplate, BucketPattern};
use crate::s3::{AccessPoint, BucketName, OperationClass};
use crate::secret::Secret;

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub admin: AdminConfig,
    pub server: ServerConfig,
    pub access_log: AccessLogConfig,
    pub listeners: Vec<ListenerConfig>,
    pub sigv4: SigV4Config,
    pub addressing: AddressingConfig,
    pub upstream: UpstreamConfig,
    pub credentials: CredentialsConfig,
    pub credential_refresh: CredentialRefreshConfig,
    pub sts: StsConfig,
    pub identities: Vec<IdentityConfig>,
    pub routes: Vec<RouteConfig>,
}

/// Connection handling on the data plane.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// How long a client may take to send a request head (frees slots held by slow clients).
    pub header_read_timeout: Duration,
    /// The largest request head accepted (request line and headers).
    pub max_header_bytes: usize,
    /// On SIGTERM/SIGINT, how long in-flight requests get to finish.
    pub shutdown_grace_period: Duration,
    /// Requests handled at once, in all; more get `503 SlowDown`.
    pub max_concurrent_requests: usize,
    /// Requests handled at once for one identity; more get `503 SlowDown`.
    pub max_concurrent_requests_per_identity: usize,
    /// Open client connections per listener; more are closed as they are accepted.
    pub max_connections: usize,
    /// Open client connections per source address, across listeners; more are closed as they are
    /// accepted.
    pub max_connections_per_source: usize,
    /// A client that does not read its answer for this long is cut off (its slots go back).
    pub client_send_timeout: Duration,
    /// The most of a refused request body apgate reads and throws away so the client can read the
    /// refusal; a longer body closes the connection instead.
    pub max_discard_bytes: u64,
    /// Refused bodies read and thrown away at once; more close their connection at once.
    pub max_concurrent_discards: usize,
    /// A request body the client stops sending for this long fails the request with
    /// `400 RequestTimeout` (and aborts the upstream request).
    pub client_body_idle_timeout: Duration,
    /// The most a client connection's read buffer grows to (it starts at 8 KiB and grows only
    /// while reads fill it): the size of the body frames an upload streams in.
    pub read_buffer_bytes: usize,
    /// Data-plane threads, each with its own event loop, share of the connections and upstream
    /// pool (read at start-up).
    pub threads: usize,
}

/// The access log (one JSON line per request).
#[derive(Debug, Clone, Copy)]
pub struct AccessLogConfig {
    pub key: KeyLogging,
}

/// How object keys appear in the access log (they may be personal data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLogging {
    Full,
    /// The first 16 hex characters of the key's SHA-256: correlatable, not readable.
    Hashed,
    Omitted,
}

/// The admin port: `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub address: SocketAddr,
}

/// A data-plane listener and how it identifies callers.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    /// Tried in order; the first method that applies decides.
    pub identity_methods: Vec<IdentityMethod>,
    /// For [`IdentityMethod::Source`]: source networks and the identity each stands for. The most
    /// specific (longest) matching network wins.
    pub sources: Vec<(IpNet, String)>,
    /// HTTPS instead of HTTP, optionally verifying client certificates.
    pub tls: Option<ListenerTls>,
    /// For [`IdentityMethod::Mtls`]: certificate subject → identity.
    pub client_certificates: Vec<(String, String)>,
}

/// A listener's TLS settings.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub material: crate::tls::TlsMaterial,
    pub identity_from: crate::tls::SubjectSource,
}

/// One way of working out who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityMethod {
    /// An `Authorization: AWS4-HMAC-SHA256 ...` header or a SigV4 presigned URL made with a key apgate
    /// issued.
    SigV4,
    /// Legacy SigV2 (`Authorization: AWS key:signature`, or `?AWSAccessKeyId=&Signature=&Expires=`)
    /// made with a key apgate issued. Opt-in.
    SigV2,
    /// The source address of the connection.
    Source,
    /// A verified client certificate (TLS listeners with a client CA).
    Mtls,
}

/// Inbound SigV4 checks.
#[derive(Debug, Clone)]
pub struct SigV4Config {
    /// Credential-scope regions a client may sign with. Clients sign with their own configured
    /// region; outbound, apgate always signs with the access point's region.
    pub accepted_regions: Vec<String>,
    /// How far `x-amz-date` may be from apgate's clock (S3 allows 15 minutes).
    pub max_clock_skew: Duration,
}

/// Inbound addressing.
#[derive(Debug, Clone)]
pub struct AddressingConfig {
    /// Base domains for virtual-hosted requests (`bucket.<domain>`), lower case.
    pub virtual_host_domains: Vec<String>,
}

/// Where re-signed requests go.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The default region (used for credential look-ups); requests are signed for each access
    /// point's own region.
    pub region: String,
    pub endpoint: Endpoint,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    /// A response body that sends nothing for this long is cut off (the client sees an aborted body).
    pub body_idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// The most an upstream connection's read buffer grows to: the size of the body frames a
    /// download streams in.
    pub read_buffer_bytes: usize,
    pub retry: RetryConfig,
}

/// When a failed upstream exchange is tried again (see [`crate::retry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    /// Attempts in all, the first included; 1 disables retries.
    pub max_attempts: u32,
    /// The largest request body held in memory so that it can be sent again.
    pub replay_buffer_bytes: usize,
    /// The backoff before the first retry is at most this; it doubles per retry.
    pub initial_backoff: Duration,
    /// The backoff never exceeds this.
    pub max_backoff: Duration,
    /// No retry starts (or sleeps) past this time after the first attempt was sent.
    pub deadline: Duration,
}

/// How the upstream is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `https://{access point host}`.
    Aws,
    /// Connect to this URL; the Host header and signature still name the access point host.
    Custom(http::Uri),
}

/// apgate's own credentials, used to sign outbound requests.
#[derive(Debug, Clone)]
pub enum CredentialsConfig {
    /// The aws-config default chain: env, profile, web identity, ECS container credentials, IMDSv2.
    Default,
    Static {
        access_key_id: String,
        secret_access_key: Secret,
        session_token: Option<Secret>,
    },
}

/// When cached credentials are renewed.
#[derive(Debug, Clone, Copy)]
pub struct CredentialRefreshConfig {
    /// Refresh this long before expiry (or at half the lifetime, if that is sooner).
    pub before_expiry: Duration,
    /// Up to this much earlier, at random, so replicas do not refresh in step.
    pub jitter: Duration,
}

/// Where per-identity roles are assumed.
#[derive(Debug, Clone)]
pub struct StsConfig {
    pub region: String,
    /// An STS endpoint to use instead of the regional default (a VPC interface endpoint; tests).
    pub endpoint_url: Option<String>,
}

/// A caller apgate knows.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub name: String,
    /// SigV4 keys apgate issued to this caller.
    pub keys: Vec<KeyConfig>,
    /// The role apgate assumes to sign this caller's requests, so access point policies can name
    /// the caller's own role. `None`: apgate's base credentials sign.
    pub role: Option<RoleConfig>,
}

/// A role assumed for one identity.
#[derive(Debug, Clone)]
pub struct RoleConfig {
    pub arn: String,
    pub external_id: Option<String>,
    pub session_name: String,
    pub session_policy: Option<String>,
    pub session_duration: Option<Duration>,
}

/// An inbound access key.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub access_key_id: String,
    pub secret_access_key: Secret,
}

/// A routing rule: (identity, bucket, key prefix, operations) → access point.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub identity: String,
    pub bucket: RouteBucket,
    pub prefix: String,
    pub operations: Vec<OperationClass>,
    pub access_point: RouteAccessPoint,
    /// Requests that change who may access objects, which this route lets through (none unless
    /// listed): apgate signs them with an identity that can do more than the caller.
    pub allow: Vec<AccessChange>,
    /// The KMS keys a request through this route may name in
    /// `x-amz-server-side-encryption-aws-kms-key-id`, as the client writes them (none unless
    /// listed): S3 uses the key with apgate's role, which may use keys the caller may not.
    pub kms_key_ids: Vec<String>,
}

/// The buckets a route is for: one name, or a pattern (docs/CONFIG.md "Route patterns").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteBucket {
    Name(BucketName),
    Pattern(BucketPattern),
}

impl RouteBucket {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Name(b) => b.as_str(),
            Self::Pattern(p) => p.as_str(),
        }
    }
}

impl std::fmt::Display for RouteBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A route's access point: one, or a template over the bucket name (pattern routes only; a
/// template on a named bucket is filled in when the configuration loads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAccessPoint {
    Fixed(AccessPoint),
    Template(AccessPointTemplate),
}

impl RouteAccessPoint {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Fixed(ap) => ap.arn(),
            Self::Template(t) => t.as_str(),
        }
    }
}

/// A request that widens access to objects beyond the routes: forwarded only under a route that
/// lists it in `allow` (docs/CONFIG.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AccessChange {
    /// `"acl"`: a canned ACL other than `private` and `bucket-owner-full-control`, any
    /// `x-amz-grant-*` header, and PutObjectAcl.
    Acl,
    /// `"bypass-governance-retention"`: `x-amz-bypass-governance-retention: true`, which deletes or
    /// shortens governance-mode retention.
    BypassGovernanceRetention,
    /// `"object-lock"`: any `x-amz-object-lock-*` header (a retention mode and date, a legal hold
    /// on an object being written), PutObjectRetention and PutObjectLegalHold. Compliance-mode
    /// retention cannot be undone by anyone until it ends, the account's root included.
    ObjectLock,
}

impl AccessChange {
    pub const ALL: [Self; 3] = [Self::Acl, Self::BypassGovernanceRetention, Self::ObjectLock];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Acl => "acl",
            Self::BypassGovernanceRetention => "bypass-governance-retention",
            Self::ObjectLock => "object-lock",
        }
    }
}

impl Config {
    /// Parses and validates a configuration. Secrets named by `env` or `file` are read now.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        validate::from_toml(text, &validate::ProcessEnv)
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::single("", format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text)
    }

    /// As [`Config::load`], for `check` and `explain`, which a pipeline runs without the secrets:
    /// a secret source that gives nothing is returned as a note (its key path and why) and reads as
    /// [`PLACEHOLDER_SECRET`]. `serve` and reloads use [`Config::load`], which refuses it.
    pub fn load_without_secrets(path: &Path) -> Result<(Self, Vec<Problem>), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::single("", format!("cannot read {}: {e}", path.display())))?;
        validate::from_toml_without_secrets(&text, &validate::ProcessEnv)
    }
}
