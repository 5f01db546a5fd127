//! In-process tests of the whole proxy against a scripted upstream: what apgate sends (host, path,
//! signature verifiable with apgate's key), what it rewrites on the way back (bucket-revealing error
//! bodies, `Location` headers), and how upstream failures surface (502, 504).

#![allow(clippy::unwrap_used)] // Test helpers: a failure here is a test failure.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use apgate::app::{serve, Bound};
use apgate::config::Config;
use apgate::identity::SigV4Verifier;
use apgate::s3::addressing::parse_target;
use apgate::secret::Secret;

const AP_HOST: &str = "bob-ap-123456789012.s3-accesspoint.us-east-1.amazonaws.com";
const UPSTREAM_AKID: &str = "AKIDUPSTREAM00000001";
const UPSTREAM_SECRET: &str = "upstream-secret-key-0123456789abcdef";

#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
}

/// An upstream that records each request and answers by path.
async fn scripted_upstream() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = socket.accept().await else { return };
            let log = log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let pq = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.as_str().to_owned())
                            .unwrap_or_default();
                        log.lock().unwrap().push(Seen {
                            method: req.method().clone(),
                            path_and_query: pq.clone(),
                            headers: req.headers().clone(),
                        });
                        let resp = match req.uri().path() {
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
                            "/Bob/slow" => {
                                tokio::time::sleep(Duration::from_secs(5)).await;
                                Response::builder().status(200).body(Full::new(Bytes::from_static(b"late")))
                            }
                            _ => Response::builder().status(200).body(Full::new(Bytes::from_static(b"hello from upstream"))),
                        };
                        Ok::<_, std::convert::Infallible>(resp.unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

struct Gateway {
    sidecar: SocketAddr,
    running: Arc<apgate::app::Gateway>,
    toml: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn gateway(upstream: SocketAddr) -> Gateway {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let toml = format!(
        r#"
[admin]
address = "127.0.0.1:0"

[[listeners]]
name = "sidecar"
address = "127.0.0.1:0"
identity_methods = ["source"]

[[listeners.sources]]
cidr = "127.0.0.0/8"
identity = "bob"

[upstream]
region = "us-east-1"
endpoint = {{ mode = "custom", url = "http://{upstream}" }}
response_header_timeout_seconds = 0.5

[credentials]
type = "static"
access_key_id = {{ insecure_inline = "{UPSTREAM_AKID}" }}
secret_access_key = {{ insecure_inline = "{UPSTREAM_SECRET}" }}

[[identities]]
name = "bob"

[[routes]]
identity = "bob"
bucket = "shared"
prefix = "Bob/"
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/bob-ap"
"#
    );
    let config = Config::from_toml(&toml).unwrap();
    let bound = Bound::bind(&config).await.unwrap();
    let sidecar = bound.data[0].1.local_addr().unwrap();
    let state = apgate::app::Gateway::new(config).await.unwrap();
    let running = state.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(state, bound, async move {
        let _ = rx.await;
    }));
    Gateway {
        sidecar,
        running,
        toml,
        _stop: tx,
    }
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
    let (status, _, body) = send(gw.sidecar, Method::GET, "/shared/Bob/a%20b+c%C3%BC?versionId=1").await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"hello from upstream");
    let seen = seen.lock().unwrap()[0].clone();
    assert_eq!(seen.headers["host"], AP_HOST);
    assert_eq!(seen.path_and_query, "/Bob/a%20b%2Bc%C3%BC?versionId=1");
    // The upstream can verify what apgate signed, with apgate's own key.
    let verifier = SigV4Verifier::new(
        [(
            UPSTREAM_AKID.to_owned(),
            Arc::from("apgate"),
            Secret::new(UPSTREAM_SECRET),
        )],
        vec!["us-east-1".to_owned()],
        Duration::from_secs(900),
    );
    let (path, query) = seen.path_and_query.split_once('?').unwrap();
    let target = parse_target(
        Some(AP_HOST),
        path,
        Some(query),
        &["s3-accesspoint.us-east-1.amazonaws.com".to_owned()],
    )
    .unwrap();
    let ok = verifier
        .verify(&seen.method, &target, &seen.headers, SystemTime::now())
        .unwrap();
    assert_eq!(&*ok.identity, "apgate");
}

#[tokio::test]
async fn bucket_revealing_error_bodies_are_rewritten() {
    let (up, _) = scripted_upstream().await;
    let gw = gateway(up).await;
    let (status, headers, body) = send(gw.sidecar, Method::GET, "/shared/Bob/missing").await;
    assert_eq!(status, 404);
    let text = std::str::from_utf8(&body).unwrap();
    assert!(text.contains("<BucketName>shared</BucketName>"), "{text}");
    assert!(text.contains(&format!("<Endpoint>{}</Endpoint>", gw.sidecar)), "{text}");
    for leak in ["real-shared-bucket", "s3-accesspoint", "123456789012", "bob-ap"] {
        assert!(!text.contains(leak), "{leak} leaked: {text}");
    }
    assert_eq!(headers["content-length"], body.len().to_string().as_str());
}

#[tokio::test]
async fn location_headers_point_at_apgate() {
    let (up, _) = scripted_upstream().await;
    let gw = gateway(up).await;
    let (status, headers, _) = send(gw.sidecar, Method::GET, "/shared/Bob/moved").await;
    assert_eq!(status, 307);
    assert_eq!(
        headers["location"],
        format!("http://{}/shared/Bob/moved", gw.sidecar).as_str()
    );
}

#[tokio::test]
async fn an_upstream_that_does_not_answer_in_time_is_a_504() {
    let (up, _) = scripted_upstream().await;
    let gw = gateway(up).await;
    let (status, _, body) = send(gw.sidecar, Method::GET, "/shared/Bob/slow").await;
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
    let (status, _, body) = send(gw.sidecar, Method::GET, "/shared/Bob/x").await;
    assert_eq!(status, 502);
    assert!(std::str::from_utf8(&body).unwrap().contains("<Code>BadGateway</Code>"));
}

#[tokio::test]
async fn a_refused_request_never_reaches_the_upstream() {
    let (up, seen) = scripted_upstream().await;
    let gw = gateway(up).await;
    let (status, _, body) = send(gw.sidecar, Method::GET, "/shared/app/x").await;
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
        gw.sidecar,
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
    let (status, _, _) = send(gw.sidecar, Method::GET, "/shared/Team/x").await;
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
    let (status, _, _) = send(gw.sidecar, Method::GET, "/shared/Team/x").await;
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
    let (status, _, _) = send(gw.sidecar, Method::GET, "/shared/Team/x").await;
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
    let (up, _) = scripted_upstream().await;
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
    let sidecar = gw.sidecar;
    let first = tokio::spawn(async move { send(sidecar, Method::GET, "/shared/Bob/slow").await.0 });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (status, _, body) = send(gw.sidecar, Method::GET, "/shared/Bob/x").await;
    assert_eq!(status, 503);
    assert!(std::str::from_utf8(&body).unwrap().contains("<Code>SlowDown</Code>"));
    assert_eq!(first.await.unwrap(), 504);
    // The slot is released when the first request ends.
    let (status, _, _) = send(gw.sidecar, Method::GET, "/shared/Bob/x").await;
    assert_eq!(status, 200);
    let _ = std::fs::remove_dir_all(&dir);
}
