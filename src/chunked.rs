//! Signed aws-chunked bodies (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`), verified and
//! re-signed as they stream (<https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming.html>,
//! PROTOCOL.md §4.2).
//!
//! Each chunk is `<hex size>;chunk-signature=<64 hex>\r\n<data>\r\n`; the body ends with a
//! zero-size chunk, then `\r\n` or, with a trailer, trailer lines, `x-amz-trailer-signature:<sig>`
//! and `\r\n`. A chunk's signature covers its data and chains from the previous signature, starting
//! at the seed (the `Authorization` signature). apgate holds each chunk until it has all of it (a
//! chunk's outbound signature covers its data and precedes it), checks the caller's signature,
//! and re-emits the chunk with apgate's own chained signature. Signatures are always 64 hex
//! characters, so the encoded length, and the `Content-Length` the client declared, hold.
//!
//! **Invariant:** a chunk whose signature does not verify is never forwarded; the body fails
//! instead, which aborts the upstream request before its end, so no object is created.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use sha2::{Digest, Sha256};

pub use crate::sigv4::ChunkKey;

use crate::body::BoxError;
use crate::error::{GatewayError, S3ErrorCode};
use crate::secret::ct_eq;

/// Chunks larger than this are refused (clients use 64 KiB to 1 MiB); it bounds apgate's memory.
pub const MAX_CHUNK_SIZE: usize = 16 << 20;
/// Only the last data chunk may be smaller than this (S3's rule).
pub const MIN_CHUNK_SIZE: usize = 8 << 10;
const MAX_HEADER_LINE: usize = 4096;
const MAX_TRAILER_BYTES: usize = 16 << 10;

pub mod decode;

/// The caller's side: what its chunk signatures are checked against.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub key: ChunkKey,
    /// The seed: the signature of the request's `Authorization` header.
    pub seed: String,
}

/// Why a signed aws-chunked body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("a chunk signature does not match")]
    SignatureDoesNotMatch,
    #[error("the trailer signature does not match")]
    TrailerSignatureDoesNotMatch,
    #[error("malformed aws-chunked body: {0}")]
    Malformed(&'static str),
    #[error("only the last chunk may be smaller than 8192 bytes")]
    ChunkTooSmall,
    #[error("a chunk is larger than {MAX_CHUNK_SIZE} bytes")]
    ChunkTooLarge,
    #[error("the chunks do not add up to x-amz-decoded-content-length")]
    LengthMismatch,
    #[error("the body ended before its final chunk")]
    Truncated,
}

impl ChunkError {
    /// The S3 error the client gets.
    pub fn to_gateway_error(&self) -> GatewayError {
        let code = match self {
            Self::SignatureDoesNotMatch | Self::TrailerSignatureDoesNotMatch => S3ErrorCode::SignatureDoesNotMatch,
            Self::ChunkTooSmall => S3ErrorCode::InvalidChunkSizeError,
            Self::Malformed(_) | Self::ChunkTooLarge | Self::LengthMismatch | Self::Truncated => {
                S3ErrorCode::IncompleteBody
            }
        };
        GatewayError::client(code, format!("{self}."))
    }
}

/// Where the body reports why it failed, for the request handler to answer with.
pub type FailureSlot = Arc<OnceLock<ChunkError>>;

#[derive(Debug)]
enum State {
    Header,
    Data {
        size: usize,
        hex: Bytes,
        signature: String,
    },
    AfterFinal,
    /// Trailer lines so far: (lower-case name, trimmed value, the line as received).
    Trailer {
        lines: Vec<(String, String, String)>,
        bytes: usize,
    },
    Done,
}

pin_project_lite::pin_project! {
    /// Verifies (when `inbound` is given) and re-signs a signed aws-chunked body as it streams.
    pub struct ResignChunks<B> {
        #[pin]
        inner: B,
        buf: BytesMut,
        state: State,
        inbound: Option<Inbound>,
        previous_in: String,
        outbound: ChunkKey,
        previous_out: String,
        trailer: bool,
        decoded_length: u64,
        seen: u64,
        small_chunk_seen: bool,
        // The CRLF that ends the last data chunk, held back until the next chunk verified: a body
        // that ends without its final zero-length chunk then never reaches the upstream whole.
        pending_crlf: bool,
        inner_done: bool,
        out: VecDeque<Bytes>,
        failure: FailureSlot,
    }
}

