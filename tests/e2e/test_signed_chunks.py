"""Signed aws-chunked uploads (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]``), hand-made.

The bodies come from aws_chunked.py, a small independent encoder that is first checked against
AWS's published examples (no server needed), then against moto directly (moto verifies the seed
signature with botocore and decodes the chunks, but never checks chunk signatures --
../shared/docs/TESTING.md -- so it cannot tell a good chunk from a forged one).

Through apgate, as bob on the shared listener, over raw sockets:

- valid bodies (with and without a CRC32 trailer; Content-Length or ``Transfer-Encoding:
  chunked`` HTTP framing) are stored byte for byte through bob's access point;
- a forged chunk signature, trailer signature or chunk byte, a truncated body, a wrong decoded
  length, a missing chunk signature and a non-final chunk under 8 KiB are refused, and no object
  is left behind (moto stores whatever it decodes, so apgate must abort the upstream request);
- against a capturing stand-in upstream (a second apgate whose upstream is a socket that records
  every byte): what apgate forwards carries a seed signature and a chunk/trailer signature chain
  that verify with the *gateway's* key over exactly the client's data, and a forged chunk never
  becomes a complete upstream request.

Fixtures: ``moto``, ``moto_s3`` and ``apgate`` from conftest.py; ``capture`` and
``capture_apgate`` here.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import secrets
import socket
import socketserver
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

import aws_chunked as ac
import s3wire
from conftest import (
    apgate_bin,
    BOB_ACCESS_KEY_ID, BOB_AP_HOST, BUCKET, REGION, REPO, _readyz, _tail, apgate_config, apgate_log_env,
    free_port, register_apgate, stop,
)

KIB = 1024
CHUNK = 64 * KIB
BODY_SIZE = 200 * KIB  # 3 full 64 KiB chunks and one of 8 KiB
EXCHANGE_TIMEOUT = 30.0

# ----------------------------------------------------------------------------- the encoder, offline

AWS_ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_DATE = "20130524T000000Z"


def aws_example(trailer: bool) -> ac.SignedChunkedRequest:
    """The examples of AWS's sigv4-streaming.html / sigv4-streaming-trailers.html pages."""
    return ac.encode(
        "PUT", "s3.amazonaws.com", "/examplebucket/chunkObject.txt",
        access_key=AWS_ACCESS_KEY, secret_key=AWS_SECRET_KEY, region="us-east-1",
        amz_date=AWS_DATE, body=b"a" * 66560, chunk_size=64 * KIB,
        headers={"x-amz-storage-class": "REDUCED_REDUNDANCY"},
        # The trailer example signs no Content-Length (SignedHeaders lists no content-length).
        trailer="x-amz-checksum-crc32c" if trailer else None, content_length=not trailer,
    )


def test_encoder_reproduces_aws_streaming_example():
    r = aws_example(trailer=False)
    assert r.header("Content-Length") == "66824" and len(r.body) == 66824
    assert r.header("x-amz-decoded-content-length") == "66560"
    assert r.header("Authorization") == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
        "x-amz-decoded-content-length;x-amz-storage-class, "
        "Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    )
    assert r.seed_signature == "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    assert r.chunk_signatures == [
        "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
        "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
        "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
    ]
    assert r.body.startswith(
        b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n" + b"a" * 10
    )
    assert r.body.endswith(
        b"a\r\n0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n"
    )
    chunks, trailers = ac.decode(r.body)
    assert [len(d) for d, _ in chunks] == [65536, 1024, 0] and trailers == []


def test_encoder_reproduces_aws_streaming_trailer_example():
    # PROTOCOL.md §4.6 gives these by prefix; full values as in the AWS trailer example.
    r = aws_example(trailer=True)
    assert r.header("x-amz-content-sha256") == ac.STREAMING_PAYLOAD_TRAILER
    assert "SignedHeaders=content-encoding;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;" \
           "x-amz-storage-class;x-amz-trailer," in r.header("Authorization")
    assert r.seed_signature == "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
    assert r.chunk_signatures == [
        "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
        "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
        "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
    ]
    assert r.trailers == [("x-amz-checksum-crc32c", "sOO8/Q==")]
    assert r.trailer_signature == "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"
    assert r.body.endswith(
        b"0;chunk-signature=2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992\r\n"
        b"x-amz-checksum-crc32c:sOO8/Q==\r\n"
        b"x-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n\r\n"
    )
    assert len(r.body) == 66946 == ac.encoded_length([65536, 1024], r.trailers)


