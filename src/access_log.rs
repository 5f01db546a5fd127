//! The access log: one JSON line per request on stdout, `target` `apgate::access`.
//!
//! Written directly rather than through tracing's JSON formatter: that formatter visits every field
//! through `fmt` and serde and was a tenth of the CPU of a forwarded small GET. The line has the
//! same shape as the other (tracing) log lines — `timestamp`, `level`, `message`, fields, `target` —
//! and is on or off with the same filter (`RUST_LOG`, target `apgate::access`, level INFO). With
//! `APGATE_LOG_FORMAT=text`, or without the writer thread (a library user, the in-process tests),
//! the record is a structured tracing event instead.
//!
//! Lines go to a writer thread ([`start_writer`]): a request never blocks on stdout. An idle
//! writer writes a line at once; after each write it rests [`FLUSH_INTERVAL`], so a busy gateway
//! makes one write syscall per interval instead of one per request. [`flush`] drains it at shutdown.
//!
//! Every other log line of apgate's goes through the same queue ([`Stdout`], the tracing
//! subscriber's writer), so no line is written on a data-plane thread while the queue has room.
//!
//! Nothing a caller sends can make the log hold memory without bound, whatever the sink's pace: a
//! field holds at most [`KEY_MAX`] (the key) or [`FIELD_MAX`] bytes of its value (a line that cut
//! one says `"truncated":true`), and the queue holds at most [`QUEUE_BYTES`] (of allocations).
//! When it is full, a line that must not be lost — an identified caller's access line (the record
//! of what was done with apgate's credentials), a warning, an error — is written by the thread
//! that logs it; any other line (a request refused before apgate knew its caller, an INFO event)
//! may only fill half of the queue, and past that it is dropped and counted
//! (`apgate_access_log_lines_dropped_total`), so an unauthenticated flood cannot make the requests
//! of identified callers wait on a slow log sink.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SendError, Sender};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::s3::amzdate;

static TEXT_FORMAT: AtomicBool = AtomicBool::new(false);
static WRITER: OnceLock<Sender<Message>> = OnceLock::new();
/// Bytes of the lines queued for the writer.
static QUEUED_BYTES: AtomicUsize = AtomicUsize::new(0);
static DROPPED: OnceLock<prometheus::IntCounter> = OnceLock::new();

/// How long the writer rests after a write: the most a line waits before it is written (and lags
/// behind other log lines).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// The queue's bound in bytes; past it, requests write their own lines (or drop them: see the
/// module's documentation).
pub const QUEUE_BYTES: usize = 8 << 20;
/// The most bytes of an object key a line holds: S3's longest key (1,024 bytes of UTF-8).
pub const KEY_MAX: usize = 1024;
/// The most bytes of any other text field's value a line holds (names from the configuration,
/// S3's codes and ids are far shorter; the method is the client's).
pub const FIELD_MAX: usize = 256;

/// The counter of lines dropped (`apgate_access_log_lines_dropped_total`): one for the process,
/// as the writer is, registered in each [`crate::metrics::Metrics`].
pub fn dropped_lines() -> &'static prometheus::IntCounter {
    DROPPED.get_or_init(|| {
        prometheus::IntCounter::new(
            crate::metrics::ACCESS_LOG_LINES_DROPPED_TOTAL,
            "Log lines dropped because the log sink did not keep up: access lines of requests refused before apgate knew the caller, and INFO and finer events.",
        )
        .unwrap_or_else(|e| unreachable!("a constant, valid metric name: {e}"))
    })
}

/// Whether a line of `len` bytes may join the queue (and if so, counts it in): one to `keep` up to
/// [`QUEUE_BYTES`], any other only while the queue is under half of it.
fn admit(queued: &AtomicUsize, len: usize, keep: bool) -> bool {
    let limit = if keep { QUEUE_BYTES } else { QUEUE_BYTES / 2 };
    queued
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
            (q.saturating_add(len) <= limit).then_some(q + len)
        })
        .is_ok()
}

enum Message {
    Line(Vec<u8>),
    Flush(mpsc::Sender<()>),
}

