//! The TOML shape of the configuration file. Only this module derives `Deserialize`; everything
//! downstream takes the validated [`crate::config::Config`].

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) admin: RawAdmin,
    #[serde(default)]
    pub(crate) server: RawServer,
    #[serde(default)]
    pub(crate) access_log: RawAccessLog,
    #[serde(default)]
    pub(crate) listeners: Vec<RawListener>,
    #[serde(default)]
    pub(crate) sigv4: RawSigV4,
    #[serde(default)]
    pub(crate) addressing: RawAddressing,
    pub(crate) upstream: RawUpstream,
    pub(crate) credentials: RawCredentials,
    #[serde(default)]
    pub(crate) credential_refresh: RawCredentialRefresh,
    #[serde(default)]
    pub(crate) sts: RawSts,
    #[serde(default)]
    pub(crate) identities: Vec<RawIdentity>,
    #[serde(default)]
    pub(crate) routes: Vec<RawRoute>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) header_read_timeout_seconds: Option<f64>,
    pub(crate) max_header_bytes: Option<usize>,
    pub(crate) shutdown_grace_period_seconds: Option<f64>,
    pub(crate) max_concurrent_requests: Option<usize>,
    pub(crate) max_concurrent_requests_per_identity: Option<usize>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_connections_per_source: Option<usize>,
    pub(crate) client_send_timeout_seconds: Option<f64>,
    pub(crate) max_discard_bytes: Option<u64>,
    pub(crate) max_concurrent_discards: Option<usize>,
    pub(crate) client_body_idle_timeout_seconds: Option<f64>,
    pub(crate) read_buffer_bytes: Option<usize>,
    pub(crate) threads: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccessLog {
    pub(crate) key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub(crate) name: String,
    pub(crate) address: String,
    pub(crate) identity_methods: Vec<String>,
    #[serde(default)]
    pub(crate) sources: Vec<RawSource>,
    pub(crate) tls: Option<RawTls>,
    #[serde(default)]
    pub(crate) client_certificates: Vec<RawClientCertificate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) certificate_chain_file: PathBuf,
    pub(crate) private_key_file: PathBuf,
    pub(crate) client_ca_file: Option<PathBuf>,
    pub(crate) client_certificate: Option<String>,
    pub(crate) client_identity_from: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClientCertificate {
    pub(crate) subject: String,
    pub(crate) identity: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSource {
    pub(crate) cidr: String,
    pub(crate) identity: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSigV4 {
    pub(crate) accepted_regions: Option<Vec<String>>,
    pub(crate) max_clock_skew_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAddressing {
    #[serde(default)]
    pub(crate) virtual_host_domains: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub(crate) region: String,
    pub(crate) endpoint: Option<RawEndpoint>,
    pub(crate) connect_timeout_seconds: Option<f64>,
    pub(crate) response_header_timeout_seconds: Option<f64>,
    pub(crate) body_idle_timeout_seconds: Option<f64>,
    pub(crate) pool_idle_timeout_seconds: Option<f64>,
    pub(crate) pool_max_idle_per_host: Option<usize>,
    pub(crate) read_buffer_bytes: Option<usize>,
    #[serde(default)]
    pub(crate) retry: RawRetry,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub(crate) max_attempts: Option<u32>,
    pub(crate) replay_buffer_bytes: Option<usize>,
    pub(crate) initial_backoff_ms: Option<u64>,
    pub(crate) max_backoff_ms: Option<u64>,
    pub(crate) deadline_seconds: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum RawEndpoint {
    /// The real access point host over HTTPS.
    Aws,
    /// Connect to `url`; the Host header and the signature still name the access point host.
    Custom { url: String },
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
#[allow(clippy::large_enum_variant)] // Parsed once at start-up; size does not matter.
pub(crate) enum RawCredentials {
    /// The aws-config default chain.
    Default,
    /// Fixed keys, for tests and local runs.
    Static {
        access_key_id: RawSecret,
        secret_access_key: RawSecret,
        session_token: Option<RawSecret>,
    },
}

/// Where a secret comes from: exactly one of the fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecret {
    pub(crate) env: Option<String>,
    pub(crate) file: Option<PathBuf>,
    pub(crate) insecure_inline: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCredentialRefresh {
    pub(crate) before_expiry_seconds: Option<u64>,
    pub(crate) jitter_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSts {
    pub(crate) region: Option<String>,
    pub(crate) endpoint_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIdentity {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) keys: Vec<RawKey>,
    pub(crate) role_arn: Option<String>,
    pub(crate) external_id: Option<String>,
    pub(crate) session_name: Option<String>,
    pub(crate) session_policy: Option<String>,
    pub(crate) session_duration_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKey {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: RawSecret,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) identity: String,
    pub(crate) bucket: String,
    #[serde(default)]
    pub(crate) prefix: String,
    pub(crate) operations: Option<Vec<String>>,
    pub(crate) access_point: String,
    #[serde(default)]
    pub(crate) allow: Vec<String>,
    #[serde(default)]
    pub(crate) kms_key_ids: Vec<String>,
}
