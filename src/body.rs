//! Body types: one boxed body for every response, and a metering wrapper that counts bytes as
//! they stream and reports when the body ends (or is dropped half-way).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Errors from any body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response apgate sends, and of every upstream request.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> ResponseBody {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// How a metered body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// Every byte went through.
    Complete,
    /// The body was dropped before its end (the reader stopped).
    Aborted,
    /// The body itself failed (for a request body: the client broke off or sent too little).
    Failed,
}

pin_project_lite::pin_project! {
    /// Counts the data bytes of a body and calls `on_end` once, when it ends or is dropped.
    pub struct Metered<B: Body, F: FnOnce(u64, BodyEnd)> {
        #[pin]
        inner: B,
        bytes: u64,
        on_end: Option<F>,
    }

    impl<B: Body, F: FnOnce(u64, BodyEnd)> PinnedDrop for Metered<B, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(f) = this.on_end.take() {
                // hyper stops polling a body once it reports its end (a Content-Length body after
                // its last byte, an empty body at once), so a body that reached its end is only
                // ever seen ending here.
                let end = if this.inner.is_end_stream() { BodyEnd::Complete } else { BodyEnd::Aborted };
                f(*this.bytes, end);
            }
        }
    }
}

impl<B: Body, F: FnOnce(u64, BodyEnd)> std::fmt::Debug for Metered<B, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metered")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl<B: Body, F: FnOnce(u64, BodyEnd)> Metered<B, F> {
    pub fn new(inner: B, on_end: F) -> Self {
        Self {
            inner,
            bytes: 0,
            on_end: Some(on_end),
        }
    }
}

impl<B, F> Body for Metered<B, F>
where
    B: Body<Data = Bytes>,
    F: FnOnce(u64, BodyEnd),
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(f) = this.on_end.take() {
                    f(*this.bytes, BodyEnd::Failed);
                }
            }
            Poll::Ready(None) => {
                if let Some(f) = this.on_end.take() {
                    f(*this.bytes, BodyEnd::Complete);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// Fails a body that sends nothing for `idle` while its reader waits: a stalled upstream (or
    /// client) must not hold the other side, and a concurrency slot, forever. The clock runs from
    /// the first poll that finds no data until data comes, so time in which the reader itself does
    /// not poll (its own consumer is slow) never counts against the body.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        idle: std::time::Duration,
        #[pin]
        deadline: tokio::time::Sleep,
        armed: bool,
        // Set when the timeout fires, for callers that must tell it from other failures.
        fired: Option<Arc<AtomicBool>>,
    }
}

impl<B> std::fmt::Debug for IdleTimeout<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleTimeout")
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: std::time::Duration) -> Self {
        Self {
            inner,
            idle,
            deadline: tokio::time::sleep(idle),
            armed: false,
            fired: None,
        }
    }

    /// Also sets `flag` when the timeout fires.
    pub fn flagging(mut self, flag: Arc<AtomicBool>) -> Self {
        self.fired = Some(flag);
        self
    }
}

/// A body sent nothing for too long.
#[derive(Debug, thiserror::Error)]
#[error("no data for {0:?}")]
pub struct BodyIdle(pub std::time::Duration);

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.armed = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if !*this.armed {
                    *this.armed = true;
                    this.deadline.as_mut().reset(tokio::time::Instant::now() + *this.idle);
                }
                match std::future::Future::poll(this.deadline, cx) {
                    Poll::Ready(()) => {
                        if let Some(flag) = this.fired {
                            flag.store(true, Ordering::Relaxed);
                        }
                        Poll::Ready(Some(Err(Box::new(BodyIdle(*this.idle)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn counts_bytes_and_reports_completion_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let body = Metered::new(Full::new(Bytes::from_static(b"hello world")), move |n, end| {
            s.lock().unwrap().push((n, end))
        });
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"hello world");
        assert_eq!(*seen.lock().unwrap(), [(11, BodyEnd::Complete)]);
    }

    #[tokio::test]
    async fn a_body_read_to_its_length_is_complete_without_a_final_poll() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut body = Metered::new(Full::new(Bytes::from_static(b"abc")), move |n, end| {
            s.lock().unwrap().push((n, end))
        });
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "abc");
        assert!(body.is_end_stream());
        drop(body);
        assert_eq!(*seen.lock().unwrap(), [(3, BodyEnd::Complete)]);
    }

    #[test]
    fn an_empty_body_never_polled_is_complete() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        drop(Metered::new(Empty::<Bytes>::new(), move |n, end| {
            s.lock().unwrap().push((n, end))
        }));
        assert_eq!(*seen.lock().unwrap(), [(0, BodyEnd::Complete)]);
    }

    #[tokio::test]
    async fn a_body_that_stalls_fails_after_the_idle_timeout() {
        struct Stalled;
        impl Body for Stalled {
            type Data = Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
                Poll::Pending
            }
        }
        let started = std::time::Instant::now();
        let result = IdleTimeout::new(Stalled, std::time::Duration::from_millis(100))
            .collect()
            .await;
        assert!(result.is_err());
        assert!(started.elapsed() >= std::time::Duration::from_millis(100));
        let ok = IdleTimeout::new(
            Full::new(Bytes::from_static(b"fine")),
            std::time::Duration::from_millis(100),
        )
        .collect()
        .await;
        assert_eq!(&ok.unwrap().to_bytes()[..], b"fine");
    }

    #[tokio::test]
    async fn time_the_reader_spends_away_does_not_count_as_idle() {
        // One frame is ready, the next comes 50 ms after it is asked for; the reader comes back for
        // it only after 200 ms, well past the 100 ms idle limit.
        struct Late {
            sent: u8,
            asked: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
        }
        impl Body for Late {
            type Data = Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
                if self.sent == 0 {
                    self.sent = 1;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"a")))));
                }
                if self.sent == 2 {
                    return Poll::Ready(None);
                }
                let sleep = self
                    .asked
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(std::time::Duration::from_millis(50))));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.sent = 2;
                        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"b")))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
        use std::future::Future as _;
        let flag = Arc::new(AtomicBool::new(false));
        let mut body = Box::pin(
            IdleTimeout::new(Late { sent: 0, asked: None }, std::time::Duration::from_millis(100))
                .flagging(flag.clone()),
        );
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "a");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "b");
        assert!(body.frame().await.is_none());
        assert!(!flag.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_stall_sets_the_flag() {
        struct Stalled;
        impl Body for Stalled {
            type Data = Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
                Poll::Pending
            }
        }
        let flag = Arc::new(AtomicBool::new(false));
        let result = IdleTimeout::new(Stalled, std::time::Duration::from_millis(50))
            .flagging(flag.clone())
            .collect()
            .await;
        assert!(result.is_err());
        assert!(flag.load(Ordering::Relaxed));
    }

    #[test]
    fn reports_an_abort_when_dropped_early() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        drop(Metered::new(Full::new(Bytes::from_static(b"x")), move |n, end| {
            s.lock().unwrap().push((n, end))
        }));
        assert_eq!(*seen.lock().unwrap(), [(0, BodyEnd::Aborted)]);
    }
}