/// Starts the writer thread (once; later calls do nothing). Without it lines are written by the
/// request that finishes (tests, embedders).
pub fn start_writer() {
    WRITER.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("apgate-access-log".to_owned())
            .spawn(move || write_loop(&rx));
        if let Err(e) = spawned {
            eprintln!("apgate: no access log writer thread ({e}); requests write their own lines");
        }
        tx
    });
}

/// Writes every queued line, waiting at most `timeout` (shutdown).
pub fn flush(timeout: Duration) {
    if let Some(tx) = WRITER.get() {
        let (ack, done) = mpsc::channel();
        if tx.send(Message::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(timeout);
        }
    }
}

fn write_loop(rx: &Receiver<Message>) {
    let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
    let mut acks = Vec::new();
    // Blocks while idle and writes a line at once; after a write it rests one interval, so under
    // load the lines of that interval go out together in the next write.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(m) = next {
            match m {
                Message::Line(line) => {
                    buf.extend_from_slice(&line);
                    QUEUED_BYTES.fetch_sub(line.capacity(), Ordering::AcqRel);
                }
                Message::Flush(ack) => acks.push(ack),
            }
            if buf.len() >= 1 << 20 {
                write_out(&mut buf);
            }
            next = rx.try_recv().ok();
        }
        write_out(&mut buf);
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        std::thread::sleep(FLUSH_INTERVAL);
    }
}

fn write_out(buf: &mut Vec<u8>) {
    if !buf.is_empty() {
        // A failed write (a closed pipe) must not stop the gateway.
        let _ = std::io::stdout().lock().write_all(buf);
        buf.clear();
    }
}

/// Hands a finished line (newline included) to the writer thread; when the queue is over its bound
/// for the line (see [`admit`]), writes it here if `keep`, else drops and counts it. Without a writer
/// thread, writes it here.
fn submit(line: Vec<u8>, keep: bool) {
    let Some(writer) = WRITER.get() else {
        return write_now(&line);
    };
    // What the queue holds is the allocation, not only the text.
    let size = line.capacity();
    let line = if admit(&QUEUED_BYTES, size, keep) {
        match writer.send(Message::Line(line)) {
            Ok(()) => return,
            Err(SendError(message)) => {
                QUEUED_BYTES.fetch_sub(size, Ordering::AcqRel);
                match message {
                    Message::Line(line) => line,
                    Message::Flush(_) => return,
                }
            }
        }
    } else if keep {
        line
    } else {
        dropped_lines().inc();
        return;
    };
    write_now(&line);
}

/// One write on the calling thread (stdout is line-buffered); a failed write (a closed pipe) must
/// not fail the request.
fn write_now(line: &[u8]) {
    let _ = std::io::stdout().lock().write_all(line);
}

thread_local! {
    /// Whether the access log event being formatted on this thread is an identified caller's.
    static KEEP_ACCESS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Where every log line of apgate's goes (`app::init_tracing`): through the access log's queue, so
/// that no line, whoever caused it, is written on a data-plane thread while the queue has room,
/// and a line a caller apgate could not identify can cause (an INFO event about a connection, an
/// access line in text format) is dropped and counted rather than waited for. Warnings, errors
/// and identified callers' access lines are never dropped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stdout;

/// One log line as the formatter writes it; handed on when dropped.
#[derive(Debug)]
pub struct Line {
    buf: Vec<u8>,
    keep: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stdout {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            buf: Vec::new(),
            keep: true,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line {
        let keep = keeps(meta.target(), *meta.level(), KEEP_ACCESS.with(std::cell::Cell::get));
        Line { buf: Vec::new(), keep }
    }
}

/// Whether a line of `target` at `level` must not be dropped; `identified`: for an access line,
/// whether its caller was identified.
fn keeps(target: &str, level: tracing::Level, identified: bool) -> bool {
    if target == "apgate::access" {
        identified
    } else {
        level <= tracing::Level::WARN
    }
}

impl std::io::Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            submit(std::mem::take(&mut self.buf), self.keep);
        }
    }
}

/// Sets whether log lines are text for humans (`APGATE_LOG_FORMAT=text`) instead of JSON.
pub fn set_text_format(text: bool) {
    TEXT_FORMAT.store(text, Ordering::Relaxed);
}

