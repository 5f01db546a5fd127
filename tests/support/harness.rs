//! Shared by `tests/in_process/faults.rs` and `tests/in_process/retries.rs`: a fake upstream over
//! raw TCP whose every request follows a script (answer, answer late, reset at a chosen byte, never
//! answer), an in-process apgate in front of it, raw-socket clients that tell a complete body from
//! an aborted one, and readers for metrics and the access log.

#![allow(dead_code, unreachable_pub)] // Not every test module uses every helper.
#![allow(missing_debug_implementations)]
#![allow(clippy::unwrap_used)] // Test helpers: a failure here is a test failure.

use crate::gateway;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use gateway::{config_toml, final_head, s3_code, verify_upstream_signature, Conf};
#[allow(unused_imports)] // Not every test module uses every helper.
pub use gateway::{Gw, AP_HOST, UPSTREAM_AKID, UPSTREAM_SECRET};

// ---------------------------------------------------------------------------------------------
// The fake upstream.

/// What the fake upstream does with one request (one request per connection: every answer says
/// `Connection: close`).
#[derive(Debug, Clone)]
pub enum Act {
    /// Read the whole body, wait `delay`, answer.
    Answer {
        status: u16,
        body: Vec<u8>,
        delay: Duration,
    },
    /// Read the whole body, then reset the connection (SO_LINGER 0) without a response byte.
    ResetAfterBody,
    /// Read `n` body bytes, then reset the connection.
    ResetAfterBodyBytes(usize),
    /// Read the whole body, send a 200 head announcing `len` bytes and the first `after` of them,
    /// then reset the connection.
    ResetMidResponse { len: usize, after: usize },
    /// Read the whole body, then stay silent with the connection open (until the test ends).
    NeverAnswer,
    /// Read the head only; never read the body nor answer.
    NeverRead,
}

impl Act {
    pub fn ok(body: &[u8]) -> Self {
        Self::Answer {
            status: 200,
            body: body.to_vec(),
            delay: Duration::ZERO,
        }
    }

    /// An S3 error answer.
    pub fn s3_error(status: u16, code: &str) -> Self {
        Self::Answer {
            status,
            body: s3_error_body(code).into_bytes(),
            delay: Duration::ZERO,
        }
    }
}

pub fn s3_error_body(code: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>scripted</Message><RequestId>UPSTREAMREQ</RequestId></Error>"
    )
}

/// One request as the fake upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// 0-based, in arrival order.
    pub index: usize,
    pub method: Method,
    pub target: String,
    pub headers: HeaderMap,
    /// The body bytes that arrived.
    pub body: Vec<u8>,
    /// The body arrived to its declared end (`Content-Length`, or the last chunk).
    pub complete: bool,
    /// When the head arrived.
    pub at: std::time::Instant,
}

type Script = Arc<dyn Fn(usize, &Seen) -> Act + Send + Sync>;

/// A fake upstream; requests are answered by `script(index, head)`.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Objects stored: a PUT whose body arrived complete and was answered 200.
    stored: Arc<Mutex<HashMap<String, Vec<Vec<u8>>>>>,
    connections: Arc<AtomicUsize>,
}

impl Upstream {
    pub async fn start(script: impl Fn(usize, &Seen) -> Act + Send + Sync + 'static) -> Self {
        Self::start_limited(None, script).await
    }

