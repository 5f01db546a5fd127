//! A whole aws-chunked body held in memory, decoded: for bodies apgate reads before it forwards
//! them (DeleteObjects, RestoreObject), which must be checked as the payload they carry, never as
//! their framing (issue 15: a chunk boundary inside `-->` hid keys from a check that read the
//! framed bytes as XML).
//!
//! Both framings S3 takes: signed chunks (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`, every
//! chunk and the trailer signature verified against the caller's key when there is one) and unsigned
//! ones with a checksum trailer (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`). The body must end with its
//! final zero-length chunk (and trailer) and nothing after it, and its chunks must add up to the
//! declared decoded length.

use bytes::{Bytes, BytesMut};

use super::{canonical_trailers, ChunkError, Inbound, MAX_CHUNK_SIZE, MAX_TRAILER_BYTES, MIN_CHUNK_SIZE};
use crate::secret::ct_eq;

/// How the chunks of a body are framed.
#[derive(Debug, Clone, Copy)]
pub enum Framing<'a> {
    /// `STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`: `None` for callers trusted without a
    /// signature, whose chunk signatures are not checked.
    Signed(Option<&'a Inbound>),
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER`.
    Unsigned,
}

/// A decoded body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub payload: Bytes,
    /// The trailer's lines (lower-case name, trimmed value), without `x-amz-trailer-signature`.
    pub trailers: Vec<(String, String)>,
}

/// Decodes a complete aws-chunked body.
pub fn decode_all(
    body: &[u8],
    framing: Framing<'_>,
    trailer: bool,
    decoded_length: u64,
) -> Result<Decoded, ChunkError> {
    let mut rest = body;
    let mut payload = BytesMut::with_capacity(usize::try_from(decoded_length).unwrap_or(0).min(body.len()));
    let mut previous = match framing {
        Framing::Signed(Some(inbound)) => inbound.seed.clone(),
        _ => String::new(),
    };
    let mut small_chunk_seen = false;
    loop {
        let line = take_line(&mut rest, super::MAX_HEADER_LINE)?;
        let line = std::str::from_utf8(line).map_err(|_| ChunkError::Malformed("chunk header is not ASCII"))?;
        let (hex, signature) = match framing {
            Framing::Signed(_) => {
                let (hex, ext) = line
                    .split_once(';')
                    .ok_or(ChunkError::Malformed("chunk header without chunk-signature"))?;
                let sig = ext
                    .strip_prefix("chunk-signature=")
                    .filter(|s| crate::sigv4::is_signature(s))
                    .ok_or(ChunkError::Malformed("bad chunk signature"))?;
                (hex, Some(sig))
            }
            Framing::Unsigned => (line, None),
        };
        if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ChunkError::Malformed("bad chunk size"));
        }
        let size = usize::from_str_radix(hex, 16).map_err(|_| ChunkError::Malformed("bad chunk size"))?;
        if size > MAX_CHUNK_SIZE {
            return Err(ChunkError::ChunkTooLarge);
        }
        if size > 0 && small_chunk_seen && signature.is_some() {
            return Err(ChunkError::ChunkTooSmall);
        }
        if rest.len() < size {
            return Err(ChunkError::Truncated);
        }
        let (data, after) = rest.split_at(size);
        rest = after;
        if let (Framing::Signed(Some(inbound)), Some(given)) = (framing, signature) {
            let expected = inbound.key.chunk_signature(&previous, data);
            if !ct_eq(expected.as_bytes(), given.as_bytes()) {
                return Err(ChunkError::SignatureDoesNotMatch);
            }
        }
        if let Some(given) = signature {
            previous = given.to_owned();
        }
        if size == 0 {
            break;
        }
        if size < MIN_CHUNK_SIZE {
            small_chunk_seen = true;
        }
        payload.extend_from_slice(data);
        if payload.len() as u64 > decoded_length {
            return Err(ChunkError::LengthMismatch);
        }
        if take_line(&mut rest, 0)? != b"" {
            return Err(ChunkError::Malformed("chunk data not followed by CRLF"));
        }
    }
    if payload.len() as u64 != decoded_length {
        return Err(ChunkError::LengthMismatch);
    }
    let mut trailers = Vec::new();
    let mut trailer_signature = None;
    let mut trailer_bytes = 0;
    loop {
        let line = take_line(&mut rest, MAX_TRAILER_BYTES)?;
        trailer_bytes += line.len() + 2;
        if trailer_bytes > MAX_TRAILER_BYTES {
            return Err(ChunkError::Malformed("trailer too long"));
        }
        if line.is_empty() {
            break;
        }
        if !trailer {
            return Err(ChunkError::Malformed("a trailer the request did not announce"));
        }
        let text = std::str::from_utf8(line).map_err(|_| ChunkError::Malformed("trailer is not UTF-8"))?;
        let (name, value) = text
            .split_once(':')
            .ok_or(ChunkError::Malformed("trailer line without ':'"))?;
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_owned());
        if name == "x-amz-trailer-signature" {
            if trailer_signature.replace(value).is_some() {
                return Err(ChunkError::Malformed("more than one x-amz-trailer-signature"));
            }
        } else {
            if trailers.iter().any(|(n, _)| *n == name) {
                return Err(ChunkError::Malformed("a trailer line given twice"));
            }
            trailers.push((name, value));
        }
    }
    if !rest.is_empty() {
        return Err(ChunkError::Malformed("data after the final chunk"));
    }
    if let Framing::Signed(inbound) = framing {
        if trailer {
            let given = trailer_signature
                .filter(|s| crate::sigv4::is_signature(s))
                .ok_or(ChunkError::Malformed("trailer without a valid x-amz-trailer-signature"))?;
            if let Some(inbound) = inbound {
                let expected = inbound.key.trailer_signature(&previous, &canonical_trailers(&trailers));
                if !ct_eq(expected.as_bytes(), given.as_bytes()) {
                    return Err(ChunkError::TrailerSignatureDoesNotMatch);
                }
            }
        }
    } else if trailer_signature.is_some() {
        return Err(ChunkError::Malformed("a trailer signature on an unsigned body"));
    }
    Ok(Decoded {
        payload: payload.freeze(),
        trailers,
    })
}

/// The next line (without its CRLF); `max` bounds its length (0: it must be empty).
fn take_line<'a>(rest: &mut &'a [u8], max: usize) -> Result<&'a [u8], ChunkError> {
    let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
        return Err(if rest.len() > max {
            ChunkError::Malformed("line too long")
        } else {
            ChunkError::Truncated
        });
    };
    if end > max {
        return Err(ChunkError::Malformed("line too long"));
    }
    let line = &rest[..end];
    *rest = &rest[end + 2..];
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sigv4::{signing_key, ChunkKey};

    fn inbound() -> Inbound {
        Inbound {
            key: ChunkKey::new(
                signing_key(&crate::secret::Secret::new("s3cr3t"), "20260101", "us-east-1", "s3"),
                "20260101T000000Z",
                "20260101/us-east-1/s3/aws4_request",
            ),
            seed: "0".repeat(64),
        }
    }

    /// Frames `parts` as signed chunks (with a final empty chunk) and an optional trailer.
    fn signed(inbound: &Inbound, parts: &[&[u8]], trailer: Option<(&str, &str)>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = inbound.seed.clone();
        for part in parts.iter().copied().chain([&b""[..]]) {
            let sig = inbound.key.chunk_signature(&prev, part);
            out.extend_from_slice(format!("{:x};chunk-signature={sig}\r\n", part.len()).as_bytes());
            out.extend_from_slice(part);
            if !part.is_empty() {
                out.extend_from_slice(b"\r\n");
            }
            prev = sig;
        }
        if let Some((n, v)) = trailer {
            let lines = vec![(n.to_owned(), v.to_owned())];
            let sig = inbound.key.trailer_signature(&prev, &canonical_trailers(&lines));
            out.extend_from_slice(format!("{n}:{v}\r\nx-amz-trailer-signature:{sig}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    #[test]
    fn decodes_signed_and_unsigned_bodies() {
        let i = inbound();
        let xml: &[u8] = b"<Delete><Object><Key>Bob/a</Key></Object></Delete>";
        let body = signed(&i, &[xml], None);
        let d = decode_all(&body, Framing::Signed(Some(&i)), false, xml.len() as u64).unwrap();
        assert_eq!(&d.payload[..], xml);
        let body = signed(&i, &[xml], Some(("x-amz-checksum-crc32", "AAAAAA==")));
        let d = decode_all(&body, Framing::Signed(Some(&i)), true, xml.len() as u64).unwrap();
        assert_eq!(d.trailers, [("x-amz-checksum-crc32".to_owned(), "AAAAAA==".to_owned())]);
        let unsigned = [b"a\r\n0123456789\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n".as_slice()].concat();
        let d = decode_all(&unsigned, Framing::Unsigned, true, 10).unwrap();
        assert_eq!(&d.payload[..], b"0123456789");
    }

    #[test]
    fn refuses_bad_signatures_truncation_and_leftovers() {
        let i = inbound();
        let xml: &[u8] = b"<Delete><Object><Key>Bob/a</Key></Object></Delete>";
        let n = xml.len() as u64;
        let good = signed(&i, &[xml], None);
        let mut tampered = good.clone();
        let at = good.windows(3).position(|w| w == b"Bob").unwrap();
        tampered[at] = b'R';
        assert_eq!(
            decode_all(&tampered, Framing::Signed(Some(&i)), false, n),
            Err(ChunkError::SignatureDoesNotMatch)
        );
        // Without its final zero-length chunk.
        let cut = good.windows(3).rposition(|w| w == b"\r\n0").unwrap() + 2;
        assert_eq!(
            decode_all(&good[..cut], Framing::Signed(Some(&i)), false, n),
            Err(ChunkError::Truncated)
        );
        let mut extra = good.clone();
        extra.extend_from_slice(b"<x/>");
        assert!(decode_all(&extra, Framing::Signed(Some(&i)), false, n).is_err());
        assert_eq!(
            decode_all(&good, Framing::Signed(Some(&i)), false, n + 1),
            Err(ChunkError::LengthMismatch)
        );
        let unsigned_sig = b"3\r\nabc\r\n0\r\nx-amz-trailer-signature:0000\r\n\r\n";
        assert!(decode_all(unsigned_sig, Framing::Unsigned, true, 3).is_err());
        let unannounced = b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n";
        assert!(decode_all(unannounced, Framing::Unsigned, false, 3).is_err());
    }
}
