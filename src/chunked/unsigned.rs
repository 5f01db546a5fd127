//! Unsigned aws-chunked bodies with a checksum trailer (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`, what
//! botocore and the AWS CLI send over HTTPS by default), checked as they stream and forwarded byte
//! for byte (PROTOCOL.md §4.2: `b\r\nhello world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n`).
//!
//! The bytes go upstream unchanged (so `Content-Length` and apgate's signature of the head hold),
//! but only once read and accepted: a chunk-size line once its CRLF came (hex digits only: no chunk
//! extensions), a chunk's data as it arrives (at most the size its line gave), its CRLF once
//! checked. The final chunk and the trailer are held (at most [`MAX_TRAILER_SECTION`] bytes) until
//! the trailer is complete and checked, and go out only when the caller's body ended right after
//! them. The trailer may carry only the checksum `x-amz-trailer` announced, once, its value of its
//! algorithm's length in base64: S3 reads a trailer line as a header of the request, and apgate's
//! decision never saw these (finding F1: an ACL, a KMS key, object lock settings in a trailer).
//!
//! **Invariant:** the upstream body is never complete unless all of the caller's was accepted: on a
//! violation nothing more goes out and the body fails, which aborts the upstream request short of
//! its length (or its HTTP chunked framing), so no object or part is created; the reason is left in
//! the [`FailureSlot`] for the client's answer. With a `Content-Length` (the upstream request's
//! too), a chunk must leave room for its CRLF and a final chunk before the length is reached: at
//! least those last bytes are held until the end, so a body cut short inside a chunk never
//! completes the upstream's (found by the `unsigned_chunks` fuzz target).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use super::{ChunkError, FailureSlot, TrailerChecksum};
use crate::body::BoxError;

/// The most the trailer may take after the final chunk's line (the longest checksum line, SHA-512,
/// is 113 bytes; white space around the value is allowed, within this).
pub const MAX_TRAILER_SECTION: usize = 4 << 10;
/// The most hex digits of a chunk size (5 GiB takes 9).
const MAX_SIZE_DIGITS: u8 = 16;

/// Where the reader is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A chunk-size line: `digits` hex digits so far, their value `size`.
    Size {
        digits: u8,
        size: u64,
    },
    /// The LF of a chunk-size line.
    SizeLf {
        size: u64,
    },
    /// A chunk's data: `left` bytes of it to come.
    Data {
        left: u64,
    },
    /// The CRLF after a chunk's data.
    DataCr,
    DataLf,
    /// The trailer, at the start of a line.
    LineStart,
    /// The checksum line's name, `matched` bytes of it so far.
    Name {
        matched: usize,
    },
    /// Spaces or tabs after the colon.
    BeforeValue,
    /// The value: `len` characters so far, `padded` once a `=` came.
    Value {
        len: usize,
        padded: bool,
    },
    /// Spaces or tabs after the value.
    AfterValue,
    /// The LF of the checksum line.
    LineLf,
    /// The LF of the empty line that ends the trailer.
    EndLf,
    /// The trailer ended: nothing may follow.
    Done,
    /// The held end was handed out, or the body failed.
    Closed,
}

/// The reader of one body: fed its frames, it hands out what may be forwarded.
#[derive(Debug)]
pub struct UnsignedFraming {
    state: State,
    /// The checksum `x-amz-trailer` announced (`None`: the trailer must be empty).
    checksum: Option<TrailerChecksum>,
    checksum_seen: bool,
    decoded_length: u64,
    /// Data bytes announced by the chunk-size lines so far (never more than `decoded_length`).
    seen: u64,
    /// Bytes of the trailer read so far, after the final chunk's line.
    trailer_bytes: usize,
    /// Bytes read but not accepted yet: a chunk-size line or CRLF cut by a frame's end (a few
    /// bytes), or the final chunk's line and the trailer (bounded by [`MAX_TRAILER_SECTION`]).
    held: BytesMut,
    /// The body's length on the wire, when the caller gave one (`Content-Length`): the upstream
    /// request has the same, so the upstream reads a body complete once that many bytes are out.
    wire_length: Option<u64>,
    /// Bytes read so far.
    consumed: u64,
}

