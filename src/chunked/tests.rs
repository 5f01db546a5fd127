use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use http_body_util::BodyExt;

use super::*;
use crate::identity::sigv4::signing_key;
use crate::secret::Secret;

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

fn example_key() -> ChunkKey {
    ChunkKey::new(
        signing_key(&Secret::new(SECRET), "20130524", "us-east-1", "s3"),
        "20130524T000000Z",
        "20130524/us-east-1/s3/aws4_request",
    )
}

/// <https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming.html>: 65 KiB of 'a' in
/// 64 KiB chunks (PROTOCOL.md §4.6).
#[test]
fn example_put_object_multiple_chunks_signatures() {
    let key = example_key();
    let seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
    let first = key.chunk_signature(seed, &[b'a'; 65536]);
    assert_eq!(
        first,
        "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
    );
    let second = key.chunk_signature(&first, &[b'a'; 1024]);
    assert_eq!(
        second,
        "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
    );
    let last = key.chunk_signature(&second, b"");
    assert_eq!(last, "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9");
}

/// Independent check against aws-sigv4's `sign_chunk` and `sign_trailer`.
#[test]
fn agrees_with_aws_sigv4_chunk_and_trailer_signing() {
    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::SigningSettings;
    use aws_smithy_runtime_api::client::identity::Identity;

    let identity: Identity = Credentials::new("AKIDEXAMPLE", SECRET, None, None, "t").into();
    let time = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("eu-west-1")
        .name("s3")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap();
    let amz = crate::s3::amzdate::format(time);
    let ours = ChunkKey::new(
        signing_key(&Secret::new(SECRET), &amz[..8], "eu-west-1", "s3"),
        amz.clone(),
        format!("{}/eu-west-1/s3/aws4_request", &amz[..8]),
    );
    let mut prev = "0".repeat(64);
    for data in [&b"hello world"[..], &[7u8; 70000][..], b""] {
        let theirs = aws_sigv4::sign::v4::sign_chunk(&Bytes::copy_from_slice(data), &prev, &params).unwrap();
        let mine = ours.chunk_signature(&prev, data);
        assert_eq!(mine, theirs.signature());
        prev = mine;
    }
    let mut trailers = aws_smithy_runtime_api::http::Headers::new();
    trailers.insert("x-amz-checksum-crc32c", "sOO8/Q==");
    let theirs = aws_sigv4::sign::v4::sign_trailer(&trailers, &prev, &params).unwrap();
    assert_eq!(
        ours.trailer_signature(&prev, b"x-amz-checksum-crc32c:sOO8/Q==\n"),
        theirs.signature()
    );
}

fn key(secret: &str) -> ChunkKey {
    ChunkKey::new(
        signing_key(&Secret::new(secret), "20261127", "us-east-1", "s3"),
        "20261127T120000Z",
        "20261127/us-east-1/s3/aws4_request",
    )
}

