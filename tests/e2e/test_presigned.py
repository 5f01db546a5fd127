"""Presigned (SigV4 query-auth) URLs made by botocore, an independent signer, used through apgate.

apgate verifies the query signature against the key it issued, then forwards the request re-signed
with header auth (moto, with auth enforced, refuses query auth on its own).
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
import uuid

import boto3
import pytest
from botocore.config import Config

BUCKET = "access-point-test"


@pytest.fixture(scope="module")
def presigner(apgate):
    return boto3.client(
        "s3",
        endpoint_url=apgate.shared_endpoint,
        region_name=apgate.region,
        aws_access_key_id=apgate.bob_access_key_id,
        aws_secret_access_key=apgate.bob_secret_access_key,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def fetch(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, bytes]:
    # urllib defaults a body's Content-Type to a form type, and moto's web layer swallows form
    # bodies (real S3 does not); send what an uploader would.
    headers = {"Content-Type": "application/octet-stream"} if data is not None else {}
    req = urllib.request.Request(url, method=method, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def code_of(body: bytes) -> str | None:
    m = re.search(rb"<Code>([^<]+)</Code>", body)
    return m.group(1).decode() if m else None


def test_presigned_put_then_get_round_trip(presigner, moto):
    key = f"Bob/presigned/{uuid.uuid4().hex} a+b ü.txt"
    body = b"uploaded through a presigned URL"
    put_url = presigner.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=300)
    assert "X-Amz-Signature=" in put_url
    mark = moto.log_mark()
    status, _ = fetch(put_url, "PUT", body)
    assert status == 200
    upstream = moto.log_since(mark)
    assert len(upstream) == 1 and upstream[0]["authorization_present"], upstream
    assert "X-Amz-" not in upstream[0]["raw_uri"], "query auth must not be forwarded"

    get_url = presigner.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=300)
    status, got = fetch(get_url)
    assert (status, got) == (200, body)


def test_presigned_url_outside_route_is_denied(presigner, moto):
    url = presigner.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "app/seed.txt"}, ExpiresIn=300)
    mark = moto.log_mark()
    status, body = fetch(url)
    assert (status, code_of(body)) == (403, "AccessDenied")
    assert moto.log_since(mark) == []


def test_tampered_presigned_url_is_refused(presigner, moto):
    url = presigner.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "Bob/x"}, ExpiresIn=300)
    mark = moto.log_mark()
    status, body = fetch(url.replace("/Bob/x?", "/Bob/y?"))
    assert (status, code_of(body)) == (403, "SignatureDoesNotMatch")
    status, body = fetch(re.sub(r"X-Amz-Expires=\d+", "X-Amz-Expires=604801", url))
    assert (status, code_of(body)) == (400, "AuthorizationQueryParametersError")
    assert moto.log_since(mark) == []


def test_expired_presigned_url_is_refused(presigner, moto):
    url = presigner.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "Bob/x"}, ExpiresIn=1)
    time.sleep(2.1)
    mark = moto.log_mark()
    status, body = fetch(url)
    assert (status, code_of(body)) == (403, "AccessDenied")
    assert b"expired" in body
    assert moto.log_since(mark) == []
