//! `apgate explain` and the warnings of `apgate check`: what the configuration does with a request,
//! without sending anything, and which parts of it can never apply.
//!
//! An explanation is the proxy's own decision ([`crate::decision::decide`]) over the same head,
//! printed in words: the caller is either a configured listener's identity chain over the request's
//! own signature (`--listener`), or an identity named on the command line (`--identity`), which
//! stands for a caller trusted by its source network. `--json` and `--requests` give the decision
//! as JSON, one object a request, for scripts and for the differential tests that hold the proxy
//! and `explain` to the same answers.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use crate::config::{Config, Endpoint, IdentityMethod, RetryConfig};
use crate::decision::{decide, inspect_body, BodyPlan, Decision, Head, Inspected, Outcome, Policy};
use crate::identity::{ListenerIdentity, SigV4Verifier, SourceMap};
use crate::routing::{Router, Scope};
use crate::s3::operation::{self, Support};

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An identity of the configuration, as if identified by its source network.
    Identity(String),
    /// A listener of the configuration, whose identity chain reads the request's signature.
    Listener(String),
}

/// A request to explain.
#[derive(Debug, Clone)]
pub struct Request {
    pub caller: Caller,
    pub method: String,
    /// A path (`/bucket/key?query`) or a URL whose host may name a virtual-hosted bucket.
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// The source address (for `source` identities of a listener).
    pub remote: Option<IpAddr>,
    /// The body, for operations whose body apgate reads (DeleteObjects, RestoreObject).
    pub body: Option<Vec<u8>>,
}

/// What apgate would do with one request.
#[derive(Debug)]
pub struct Explanation {
    pub lines: Vec<String>,
    pub allowed: bool,
    /// The same, for machines.
    pub json: serde_json::Value,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Everything a decision needs, built from a configuration once for any number of requests.
#[derive(Debug)]
pub struct Explainer<'c> {
    config: &'c Config,
    verifier: SigV4Verifier,
    router: Router,
    listeners: HashMap<String, ListenerIdentity>,
}

impl<'c> Explainer<'c> {
    pub fn new(config: &'c Config) -> Self {
        let verifier = SigV4Verifier::from_config(config);
        let listeners = config
            .listeners
            .iter()
            .map(|l| (l.name.clone(), ListenerIdentity::from_config(l)))
            .collect();
        Self {
            config,
            verifier,
            router: Router::new(&config.routes),
            listeners,
        }
    }

    /// What the routing table says of a refused request, when routing refused it.
    fn route_denial(&self, d: &Decision<'_>, refusal: &crate::error::GatewayError) -> Option<String> {
        let (caller, op, target) = (d.caller.as_ref()?, d.operation?, d.target.as_ref()?);
        let class = op.class()?;
        let bucket = target.bucket.as_ref()?;
        let scope = match (&target.key, op.list_prefix_param()) {
            (Some(key), _) => Scope::Key(key),
            (None, Some(param)) => Scope::ListPrefix(target.param(param).unwrap_or("")),
            (None, None) => Scope::Bucket,
        };
        match self.router.route(&caller.name, bucket, scope, class) {
            // Only when it is what refused the request (not, say, a signature before it).
            Err(denial) => (refusal.message() == denial.message()).then(|| denial.explain()),
            // The route was found, and what it lacks refused the request (an access change it
            // does not allow, a KMS key it does not list): name the rule, which the client's
            // answer does not.
            Ok(route) if crate::decision::is_route_opt_in_refusal(refusal) => Some(format!(
                "routes[{}] (keys under {:?}) is the route for the request, and it does not let this through",
                route.index, route.prefix
            )),
            Ok(_) => None,
        }
    }

    /// For a refused DeleteObjects, the first key whose route refused it, and that route: the
    /// client's answer names neither (it would tell the caller of the configuration's layout).
    fn refusing_key(
        &self,
        forward: &crate::decision::Forward,
        op: crate::s3::Operation,
        caller: &crate::identity::CallerIdentity,
        wire: &[u8],
    ) -> Option<String> {
        let keys: Vec<String> = crate::s3::xml::delete_objects(wire)
            .ok()?
            .into_iter()
            .map(|e| e.key)
            .collect();
        crate::decision::route_of_keys(forward, op, &self.router, caller, &keys)
            .err()
            .map(|refusal| refusal.explain())
    }

