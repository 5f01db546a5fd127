//! Recording: every request is counted (`apgate_requests_total` and the duration histograms) and
//! logged (one access-log line) exactly once, by the [`Record`] guard that travels with it: held by
//! the handler, then moved into the response body, it records when the body ends, or, when it is
//! dropped first (the client left before or during the answer), records the request as abandoned.
//! Its concurrency slots go back when it is done.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, StatusCode};

use super::admission::Slots;
use crate::body::BodyEnd;
use crate::config::KeyLogging;
use crate::metrics::NONE;
use crate::s3::operation::{self, Operation};
use crate::state::State;

/// The status logged and counted for requests the client abandoned before apgate answered
/// (nginx's "client closed request").
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// What is known about a request so far, for its metrics and its log line.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) request_id: String,
    pub(crate) started: Instant,
    pub(crate) listener: Arc<str>,
    pub(crate) remote: SocketAddr,
    /// `http` or `https`, for URLs that point back at apgate.
    pub(crate) scheme: &'static str,
    pub(crate) method: Method,
    pub(crate) operation: Option<Operation>,
    pub(crate) identity: Option<Arc<str>>,
    pub(crate) bucket: Option<String>,
    /// The access point as metrics label it ([`crate::routing::Route::label`]).
    pub(crate) access_point: Option<Arc<str>>,
    /// The access point itself (for a template, made from this request's bucket): logged.
    pub(crate) access_point_name: Option<Arc<crate::s3::access_point::AccessPoint>>,
    /// The decoded object key (logged as configured).
    pub(crate) key: Option<String>,
    key_logging: KeyLogging,
    /// The S3 error code of the answer, apgate's own or the upstream's.
    pub(crate) error_code: Option<String>,
    /// The S3 error code of an answer found in its body after its head was sent (a 200 error
    /// document of CopyObject or CompleteMultipartUpload): set by the body, read by the record.
    pub(crate) late_error_code: Arc<std::sync::OnceLock<String>>,
    /// Request body bytes received so far (shared with the body as it streams).
    pub(crate) bytes_in: Arc<AtomicU64>,
    /// Upstream attempts made (0: nothing was sent upstream).
    pub(crate) attempts: u32,
    pub(crate) upstream_ms: Option<f64>,
    pub(crate) upstream_request_id: Option<HeaderValue>,
    pub(crate) upstream_id2: Option<HeaderValue>,
    /// The connection's signals: the request's body was read whole (connection.rs).
    pub(crate) connection: Arc<crate::connection::Signals>,
}

impl Ctx {
    pub(crate) fn identity_label(&self) -> &str {
        self.identity.as_deref().unwrap_or(NONE)
    }

    pub(crate) fn access_point_label(&self) -> &str {
        self.access_point.as_deref().unwrap_or(NONE)
    }

    pub(crate) fn operation_label(&self) -> &'static str {
        operation::label(self.operation)
    }

    pub(crate) fn is_head(&self) -> bool {
        self.method == Method::HEAD
    }
}

/// A request's record, written once: by [`Record::finish`], or by its drop if it never finished.
#[derive(Debug)]
pub(crate) struct Record {
    open: Option<Open>,
}

#[derive(Debug)]
struct Open {
    state: Arc<State>,
    ctx: Ctx,
    /// Given back after the record is written.
    slots: Slots,
}

impl Record {
    /// Opens the record of a request that just arrived, with the slot it takes.
    pub(crate) fn open(
        state: &Arc<State>,
        listener: Arc<str>,
        scheme: &'static str,
        remote: SocketAddr,
        method: &Method,
        slots: Slots,
        connection: Arc<crate::connection::Signals>,
    ) -> Self {
        Self {
            open: Some(Open {
                state: state.clone(),
                ctx: Ctx {
                    request_id: new_request_id(),
                    started: Instant::now(),
                    listener,
                    remote,
                    scheme,
                    method: method.clone(),
                    operation: None,
                    identity: None,
                    bucket: None,
                    access_point: None,
                    access_point_name: None,
                    key: None,
                    key_logging: state.config.access_log.key,
                    error_code: None,
                    late_error_code: Arc::default(),
                    bytes_in: Arc::default(),
                    attempts: 0,
                    upstream_ms: None,
                    upstream_request_id: None,
                    upstream_id2: None,
                    connection,
                },
                slots,
            }),
        }
    }