    /// An upstream that handles at most `limit` connections at once: more wait, unaccepted, in the
    /// listen backlog (their TCP handshake completes, nothing is read).
    pub async fn start_limited(
        limit: Option<usize>,
        script: impl Fn(usize, &Seen) -> Act + Send + Sync + 'static,
    ) -> Self {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Self {
            addr: socket.local_addr().unwrap(),
            seen: Arc::default(),
            stored: Arc::default(),
            connections: Arc::default(),
        };
        let script: Script = Arc::new(script);
        let permits = Arc::new(tokio::sync::Semaphore::new(limit.unwrap_or(100_000)));
        let me = up.clone();
        tokio::spawn(async move {
            loop {
                let permit = permits.clone().acquire_owned().await.unwrap();
                let Ok((stream, _)) = socket.accept().await else { return };
                me.connections.fetch_add(1, Ordering::SeqCst);
                let me = me.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    me.connection(stream, script).await;
                    drop(permit);
                });
            }
        });
        up
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Every body stored under `path`, in order.
    pub fn stored(&self, path: &str) -> Vec<Vec<u8>> {
        self.stored.lock().unwrap().get(path).cloned().unwrap_or_default()
    }

    /// The number of requests seen once `n` have arrived or `within` passed.
    pub async fn wait_for(&self, n: usize, within: Duration) -> usize {
        let until = tokio::time::Instant::now() + within;
        loop {
            let got = self.seen.lock().unwrap().len();
            if got >= n || tokio::time::Instant::now() >= until {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn connection(&self, stream: TcpStream, script: Script) {
        let mut reader = BufReader::new(stream);
        let Some((method, target, headers)) = read_head(&mut reader).await else {
            return;
        };
        let index = {
            let mut seen = self.seen.lock().unwrap();
            let index = seen.len();
            seen.push(Seen {
                index,
                method: method.clone(),
                target: target.clone(),
                headers: headers.clone(),
                body: Vec::new(),
                complete: false,
                at: std::time::Instant::now(),
            });
            seen.len() - 1
        };
        let snapshot = self.seen.lock().unwrap()[index].clone();
        let act = script(index, &snapshot);
        let body_limit = match &act {
            Act::NeverRead => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Act::ResetAfterBodyBytes(n) => Some(*n),
            _ => None,
        };
        let complete = read_body(&mut reader, &headers, body_limit, |data| {
            self.seen.lock().unwrap()[index].body.extend_from_slice(data);
        })
        .await;
        self.seen.lock().unwrap()[index].complete = complete;
        let mut stream = reader.into_inner();
        match act {
            Act::Answer { status, body, delay } => {
                tokio::time::sleep(delay).await;
                if status == 200 && method == Method::PUT && complete {
                    let data = self.seen.lock().unwrap()[index].body.clone();
                    self.stored
                        .lock()
                        .unwrap()
                        .entry(target.clone())
                        .or_default()
                        .push(data);
                }
                let reason = if status == 200 { "OK" } else { "Scripted" };
                let kind = if status == 200 {
                    "application/octet-stream"
                } else {
                    "application/xml"
                };
                let head = format!(
                    "HTTP/1.1 {status} {reason}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nx-amz-request-id: UP{index}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
                let _ = stream.shutdown().await;
            }
            Act::ResetAfterBody | Act::ResetAfterBodyBytes(_) => reset(stream),
            Act::ResetMidResponse { len, after } => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&pattern(0, after)).await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                reset(stream);
            }
            Act::NeverAnswer | Act::NeverRead => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
    }
}

/// Closes with an RST: SO_LINGER 0. (Deprecated in tokio because a non-zero linger blocks the
/// thread on drop; a zero linger does not block.)
#[allow(deprecated)]
pub fn reset(stream: TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// `n` bytes of a recognisable pattern starting at offset `from`.
pub fn pattern(from: usize, n: usize) -> Vec<u8> {
    (from..from + n).map(|i| (i % 251) as u8).collect()
}

async fn read_head(reader: &mut BufReader<TcpStream>) -> Option<(Method, String, HeaderMap)> {
    let mut line = String::new();
    reader.read_line(&mut line).await.ok()?;
    let mut parts = line.split_whitespace();
    let method: Method = parts.next()?.parse().ok()?;
    let target = parts.next()?.to_owned();
    let mut headers = HeaderMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':')?;
        headers.append(
            HeaderName::from_bytes(k.trim().as_bytes()).ok()?,
            HeaderValue::from_str(v.trim()).ok()?,
        );
    }
    Some((method, target, headers))
}

/// Reads a body framed by Content-Length or chunked; `limit` stops after that many bytes.
/// Returns whether it arrived to its end.
async fn read_body(
    reader: &mut BufReader<TcpStream>,
    headers: &HeaderMap,
    limit: Option<usize>,
    mut sink: impl FnMut(&[u8]),
) -> bool {
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.to_str().unwrap_or("").contains("chunked"));
    let mut taken = 0usize;
    let mut take = |data: &[u8], taken: &mut usize| -> bool {
        let room = limit.map_or(usize::MAX, |l| l - *taken);
        let n = data.len().min(room);
        sink(&data[..n]);
        *taken += n;
        limit.is_some_and(|l| *taken >= l)
    };
    let mut buf = vec![0u8; 64 * 1024];
    if chunked {
        loop {
            let mut size_line = String::new();
            if reader.read_line(&mut size_line).await.unwrap_or(0) == 0 {
                return false;
            }
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16).unwrap_or(0);
            if size == 0 {
                let mut end = String::new();
                let _ = reader.read_line(&mut end).await;
                return true;
            }
            let mut left = size;
            while left > 0 {
                let n = left.min(buf.len());
                if reader.read_exact(&mut buf[..n]).await.is_err() {
                    return false;
                }
                left -= n;
                if take(&buf[..n], &mut taken) {
                    return false;
                }
            }
            let mut crlf = [0u8; 2];
            if reader.read_exact(&mut crlf).await.is_err() {
                return false;
            }
        }
    }
    let declared: usize = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut left = declared;
    while left > 0 {
        let n = left.min(buf.len());
        match reader.read(&mut buf[..n]).await {
            Ok(0) | Err(_) => return false,
            Ok(got) => {
                left -= got;
                if take(&buf[..got], &mut taken) {
                    return left == 0;
                }
            }
        }
    }
    true
}

