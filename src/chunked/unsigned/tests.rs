//! The unsigned-trailer reader, table-driven: every body fed whole, byte by byte and in random
//! splits; what it accepts goes out exactly as it came, what it refuses never goes out whole
//! (red-team finding F1: trailer lines S3 would read as headers, forwarded unchecked).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;

use super::*;
use crate::error::S3ErrorCode;

const CRC32: Option<TrailerChecksum> = Some(TrailerChecksum {
    header: "x-amz-checksum-crc32",
    value_len: 8,
});
const SHA256: Option<TrailerChecksum> = Some(TrailerChecksum {
    header: "x-amz-checksum-sha256",
    value_len: 44,
});
const HELLO: &str = "b\r\nhello world\r\n0\r\n";
const CRC_LINE: &str = "x-amz-checksum-crc32:DUoRhQ==\r\n";

/// A deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap()
    }
}

/// The body framed as unsigned chunks of the given sizes, then `trailer` (its lines, each with
/// CRLF) and the empty line.
fn framed(data: &[u8], sizes: &[usize], trailer: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = data;
    for &n in sizes {
        let (piece, after) = rest.split_at(n);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
        rest = after;
    }
    assert!(rest.is_empty());
    out.extend_from_slice(b"0\r\n");
    out.extend_from_slice(trailer.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// Feeds `wire` in the pieces `cuts` gives (their lengths), then ends it: what went out, and the
/// outcome. `sized`: the reader knows the body's length (a `Content-Length`).
fn run(
    wire: &[u8],
    checksum: Option<TrailerChecksum>,
    decoded: u64,
    cuts: &[usize],
    sized: bool,
) -> (Vec<u8>, Result<(), ChunkError>) {
    let mut framing = UnsignedFraming::new(checksum, decoded, sized.then_some(wire.len() as u64));
    let mut out = VecDeque::new();
    let mut sent = Vec::new();
    let mut at = 0;
    let mut result = Ok(());
    for &n in cuts.iter().chain(std::iter::once(&usize::MAX)) {
        let end = at + n.min(wire.len() - at);
        result = framing.feed(Bytes::copy_from_slice(&wire[at..end]), &mut out);
        sent.extend(out.drain(..).flat_map(|b| b.to_vec()));
        // Never anything that was not read, and never ahead of what was read.
        assert!(
            wire[..end].starts_with(&sent),
            "forwarded bytes that differ from the input"
        );
        at = end;
        if result.is_err() || at == wire.len() {
            break;
        }
    }
    if result.is_ok() {
        result = framing.finish().map(|end| sent.extend_from_slice(&end));
    }
    (sent, result)
}

/// Whether `sent` is a complete body (what was forwarded of a refused one never is).
fn forms_a_body(sent: &[u8], checksum: Option<TrailerChecksum>, decoded: u64) -> bool {
    run(sent, checksum, decoded, &[sent.len()], false).1.is_ok()
}

/// Runs a body whole, byte by byte and in random splits; all must agree. Returns the outcome.
fn check_all_splits(
    wire: &[u8],
    checksum: Option<TrailerChecksum>,
    decoded: u64,
    rng: &mut Rng,
) -> Result<(), ChunkError> {
    let whole = run(wire, checksum, decoded, &[wire.len()], true);
    let mut splits = vec![vec![1; wire.len()]];
    for _ in 0..8 {
        let mut cuts = Vec::new();
        let mut left = wire.len();
        while left > 0 {
            let n = 1 + rng.below(left.min(40));
            cuts.push(n);
            left -= n;
        }
        splits.push(cuts);
    }
    for cuts in &splits {
        for sized in [true, false] {
            let split = run(wire, checksum, decoded, cuts, sized);
            assert_eq!(
                split.1.is_ok(),
                whole.1.is_ok(),
                "{:?} split {cuts:?} (sized: {sized}): {:?} vs whole {:?}",
                String::from_utf8_lossy(wire),
                split.1,
                whole.1
            );
            if split.1.is_ok() {
                assert_eq!(split.0, wire, "accepted, but forwarded other bytes");
                continue;
            }
            // The upstream never gets a whole body, so it never completes the request: not one
            // the aws-chunked framing reads as complete, and with a length (the upstream's
            // Content-Length), never that many bytes.
            assert!(
                !forms_a_body(&split.0, checksum, decoded),
                "refused, but forwarded a whole body"
            );
            assert!(
                !sized || split.0.len() < wire.len() || wire.is_empty(),
                "refused, but forwarded all {} bytes of its length: {:?}",
                wire.len(),
                String::from_utf8_lossy(wire)
            );
        }
    }
    if whole.1.is_ok() {
        assert_eq!(whole.0, wire);
    }
    whole.1
}

/// The kind of a refusal, for the tables.
fn kind(e: &ChunkError) -> &'static str {
    match e {
        ChunkError::Malformed(_) => "Malformed",
        ChunkError::MalformedTrailer(_) => "MalformedTrailer",
        ChunkError::LengthMismatch => "LengthMismatch",
        ChunkError::Truncated => "Truncated",
        _ => "other",
    }
}

#[test]
fn accepts_valid_framings_and_forwards_them_unchanged() {
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let sha = format!("x-amz-checksum-sha256:{}=\r\n", "A".repeat(43));
    let cases: Vec<(&str, Vec<u8>, Option<TrailerChecksum>, u64)> = vec![
        (
            "one chunk (PROTOCOL.md §4.2)",
            format!("{HELLO}{CRC_LINE}\r\n").into_bytes(),
            CRC32,
            11,
        ),
        (
            "many chunks",
            framed(&data, &[8192, 8192, 3616], CRC_LINE),
            CRC32,
            20_000,
        ),
        ("chunks of one byte", framed(&data[..5], &[1; 5], CRC_LINE), CRC32, 5),
        (
            "upper-case hex",
            format!("B\r\nhello world\r\n0\r\n{CRC_LINE}\r\n").into_bytes(),
            CRC32,
            11,
        ),
        (
            "leading zeros",
            format!("000b\r\nhello world\r\n000\r\n{CRC_LINE}\r\n").into_bytes(),
            CRC32,
            11,
        ),
        ("empty body", format!("0\r\n{CRC_LINE}\r\n").into_bytes(), CRC32, 0),
        (
            "name in another case",
            format!("{HELLO}X-Amz-Checksum-CRC32:DUoRhQ==\r\n\r\n").into_bytes(),
            CRC32,
            11,
        ),
        (
            "white space around the value",
            format!("{HELLO}x-amz-checksum-crc32: \tDUoRhQ== \r\n\r\n").into_bytes(),
            CRC32,
            11,
        ),
        ("sha256", format!("{HELLO}{sha}\r\n").into_bytes(), SHA256, 11),
        (
            "nothing announced, empty trailer",
            format!("{HELLO}\r\n").into_bytes(),
            None,
            11,
        ),
    ];
    let mut rng = Rng(0x5eed);
    for (name, wire, checksum, decoded) in cases {
        let outcome = check_all_splits(&wire, checksum, decoded, &mut rng);
        assert_eq!(outcome, Ok(()), "{name}");
    }
}

#[test]
fn refuses_each_violation_whatever_the_splits() {
    let long_value = format!("{HELLO}x-amz-checksum-crc32:{}DUoRhQ==\r\n\r\n", " ".repeat(5000));
    let cases: Vec<(&str, String, Option<TrailerChecksum>, u64, &str)> = vec![
        // Framing.
        ("chunk extension", format!("b;ext=1\r\nhello world\r\n0\r\n{CRC_LINE}\r\n"), CRC32, 11, "Malformed"),
        ("chunk signature", format!("b;chunk-signature={}\r\nhello world\r\n0\r\n{CRC_LINE}\r\n", "0".repeat(64)), CRC32, 11, "Malformed"),
        ("extension on the final chunk", format!("b\r\nhello world\r\n0;x\r\n{CRC_LINE}\r\n"), CRC32, 11, "Malformed"),
        ("bad hex", format!("g\r\nhello world\r\n0\r\n{CRC_LINE}\r\n"), CRC32, 11, "Malformed"),
        ("empty size", format!("\r\nhello world\r\n0\r\n{CRC_LINE}\r\n"), CRC32, 11, "Malformed"),
        ("space in the size line", format!("b \r\nhello world\r\n0\r\n{CRC_LINE}\r\n"), CRC32, 11, "Malformed"),
        ("17 hex digits", format!("0000000000000000b\r\nhello world\r\n0\r\n{CRC_LINE}\r\n"), CRC32, 11, "Malformed"),
        ("a huge size", format!("ffffffffffffffff\r\nhello world\r\n0\r\n{CRC_LINE}\r\n"), CRC32, 11, "LengthMismatch"),
        ("bare LF after the size", format!("b\nhello world\r\n0\r\n{CRC_LINE}\r\n"), CRC32, 11, "Malformed"),
        ("data longer than its size", format!("a\r\nhello world\r\n0\r\n{CRC_LINE}\r\n"), CRC32, 11, "Malformed"),
        ("more data than decoded length", format!("{HELLO}{CRC_LINE}\r\n"), CRC32, 10, "LengthMismatch"),
        ("less data than decoded length", format!("{HELLO}{CRC_LINE}\r\n"), CRC32, 12, "LengthMismatch"),
        ("missing final chunk", "b\r\nhello world\r\n".to_owned(), CRC32, 11, "Truncated"),
        ("cut inside the data", "b\r\nhello".to_owned(), CRC32, 11, "Truncated"),
        // Found by the fuzz target: the body's length ends with a chunk's data, which went out
        // whole (with a Content-Length the upstream's body was complete).
        ("cut right after the data", "5\r\nhello".to_owned(), CRC32, 5, "Truncated"),
        ("cut right after the data's CRLF", "5\r\nhello\r\n".to_owned(), CRC32, 5, "Truncated"),
        ("cut inside the final chunk", "5\r\nhello\r\n0\r".to_owned(), CRC32, 5, "Truncated"),
        ("cut in the trailer", format!("{HELLO}{CRC_LINE}"), CRC32, 11, "Truncated"),
        // The trailer.
        ("extra line: ACL", format!("{HELLO}{CRC_LINE}x-amz-acl:public-read\r\n\r\n"), CRC32, 11, "MalformedTrailer"),
        ("extra line first: KMS key", format!("{HELLO}x-amz-server-side-encryption-aws-kms-key-id:arn:aws:kms:us-east-1:999999999999:key/other\r\n{CRC_LINE}\r\n"), CRC32, 11, "MalformedTrailer"),
        ("extra line: object lock", format!("{HELLO}{CRC_LINE}x-amz-object-lock-mode:COMPLIANCE\r\n\r\n"), CRC32, 11, "MalformedTrailer"),
        ("extra line: foo", format!("{HELLO}{CRC_LINE}foo:bar\r\n\r\n"), CRC32, 11, "MalformedTrailer"),
        ("unannounced checksum", format!("{HELLO}x-amz-checksum-sha256:{}=\r\n\r\n", "A".repeat(43)), CRC32, 11, "MalformedTrailer"),
        ("a longer name", format!("{HELLO}x-amz-checksum-crc32c:DUoRhQ==\r\n\r\n"), CRC32, 11, "MalformedTrailer"),
        ("space before the colon", format!("{HELLO}x-amz-checksum-crc32 :DUoRhQ==\r\n\r\n"), CRC32, 11, "MalformedTrailer"),
        ("a line when none was announced", format!("{HELLO}{CRC_LINE}\r\n"), None, 11, "MalformedTrailer"),
        ("repeated checksum", format!("{HELLO}{CRC_LINE}{CRC_LINE}\r\n"), CRC32, 11, "MalformedTrailer"),
        ("announced checksum missing", format!("{HELLO}\r\n"), CRC32, 11, "MalformedTrailer"),
        ("value too short", format!("{HELLO}x-amz-checksum-crc32:DUoRhQ=\r\n\r\n"), CRC32, 11, "MalformedTrailer"),
        ("value too long", format!("{HELLO}x-amz-checksum-crc32:DUoRhQ===\r\n\r\n"), CRC32, 11, "MalformedTrailer"),
        ("empty value", format!("{HELLO}x-amz-checksum-crc32:\r\n\r\n"), CRC32, 11, "MalformedTrailer"),
        ("value not base64", format!("{HELLO}x-amz-checksum-crc32:DU:RhQ==\r\n\r\n"), CRC32, 11, "MalformedTrailer"),
        ("data after padding", format!("{HELLO}x-amz-checksum-crc32:DUoRh=Q=\r\n\r\n"), CRC32, 11, "MalformedTrailer"),
        // A CRC32 is 4 bytes: six characters and exactly two `=`.
        ("all padding", format!("{HELLO}x-amz-checksum-crc32:========\r\n\r\n"), CRC32, 11, "MalformedTrailer"),
        ("no padding", format!("{HELLO}x-amz-checksum-crc32:AAAAAAAA\r\n\r\n"), CRC32, 11, "MalformedTrailer"),
        ("padding too early", format!("{HELLO}x-amz-checksum-crc32:A=======\r\n\r\n"), CRC32, 11, "MalformedTrailer"),
        ("one pad short", format!("{HELLO}x-amz-checksum-crc32:AAAAAAA=\r\n\r\n"), CRC32, 11, "MalformedTrailer"),
        ("SHA-256 padded twice", format!("{HELLO}x-amz-checksum-sha256:{}==\r\n\r\n", "A".repeat(42)), SHA256, 11, "MalformedTrailer"),
        ("a second value", format!("{HELLO}x-amz-checksum-crc32:DUoRhQ== x\r\n\r\n"), CRC32, 11, "MalformedTrailer"),
        ("bare LF in the trailer", format!("{HELLO}x-amz-checksum-crc32:DUoRhQ==\n\r\n"), CRC32, 11, "MalformedTrailer"),
        ("CR without LF at the end", format!("{HELLO}{CRC_LINE}\rx"), CRC32, 11, "MalformedTrailer"),
        ("oversized trailer", long_value, CRC32, 11, "MalformedTrailer"),
        // After the end.
        ("bytes after the end", format!("{HELLO}{CRC_LINE}\r\nx"), CRC32, 11, "Malformed"),
        ("a second body after the end", format!("{HELLO}{CRC_LINE}\r\n{HELLO}{CRC_LINE}\r\n"), CRC32, 11, "Malformed"),
    ];
    let mut rng = Rng(0xf1);
    for (name, wire, checksum, decoded, want) in cases {
        let outcome = check_all_splits(wire.as_bytes(), checksum, decoded, &mut rng);
        assert_eq!(outcome.as_ref().map_err(kind), Err(want), "{name}: {outcome:?}");
    }
}

#[test]
fn forwards_data_as_it_arrives_and_holds_the_trailer_until_checked() {
    let mut framing = UnsignedFraming::new(CRC32, 11, None);
    let mut out = VecDeque::new();
    let mut feed = |framing: &mut UnsignedFraming, bytes: &'static [u8]| {
        framing.feed(Bytes::from_static(bytes), &mut out).unwrap();
        out.drain(..).flat_map(|b| b.to_vec()).collect::<Vec<u8>>()
    };
    // The size line goes once complete, data as it comes.
    assert_eq!(feed(&mut framing, b"b\r"), b"");
    assert_eq!(feed(&mut framing, b"\nhel"), b"b\r\nhel");
    assert_eq!(feed(&mut framing, b"lo world\r"), b"lo world");
    assert_eq!(feed(&mut framing, b"\n"), b"\r\n");
    // The final chunk and the trailer are held, even once complete, until the body ends.
    assert_eq!(feed(&mut framing, b"0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n"), b"");
    assert_eq!(
        &framing.finish().unwrap()[..],
        b"0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n"
    );
}