    /// Explains one request, decided as of `now`.
    pub fn explain(&self, req: &Request, now: SystemTime) -> Explanation {
        let out = Out::default();
        let synthetic;
        let listener = match &req.caller {
            Caller::Identity(name) => {
                if !self.config.identities.iter().any(|i| i.name == *name) {
                    return out.deny_early(format!("there is no identity {name:?} in the configuration"));
                }
                // The identity as a caller trusted by its source network: every address is it.
                synthetic = ListenerIdentity {
                    methods: vec![IdentityMethod::Source],
                    sources: SourceMap::new(vec![
                        ("0.0.0.0/0".parse().unwrap_or_default(), Arc::from(name.as_str())),
                        ("::/0".parse().unwrap_or_default(), Arc::from(name.as_str())),
                    ]),
                    certificates: HashMap::new(),
                };
                &synthetic
            }
            Caller::Listener(name) => match self.listeners.get(name) {
                Some(l) => l,
                None => return out.deny_early(format!("there is no listener {name:?} in the configuration")),
            },
        };
        let Ok(method) = req.method.to_ascii_uppercase().parse::<Method>() else {
            return out.deny_early(format!("{:?} is not an HTTP method", req.method));
        };
        let (host, path_and_query) = match req.target.split_once("://") {
            Some((_, rest)) => match rest.find('/') {
                Some(i) => (Some(&rest[..i]), &rest[i..]),
                None => (Some(rest), "/"),
            },
            None => (None, req.target.as_str()),
        };
        let Ok(uri) = path_and_query.parse::<Uri>() else {
            return out.deny_early(format!("{path_and_query:?} is not a request target"));
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &req.headers {
            let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) else {
                return out.deny_early(format!("{name}: {value:?} is not a valid header"));
            };
            headers.append(n, v);
        }
        if !headers.contains_key(http::header::HOST) {
            let host = host.unwrap_or("localhost");
            if let Ok(v) = HeaderValue::from_str(host) {
                headers.insert(http::header::HOST, v);
            }
        }
        let policy = Policy {
            domains: &self.config.addressing.virtual_host_domains,
            verifier: &self.verifier,
            router: &self.router,
            listener,
        };
        let head = Head {
            method: &method,
            uri: &uri,
            headers: &headers,
            remote: req.remote.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            client_certificate: None,
        };
        let decision = decide(&head, &policy, now);
        self.describe(&decision, &method, &headers, req.body.as_deref(), out)
    }

