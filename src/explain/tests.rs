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

fn request(who: &str, method: &str, target: &str, headers: &[(&str, &str)]) -> Request {
    Request {
        caller: Caller::Identity(who.to_owned()),
        method: method.to_owned(),
        target: target.to_owned(),
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        remote: None,
        body: None,
    }
}

#[test]
fn explains_allowed_and_denied_requests_in_words() {
    let c = config("");
    let e = Explainer::new(&c);
    let cl: &[(&str, &str)] = &[("content-length", "0")];
    let cases: &[(&str, &str, &str, &[(&str, &str)], bool, &str)] = &[
        (
            "bob",
            "PUT",
            "/shared/Bob/report.csv",
            cl,
            true,
            "PUT https://bob-ap-123456789012.s3-accesspoint.us-east-1.amazonaws.com/Bob/report.csv",
        ),
        (
            "bob",
            "GET",
            "http://127.0.0.1:8080/shared/Bob/a%20b",
            &[],
            true,
            "routes[0]: identity bob, bucket shared, keys under \"Bob/\"",
        ),
        (
            "bob",
            "GET",
            "/shared/app/x",
            &[],
            false,
            "DENIED (AccessDenied): Access Denied: the key or listing prefix is outside",
        ),
        (
            "bob",
            "GET",
            "/other/x",
            &[],
            false,
            "no route gives this caller the bucket",
        ),
        ("carol", "GET", "/shared/Bob/x", &[], false, "no identity \"carol\""),
        (
            "bob",
            "DELETE",
            "/shared",
            &[],
            false,
            "DeleteBucket (not supported through access points)",
        ),
        ("bob", "GET", "/", &[], true, "answered by apgate"),
        (
            "bob",
            "GET",
            "/shared?list-type=2&prefix=Bob/&tagging",
            &[],
            false,
            "two operations at once",
        ),
        (
            "bob",
            "GET",
            "/shared/Bob/x",
            &[],
            true,
            "retries:   up to 3 attempts within 10 s",
        ),
        (
            "bob",
            "PUT",
            "/shared/Bob/x",
            cl,
            true,
            "if the body is at most 1048576 bytes",
        ),
        (
            "bob",
            "POST",
            "/shared/Bob/x?uploads",
            &[],
            true,
            "retries:   none: POST is not idempotent",
        ),
        (
            "bob",
            "GET",
            "/shared/Bob/x",
            &[("range", "bytes=0-1"), ("user-agent", "x")],
            true,
            "headers:   range (and Host and apgate's signature)",
        ),
        (
            "bob",
            "PUT",
            "/shared/Bob/b",
            &[("content-length", "0"), ("x-amz-copy-source", "shared/app/secret")],
            false,
            "(copy source)",
        ),
        // A refusal for what the route lacks names the route (the client's answer does not).
        (
            "bob",
            "PUT",
            "/shared/Bob/b",
            &[("content-length", "0"), ("x-amz-acl", "public-read")],
            false,
            "why:       routes[0] (keys under \"Bob/\") is the route for the request, and it does not let this through",
        ),
        (
            "bob",
            "PUT",
            "/shared/Bob/b",
            &[
                ("content-length", "0"),
                ("x-amz-server-side-encryption", "aws:kms"),
                ("x-amz-server-side-encryption-aws-kms-key-id", "alias/x"),
            ],
            false,
            "routes[0] (keys under \"Bob/\") is the route for the request",
        ),
        (
            "bob",
            "PUT",
            "/shared/Bob/b?acl",
            cl,
            false,
            "routes[0] (keys under \"Bob/\") is the route",
        ),
        (
            "bob",
            "DELETE",
            "/shared/Bob/b",
            &[("x-amz-bypass-governance-retention", "true")],
            false,
            "routes[0] (keys under \"Bob/\") is the route",
        ),
    ];
    for (who, m, t, h, allowed, needle) in cases {
        let x = e.explain(&request(who, m, t, h), SystemTime::now());
        assert_eq!(x.allowed, *allowed, "{m} {t}:\n{x}");
        assert!(x.to_string().contains(needle), "{m} {t}: want {needle:?} in\n{x}");
        assert!(!x.to_string().contains("{ "), "Rust debug output in\n{x}");
        assert_eq!(x.json["allowed"], serde_json::Value::Bool(*allowed));
    }
}

#[test]
fn explains_a_listener_with_the_requests_own_signature() {
    let c = config("");
    let e = Explainer::new(&c);
    let mut req = request(
        "",
        "GET",
        "/shared/Bob/x",
        &[("authorization", "AWS4-HMAC-SHA256 Credential=nobody")],
    );
    req.caller = Caller::Listener("shared".to_owned());
    let x = e.explain(&req, SystemTime::now());
    assert!(!x.allowed);
    assert!(x.to_string().contains("AuthorizationHeaderMalformed"), "{x}");
    req.caller = Caller::Listener("nope".to_owned());
    assert!(e
        .explain(&req, SystemTime::now())
        .to_string()
        .contains("no listener \"nope\""));
}

