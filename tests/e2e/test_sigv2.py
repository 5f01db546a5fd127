"""Legacy SigV2 through apgate (the shared listener enables `sigv2`): s3cmd --signature-v2, boto3
with HmacV1 header auth, and botocore's default presigned URLs (SigV2 query auth) fetched with curl.
apgate verifies SigV2 against the key it issued and re-signs upstream with SigV4 (moto, with auth
enforced, checks that).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

import test_clients
from conftest import BUCKET

s3cmd_v4 = test_clients.s3cmd  # noqa: F401  (module fixture reused below)


def unique() -> str:
    return f"Bob/v2-{uuid.uuid4().hex[:8]}/"


@pytest.fixture(scope="module")
def s3cmd_v2(s3cmd_v4):
    def run(*args: str, check: bool = True):
        return s3cmd_v4("--signature-v2", *args, check=check)
    return run


@pytest.fixture(scope="module")
def bob_v2(apgate):
    return boto3.client(
        "s3", endpoint_url=apgate.shared_endpoint, region_name=apgate.region,
        aws_access_key_id=apgate.bob_access_key_id, aws_secret_access_key=apgate.bob_secret_access_key,
        config=Config(signature_version="s3", s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
    )


@pytest.fixture(scope="module")
def presigner_default(apgate):
    # No signature_version: botocore presigns with SigV2 by default (PROTOCOL.md §4.3).
    return boto3.client(
        "s3", endpoint_url=apgate.shared_endpoint, region_name=apgate.region,
        aws_access_key_id=apgate.bob_access_key_id, aws_secret_access_key=apgate.bob_secret_access_key,
        config=Config(s3={"addressing_style": "path"}),
    )


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=30)


def test_s3cmd_signature_v2_put_get_ls_delete(s3cmd_v2, moto, tmp_path: Path):
    base = unique()
    src = tmp_path / "v2 file+x.bin"
    src.write_bytes(os.urandom(5000))
    mark = moto.log_mark()
    s3cmd_v2("put", str(src), f"s3://{BUCKET}/{base}v2 file+x.bin")
    upstream = moto.log_since(mark)
    assert upstream and all(e["authorization_present"] for e in upstream), upstream
    out = tmp_path / "back.bin"
    s3cmd_v2("get", f"s3://{BUCKET}/{base}v2 file+x.bin", str(out))
    assert out.read_bytes() == src.read_bytes()
    listing = s3cmd_v2("ls", f"s3://{BUCKET}/{base}").stdout
    assert "v2 file+x.bin" in listing, listing
    s3cmd_v2("del", f"s3://{BUCKET}/{base}v2 file+x.bin")
    assert f"{base}" not in s3cmd_v2("ls", f"s3://{BUCKET}/{base}").stdout


def test_s3cmd_signature_v2_multipart(s3cmd_v2, moto, tmp_path: Path):
    base = unique()
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(12 * 1024 * 1024))
    mark = moto.log_mark()
    s3cmd_v2("put", "--multipart-chunk-size-mb=5", str(src), f"s3://{BUCKET}/{base}big.bin")
    test_clients.assert_multipart_upstream(moto.log_since(mark), 3)
    out = tmp_path / "big.back"
    s3cmd_v2("get", f"s3://{BUCKET}/{base}big.bin", str(out))
    assert out.read_bytes() == src.read_bytes()


def test_s3cmd_signature_v2_denied_outside_route(s3cmd_v2, moto, tmp_path: Path):
    mark = moto.log_mark()
    proc = s3cmd_v2("get", f"s3://{BUCKET}/app/seed.txt", str(tmp_path / "x"), check=False)
    assert proc.returncode != 0
    assert moto.log_since(mark) == []


def test_boto3_hmacv1_header_auth(bob_v2):
    key = unique() + "hmac v1 ü+.txt"
    bob_v2.put_object(Bucket=BUCKET, Key=key, Body=b"signed with SigV2", ContentType="text/plain")
    assert bob_v2.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"signed with SigV2"
    listed = bob_v2.list_objects(Bucket=BUCKET, Prefix=key)
    assert [o["Key"] for o in listed["Contents"]] == [key]


def test_boto3_hmacv1_wrong_secret_refused(apgate, moto):
    bad = boto3.client(
        "s3", endpoint_url=apgate.shared_endpoint, region_name=apgate.region,
        aws_access_key_id=apgate.bob_access_key_id, aws_secret_access_key="not-" + apgate.bob_secret_access_key,
        config=Config(signature_version="s3", s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
    )
    mark = moto.log_mark()
    with pytest.raises(ClientError) as e:
        bad.get_object(Bucket=BUCKET, Key="Bob/anything")
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert moto.log_since(mark) == []


def test_botocore_default_presigned_url_with_curl(bob_v2, presigner_default, moto):
    key = unique() + "presigned v2 ü.txt"
    bob_v2.put_object(Bucket=BUCKET, Key=key, Body=b"fetched by curl")
    url = presigner_default.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=300)
    assert "AWSAccessKeyId=" in url and "Signature=" in url and "X-Amz-" not in url, url
    mark = moto.log_mark()
    r = curl("-f", url)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"fetched by curl"
    upstream = moto.log_since(mark)
    assert len(upstream) == 1 and "Signature" not in upstream[0]["raw_uri"], upstream
    # Tampering with the key breaks the signature; nothing reaches moto.
    mark = moto.log_mark()
    r = curl("-o", "/dev/null", "-w", "%{http_code}", url.replace("presigned%20v2", "presigned%20v3"))
    assert r.stdout == b"403"
    assert moto.log_since(mark) == []


def test_botocore_sigv4_presigned_url_with_curl(bob_v2, apgate):
    s3v4 = boto3.client(
        "s3", endpoint_url=apgate.shared_endpoint, region_name=apgate.region,
        aws_access_key_id=apgate.bob_access_key_id, aws_secret_access_key=apgate.bob_secret_access_key,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    key = unique() + "presigned v4.txt"
    bob_v2.put_object(Bucket=BUCKET, Key=key, Body=b"v4 by curl")
    url = s3v4.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=300)
    r = curl("-f", url)
    assert r.returncode == 0 and r.stdout == b"v4 by curl", r.stderr
