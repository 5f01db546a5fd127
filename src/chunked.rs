//! Signed aws-chunked bodies (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`), verified and
//! re-signed as they stream (<https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming.html>,
//! PROTOCOL.md §4.2).
//!
//! Each chunk is `<hex size>;chunk-signature=<64 hex>\r\n<data>\r\n`; the body ends with a
//! zero-size chunk, then `\r\n` or, with a trailer, trailer lines, `x-amz-trailer-signature:<sig>`
//! and `\r\n`. A chunk's signature covers its data and chains from the previous signature, starting
//! at the seed (the `Authorization` signature).
//!
//! apgate checks every chunk of the caller's against the caller's key as its data streams through
//! (hashing it, never holding it), and sends the data upstream in chunks of its own: [`OUT_CHUNK`]
//! bytes each (the last one shorter), each signed with apgate's chain from the seed it put on the
//! upstream request's head, then the final chunk and the trailer (its one checksum line written
//! `name:value`). The upstream body's length therefore depends only on the decoded length and the
//! trailer's checksum ([`outbound_length`]), whatever chunk sizes the caller chose, and apgate holds
//! at most one outbound chunk of a request's data, however large the caller's chunks are.
//!
//! **Invariant:** the upstream request never completes unless every chunk and the trailer of the
//! caller's verified: data of a chunk may go out before its signature is checked (at its end), but
//! apgate's final chunk goes out only after the caller's final chunk verified, and a failure fails
//! the body, which aborts the upstream request short of its `Content-Length`, so no object (or
//! part) is created.

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

/// Chunks larger than this are refused in bodies apgate reads whole (DeleteObjects, RestoreObject:
/// `decode`); re-signed bodies stream whatever the chunk size.
pub const MAX_CHUNK_SIZE: usize = 16 << 20;
/// Only the last data chunk may be smaller than this (S3's rule).
pub const MIN_CHUNK_SIZE: usize = 8 << 10;
const MAX_HEADER_LINE: usize = 4096;
const MAX_TRAILER_BYTES: usize = 16 << 10;

pub mod decode;
pub mod unsigned;

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
    /// A trailer line S3 would read that is not the one checksum `x-amz-trailer` announced, or
    /// that checksum malformed (unsigned trailers, `unsigned`).
    #[error("malformed trailer: {0}")]
    MalformedTrailer(&'static str),
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
            Self::MalformedTrailer(_) => S3ErrorCode::MalformedTrailerError,
        };
        let message = match self {
            // S3's sentence for the code, and what was wrong.
            Self::MalformedTrailer(reason) => format!(
                "The request contained trailing data that was not well-formed or did not conform to our published schema: {reason}."
            ),
            _ => format!("{self}."),
        };
        GatewayError::client(code, message)
    }
}

/// Where the body reports why it failed, for the request handler to answer with.
pub type FailureSlot = Arc<OnceLock<ChunkError>>;

/// The size of the chunks apgate sends upstream (the last one may be shorter; S3 wants at least
/// 8 KiB of every chunk but the last). SDKs chunk by 64 KiB, so a caller's chunk is usually one of
/// apgate's and is hashed once.
pub const OUT_CHUNK: usize = 64 << 10;

/// How much of a frame is copied at a time to find a chunk header, CRLF or trailer line.
const FEED: usize = 512;

/// The trailer's checksum line, as apgate sends it: the header the request announced in
/// `x-amz-trailer`, and the length its value must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrailerChecksum {
    pub header: &'static str,
    pub value_len: usize,
}

/// How a signed aws-chunked body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `0;chunk-signature=...\r\n\r\n`.
    Plain,
    /// A trailer: the checksum line announced in `x-amz-trailer` (if any), then the signature.
    Trailer(Option<TrailerChecksum>),
}

/// The length of a chunk apgate sends with `n` bytes of data (`n` = 0 for the final chunk, whose
/// data and CRLF are absent).
fn out_chunk_len(n: u64) -> u64 {
    let hex = if n == 0 { 1 } else { u64::from(n.ilog(16)) + 1 };
    let head = hex + ";chunk-signature=".len() as u64 + 64 + 2;
    if n == 0 {
        head
    } else {
        head + n + 2
    }
}

