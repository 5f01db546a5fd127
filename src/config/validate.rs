//! Turns [`RawConfig`] into [`Config`], collecting every problem with the key path it is at.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::raw::{RawConfig, RawCredentials, RawEndpoint, RawRoute, RawSecret};
use super::{
    AccessChange, AccessLogConfig, AddressingConfig, AdminConfig, Config, CredentialRefreshConfig, CredentialsConfig,
    Endpoint, IdentityConfig, IdentityMethod, KeyConfig, KeyLogging, ListenerConfig, ListenerTls, RetryConfig,
    RoleConfig, RouteAccessPoint, RouteBucket, RouteConfig, ServerConfig, SigV4Config, StsConfig, UpstreamConfig,
};
use crate::routing::pattern::{AccessPointTemplate, BucketPattern};
use crate::s3::{AccessPoint, BucketName, OperationClass};
use crate::secret::Secret;

/// Every problem found in a configuration, each with its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

/// One problem: `path` names the key (`routes[2].access_point`), `message` says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn single(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            problems: vec![Problem {
                path: path.into(),
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            if p.path.is_empty() {
                write!(f, "{}", p.message)?;
            } else {
                write!(f, "{}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Where `env` secrets are read from; tests pass a map instead of touching the process.
pub(crate) trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub(crate) struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

struct Checker<'a> {
    problems: Vec<Problem>,
    env: &'a dyn Env,
    /// `Some` when secrets may be absent (`check`, `explain`): each absent one is noted here and
    /// stands in as [`PLACEHOLDER_SECRET`]; `None` when they must be there (`serve`, reload).
    absent: Option<Vec<Problem>>,
}

/// What an absent secret reads as in `check` and `explain`: long enough for every length rule,
/// letters and digits only. Never used to sign or verify anything that leaves the process.
pub const PLACEHOLDER_SECRET: &str = "APGATECHECKPLACEHOLDERSECRET0000";

impl Checker<'_> {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn addr(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    path,
                    format!("{s:?}: want an IP address and port, e.g. \"127.0.0.1:8080\""),
                );
                None
            }
        }
    }

    fn seconds(&mut self, path: &str, v: Option<f64>, default: f64) -> Duration {
        let v = v.unwrap_or(default);
        if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
            self.problem(path, format!("{v}: want a number of seconds above 0 and at most 86400"));
            return Duration::from_secs_f64(default);
        }
        Duration::from_secs_f64(v)
    }

    /// A connection read buffer's ceiling: 1 MiB unless set, 64 KiB to 16 MiB.
    fn buffer_size(&mut self, path: &str, v: Option<usize>) -> usize {
        const DEFAULT: usize = 1 << 20;
        let v = v.unwrap_or(DEFAULT);
        if !(64 * 1024..=16 << 20).contains(&v) {
            self.problem(path, format!("{v}: want 65536 to 16777216 bytes"));
            return DEFAULT;
        }
        v
    }

    /// A secret source that gave nothing: a problem, or (for `check` and `explain`) a note and the
    /// placeholder.
    fn absent_secret(&mut self, path: String, message: String) -> Option<Secret> {
        match &mut self.absent {
            Some(absent) => {
                absent.push(Problem { path, message });
                Some(Secret::new(PLACEHOLDER_SECRET))
            }
            None => {
                self.problem(path, message);
                None
            }
        }
    }

    fn secret(&mut self, path: &str, raw: &RawSecret) -> Option<Secret> {
        let given = [raw.env.is_some(), raw.file.is_some(), raw.insecure_inline.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            self.problem(
                path,
                "give exactly one of env = \"NAME\", file = \"/path\" or insecure_inline = \"...\"",
            );
            return None;
        }
        if let Some(name) = &raw.env {
            return match self.env.var(name) {
                Some(v) if !v.trim().is_empty() => Some(Secret::new(v.trim())),
                Some(_) => self.absent_secret(format!("{path}.env"), format!("environment variable {name} is empty")),
                None => self.absent_secret(format!("{path}.env"), format!("environment variable {name} is not set")),
            };
        }
        if let Some(file) = &raw.file {
            return match std::fs::read_to_string(file) {
                Ok(v) if !v.trim().is_empty() => Some(Secret::new(v.trim())),
                Ok(_) => self.absent_secret(format!("{path}.file"), format!("{} is empty", file.display())),
                Err(e) => self.absent_secret(format!("{path}.file"), format!("cannot read {}: {e}", file.display())),
            };
        }
        match raw.insecure_inline.as_deref() {
            Some(v) if !v.is_empty() => Some(Secret::new(v)),
            _ => {
                self.problem(format!("{path}.insecure_inline"), "is empty");
                None
            }
        }
    }
}

