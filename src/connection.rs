//! What one client connection may hold, whoever the client is (docs/CONFIG.md, "Worst-case
//! memory").
//!
//! - [`Limits`]: open connections per listener and per source address; a connection over either
//!   is closed as soon as it is accepted.
//! - [`GuardedIo`], between the socket (or TLS stream) and hyper:
//!   - until a request head is parsed, hyper is given at most `server.max_header_bytes` of it, so
//!     its read buffer (which grows to `server.read_buffer_bytes` for bodies) stays that small for
//!     a head; a longer head is answered `400 RequestHeaderSectionTooLarge` and the connection
//!     closed;
//!   - a client that stops reading its answer for `server.client_send_timeout_seconds` is cut
//!     off, which ends the request and gives its concurrency slots back.
//! - [`Signals`]: the connection's requests tell the guard when a head has been parsed (a request
//!   is open) and when the connection is back to waiting for the next head.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};

use prometheus::IntCounterVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why apgate closed a client connection (`apgate_client_connections_closed_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The listener already has `server.max_connections` open.
    ListenerLimit,
    /// The source address already has `server.max_connections_per_source` open.
    SourceLimit,
    /// A request head longer than `server.max_header_bytes`.
    HeadTooLarge,
    /// The client did not read its answer for `server.client_send_timeout_seconds`.
    NotReading,
}

impl CloseReason {
    pub const ALL: [Self; 4] = [
        Self::ListenerLimit,
        Self::SourceLimit,
        Self::HeadTooLarge,
        Self::NotReading,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ListenerLimit => "listener_limit",
            Self::SourceLimit => "source_limit",
            Self::HeadTooLarge => "head_too_large",
            Self::NotReading => "not_reading",
        }
    }
}

/// Open client connections, per listener and per source address, across every data-plane thread.
#[derive(Debug, Default)]
pub struct Limits {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    per_listener: std::collections::HashMap<Arc<str>, usize>,
    per_source: std::collections::HashMap<IpAddr, usize>,
}

/// A connection's place under the [`Limits`], given back when it drops.
#[derive(Debug)]
pub struct Admitted {
    limits: Arc<Limits>,
    listener: Arc<str>,
    source: IpAddr,
}

impl Limits {
    /// Counts a new connection of `listener` from `source`, or says which limit it is over.
    pub fn admit(
        self: &Arc<Self>,
        listener: &Arc<str>,
        source: IpAddr,
        max_per_listener: usize,
        max_per_source: usize,
    ) -> Result<Admitted, CloseReason> {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let on_listener = counts.per_listener.get(listener).copied().unwrap_or(0);
        if on_listener >= max_per_listener {
            return Err(CloseReason::ListenerLimit);
        }
        let from_source = counts.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= max_per_source {
            return Err(CloseReason::SourceLimit);
        }
        *counts.per_listener.entry(listener.clone()).or_default() += 1;
        *counts.per_source.entry(source).or_default() += 1;
        Ok(Admitted {
            limits: self.clone(),
            listener: listener.clone(),
            source,
        })
    }

    /// Open connections of a listener.
    pub fn open(&self, listener: &str) -> usize {
        let counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.per_listener.get(listener).copied().unwrap_or(0)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self
            .limits
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Entries at zero go, so the per-source map holds only the sources connected now.
        if let Some(n) = counts.per_listener.get_mut(&self.listener) {
            *n -= 1;
            if *n == 0 {
                counts.per_listener.remove(&self.listener);
            }
        }
        if let Some(n) = counts.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                counts.per_source.remove(&self.source);
            }
        }
    }
}

/// What a connection's requests tell its [`GuardedIo`], and what the connection's loop reads to
/// tell an idle connection (app.rs parks those: no HTTP state, no buffers, until a byte arrives).
#[derive(Debug)]
pub struct Signals {
    /// A head has been parsed and its request is not over: hyper's reads are the request's body
    /// (or nothing), not a head.
    in_request: AtomicBool,
    /// The open request's body has been read to its end (or it had none).
    body_complete: AtomicBool,
    /// One more each time the connection goes back to waiting for a head.
    heads: AtomicU64,
    /// One more for each read from the client that returned bytes.
    reads: AtomicU64,
    /// A write to the client is waiting: hyper holds bytes it could not send yet.
    unsent: AtomicBool,
    /// When the connection opened.
    opened: Instant,
    /// Milliseconds after `opened` the connection last went back to waiting for a head.
    idle_since_ms: AtomicU64,
}

impl Default for Signals {
    fn default() -> Self {
        Self {
            in_request: AtomicBool::new(false),
            body_complete: AtomicBool::new(false),
            heads: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            unsent: AtomicBool::new(false),
            opened: Instant::now(),
            idle_since_ms: AtomicU64::new(0),
        }
    }
}

/// A snapshot of a connection's activity: equal snapshots taken apart mean nothing happened in
/// between; with `in_request` false, the connection was idle all that time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    heads: u64,
    reads: u64,
    in_request: bool,
    unsent: bool,
}

impl Activity {
    /// Whether the connection waits for a head, with nothing of the last answer left to send.
    pub fn between_requests(self) -> bool {
        !self.in_request && !self.unsent
    }

    /// Whether a request is being answered (its head parsed, its answer not over).
    pub fn in_request(self) -> bool {
        self.in_request
    }

    /// Whether a request ended, with the connection kept, since `earlier`.
    pub fn answered_since(self, earlier: Self) -> bool {
        self.heads != earlier.heads
    }
}

impl Signals {
    /// A request head was parsed.
    pub fn request_started(&self, has_body: bool) {
        self.body_complete.store(!has_body, Ordering::Relaxed);
        self.in_request.store(true, Ordering::Release);
    }

    /// The request's body has been read to its end.
    pub fn body_completed(&self) {
        self.body_complete.store(true, Ordering::Relaxed);
    }

    /// Whether the open request's body has been read to its end.
    pub fn body_is_complete(&self) -> bool {
        self.body_complete.load(Ordering::Relaxed)
    }

    /// The answer has been sent. If the connection stays open (and the request's body was read
    /// whole, so what comes next is a head), hyper's next reads are a head again.
    pub fn request_finished(&self, keep_alive: bool) {
        if keep_alive && self.body_is_complete() {
            self.idle_from_now();
            self.heads.fetch_add(1, Ordering::Relaxed);
            self.in_request.store(false, Ordering::Release);
        }
    }

    /// The connection waits for a head from now on (the head deadline counts from here).
    fn idle_from_now(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.idle_since_ms.store(ms, Ordering::Relaxed);
    }

    /// A write that had to wait went out: if the answer is over, the client has its last bytes
    /// only now, and the wait for its next head starts now.
    fn sent_after_waiting(&self) {
        self.unsent.store(false, Ordering::Relaxed);
        if !self.in_request.load(Ordering::Acquire) {
            self.idle_from_now();
        }
    }

    /// What the connection has done so far.
    pub fn activity(&self) -> Activity {
        Activity {
            heads: self.heads.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            in_request: self.in_request.load(Ordering::Acquire),
            unsent: self.unsent.load(Ordering::Relaxed),
        }
    }

    /// When the next head must be in: `header_read_timeout` after the connection opened or last
    /// went back to waiting for a head. One deadline for the wait and the head together, however
    /// often the connection is parked and woken in between.
    pub fn head_deadline(&self, header_read_timeout: Duration) -> Instant {
        self.opened + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed)) + header_read_timeout
    }
}

/// How a [`GuardedIo`] behaves, and where it counts what it does.
#[derive(Debug, Clone)]
pub struct Guard {
    pub signals: Arc<Signals>,
    /// The most of a head hyper is given before the head is parsed.
    pub head_budget: usize,
    /// How long a write may wait on a client that does not read.
    pub send_timeout: Duration,
    pub listener: Arc<str>,
    pub closed: IntCounterVec,
}

/// The canned answer to a head over the budget: hyper never saw a request, so apgate writes it.
fn head_too_large_answer(max_header_bytes: usize) -> Vec<u8> {
    let request_id = crate::proxy::new_request_id();
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>RequestHeaderSectionTooLarge</Code>\
         <Message>Your request header section exceeds the maximum allowed size ({max_header_bytes} bytes).</Message>\
         <RequestId>{request_id}</RequestId></Error>"
    );
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\
         x-amz-request-id: {request_id}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pin_project_lite::pin_project! {
    /// A client connection's transport, as hyper sees it (see the module documentation).
    pub struct GuardedIo<I> {
        #[pin]
        inner: I,
        guard: Guard,
        // The head count when `head_read` started counting.
        heads_seen: u64,
        // Bytes given to hyper since the connection last went back to waiting for a head.
        head_read: usize,
        // Since when a write has waited on the client.
        stalled: Option<Pin<Box<tokio::time::Sleep>>>,
        // A write returned `Pending` and nothing was written since: hyper holds unsent bytes.
        write_pending: bool,
        // The refusal of an over-long head being written, and how much of it is out.
        refusal: Option<(Vec<u8>, usize)>,
        // The connection is over for reading (after a refusal).
        read_closed: bool,
        // Bytes read from the client while no HTTP connection was on it (parked), given to the
        // next reader first.
        replay: Bytes,
    }
}

impl<I> GuardedIo<I> {
    pub fn new(inner: I, guard: Guard) -> Self {
        Self {
            inner,
            guard,
            heads_seen: 0,
            head_read: 0,
            stalled: None,
            write_pending: false,
            refusal: None,
            read_closed: false,
            replay: Bytes::new(),
        }
    }

    /// Bytes the next reader gets before anything more from the client (what an HTTP connection
    /// taken off this transport had read and not parsed).
    pub fn unread(&mut self, bytes: Bytes) {
        debug_assert!(self.replay.is_empty());
        // Counted against the head budget when they were read; they are counted again as given.
        self.head_read = self.head_read.saturating_sub(bytes.len());
        self.replay = bytes;
    }
}

impl<I: AsyncRead + Unpin> GuardedIo<I> {
    /// Waits for the client's next byte on a parked connection (no HTTP connection on it) and
    /// keeps it for the next reader: `Ok(true)` when it came, `Ok(false)` at the end of input.
    /// Reads a single byte, so a parked connection holds no buffer.
    pub fn poll_wait_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if !self.replay.is_empty() {
            return Poll::Ready(Ok(true));
        }
        if self.read_closed {
            return Poll::Ready(Ok(false));
        }
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut buf))?;
        if buf.filled().is_empty() {
            return Poll::Ready(Ok(false));
        }
        self.guard.signals.reads.fetch_add(1, Ordering::Relaxed);
        self.replay = Bytes::copy_from_slice(buf.filled());
        Poll::Ready(Ok(true))
    }
}

impl<I: AsyncWrite> GuardedIo<I> {
    /// After a write: progress disarms the send timer; `Pending` arms it, and past the timeout the
    /// write fails (the connection closes).
    fn settle_write<T>(
        polled: Poll<io::Result<T>>,
        stalled: &mut Option<Pin<Box<tokio::time::Sleep>>>,
        write_pending: &mut bool,
        guard: &Guard,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                *stalled = None;
                if std::mem::take(write_pending) {
                    guard.signals.sent_after_waiting();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !*write_pending {
                    *write_pending = true;
                    guard.signals.unsent.store(true, Ordering::Relaxed);
                }
                if Self::stall_expired(stalled, guard, cx) {
                    return Poll::Ready(Err(not_reading()));
                }
                Poll::Pending
            }
        }
    }

    /// Whether a write that returned `Pending` has now waited longer than the send timeout (the
    /// timer is armed at the first `Pending` and woken with the task).
    fn stall_expired(stalled: &mut Option<Pin<Box<tokio::time::Sleep>>>, guard: &Guard, cx: &mut Context<'_>) -> bool {
        let sleep = stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(guard.send_timeout)));
        if sleep.as_mut().poll(cx).is_ready() {
            guard
                .closed
                .with_label_values(&[&guard.listener, CloseReason::NotReading.as_str()])
                .inc();
            tracing::info!(listener = %guard.listener, timeout_seconds = guard.send_timeout.as_secs_f64(), "A client did not read its answer: connection closed.");
            return true;
        }
        false
    }
}

fn not_reading() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the client did not read its answer in time")
}

impl<I: AsyncRead + AsyncWrite> AsyncRead for GuardedIo<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if *this.read_closed {
            return Poll::Ready(Ok(()));
        }
        if let Some((answer, written)) = this.refusal.as_mut() {
            while *written < answer.len() {
                match this.inner.as_mut().poll_write(cx, &answer[*written..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => break,
                    Poll::Ready(Ok(n)) => *written += n,
                    Poll::Pending => {
                        if Self::stall_expired(this.stalled, this.guard, cx) {
                            break;
                        }
                        return Poll::Pending;
                    }
                }
            }
            if *written >= answer.len() {
                ready!(this.inner.as_mut().poll_flush(cx)).ok();
            }
            // End of input: hyper sees an unfinished head and closes the connection.
            *this.refusal = None;
            *this.read_closed = true;
            return Poll::Ready(Ok(()));
        }
        let in_request = this.guard.signals.in_request.load(Ordering::Acquire);
        if !in_request {
            let heads = this.guard.signals.heads.load(Ordering::Relaxed);
            if heads != *this.heads_seen {
                *this.heads_seen = heads;
                *this.head_read = 0;
            }
        }
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            if !in_request {
                *this.head_read += n;
            }
            return Poll::Ready(Ok(()));
        }
        // A request's body (or nothing) is read as it comes; a head within what is left of the budget.
        let room = if in_request {
            usize::MAX
        } else {
            this.guard.head_budget.saturating_sub(*this.head_read)
        };
        if room == 0 {
            this.guard
                .closed
                .with_label_values(&[&this.guard.listener, CloseReason::HeadTooLarge.as_str()])
                .inc();
            tracing::info!(listener = %this.guard.listener, max_header_bytes = this.guard.head_budget, "A request head over max_header_bytes: refused, connection closed.");
            if *this.write_pending {
                // hyper is still sending an answer: nothing can be written in between.
                *this.read_closed = true;
                return Poll::Ready(Ok(()));
            }
            *this.refusal = Some((head_too_large_answer(this.guard.head_budget), 0));
            // Write it on the next poll (the same path as a write that had to wait).
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = if room >= buf.remaining() {
            let before = buf.filled().len();
            ready!(this.inner.poll_read(cx, buf))?;
            buf.filled().len() - before
        } else {
            // Less room than hyper offers: read into the first `room` bytes only (initialised first,
            // which costs a memset on connections whose buffer grew for a body).
            let dst = buf.initialize_unfilled_to(room);
            let mut limited = ReadBuf::new(dst);
            ready!(this.inner.poll_read(cx, &mut limited))?;
            let n = limited.filled().len();
            buf.advance(n);
            n
        };
        if n > 0 {
            this.guard.signals.reads.fetch_add(1, Ordering::Relaxed);
        }
        if !in_request {
            *this.head_read += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite> AsyncWrite for GuardedIo<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write(cx, data);
        Self::settle_write(polled, this.stalled, this.write_pending, this.guard, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write_vectored(cx, bufs);
        Self::settle_write(polled, this.stalled, this.write_pending, this.guard, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let polled = this.inner.poll_flush(cx);
        Self::settle_write(polled, this.stalled, this.write_pending, this.guard, cx)
    }

    /// Closing waits on the client too (a TLS close_notify it does not read): bounded the same way.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let polled = this.inner.poll_shutdown(cx);
        Self::settle_write(polled, this.stalled, this.write_pending, this.guard, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn limits_count_per_listener_and_per_source_and_give_back_on_drop() {
        let limits = Arc::new(Limits::default());
        let shared: Arc<str> = Arc::from("shared");
        let other: Arc<str> = Arc::from("other");
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let first = limits.admit(&shared, a, 3, 2).unwrap();
        let second = limits.admit(&shared, a, 3, 2).unwrap();
        assert_eq!(limits.admit(&shared, a, 3, 2).unwrap_err(), CloseReason::SourceLimit);
        let third = limits.admit(&shared, b, 3, 2).unwrap();
        assert_eq!(limits.admit(&shared, b, 3, 2).unwrap_err(), CloseReason::ListenerLimit);
        // Another listener counts on its own; the source's count is across listeners.
        assert_eq!(limits.admit(&other, a, 3, 2).unwrap_err(), CloseReason::SourceLimit);
        let fourth = limits.admit(&other, b, 3, 2).unwrap();
        assert_eq!(limits.open("shared"), 3);
        drop(first);
        assert_eq!(limits.open("shared"), 2);
        let again = limits.admit(&shared, a, 3, 2).unwrap();
        drop((second, third, fourth, again));
        assert_eq!(limits.open("shared"), 0);
        let counts = limits.counts.lock().unwrap();
        assert!(counts.per_listener.is_empty() && counts.per_source.is_empty());
    }

    #[test]
    fn the_head_budget_starts_again_only_when_a_request_ended_whole_on_a_kept_connection() {
        let s = Signals::default();
        let heads = |s: &Signals| s.heads.load(Ordering::Relaxed);
        s.request_started(false);
        assert!(s.in_request.load(Ordering::Relaxed));
        s.request_finished(true);
        assert!(!s.in_request.load(Ordering::Relaxed));
        assert_eq!(heads(&s), 1);
        // A body not read to its end: what follows is not a head.
        s.request_started(true);
        s.request_finished(true);
        assert!(s.in_request.load(Ordering::Relaxed));
        assert_eq!(heads(&s), 1);
        // Read whole, but the connection closes.
        s.request_started(true);
        s.body_completed();
        s.request_finished(false);
        assert!(s.in_request.load(Ordering::Relaxed));
        s.request_finished(true);
        assert!(!s.in_request.load(Ordering::Relaxed));
        assert_eq!(heads(&s), 2);
    }
}