/// Arbitrary bytes (random, and valid bodies mutated) never panic, and whenever the reader
/// accepts, what goes out is exactly what came in.
#[test]
fn arbitrary_input_never_panics_and_accepted_output_equals_input() {
    let mut rng = Rng(0xdead_beef);
    let alphabet = b"0123456789abcdefABCDEFxg;:= \t\r\n-";
    let seeds: Vec<(Vec<u8>, Option<TrailerChecksum>, u64)> = vec![
        (format!("{HELLO}{CRC_LINE}\r\n").into_bytes(), CRC32, 11),
        (framed(b"0123456789abcdef0123", &[7, 13], CRC_LINE), CRC32, 20),
        (format!("{HELLO}\r\n").into_bytes(), None, 11),
    ];
    let mut accepted = 0;
    for round in 0..3000 {
        let (mut wire, mut checksum, mut decoded) = if round % 3 == 0 {
            let wire = (0..rng.below(60))
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect::<Vec<u8>>();
            (wire, CRC32, 11)
        } else {
            seeds[rng.below(seeds.len())].clone()
        };
        if rng.below(4) == 0 {
            checksum = [CRC32, None, SHA256][rng.below(3)];
            decoded = [0, 11, 20, rng.next() % 64][rng.below(4)];
        }
        for _ in 0..rng.below(3) {
            let at = rng.below(wire.len() + 1);
            match rng.below(4) {
                0 if at < wire.len() => wire[at] = alphabet[rng.below(alphabet.len())],
                1 if at < wire.len() => {
                    wire.remove(at);
                }
                2 => wire.insert(at, alphabet[rng.below(alphabet.len())]),
                _ => wire.truncate(at),
            }
        }
        let mut cuts = Vec::new();
        let mut left = wire.len();
        while left > 0 {
            let n = 1 + rng.below(left.min(9));
            cuts.push(n);
            left -= n;
        }
        let sized = rng.below(2) == 0;
        let (sent, outcome) = run(&wire, checksum, decoded, &cuts, sized);
        if outcome.is_ok() {
            accepted += 1;
            assert_eq!(sent, wire, "accepted {:?}", String::from_utf8_lossy(&wire));
        } else {
            assert!(
                !forms_a_body(&sent, checksum, decoded),
                "refused, but forwarded a whole body"
            );
            assert!(
                !sized || sent.len() < wire.len() || wire.is_empty(),
                "refused, but forwarded all of its length: {:?}",
                String::from_utf8_lossy(&wire)
            );
        }
    }
    // The mutations leave some bodies valid: acceptance is exercised too.
    assert!(accepted > 100, "only {accepted} accepted");
}

