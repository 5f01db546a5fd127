//! `apgate explain` and the warnings of `apgate check`: what the configuration does with a request,
//! without sending anything, and which parts of it can never apply.

use std::fmt;

use http::{HeaderMap, Method};

use crate::config::{Config, Endpoint, IdentityMethod, RetryConfig};
use crate::routing::{Router, Scope};
use crate::s3::addressing::parse_target;
use crate::s3::{Operation, Support};

/// What apgate would do with one request from one identity.
#[derive(Debug)]
pub struct Explanation {
    pub lines: Vec<String>,
    pub allowed: bool,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Explains a request: `target` is a path (`/bucket/key?query`) or a full URL whose host may name
/// a virtual-hosted bucket.
pub fn explain(config: &Config, identity: &str, method: &str, target: &str, copy_source: Option<&str>) -> Explanation {
    let mut lines = Vec::new();
    let deny = |lines: &mut Vec<String>, why: String| {
        lines.push(format!("decision:  DENIED: {why}"));
        Explanation {
            lines: std::mem::take(lines),
            allowed: false,
        }
    };
    let Ok(method) = method.to_ascii_uppercase().parse::<Method>() else {
        return deny(&mut lines, format!("{method:?} is not an HTTP method"));
    };
    let (host, path_and_query) = match target.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => (Some(&rest[..i]), &rest[i..]),
            None => (Some(rest), "/"),
        },
        None => (None, target),
    };
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    if !config.identities.iter().any(|i| i.name == identity) {
        return deny(
            &mut lines,
            format!("there is no identity {identity:?} in the configuration"),
        );
    }
    lines.push(format!("identity:  {identity}"));
    let parsed = match parse_target(host, path, query, &config.addressing.virtual_host_domains) {
        Ok(t) => t,
        Err(e) => return deny(&mut lines, format!("the request target is invalid: {e}")),
    };
    let mut headers = HeaderMap::new();
    if let Some(cs) = copy_source {
        if let Ok(v) = cs.parse() {
            headers.insert("x-amz-copy-source", v);
        }
    }
    let op = Operation::classify(&method, &parsed, &headers);
    lines.push(format!("operation: {} (class {})", op.as_str(), op.class().as_str()));
    lines.push(format!(
        "bucket:    {}   key: {}",
        parsed.bucket.as_ref().map_or("-", |b| b.as_str()),
        parsed.key.as_deref().unwrap_or("-")
    ));
    match op.support() {
        Support::Forwarded => {}
        Support::Synthesized => {
            lines.push(
                "decision:  ALLOWED: answered by apgate from the caller's routes (nothing is sent upstream)".to_owned(),
            );
            return Explanation { lines, allowed: true };
        }
        Support::NotYet | Support::NotThroughAccessPoints => {
            return deny(
                &mut lines,
                format!("{} is not forwarded through access points", op.as_str()),
            );
        }
    }
    let Some(bucket) = parsed.bucket.as_ref() else {
        return deny(&mut lines, "no bucket".to_owned());
    };
    let scope = match (&parsed.key, op.list_prefix(&parsed)) {
        (Some(key), _) => Scope::Key(key),
        (None, Some(prefix)) => Scope::ListPrefix(prefix),
        (None, None) => Scope::Bucket,
    };
    let router = Router::new(&config.routes);
    let route = match router.route(identity, bucket, scope, op.class()) {
        Ok(r) => r,
        Err(denial) => return deny(&mut lines, format!("{denial:?}: {}", denial.message())),
    };
    let ap = &route.access_point;
    lines.push(format!(
        "route:     routes[{}] (identity {}, bucket {}, prefix {:?}, operations {})",
        route.index,
        route.identity,
        route.bucket,
        route.prefix,
        route
            .operations
            .iter()
            .map(|o| o.as_str())
            .collect::<Vec<_>>()
            .join("+")
    ));
    lines.push(format!("access point: {}", ap.arn()));
    let outbound = crate::rewrite::rewrite(&method, &headers, &parsed, ap, &config.upstream.endpoint);
    lines.push(format!(
        "upstream:  {} {}  (Host {}, signed for {}/s3)",
        method,
        outbound.signing_uri,
        ap.host(),
        ap.region()
    ));
    if let Endpoint::Custom(url) = &config.upstream.endpoint {
        lines.push(format!("connect:   {url} (custom endpoint)"));
    }
    let signer = match config
        .identities
        .iter()
        .find(|i| i.name == identity)
        .and_then(|i| i.role.as_ref())
    {
        Some(role) => format!("the assumed role {} (session {})", role.arn, role.session_name),
        None => "apgate's base credentials".to_owned(),
    };
    lines.push(format!("signed by: {signer}"));
    lines.push(format!("retries:   {}", retries(&config.upstream.retry, &method)));
    if let Some(cs) = copy_source {
        match crate::s3::copy_source::CopySource::parse(cs) {
            Ok(src) => match router.route(
                identity,
                &src.bucket,
                Scope::Key(&src.key),
                crate::s3::OperationClass::Read,
            ) {
                Ok(r) => lines.push(format!(
                    "copy source: readable through routes[{}] → {}",
                    r.index,
                    src.to_access_point_header(&r.access_point)
                )),
                Err(d) => return deny(&mut lines, format!("copy source: {}", d.message())),
            },
            Err(e) => return deny(&mut lines, format!("copy source: {e}")),
        }
    }
    lines.push("decision:  ALLOWED".to_owned());
    Explanation { lines, allowed: true }
}