    /// The request's context (present until the record is written, which takes the record).
    pub(crate) fn ctx(&self) -> &Ctx {
        &self.inner().ctx
    }

    pub(crate) fn ctx_mut(&mut self) -> &mut Ctx {
        &mut self.inner_mut().ctx
    }

    pub(crate) fn slots_mut(&mut self) -> &mut Slots {
        &mut self.inner_mut().slots
    }

    fn inner(&self) -> &Open {
        // Only `finish` and `drop` take `open`, and both consume the record.
        self.open
            .as_ref()
            .unwrap_or_else(|| unreachable!("a record is open until written"))
    }

    fn inner_mut(&mut self) -> &mut Open {
        self.open
            .as_mut()
            .unwrap_or_else(|| unreachable!("a record is open until written"))
    }

    /// Writes the record: the answer's status, the response bytes sent, and how its body ended.
    pub(crate) fn finish(mut self, status: StatusCode, bytes_out: u64, end: BodyEnd) {
        if let Some(open) = self.open.take() {
            write(&open.state, &open.ctx, status, bytes_out, end);
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            let status = StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::BAD_REQUEST);
            write(&open.state, &open.ctx, status, 0, BodyEnd::Aborted);
        }
    }
}

/// Records metrics and writes the access log line of a finished request.
fn write(state: &State, ctx: &Ctx, status: StatusCode, bytes_out: u64, end: BodyEnd) {
    let m = &state.metrics;
    let operation = ctx.operation_label();
    m.requests
        .with_label_values(&[
            ctx.identity_label(),
            ctx.access_point_label(),
            operation,
            status.as_str(),
        ])
        .inc();
    let elapsed = ctx.started.elapsed().as_secs_f64();
    m.request_duration
        .with_label_values(&[ctx.access_point_label(), operation])
        .observe(elapsed);
    m.identity_request_duration
        .with_label_values(&[ctx.identity_label()])
        .observe(elapsed);
    if ctx.access_point.is_some() {
        m.sent_bytes
            .with_label_values(&[ctx.identity_label(), ctx.access_point_label()])
            .inc_by(bytes_out);
    }
    let key: std::borrow::Cow<'_, str> = match (ctx.key.as_deref(), ctx.key_logging) {
        (None, _) | (Some(_), KeyLogging::Omitted) => NONE.into(),
        (Some(k), KeyLogging::Full) => k.into(),
        (Some(k), KeyLogging::Hashed) => {
            use sha2::Digest;
            crate::s3::encoding::hex_lower(&sha2::Sha256::digest(k.as_bytes())[..8]).into()
        }
    };
    crate::access_log::Record {
        request_id: &ctx.request_id,
        listener: &ctx.listener,
        remote: ctx.remote,
        identity: ctx.identity_label(),
        method: ctx.method.as_str(),
        operation,
        bucket: ctx.bucket.as_deref().unwrap_or(NONE),
        key: &key,
        access_point: ctx.access_point_name.as_deref().map_or(NONE, |ap| ap.name()),
        status: status.as_u16(),
        error_code: ctx
            .error_code
            .as_deref()
            .or(ctx.late_error_code.get().map(String::as_str))
            .unwrap_or(NONE),
        bytes_in: ctx.bytes_in.load(Ordering::Relaxed),
        bytes_out,
        complete: end == BodyEnd::Complete,
        duration_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
        attempts: ctx.attempts,
        upstream_ms: ctx.upstream_ms.unwrap_or(0.0),
        upstream_request_id: header_str(ctx.upstream_request_id.as_ref()),
        upstream_id2: header_str(ctx.upstream_id2.as_ref()),
    }
    .emit();
}

fn header_str(value: Option<&HeaderValue>) -> &str {
    value.and_then(|v| v.to_str().ok()).unwrap_or(NONE)
}

/// 16 uppercase hex digits, like S3's own request ids.
/// A fresh request id (16 upper-case hex digits).
pub(crate) fn new_request_id() -> String {
    let mut id = String::with_capacity(16);
    crate::s3::encoding::push_hex(
        &mut id,
        &rand::random::<u64>().to_be_bytes(),
        crate::s3::encoding::HEX_UPPER,
    );
    id
}