pub(super) fn from_toml(text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(&e, text))?;
    validate(raw, env, false).map(|(config, _)| config)
}

/// As [`from_toml`], but a secret source that gives nothing (an unset variable, a missing file) is
/// not an error: it is returned as a note, and the placeholder stands in for it.
pub(super) fn from_toml_without_secrets(text: &str, env: &dyn Env) -> Result<(Config, Vec<Problem>), ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(&e, text))?;
    validate(raw, env, true)
}

/// A TOML error by its position and the key there, never by the text: toml's own rendering quotes
/// the offending line (which may hold a secret, or be a line of whatever file the path led to), and
/// serde's messages quote string values (`invalid type: string "wJalr...", expected ...`), so quoted
/// values are left out too.
fn toml_error(e: &toml::de::Error, text: &str) -> ConfigError {
    let (path, at) = match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let before = text.get(..start).unwrap_or("");
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (key_path_at(text, start), format!(" at line {line}, column {column}"))
        }
        None => (String::new(), String::new()),
    };
    let message = without_quoted_values(e.message()).replace(
        "struct RawSecret",
        "a secret source: { env = \"NAME\" }, { file = \"/path\" } or { insecure_inline = \"...\" }",
    );
    ConfigError::single(path, format!("invalid TOML{at}: {message}"))
}

/// The key a byte offset of a TOML text is at, as `table.key` from the last table header above it
/// and the key of its line (best effort: `""` when there is none).
fn key_path_at(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or("");
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].split('\n').next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)));
    let table = text[..line_start + line.len()]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim())
        .filter(|t| t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)));
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (None, Some(k)) => k.to_owned(),
        (Some(t), None) => t.to_owned(),
        (None, None) => String::new(),
    }
}

