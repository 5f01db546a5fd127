//! In-process tests of the whole proxy against a scripted upstream: what apgate sends (host, path,
//! signature verifiable with apgate's key), what it rewrites on the way back (bucket-revealing error
//! bodies, `Location` headers), and how upstream failures surface (502, 504).

#![allow(clippy::unwrap_used)] // Test helpers: a failure here is a test failure.
use crate::gateway;
use crate::upstream;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

use gateway::{config_toml, verify_upstream_signature, Conf, Gw, AP_HOST};
use upstream::Log;

/// An upstream that records each request and answers by path.
async fn scripted_upstream() -> (SocketAddr, Log) {
    upstream::recording(|path| async move {
        let resp = match path.as_str() {
            "/Bob/missing" => Response::builder()
                .status(404)
                .header("content-type", "application/xml")
                .body(Full::new(Bytes::from(format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchBucket</Code><Message>nope</Message><BucketName>real-shared-bucket</BucketName><Endpoint>{AP_HOST}</Endpoint><RequestId>R</RequestId></Error>"
                )))),
            "/Bob/moved" => Response::builder()
                .status(307)
                .header("location", format!("https://{AP_HOST}/Bob/moved"))
                .body(Full::new(Bytes::new())),
            "/Bob/located" => Response::builder()
                .status(201)
                .header("location", format!("https://{AP_HOST}/Bob/located"))
                .body(Full::new(Bytes::new())),
            "/Bob/slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Response::builder().status(200).body(Full::new(Bytes::from_static(b"late")))
            }
            _ => Response::builder().status(200).body(Full::new(Bytes::from_static(b"hello from upstream"))),
        };
        resp.unwrap()
    })
    .await
}

/// apgate with one `source` listener (every local caller is bob) and a 0.5 s response header
/// timeout.
async fn gateway(upstream: SocketAddr) -> Gw {
    let conf = Conf {
        upstream: "response_header_timeout_seconds = 0.5",
        ..Conf::default()
    };
    Gw::start(config_toml(&format!("http://{upstream}"), conf)).await
}

async fn send(addr: SocketAddr, method: Method, path: &str) -> (StatusCode, HeaderMap, Bytes) {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", format!("{addr}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

#[tokio::test]
async fn forwards_to_the_access_point_signed_with_apgates_key() {
    let (up, seen) = scripted_upstream().await;
    let gw = gateway(up).await;
    let (status, _, body) = send(gw.addr, Method::GET, "/shared/Bob/a%20b+c%C3%BC?versionId=1").await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"hello from upstream");
    let seen = seen.lock().unwrap()[0].clone();
    assert_eq!(seen.headers["host"], AP_HOST);
    assert_eq!(seen.path_and_query, "/Bob/a%20b%2Bc%C3%BC?versionId=1");
    // The upstream can verify what apgate signed, with apgate's own key.
    let ok = verify_upstream_signature(&seen.method, &seen.path_and_query, &seen.headers).unwrap();
    assert_eq!(&*ok.identity, "apgate");
}

#[tokio::test]
async fn upstream_errors_are_answered_in_apgates_words() {
    let (up, _) = scripted_upstream().await;
    let gw = gateway(up).await;
    let (status, headers, body) = send(gw.addr, Method::GET, "/shared/Bob/missing").await;
    assert_eq!(status, 404);
    let text = std::str::from_utf8(&body).unwrap();
    let request_id = headers["x-amz-request-id"].to_str().unwrap();
    assert_eq!(
        text,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchBucket</Code>\
             <Message>The specified bucket does not exist.</Message><BucketName>shared</BucketName>\
             <RequestId>{request_id}</RequestId></Error>"
        )
    );
    assert_ne!(request_id, "R");
    assert_eq!(headers["content-length"], body.len().to_string().as_str());
}

#[tokio::test]
async fn location_headers_point_at_apgate() {
    let (up, _) = scripted_upstream().await;
    let gw = gateway(up).await;
    let (status, headers, _) = send(gw.addr, Method::GET, "/shared/Bob/located").await;
    assert_eq!(status, 201);
    assert_eq!(
        headers["location"],
        format!("http://{}/shared/Bob/located", gw.addr).as_str()
    );
}