    fn describe(
        &self,
        d: &Decision<'_>,
        method: &Method,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        mut out: Out,
    ) -> Explanation {
        if let Some(caller) = &d.caller {
            out.line("identity:", &caller.name);
            out.json.insert("identity".into(), caller.name.as_ref().into());
        }
        if let Some(op) = d.operation {
            let what = match op.support() {
                Support::Forwarded(class) => format!("{} (a {} operation)", op.as_str(), class.as_str()),
                Support::Synthesized(_) => format!("{} (answered by apgate)", op.as_str()),
                Support::Withheld => format!("{} (not offered through apgate)", op.as_str()),
                Support::NotThroughAccessPoints => format!("{} (not supported through access points)", op.as_str()),
            };
            out.line("operation:", &what);
        }
        out.json
            .insert("operation".into(), operation::label(d.operation).into());
        if let Some(bucket) = d.bucket() {
            out.line("bucket:", bucket.as_str());
            out.json.insert("bucket".into(), bucket.as_str().into());
        }
        if let Some(key) = d.key() {
            out.line("key:", key);
            out.json.insert("key".into(), key.into());
        }
        let outcome = match &d.outcome {
            Ok(o) => o,
            Err(e) => {
                // A route refusal: say which rule and why, in the operator's terms (the client's
                // message names none of the configuration).
                if let Some(why) = self.route_denial(d, e) {
                    out.line("why:", &why);
                    out.json.insert("route_denial".into(), why.into());
                }
                return out.deny_with(e);
            }
        };
        let forward = match outcome {
            Outcome::ListBuckets(buckets) => {
                let names: Vec<&str> = buckets.iter().map(|b| b.as_str()).collect();
                out.line(
                    "answer:",
                    &format!("the buckets of the caller's routes: {}", names.join(", ")),
                );
                return out.allow("answered by apgate from the caller's routes; nothing is sent upstream");
            }
            Outcome::BucketLocation(route) => {
                out.route(route);
                out.line("answer:", &format!("region {}", route.access_point.region()));
                return out.allow("answered by apgate from the access point's region; nothing is sent upstream");
            }
            Outcome::Forward(f) => f,
        };
        // A body apgate reads is checked first: DeleteObjects goes through its keys' route.
        let inspection = match (forward.body, d.operation, &d.caller, body) {
            (BodyPlan::Inspect { .. }, Some(op), Some(caller), Some(wire)) => {
                let announced = headers.get("x-amz-trailer").and_then(|v| v.to_str().ok());
                Some(inspect_body(forward, op, &self.router, caller, announced, wire))
            }
            _ => None,
        };
        let route = match &inspection {
            Some(Ok(Inspected { route: Some(r), .. })) => r,
            _ => &forward.route,
        };
        out.route(route);
        if let Some(source) = &forward.copy_source {
            let copied = headers
                .get("x-amz-copy-source")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| crate::s3::copy_source::CopySource::parse(v).ok());
            let key = copied.as_ref().map_or("", |c| c.key.as_str());
            out.line(
                "copy from:",
                &format!(
                    "{key:?} through routes[{}] (access point {})",
                    source.index,
                    source.access_point.arn()
                ),
            );
            out.json.insert("copy_source_key".into(), key.into());
        }
        let ap = &route.access_point;
        let upstream = format!(
            "{} https://{}{}",
            forward.head.method,
            ap.host(),
            forward.head.path_and_query
        );
        out.line("upstream:", &upstream);
        let mut names: Vec<&str> = forward.head.headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names.dedup();
        out.line(
            "headers:",
            &if names.is_empty() {
                "none of the request's (apgate sets Host and its signature)".to_owned()
            } else {
                format!("{} (and Host and apgate's signature)", names.join(", "))
            },
        );
        out.json.insert(
            "upstream".into(),
            serde_json::json!({
                "method": forward.head.method.as_str(),
                "host": ap.host(),
                "path_and_query": forward.head.path_and_query,
                "headers": names,
            }),
        );
        if let Endpoint::Custom(url) = &self.config.upstream.endpoint {
            out.line("connect:", &format!("{url} (a custom endpoint)"));
        }
        let signer = match self
            .config
            .identities
            .iter()
            .find(|i| d.caller.as_ref().is_some_and(|c| *c.name == *i.name))
            .and_then(|i| i.role.as_ref())
        {
            Some(role) => format!("the assumed role {} (session {})", role.arn, role.session_name),
            None => "apgate's base credentials".to_owned(),
        };
        out.line("signed by:", &format!("{signer}, for region {}", ap.region()));
        out.line("retries:", &retries(&self.config.upstream.retry, method));
        match inspection {
            None if d.operation == Some(crate::s3::Operation::DeleteObjects) => out.line(
                "body:",
                "read and checked before it is forwarded: the keys it names decide the route and the access point (the route and upstream above are only one of the bucket's that may delete), and each key's route must allow what the request asks for (give the body with --body to check it here)",
            ),
            None if matches!(forward.body, BodyPlan::Inspect { .. }) => out.line(
                "body:",
                "read and checked before it is forwarded (give it with --body to check it here)",
            ),
            None => {}
            Some(Ok(inspected)) => {
                if !inspected.keys.is_empty() {
                    out.line("body:", &format!("deletes {}", inspected.keys.join(", ")));
                    out.json.insert("keys".into(), inspected.keys.into());
                } else {
                    out.line("body:", "checked");
                }
            }
            Some(Err(e)) => {
                if let (Some(op @ crate::s3::Operation::DeleteObjects), Some(caller), Some(wire)) =
                    (d.operation, &d.caller, body)
                {
                    if let Some(why) = self.refusing_key(forward, op, caller, wire) {
                        out.line("refused:", &why);
                        out.json.insert("refused_at".into(), why.into());
                    }
                }
                return out.deny_with(&e);
            }
        }
        out.allow("forwarded")
    }
}