def test_checksums():
    # PROTOCOL.md §4.2's unsigned-trailer example: "hello world" -> x-amz-checksum-crc32:DUoRhQ==
    assert ac.crc32_b64(b"hello world") == "DUoRhQ=="
    assert ac.crc32c_b64(b"a" * 66560) == "sOO8/Q=="
    assert ac.crc32_b64(b"") == "AAAAAA=="


def test_seed_canonical_request_matches_botocore():
    """The seed's canonical request, built by hand, equals botocore's for an awkward key."""
    target = "/" + s3wire.encode_key(f"{BUCKET}/Bob/dir/a b+c=d ü €.bin")
    r = ac.encode(
        "PUT", "127.0.0.1:9999", target, access_key="AKIDEXAMPLE", secret_key="secret",
        region=REGION, body=os.urandom(70000), amz_date="20250101T120000Z",
        headers={"x-amz-meta-note": "  two   spaces ", "Content-Type": "application/octet-stream"},
        trailer="x-amz-checksum-crc32",
    )
    req = AWSRequest(method="PUT", url=f"http://127.0.0.1:9999{target}", headers=dict(r.headers[:-1]))
    req.context["timestamp"] = r.amz_date
    auth = S3SigV4Auth(Credentials("AKIDEXAMPLE", "secret"), "s3", REGION)
    assert auth.canonical_request(req) == r.canonical_request
    assert auth.signature(auth.string_to_sign(req, r.canonical_request), req) == r.seed_signature


def test_frame_decode_round_trip():
    body = os.urandom(3 * CHUNK + 5)
    for trailer in (None, "x-amz-checksum-crc32"):
        r = ac.encode("PUT", "h", "/b/k", access_key="a", secret_key="s", region=REGION, body=body,
                      chunk_size=CHUNK, trailer=trailer)
        chunks, trailers = ac.decode(r.body)
        assert b"".join(d for d, _ in chunks) == body
        assert [s for _, s in chunks] == r.chunk_signatures
        assert len(r.body) == int(r.header("Content-Length"))
        if trailer:
            assert trailers == [*r.trailers, ("x-amz-trailer-signature", r.trailer_signature)]
        assert r.reframe() == r.body


# ----------------------------------------------------------------------------- raw exchange

@dataclass
class Outcome:
    status: int | None  # None: no response at all (connection closed or reset)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    send_error: str | None = None
    recv_error: str | None = None

    def code(self) -> str | None:
        m = re.search(rb"<Code>([^<]+)</Code>", self.body)
        return m.group(1).decode() if m else None

    def __str__(self) -> str:
        return (f"status={self.status} code={self.code()} send_error={self.send_error} "
                f"recv_error={self.recv_error} body={self.body[:400]!r}")


def http_chunked(data: bytes, piece: int = 10007) -> bytes:
    """HTTP/1.1 chunked framing; the odd piece size straddles aws-chunked boundaries."""
    out = b"".join(f"{len(data[i:i + piece]):x}\r\n".encode() + data[i:i + piece] + b"\r\n"
                   for i in range(0, len(data), piece))
    return out + b"0\r\n\r\n"