/// A message with the contents of its double-quoted parts left out (`"…"`).
fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut inside = false;
    for c in message.trim_end().chars() {
        match (c, inside) {
            ('"', false) => {
                out.push_str("\"…");
                inside = true;
            }
            ('"', true) => {
                out.push('"');
                inside = false;
            }
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    out
}

fn validate(raw: RawConfig, env: &dyn Env, secrets_may_be_absent: bool) -> Result<(Config, Vec<Problem>), ConfigError> {
    let mut c = Checker {
        problems: Vec::new(),
        env,
        absent: secrets_may_be_absent.then(Vec::new),
    };
    let unspecified = SocketAddr::from(([127, 0, 0, 1], 0));

    let admin = AdminConfig {
        address: c.addr("admin.address", &raw.admin.address).unwrap_or(unspecified),
    };

    let server = ServerConfig {
        header_read_timeout: c.seconds(
            "server.header_read_timeout_seconds",
            raw.server.header_read_timeout_seconds,
            30.0,
        ),
        max_header_bytes: raw.server.max_header_bytes.unwrap_or(64 * 1024),
        shutdown_grace_period: c.seconds(
            "server.shutdown_grace_period_seconds",
            raw.server.shutdown_grace_period_seconds,
            30.0,
        ),
        max_concurrent_requests: raw.server.max_concurrent_requests.unwrap_or(10_000),
        max_concurrent_requests_per_identity: raw.server.max_concurrent_requests_per_identity.unwrap_or(32),
        max_connections: raw.server.max_connections.unwrap_or(4096),
        max_connections_per_source: raw.server.max_connections_per_source.unwrap_or(512),
        client_send_timeout: c.seconds(
            "server.client_send_timeout_seconds",
            raw.server.client_send_timeout_seconds,
            30.0,
        ),
        max_discard_bytes: raw.server.max_discard_bytes.unwrap_or(16 << 20),
        max_concurrent_discards: raw.server.max_concurrent_discards.unwrap_or(32),
        client_body_idle_timeout: c.seconds(
            "server.client_body_idle_timeout_seconds",
            raw.server.client_body_idle_timeout_seconds,
            30.0,
        ),
        read_buffer_bytes: c.buffer_size("server.read_buffer_bytes", raw.server.read_buffer_bytes),
        threads: raw
            .server
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)),
    };
    if !(1..=1024).contains(&server.threads) {
        c.problem("server.threads", format!("{}: want 1 to 1024", server.threads));
    }
    if server.max_concurrent_requests == 0 {
        c.problem("server.max_concurrent_requests", "must be at least 1");
    }
    for (key, value) in [
        (
            "server.max_concurrent_requests_per_identity",
            server.max_concurrent_requests_per_identity,
        ),
        ("server.max_connections", server.max_connections),
        ("server.max_connections_per_source", server.max_connections_per_source),
    ] {
        if value == 0 {
            c.problem(key, "must be at least 1");
        }
    }
    if server.max_discard_bytes > 64 << 20 {
        c.problem(
            "server.max_discard_bytes",
            format!("{}: want 0 to 67108864", server.max_discard_bytes),
        );
    }
    let access_log = AccessLogConfig {
        key: match raw.access_log.key.as_deref() {
            None | Some("full") => KeyLogging::Full,
            Some("hashed") => KeyLogging::Hashed,
            Some("omitted") => KeyLogging::Omitted,
            Some(other) => {
                c.problem(
                    "access_log.key",
                    format!("{other:?}: want \"full\", \"hashed\" or \"omitted\""),
                );
                KeyLogging::Full
            }
        },
    };
    if !(8192..=1 << 20).contains(&server.max_header_bytes) {
        c.problem(
            "server.max_header_bytes",
            format!("{}: want 8192 to 1048576", server.max_header_bytes),
        );
    }

    let identity_names: HashSet<&str> = raw.identities.iter().map(|i| i.name.as_str()).collect();

    if raw.listeners.is_empty() {
        c.problem("listeners", "at least one listener is required");
    }
    let mut listeners = Vec::new();
    let mut listener_names = HashSet::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        let p = format!("listeners[{i}]");
        if l.name.is_empty() {
            c.problem(format!("{p}.name"), "must not be empty");
        } else if !listener_names.insert(l.name.as_str()) {
            c.problem(format!("{p}.name"), format!("{:?} is used by another listener", l.name));
        }
        let address = c.addr(&format!("{p}.address"), &l.address).unwrap_or(unspecified);
        let mut methods = Vec::new();
        if l.identity_methods.is_empty() {
            c.problem(
                format!("{p}.identity_methods"),
                "name at least one of \"sigv4\", \"sigv2\", \"source\"",
            );
        }
        for (j, m) in l.identity_methods.iter().enumerate() {
            let method = match m.as_str() {
                "sigv4" => IdentityMethod::SigV4,
                "sigv2" => IdentityMethod::SigV2,
                "mtls" => IdentityMethod::Mtls,
                "source" => IdentityMethod::Source,
                other => {
                    c.problem(
                        format!("{p}.identity_methods[{j}]"),
                        format!("{other:?}: unknown method (want \"sigv4\", \"sigv2\", \"source\" or \"mtls\")"),
                    );
                    continue;
                }
            };
            if methods.contains(&method) {
                c.problem(format!("{p}.identity_methods[{j}]"), format!("{m:?} is listed twice"));
            }
            methods.push(method);
        }
        let mut sources = Vec::new();
        for (j, s) in l.sources.iter().enumerate() {
            let sp = format!("{p}.sources[{j}]");
            match s
                .cidr
                .parse::<IpNet>()
                .or_else(|_| s.cidr.parse::<std::net::IpAddr>().map(IpNet::from))
            {
                Ok(net) => sources.push((net.trunc(), s.identity.clone())),
                Err(_) => c.problem(
                    format!("{sp}.cidr"),
                    format!("{:?}: want a CIDR such as 10.0.0.0/16", s.cidr),
                ),
            }
            if !identity_names.contains(s.identity.as_str()) {
                c.problem(format!("{sp}.identity"), format!("{:?}: no such identity", s.identity));
            }
        }
        if methods.contains(&IdentityMethod::Source) && l.sources.is_empty() {
            c.problem(
                format!("{p}.sources"),
                "the \"source\" method needs at least one [[listeners.sources]] entry",
            );
        }
        if !methods.contains(&IdentityMethod::Source) && !l.sources.is_empty() {
            c.problem(
                format!("{p}.sources"),
                "sources are given but \"source\" is not in identity_methods",
            );
        }
        let tls = validate_tls(&mut c, &p, l);
        let mut client_certificates = Vec::new();
        for (j, cc) in l.client_certificates.iter().enumerate() {
            if cc.subject.is_empty() {
                c.problem(format!("{p}.client_certificates[{j}].subject"), "must not be empty");
            }
            if !identity_names.contains(cc.identity.as_str()) {
                c.problem(
                    format!("{p}.client_certificates[{j}].identity"),
                    format!("{:?}: no such identity", cc.identity),
                );
            }
            client_certificates.push((cc.subject.clone(), cc.identity.clone()));
        }
        let verifies_clients = tls
            .as_ref()
            .is_some_and(|t: &ListenerTls| t.material.client_roots.is_some());
        if methods.contains(&IdentityMethod::Mtls) {
            if !verifies_clients && l.tls.as_ref().is_none_or(|t| t.client_ca_file.is_none()) {
                c.problem(
                    format!("{p}.tls.client_ca_file"),
                    "the \"mtls\" method needs [listeners.tls] with client_ca_file",
                );
            }
            if l.client_certificates.is_empty() {
                c.problem(
                    format!("{p}.client_certificates"),
                    "the \"mtls\" method needs at least one [[listeners.client_certificates]] entry",
                );
            }
        } else if !l.client_certificates.is_empty() {
            c.problem(
                format!("{p}.client_certificates"),
                "client_certificates are given but \"mtls\" is not in identity_methods",
            );
        }
        listeners.push(ListenerConfig {
            name: l.name.clone(),
            address,
            identity_methods: methods,
            sources,
            tls,
            client_certificates,
        });
    }
    let mut addrs = HashSet::new();
    for (i, l) in listeners.iter().enumerate() {
        if l.address.port() != 0 && !addrs.insert(l.address) {
            c.problem(
                format!("listeners[{i}].address"),
                format!("{} is used by another listener", l.address),
            );
        }
    }
    if admin.address.port() != 0 && addrs.contains(&admin.address) {
        c.problem("admin.address", format!("{} is also a listener address", admin.address));
    }

    let accepted_regions = raw
        .sigv4
        .accepted_regions
        .clone()
        .unwrap_or_else(|| vec![raw.upstream.region.clone()]);
    if accepted_regions.is_empty() {
        c.problem("sigv4.accepted_regions", "must list at least one region");
    }
    let skew = raw.sigv4.max_clock_skew_seconds.unwrap_or(900);
    if skew == 0 || skew > 3600 {
        c.problem(
            "sigv4.max_clock_skew_seconds",
            format!("{skew}: want 1 to 3600 (S3 uses 900)"),
        );
    }
    let sigv4 = SigV4Config {
        accepted_regions,
        max_clock_skew: Duration::from_secs(skew),
    };

    let mut domains = Vec::new();
    for (i, d) in raw.addressing.virtual_host_domains.iter().enumerate() {
        let d = d.trim_start_matches('.').to_ascii_lowercase();
        let valid = !d.is_empty()
            && d.split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if valid {
            domains.push(d);
        } else {
            c.problem(
                format!("addressing.virtual_host_domains[{i}]"),
                format!("{d:?}: not a DNS name"),
            );
        }
    }
    let addressing = AddressingConfig {
        virtual_host_domains: domains,
    };

    let u = &raw.upstream;
    if u.region.is_empty() {
        c.problem("upstream.region", "must not be empty");
    }
    let endpoint = match &u.endpoint {
        None | Some(RawEndpoint::Aws) => Endpoint::Aws,
        Some(RawEndpoint::Custom { url }) => match url.parse::<http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.authority().is_some()
                    && uri.path() == "/"
                    && uri.query().is_none() =>
            {
                Endpoint::Custom(uri)
            }
            _ => {
                c.problem(
                    "upstream.endpoint.url",
                    format!("{url:?}: want http(s)://HOST[:PORT] with no path"),
                );
                Endpoint::Aws
            }
        },
    };
    let upstream = UpstreamConfig {
        region: u.region.clone(),
        endpoint,
        connect_timeout: c.seconds("upstream.connect_timeout_seconds", u.connect_timeout_seconds, 5.0),
        response_header_timeout: c.seconds(
            "upstream.response_header_timeout_seconds",
            u.response_header_timeout_seconds,
            60.0,
        ),
        body_idle_timeout: c.seconds("upstream.body_idle_timeout_seconds", u.body_idle_timeout_seconds, 60.0),
        pool_idle_timeout: c.seconds("upstream.pool_idle_timeout_seconds", u.pool_idle_timeout_seconds, 30.0),
        pool_max_idle_per_host: u.pool_max_idle_per_host.unwrap_or(64),
        read_buffer_bytes: c.buffer_size("upstream.read_buffer_bytes", u.read_buffer_bytes),
        retry: validate_retry(&mut c, &u.retry),
    };

    let credentials = match &raw.credentials {
        RawCredentials::Default => CredentialsConfig::Default,
        RawCredentials::Static {
            access_key_id,
            secret_access_key,
            session_token,
        } => {
            let akid = c.secret("credentials.access_key_id", access_key_id);
            let secret = c.secret("credentials.secret_access_key", secret_access_key);
            let token = session_token
                .as_ref()
                .and_then(|t| c.secret("credentials.session_token", t));
            match (akid, secret) {
                (Some(a), Some(s)) => CredentialsConfig::Static {
                    access_key_id: a.expose().to_owned(),
                    secret_access_key: s,
                    session_token: token,
                },
                _ => CredentialsConfig::Default,
            }
        }
    };

    let mut identities = Vec::new();
    let mut seen_names = HashSet::new();
    let mut seen_keys: HashMap<String, String> = HashMap::new();
    for (i, ident) in raw.identities.iter().enumerate() {
        let p = format!("identities[{i}]");
        if !valid_identity_name(&ident.name) {
            c.problem(
                format!("{p}.name"),
                format!("{:?}: want 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.'", ident.name),
            );
        } else if ident.name == crate::metrics::NONE {
            // The metrics' and the access log's word for "no identity yet".
            c.problem(
                format!("{p}.name"),
                format!(
                    "{:?} is reserved: it stands for no identity in metrics and logs",
                    ident.name
                ),
            );
        } else if !seen_names.insert(ident.name.as_str()) {
            c.problem(format!("{p}.name"), format!("{:?} is defined twice", ident.name));
        }
        let mut keys = Vec::new();
        for (j, k) in ident.keys.iter().enumerate() {
            let kp = format!("{p}.keys[{j}]");
            let akid = &k.access_key_id;
            if akid.len() < 16 || akid.len() > 128 || !akid.bytes().all(|b| b.is_ascii_alphanumeric()) {
                c.problem(
                    format!("{kp}.access_key_id"),
                    format!("{akid:?}: want 16-128 letters and digits"),
                );
            }
            if let Some(other) = seen_keys.insert(akid.clone(), ident.name.clone()) {
                c.problem(
                    format!("{kp}.access_key_id"),
                    format!("{akid:?} is already a key of identity {other:?}"),
                );
            }
            if let Some(secret) = c.secret(&format!("{kp}.secret_access_key"), &k.secret_access_key) {
                if secret.expose().len() < 16 {
                    c.problem(format!("{kp}.secret_access_key"), "is shorter than 16 characters");
                }
                keys.push(KeyConfig {
                    access_key_id: akid.clone(),
                    secret_access_key: secret,
                });
            }
        }
        let role = validate_role(&mut c, &p, ident);
        identities.push(IdentityConfig {
            name: ident.name.clone(),
            keys,
            role,
        });
    }

    let refresh = CredentialRefreshConfig {
        before_expiry: Duration::from_secs(raw.credential_refresh.before_expiry_seconds.unwrap_or(300)),
        jitter: Duration::from_secs(raw.credential_refresh.jitter_seconds.unwrap_or(60)),
    };
    if refresh.before_expiry > Duration::from_secs(3000) {
        c.problem(
            "credential_refresh.before_expiry_seconds",
            "at most 3000 (credentials live at least 15 minutes)",
        );
    }
    let sts = StsConfig {
        region: raw.sts.region.clone().unwrap_or_else(|| raw.upstream.region.clone()),
        endpoint_url: raw.sts.endpoint_url.clone(),
    };
    if let Some(url) = &sts.endpoint_url {
        let ok = url
            .parse::<http::Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some());
        if !ok {
            c.problem("sts.endpoint_url", format!("{url:?}: want http(s)://HOST[:PORT]"));
        }
    }

    let mut routes = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        if !identity_names.contains(r.identity.as_str()) {
            c.problem(format!("{p}.identity"), format!("{:?}: no such identity", r.identity));
        }
        let (bucket, ap) = validate_route_target(&mut c, &p, r);
        let mut operations = Vec::new();
        match &r.operations {
            None => operations.extend(OperationClass::ALL),
            Some(list) => {
                if list.is_empty() {
                    c.problem(
                        format!("{p}.operations"),
                        "an empty list allows nothing; omit the key to allow all",
                    );
                }
                for (j, o) in list.iter().enumerate() {
                    match OperationClass::parse(o) {
                        Some(class) if !operations.contains(&class) => operations.push(class),
                        Some(_) => c.problem(format!("{p}.operations[{j}]"), format!("{o:?} is listed twice")),
                        None => c.problem(
                            format!("{p}.operations[{j}]"),
                            format!("{o:?}: want \"read\", \"write\", \"delete\" or \"list\""),
                        ),
                    }
                }
            }
        }
        operations.sort();
        let mut allow = Vec::new();
        for (j, a) in r.allow.iter().enumerate() {
            match AccessChange::parse(a) {
                Some(change) if !allow.contains(&change) => allow.push(change),
                Some(_) => c.problem(format!("{p}.allow[{j}]"), format!("{a:?} is listed twice")),
                None => c.problem(
                    format!("{p}.allow[{j}]"),
                    format!(
                        "{a:?}: want one of {}",
                        AccessChange::ALL.map(|a| format!("{:?}", a.as_str())).join(", ")
                    ),
                ),
            }
        }
        allow.sort();
        let mut kms_key_ids: Vec<String> = Vec::new();
        for (j, k) in r.kms_key_ids.iter().enumerate() {
            let at = format!("{p}.kms_key_ids[{j}]");
            if k.is_empty() || k.len() > 2048 || !k.bytes().all(|b| b.is_ascii_graphic()) {
                c.problem(
                    at,
                    format!(
                        "{k:?}: want a KMS key id, key ARN, alias/NAME or alias ARN (1-2048 visible ASCII characters)"
                    ),
                );
            } else if kms_key_ids.contains(k) {
                c.problem(at, format!("{k:?} is listed twice"));
            } else {
                kms_key_ids.push(k.clone());
            }
        }
        if let (Some(bucket), Some(access_point)) = (bucket, ap) {
            routes.push(RouteConfig {
                identity: r.identity.clone(),
                bucket,
                prefix: r.prefix.clone(),
                operations,
                access_point,
                allow,
                kms_key_ids,
            });
        }
    }

    if c.problems.is_empty() {
        let absent = c.absent.unwrap_or_default();
        Ok((
            Config {
                admin,
                server,
                access_log,
                listeners,
                sigv4,
                addressing,
                upstream,
                credentials,
                credential_refresh: refresh,
                sts,
                identities,
                routes,
            },
            absent,
        ))
    } else {
        Err(ConfigError { problems: c.problems })
    }
}