/// The lines and JSON of an explanation as it is built.
#[derive(Debug, Default)]
struct Out {
    lines: Vec<String>,
    json: serde_json::Map<String, serde_json::Value>,
}

impl Out {
    fn line(&mut self, label: &str, text: &str) {
        self.lines.push(format!("{label:<11}{text}"));
    }

    fn route(&mut self, route: &crate::routing::Route) {
        let ops: Vec<&str> = route.operations.iter().map(|o| o.as_str()).collect();
        let prefix = if route.prefix.is_empty() {
            "the whole bucket".to_owned()
        } else {
            format!("keys under {:?}", route.prefix)
        };
        let bucket = match &route.pattern {
            Some(pattern) => format!("bucket pattern {pattern:?} (matches {})", route.bucket),
            None => format!("bucket {}", route.bucket),
        };
        self.line(
            "route:",
            &format!(
                "routes[{}]: identity {}, {bucket}, {prefix}, {} operations",
                route.index,
                route.identity,
                ops.join("/")
            ),
        );
        self.line("access pt:", route.access_point.arn());
        self.json.insert("route".into(), route.index.into());
        if let Some(pattern) = &route.pattern {
            self.json.insert("bucket_pattern".into(), pattern.as_ref().into());
        }
        self.json.insert("access_point".into(), route.access_point.arn().into());
    }

    fn allow(mut self, how: &str) -> Explanation {
        self.line("decision:", &format!("ALLOWED: {how}"));
        self.json.insert("allowed".into(), true.into());
        Explanation {
            lines: self.lines,
            allowed: true,
            json: self.json.into(),
        }
    }

    fn deny(mut self, code: &str, why: &str) -> Explanation {
        self.line("decision:", &format!("DENIED ({code}): {why}"));
        self.json.insert("allowed".into(), false.into());
        self.json.insert("code".into(), code.into());
        self.json.insert("message".into(), why.into());
        Explanation {
            lines: self.lines,
            allowed: false,
            json: self.json.into(),
        }
    }

    fn deny_with(mut self, e: &crate::error::GatewayError) -> Explanation {
        self.json.insert("status".into(), e.code().status().as_u16().into());
        self.deny(e.code().as_str(), e.message())
    }

    fn deny_early(self, why: String) -> Explanation {
        self.deny("InvalidRequest", &why)
    }
}

/// Reads one request of `apgate explain --requests` (a JSON object: `method`, `target`, and
/// optionally `headers` as `[[name, value], ...]`, `identity` or `listener` (else `default`),
/// `remote`, `body_base64`).
pub fn request_from_json(v: &serde_json::Value, default: &Caller) -> Result<Request, String> {
    let text = |k: &str| v.get(k).and_then(|x| x.as_str());
    let caller = match (text("identity"), text("listener")) {
        (Some(i), _) => Caller::Identity(i.to_owned()),
        (None, Some(l)) => Caller::Listener(l.to_owned()),
        (None, None) => default.clone(),
    };
    let mut headers = Vec::new();
    if let Some(list) = v.get("headers").and_then(|h| h.as_array()) {
        for pair in list {
            match pair.as_array().map(Vec::as_slice) {
                Some([n, v]) => headers.push((
                    n.as_str().ok_or("a header name is not a string")?.to_owned(),
                    v.as_str().ok_or("a header value is not a string")?.to_owned(),
                )),
                _ => return Err("headers must be [name, value] pairs".to_owned()),
            }
        }
    }
    let body = match text("body_base64") {
        None => None,
        Some(b) => Some(base64_decode(b).ok_or("body_base64 is not base64")?),
    };
    Ok(Request {
        caller,
        method: text("method").ok_or("a request needs a method")?.to_owned(),
        target: text("target").ok_or("a request needs a target")?.to_owned(),
        headers,
        remote: text("remote").and_then(|r| r.parse().ok()),
        body,
    })
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c)?;
        acc = acc << 6 | u32::try_from(v).ok()?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from(acc >> bits & 0xff).ok()?);
        }
    }
    Some(out)
}