#[tokio::test]
async fn an_upstream_redirect_is_apgates_own_fault() {
    // The access point's endpoint is apgate's to get right: the client gets a 500, not a redirect.
    let (up, _) = scripted_upstream().await;
    let gw = gateway(up).await;
    let (status, headers, body) = send(gw.addr, Method::GET, "/shared/Bob/moved").await;
    assert_eq!(status, 500);
    assert!(headers.get("location").is_none());
    assert!(std::str::from_utf8(&body)
        .unwrap()
        .contains("<Code>InternalError</Code>"));
}

#[tokio::test]
async fn an_upstream_that_does_not_answer_in_time_is_a_504() {
    let (up, _) = scripted_upstream().await;
    let gw = gateway(up).await;
    let (status, _, body) = send(gw.addr, Method::GET, "/shared/Bob/slow").await;
    assert_eq!(status, 504);
    assert!(std::str::from_utf8(&body)
        .unwrap()
        .contains("<Code>GatewayTimeout</Code>"));
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502() {
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let gw = gateway(closed).await;
    let (status, _, body) = send(gw.addr, Method::GET, "/shared/Bob/x").await;
    assert_eq!(status, 502);
    assert!(std::str::from_utf8(&body).unwrap().contains("<Code>BadGateway</Code>"));
}

#[tokio::test]
async fn a_refused_request_never_reaches_the_upstream() {
    let (up, seen) = scripted_upstream().await;
    let gw = gateway(up).await;
    let (status, _, body) = send(gw.addr, Method::GET, "/shared/app/x").await;
    assert_eq!(status, 403);
    assert!(std::str::from_utf8(&body)
        .unwrap()
        .contains("<Code>AccessDenied</Code>"));
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn x_amz_query_parameters_are_refused_not_forwarded() {
    let (up, seen) = scripted_upstream().await;
    let gw = gateway(up).await;
    let (status, _, body) = send(
        gw.addr,
        Method::PUT,
        "/shared/Bob/dst?x-amz-copy-source=other-bucket%2Fsecret",
    )
    .await;
    assert_eq!(status, 400);
    assert!(std::str::from_utf8(&body)
        .unwrap()
        .contains("<Code>InvalidArgument</Code>"));
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_reload_changes_routes_without_a_restart_and_a_bad_one_changes_nothing() {
    let (up, seen) = scripted_upstream().await;
    let gw = gateway(up).await;
    let (status, _, _) = send(gw.addr, Method::GET, "/shared/Team/x").await;
    assert_eq!(status, 403, "no route for Team/ yet");

    // The listeners are bound to port 0 in the test config; a reload must name the same addresses,
    // so reload the exact running text plus one route.
    let with_team = format!(
        "{}\n[[routes]]\nidentity = \"bob\"\nbucket = \"shared\"\nprefix = \"Team/\"\naccess_point = \"arn:aws:s3:us-east-1:123456789012:accesspoint/team-ap\"\n",
        gw.toml
    );
    let dir = std::env::temp_dir().join(format!("apgate-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("apgate.toml");
    std::fs::write(&path, &with_team).unwrap();
    gw.running.reload_from(&path).await.unwrap();
    let (status, _, _) = send(gw.addr, Method::GET, "/shared/Team/x").await;
    assert_eq!(status, 200, "the new route applies to the next request");
    assert_eq!(
        seen.lock().unwrap().last().unwrap().headers["host"],
        "team-ap-123456789012.s3-accesspoint.us-east-1.amazonaws.com"
    );

    // A broken file: refused, counted, and the running routes stay.
    std::fs::write(
        &path,
        with_team.replace("prefix = \"Team/\"", "prefix = \"Team/\"\noperations = [\"fly\"]"),
    )
    .unwrap();
    let err = gw.running.reload_from(&path).await.unwrap_err();
    assert!(err.to_string().contains("routes[1].operations[0]"), "{err}");
    let (status, _, _) = send(gw.addr, Method::GET, "/shared/Team/x").await;
    assert_eq!(status, 200, "the old configuration keeps serving");
    let metrics = gw.running.metrics.render();
    assert!(
        metrics.contains("apgate_config_reloads_total{result=\"success\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("apgate_config_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );

    // Listener addresses are bound at start: changing one needs a restart.
    std::fs::write(
        &path,
        with_team.replacen("address = \"127.0.0.1:0\"", "address = \"127.0.0.1:1\"", 1),
    )
    .unwrap();
    let err = gw.running.reload_from(&path).await.unwrap_err();
    assert!(err.to_string().contains("restart"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_caller_over_its_concurrency_limit_gets_slow_down() {
    let (up, seen) = scripted_upstream().await;
    let gw = gateway(up).await;
    let dir = std::env::temp_dir().join(format!("apgate-limit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("apgate.toml");
    std::fs::write(
        &path,
        format!("{}\n[server]\nmax_concurrent_requests_per_identity = 1\n", gw.toml),
    )
    .unwrap();
    gw.running.reload_from(&path).await.unwrap();
    // The first request holds bob's only slot while the upstream stalls (until the 0.5 s timeout).
    let sidecar = gw.addr;
    let first = tokio::spawn(async move { send(sidecar, Method::GET, "/shared/Bob/slow").await.0 });
    // Once the upstream has it, the first request holds the slot.
    let started = std::time::Instant::now();
    while seen.lock().unwrap().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the first request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _, body) = send(gw.addr, Method::GET, "/shared/Bob/x").await;
    assert_eq!(status, 503);
    assert!(std::str::from_utf8(&body).unwrap().contains("<Code>SlowDown</Code>"));
    assert_eq!(first.await.unwrap(), 504);
    // The slot is released when the first request ends.
    let (status, _, _) = send(gw.addr, Method::GET, "/shared/Bob/x").await;
    assert_eq!(status, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Red-team pass 4, F3: a reload builds a new state, and the per-identity count must not start
/// again at 0 while the requests admitted before it still run (each reload gave bob a fresh
/// budget: 32, 64, 96, 128 requests in flight with the default limit of 32).
#[tokio::test]
async fn a_reload_gives_no_caller_a_fresh_concurrency_budget() {
    let (up, seen) = scripted_upstream().await;
    let gw = Gw::start(config_toml(
        &format!("http://{up}"),
        Conf {
            upstream: "response_header_timeout_seconds = 4",
            ..Conf::default()
        },
    ))
    .await;
    let dir = std::env::temp_dir().join(format!("apgate-limit-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("apgate.toml");
    std::fs::write(
        &path,
        format!("{}\n[server]\nmax_concurrent_requests_per_identity = 1\n", gw.toml),
    )
    .unwrap();
    gw.running.reload_from(&path).await.unwrap();
    let addr = gw.addr;
    let first = tokio::spawn(async move { send(addr, Method::GET, "/shared/Bob/slow").await.0 });
    let started = std::time::Instant::now();
    while seen.lock().unwrap().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the first request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for reload in 0..3 {
        gw.running.reload_from(&path).await.unwrap();
        let (status, _, body) = send(gw.addr, Method::GET, "/shared/Bob/x").await;
        assert_eq!(status, 503, "after reload {reload}: {body:?}");
        assert!(
            !first.is_finished(),
            "the first request ended early: the check proves nothing"
        );
    }
    // The slot comes back when the first request ends (its client leaves), under the new state.
    first.abort();
    let started = std::time::Instant::now();
    loop {
        let (status, _, _) = send(gw.addr, Method::GET, "/shared/Bob/x").await;
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "bob's slot never came back: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 15: the upstream receives the decided request, built from the decision: the parameters
/// and headers the operation takes, the body's framing, apgate's signature over all of it; nothing
/// else of the client's request (no `x-id`, no unknown headers, no `user-agent`, no cookie).
#[tokio::test]
async fn the_upstream_receives_exactly_the_decided_request() {
    let (up, seen) = scripted_upstream().await;
    let gw = gateway(up).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!(
            "http://{}/shared/Bob/a?x-id=GetObject&response-content-type=text%2Fplain&versionId=v1",
            gw.addr
        ))
        .header("host", format!("{}", gw.addr))
        .header("range", "bytes=0-3")
        .header("if-match", "\"etag\"")
        .header("user-agent", "legacy/1.0")
        .header("cookie", "session=1")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-amz-checksum-mode", "ENABLED")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let first = seen.lock().unwrap()[0].clone();
    assert_eq!(
        first.path_and_query,
        "/Bob/a?response-content-type=text%2Fplain&versionId=v1"
    );
    let mut names: Vec<&str> = first.headers.keys().map(|n| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "authorization",
            "host",
            "if-match",
            "range",
            "x-amz-checksum-mode",
            "x-amz-content-sha256",
            "x-amz-date"
        ]
    );
    let ok = verify_upstream_signature(&first.method, &first.path_and_query, &first.headers).unwrap();
    assert_eq!(&*ok.identity, "apgate");
    // A request that carries what its operation does not take reaches nothing.
    for path in [
        "/shared/Bob/a?tagging&acl",
        "/shared?list-type=2&prefix=Bob%2F&tagging",
        "/shared/Bob/a?prefix=x&prefix=y",
    ] {
        let (status, _, _) = send(gw.addr, Method::GET, path).await;
        assert_eq!(status, 400, "{path}");
    }
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// The `access_point` label values of apgate's request series.
fn access_point_labels(metrics: &str) -> std::collections::BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("apgate_"))
        .filter_map(|l| {
            let rest = &l[l.find("access_point=\"")? + "access_point=\"".len()..];
            Some(rest[..rest.find('"')?].to_owned())
        })
        .collect()
}

/// A caller with a bucket pattern names as many buckets as it likes: each one is its own access
/// point upstream, but metrics label them all by the template, so no request adds series.
#[tokio::test]
async fn bucket_names_from_requests_never_become_metric_labels() {
    let (up, seen) = scripted_upstream().await;
    let conf = Conf {
        routes: r#"
[[routes]]
identity = "bob"
bucket = "team-*"
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/{bucket}-rw"
"#,
        ..Conf::default()
    };
    let gw = Gw::start(config_toml(&format!("http://{up}"), conf)).await;
    for i in 0..20 {
        let (status, _, _) = send(gw.addr, Method::GET, &format!("/team-{i:02}/k")).await;
        assert_eq!(status, 200);
    }
    let (status, _, _) = send(gw.addr, Method::GET, "/shared/Bob/k").await;
    assert_eq!(status, 200);
    let hosts: std::collections::BTreeSet<String> = seen.lock().unwrap().iter().map(|r| r.host().to_owned()).collect();
    assert_eq!(hosts.len(), 21, "each bucket goes to its own access point: {hosts:?}");
    let labels = access_point_labels(&gw.metrics());
    assert_eq!(
        labels,
        ["bob-ap", "{bucket}-rw"].into_iter().map(str::to_owned).collect(),
        "{}",
        gw.metrics()
    );
}

/// bob may use `Bob/` for everything but `Bob/secret/` only to write: no listing shows what is
/// under `Bob/secret/`, whatever shorter prefix it asks for, and none of them reaches the upstream.
#[tokio::test]
async fn a_listing_never_shows_keys_a_narrower_route_keeps_unlisted() {
    let (up, seen) = scripted_upstream().await;
    let conf = Conf {
        routes: r#"
[[routes]]
identity = "bob"
bucket = "shared"
prefix = "Bob/secret/"
operations = ["write"]
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/bob-ap"
"#,
        ..Conf::default()
    };
    let gw = Gw::start(config_toml(&format!("http://{up}"), conf)).await;
    for target in [
        "/shared/Bob/secret/payroll.csv",
        "/shared?list-type=2&prefix=Bob%2Fsecret%2F",
        "/shared?list-type=2&prefix=Bob%2F",
        "/shared?list-type=2&prefix=Bob%2Fs",
        "/shared?versions&prefix=Bob%2F",
        "/shared?uploads&prefix=Bob%2F",
    ] {
        let (status, _, body) = send(gw.addr, Method::GET, target).await;
        assert_eq!(status, 403, "{target}: {}", String::from_utf8_lossy(&body));
    }
    assert!(seen.lock().unwrap().is_empty());
    // Beside the narrower prefix, listing and reading work as before (the scripted upstream's
    // answer is no listing document: apgate forwards the listing and refuses what came back).
    let (status, _, _) = send(gw.addr, Method::GET, "/shared?list-type=2&prefix=Bob%2Fpublic%2F").await;
    assert_ne!(status, 403);
    let (status, _, _) = send(gw.addr, Method::GET, "/shared/Bob/public/x").await;
    assert_eq!(status, 200);
    let forwarded: Vec<String> = seen.lock().unwrap().iter().map(|r| r.path_and_query.clone()).collect();
    assert_eq!(forwarded, ["/?list-type=2&prefix=Bob%2Fpublic%2F", "/Bob/public/x"]);
}
