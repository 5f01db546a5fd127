//! The `apgate` binary as operators use it: `check` (on every shipped config, and on a table of
//! broken ones), `explain`, `keygen`, `completions`, `--help`.

#![allow(clippy::unwrap_used)] // Test helpers: a failure here is a test failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn apgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_apgate"))
        .args(args)
        .env("APGATE_UPSTREAM_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("APGATE_UPSTREAM_SECRET_ACCESS_KEY", "x".repeat(40))
        .env("APGATE_BOB_SECRET", "y".repeat(40))
        .env_remove("APGATE_CONFIG")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("apgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn check_accepts_every_shipped_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let o = apgate(&["check", "-c", path.to_str().unwrap()]);
            assert!(o.status.success(), "{}: {}", path.display(), text(&o));
            assert!(text(&o).contains(": ok ("), "{}", text(&o));
            n += 1;
        }
    }
    assert!(n >= 3, "found {n} configs");
}

const BASE: &str = r#"
[admin]
address = "127.0.0.1:9090"

[[listeners]]
name = "shared"
address = "127.0.0.1:8080"
identity_methods = ["sigv4"]

[upstream]
region = "us-east-1"
endpoint = { mode = "custom", url = "http://127.0.0.1:5000" }

[credentials]
type = "static"
access_key_id = { env = "APGATE_UPSTREAM_ACCESS_KEY_ID" }
secret_access_key = { env = "APGATE_UPSTREAM_SECRET_ACCESS_KEY" }

[[identities]]
name = "bob"

[[identities.keys]]
access_key_id = "APGTESTBOB0000000001"
secret_access_key = { env = "APGATE_BOB_SECRET" }

[[routes]]
identity = "bob"
bucket = "access-point-test"
prefix = "Bob/"
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/bob-access-point-test"
"#;