/// Encodes `data` as a signed aws-chunked body with `key`, starting at `seed`.
fn encode(key: &ChunkKey, seed: &str, data: &[u8], chunk: usize, trailer: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut prev = seed.to_owned();
    for piece in data.chunks(chunk).chain(std::iter::once(&[][..])) {
        let sig = key.chunk_signature(&prev, piece);
        out.extend_from_slice(format!("{:x};chunk-signature={sig}\r\n", piece.len()).as_bytes());
        if !piece.is_empty() {
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        prev = sig;
    }
    match trailer {
        None => out.extend_from_slice(b"\r\n"),
        // A trailer with no checksum line: only its signature (over nothing).
        Some("") => {
            let sig = key.trailer_signature(&prev, b"");
            out.extend_from_slice(format!("x-amz-trailer-signature:{sig}\r\n\r\n").as_bytes());
        }
        Some(t) => {
            let sig = key.trailer_signature(&prev, format!("{t}\n").as_bytes());
            out.extend_from_slice(format!("{t}\r\nx-amz-trailer-signature:{sig}\r\n\r\n").as_bytes());
        }
    }
    out
}

const SEED_IN: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const SEED_OUT: &str = "2222222222222222222222222222222222222222222222222222222222222222";

/// A body that yields the given pieces, then ends.
struct Pieces(std::collections::VecDeque<Bytes>);

impl Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// A trailer with a CRC32 (what `encode` writes with `CRC32`).
const CRC32: Ending = Ending::Trailer(Some(TrailerChecksum {
    header: "x-amz-checksum-crc32",
    value_len: 8,
}));
const CRC32_LINE: &str = "x-amz-checksum-crc32:AAAAAA==";

/// Runs a body through the re-signer in pieces of `piece` bytes.
async fn resign(
    wire: Vec<u8>,
    decoded: u64,
    ending: Ending,
    verify: bool,
    piece: usize,
) -> (Vec<u8>, Result<(), ChunkError>) {
    let inner = Pieces(wire.chunks(piece).map(Bytes::copy_from_slice).collect());
    let failure: FailureSlot = Arc::default();
    let inbound = verify.then(|| Inbound {
        key: key("client-secret-0123456789"),
        seed: SEED_IN.to_owned(),
    });
    let body = ResignChunks::new(
        inner,
        inbound,
        key("apgate-secret-0123456789"),
        SEED_OUT.to_owned(),
        ending,
        decoded,
        failure.clone(),
    );
    assert_eq!(body.size_hint().exact(), Some(outbound_length(decoded, ending)));
    let mut body = std::pin::pin!(body);
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => out.extend_from_slice(&f.into_data().unwrap()),
            Err(_) => return (out, Err(failure.get().cloned().expect("failure recorded"))),
        }
    }
    (out, Ok(()))
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn resigns_valid_bodies_in_apgates_own_chunks_whatever_the_callers_were() {
    let client = key("client-secret-0123456789");
    let apgate = key("apgate-secret-0123456789");
    for (n, chunk, ending, piece) in [
        (200_000, 65536, Ending::Plain, 7),
        (200_000, 65536, CRC32, 65536 + 90),
        (9000, 8192, CRC32, 1),
        (0, 65536, Ending::Plain, 3),
        (200_000, 8192, Ending::Plain, 5000),
        (300_000, 1 << 20, CRC32, 70_000),
        (65536, 65536, Ending::Plain, 100),
        (3 * 65536, 100_000, Ending::Trailer(None), 4096),
    ] {
        let body = data(n);
        let t = (ending != Ending::Plain).then_some(if ending == CRC32 { CRC32_LINE } else { "" });
        let wire = encode(&client, SEED_IN, &body, chunk, t);
        let (out, result) = resign(wire.clone(), n as u64, ending, true, piece).await;
        result.unwrap();
        // What apgate sends is exactly what apgate's key produces in 64 KiB chunks: the same data,
        // its own signatures, and the length it announced.
        assert_eq!(
            out,
            encode(&apgate, SEED_OUT, &body, OUT_CHUNK, t),
            "n={n} chunk={chunk} ending={ending:?}"
        );
        assert_eq!(
            out.len() as u64,
            outbound_length(n as u64, ending),
            "n={n} chunk={chunk}"
        );
    }
}

#[test]
fn the_outbound_length_is_what_the_chunks_add_up_to() {
    let apgate = key("apgate-secret-0123456789");
    for n in [0usize, 1, 8191, 65535, 65536, 65537, 131_072, 1_000_000] {
        for (ending, t) in [
            (Ending::Plain, None),
            (CRC32, Some(CRC32_LINE)),
            (Ending::Trailer(None), Some("")),
        ] {
            let encoded = encode(&apgate, SEED_OUT, &data(n), OUT_CHUNK, t);
            assert_eq!(
                outbound_length(n as u64, ending),
                encoded.len() as u64,
                "n={n} {ending:?}"
            );
        }
    }
}