/// What `[upstream.retry]` does for requests with this method (docs/CONFIG.md).
fn retries(policy: &RetryConfig, method: &Method) -> String {
    let n = policy.max_attempts;
    let within = policy.deadline.as_secs_f64();
    if n <= 1 {
        return "none (upstream.retry.max_attempts = 1)".to_owned();
    }
    match *method {
        Method::GET | Method::HEAD => format!(
            "up to {n} attempts within {within} s on connection errors, timeouts, 500 and 503 (none once the response has started)"
        ),
        Method::PUT | Method::DELETE => format!(
            "up to {n} attempts within {within} s on connection errors, 500 and 503, if the body is at most {} bytes and not aws-chunked (it is held in memory); larger bodies stream once",
            policy.replay_buffer_bytes
        ),
        _ => format!("none: {method} is not idempotent (the body streams, once)"),
    }
}

/// Bucket patterns that overlap: of one identity, two that can match the same bucket name. The
/// more specific one wins (or, as specific, the earlier), which may not be what was meant; a
/// pattern shadowed by a named bucket is the rule working as documented and is not warned about.
fn pattern_warnings(config: &Config) -> Vec<String> {
    use crate::config::{RouteAccessPoint, RouteBucket};
    let mut out = Vec::new();
    // The first rule of each (identity, pattern).
    let mut firsts: Vec<(usize, &str, &crate::routing::pattern::BucketPattern)> = Vec::new();
    for (i, r) in config.routes.iter().enumerate() {
        let RouteBucket::Pattern(p) = &r.bucket else { continue };
        if matches!(r.access_point, RouteAccessPoint::Fixed(_)) {
            out.push(format!(
                "routes[{i}]: bucket pattern {:?} with one access point ({}): every bucket it matches reaches that access point's bucket; a template ({}) follows the bucket",
                p.as_str(),
                r.access_point.as_str(),
                crate::routing::pattern::BUCKET_PLACEHOLDER
            ));
        }
        if !firsts.iter().any(|(_, id, q)| *id == r.identity && *q == p) {
            firsts.push((i, &r.identity, p));
        }
    }
    for (a, (i, id, p)) in firsts.iter().enumerate() {
        for (j, other_id, q) in &firsts[a + 1..] {
            if id == other_id && p.overlaps(q) {
                let (winner, rule) = if q.specificity() > p.specificity() {
                    (q, j)
                } else {
                    (p, i)
                };
                let how = if p.specificity() == q.specificity() {
                    "as specific, so the earlier one wins"
                } else {
                    "the more specific one wins"
                };
                out.push(format!(
                    "routes[{i}] and routes[{j}]: bucket patterns {:?} and {:?} of identity {id} overlap; for a bucket both match, {:?} (routes[{rule}]) decides ({how})",
                    p.as_str(),
                    q.as_str(),
                    winner.as_str()
                ));
            }
        }
    }
    out
}

