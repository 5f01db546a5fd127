"""`STREAMING-UNSIGNED-PAYLOAD-TRAILER` (what botocore sends over HTTPS by default): the aws-chunked
body has no signatures and carries a checksum trailer. apgate re-signs only the head and forwards the
body bytes unchanged, with Content-Length or inside HTTP chunked framing (PROTOCOL.md §5).

apgate reads the framing as it forwards it (red-team finding F1): S3 takes trailer lines as headers
of the request, so a trailer may carry only the checksum ``x-amz-trailer`` announced. A trailer with
anything else (an ACL, a KMS key, object lock settings, an unannounced checksum) or a chunk
extension is refused with a 400 S3 error, and the upstream request is aborted: moto is left with no
object."""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid
from urllib.parse import quote

import pytest

import aws_chunked as ac
from conftest import BUCKET
from test_signed_chunks import assert_absent_now_and_later, exchange, shared_host


def unsigned_trailer_body(data: bytes, chunk: int) -> tuple[bytes, str]:
    checksum = ac.crc32_b64(data)
    out = b""
    for i in range(0, len(data), chunk):
        piece = data[i:i + chunk]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    out += b"0\r\n" + f"x-amz-checksum-crc32:{checksum}\r\n\r\n".encode()
    return out, checksum


def put_unsigned(apgate, key: str, wire: bytes, decoded: int, *, te_chunked: bool):
    """PUTs ``wire`` as an unsigned-trailer body announcing a CRC32 trailer, as bob."""
    target = f"/{BUCKET}/" + quote(key, safe="/~")
    extra = {
        "Content-Encoding": "aws-chunked",
        "X-Amz-Decoded-Content-Length": str(decoded),
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
    return exchange(apgate.shared_port, "PUT", target, headers, wire, te_chunked=te_chunked)


@pytest.mark.parametrize("te_chunked", [False, True], ids=["content-length", "http-chunked"])
def test_unsigned_trailer_body_passes_through(apgate, moto, moto_s3, te_chunked):
    key = f"Bob/unsigned-trailer-{uuid.uuid4().hex[:8]} ü.bin"
    data = os.urandom(300_000)
    wire, checksum = unsigned_trailer_body(data, 65536)
    mark = moto.log_mark()
    out = put_unsigned(apgate, key, wire, len(data), te_chunked=te_chunked)
    assert out.status == 200, out
    upstream = moto.log_since(mark)
    assert len(upstream) == 1 and upstream[0]["method"] == "PUT", upstream
    assert moto_s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data
    # The trailer travelled end to end: moto stored the checksum the client computed.
    head = moto_s3.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert head.get("ChecksumCRC32") == checksum, head


def with_trailer(data: bytes, lines: list[str], *, first_header: str | None = None) -> bytes:
    """``data`` in 64 KiB unsigned chunks (the first chunk's size line ``first_header`` if given),
    then a trailer of ``lines``."""
    out = b""
    for i in range(0, len(data), 65536):
        piece = data[i:i + 65536]
        head = first_header if (i == 0 and first_header) else f"{len(piece):x}"
        out += f"{head}\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n" + "".join(f"{line}\r\n" for line in lines).encode() + b"\r\n"


REFUSED_TRAILERS = {
    "acl": (["{crc}", "x-amz-acl:public-read"], "MalformedTrailerError"),
    "kms-key": (["x-amz-server-side-encryption:aws:kms",
                 "x-amz-server-side-encryption-aws-kms-key-id:arn:aws:kms:us-east-1:999999999999:key/other",
                 "{crc}"], "MalformedTrailerError"),
    "object-lock": (["{crc}", "x-amz-object-lock-mode:COMPLIANCE",
                     "x-amz-object-lock-retain-until-date:2099-01-01T00:00:00Z"], "MalformedTrailerError"),
    "unannounced-checksum": (["x-amz-checksum-sha256:" + "A" * 43 + "=", "foo:bar"], "MalformedTrailerError"),
    "checksum-twice": (["{crc}", "{crc}"], "MalformedTrailerError"),
}


@pytest.mark.parametrize("te_chunked", [False, True], ids=["content-length", "http-chunked"])
@pytest.mark.parametrize("case", sorted(REFUSED_TRAILERS))
def test_trailer_lines_beyond_the_announced_checksum_refused_no_object(apgate, moto_s3, case, te_chunked):
    """F1: what the trailer carries besides the announced checksum never reaches S3; the data that
    went ahead of it never becomes an object."""
    key = f"Bob/unsigned-trailer-refused-{case}-{uuid.uuid4().hex[:8]}.bin"
    data = os.urandom(200_000)
    lines, code = REFUSED_TRAILERS[case]
    crc = f"x-amz-checksum-crc32:{ac.crc32_b64(data)}"
    wire = with_trailer(data, [line.format(crc=crc) for line in lines])
    out = put_unsigned(apgate, key, wire, len(data), te_chunked=te_chunked)
    assert out.status == 400 and out.code() == code, out
    assert b"<RequestId>" in out.body, out
    assert_absent_now_and_later(moto_s3, key)


@pytest.mark.parametrize("framing", ["chunk-extension", "chunk-signature", "short-decoded-length"])
def test_malformed_unsigned_framing_refused_no_object(apgate, moto_s3, framing):
    key = f"Bob/unsigned-trailer-framing-{framing}-{uuid.uuid4().hex[:8]}.bin"
    data = os.urandom(100_000)
    crc = f"x-amz-checksum-crc32:{ac.crc32_b64(data)}"
    decoded = len(data)
    if framing == "chunk-extension":
        wire = with_trailer(data, [crc], first_header="10000;x-amz-acl=public-read")
    elif framing == "chunk-signature":
        wire = with_trailer(data, [crc], first_header="10000;chunk-signature=" + "0" * 64)
    else:
        wire = with_trailer(data, [crc])
        decoded -= 1
    out = put_unsigned(apgate, key, wire, decoded, te_chunked=False)
    assert out.status == 400 and out.code() == "IncompleteBody", out
    assert_absent_now_and_later(moto_s3, key)


@pytest.mark.parametrize("cut", ["after-data", "after-data-crlf", "in-final-chunk"])
def test_a_body_whose_length_ends_inside_its_chunks_creates_no_object(apgate, moto_s3, cut):
    """Found by the unsigned_chunks fuzz target: with a Content-Length (which apgate's upstream
    request repeats) that ends right after a chunk's data, all of the body went out before apgate
    read that it was short, so the upstream had a complete body to read as it liked. Now a chunk
    must leave room for its CRLF and a final chunk: refused before it goes."""
    key = f"Bob/unsigned-trailer-cut-{cut}-{uuid.uuid4().hex[:8]}.bin"
    data = os.urandom(100_000)
    whole = with_trailer(data, [f"x-amz-checksum-crc32:{ac.crc32_b64(data)}"])
    end_of_data = whole.index(b"\r\n0\r\n")
    wire = whole[:{"after-data": end_of_data, "after-data-crlf": end_of_data + 2,
                   "in-final-chunk": end_of_data + 4}[cut]]
    out = put_unsigned(apgate, key, wire, len(data), te_chunked=False)
    assert out.status == 400 and out.code() == "IncompleteBody", out
    assert_absent_now_and_later(moto_s3, key)