#[tokio::test]
async fn trailer_lines_are_sent_as_apgate_writes_them() {
    // The caller's spelling of its checksum line is its own; apgate sends `name:value`, the length
    // it announced. Anything but the announced checksum, of its length, is refused.
    let client = key("client-secret-0123456789");
    let apgate = key("apgate-secret-0123456789");
    let body = data(100);
    let spelled = |key: &ChunkKey, seed: &str, line: &str, canonical: &str| {
        let mut wire = encode(key, seed, &body, 65536, None);
        wire.truncate(wire.len() - 2); // the final CRLF of a body without trailer
        let last = encode(key, seed, &body, 65536, None);
        let prev_sig = {
            let text = String::from_utf8_lossy(&last).into_owned();
            let at = text.rfind("chunk-signature=").unwrap() + "chunk-signature=".len();
            text[at..at + 64].to_owned()
        };
        let sig = key.trailer_signature(&prev_sig, format!("{canonical}\n").as_bytes());
        wire.extend_from_slice(format!("{line}\r\nx-amz-trailer-signature: {sig}\r\n\r\n").as_bytes());
        wire
    };
    let wire = spelled(&client, SEED_IN, "X-Amz-Checksum-CRC32:  AAAAAA== ", CRC32_LINE);
    let (out, result) = resign(wire.clone(), 100, CRC32, true, 9).await;
    result.unwrap();
    assert_eq!(out, encode(&apgate, SEED_OUT, &body, OUT_CHUNK, Some(CRC32_LINE)));
    for (line, canonical, why) in [
        (
            "x-amz-checksum-crc32:AAAA",
            "x-amz-checksum-crc32:AAAA",
            "a value of another length",
        ),
        (
            "x-amz-checksum-sha1:AAAAAA==",
            "x-amz-checksum-sha1:AAAAAA==",
            "another checksum",
        ),
        (
            "x-amz-meta-a:b",
            "x-amz-meta-a:b",
            "a line x-amz-trailer did not announce",
        ),
    ] {
        let (_, result) = resign(spelled(&client, SEED_IN, line, canonical), 100, CRC32, true, 9).await;
        assert!(matches!(result, Err(ChunkError::Malformed(_))), "{why}: {result:?}");
    }
    // Two signature lines: refused, whichever is right.
    let mut twice = wire[..wire.len() - 2].to_vec();
    let sig_line = String::from_utf8_lossy(&wire)
        .lines()
        .find(|l| l.starts_with("x-amz-trailer-signature"))
        .unwrap()
        .to_owned();
    twice.extend_from_slice(format!("{sig_line}\r\n\r\n").as_bytes());
    let (_, result) = resign(twice, 100, CRC32, true, 9).await;
    assert!(matches!(result, Err(ChunkError::Malformed(_))), "{result:?}");
}

/// A body that yields the given pieces, counting what it gave out.
struct Counted {
    rest: std::collections::VecDeque<Bytes>,
    given: Arc<std::sync::atomic::AtomicUsize>,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let next = self.rest.pop_front();
        if let Some(b) = &next {
            self.given.fetch_add(b.len(), std::sync::atomic::Ordering::Relaxed);
        }
        Poll::Ready(next.map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test]
async fn a_large_chunk_streams_through_without_being_held() {
    // One 8 MiB chunk: apgate's first chunk goes out after about 64 KiB of it, and it never holds
    // more than that (plus the frame being read) of it.
    let client = key("client-secret-0123456789");
    let body = data(8 << 20);
    let wire = encode(&client, SEED_IN, &body, 8 << 20, None);
    let given = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let inner = Counted {
        rest: wire.chunks(16 * 1024).map(Bytes::copy_from_slice).collect(),
        given: given.clone(),
    };
    let inbound = Inbound {
        key: client.clone(),
        seed: SEED_IN.to_owned(),
    };
    let resigned = ResignChunks::new(
        inner,
        Some(inbound),
        key("apgate-secret-0123456789"),
        SEED_OUT.to_owned(),
        Ending::Plain,
        body.len() as u64,
        Arc::default(),
    );
    let mut resigned = std::pin::pin!(resigned);
    let mut sent = 0usize;
    while let Some(frame) = resigned.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        sent += data.len();
        // What came in minus what went out: what apgate holds (a chunk being filled, a frame).
        let held = given.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(sent);
        assert!(held <= OUT_CHUNK + 16 * 1024 + 200, "holding {held} bytes");
    }
    assert_eq!(sent as u64, outbound_length(body.len() as u64, Ending::Plain));
}