/// The most attempts one request may make: more would multiply load on an upstream in trouble.
const MAX_ATTEMPTS: u32 = 10;
/// The largest replay buffer: every in-flight retryable request may hold one.
const MAX_REPLAY_BUFFER: usize = 16 << 20;
/// The longest backoff, in milliseconds.
const MAX_BACKOFF_MS: u64 = 60_000;

fn validate_retry(c: &mut Checker<'_>, r: &super::raw::RawRetry) -> RetryConfig {
    let p = "upstream.retry";
    let max_attempts = r.max_attempts.unwrap_or(3);
    if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
        c.problem(
            format!("{p}.max_attempts"),
            format!("{max_attempts}: want 1 (no retries) to {MAX_ATTEMPTS}"),
        );
    }
    let replay_buffer_bytes = r.replay_buffer_bytes.unwrap_or(1 << 20);
    if replay_buffer_bytes > MAX_REPLAY_BUFFER {
        c.problem(
            format!("{p}.replay_buffer_bytes"),
            format!("{replay_buffer_bytes}: want 0 (retry bodiless requests only) to {MAX_REPLAY_BUFFER}"),
        );
    }
    let initial = r.initial_backoff_ms.unwrap_or(50);
    if !(1..=MAX_BACKOFF_MS).contains(&initial) {
        c.problem(
            format!("{p}.initial_backoff_ms"),
            format!("{initial}: want 1 to {MAX_BACKOFF_MS}"),
        );
    }
    let max = r.max_backoff_ms.unwrap_or(1000);
    if !(1..=MAX_BACKOFF_MS).contains(&max) {
        c.problem(
            format!("{p}.max_backoff_ms"),
            format!("{max}: want 1 to {MAX_BACKOFF_MS}"),
        );
    } else if max < initial {
        c.problem(
            format!("{p}.max_backoff_ms"),
            format!("{max}: must be at least initial_backoff_ms ({initial})"),
        );
    }
    RetryConfig {
        max_attempts: max_attempts.clamp(1, MAX_ATTEMPTS),
        replay_buffer_bytes,
        initial_backoff: Duration::from_millis(initial),
        max_backoff: Duration::from_millis(max),
        deadline: c.seconds(&format!("{p}.deadline_seconds"), r.deadline_seconds, 10.0),
    }
}