/// The fewest bytes that end a body after a chunk's data: its CRLF, then `0\r\n\r\n`.
const LEAST_AFTER_DATA: u64 = 7;

impl UnsignedFraming {
    /// `checksum`: what `x-amz-trailer` announced; `decoded_length`: `x-amz-decoded-content-length`;
    /// `wire_length`: the body's `Content-Length`, if it has one.
    pub fn new(checksum: Option<TrailerChecksum>, decoded_length: u64, wire_length: Option<u64>) -> Self {
        Self {
            state: State::Size { digits: 0, size: 0 },
            checksum,
            checksum_seen: false,
            decoded_length,
            seen: 0,
            trailer_bytes: 0,
            held: BytesMut::new(),
            wire_length,
            consumed: 0,
        }
    }

    /// Reads the next bytes of the body and pushes onto `out` those that may now be forwarded
    /// (slices of `input`, and held bytes they complete). On an error nothing of `input` is
    /// handed out, and the reader is closed.
    pub fn feed(&mut self, input: Bytes, out: &mut VecDeque<Bytes>) -> Result<(), ChunkError> {
        let result = self.read(&input);
        let accepted = match result {
            Ok(accepted) => accepted,
            Err(e) => {
                self.close();
                return Err(e);
            }
        };
        if accepted > 0 {
            // What is held precedes the accepted bytes (held bytes are those of the line or CRLF
            // they complete; once in the trailer nothing is accepted any more).
            if !self.held.is_empty() {
                out.push_back(self.held.split().freeze());
            }
            out.push_back(input.slice(..accepted));
        }
        self.held.extend_from_slice(&input[accepted..]);
        Ok(())
    }

    /// How many `=` end the announced checksum's value.
    fn padding(&self) -> usize {
        self.checksum
            .and_then(|c| crate::s3::operation::checksum_padding(c.header))
            .unwrap_or(0)
    }

    /// The body ended: the held final chunk and trailer, if the body ended right after them.
    pub fn finish(&mut self) -> Result<Bytes, ChunkError> {
        if self.state == State::Done {
            self.state = State::Closed;
            return Ok(std::mem::take(&mut self.held).freeze());
        }
        self.close();
        Err(ChunkError::Truncated)
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.held = BytesMut::new();
    }