/// One finished request.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub request_id: &'a str,
    pub listener: &'a str,
    pub remote: SocketAddr,
    pub identity: &'a str,
    pub method: &'a str,
    pub operation: &'a str,
    pub bucket: &'a str,
    pub key: &'a str,
    pub access_point: &'a str,
    pub status: u16,
    pub error_code: &'a str,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub complete: bool,
    pub duration_ms: f64,
    /// Upstream attempts (0: never forwarded; more than 1: retried).
    pub attempts: u32,
    pub upstream_ms: f64,
    pub upstream_request_id: &'a str,
    pub upstream_id2: &'a str,
}

impl Record<'_> {
    /// Writes the line, if the log filter lets `apgate::access` INFO through.
    pub fn emit(&self) {
        if !tracing::enabled!(target: "apgate::access", tracing::Level::INFO) {
            return;
        }
        // An identity's name is never `-` (config validation), the label of none.
        let identified = self.identity != crate::metrics::NONE;
        if WRITER.get().is_none() || TEXT_FORMAT.load(Ordering::Relaxed) {
            // Text logs, or no writer thread (a library user, the in-process tests): a structured
            // tracing event, which whatever subscriber is installed formats ([`Stdout`] tells
            // from `KEEP_ACCESS` whether the line may be dropped).
            KEEP_ACCESS.with(|k| k.set(identified));
            self.emit_event();
            KEEP_ACCESS.with(|k| k.set(false));
            return;
        }
        submit(self.json_line(SystemTime::now()).into_bytes(), identified);
    }

    fn emit_event(&self) {
        let field = |v| clip(v, FIELD_MAX).0;
        let truncated = self.any_cut();
        tracing::info!(
            target: "apgate::access",
            request_id = field(self.request_id),
            listener = field(self.listener),
            remote = %self.remote,
            identity = field(self.identity),
            method = field(self.method),
            operation = field(self.operation),
            bucket = field(self.bucket),
            key = clip(self.key, KEY_MAX).0,
            access_point = field(self.access_point),
            truncated,
            status = self.status,
            error_code = field(self.error_code),
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            complete = self.complete,
            duration_ms = self.duration_ms,
            attempts = self.attempts,
            upstream_ms = self.upstream_ms,
            upstream_request_id = field(self.upstream_request_id),
            upstream_id2 = field(self.upstream_id2),
            "request"
        );
    }

    /// Whether a value is over its field's bound (what [`clip`] cuts).
    fn any_cut(&self) -> bool {
        self.key.len() > KEY_MAX
            || [
                self.request_id,
                self.listener,
                self.identity,
                self.method,
                self.operation,
                self.bucket,
                self.access_point,
                self.error_code,
                self.upstream_request_id,
                self.upstream_id2,
            ]
            .iter()
            .any(|v| v.len() > FIELD_MAX)
    }

    /// The full log line, newline included.
    pub fn json_line(&self, now: SystemTime) -> String {
        let mut out = String::with_capacity(512);
        out.push_str("{\"timestamp\":\"");
        amzdate::push_rfc3339_micros(&mut out, now);
        out.push_str("\",\"level\":\"INFO\",\"message\":\"request\",");
        if self.push_fields(&mut out) {
            out.push_str(",\"truncated\":true");
        }
        out.push_str(",\"target\":\"apgate::access\"}\n");
        out
    }

    /// The fields between `message` and `target`; whether a value was cut.
    fn push_fields(&self, out: &mut String) -> bool {
        let mut cut = false;
        let strings = [("request_id", self.request_id), ("listener", self.listener)];
        for (i, (name, value)) in strings.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            cut |= push_str_field(out, name, value, FIELD_MAX);
        }
        out.push_str(",\"remote\":\"");
        match self.remote {
            SocketAddr::V4(v4) => {
                for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push('.');
                    }
                    push_u64(out, u64::from(octet));
                }
                out.push(':');
                push_u64(out, u64::from(v4.port()));
            }
            SocketAddr::V6(v6) => {
                let _ = write!(out, "{v6}");
            }
        }
        out.push('"');
        for (name, value, max) in [
            ("identity", self.identity, FIELD_MAX),
            ("method", self.method, FIELD_MAX),
            ("operation", self.operation, FIELD_MAX),
            ("bucket", self.bucket, FIELD_MAX),
            ("key", self.key, KEY_MAX),
            ("access_point", self.access_point, FIELD_MAX),
        ] {
            out.push(',');
            cut |= push_str_field(out, name, value, max);
        }
        out.push_str(",\"status\":");
        push_u64(out, u64::from(self.status));
        out.push(',');
        cut |= push_str_field(out, "error_code", self.error_code, FIELD_MAX);
        out.push_str(",\"bytes_in\":");
        push_u64(out, self.bytes_in);
        out.push_str(",\"bytes_out\":");
        push_u64(out, self.bytes_out);
        out.push_str(if self.complete {
            ",\"complete\":true"
        } else {
            ",\"complete\":false"
        });
        out.push_str(",\"duration_ms\":");
        push_millis(out, self.duration_ms);
        out.push_str(",\"attempts\":");
        push_u64(out, u64::from(self.attempts));
        out.push_str(",\"upstream_ms\":");
        push_millis(out, self.upstream_ms);
        out.push(',');
        cut |= push_str_field(out, "upstream_request_id", self.upstream_request_id, FIELD_MAX);
        out.push(',');
        cut |= push_str_field(out, "upstream_id2", self.upstream_id2, FIELD_MAX);
        cut
    }
}