fn validate_tls(c: &mut Checker<'_>, p: &str, l: &super::raw::RawListener) -> Option<ListenerTls> {
    let t = l.tls.as_ref()?;
    let auth = match t.client_certificate.as_deref() {
        None | Some("required") => crate::tls::ClientAuth::Required,
        Some("optional") => crate::tls::ClientAuth::Optional,
        Some(other) => {
            c.problem(
                format!("{p}.tls.client_certificate"),
                format!("{other:?}: want \"required\" or \"optional\""),
            );
            crate::tls::ClientAuth::Required
        }
    };
    if t.client_ca_file.is_none() && (t.client_certificate.is_some() || t.client_identity_from.is_some()) {
        c.problem(
            format!("{p}.tls.client_ca_file"),
            "client_certificate and client_identity_from need client_ca_file",
        );
    }
    let identity_from = match t.client_identity_from.as_deref() {
        None => crate::tls::SubjectSource::UriSan,
        Some(s) => crate::tls::SubjectSource::parse(s).unwrap_or_else(|| {
            c.problem(
                format!("{p}.tls.client_identity_from"),
                format!("{s:?}: want \"uri_san\", \"dns_san\" or \"common_name\""),
            );
            crate::tls::SubjectSource::UriSan
        }),
    };
    let client_ca = t.client_ca_file.as_deref().map(|f| (f, auth));
    match crate::tls::TlsMaterial::load(&t.certificate_chain_file, &t.private_key_file, client_ca) {
        Ok(material) => {
            let constrained = material
                .client_roots
                .as_ref()
                .is_some_and(|(roots, _)| roots.iter().any(|r| crate::tls::has_name_constraints(r.as_ref())));
            if identity_from == crate::tls::SubjectSource::CommonName && constrained {
                // Name constraints bind SANs, never the CN: a CA limited to some names could
                // still issue any CN.
                c.problem(
                    format!("{p}.tls.client_identity_from"),
                    "\"common_name\" with a client CA that carries name constraints: they do not cover the CN; use \"uri_san\" or \"dns_san\"",
                );
            }
            Some(ListenerTls {
                material,
                identity_from,
            })
        }
        Err(e) => {
            c.problem(format!("{p}.tls"), e.to_string());
            None
        }
    }
}