/// A body that yields the given pieces, then ends.
struct Pieces(VecDeque<Bytes>);

impl Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// What the body yields up to its end or its first error, and the failure it recorded.
async fn through_body(pieces: &[&'static str], decoded: u64) -> (Vec<u8>, bool, Option<ChunkError>) {
    let failure: FailureSlot = FailureSlot::default();
    let inner = Pieces(pieces.iter().map(|p| Bytes::from_static(p.as_bytes())).collect());
    let mut body = std::pin::pin!(CheckUnsignedChunks::new(inner, CRC32, decoded, failure.clone()));
    let mut sent = Vec::new();
    let mut failed = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => sent.extend_from_slice(&frame.into_data().unwrap()),
            Err(_) => {
                failed = true;
                // Polled again, it still fails: it never ends as if complete.
                assert!(matches!(body.frame().await, Some(Err(_))));
                break;
            }
        }
    }
    (sent, failed, failure.get().cloned())
}

#[tokio::test]
async fn the_body_fails_and_records_why_so_the_upstream_request_aborts() {
    let (sent, failed, recorded) = through_body(&["b\r\nhello world\r\n", "0\r\n", CRC_LINE, "\r\n"], 11).await;
    assert_eq!((failed, recorded), (false, None));
    assert_eq!(sent, format!("{HELLO}{CRC_LINE}\r\n").into_bytes());

    let (sent, failed, recorded) = through_body(
        &[
            "b\r\nhello world\r\n",
            "0\r\n",
            CRC_LINE,
            "x-amz-acl:public-read\r\n",
            "\r\n",
        ],
        11,
    )
    .await;
    assert!(failed);
    // The data went; the final chunk and trailer never did.
    assert_eq!(sent, b"b\r\nhello world\r\n");
    let error = recorded.unwrap().to_gateway_error();
    assert_eq!(error.code(), S3ErrorCode::MalformedTrailerError);
    assert_eq!(error.code().status().as_u16(), 400);

    let (_, failed, recorded) = through_body(&["b\r\nhello world\r\n"], 11).await;
    assert!(failed);
    assert_eq!(recorded, Some(ChunkError::Truncated));
}