/// Whether a request the upstream saw carries a SigV4 signature by apgate's upstream key that
/// verifies now.
pub fn signed_by_apgate(seen: &Seen) -> bool {
    verify_upstream_signature(&seen.method, &seen.target, &seen.headers).is_ok()
}

// ---------------------------------------------------------------------------------------------
// apgate.

/// Extra TOML lines for the gateway's `[server]`, `[upstream]` and `[upstream.retry]` tables.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tune<'a> {
    pub server: &'a str,
    pub upstream: &'a str,
    pub retry: &'a str,
}

/// The configuration of `gateway`: one `source` listener ("sidecar") that makes every local
/// caller `bob`, who may use `shared/Bob/*` through `bob-ap`; `tune` added.
pub fn config_text(endpoint: &str, tune: Tune<'_>) -> String {
    // Short timeouts unless the test sets its own.
    let mut upstream = tune.upstream.to_owned();
    for default in ["connect_timeout_seconds = 2", "response_header_timeout_seconds = 2"] {
        let key = default.split(' ').next().unwrap_or_default();
        if !upstream.contains(key) {
            upstream.push('\n');
            upstream.push_str(default);
        }
    }
    let server = format!("\n[server]\n{}\n", tune.server);
    let upstream = format!("{upstream}\n\n[upstream.retry]\n{}\n", tune.retry);
    config_toml(
        endpoint,
        Conf {
            tables: &server,
            upstream: &upstream,
            ..Conf::default()
        },
    )
}

/// An in-process apgate (see `config_text`).
pub async fn gateway(endpoint: &str, tune: Tune<'_>) -> Gw {
    Gw::start(config_text(endpoint, tune)).await
}

/// The value of one sample of the Prometheus text `text`: `name{labels}` with at least the given
/// labels, summed over the rest; `None` when there is no such sample.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        if n != name {
            continue;
        }
        if labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))) {
            *total.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    total
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// What a client got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A response: its status, S3 `<Code>` (if any), body, and whether the body arrived whole
    /// (all `Content-Length` bytes, or the last chunk) before the connection ended.
    Response {
        status: u16,
        code: Option<String>,
        body: Vec<u8>,
        whole: bool,
        headers: Vec<(String, String)>,
    },
    /// The connection closed or was reset before any response byte.
    Closed,
    /// Nothing within the time allowed.
    Hang,
}

impl Reply {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Response { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Response { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// (status, S3 code) for S3 error answers.
    pub fn error(&self) -> Option<(u16, &str)> {
        Some((self.status()?, self.code()?))
    }

    pub fn body(&self) -> &[u8] {
        match self {
            Self::Response { body, .. } => body,
            _ => &[],
        }
    }