impl<B> std::fmt::Debug for ResignChunks<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResignChunks")
            .field("state", &self.state)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl<B> ResignChunks<B> {
    /// `inbound` is `None` when the caller is trusted without a signature (a `source` identity):
    /// its chunk signatures are then replaced without being checked. `outbound_seed` is the
    /// signature apgate put on the upstream request's head.
    pub fn new(
        inner: B,
        inbound: Option<Inbound>,
        outbound: ChunkKey,
        outbound_seed: String,
        trailer: bool,
        decoded_length: u64,
        failure: FailureSlot,
    ) -> Self {
        let previous_in = inbound.as_ref().map(|i| i.seed.clone()).unwrap_or_default();
        Self {
            inner,
            buf: BytesMut::new(),
            state: State::Header,
            inbound,
            previous_in,
            outbound,
            previous_out: outbound_seed,
            trailer,
            decoded_length,
            seen: 0,
            small_chunk_seen: false,
            pending_crlf: false,
            inner_done: false,
            out: VecDeque::new(),
            failure,
        }
    }
}

/// One step of the parser over the buffered input; `Ok(false)` means more input is needed.
#[allow(clippy::too_many_arguments)]
fn step(
    state: &mut State,
    buf: &mut BytesMut,
    out: &mut VecDeque<Bytes>,
    inbound: Option<&Inbound>,
    previous_in: &mut String,
    outbound: &ChunkKey,
    previous_out: &mut String,
    trailer: bool,
    decoded_length: u64,
    seen: &mut u64,
    small_chunk_seen: &mut bool,
    pending_crlf: &mut bool,
) -> Result<bool, ChunkError> {
    match state {
        State::Header => {
            let Some(end) = find_crlf(buf) else {
                return if buf.len() > MAX_HEADER_LINE {
                    Err(ChunkError::Malformed("chunk header too long"))
                } else {
                    Ok(false)
                };
            };
            let line = buf.split_to(end).freeze();
            buf.advance(2);
            let text = std::str::from_utf8(&line).map_err(|_| ChunkError::Malformed("chunk header is not ASCII"))?;
            let (hex_size, ext) = text
                .split_once(';')
                .ok_or(ChunkError::Malformed("chunk header without chunk-signature"))?;
            let signature = ext
                .strip_prefix("chunk-signature=")
                .ok_or(ChunkError::Malformed("chunk header without chunk-signature"))?;
            if hex_size.is_empty() || hex_size.len() > 16 || !hex_size.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ChunkError::Malformed("bad chunk size"));
            }
            if !crate::sigv4::is_signature(signature) {
                return Err(ChunkError::Malformed("bad chunk signature"));
            }
            let size = usize::from_str_radix(hex_size, 16).map_err(|_| ChunkError::Malformed("bad chunk size"))?;
            if size > MAX_CHUNK_SIZE {
                return Err(ChunkError::ChunkTooLarge);
            }
            if size > 0 && *small_chunk_seen {
                return Err(ChunkError::ChunkTooSmall);
            }
            let hex = line.slice(..hex_size.len());
            *state = State::Data {
                size,
                hex,
                signature: signature.to_owned(),
            };
            Ok(true)
        }
        State::Data { size, hex, signature } => {
            let size = *size;
            let need = if size == 0 { 0 } else { size + 2 };
            if buf.len() < need {
                return Ok(false);
            }
            let data = buf.split_to(size).freeze();
            if size > 0 {
                if &buf[..2] != b"\r\n" {
                    return Err(ChunkError::Malformed("chunk data not followed by CRLF"));
                }
                buf.advance(2);
            }
            let data_hash = crate::s3::encoding::hex_lower(&Sha256::digest(&data));
            if let Some(inbound) = inbound {
                let expected = inbound.key.chunk_signature_of_hash(previous_in, &data_hash);
                if !ct_eq(expected.as_bytes(), signature.as_bytes()) {
                    return Err(ChunkError::SignatureDoesNotMatch);
                }
            }
            previous_in.clone_from(signature);
            if std::mem::take(pending_crlf) {
                out.push_back(Bytes::from_static(b"\r\n"));
            }
            let resigned = outbound.chunk_signature_of_hash(previous_out, &data_hash);
            let mut head = BytesMut::with_capacity(hex.len() + 83);
            head.extend_from_slice(hex);
            head.extend_from_slice(b";chunk-signature=");
            head.extend_from_slice(resigned.as_bytes());
            head.extend_from_slice(b"\r\n");
            *previous_out = resigned;
            out.push_back(head.freeze());
            *seen += size as u64;
            if *seen > decoded_length {
                return Err(ChunkError::LengthMismatch);
            }
            if size == 0 {
                if *seen != decoded_length {
                    return Err(ChunkError::LengthMismatch);
                }
                *state = if trailer {
                    State::Trailer {
                        lines: Vec::new(),
                        bytes: 0,
                    }
                } else {
                    State::AfterFinal
                };
            } else {
                if size < MIN_CHUNK_SIZE {
                    *small_chunk_seen = true;
                }
                out.push_back(data);
                *pending_crlf = true;
                *state = State::Header;
            }
            Ok(true)
        }
        State::AfterFinal => {
            if buf.len() < 2 {
                return Ok(false);
            }
            if &buf[..2] != b"\r\n" {
                return Err(ChunkError::Malformed("final chunk not followed by CRLF"));
            }
            buf.advance(2);
            out.push_back(Bytes::from_static(b"\r\n"));
            *state = State::Done;
            Ok(true)
        }
        State::Trailer { lines, bytes } => {
            let Some(end) = find_crlf(buf) else {
                return if *bytes + buf.len() > MAX_TRAILER_BYTES {
                    Err(ChunkError::Malformed("trailer too long"))
                } else {
                    Ok(false)
                };
            };
            let line = buf.split_to(end);
            buf.advance(2);
            *bytes += end + 2;
            if *bytes > MAX_TRAILER_BYTES {
                return Err(ChunkError::Malformed("trailer too long"));
            }
            if !line.is_empty() {
                let text = std::str::from_utf8(&line).map_err(|_| ChunkError::Malformed("trailer is not UTF-8"))?;
                let (name, value) = text
                    .split_once(':')
                    .ok_or(ChunkError::Malformed("trailer line without ':'"))?;
                lines.push((
                    name.trim().to_ascii_lowercase(),
                    value.trim().to_owned(),
                    text.to_owned(),
                ));
                return Ok(true);
            }
            // The empty line ends the trailer: check its signature and re-emit it re-signed.
            let canonical = canonical_trailers(
                &lines
                    .iter()
                    .filter(|(n, _, _)| n != "x-amz-trailer-signature")
                    .map(|(n, v, _)| (n.clone(), v.clone()))
                    .collect::<Vec<_>>(),
            );
            if lines.iter().filter(|(n, _, _)| n == "x-amz-trailer-signature").count() > 1 {
                // Found by the `aws_chunked` fuzz target: which one would S3 check?
                return Err(ChunkError::Malformed("more than one x-amz-trailer-signature"));
            }
            let given = lines
                .iter()
                .find(|(n, _, _)| n == "x-amz-trailer-signature")
                .map(|(_, v, _)| v.as_str())
                .ok_or(ChunkError::Malformed("trailer without x-amz-trailer-signature"))?;
            if !crate::sigv4::is_signature(given) {
                return Err(ChunkError::Malformed("bad trailer signature"));
            }
            if let Some(inbound) = inbound {
                let expected = inbound.key.trailer_signature(previous_in, &canonical);
                if !ct_eq(expected.as_bytes(), given.as_bytes()) {
                    return Err(ChunkError::TrailerSignatureDoesNotMatch);
                }
            }
            let resigned = outbound.trailer_signature(previous_out, &canonical);
            // Every line goes out as received but for the signature value, which has the same
            // length: the body keeps the length the client declared in Content-Length (the fuzzer
            // found a normalised `name: value` line shortening it by a byte).
            let mut text = String::new();
            for (n, v, raw) in lines.iter() {
                if n == "x-amz-trailer-signature" {
                    let colon = raw.find(':').map_or(0, |c| c + 1);
                    let at = raw[colon..].find(v.as_str()).map_or(raw.len(), |i| colon + i);
                    text.push_str(&raw[..at]);
                    text.push_str(&resigned);
                    text.push_str(&raw[at + v.len().min(raw.len() - at)..]);
                } else {
                    text.push_str(raw);
                }
                text.push_str("\r\n");
            }
            text.push_str("\r\n");
            out.push_back(Bytes::from(text));
            *state = State::Done;
            Ok(true)
        }
        State::Done => {
            if buf.is_empty() {
                Ok(false)
            } else {
                Err(ChunkError::Malformed("data after the final chunk"))
            }
        }
    }
}