/// The body's length is the inner body's when exact (its `Content-Length`, which the upstream
/// request repeats): a body whose length ends with a chunk's data is refused before that chunk
/// goes, so the upstream never gets all of its bytes (found by the `unsigned_chunks` fuzz target).
#[tokio::test]
async fn a_body_whose_length_ends_inside_its_chunks_sends_none_of_the_short_chunk() {
    // One frame each: refused as it is read, nothing of it goes.
    for (wire, want_sent) in [("5\r\nhello", ""), ("5\r\nhello\r\n", ""), ("1\r\nh\r\n5\r\nhello", "")] {
        let failure: FailureSlot = FailureSlot::default();
        let inner = http_body_util::Full::new(Bytes::from_static(wire.as_bytes()));
        assert_eq!(inner.size_hint().exact(), Some(wire.len() as u64));
        let decoded = if wire.starts_with("1\r") { 6 } else { 5 };
        let mut body = std::pin::pin!(CheckUnsignedChunks::new(inner, CRC32, decoded, failure.clone()));
        let mut sent = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => sent.extend_from_slice(&frame.into_data().unwrap()),
                Err(_) => break,
            }
        }
        assert_eq!(String::from_utf8_lossy(&sent), want_sent, "{wire:?}");
        assert_eq!(failure.get(), Some(&ChunkError::Truncated), "{wire:?}");
    }
}