/// Parts of a valid configuration that can never apply.
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
    let (idle, head) = (
        config.server.client_body_idle_timeout,
        config.upstream.response_header_timeout,
    );
    if idle >= head {
        out.push(format!(
            "server.client_body_idle_timeout_seconds ({}) is not below upstream.response_header_timeout_seconds ({}): a client that stalls mid-upload gets 504 GatewayTimeout instead of 400 RequestTimeout",
            idle.as_secs_f64(),
            head.as_secs_f64()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            r#"
[admin]
address = "127.0.0.1:9090"
[[listeners]]
name = "shared"
address = "127.0.0.1:8080"
identity_methods = ["sigv4"]
[upstream]
region = "us-east-1"
[credentials]
type = "static"
access_key_id = {{ insecure_inline = "AKIDEXAMPLE" }}
secret_access_key = {{ insecure_inline = "upstream-secret-0123456789" }}
[[identities]]
name = "bob"
[[identities.keys]]
access_key_id = "APGTESTBOB0000000001"
secret_access_key = {{ insecure_inline = "bob-secret-0123456789abcdef" }}
[[routes]]
identity = "bob"
bucket = "shared"
prefix = "Bob/"
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/bob-ap"
{extra}"#
        );
        Config::from_toml(&text).unwrap()
    }

    #[test]
    fn explains_allowed_and_denied_requests() {
        let c = config("");
        let cases: &[(&str, &str, &str, bool, &str)] = &[
            (
                "bob",
                "PUT",
                "/shared/Bob/report.csv",
                true,
                "bob-ap-123456789012.s3-accesspoint.us-east-1.amazonaws.com/Bob/report.csv",
            ),
            (
                "bob",
                "GET",
                "http://127.0.0.1:8080/shared/Bob/a%20b",
                true,
                "routes[0]",
            ),
            ("bob", "GET", "/shared/app/x", false, "OutsidePrefixes"),
            ("bob", "GET", "/other/x", false, "NoRouteForBucket"),
            ("carol", "GET", "/shared/Bob/x", false, "no identity"),
            ("bob", "DELETE", "/shared", false, "not forwarded"),
            ("bob", "GET", "/", true, "answered by apgate"),
            (
                "bob",
                "GET",
                "/shared/Bob/x",
                true,
                "retries:   up to 3 attempts within 10 s on connection errors, timeouts, 500 and 503",
            ),
            (
                "bob",
                "PUT",
                "/shared/Bob/x",
                true,
                "if the body is at most 1048576 bytes",
            ),
            (
                "bob",
                "POST",
                "/shared/Bob/x?uploads",
                true,
                "retries:   none: POST is not idempotent",
            ),
        ];
        for (who, m, t, allowed, needle) in cases {
            let e = explain(&c, who, m, t, None);
            assert_eq!(e.allowed, *allowed, "{m} {t}:\n{e}");
            assert!(e.to_string().contains(needle), "{m} {t}: want {needle:?} in\n{e}");
        }
        let copy = explain(&c, "bob", "PUT", "/shared/Bob/b", Some("shared/app/secret"));
        assert!(!copy.allowed && copy.to_string().contains("copy source"), "{copy}");
    }

    #[test]
    fn warns_about_routes_and_identities_that_cannot_apply() {
        let c = config(
            r#"
[[routes]]
identity = "bob"
bucket = "shared"
prefix = "Bob/"
operations = ["read"]
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/other-ap"
[[identities]]
name = "ghost"
"#,
        );
        let w = warnings(&c).join("\n");
        assert!(w.contains("routes[1]: can never match"), "{w}");
        assert!(w.contains("identities[1] (ghost): no route"), "{w}");
        assert!(w.contains("identities[1] (ghost): no listener can identify it"), "{w}");
        assert!(warnings(&config("")).is_empty());
        let stalls = config("[server]\nclient_body_idle_timeout_seconds = 60\n");
        let w = warnings(&stalls).join("\n");
        assert!(w.contains("client_body_idle_timeout_seconds (60) is not below"), "{w}");
    }

    #[test]
    fn explains_retries_per_method_and_setting() {
        let off = config("[upstream.retry]\nmax_attempts = 1\n");
        let e = explain(&off, "bob", "GET", "/shared/Bob/x", None).to_string();
        assert!(e.contains("retries:   none (upstream.retry.max_attempts = 1)"), "{e}");
    }
}