def exchange(
    port: int,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
    *,
    te_chunked: bool = False,
    half_close: bool = False,
    timeout: float = EXCHANGE_TIMEOUT,
) -> Outcome:
    """Send one request (head, then ``body`` -- HTTP-chunked if ``te_chunked`` -- from a thread,
    optionally shutting down the write side afterwards) and read the response."""
    if te_chunked:
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Transfer-Encoding", "chunked"))
        wire = http_chunked(body)
    else:
        wire = body
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    out = Outcome(status=None)

    def sender() -> None:
        try:
            sock.sendall(head.encode("utf-8"))
            view = memoryview(wire)
            for i in range(0, len(view), 16 * KIB):
                sock.sendall(view[i:i + 16 * KIB])
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            out.send_error = repr(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    try:
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        out.status = resp.status
        out.headers = {k.lower(): v for k, v in resp.getheaders()}
        out.body = resp.read()
    except (OSError, http.client.HTTPException) as e:
        out.recv_error = repr(e)
    finally:
        t.join(timeout)
        sock.close()
    return out


def shared_host(apgate) -> str:
    return f"127.0.0.1:{apgate.shared_port}"


def target_of(key: str) -> str:
    return "/" + s3wire.encode_key(f"{BUCKET}/{key}")


def unique_key(name: str = "obj.bin") -> str:
    return f"Bob/signed-chunks/{uuid.uuid4().hex[:12]}/{name}"


def bob_encode(apgate, key: str, body: bytes, *, secret: str | None = None, **kw) -> ac.SignedChunkedRequest:
    return ac.encode(
        "PUT", shared_host(apgate), target_of(key),
        access_key=apgate.bob_access_key_id, secret_key=secret or apgate.bob_secret_access_key,
        region=apgate.region, body=body, chunk_size=CHUNK, **kw,
    )


def send_signed(apgate, req: ac.SignedChunkedRequest, body: bytes | None = None, **kw) -> Outcome:
    return exchange(apgate.shared_port, req.method, req.target, list(req.headers),
                    req.body if body is None else body, **kw)


def flip_hex(sig: str) -> str:
    return sig[:10] + ("0" if sig[10] != "0" else "1") + sig[11:]


def assert_absent(moto_s3, key: str) -> None:
    with pytest.raises(ClientError) as e:
        moto_s3.head_object(Bucket=BUCKET, Key=key)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404, \
        f"an object was left behind at {key}: {e.value.response}"


def assert_absent_now_and_later(moto_s3, key: str) -> None:
    """No object, also a moment later (an upstream request apgate failed to abort could still
    complete after the client got its answer)."""
    assert_absent(moto_s3, key)
    time.sleep(1.0)
    assert_absent(moto_s3, key)


def assert_single_upstream_put(moto, mark: int, key: str) -> None:
    entries = moto.log_since(mark)
    assert len(entries) == 1, f"expected exactly one upstream request: {entries}"
    e = entries[0]
    assert e["method"] == "PUT" and e["host"] == BOB_AP_HOST and e["authorization_present"], e
    assert unquote(e["raw_uri"].split("?")[0]) == "/" + key, e


def assert_round_trip(apgate, moto_s3, key: str, data: bytes) -> None:
    got = s3wire.signed_request(
        ("127.0.0.1", apgate.shared_port), "GET", shared_host(apgate), target_of(key),
        access_key=apgate.bob_access_key_id, secret_key=apgate.bob_secret_access_key,
    )
    assert got.status == 200, (got.status, got.body[:400])
    assert len(got.body) == len(data) and hashlib.sha256(got.body).digest() == hashlib.sha256(data).digest(), \
        f"GET through apgate returned {len(got.body)} bytes that differ from the {len(data)} uploaded"
    stored = moto_s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert stored == data, f"moto holds {len(stored)} bytes that differ from the {len(data)} uploaded"


# ----------------------------------------------------------------------------- reference: moto directly

@pytest.mark.parametrize("trailer", [None, "x-amz-checksum-crc32"])
def test_reference_encoder_accepted_by_moto_directly(moto, moto_s3, trailer):
    """The encoder's output, sent straight to moto through bob's access point with the gateway's
    upstream key: moto's botocore-based check accepts the seed and it stores the decoded data.
    (This checks the test's own encoder and framing, not apgate.)"""
    key = unique_key()
    data = os.urandom(BODY_SIZE)
    req = ac.encode("PUT", BOB_AP_HOST, "/" + s3wire.encode_key(key),
                    access_key=moto.access_key_id, secret_key=moto.secret_access_key,
                    region=REGION, body=data, chunk_size=CHUNK, trailer=trailer)
    out = exchange(moto.port, "PUT", req.target, req.headers, req.body)
    assert out.status == 200, str(out)
    assert moto_s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data


# ----------------------------------------------------------------------------- through apgate: accepted

@pytest.mark.parametrize("trailer,te_chunked", [
    (None, False),
    ("x-amz-checksum-crc32", False),
    ("x-amz-checksum-crc32", True),
    (None, True),
], ids=["plain-content-length", "trailer-content-length", "trailer-transfer-encoding",
        "plain-transfer-encoding"])
def test_valid_signed_chunks_stored(apgate, moto, moto_s3, trailer, te_chunked):
    key = unique_key("ü a+b=c.bin")
    data = os.urandom(BODY_SIZE)
    req = bob_encode(apgate, key, data, trailer=trailer, content_length=not te_chunked)
    mark = moto.log_mark()
    out = send_signed(apgate, req, te_chunked=te_chunked)
    assert out.status == 200, f"{out}\n--- apgate log\n{apgate.log()[-3000:]}"
    assert_single_upstream_put(moto, mark, key)
    assert_round_trip(apgate, moto_s3, key, data)


def test_valid_signed_chunks_small_body_single_chunk(apgate, moto, moto_s3):
    """A body smaller than one chunk: one short (final-data) chunk, then the zero chunk."""
    key = unique_key()
    data = b"small signed body\n" * 3
    req = bob_encode(apgate, key, data, trailer="x-amz-checksum-crc32")
    mark = moto.log_mark()
    out = send_signed(apgate, req)
    assert out.status == 200, str(out)
    assert_single_upstream_put(moto, mark, key)
    assert_round_trip(apgate, moto_s3, key, data)


def test_wrong_secret_seed_refused_nothing_upstream(apgate, moto, moto_s3):
    key = unique_key()
    req = bob_encode(apgate, key, os.urandom(BODY_SIZE), secret="not-" + apgate.bob_secret_access_key)
    mark = moto.log_mark()
    out = send_signed(apgate, req)
    assert (out.status, out.code()) == (403, "SignatureDoesNotMatch"), str(out)
    assert moto.log_since(mark) == []
    assert_absent(moto_s3, key)


# ----------------------------------------------------------------------------- through apgate: refused

def _tampered(req: ac.SignedChunkedRequest, what: str) -> bytes:
    chunks = list(req.chunks)
    if what == "middle-chunk-signature":
        d, s = chunks[1]
        chunks[1] = (d, flip_hex(s))
        return req.reframe(chunks=chunks)
    if what == "final-chunk-signature":
        d, s = chunks[-1]
        chunks[-1] = (d, flip_hex(s))
        return req.reframe(chunks=chunks)
    if what == "middle-chunk-data":
        d, s = chunks[1]
        b = bytearray(d)
        b[len(b) // 2] ^= 0x01
        chunks[1] = (bytes(b), s)
        return req.reframe(chunks=chunks)
    if what == "trailer-signature":
        return req.reframe(trailer_sig=flip_hex(req.trailer_signature))
    if what == "trailer-value":  # checksum changed, trailer signature kept
        (name, value), = req.trailers
        other = ac.crc32_b64(b"something else")
        assert len(other) == len(value)
        return req.reframe(trailers=[(name, other)])
    raise AssertionError(what)


TAMPERS = [
    ("middle-chunk-signature", None),
    ("middle-chunk-signature", "x-amz-checksum-crc32"),
    ("final-chunk-signature", None),
    ("middle-chunk-data", None),
    ("middle-chunk-data", "x-amz-checksum-crc32"),
    ("trailer-signature", "x-amz-checksum-crc32"),
    ("trailer-value", "x-amz-checksum-crc32"),
]


@pytest.mark.parametrize("what,trailer", TAMPERS, ids=[f"{w}-{'trailer' if t else 'plain'}" for w, t in TAMPERS])
def test_tampered_body_refused_no_object(apgate, moto_s3, what, trailer):
    key = unique_key()
    req = bob_encode(apgate, key, os.urandom(BODY_SIZE), trailer=trailer)
    body = _tampered(req, what)
    assert len(body) == len(req.body)
    out = send_signed(apgate, req, body)
    assert (out.status, out.code()) == (403, "SignatureDoesNotMatch"), str(out)
    assert_absent_now_and_later(moto_s3, key)


def test_tampered_chunk_with_transfer_encoding_refused_no_object(apgate, moto_s3):
    key = unique_key()
    req = bob_encode(apgate, key, os.urandom(BODY_SIZE), trailer="x-amz-checksum-crc32", content_length=False)
    out = send_signed(apgate, req, _tampered(req, "middle-chunk-signature"), te_chunked=True)
    assert (out.status, out.code()) == (403, "SignatureDoesNotMatch"), str(out)
    assert_absent_now_and_later(moto_s3, key)


def assert_client_error_or_close(out: Outcome) -> None:
    assert out.status is None or 400 <= out.status < 500, f"expected a 4xx answer or a closed connection: {out}"


def test_aws_chunked_truncated_inside_complete_http_message(apgate, moto_s3):
    """HTTP framing complete (Transfer-Encoding: chunked), but the aws-chunked body stops after
    its first chunk: no final zero-length chunk."""
    key = unique_key()
    req = bob_encode(apgate, key, os.urandom(BODY_SIZE), content_length=False)
    first = ac.frame_chunk(*req.chunks[0])
    out = send_signed(apgate, req, first, te_chunked=True)
    assert_client_error_or_close(out)
    assert out.status is not None, f"apgate closed without an answer to a complete HTTP message: {out}"
    assert_absent_now_and_later(moto_s3, key)


def test_body_shorter_than_content_length_half_closed(apgate, moto_s3):
    """Content-Length declares the whole encoded body; the client sends the first chunk and
    shuts down its write side."""
    key = unique_key()
    req = bob_encode(apgate, key, os.urandom(BODY_SIZE))
    first = ac.frame_chunk(*req.chunks[0])
    out = send_signed(apgate, req, first, half_close=True)
    assert_client_error_or_close(out)
    assert_absent_now_and_later(moto_s3, key)


def test_non_final_chunk_below_8_kib_refused(apgate, moto_s3):
    key = unique_key()
    req = bob_encode(apgate, key, os.urandom(BODY_SIZE), chunk_sizes=[4 * KIB, CHUNK, CHUNK, CHUNK])
    assert [len(d) for d, _ in req.chunks] == [4 * KIB, CHUNK, CHUNK, CHUNK, 4 * KIB, 0]
    out = send_signed(apgate, req)
    assert out.status is not None and 400 <= out.status < 500, str(out)
    assert_absent_now_and_later(moto_s3, key)


@pytest.mark.parametrize("delta", [+KIB, -KIB], ids=["declared-longer", "declared-shorter"])
def test_decoded_length_mismatch_refused(apgate, moto_s3, delta):
    key = unique_key()
    req = bob_encode(apgate, key, os.urandom(BODY_SIZE), decoded_length=BODY_SIZE + delta)
    out = send_signed(apgate, req)
    assert out.status is not None and 400 <= out.status < 500, str(out)
    assert_absent_now_and_later(moto_s3, key)


def test_missing_chunk_signature_refused(apgate, moto_s3):
    """A middle chunk framed without its ``;chunk-signature=`` extension (as in an unsigned
    body) under a signed-payload seed."""
    key = unique_key()
    req = bob_encode(apgate, key, os.urandom(BODY_SIZE), content_length=False)
    d1, _ = req.chunks[1]
    body = (ac.frame_chunk(*req.chunks[0]) + f"{len(d1):x}\r\n".encode() + d1 + b"\r\n"
            + req.reframe(chunks=req.chunks[2:]))
    out = send_signed(apgate, req, body, te_chunked=True)
    assert out.status is not None and 400 <= out.status < 500, str(out)
    assert_absent_now_and_later(moto_s3, key)


# ----------------------------------------------------------------------------- capturing upstream

CAPTURE_ACCESS_KEY = "AKIDCAPTUREUPSTREAM1"
CAPTURE_SECRET_KEY = "capture-upstream-secret-" + secrets.token_hex(8)


@dataclass
class Captured:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool
    error: str | None = None

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


class _CaptureHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        srv: CaptureServer = self.server  # type: ignore[assignment]
        with srv.lock:
            srv.started += 1
        self.request.settimeout(EXCHANGE_TIMEOUT)
        rf = self.request.makefile("rb")
        rec = Captured("", "", [], b"", False)
        body = bytearray()
        try:
            line = rf.readline(65536)
            if not line:
                rec.error = "no request line"
                return
            rec.method, rec.target, _ = line.decode("latin-1").split(" ", 2)
            while True:
                h = rf.readline(65536)
                if h in (b"\r\n", b"\n", b""):
                    break
                k, _, v = h.decode("latin-1").partition(":")
                rec.headers.append((k.strip(), v.strip()))
            if (rec.header("expect") or "").lower() == "100-continue":
                self.request.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            if (rec.header("transfer-encoding") or "").lower() == "chunked":
                while True:
                    size_line = rf.readline(1024)
                    if not size_line:
                        raise EOFError("EOF in chunk size line")
                    n = int(size_line.split(b";")[0].strip(), 16)
                    if n == 0:
                        while rf.readline(65536) not in (b"\r\n", b"\n"):
                            pass
                        break
                    data = rf.read(n)
                    body += data
                    if len(data) != n or rf.read(2) != b"\r\n":
                        raise EOFError("EOF inside an HTTP chunk")
            else:
                n = int(rec.header("content-length") or 0)
                while len(body) < n:
                    data = rf.read1(n - len(body))
                    if not data:
                        raise EOFError(f"EOF after {len(body)} of {n} body bytes")
                    body += data
            rec.body = bytes(body)
            rec.complete = True
            self.request.sendall(b'HTTP/1.1 200 OK\r\nETag: "capture"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n')
        except (OSError, EOFError, ValueError) as e:
            rec.body = bytes(body)
            rec.error = repr(e)
        finally:
            with srv.lock:
                srv.records.append(rec)
                srv.finished += 1


class CaptureServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CaptureHandler)
        self.lock = threading.Lock()
        self.records: list[Captured] = []
        self.started = 0
        self.finished = 0

    @property
    def port(self) -> int:
        return self.server_address[1]

    def mark(self) -> int:
        with self.lock:
            return len(self.records)

    def since(self, mark: int, settle: float = 10.0) -> list[Captured]:
        """Records after mark, once every connection apgate opened has finished."""
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            with self.lock:
                if self.started == self.finished:
                    break
            time.sleep(0.05)
        with self.lock:
            return list(self.records[mark:])


@pytest.fixture(scope="module")
def capture():
    srv = CaptureServer()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@dataclass
class CaptureApgate:
    shared_port: int
    bob_secret_access_key: str
    log_path: Path
    bob_access_key_id: str = BOB_ACCESS_KEY_ID
    region: str = REGION

    def log(self) -> str:
        return _tail(self.log_path, 20000)


@pytest.fixture(scope="module")
def capture_apgate(capture, tmp_path_factory):
    """A second apgate, configured like conftest's, whose upstream is the capture server."""
    binary = apgate_bin()
    if not binary.is_file():
        pytest.fail(f"apgate binary not found at {binary} (cargo build --release, or --profile ci as scripts/test)")
    tmp = tmp_path_factory.mktemp("capture_apgate")
    admin, shared, sidecar = free_port(), free_port(), free_port()
    while len({admin, shared, sidecar, capture.port}) < 4:
        shared, sidecar = free_port(), free_port()
    config = tmp / "apgate.toml"
    config.write_text(apgate_config(admin, shared, sidecar, capture.port))
    bob_secret = secrets.token_urlsafe(30)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and not k.startswith("APGATE_")}
    env.update({
        "APGATE_UPSTREAM_ACCESS_KEY_ID": CAPTURE_ACCESS_KEY,
        "APGATE_UPSTREAM_SECRET_ACCESS_KEY": CAPTURE_SECRET_KEY,
        "APGATE_TEST_BOB_SECRET": bob_secret,
        "AWS_EC2_METADATA_DISABLED": "true",
        **apgate_log_env(),
    })
    log_path = tmp / "apgate.log"
    register_apgate(log_path, CAPTURE_SECRET_KEY, bob_secret)
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([str(binary), "serve", "-c", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    try:
        deadline = time.monotonic() + 30
        while _readyz(f"http://127.0.0.1:{admin}/readyz") != 200:
            if proc.poll() is not None:
                pytest.fail(f"apgate exited with {proc.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                pytest.fail(f"apgate /readyz not 200 after 30s:\n{_tail(log_path)}")
            time.sleep(0.1)
        yield CaptureApgate(shared_port=shared, bob_secret_access_key=bob_secret, log_path=log_path)
    finally:
        stop(proc)


def _parse_authorization(value: str) -> tuple[str, list[str], str]:
    m = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^,]+),\s*SignedHeaders=([^,]+),\s*Signature=([0-9a-f]{64})",
                     value)
    assert m, f"unexpected upstream Authorization: {value}"
    return m.group(1), m.group(2).split(";"), m.group(3)