/// Settings that are valid but easy to get dangerously wrong.
fn exposure_warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    // A `source` identity is given to whoever reaches the port from the range: on a listener
    // reachable beyond the host, a wide range gives it to a whole network.
    for (i, l) in config.listeners.iter().enumerate() {
        if !l.identity_methods.contains(&IdentityMethod::Source) || l.address.ip().is_loopback() {
            continue;
        }
        for (j, (cidr, identity)) in l.sources.iter().enumerate() {
            let host_bits = if cidr.addr().is_ipv4() { 32 } else { 128 };
            // Wider than a /16 (IPv4) or a /48 (IPv6): tens of thousands of addresses or more.
            let broad = u32::from(host_bits - cidr.prefix_len()) > if cidr.addr().is_ipv4() { 16 } else { 80 };
            if broad {
                out.push(format!(
                    "listeners[{i}].sources[{j}]: {cidr} on {} (not a loopback address): anyone who reaches the port from that range is {identity:?}, with no credential; narrow the range (a sidecar: 127.0.0.1/32 on a loopback listener)",
                    l.address
                ));
            }
        }
    }
    // A region no partition has: a typo found otherwise only when requests fail.
    let known = |region: &str| {
        crate::s3::regions::REGIONS
            .iter()
            .any(|(_, regions)| regions.binary_search(&region).is_ok())
    };
    let mut unknown = |path: String, region: &str| {
        if !known(region) {
            out.push(format!(
                "{path}: {region:?} is not a region of the aws, aws-cn or aws-us-gov partitions (botocore's partitions.json, src/s3/regions.rs): a typo?"
            ));
        }
    };
    unknown("upstream.region".to_owned(), &config.upstream.region);
    for (i, region) in config.sigv4.accepted_regions.iter().enumerate() {
        unknown(format!("sigv4.accepted_regions[{i}]"), region);
    }
    for (i, r) in config.routes.iter().enumerate() {
        if let crate::config::RouteAccessPoint::Fixed(ap) = &r.access_point {
            unknown(format!("routes[{i}].access_point"), ap.region());
        }
    }
    // `app` also covers `apple/` and `application.log`.
    for (i, r) in config.routes.iter().enumerate() {
        if !r.prefix.is_empty() && !r.prefix.ends_with('/') {
            out.push(format!(
                "routes[{i}]: prefix {:?} does not end with '/': it also covers keys like {:?}; write {:?} for the folder",
                r.prefix,
                format!("{}x/...", r.prefix),
                format!("{}/", r.prefix)
            ));
        }
    }
    out
}

/// Parts of a valid configuration that can never apply.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    // A route is shadowed when an earlier route of the same identity, bucket and prefix already
    // allows every class it allows: the earlier one always wins.
    for (i, r) in config.routes.iter().enumerate() {
        let shadowed_by = config.routes[..i].iter().position(|e| {
            e.identity == r.identity
                && e.bucket == r.bucket
                && e.prefix == r.prefix
                && r.operations.iter().all(|o| e.operations.contains(o))
        });
        if let Some(j) = shadowed_by {
            out.push(format!("routes[{i}]: can never match: routes[{j}] has the same identity, bucket and prefix and allows everything it allows"));
        }
    }
    out.extend(pattern_warnings(config));
    out.extend(exposure_warnings(config));
    for (i, ident) in config.identities.iter().enumerate() {
        if !config.routes.iter().any(|r| r.identity == ident.name) {
            out.push(format!(
                "identities[{i}] ({}): no route names it, so all its requests are denied",
                ident.name
            ));
        }
        let by_source = config.listeners.iter().any(|l| {
            l.identity_methods.contains(&IdentityMethod::Source) && l.sources.iter().any(|(_, id)| *id == ident.name)
        });
        let by_cert = config.listeners.iter().any(|l| {
            l.identity_methods.contains(&IdentityMethod::Mtls)
                && l.client_certificates.iter().any(|(_, id)| *id == ident.name)
        });
        let by_key = !ident.keys.is_empty()
            && config.listeners.iter().any(|l| {
                l.identity_methods
                    .iter()
                    .any(|m| matches!(m, IdentityMethod::SigV4 | IdentityMethod::SigV2))
            });
        if !(by_source || by_cert || by_key) {
            out.push(format!(
                "identities[{i}] ({}): no listener can identify it (no keys on a sigv4/sigv2 listener, no source network, no client certificate)",
                ident.name
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests;