    pub fn whole(&self) -> bool {
        matches!(self, Self::Response { whole: true, .. })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        match self {
            Self::Response { headers, .. } => headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

pub fn code_of(body: &[u8]) -> Option<String> {
    s3_code(&String::from_utf8_lossy(body)).map(str::to_owned)
}

/// A request head for the sidecar listener (`extra` headers added; `Content-Length` when a body
/// length is given).
pub fn head(method: &str, path: &str, extra: &[(&str, &str)], content_length: Option<usize>) -> Vec<u8> {
    let mut s = format!("{method} {path} HTTP/1.1\r\nhost: apgate.test\r\n");
    for (k, v) in extra {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(n) = content_length {
        s.push_str(&format!("content-length: {n}\r\n"));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// Sends `bytes` (a whole request) and reads one response, for at most `within`.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], within: Duration) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(bytes).await;
    read_reply(&mut stream, within).await
}

/// A request with a body of `len` pattern bytes.
pub async fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8], within: Duration) -> Reply {
    let mut bytes = head(
        method,
        path,
        &[],
        (!body.is_empty() || method == "PUT").then_some(body.len()),
    );
    bytes.extend_from_slice(body);
    exchange(addr, &bytes, within).await
}

/// Reads one response (skipping `100 Continue`) until its end, the connection's end, or `within`.
pub async fn read_reply(stream: &mut TcpStream, within: Duration) -> Reply {
    let mut buf = Vec::new();
    let work = async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some(reply) = parse(&buf, false) {
                return reply;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        parse(&buf, true).unwrap_or(Reply::Closed)
    };
    match tokio::time::timeout(within, work).await {
        Ok(reply) => reply,
        Err(_) => parse(&buf, true)
            .filter(|r| r.status().is_some())
            .unwrap_or(Reply::Hang),
    }
}

/// Parses a response from `buf`; `ended`: the connection is over, so a partial body is final.
fn parse(buf: &[u8], ended: bool) -> Option<Reply> {
    let (status, head, raw) = final_head(buf)?;
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let length = get("content-length").and_then(|v| v.parse::<usize>().ok());
    let chunked = get("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let (body, whole) = if chunked {
        let (body, whole) = dechunk(raw);
        (body, whole)
    } else if let Some(n) = length {
        (raw[..raw.len().min(n)].to_vec(), raw.len() >= n)
    } else {
        (raw.to_vec(), ended)
    };
    if !whole && !ended {
        return None;
    }
    let code = if status >= 300 { code_of(&body) } else { None };
    Some(Reply::Response {
        status,
        code,
        body,
        whole,
        headers,
    })
}

fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { return (out, false) };
        raw = &raw[eol + 2..];
        if size == 0 {
            return (out, raw.starts_with(b"\r\n"));
        }
        if raw.len() < size + 2 {
            out.extend_from_slice(&raw[..raw.len().min(size)]);
            return (out, false);
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

// ---------------------------------------------------------------------------------------------
// The access log, captured in-process.

/// Collects every `apgate::access` JSON line written while the returned guard lives, on this
/// thread (use a current-thread runtime so the gateway's tasks log here too).
pub fn capture_access_log() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    // With a single dispatcher alive, tracing computes a callsite's interest from the default of
    // whichever thread reaches it first: another test's thread, with no subscriber, would silence
    // the access log for good. A second, idle dispatcher makes it ask every live one.
    static SECOND: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
    let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
    let sink = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || Writer(sink.clone()))
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The access-log lines captured so far, parsed.
pub fn access_lines(buf: &Arc<Mutex<Vec<u8>>>) -> Vec<HashMap<String, String>> {
    let text = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| l.contains("\"target\":\"apgate::access\""))
        .map(|l| {
            // A flat JSON object of strings, numbers and booleans: enough for these tests.
            let mut fields = HashMap::new();
            let inner = l.trim().trim_start_matches('{').trim_end_matches('}');
            for part in split_top(inner) {
                if let Some((k, v)) = part.split_once(':') {
                    fields.insert(
                        k.trim().trim_matches('"').to_owned(),
                        v.trim().trim_matches('"').to_owned(),
                    );
                }
            }
            fields
        })
        .collect()
}

fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut in_str, mut escaped) = (0, false, false);
    for (i, ch) in s.char_indices() {
        match ch {
            '\\' if in_str => escaped = !escaped,
            '"' if !escaped => in_str = !in_str,
            ',' if !in_str => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => escaped = false,
        }
        if ch != '\\' {
            escaped = false;
        }
    }
    out.push(&s[start..]);
    out
}