#[tokio::test]
async fn refuses_bad_bodies_before_forwarding_the_bad_chunk() {
    let client = key("client-secret-0123456789");
    let body = data(200_000);
    let good = encode(&client, SEED_IN, &body, 65536, None);
    let sig_at = |nth: usize| {
        good.windows(16)
            .enumerate()
            .filter(|(_, w)| *w == b"chunk-signature=")
            .nth(nth)
            .map(|(i, _)| i + 16)
            .unwrap()
    };

    let mut flipped_sig = good.clone();
    let at = sig_at(1);
    flipped_sig[at] = if flipped_sig[at] == b'0' { b'1' } else { b'0' };

    let mut flipped_data = good.clone();
    let data_at = sig_at(1) + 64 + 2 + 100;
    flipped_data[data_at] ^= 1;

    let small = encode(&client, SEED_IN, &data(20_000), 4096, None);
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 100);
    let mut extra = good.clone();
    extra.extend_from_slice(b"junk");
    let mut bad_hex = good.clone();
    let h = bad_hex.windows(6).position(|w| w == b"10000;").unwrap();
    bad_hex[h + 4] = b'g';

    let with_trailer = encode(&client, SEED_IN, &body, 65536, Some(CRC32_LINE));
    let mut flipped_trailer = with_trailer.clone();
    let t = flipped_trailer
        .windows(24)
        .position(|w| w == b"x-amz-trailer-signature:")
        .unwrap()
        + 24;
    flipped_trailer[t] = if flipped_trailer[t] == b'0' { b'1' } else { b'0' };
    let mut tampered_checksum = with_trailer.clone();
    let c = tampered_checksum
        .windows(21)
        .position(|w| w == b"x-amz-checksum-crc32:")
        .unwrap()
        + 21;
    tampered_checksum[c] = b'B';

    let cases: Vec<(&str, Vec<u8>, u64, Ending, ChunkError)> = vec![
        (
            "flipped chunk signature",
            flipped_sig,
            200_000,
            Ending::Plain,
            ChunkError::SignatureDoesNotMatch,
        ),
        (
            "flipped data byte",
            flipped_data,
            200_000,
            Ending::Plain,
            ChunkError::SignatureDoesNotMatch,
        ),
        (
            "small non-final chunk",
            small,
            20_000,
            Ending::Plain,
            ChunkError::ChunkTooSmall,
        ),
        ("truncated", truncated, 200_000, Ending::Plain, ChunkError::Truncated),
        (
            "data after the end",
            extra,
            200_000,
            Ending::Plain,
            ChunkError::Malformed("data after the final chunk"),
        ),
        (
            "bad hex size",
            bad_hex,
            200_000,
            Ending::Plain,
            ChunkError::Malformed("bad chunk size"),
        ),
        (
            "decoded length too small",
            good.clone(),
            100_000,
            Ending::Plain,
            ChunkError::LengthMismatch,
        ),
        (
            "decoded length too large",
            good.clone(),
            300_000,
            Ending::Plain,
            ChunkError::LengthMismatch,
        ),
        (
            "flipped trailer signature",
            flipped_trailer,
            200_000,
            CRC32,
            ChunkError::TrailerSignatureDoesNotMatch,
        ),
        (
            "tampered trailer checksum",
            tampered_checksum,
            200_000,
            CRC32,
            ChunkError::TrailerSignatureDoesNotMatch,
        ),
    ];
    for (what, wire, decoded, ending, want) in cases {
        let (out, result) = resign(wire, decoded, ending, true, 4096).await;
        assert_eq!(result, Err(want), "{what}");
        if what.starts_with("flipped chunk") || what.starts_with("flipped data") {
            // The caller's 64 KiB chunks are apgate's: only the first (valid) one went out, the bad
            // one's data never did.
            assert!(out.len() < 65536 + 200, "{what}: {} bytes forwarded", out.len());
        }
        // Whatever went out, apgate's final chunk did not: the upstream request never completes.
        assert!(
            (out.len() as u64) < outbound_length(decoded, ending),
            "{what}: the whole body went out"
        );
        if ["flipped chunk", "flipped data", "truncated", "small"]
            .iter()
            .any(|w| what.starts_with(w))
        {
            // A chunk failed: apgate's final chunk never went out. (A bad trailer, or data after
            // the end, fail after it: then its closing bytes did not.)
            assert!(
                !out.windows(5).any(|w| w == b"\n0;ch") && !out.starts_with(b"0;"),
                "{what}: a final chunk went out"
            );
        }
    }
    // A chunk larger than apgate's: its data streams before its signature is checked at its end,
    // but the body fails there, short of its length.
    let big = encode(&client, SEED_IN, &body, 150_000, None);
    let mut bad = big.clone();
    let data_at = big.windows(16).position(|w| w == b"chunk-signature=").unwrap() + 16 + 64 + 2 + 140_000;
    bad[data_at] ^= 1;
    let (out, result) = resign(bad, 200_000, Ending::Plain, true, 4096).await;
    assert_eq!(result, Err(ChunkError::SignatureDoesNotMatch));
    assert!(out.len() >= 2 * 65536, "{} bytes went out", out.len());
    assert!((out.len() as u64) < outbound_length(200_000, Ending::Plain));
}

#[tokio::test]
async fn trusted_callers_chunks_are_resigned_without_checking() {
    // A `source` identity's SDK signs chunks with whatever key it has; apgate replaces them.
    let stranger = key("some-other-secret-0123");
    let body = data(100_000);
    let wire = encode(&stranger, "3".repeat(64).as_str(), &body, 65536, None);
    let (out, result) = resign(wire, 100_000, Ending::Plain, false, 1000).await;
    result.unwrap();
    assert_eq!(
        out,
        encode(&key("apgate-secret-0123456789"), SEED_OUT, &body, OUT_CHUNK, None)
    );
}
