"""A small, independent encoder for signed aws-chunked request bodies (stdlib only).

``STREAMING-AWS4-HMAC-SHA256-PAYLOAD`` and ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER``
(../shared/docs/PROTOCOL.md §4.2; AWS "Signature Calculations for the Authorization Header:
Transferring Payload in Multiple Chunks" and "... with trailers"):

- the seed signature is an ordinary SigV4 header signature whose payload hash (the last line
  of the canonical request) is the STREAMING-* constant;
- every chunk is framed as ``<hex len>;chunk-signature=<sig>\\r\\n<data>\\r\\n`` and signed over
  ``AWS4-HMAC-SHA256-PAYLOAD\\n<x-amz-date>\\n<scope>\\n<previous sig>\\n<sha256("")>\\n<sha256(data)>``,
  the chain starting at the seed signature and ending with a zero-length chunk;
- without a trailer the body ends ``0;chunk-signature=<sig>\\r\\n\\r\\n``; with one it ends
  ``0;chunk-signature=<sig>\\r\\n`` + ``name:value\\r\\n`` per trailer +
  ``x-amz-trailer-signature:<sig>\\r\\n\\r\\n``, the trailer signature being over
  ``AWS4-HMAC-SHA256-TRAILER\\n<x-amz-date>\\n<scope>\\n<final chunk sig>\\n<sha256("name:value\\n"...)>``.

Validated against AWS's published examples in test_signed_chunks.py (no server needed).
Everything is exposed piecewise (chunks and their signatures, ``frame_body``) so tests can
tamper with one element and re-frame the body.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import zlib
from dataclasses import dataclass, field

STREAMING_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_PAYLOAD_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
SIGNATURE_LEN = 64
MIN_CHUNK = 8 * 1024


# ----------------------------------------------------------------------------- primitives

def _hmac(key: bytes, msg: str | bytes) -> bytes:
    return hmac.new(key, msg.encode("utf-8") if isinstance(msg, str) else msg, hashlib.sha256).digest()


def signing_key(secret_key: str, date: str, region: str, service: str = "s3") -> bytes:
    """kSigning = HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date), region), service), "aws4_request")."""
    k = _hmac(("AWS4" + secret_key).encode("utf-8"), date)
    k = _hmac(k, region)
    k = _hmac(k, service)
    return _hmac(k, "aws4_request")


def credential_scope(date: str, region: str, service: str = "s3") -> str:
    return f"{date}/{region}/{service}/aws4_request"


def amz_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def canonical_query(query: str) -> str:
    """The query as sent on the wire (already URI-encoded): pairs sorted, ``k`` becomes ``k=``."""
    if not query:
        return ""
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        pairs.append((k, v))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _trim(value: str) -> str:
    return " ".join(value.strip().split())


def canonical_request(
    method: str, path: str, query: str, headers: list[tuple[str, str]], signed: list[str], payload_hash: str
) -> str:
    """S3 canonical request: the wire path as is (no normalization, no re-encoding)."""
    by_name: dict[str, list[str]] = {}
    for name, value in headers:
        by_name.setdefault(name.lower(), []).append(_trim(value))
    lines = []
    for name in signed:
        if name not in by_name:
            raise ValueError(f"signed header {name} is not among the request headers")
        lines.append(f"{name}:{','.join(by_name[name])}\n")
    return "\n".join([method, path, canonical_query(query), "".join(lines), ";".join(signed), payload_hash])


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    return "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()]
    )


def chunk_string_to_sign(amz_date: str, scope: str, previous: str, data: bytes) -> str:
    return "\n".join(
        ["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous, EMPTY_SHA256, hashlib.sha256(data).hexdigest()]
    )


def chunk_signature(key: bytes, amz_date: str, scope: str, previous: str, data: bytes) -> str:
    return _hmac(key, chunk_string_to_sign(amz_date, scope, previous, data)).hex()


def canonical_trailers(trailers: list[tuple[str, str]]) -> bytes:
    """``name:value\\n`` per trailer, names lowercased, sorted, values trimmed."""
    return "".join(f"{n.lower()}:{v.strip()}\n" for n, v in sorted(trailers, key=lambda t: t[0].lower())).encode()


def trailer_signature(key: bytes, amz_date: str, scope: str, previous: str, trailers: list[tuple[str, str]]) -> str:
    sts = "\n".join(
        ["AWS4-HMAC-SHA256-TRAILER", amz_date, scope, previous, hashlib.sha256(canonical_trailers(trailers)).hexdigest()]
    )
    return _hmac(key, sts).hex()


def crc32_b64(data: bytes) -> str:
    """x-amz-checksum-crc32: base64 of the big-endian 4-byte CRC-32 (zlib's polynomial)."""
    return base64.b64encode((zlib.crc32(data) & 0xFFFFFFFF).to_bytes(4, "big")).decode()


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c_b64(data: bytes) -> str:
    """x-amz-checksum-crc32c (Castagnoli), pure Python: fine for test-sized bodies."""
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return base64.b64encode((c ^ 0xFFFFFFFF).to_bytes(4, "big")).decode()


CHECKSUMS = {"x-amz-checksum-crc32": crc32_b64, "x-amz-checksum-crc32c": crc32c_b64}


# ----------------------------------------------------------------------------- framing

def split_chunks(body: bytes, chunk_size: int, sizes: list[int] | None = None) -> list[bytes]:
    """Data chunks (without the final empty one): fixed ``chunk_size``, or explicit ``sizes``
    (the last chunk takes whatever is left)."""
    if sizes is None:
        return [body[i:i + chunk_size] for i in range(0, len(body), chunk_size)]
    out, pos = [], 0
    for n in sizes:
        out.append(body[pos:pos + n])
        pos += n
    if pos < len(body):
        out.append(body[pos:])
    return [c for c in out if c]


def frame_chunk(data: bytes, signature: str) -> bytes:
    return f"{len(data):x};chunk-signature={signature}\r\n".encode() + data + b"\r\n"


def frame_body(
    chunks: list[tuple[bytes, str]],
    trailers: list[tuple[str, str]] | None = None,
    trailer_sig: str | None = None,
) -> bytes:
    """The aws-chunked body. ``chunks`` must include the final zero-length chunk (last)."""
    *data_chunks, (final_data, final_sig) = chunks
    out = b"".join(frame_chunk(d, s) for d, s in data_chunks)
    out += f"{len(final_data):x};chunk-signature={final_sig}\r\n".encode()
    if trailers is None:
        return out + b"\r\n"
    for name, value in trailers:
        out += f"{name}:{value}\r\n".encode()
    if trailer_sig is not None:
        out += f"x-amz-trailer-signature:{trailer_sig}\r\n".encode()
    return out + b"\r\n"


def encoded_length(chunk_lengths: list[int], trailers: list[tuple[str, str]] | None = None) -> int:
    """Content-Length of the body for these data-chunk lengths (the final chunk is added)."""
    n = sum(len(f"{c:x};chunk-signature=") + SIGNATURE_LEN + 2 + c + 2 for c in chunk_lengths)
    n += len("0;chunk-signature=") + SIGNATURE_LEN + 2
    if trailers is not None:
        n += sum(len(f"{k}:{v}\r\n") for k, v in trailers)
        n += len("x-amz-trailer-signature:") + SIGNATURE_LEN + 2
    return n + 2


# ----------------------------------------------------------------------------- requests

@dataclass
class SignedChunkedRequest:
    method: str
    target: str                         # path[?query] as sent on the wire
    headers: list[tuple[str, str]]      # as sent, Authorization last
    body: bytes                         # the aws-chunked body
    seed_signature: str
    chunks: list[tuple[bytes, str]]     # (data, signature), final zero-length chunk included
    trailers: list[tuple[str, str]] | None = None
    trailer_signature: str | None = None
    canonical_request: str = ""
    signing_key: bytes = field(default=b"", repr=False)
    amz_date: str = ""
    scope: str = ""

    @property
    def chunk_signatures(self) -> list[str]:
        return [s for _, s in self.chunks]

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def reframe(
        self,
        chunks: list[tuple[bytes, str]] | None = None,
        trailers: list[tuple[str, str]] | None = None,
        trailer_sig: str | None = None,
    ) -> bytes:
        """The body again, with some elements replaced (for tampering); lengths must be kept
        equal by the caller if Content-Length is to stay right."""
        return frame_body(
            self.chunks if chunks is None else chunks,
            self.trailers if trailers is None else trailers,
            self.trailer_signature if trailer_sig is None else trailer_sig,
        )


def encode(
    method: str,
    host: str,
    path: str,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    body: bytes,
    amz_date: str | None = None,
    chunk_size: int = 64 * 1024,
    chunk_sizes: list[int] | None = None,
    query: str = "",
    headers: list[tuple[str, str]] | dict[str, str] | None = None,
    trailer: str | None = None,
    trailer_value: str | None = None,
    content_length: bool = True,
    sign_content_length: bool = True,
    decoded_length: int | None = None,
    service: str = "s3",
) -> SignedChunkedRequest:
    """Sign and encode ``body`` as a signed aws-chunked request to ``http://host{path}``.

    - ``path`` is the URI-encoded path as it goes on the wire (and into the canonical request).
    - ``headers``: extra headers to send and sign (e.g. x-amz-storage-class).
    - ``trailer``: a checksum trailer name (``x-amz-checksum-crc32`` / ``-crc32c``) to send as
      ``...-PAYLOAD-TRAILER`` with a trailer signature; ``trailer_value`` overrides the computed value.
    - ``content_length``: send ``Content-Length`` (the encoded length); without it the caller
      must frame the HTTP message with ``Transfer-Encoding: chunked``.
    - ``sign_content_length``: include Content-Length in SignedHeaders (when sent).
    - ``decoded_length``: declare this x-amz-decoded-content-length instead of ``len(body)``.
    """
    amz_date = amz_date or amz_now()
    date = amz_date[:8]
    scope = credential_scope(date, region, service)
    key = signing_key(secret_key, date, region, service)
    extra = list(headers.items()) if isinstance(headers, dict) else list(headers or [])

    data_chunks = split_chunks(body, chunk_size, chunk_sizes)
    trailers = None
    if trailer is not None:
        value = trailer_value if trailer_value is not None else CHECKSUMS[trailer.lower()](body)
        trailers = [(trailer.lower(), value)]

    hdrs: list[tuple[str, str]] = [
        ("Host", host),
        ("X-Amz-Date", amz_date),
        ("X-Amz-Content-SHA256", STREAMING_PAYLOAD_TRAILER if trailers is not None else STREAMING_PAYLOAD),
        ("Content-Encoding", "aws-chunked"),
        ("X-Amz-Decoded-Content-Length", str(len(body) if decoded_length is None else decoded_length)),
    ]
    if trailers is not None:
        hdrs.append(("X-Amz-Trailer", trailers[0][0]))
    if content_length:
        hdrs.append(("Content-Length", str(encoded_length([len(c) for c in data_chunks], trailers))))
    hdrs.extend(extra)

    signed = sorted(
        {k.lower() for k, _ in hdrs} - ({"content-length"} if not sign_content_length else set())
    )
    payload = STREAMING_PAYLOAD_TRAILER if trailers is not None else STREAMING_PAYLOAD
    canonical = canonical_request(method, path, query, hdrs, signed, payload)
    seed = _hmac(key, string_to_sign(amz_date, scope, canonical)).hex()
    hdrs.append((
        "Authorization",
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={';'.join(signed)}, Signature={seed}",
    ))

    chunks: list[tuple[bytes, str]] = []
    previous = seed
    for data in [*data_chunks, b""]:
        previous = chunk_signature(key, amz_date, scope, previous, data)
        chunks.append((data, previous))
    trailer_sig = trailer_signature(key, amz_date, scope, previous, trailers) if trailers is not None else None

    encoded = frame_body(chunks, trailers, trailer_sig)
    if content_length:
        assert int(dict((k.lower(), v) for k, v in hdrs)["content-length"]) == len(encoded)
    return SignedChunkedRequest(
        method=method,
        target=path + (f"?{query}" if query else ""),
        headers=hdrs,
        body=encoded,
        seed_signature=seed,
        chunks=chunks,
        trailers=trailers,
        trailer_signature=trailer_sig,
        canonical_request=canonical,
        signing_key=key,
        amz_date=amz_date,
        scope=scope,
    )


def decode(body: bytes) -> tuple[list[tuple[bytes, str]], list[tuple[str, str]]]:
    """Parse a signed aws-chunked body back into (chunks, trailer lines); strict about framing.
    For checking the encoder against itself and against what others produce."""
    chunks: list[tuple[bytes, str]] = []
    pos = 0
    while True:
        eol = body.index(b"\r\n", pos)
        size_hex, _, ext = body[pos:eol].decode().partition(";")
        if not ext.startswith("chunk-signature="):
            raise ValueError(f"chunk header without signature: {body[pos:eol]!r}")
        n = int(size_hex, 16)
        start = eol + 2
        data = body[start:start + n]
        chunks.append((data, ext[len("chunk-signature="):]))
        if n == 0:
            pos = start
            break
        if body[start + n:start + n + 2] != b"\r\n":
            raise ValueError("chunk data not followed by CRLF")
        pos = start + n + 2
    trailers = []
    while True:
        eol = body.index(b"\r\n", pos)
        line = body[pos:eol]
        pos = eol + 2
        if not line:
            break
        k, _, v = line.decode().partition(":")
        trailers.append((k, v))
    if pos != len(body):
        raise ValueError(f"{len(body) - pos} bytes after the end of the aws-chunked body")
    return chunks, trailers