/// The length of the body apgate sends upstream for `decoded` bytes of data (its
/// `Content-Length`).
pub fn outbound_length(decoded: u64, ending: Ending) -> u64 {
    let full = decoded / OUT_CHUNK as u64;
    let rest = decoded % OUT_CHUNK as u64;
    let mut len = full * out_chunk_len(OUT_CHUNK as u64) + if rest > 0 { out_chunk_len(rest) } else { 0 };
    len += out_chunk_len(0);
    len += match ending {
        Ending::Plain => 2,
        Ending::Trailer(checksum) => {
            let line = checksum.map_or(0, |c| c.header.len() as u64 + 1 + c.value_len as u64 + 2);
            line + "x-amz-trailer-signature:".len() as u64 + 64 + 2 + 2
        }
    };
    len
}

#[derive(Debug)]
enum State {
    Header,
    /// Inside a chunk's data: what is left of it, its signature, and its hash so far.
    Data {
        left: usize,
        signature: String,
        hasher: Sha256,
        /// The chunk is exactly the outbound chunk being filled: its hash is that chunk's too.
        aligned: bool,
        /// The zero-size final chunk.
        last: bool,
    },
    /// After a chunk's data: its CRLF (but for the final chunk), then its signature is checked.
    DataEnd {
        hash: [u8; 32],
        signature: String,
        aligned: bool,
        last: bool,
    },
    AfterFinal,
    /// Trailer lines so far: (lower-case name, trimmed value).
    Trailer {
        lines: Vec<(String, String)>,
        bytes: usize,
    },
    Done,
}

pin_project_lite::pin_project! {
    /// Verifies (when `inbound` is given) and re-signs a signed aws-chunked body as it streams,
    /// in chunks of [`OUT_CHUNK`] bytes.
    pub struct ResignChunks<B> {
        #[pin]
        inner: B,
        // The caller's frame being read: chunk data is taken from it without a copy.
        input: Bytes,
        // Bytes of a chunk header, CRLF or trailer line that may span frames (fed from `input` a
        // little at a time, so it stays small whatever the frames' size).
        buf: BytesMut,
        state: State,
        inbound: Option<Inbound>,
        previous_in: String,
        outbound: ChunkKey,
        previous_out: String,
        ending: Ending,
        decoded_length: u64,
        seen: u64,
        small_chunk_seen: bool,
        // The data of the outbound chunk being filled (at most OUT_CHUNK bytes).
        piece: BytesMut,
        inner_done: bool,
        out: VecDeque<Bytes>,
        closing: Option<Bytes>,
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
    /// signature apgate put on the upstream request's head, whose `Content-Length` must be
    /// [`outbound_length`]`(decoded_length, ending)`.
    pub fn new(
        inner: B,
        inbound: Option<Inbound>,
        outbound: ChunkKey,
        outbound_seed: String,
        ending: Ending,
        decoded_length: u64,
        failure: FailureSlot,
    ) -> Self {
        let previous_in = inbound.as_ref().map(|i| i.seed.clone()).unwrap_or_default();
        Self {
            inner,
            input: Bytes::new(),
            buf: BytesMut::new(),
            state: State::Header,
            inbound,
            previous_in,
            outbound,
            previous_out: outbound_seed,
            ending,
            decoded_length,
            seen: 0,
            small_chunk_seen: false,
            piece: BytesMut::new(),
            inner_done: false,
            out: VecDeque::new(),
            closing: None,
            failure,
        }
    }
}

/// apgate's side of the body: its chunks, signed in its chain.
struct Emitter<'a> {
    out: &'a mut VecDeque<Bytes>,
    key: &'a ChunkKey,
    previous: &'a mut String,
    /// The body's last bytes (after the final chunk), held until the caller's body has ended with
    /// nothing after them: the upstream body is not complete before.
    closing: &'a mut Option<Bytes>,
}

