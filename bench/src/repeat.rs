//! A request or response body of `left` bytes made of one shared buffer, for both bench programs.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// `left` bytes as slices of one shared buffer: no copy, no allocation per frame.
pub struct Repeat {
    pub buffer: Bytes,
    pub left: u64,
}

impl http_body::Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let len = self.left.min(self.buffer.len() as u64) as usize;
        self.left -= len as u64;
        Poll::Ready(Some(Ok(Frame::data(self.buffer.slice(..len)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}
