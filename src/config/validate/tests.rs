use std::collections::HashMap;

use super::*;

const BASE: &str = r#"
[admin]
address = "127.0.0.1:9090"

[[listeners]]
name = "shared"
address = "127.0.0.1:8080"
identity_methods = ["sigv4"]

[[listeners]]
name = "sidecar"
address = "127.0.0.1:8081"
identity_methods = ["source"]

[[listeners.sources]]
cidr = "10.0.0.0/8"
identity = "app"

[upstream]
region = "us-east-1"
endpoint = { mode = "custom", url = "http://127.0.0.1:5000" }

[credentials]
type = "static"
access_key_id = { insecure_inline = "AKIDEXAMPLE" }
secret_access_key = { env = "UPSTREAM_SECRET" }

[[identities]]
name = "bob"

[[identities.keys]]
access_key_id = "APGTESTBOB0000000001"
secret_access_key = { env = "BOB_SECRET" }

[[identities]]
name = "app"

[[routes]]
identity = "bob"
bucket = "access-point-test"
prefix = "Bob/"
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/bob-access-point-test"

[[routes]]
identity = "app"
bucket = "access-point-test"
prefix = "app/"
operations = ["read", "list"]
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/app-vpc-access-point-test"
"#;

fn env() -> HashMap<String, String> {
    HashMap::from([
        ("UPSTREAM_SECRET".to_owned(), "upstream-secret-0123456789".to_owned()),
        ("BOB_SECRET".to_owned(), "bob-secret-0123456789abcdef".to_owned()),
    ])
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    from_toml(text, &env())
}

#[test]
fn parses_the_reference_config() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[1].identity_methods, [IdentityMethod::Source]);
    assert_eq!(c.listeners[1].sources[0].0.to_string(), "10.0.0.0/8");
    assert_eq!(
        c.sigv4.accepted_regions,
        ["us-east-1"],
        "defaults to the upstream region"
    );
    assert_eq!(c.sigv4.max_clock_skew, Duration::from_secs(900));
    assert_eq!(c.routes[1].operations, [OperationClass::Read, OperationClass::List]);
    assert_eq!(c.routes[0].operations.len(), 4, "no operations key allows all");
    assert_eq!(
        c.identities[0].keys[0].secret_access_key.expose(),
        "bob-secret-0123456789abcdef"
    );
    assert!(matches!(c.upstream.endpoint, Endpoint::Custom(_)));
    assert_eq!(
        c.upstream.retry,
        RetryConfig {
            max_attempts: 3,
            replay_buffer_bytes: 1 << 20,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            deadline: Duration::from_secs(10),
        },
        "retry defaults"
    );
    assert_eq!(c.server.client_body_idle_timeout, Duration::from_secs(30));
}

#[test]
fn reads_the_retry_table() {
    let text = BASE.replacen(
        "[credentials]",
        "[upstream.retry]\nmax_attempts = 1\nreplay_buffer_bytes = 0\ninitial_backoff_ms = 10\nmax_backoff_ms = 10\ndeadline_seconds = 0.5\n\n[credentials]",
        1,
    );
    let retry = parse(&text).unwrap().upstream.retry;
    assert_eq!(
        retry,
        RetryConfig {
            max_attempts: 1,
            replay_buffer_bytes: 0,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
            deadline: Duration::from_millis(500),
        }
    );
}

/// Each case is the body of an `[upstream.retry]` table and the problem it must cause.
#[test]
fn reports_retry_problems_with_their_key_paths() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "max_attempts = 0",
            "upstream.retry.max_attempts",
            "want 1 (no retries) to 10",
        ),
        (
            "max_attempts = 11",
            "upstream.retry.max_attempts",
            "want 1 (no retries) to 10",
        ),
        (
            "replay_buffer_bytes = 16777217",
            "upstream.retry.replay_buffer_bytes",
            "want 0 (retry bodiless requests only) to 16777216",
        ),
        (
            "initial_backoff_ms = 0",
            "upstream.retry.initial_backoff_ms",
            "want 1 to 60000",
        ),
        (
            "max_backoff_ms = 60001",
            "upstream.retry.max_backoff_ms",
            "want 1 to 60000",
        ),
        (
            "initial_backoff_ms = 500\nmax_backoff_ms = 100",
            "upstream.retry.max_backoff_ms",
            "must be at least initial_backoff_ms (500)",
        ),
        ("deadline_seconds = 0", "upstream.retry.deadline_seconds", "above 0"),
        ("attempts = 2", "upstream.retry.attempts", "unknown field `attempts`"),
    ];
    for (table, path, message) in cases {
        let text = BASE.replacen(
            "[credentials]",
            &format!("[upstream.retry]\n{table}\n\n[credentials]"),
            1,
        );
        let err = parse(&text).expect_err(table);
        let hit = err
            .problems
            .iter()
            .any(|p| p.path == *path && p.message.contains(message));
        assert!(hit, "{table}: want {path}: ..{message}.., got:\n{err}");
    }
}