def verify_forwarded(rec: Captured, client: ac.SignedChunkedRequest, data: bytes) -> None:
    """What apgate sent upstream is a correctly signed aws-chunked request under the gateway's
    key, carrying exactly the client's data (and trailer checksum)."""
    assert rec.complete, rec.error
    assert rec.method == "PUT"
    assert rec.header("host") == BOB_AP_HOST
    assert unquote(rec.target.split("?")[0]) == "/" + unquote(client.target).split("/", 2)[2]
    payload = rec.header("x-amz-content-sha256")
    assert payload == client.header("x-amz-content-sha256")
    assert "aws-chunked" in (rec.header("content-encoding") or "")
    assert rec.header("x-amz-decoded-content-length") == str(len(data))
    if rec.header("content-length") is not None:
        assert int(rec.header("content-length")) == len(rec.body)
    credential, signed, seed = _parse_authorization(rec.header("authorization") or "")
    access_key, date, region, service, term = credential.split("/")
    assert (access_key, service, term) == (CAPTURE_ACCESS_KEY, "s3", "aws4_request")
    amz_date = rec.header("x-amz-date") or ""
    assert amz_date[:8] == date
    need = {"content-encoding", "host", "x-amz-content-sha256", "x-amz-date", "x-amz-decoded-content-length"}
    if client.trailers:
        need.add("x-amz-trailer")
    assert need <= set(signed), f"upstream SignedHeaders {signed} lack {need - set(signed)}"
    if rec.header("content-length") is not None:
        assert "content-length" in signed, signed
    path, _, query = rec.target.partition("?")
    canonical = ac.canonical_request(rec.method, path, query, rec.headers, signed, payload)
    key = ac.signing_key(CAPTURE_SECRET_KEY, date, region)
    scope = ac.credential_scope(date, region)
    want_seed = ac._hmac(key, ac.string_to_sign(amz_date, scope, canonical)).hex()
    assert seed == want_seed, f"upstream seed signature does not verify\n{canonical}"
    assert seed != client.seed_signature

    chunks, trailers = ac.decode(rec.body)
    assert b"".join(d for d, _ in chunks) == data, "forwarded chunk data differ from the client's"
    assert all(len(d) >= ac.MIN_CHUNK for d, _ in chunks[:-2]), [len(d) for d, _ in chunks]
    prev = seed
    for i, (d, sig) in enumerate(chunks):
        want = ac.chunk_signature(key, amz_date, scope, prev, d)
        assert sig == want, f"upstream chunk {i} ({len(d)} bytes) signature does not verify"
        assert sig not in client.chunk_signatures, "apgate forwarded the client's chunk signature"
        prev = sig
    if client.trailers:
        *values, (sig_name, trailer_sig) = trailers
        assert values == client.trailers, trailers
        assert sig_name == "x-amz-trailer-signature"
        assert trailer_sig == ac.trailer_signature(key, amz_date, scope, prev, values), \
            "upstream trailer signature does not verify"
    else:
        assert trailers == []


