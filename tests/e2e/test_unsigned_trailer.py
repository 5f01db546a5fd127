"""`STREAMING-UNSIGNED-PAYLOAD-TRAILER` (what botocore sends over HTTPS by default): the aws-chunked
body has no signatures and carries a checksum trailer. apgate re-signs only the head and forwards the
body bytes unchanged, with Content-Length or inside HTTP chunked framing (PROTOCOL.md §5)."""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid
from urllib.parse import quote

import pytest

import aws_chunked as ac
from conftest import BUCKET
from test_signed_chunks import exchange, shared_host


def unsigned_trailer_body(data: bytes, chunk: int) -> tuple[bytes, str]:
    checksum = ac.crc32_b64(data)
    out = b""
    for i in range(0, len(data), chunk):
        piece = data[i:i + chunk]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    out += b"0\r\n" + f"x-amz-checksum-crc32:{checksum}\r\n\r\n".encode()
    return out, checksum


@pytest.mark.parametrize("te_chunked", [False, True], ids=["content-length", "http-chunked"])
def test_unsigned_trailer_body_passes_through(apgate, moto, moto_s3, te_chunked):
    key = f"Bob/unsigned-trailer-{uuid.uuid4().hex[:8]} ü.bin"
    data = os.urandom(300_000)
    wire, checksum = unsigned_trailer_body(data, 65536)
    target = f"/{BUCKET}/" + quote(key, safe="/~")
    extra = {
        "Content-Encoding": "aws-chunked",
        "X-Amz-Decoded-Content-Length": str(len(data)),
        "X-Amz-Trailer": "x-amz-checksum-crc32",
        "X-Amz-Content-SHA256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "X-Amz-Sdk-Checksum-Algorithm": "CRC32",
    }
    if not te_chunked:
        extra["Content-Length"] = str(len(wire))
    # Signed by hand: botocore's S3SigV4Auth replaces a preset payload hash with its own.
    amz_date = ac.amz_now()
    scope = ac.credential_scope(amz_date[:8], apgate.region)
    headers = [("Host", shared_host(apgate)), ("X-Amz-Date", amz_date)] + list(extra.items())
    signed = sorted(n.lower() for n, _ in headers)
    canonical = ac.canonical_request("PUT", target, "", headers, signed, "STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    key_bytes = ac.signing_key(apgate.bob_secret_access_key, amz_date[:8], apgate.region)
    signature = hmac.new(key_bytes, ac.string_to_sign(amz_date, scope, canonical).encode(), hashlib.sha256).hexdigest()
    headers.append(("Authorization", f"AWS4-HMAC-SHA256 Credential={apgate.bob_access_key_id}/{scope}, "
                                     f"SignedHeaders={';'.join(signed)}, Signature={signature}"))
    mark = moto.log_mark()
    out = exchange(apgate.shared_port, "PUT", target, headers, wire, te_chunked=te_chunked)
    assert out.status == 200, out
    upstream = moto.log_since(mark)
    assert len(upstream) == 1 and upstream[0]["method"] == "PUT", upstream
    assert moto_s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data
    # The trailer travelled end to end: moto stored the checksum the client computed.
    head = moto_s3.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert head.get("ChecksumCRC32") == checksum, head