fn validate_role(c: &mut Checker<'_>, p: &str, ident: &super::raw::RawIdentity) -> Option<RoleConfig> {
    let role_only = [
        ("external_id", ident.external_id.is_some()),
        ("session_name", ident.session_name.is_some()),
        ("session_policy", ident.session_policy.is_some()),
        ("session_duration_seconds", ident.session_duration_seconds.is_some()),
    ];
    let Some(arn) = &ident.role_arn else {
        for (key, given) in role_only {
            if given {
                c.problem(format!("{p}.{key}"), "only applies with role_arn");
            }
        }
        return None;
    };
    if !valid_role_arn(arn) {
        c.problem(
            format!("{p}.role_arn"),
            format!("{arn:?}: want arn:aws:iam::ACCOUNT:role/NAME (account 12 digits)"),
        );
    }
    let session_name = ident.session_name.clone().unwrap_or_else(|| {
        let mut s: String = format!("apgate-{}", ident.name)
            .chars()
            .filter(|ch| ch.is_ascii_alphanumeric() || "+=,.@-_".contains(*ch))
            .collect();
        s.truncate(64);
        s
    });
    let name_ok = (2..=64).contains(&session_name.len())
        && session_name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "+=,.@-_".contains(ch));
    if !name_ok {
        c.problem(
            format!("{p}.session_name"),
            format!("{session_name:?}: want 2-64 of letters, digits and +=,.@-_"),
        );
    }
    if let Some(id) = &ident.external_id {
        if !(2..=1224).contains(&id.len()) {
            c.problem(format!("{p}.external_id"), "want 2 to 1224 characters");
        }
    }
    if let Some(policy) = &ident.session_policy {
        if policy.len() > 2048 || !policy.trim_start().starts_with('{') {
            c.problem(
                format!("{p}.session_policy"),
                "want an IAM policy document (JSON), at most 2048 characters",
            );
        }
    }
    let session_duration = ident.session_duration_seconds.map(Duration::from_secs);
    if let Some(d) = ident.session_duration_seconds {
        if !(900..=43_200).contains(&d) {
            c.problem(
                format!("{p}.session_duration_seconds"),
                format!("{d}: want 900 to 43200"),
            );
        }
    }
    Some(RoleConfig {
        arn: arn.clone(),
        external_id: ident.external_id.clone(),
        session_name,
        session_policy: ident.session_policy.clone(),
        session_duration,
    })
}