@pytest.mark.parametrize("trailer", [None, "x-amz-checksum-crc32"])
def test_verify_forwarded_self_check(trailer):
    """The capture checks themselves (no server): a correct re-signing under the gateway's key
    passes; the client's request forwarded as is, or a re-signing with one bad chunk, fails."""
    data = os.urandom(BODY_SIZE)
    client = ac.encode("PUT", "127.0.0.1:1", target_of("Bob/self check.bin"), access_key="AKIDCLIENT",
                       secret_key="client-secret", region=REGION, body=data, chunk_size=CHUNK, trailer=trailer)
    good = ac.encode("PUT", BOB_AP_HOST, "/" + s3wire.encode_key("Bob/self check.bin"),
                     access_key=CAPTURE_ACCESS_KEY, secret_key=CAPTURE_SECRET_KEY, region=REGION, body=data,
                     chunk_size=CHUNK, trailer=trailer, amz_date=client.amz_date)
    verify_forwarded(Captured("PUT", good.target, good.headers, good.body, True), client, data)

    passthrough = [(k, BOB_AP_HOST if k == "Host" else v) for k, v in client.headers]
    with pytest.raises(AssertionError):
        verify_forwarded(Captured("PUT", good.target, passthrough, client.body, True), client, data)
    chunks = list(good.chunks)
    chunks[2] = (chunks[2][0], flip_hex(chunks[2][1]))
    with pytest.raises(AssertionError):
        verify_forwarded(Captured("PUT", good.target, good.headers, good.reframe(chunks=chunks), True), client, data)
    if trailer:
        with pytest.raises(AssertionError):
            bad = good.reframe(trailer_sig=flip_hex(good.trailer_signature))
            verify_forwarded(Captured("PUT", good.target, good.headers, bad, True), client, data)