#[test]
fn check_names_the_key_path_and_the_problem_of_each_broken_config() {
    // (what to replace, with what, expected text in the output)
    let cases: &[(&str, &str, &str)] = &[
        ("123456789012:accesspoint/bob", "12345:accesspoint/bob", "routes[0].access_point: \"arn:aws:s3:us-east-1:12345:accesspoint/bob-access-point-test\": account must be 12 digits"),
        ("accesspoint/bob-access-point-test", "accesspoint/BOB", "routes[0].access_point"),
        ("identity = \"bob\"\nbucket", "identity = \"carol\"\nbucket", "routes[0].identity: \"carol\": no such identity"),
        ("bucket = \"access-point-test\"", "bucket = \"Access_Point\"", "routes[0].bucket"),
        ("prefix = \"Bob/\"", "prefix = \"Bob/\"\noperations = [\"fly\"]", "routes[0].operations[0]: \"fly\""),
        ("prefix = \"Bob/\"", "prefix = \"Bob/\"\noperations = []", "routes[0].operations: an empty list allows nothing"),
        ("address = \"127.0.0.1:9090\"", "address = \"localhost:9090\"", "admin.address: \"localhost:9090\": want an IP address and port"),
        ("address = \"127.0.0.1:8080\"", "address = \"127.0.0.1:9090\"", "admin.address: 127.0.0.1:9090 is also a listener address"),
        ("identity_methods = [\"sigv4\"]", "identity_methods = [\"kerberos\"]", "listeners[0].identity_methods[0]: \"kerberos\": unknown method"),
        ("identity_methods = [\"sigv4\"]", "identity_methods = [\"source\"]", "listeners[0].sources: the \"source\" method needs"),
        ("identity_methods = [\"sigv4\"]", "identity_methods = [\"mtls\"]", "listeners[0].tls.client_ca_file"),
        ("{ env = \"APGATE_BOB_SECRET\" }", "\"plain-text-secret\"", "invalid TOML"),
        ("access_key_id = \"APGTESTBOB0000000001\"", "access_key_id = \"short\"", "identities[0].keys[0].access_key_id: \"short\": want 16-128 letters and digits"),
        ("url = \"http://127.0.0.1:5000\"", "url = \"ftp://x\"", "upstream.endpoint.url"),
        ("region = \"us-east-1\"\nendpoint", "region = \"us-east-1\"\nregoin = \"x\"\nendpoint", "unknown field `regoin`"),
        ("name = \"bob\"\n\n[[identities.keys]]", "name = \"bob\"\nrole_arn = \"arn:aws:iam::1:role/x\"\n\n[[identities.keys]]", "identities[0].role_arn"),
    ];
    assert!(cases.len() >= 14);
    for (i, (from, to, want)) in cases.iter().enumerate() {
        assert!(BASE.contains(from), "case {i} does not apply: {from}");
        let path = tmp(&format!("broken-{i}.toml"));
        std::fs::write(&path, BASE.replacen(from, to, 1)).unwrap();
        let o = apgate(&["check", "-c", path.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(64), "case {i}: {}", text(&o));
        assert!(text(&o).contains(want), "case {i}: want {want:?} in:\n{}", text(&o));
    }
    let path = tmp("base.toml");
    std::fs::write(&path, BASE).unwrap();
    let o = apgate(&["check", "-c", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
}

/// A pipeline checks a configuration without its secrets; `serve` still refuses to start without
/// them.
#[test]
fn check_and_explain_work_without_the_secrets_and_serve_does_not() {
    let cases = [
        (
            "{ env = \"APGATE_NOPE\" }",
            "identities[0].keys[0].secret_access_key.env: environment variable APGATE_NOPE is not set",
        ),
        (
            "{ file = \"/nonexistent/secret\" }",
            "identities[0].keys[0].secret_access_key.file: cannot read /nonexistent/secret",
        ),
    ];
    for (i, (source, said)) in cases.iter().enumerate() {
        let path = tmp(&format!("no-secret-{i}.toml"));
        std::fs::write(&path, BASE.replacen("{ env = \"APGATE_BOB_SECRET\" }", source, 1)).unwrap();
        let path = path.to_str().unwrap();
        let o = apgate(&["check", "-c", path]);
        assert!(o.status.success(), "case {i}: {}", text(&o));
        assert!(
            text(&o).contains("not present here") && text(&o).contains(said),
            "case {i}: {}",
            text(&o)
        );
        let o = apgate(&[
            "explain",
            "-c",
            path,
            "--identity",
            "bob",
            "GET",
            "/access-point-test/Bob/x",
        ]);
        assert!(o.status.success(), "case {i}: {}", text(&o));
        assert!(text(&o).contains("ALLOWED"), "case {i}: {}", text(&o));
        let o = apgate(&["serve", "-c", path]);
        assert_eq!(o.status.code(), Some(64), "case {i}: {}", text(&o));
        assert!(text(&o).contains(said), "case {i}: {}", text(&o));
    }
}

#[test]
fn check_warns_about_what_can_never_apply() {
    let path = tmp("warn.toml");
    std::fs::write(&path, format!("{BASE}\n[[identities]]\nname = \"ghost\"\n")).unwrap();
    let o = apgate(&["check", "-c", path.to_str().unwrap()]);
    assert!(o.status.success());
    assert!(
        text(&o).contains("warning: identities[1] (ghost): no route names it"),
        "{}",
        text(&o)
    );
}

#[test]
fn check_warns_about_settings_easy_to_get_dangerously_wrong() {
    let exposed = "\n[[listeners]]\nname = \"sidecar\"\naddress = \"0.0.0.0:8081\"\nidentity_methods = [\"source\"]\n\n[[listeners.sources]]\ncidr = \"10.0.0.0/8\"\nidentity = \"bob\"\n\n[[listeners.sources]]\ncidr = \"10.1.2.0/24\"\nidentity = \"bob\"\n";
    let path = tmp("exposed.toml");
    let text_ = BASE.replacen("prefix = \"Bob/\"", "prefix = \"Bob\"", 1) + exposed;
    std::fs::write(&path, text_).unwrap();
    let o = apgate(&["check", "-c", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("warning: listeners[1].sources[0]: 10.0.0.0/8 on 0.0.0.0:8081"),
        "{t}"
    );
    assert!(!t.contains("sources[1]"), "a /24 is not broad: {t}");
    assert!(
        t.contains("warning: routes[0]: prefix \"Bob\" does not end with '/'"),
        "{t}"
    );
    // A region no partition has (here a typo in an access point ARN and in upstream.region).
    std::fs::write(
        &path,
        BASE.replacen("arn:aws:s3:us-east-1:", "arn:aws:s3:us-est-1:", 1)
            .replacen("region = \"us-east-1\"", "region = \"eu-wset-1\"", 1),
    )
    .unwrap();
    let o = apgate(&["check", "-c", path.to_str().unwrap()]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("warning: routes[0].access_point: \"us-est-1\" is not a region"),
        "{t}"
    );
    assert!(
        t.contains("warning: upstream.region: \"eu-wset-1\" is not a region"),
        "{t}"
    );
    // The same range on a loopback listener, and a prefix with its '/', are fine.
    std::fs::write(
        &path,
        BASE.to_owned() + &exposed.replace("0.0.0.0:8081", "127.0.0.1:8081"),
    )
    .unwrap();
    let o = apgate(&["check", "-c", path.to_str().unwrap()]);
    assert!(o.status.success() && !text(&o).contains("warning:"), "{}", text(&o));
}

#[test]
fn explain_shows_the_decision() {
    let path = tmp("explain.toml");
    std::fs::write(&path, BASE).unwrap();
    let p = path.to_str().unwrap();
    let o = apgate(&[
        "explain",
        "-c",
        p,
        "--identity",
        "bob",
        "PUT",
        "/access-point-test/Bob/report.csv",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("routes[0]")
            && text(&o)
                .contains("bob-access-point-test-123456789012.s3-accesspoint.us-east-1.amazonaws.com/Bob/report.csv"),
        "{}",
        text(&o)
    );
    let o = apgate(&[
        "explain",
        "-c",
        p,
        "--identity",
        "bob",
        "GET",
        "/access-point-test/app/x",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("DENIED"), "{}", text(&o));
    // In words, naming the configuration (the client's message names none of it), not Rust debug.
    assert!(
        text(&o).contains(
            "why:       the key or listing prefix is under none of this identity's prefixes for the bucket: \"Bob/\""
        ),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("OutsidePrefixes"), "{}", text(&o));
}

#[test]
fn health_reports_whether_readyz_answers_200() {
    use std::io::{Read, Write};
    // A one-shot server answering 200, and a port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nready\n")
            .unwrap();
    });
    let o = apgate(&["health", "--url", &format!("http://{addr}/readyz")]);
    assert!(o.status.success(), "{}", text(&o));
    server.join().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let o = apgate(&[
        "health",
        "--url",
        &format!("http://{closed}/readyz"),
        "--timeout-seconds",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn keygen_completions_and_help() {
    let o = apgate(&["keygen", "--identity", "bob"]);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    // The variable the shipped configs use for bob's secret.
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/config/apgate-shared.toml")).unwrap();
    assert!(shipped.contains("APGATE_BOB_SECRET"));
    assert!(
        o.status.success() && out.contains("access_key_id = \"APG") && out.contains("{ env = \"APGATE_BOB_SECRET\" }"),
        "{out}"
    );
    // The secret is on stderr only: a redirect of stdout into a config file cannot capture it.
    let secret = err.rsplit(": ").next().unwrap().trim();
    assert!(secret.len() >= 30, "{err}");
    assert!(!out.contains(secret), "{out}");
    let o = apgate(&["completions", "bash"]);
    assert!(o.status.success() && text(&o).contains("_apgate"), "{}", text(&o));
    let o = apgate(&["--help"]);
    for cmd in ["serve", "check", "explain", "keygen", "completions", "health"] {
        assert!(text(&o).contains(cmd), "{cmd} missing from --help:\n{}", text(&o));
    }
}

/// Issue 16, item 6: a config error names the key path and the problem, never a value from a
/// secret position nor a line that holds one, in `check` and in `explain` (the reload log prints
/// the same error).
#[test]
fn config_errors_never_echo_a_secret() {
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let broken = [
        // A plain string where a secret source belongs.
        format!("\"{SECRET}\""),
        // A syntax error on an insecure_inline line.
        format!("{{ insecure_inline = \"{SECRET} }}"),
        format!("{{ insecure_inline = \"{SECRET}\", }}"),
        format!("{{ insecure_inline = {SECRET} }}"),
        format!("{{ insecure_inline = \"{SECRET}\" \"x\" }}"),
    ];
    for (i, secret) in broken.iter().enumerate() {
        let path = tmp(&format!("secret-{i}.toml"));
        std::fs::write(&path, BASE.replacen("{ env = \"APGATE_BOB_SECRET\" }", secret, 1)).unwrap();
        let p = path.to_str().unwrap();
        for args in [
            vec!["check", "-c", p],
            vec!["explain", "-c", p, "--identity", "bob", "GET", "/x"],
        ] {
            let o = apgate(&args);
            assert_eq!(o.status.code(), Some(64), "case {i} {args:?}: {}", text(&o));
            let out = text(&o);
            assert!(out.contains("invalid TOML at line"), "case {i}: {out}");
            for piece in [SECRET, &SECRET[..12], &SECRET[20..]] {
                assert!(!out.contains(piece), "case {i} {args:?} echoes the secret:\n{out}");
            }
        }
    }
    // A config path that leads to another file: none of its lines is printed.
    let other = tmp("shadow");
    std::fs::write(&other, format!("root:{SECRET}:19000:0:99999:7:::\n")).unwrap();
    let link = tmp("linked.toml");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&other, &link).unwrap();
    let o = apgate(&["check", "-c", link.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(!text(&o).contains(&SECRET[..12]), "{}", text(&o));
}

/// `health` asks the configuration's admin address (a wildcard one on loopback), not a fixed port.
#[test]
fn health_reads_the_admin_address_from_the_config() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut head = [0u8; 1024];
        let n = conn.read(&mut head).unwrap();
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .unwrap();
        String::from_utf8_lossy(&head[..n]).into_owned()
    });
    let dir = std::env::temp_dir().join(format!("apgate-health-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("apgate.toml");
    // Only [admin] is read: the rest may be anything, secrets absent.
    std::fs::write(
        &config,
        format!("[admin]\naddress = \"0.0.0.0:{port}\"\n\n[[routes]]\nwhatever = 1\n"),
    )
    .unwrap();
    let o = apgate(&["health", "-c", config.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(server.join().unwrap().starts_with("GET /readyz "));
    // Without a config it asks 127.0.0.1:9090; a config without [admin] is a config error.
    std::fs::write(&config, "[server]\n").unwrap();
    let o = apgate(&["health", "-c", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(text(&o).contains("no [admin] address"), "{}", text(&o));
    std::fs::remove_dir_all(&dir).ok();
}