fn valid_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && matches!(parts[1], "aws" | "aws-cn" | "aws-us-gov")
        && parts[2] == "iam"
        && parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5].strip_prefix("role/").is_some_and(|n| !n.is_empty())
}

fn valid_identity_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A route's bucket (a name or a pattern) and access point (an ARN or a template over the
/// bucket): each checked alone, then together, so that a template never makes an invalid name.
fn validate_route_target(
    c: &mut Checker<'_>,
    p: &str,
    r: &RawRoute,
) -> (Option<RouteBucket>, Option<RouteAccessPoint>) {
    let bucket = if BucketPattern::is_pattern(&r.bucket) {
        BucketPattern::parse(&r.bucket).map(RouteBucket::Pattern)
    } else {
        BucketName::parse(&r.bucket)
            .map(RouteBucket::Name)
            .map_err(|e| e.to_string())
    };
    let bucket = bucket
        .map_err(|e| c.problem(format!("{p}.bucket"), format!("{:?}: {e}", r.bucket)))
        .ok();
    let ap = if AccessPointTemplate::is_template(&r.access_point) {
        AccessPointTemplate::parse(&r.access_point).map(RouteAccessPoint::Template)
    } else {
        AccessPoint::parse(&r.access_point)
            .map(RouteAccessPoint::Fixed)
            .map_err(|e| {
                let hint = if r.access_point.starts_with("arn:aws:s3:::") {
                    " (that is a bucket ARN: a route names the access point's ARN, arn:aws:s3:REGION:ACCOUNT:accesspoint/NAME)"
                } else {
                    ""
                };
                format!("{e}{hint}")
            })
    };
    let ap = ap
        .map_err(|e| c.problem(format!("{p}.access_point"), format!("{:?}: {e}", r.access_point)))
        .ok();
    match (bucket, ap) {
        // A template on one bucket: filled in now.
        (Some(RouteBucket::Name(name)), Some(RouteAccessPoint::Template(t))) => match t.expand(name.as_str()) {
            Some(ap) => (Some(RouteBucket::Name(name)), Some(RouteAccessPoint::Fixed(ap))),
            None => {
                c.problem(
                    format!("{p}.access_point"),
                    format!(
                        "{:?} makes {:?} for bucket {name}, not a valid access point name (3-50 characters of a-z, 0-9 and '-')",
                        t.as_str(),
                        t.as_str().replace(crate::routing::pattern::BUCKET_PLACEHOLDER, name.as_str())
                    ),
                );
                (Some(RouteBucket::Name(name)), None)
            }
        },
        (Some(RouteBucket::Pattern(pattern)), Some(RouteAccessPoint::Template(t))) => {
            if pattern.has_dot() {
                c.problem(
                    format!("{p}.bucket"),
                    format!(
                        "{:?}: a pattern whose access point is a template cannot hold '.' (an access point name cannot)",
                        pattern.as_str()
                    ),
                );
                return (None, None);
            }
            let shortest = t.name_len(pattern.min_len());
            if shortest > 50 {
                c.problem(
                    format!("{p}.access_point"),
                    format!(
                        "{:?} makes names of at least {shortest} characters from buckets matching {:?}: an access point name has at most 50",
                        t.as_str(),
                        pattern.as_str()
                    ),
                );
                return (None, None);
            }
            (Some(RouteBucket::Pattern(pattern)), Some(RouteAccessPoint::Template(t)))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests;