    /// Reads `buf` through; returns how many of its bytes are accepted.
    fn read(&mut self, buf: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        let mut accepted = 0;
        while i < buf.len() {
            match self.state {
                State::Data { left } => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len() - i);
                    i += n;
                    self.consumed += n as u64;
                    accepted = i;
                    let left = left - n as u64;
                    self.state = if left == 0 { State::DataCr } else { State::Data { left } };
                }
                State::Done | State::Closed => return Err(ChunkError::Malformed("data after the trailer's end")),
                _ => {
                    let b = buf[i];
                    i += 1;
                    self.consumed += 1;
                    if self.in_trailer() {
                        self.trailer_bytes += 1;
                        if self.trailer_bytes > MAX_TRAILER_SECTION {
                            return Err(ChunkError::MalformedTrailer("the trailer is too long"));
                        }
                    }
                    if self.byte(b)? {
                        accepted = i;
                    }
                }
            }
        }
        Ok(accepted)
    }

    fn in_trailer(&self) -> bool {
        !matches!(
            self.state,
            State::Size { .. } | State::SizeLf { .. } | State::Data { .. } | State::DataCr | State::DataLf
        )
    }

    /// Reads one byte outside chunk data; `Ok(true)` when it ends a part that is accepted (with
    /// everything before it).
    fn byte(&mut self, b: u8) -> Result<bool, ChunkError> {
        match self.state {
            State::Size { digits, size } => match b {
                b'\r' if digits > 0 => self.state = State::SizeLf { size },
                b';' => return Err(ChunkError::Malformed("chunk extensions are not allowed")),
                _ => {
                    let digit = hex_value(b).ok_or(ChunkError::Malformed("bad chunk size"))?;
                    if digits == MAX_SIZE_DIGITS {
                        return Err(ChunkError::Malformed("bad chunk size"));
                    }
                    self.state = State::Size {
                        digits: digits + 1,
                        size: size << 4 | u64::from(digit),
                    };
                }
            },
            State::SizeLf { size } => {
                if b != b'\n' {
                    return Err(ChunkError::Malformed("chunk size not followed by CRLF"));
                }
                if size > self.decoded_length - self.seen {
                    return Err(ChunkError::LengthMismatch);
                }
                if size == 0 {
                    if self.seen != self.decoded_length {
                        return Err(ChunkError::LengthMismatch);
                    }
                    // The final chunk: held, with the trailer, until the trailer is checked.
                    self.state = State::LineStart;
                    return Ok(false);
                }
                // With a length, the upstream's body is complete once that many bytes are out:
                // a chunk that leaves no room for its CRLF and the final chunk after it would
                // have its data complete the upstream's body before the caller's is read (and
                // found short). Refused before any of it goes.
                if self
                    .wire_length
                    .is_some_and(|l| l.saturating_sub(self.consumed) < size.saturating_add(LEAST_AFTER_DATA))
                {
                    return Err(ChunkError::Truncated);
                }
                self.seen += size;
                self.state = State::Data { left: size };
                return Ok(true);
            }
            State::DataCr if b == b'\r' => self.state = State::DataLf,
            State::DataLf if b == b'\n' => {
                self.state = State::Size { digits: 0, size: 0 };
                return Ok(true);
            }
            State::DataCr | State::DataLf => return Err(ChunkError::Malformed("chunk data not followed by CRLF")),
            State::LineStart if b == b'\r' => self.state = State::EndLf,
            State::LineStart => {
                if self.checksum.is_none() {
                    return Err(ChunkError::MalformedTrailer(
                        "a trailer line on a request whose x-amz-trailer announced none",
                    ));
                }
                if self.checksum_seen {
                    return Err(ChunkError::MalformedTrailer(
                        "a trailer line after the checksum x-amz-trailer announced",
                    ));
                }
                self.state = State::Name { matched: 0 };
                return self.byte(b);
            }
            State::Name { matched } => {
                let name = self.checksum.map_or("", |c| c.header).as_bytes();
                // Field names are case-insensitive (RFC 9110 §5.1); S3 reads the line as a header.
                if name.get(matched).is_some_and(|n| n.eq_ignore_ascii_case(&b)) {
                    self.state = State::Name { matched: matched + 1 };
                } else if matched == name.len() && b == b':' {
                    self.state = State::BeforeValue;
                } else {
                    return Err(ChunkError::MalformedTrailer(
                        "a trailer line other than the checksum x-amz-trailer announced",
                    ));
                }
            }
            State::BeforeValue if matches!(b, b' ' | b'\t') => {}
            State::BeforeValue => {
                self.state = State::Value { len: 0, padded: false };
                return self.byte(b);
            }
            State::Value { len, padded } => {
                let expected = self.checksum.map_or(0, |c| c.value_len);
                match b {
                    b' ' | b'\t' | b'\r' => {
                        if len != expected {
                            return Err(ChunkError::MalformedTrailer(
                                "the checksum is not of its algorithm's length",
                            ));
                        }
                        self.state = if b == b'\r' { State::LineLf } else { State::AfterValue };
                    }
                    _ if len == expected => {
                        return Err(ChunkError::MalformedTrailer(
                            "the checksum is not of its algorithm's length",
                        ))
                    }
                    // Exactly the digest's padding, at the end: base64 as S3 reads it.
                    b'=' if len >= expected.saturating_sub(self.padding()) => {
                        self.state = State::Value {
                            len: len + 1,
                            padded: true,
                        }
                    }
                    _ if !padded
                        && len < expected.saturating_sub(self.padding())
                        && (b.is_ascii_alphanumeric() || b == b'+' || b == b'/') =>
                    {
                        self.state = State::Value { len: len + 1, padded };
                    }
                    _ => return Err(ChunkError::MalformedTrailer("the checksum is not base64")),
                }
            }
            State::AfterValue if matches!(b, b' ' | b'\t') => {}
            State::AfterValue if b == b'\r' => self.state = State::LineLf,
            State::AfterValue => return Err(ChunkError::MalformedTrailer("the checksum is not base64")),
            State::LineLf if b == b'\n' => {
                self.checksum_seen = true;
                self.state = State::LineStart;
            }
            State::EndLf if b == b'\n' => {
                if self.checksum.is_some() && !self.checksum_seen {
                    return Err(ChunkError::MalformedTrailer(
                        "the trailer lacks the checksum x-amz-trailer announced",
                    ));
                }
                self.state = State::Done;
            }
            State::LineLf | State::EndLf => {
                return Err(ChunkError::MalformedTrailer("a trailer line not ended by CRLF"));
            }
            State::Data { .. } | State::Done | State::Closed => {
                return Err(ChunkError::Malformed("data after the trailer's end"));
            }
        }
        Ok(false)
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

pin_project_lite::pin_project! {
    /// An unsigned aws-chunked body forwarded as received, each byte only once accepted
    /// ([`UnsignedFraming`]); a violation fails the body and is left in the failure slot.
    pub struct CheckUnsignedChunks<B> {
        #[pin]
        inner: B,
        framing: UnsignedFraming,
        out: VecDeque<Bytes>,
        inner_done: bool,
        failed: Option<ChunkError>,
        failure: FailureSlot,
    }
}

impl<B> std::fmt::Debug for CheckUnsignedChunks<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckUnsignedChunks")
            .field("framing", &self.framing)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<B: Body> CheckUnsignedChunks<B> {
    /// `checksum`: what `x-amz-trailer` announced; `decoded_length`: `x-amz-decoded-content-length`;
    /// the body's length on the wire is the inner body's, if exact (`Content-Length`).
    pub fn new(inner: B, checksum: Option<TrailerChecksum>, decoded_length: u64, failure: FailureSlot) -> Self {
        let wire_length = inner.size_hint().exact();
        Self {
            inner,
            framing: UnsignedFraming::new(checksum, decoded_length, wire_length),
            out: VecDeque::new(),
            inner_done: false,
            failed: None,
            failure,
        }
    }
}

impl<B> Body for CheckUnsignedChunks<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(e) = this.failed {
            return Poll::Ready(Some(Err(Box::new(e.clone()))));
        }
        loop {
            if let Some(bytes) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if *this.inner_done {
                return Poll::Ready(None);
            }
            let step = match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                // HTTP trailers of the caller's chunked framing carry nothing S3 reads of this
                // request: never forwarded.
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.framing.feed(data, this.out),
                    Err(_) => Ok(()),
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => {
                    *this.inner_done = true;
                    this.framing.finish().map(|end| this.out.push_back(end))
                }
            };
            if let Err(e) = step {
                this.out.clear();
                let _ = this.failure.set(e.clone());
                *this.failed = Some(e.clone());
                return Poll::Ready(Some(Err(Box::new(e))));
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        // The bytes go out as they came: what the inner body has yet to give, and what was read
        // from it and not handed out yet.
        let pending = (self.framing.held.len() + self.out.iter().map(Bytes::len).sum::<usize>()) as u64;
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(pending));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(pending));
        }
        hint
    }
}

#[cfg(test)]
mod tests;