/// A decimal integer, without going through `fmt`.
fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// Milliseconds with three decimals (microsecond resolution); 0 for what is not a finite,
/// non-negative number.
fn push_millis(out: &mut String, ms: f64) {
    let micros = if ms.is_finite() && ms > 0.0 {
        (ms * 1000.0).round() as u64
    } else {
        0
    };
    push_u64(out, micros / 1000);
    out.push('.');
    let frac = micros % 1000;
    for d in [frac / 100, frac / 10 % 10, frac % 10] {
        out.push(char::from(b'0' + d as u8));
    }
}

/// A `"name":"value"` pair, the value cut to `max` bytes; whether it was cut.
fn push_str_field(out: &mut String, name: &str, value: &str, max: usize) -> bool {
    let (value, cut) = clip(value, max);
    out.push('"');
    out.push_str(name);
    out.push_str("\":\"");
    push_json_escaped(out, value);
    out.push('"');
    cut
}

/// `value`'s first `max` bytes at most, ended on a character boundary; whether anything was cut.
fn clip(value: &str, max: usize) -> (&str, bool) {
    if value.len() <= max {
        return (value, false);
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    (&value[..end], true)
}

/// The bytes a JSON string may hold as they are (printable ASCII but `"` and `\\`): a table, one
/// load a byte.
static PLAIN_JSON: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        table[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    table
};

/// JSON string escaping (RFC 8259 §7): quote, backslash and control characters, and also every
/// character a reader may take for a line or paragraph break (the C1 controls, NEL U+0085 among
/// them, and U+2028, U+2029), so a log line stays one line for any consumer.
pub fn push_json_escaped(out: &mut String, s: &str) {
    // Most values need no escaping: one pass over the bytes, then a single copy. Non-ASCII text
    // takes the careful path, which escapes only what it must.
    if s.bytes().all(|b| PLAIN_JSON[usize::from(b)]) {
        out.push_str(s);
        return;
    }
    let mut plain = 0;
    for (i, c) in s.char_indices() {
        let escape = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 || ('\u{7f}'..='\u{9f}').contains(&c) || matches!(c, '\u{2028}' | '\u{2029}') => "",
            _ => continue,
        };
        out.push_str(&s[plain..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push_str(escape);
        }
        plain = i + c.len_utf8();
    }
    out.push_str(&s[plain..]);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn record<'a>(key: &'a str, identity: &'a str) -> Record<'a> {
        Record {
            request_id: "0414EAB40795B54F",
            listener: "shared",
            remote: "127.0.0.1:37352".parse().unwrap(),
            identity,
            method: "GET",
            operation: "GetObject",
            bucket: "access-point-test",
            key,
            access_point: "bob-access-point-test",
            status: 200,
            error_code: "-",
            bytes_in: 0,
            bytes_out: u64::MAX,
            complete: true,
            duration_ms: 0.438395,
            attempts: 2,
            upstream_ms: f64::NAN,
            upstream_request_id: "0123456789ABCDEF",
            upstream_id2: "id/2+=",
        }
    }

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let line = record("Bob/report.csv", "bob").json_line(UNIX_EPOCH + Duration::new(1_795_000_000, 5_000));
        assert!(line.ends_with("}\n") && line.matches('\n').count() == 1, "{line}");
        let doc: serde_json::Value = serde_json::from_str(&line).unwrap();
        let want = serde_json::json!({
            "timestamp": "2026-11-18T11:06:40.000005Z", "level": "INFO", "message": "request",
            "request_id": "0414EAB40795B54F", "listener": "shared", "remote": "127.0.0.1:37352",
            "identity": "bob", "method": "GET", "operation": "GetObject", "bucket": "access-point-test",
            "key": "Bob/report.csv", "access_point": "bob-access-point-test", "status": 200,
            "error_code": "-", "bytes_in": 0, "bytes_out": 18_446_744_073_709_551_615_u64, "complete": true, "duration_ms": 0.438, "attempts": 2,
            "upstream_ms": 0.0, "upstream_request_id": "0123456789ABCDEF", "upstream_id2": "id/2+=",
            "target": "apgate::access",
        });
        assert_eq!(doc, want);
    }

    #[test]
    fn remote_addresses_read_as_std_writes_them() {
        for addr in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.0.12.7:443",
            "[::1]:8080",
            "[fe80::1%2]:1",
        ] {
            let mut r = record("k", "bob");
            r.remote = addr.parse().unwrap();
            let doc: serde_json::Value = serde_json::from_str(&r.json_line(UNIX_EPOCH)).unwrap();
            assert_eq!(doc["remote"], r.remote.to_string(), "{addr}");
        }
    }

    #[test]
    fn numbers_are_written_without_fmt() {
        let cases = [
            (0.0, "0.000"),
            (0.0004, "0.000"),
            (0.0005, "0.001"),
            (1234.5678, "1234.568"),
            (f64::NAN, "0.000"),
            (-3.0, "0.000"),
            (f64::INFINITY, "0.000"),
        ];
        for (ms, want) in cases {
            let mut s = String::new();
            push_millis(&mut s, ms);
            assert_eq!(s, want, "{ms}");
        }
        for n in [0, 7, 10, 1_000_001, u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }

    #[test]
    fn hostile_strings_stay_inside_their_field() {
        let cases = [
            "quote\"d",
            "back\\slash",
            "new\nline\r\n",
            "tab\tand\u{1}\u{1f}\u{7f}",
            "\",\"identity\":\"admin",
            "unicode é € 😀",
            "",
            // Issue 16: Unicode line and paragraph separators, NEL and the other C1 controls.
            "line\u{2028}sep",
            "para\u{2029}sep",
            "next\u{85}line\u{80}\u{9f}",
        ];
        for key in cases {
            let line = record(key, "bob").json_line(UNIX_EPOCH);
            assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            assert_eq!(line.lines().count(), 1, "{line:?}");
            for sep in ['\u{85}', '\u{2028}', '\u{2029}'] {
                assert!(!line.contains(sep), "{line:?}");
            }
            let doc: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(doc["key"], key, "{line}");
            assert_eq!(doc["identity"], "bob", "{line}");
        }
        // The exact escapes of what must not appear raw: quote, backslash, C0 controls and DEL.
        for (text, want) in [
            ("\"", "\\\""),
            ("\\", "\\\\"),
            ("\n", "\\n"),
            ("\u{1}", "\\u0001"),
            ("\u{1f}", "\\u001f"),
            ("\u{7f}", "\\u007f"),
            (" ~", " ~"),
        ] {
            let mut s = String::new();
            push_json_escaped(&mut s, text);
            assert_eq!(s, want, "{text:?}");
        }
        // Every ASCII character, alone and between others, reads back as itself.
        for c in (0u8..0x80).map(char::from) {
            let text = format!("a{c}b");
            let mut s = String::from("\"");
            push_json_escaped(&mut s, &text);
            s.push('"');
            let back: String = serde_json::from_str(&s).unwrap();
            assert_eq!(back, text, "{s:?}");
        }
    }

    #[test]
    fn no_field_makes_a_line_longer_than_its_bound() {
        // What a caller controls (key, method, bucket) at its worst: every byte escaped six-fold.
        let long = "\u{1}".repeat(60_000);
        let wide = "é".repeat(40_000);
        let cases: &[(&str, &str, &str)] = &[(&long, "GET", "-"), ("k", &long, "-"), (&wide, &long, &long)];
        let bound = 6 * (KEY_MAX + 10 * FIELD_MAX) + 512;
        for (key, method, bucket) in cases {
            let mut r = record(key, "-");
            r.method = method;
            r.bucket = bucket;
            let line = r.json_line(UNIX_EPOCH);
            assert!(line.len() <= bound, "{} > {bound}", line.len());
            let doc: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(doc["truncated"], true);
            for (field, value, max) in [
                ("key", key, KEY_MAX),
                ("method", method, FIELD_MAX),
                ("bucket", bucket, FIELD_MAX),
            ] {
                let logged = doc[field].as_str().unwrap();
                if value.len() <= max {
                    assert_eq!(logged, *value, "{field}");
                } else {
                    assert!(
                        value.starts_with(logged) && logged.len() <= max && max - logged.len() < 4,
                        "{field}"
                    );
                }
            }
        }
        // Values within their bounds are whole, and the line says nothing of truncation.
        let key = "k".repeat(KEY_MAX);
        let doc: serde_json::Value = serde_json::from_str(&record(&key, "bob").json_line(UNIX_EPOCH)).unwrap();
        assert_eq!(doc["key"], key);
        assert!(doc.get("truncated").is_none());
    }

    #[test]
    fn clipping_ends_on_a_character() {
        let cases: &[(&str, usize, &str, bool)] = &[
            ("abc", 3, "abc", false),
            ("abcd", 3, "abc", true),
            ("aé", 2, "a", true),
            ("aé", 3, "aé", false),
            ("😀😀", 5, "😀", true),
            ("😀", 3, "", true),
            ("", 0, "", false),
        ];
        for (value, max, want, cut) in cases {
            assert_eq!(clip(value, *max), (*want, *cut), "{value:?} {max}");
        }
    }

    #[test]
    fn the_queue_keeps_half_for_identified_callers() {
        // (queued bytes, line length, identified, admitted)
        let cases = [
            (0, 500, false, true),
            (QUEUE_BYTES / 2 - 500, 500, false, true),
            (QUEUE_BYTES / 2 - 499, 500, false, false),
            (QUEUE_BYTES / 2, 500, true, true),
            (QUEUE_BYTES - 500, 500, true, true),
            (QUEUE_BYTES - 499, 500, true, false),
            (usize::MAX - 10, 500, true, false),
        ];
        for (queued, len, identified, admitted) in cases {
            let q = AtomicUsize::new(queued);
            assert_eq!(admit(&q, len, identified), admitted, "{queued} {len} {identified}");
            let want = if admitted { queued + len } else { queued };
            assert_eq!(q.load(Ordering::Relaxed), want);
        }
    }

    #[test]
    fn warnings_errors_and_identified_access_lines_are_kept() {
        use tracing::Level;
        // (target, level, an access line's caller identified, kept)
        let cases = [
            ("apgate::access", Level::INFO, true, true),
            ("apgate::access", Level::INFO, false, false),
            ("apgate::connection", Level::ERROR, false, true),
            ("apgate::app", Level::WARN, false, true),
            ("apgate::connection", Level::INFO, true, false),
            ("hyper", Level::DEBUG, false, false),
            ("apgate", Level::TRACE, false, false),
        ];
        for (target, level, identified, kept) in cases {
            assert_eq!(keeps(target, level, identified), kept, "{target} {level}");
        }
    }
}