/// The canonical form of trailer lines a trailer signature covers: `name:value\n` per line, sorted.
pub(crate) fn canonical_trailers(lines: &[(String, String)]) -> Vec<u8> {
    let mut sorted: Vec<&(String, String)> = lines.iter().collect();
    sorted.sort();
    let mut canonical = Vec::new();
    for (n, v) in sorted {
        canonical.extend_from_slice(n.as_bytes());
        canonical.push(b':');
        canonical.extend_from_slice(v.as_bytes());
        canonical.push(b'\n');
    }
    canonical
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

impl<B> Body for ResignChunks<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if let Some(bytes) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            let progressed = step(
                this.state,
                this.buf,
                this.out,
                this.inbound.as_ref(),
                this.previous_in,
                this.outbound,
                this.previous_out,
                *this.trailer,
                *this.decoded_length,
                this.seen,
                this.small_chunk_seen,
                this.pending_crlf,
            );
            match progressed {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    let _ = this.failure.set(e.clone());
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
            if *this.inner_done {
                if matches!(this.state, State::Done) {
                    return Poll::Ready(None);
                }
                let _ = this.failure.set(ChunkError::Truncated);
                return Poll::Ready(Some(Err(Box::new(ChunkError::Truncated))));
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.buf.extend_from_slice(&data);
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => *this.inner_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        // Same length in as out.
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