#[test]
fn reads_requests_as_json() {
    let v: serde_json::Value = serde_json::from_str(
        r#"{"method": "POST", "target": "/shared?delete", "headers": [["content-length", "50"]], "body_base64": "PERlbGV0ZT48T2JqZWN0PjxLZXk+Qm9iL2E8L0tleT48L09iamVjdD48L0RlbGV0ZT4="}"#,
    )
    .unwrap();
    let req = request_from_json(&v, &Caller::Identity("bob".to_owned())).unwrap();
    assert_eq!(
        req.body.as_deref(),
        Some(&b"<Delete><Object><Key>Bob/a</Key></Object></Delete>"[..])
    );
    let c = config("");
    let x = Explainer::new(&c).explain(&req, SystemTime::now());
    assert!(x.allowed, "{x}");
    assert_eq!(x.json["keys"], serde_json::json!(["Bob/a"]));
    // Without its body, a DeleteObjects is explained as one whose keys decide the route.
    let mut bodiless = req.clone();
    bodiless.body = None;
    let x = Explainer::new(&c).explain(&bodiless, SystemTime::now());
    assert!(x.to_string().contains("the keys it names decide the route"), "{x}");
    assert!(request_from_json(&serde_json::json!({"target": "/"}), &Caller::Identity("bob".to_owned())).is_err());
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
}

#[test]
fn explains_retries_per_method_and_setting() {
    let off = config("[upstream.retry]\nmax_attempts = 1\n");
    let x = Explainer::new(&off).explain(&request("bob", "GET", "/shared/Bob/x", &[]), SystemTime::now());
    assert!(
        x.to_string()
            .contains("retries:   none (upstream.retry.max_attempts = 1)"),
        "{x}"
    );
}

#[test]
fn names_the_key_and_route_that_refused_a_delete_objects() {
    let c = config(
        r#"
[[routes]]
identity = "bob"
bucket = "shared"
prefix = "Bob/legal/"
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/bob-ap"
allow = ["bypass-governance-retention"]
[[routes]]
identity = "bob"
bucket = "shared"
prefix = "Team/"
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/team-ap"
"#,
    );
    let e = Explainer::new(&c);
    let delete = |keys: &[&str], headers: &[(&str, &str)]| {
        let xml: String = keys
            .iter()
            .map(|k| format!("<Object><Key>{k}</Key></Object>"))
            .collect();
        let body = format!("<Delete>{xml}</Delete>").into_bytes();
        let mut h = vec![("content-length".to_owned(), body.len().to_string())];
        h.extend(headers.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())));
        let mut req = request("bob", "POST", "/shared?delete", &[]);
        req.headers = h;
        req.body = Some(body);
        e.explain(&req, SystemTime::now())
    };
    let bypass: &[(&str, &str)] = &[("x-amz-bypass-governance-retention", "true")];
    // (keys, headers, allowed, what the "refused:" line says; None: no such line)
    let cases: &[(&[&str], &[(&str, &str)], bool, Option<&str>)] = &[
        (&["Bob/legal/a", "Bob/legal/b"], bypass, true, None),
        (&["Bob/a"], &[], true, None),
        (
            &["Bob/legal/a", "Bob/other/x"],
            bypass,
            false,
            Some("key \"Bob/other/x\": its route routes[0] (keys under \"Bob/\") does not let this through"),
        ),
        (
            &["Bob/a", "Team/b"],
            &[],
            false,
            Some("key \"Team/b\": its route routes[2] goes through access point arn:aws:s3:us-east-1:123456789012:accesspoint/team-ap, the request's first key's routes[0] through arn:aws:s3:us-east-1:123456789012:accesspoint/bob-ap"),
        ),
        (
            &["Bob/a", "Alice/x"],
            &[],
            false,
            Some("key \"Alice/x\": the key or listing prefix is under none of this identity's prefixes"),
        ),
    ];
    for (keys, headers, allowed, refused_at) in cases {
        let x = delete(keys, headers);
        assert_eq!(x.allowed, *allowed, "{keys:?}: {x}");
        match refused_at {
            Some(want) => {
                assert!(x.to_string().contains(&format!("refused:   {want}")), "{keys:?}: {x}");
                assert!(
                    x.json["refused_at"].as_str().unwrap().starts_with(want),
                    "{keys:?}: {x}"
                );
            }
            None => assert!(!x.to_string().contains("refused:"), "{keys:?}: {x}"),
        }
    }
}