@pytest.mark.parametrize("trailer,te_chunked", [
    (None, False), ("x-amz-checksum-crc32", False), ("x-amz-checksum-crc32", True),
], ids=["plain", "trailer", "trailer-transfer-encoding"])
def test_forwarded_body_is_re_signed_with_gateway_key(capture_apgate, capture, trailer, te_chunked):
    key = unique_key("re signed+ü.bin")
    data = os.urandom(BODY_SIZE)
    req = bob_encode(capture_apgate, key, data, trailer=trailer, content_length=not te_chunked)
    mark = capture.mark()
    out = send_signed(capture_apgate, req, te_chunked=te_chunked)
    assert out.status == 200, f"{out}\n--- apgate log\n{capture_apgate.log()[-3000:]}"
    recs = capture.since(mark)
    assert len(recs) == 1, recs
    verify_forwarded(recs[0], req, data)


@pytest.mark.parametrize("what,trailer", [
    ("middle-chunk-signature", None),
    ("final-chunk-signature", None),
    ("middle-chunk-data", "x-amz-checksum-crc32"),
    ("trailer-signature", "x-amz-checksum-crc32"),
])
def test_forged_body_never_completes_upstream(capture_apgate, capture, what, trailer):
    """A forged element must abort the upstream request: the capture server may see a partial
    request (streaming) or none at all, never a complete one."""
    key = unique_key()
    req = bob_encode(capture_apgate, key, os.urandom(BODY_SIZE), trailer=trailer)
    mark = capture.mark()
    out = send_signed(capture_apgate, req, _tampered(req, what))
    assert (out.status, out.code()) == (403, "SignatureDoesNotMatch"), str(out)
    recs = capture.since(mark)
    complete = [r for r in recs if r.complete]
    assert not complete, (
        f"apgate completed the upstream request for a forged body ({what}): "
        f"{[(r.method, r.target, len(r.body)) for r in complete]}"
    )