impl Emitter<'_> {
    /// Sends one chunk (`data` empty: the final chunk), its hash given when already known.
    fn chunk(&mut self, data: Bytes, hash: Option<[u8; 32]>) {
        let hash = hash.unwrap_or_else(|| Sha256::digest(&data).into());
        let signature = self
            .key
            .chunk_signature_of_hash(self.previous, &crate::s3::encoding::hex_lower(&hash));
        let mut head = BytesMut::with_capacity(8 + 83);
        head.extend_from_slice(format!("{:x}", data.len()).as_bytes());
        head.extend_from_slice(b";chunk-signature=");
        head.extend_from_slice(signature.as_bytes());
        head.extend_from_slice(b"\r\n");
        *self.previous = signature;
        self.out.push_back(head.freeze());
        if !data.is_empty() {
            self.out.push_back(data);
            self.out.push_back(Bytes::from_static(b"\r\n"));
        }
    }
}

/// One step of the parser over the buffered input; `Ok(false)` means more input is needed.
#[allow(clippy::too_many_arguments)]
fn step(
    state: &mut State,
    buf: &mut BytesMut,
    input: &mut Bytes,
    emit: &mut Emitter<'_>,
    piece: &mut BytesMut,
    inbound: Option<&Inbound>,
    previous_in: &mut String,
    ending: Ending,
    decoded_length: u64,
    seen: &mut u64,
    small_chunk_seen: &mut bool,
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
            let size = u64::from_str_radix(hex_size, 16).map_err(|_| ChunkError::Malformed("bad chunk size"))?;
            // No limit of its own on a chunk's size: its data streams through (the decoded length,
            // at most 5 GiB, bounds it).
            if size > 0 && *small_chunk_seen {
                return Err(ChunkError::ChunkTooSmall);
            }
            if *seen + size > decoded_length || (size == 0 && *seen != decoded_length) {
                return Err(ChunkError::LengthMismatch);
            }
            let size = usize::try_from(size).map_err(|_| ChunkError::ChunkTooLarge)?;
            if size > 0 && size < MIN_CHUNK_SIZE {
                *small_chunk_seen = true;
            }
            // The caller's chunk is apgate's next chunk exactly: one hash serves both.
            let aligned = piece.is_empty()
                && (size == OUT_CHUNK || (size > 0 && size < OUT_CHUNK && *seen + size as u64 == decoded_length));
            *seen += size as u64;
            *state = State::Data {
                left: size,
                signature: signature.to_owned(),
                hasher: Sha256::new(),
                aligned,
                last: size == 0,
            };
            Ok(true)
        }
        State::Data {
            left,
            signature,
            hasher,
            aligned,
            last,
        } => {
            if *left > 0 {
                // At most what completes apgate's chunk being filled: one outbound chunk per step,
                // so what waits to be sent is one chunk, not a whole frame's worth.
                let most = (*left).min(OUT_CHUNK - piece.len());
                let data = if !buf.is_empty() {
                    buf.split_to(most.min(buf.len())).freeze()
                } else if !input.is_empty() {
                    input.split_to(most.min(input.len()))
                } else {
                    return Ok(false);
                };
                let take = data.len();
                hasher.update(&data);
                *left -= take;
                if piece.capacity() == 0 {
                    // Room for the whole outbound chunk at once (or what is left of the body).
                    let rest = decoded_length - (*seen - *left as u64) + take as u64;
                    piece.reserve(usize::try_from(rest).unwrap_or(OUT_CHUNK).min(OUT_CHUNK));
                }
                piece.extend_from_slice(&data);
                if piece.len() == OUT_CHUNK && !*aligned {
                    emit.chunk(piece.split().freeze(), None);
                }
                return Ok(true);
            }
            let hash: [u8; 32] = std::mem::take(hasher).finalize().into();
            let signature = std::mem::take(signature);
            *state = State::DataEnd {
                hash,
                signature,
                aligned: *aligned,
                last: *last,
            };
            Ok(true)
        }
        State::DataEnd {
            hash,
            signature,
            aligned,
            last,
        } => {
            if !*last {
                if buf.len() < 2 {
                    return Ok(false);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(ChunkError::Malformed("chunk data not followed by CRLF"));
                }
                buf.advance(2);
            }
            if let Some(inbound) = inbound {
                let expected = inbound
                    .key
                    .chunk_signature_of_hash(previous_in, &crate::s3::encoding::hex_lower(&*hash));
                if !ct_eq(expected.as_bytes(), signature.as_bytes()) {
                    return Err(ChunkError::SignatureDoesNotMatch);
                }
            }
            previous_in.clone_from(signature);
            if *aligned {
                emit.chunk(piece.split().freeze(), Some(*hash));
            }
            if !*last {
                *state = State::Header;
                return Ok(true);
            }
            // The caller's final chunk verified: the rest of apgate's data, and its final chunk.
            if !piece.is_empty() {
                emit.chunk(piece.split().freeze(), None);
            }
            emit.chunk(Bytes::new(), Some(*hash));
            *state = match ending {
                Ending::Plain => State::AfterFinal,
                Ending::Trailer(_) => State::Trailer {
                    lines: Vec::new(),
                    bytes: 0,
                },
            };
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
            *emit.closing = Some(Bytes::from_static(b"\r\n"));
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
                lines.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
                return Ok(true);
            }
            // The empty line ends the trailer: check it, then send it as apgate writes it.
            let Ending::Trailer(announced) = ending else {
                return Err(ChunkError::Malformed("a trailer on a body without one"));
            };
            let (signatures, checksums): (Vec<_>, Vec<_>) =
                lines.iter().partition(|(n, _)| n == "x-amz-trailer-signature");
            if signatures.len() != 1 {
                // Found by the `aws_chunked` fuzz target: which one would S3 check?
                return Err(ChunkError::Malformed(
                    "a trailer needs exactly one x-amz-trailer-signature",
                ));
            }
            let given = signatures[0].1.as_str();
            if !crate::sigv4::is_signature(given) {
                return Err(ChunkError::Malformed("bad trailer signature"));
            }
            // The one line x-amz-trailer announced, with a value of its checksum's length.
            let checksum_line = match (announced, checksums.as_slice()) {
                (None, []) => None,
                (Some(c), [(name, value)]) if name == c.header && value.len() == c.value_len => {
                    Some((c.header, value.clone()))
                }
                _ => return Err(ChunkError::Malformed("trailer lines other than the announced checksum")),
            };
            let canonical = canonical_trailers(
                &checksum_line
                    .iter()
                    .map(|(n, v)| ((*n).to_owned(), v.clone()))
                    .collect::<Vec<_>>(),
            );
            if let Some(inbound) = inbound {
                let expected = inbound.key.trailer_signature(previous_in, &canonical);
                if !ct_eq(expected.as_bytes(), given.as_bytes()) {
                    return Err(ChunkError::TrailerSignatureDoesNotMatch);
                }
            }
            let resigned = emit.key.trailer_signature(emit.previous, &canonical);
            let mut text = String::new();
            if let Some((name, value)) = &checksum_line {
                text.push_str(&format!("{name}:{value}\r\n"));
            }
            text.push_str(&format!("x-amz-trailer-signature:{resigned}\r\n\r\n"));
            *emit.closing = Some(Bytes::from(text));
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
            let mut emit = Emitter {
                out: this.out,
                key: this.outbound,
                previous: this.previous_out,
                closing: this.closing,
            };
            let progressed = step(
                this.state,
                this.buf,
                this.input,
                &mut emit,
                this.piece,
                this.inbound.as_ref(),
                this.previous_in,
                *this.ending,
                *this.decoded_length,
                this.seen,
                this.small_chunk_seen,
            );
            match progressed {
                Ok(true) => continue,
                Ok(false) if !this.input.is_empty() => {
                    // A line or CRLF may span what is left of the frame and the next one.
                    let n = this.input.len().min(FEED);
                    this.buf.extend_from_slice(&this.input.split_to(n));
                    continue;
                }
                Ok(false) => {
                    // Nothing of the frame is left: let go of it (an empty slice still holds it).
                    *this.input = Bytes::new();
                    if this.buf.is_empty() && this.buf.capacity() > FEED {
                        *this.buf = BytesMut::new();
                    }
                }
                Err(e) => {
                    let _ = this.failure.set(e.clone());
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
            if *this.inner_done {
                if matches!(this.state, State::Done) {
                    // The caller's body ended right after its final chunk: now apgate's may end.
                    return Poll::Ready(this.closing.take().map(|b| Ok(Frame::data(b))));
                }
                let _ = this.failure.set(ChunkError::Truncated);
                return Poll::Ready(Some(Err(Box::new(ChunkError::Truncated))));
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        *this.input = data;
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => *this.inner_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(outbound_length(self.decoded_length, self.ending))
    }
}

#[cfg(test)]
mod tests;