#[test]
fn the_shipped_configs_are_valid() {
    // The shipped configs read their upstream keys from the environment at run time.
    let env = HashMap::from([
        ("APGATE_UPSTREAM_ACCESS_KEY_ID".to_owned(), "AKIDEXAMPLE".to_owned()),
        ("APGATE_UPSTREAM_SECRET_ACCESS_KEY".to_owned(), "x".repeat(40)),
        ("APGATE_BOB_SECRET".to_owned(), "y".repeat(40)),
    ]);
    let configs = [
        ("demo.toml", include_str!("../../../config/demo.toml")),
        ("sidecar.toml", include_str!("../../../config/sidecar.toml")),
        (
            "shared-gateway.toml",
            include_str!("../../../config/shared-gateway.toml"),
        ),
    ];
    for (name, text) in configs {
        if let Err(e) = from_toml(text, &env) {
            panic!("{name}: {e}");
        }
    }
}

/// Each case replaces one line of BASE and expects a problem at a key path.
#[test]
fn reports_each_problem_with_its_key_path() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "access_point = \"arn:aws:s3:us-east-1:123456789012:accesspoint/bob-access-point-test\"",
            "access_point = \"arn:aws:s3:us-east-1:12345:accesspoint/x\"",
            "routes[0].access_point",
            "account must be 12 digits",
        ),
        (
            "identity = \"bob\"\nbucket",
            "identity = \"carol\"\nbucket",
            "routes[0].identity",
            "no such identity",
        ),
        (
            "bucket = \"access-point-test\"\nprefix = \"Bob/\"",
            "bucket = \"Access_Point\"\nprefix = \"Bob/\"",
            "routes[0].bucket",
            "not valid",
        ),
        (
            "operations = [\"read\", \"list\"]",
            "operations = [\"read\", \"fly\"]",
            "routes[1].operations[1]",
            "want \"read\"",
        ),
        (
            "operations = [\"read\", \"list\"]",
            "operations = [\"read\", \"list\"]\nallow = [\"acl\", \"public\"]",
            "routes[1].allow[1]",
            "want one of \"acl\", \"bypass-governance-retention\", \"object-lock\"",
        ),
        (
            "operations = [\"read\", \"list\"]",
            "operations = [\"read\", \"list\"]\nkms_key_ids = [\"alias/a\", \"alias/a\"]",
            "routes[1].kms_key_ids[1]",
            "listed twice",
        ),
        (
            "operations = [\"read\", \"list\"]",
            "operations = [\"read\", \"list\"]\nkms_key_ids = [\"alias/a b\"]",
            "routes[1].kms_key_ids[0]",
            "want a KMS key id",
        ),
        (
            "operations = [\"read\", \"list\"]",
            "operations = [\"read\", \"list\"]\nkms_key_ids = [\"\"]",
            "routes[1].kms_key_ids[0]",
            "want a KMS key id",
        ),
        (
            "address = \"127.0.0.1:9090\"",
            "address = \"localhost\"",
            "admin.address",
            "want an IP address",
        ),
        (
            "address = \"127.0.0.1:8081\"",
            "address = \"127.0.0.1:8080\"",
            "listeners[1].address",
            "used by another listener",
        ),
        (
            "identity_methods = [\"sigv4\"]",
            "identity_methods = [\"sigv5\"]",
            "listeners[0].identity_methods[0]",
            "unknown method",
        ),
        (
            "cidr = \"10.0.0.0/8\"",
            "cidr = \"10.0.0.0/33\"",
            "listeners[1].sources[0].cidr",
            "want a CIDR",
        ),
        (
            "identity = \"app\"\n\n[upstream]",
            "identity = \"ghost\"\n\n[upstream]",
            "listeners[1].sources[0].identity",
            "no such identity",
        ),
        (
            "secret_access_key = { env = \"BOB_SECRET\" }",
            "secret_access_key = { env = \"NOPE\" }",
            "identities[0].keys[0].secret_access_key.env",
            "NOPE is not set",
        ),
        (
            "secret_access_key = { env = \"BOB_SECRET\" }",
            "secret_access_key = { env = \"BOB_SECRET\", insecure_inline = \"x\" }",
            "identities[0].keys[0].secret_access_key",
            "exactly one of",
        ),
        ("name = \"bob\"", "name = \"-\"", "identities[0].name", "reserved"),
        (
            "access_key_id = \"APGTESTBOB0000000001\"",
            "access_key_id = \"short\"",
            "identities[0].keys[0].access_key_id",
            "16-128",
        ),
        (
            "url = \"http://127.0.0.1:5000\"",
            "url = \"ftp://x/y\"",
            "upstream.endpoint.url",
            "want http(s)",
        ),
        (
            "region = \"us-east-1\"\nendpoint",
            "region = \"us-east-1\"\nconnect_timeout_seconds = -1.0\nendpoint",
            "upstream.connect_timeout_seconds",
            "above 0",
        ),
        (
            "[upstream]\n",
            "[server]\nclient_body_idle_timeout_seconds = 0\n\n[upstream]\n",
            "server.client_body_idle_timeout_seconds",
            "above 0",
        ),
        (
            "[upstream]\n",
            "[server]\nthreads = 0\n\n[upstream]\n",
            "server.threads",
            "want 1 to 1024",
        ),
        (
            "[upstream]\n",
            "[server]\nread_buffer_bytes = 4096\n\n[upstream]\n",
            "server.read_buffer_bytes",
            "want 65536 to 16777216",
        ),
        (
            "region = \"us-east-1\"\nendpoint",
            "region = \"us-east-1\"\nread_buffer_bytes = 17000000\nendpoint",
            "upstream.read_buffer_bytes",
            "want 65536 to 16777216",
        ),
    ];
    for (from, to, path, message) in cases {
        assert!(BASE.contains(from), "case does not apply: {from}");
        let text = BASE.replacen(from, to, 1);
        let err = parse(&text).expect_err(to);
        let hit = err
            .problems
            .iter()
            .any(|p| p.path == *path && p.message.contains(message));
        assert!(hit, "want {path}: ..{message}.., got:\n{err}");
    }
}

#[test]
fn unknown_keys_are_errors() {
    let text = BASE.replacen("[upstream]\n", "[upstream]\nregoin = \"x\"\n", 1);
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("unknown field `regoin`"), "{err}");
    let text = BASE.replacen("type = \"static\"", "type = \"magic\"", 1);
    assert!(parse(&text).is_err());
}

#[test]
fn collects_every_problem_not_just_the_first() {
    let text = BASE
        .replacen("address = \"127.0.0.1:9090\"", "address = \"x\"", 1)
        .replacen("prefix = \"Bob/\"", "prefix = \"Bob/\"\noperations = []", 1);
    let err = parse(&text).unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
}

/// BASE with bob's route's bucket and access point replaced.
fn with_bob_route(bucket: &str, access_point: &str) -> String {
    BASE.replacen(
        "bucket = \"access-point-test\"\nprefix = \"Bob/\"",
        &format!("bucket = \"{bucket}\"\nprefix = \"Bob/\""),
        1,
    )
    .replacen(
        "arn:aws:s3:us-east-1:123456789012:accesspoint/bob-access-point-test",
        access_point,
        1,
    )
}

#[test]
fn route_patterns_and_templates_are_checked_together() {
    const ARN: &str = "arn:aws:s3:us-east-1:123456789012:accesspoint/";
    // A pattern with a template.
    let c = parse(&with_bob_route("team-*", &format!("{ARN}{{bucket}}-rw"))).unwrap();
    assert!(matches!(&c.routes[0].bucket, RouteBucket::Pattern(p) if p.as_str() == "team-*"));
    assert!(matches!(&c.routes[0].access_point, RouteAccessPoint::Template(_)));
    // A template on a named bucket is filled in at once.
    let c = parse(&with_bob_route("team-a", &format!("{ARN}{{bucket}}-rw"))).unwrap();
    assert!(matches!(&c.routes[0].access_point, RouteAccessPoint::Fixed(ap) if ap.name() == "team-a-rw"));
    // (bucket, access point, key path, message)
    let long = "b".repeat(48);
    let cases: Vec<(String, String, &str, &str)> = vec![
        (
            "team-a".into(),
            format!("{ARN}{{bucket}}-{long}"),
            "routes[0].access_point",
            "not a valid access point name",
        ),
        (
            "team.*".into(),
            format!("{ARN}{{bucket}}-rw"),
            "routes[0].bucket",
            "cannot hold '.'",
        ),
        (
            "team-*".into(),
            format!("{ARN}{{bucket}}-{long}"),
            "routes[0].access_point",
            "at least",
        ),
        (
            "team-*".into(),
            format!("{ARN}{{bucket}}_rw"),
            "routes[0].access_point",
            "cannot stand in an access point name",
        ),
        (
            "team-*".into(),
            "arn:aws:s3:{bucket}:123456789012:accesspoint/x".into(),
            "routes[0].access_point",
            "only the access point name",
        ),
        (
            "Team-*".into(),
            format!("{ARN}{{bucket}}-rw"),
            "routes[0].bucket",
            "cannot stand in a bucket name",
        ),
        (
            "team-a".into(),
            "arn:aws:s3:::team-a".into(),
            "routes[0].access_point",
            "that is a bucket ARN",
        ),
    ];
    for (bucket, ap, path, message) in cases {
        let e = parse(&with_bob_route(&bucket, &ap)).unwrap_err();
        assert!(
            e.problems.iter().any(|p| p.path == path && p.message.contains(message)),
            "{bucket} / {ap}: {e}"
        );
    }
}
