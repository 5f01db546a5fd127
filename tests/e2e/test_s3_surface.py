"""The S3 surface beyond plain object I/O, through apgate to moto (SigV4 + IAM enforced):
copies (rewritten to the source's access point object ARN), DeleteObjects (every key checked against
the caller's routes), GetBucketLocation (answered by apgate), and response bodies rewritten so the
client sees the bucket name it used, never the real bucket or the access point.
"""

from __future__ import annotations

import hashlib
import os
import uuid

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import ACCOUNT, BOB_AP, BOB_ALIAS_BUCKET, BUCKET

ALIAS = BOB_ALIAS_BUCKET


@pytest.fixture(scope="module")
def bob(apgate):
    return boto3.client(
        "s3",
        endpoint_url=apgate.shared_endpoint,
        region_name=apgate.region,
        aws_access_key_id=apgate.bob_access_key_id,
        aws_secret_access_key=apgate.bob_secret_access_key,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                      retries={"total_max_attempts": 1}),
    )


def unique(prefix: str = "Bob/") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}/"


def error_of(e: ClientError) -> tuple[str, int]:
    return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]


def leaks(text: str) -> list[str]:
    """Upstream names that must never reach a client of the alias bucket."""
    return [w for w in (BUCKET, BOB_AP, ACCOUNT, "s3-accesspoint") if w in text]


# ----------------------------------------------------------------------------- copies

@pytest.mark.parametrize("src_name", ["plain.txt", "sp ace+plus ü (1).txt"])
def test_copy_object_within_bobs_prefix(bob, moto, src_name):
    base = unique()
    body = os.urandom(4096)
    bob.put_object(Bucket=BUCKET, Key=base + src_name, Body=body)
    mark = moto.log_mark()
    bob.copy_object(Bucket=BUCKET, Key=base + "copy of " + src_name,
                    CopySource={"Bucket": BUCKET, "Key": base + src_name})
    upstream = moto.log_since(mark)
    assert len(upstream) == 1 and upstream[0]["method"] == "PUT", upstream
    assert bob.get_object(Bucket=BUCKET, Key=base + "copy of " + src_name)["Body"].read() == body


def test_copy_between_client_facing_names_of_the_same_prefix(bob):
    base = unique()
    bob.put_object(Bucket=ALIAS, Key=base + "a", Body=b"via alias")
    bob.copy_object(Bucket=BUCKET, Key=base + "b", CopySource={"Bucket": ALIAS, "Key": base + "a"})
    assert bob.get_object(Bucket=BUCKET, Key=base + "b")["Body"].read() == b"via alias"


def test_copy_from_a_source_without_read_route_is_denied(bob, moto):
    mark = moto.log_mark()
    with pytest.raises(ClientError) as e:
        bob.copy_object(Bucket=BUCKET, Key=unique() + "stolen",
                        CopySource={"Bucket": BUCKET, "Key": "app/seed.txt"})
    assert error_of(e.value) == ("AccessDenied", 403)
    assert moto.log_since(mark) == []


def test_copy_to_a_destination_without_write_route_is_denied(bob, moto):
    mark = moto.log_mark()
    with pytest.raises(ClientError) as e:
        bob.copy_object(Bucket=BUCKET, Key="app/planted", CopySource={"Bucket": BUCKET, "Key": "Bob/x"})
    assert error_of(e.value) == ("AccessDenied", 403)
    assert moto.log_since(mark) == []


def test_copy_source_must_be_bucket_and_key(apgate, bob, moto):
    mark = moto.log_mark()
    with pytest.raises(ClientError) as e:
        bob.copy_object(Bucket=BUCKET, Key=unique() + "x", CopySource="nokey")
    assert error_of(e.value) == ("InvalidArgument", 400)
    assert moto.log_since(mark) == []


def test_upload_part_copy(bob):
    base = unique()
    body = os.urandom(6 * 1024 * 1024)
    bob.put_object(Bucket=BUCKET, Key=base + "src.bin", Body=body)
    mpu = bob.create_multipart_upload(Bucket=BUCKET, Key=base + "dst.bin")
    part = bob.upload_part_copy(Bucket=BUCKET, Key=base + "dst.bin", UploadId=mpu["UploadId"], PartNumber=1,
                                CopySource={"Bucket": BUCKET, "Key": base + "src.bin"})
    bob.complete_multipart_upload(
        Bucket=BUCKET, Key=base + "dst.bin", UploadId=mpu["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["CopyPartResult"]["ETag"]}]})
    got = bob.get_object(Bucket=BUCKET, Key=base + "dst.bin")["Body"].read()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(body).hexdigest()


# ----------------------------------------------------------------------------- DeleteObjects

def test_delete_objects_within_route(bob, moto_s3):
    base = unique()
    keys = [base + k for k in ("a", "b c", "d&e<f>")]
    for k in keys:
        bob.put_object(Bucket=BUCKET, Key=k, Body=b"x")
    r = bob.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys]})
    assert sorted(d["Key"] for d in r.get("Deleted", [])) == sorted(keys)
    assert moto_s3.list_objects_v2(Bucket=BUCKET, Prefix=base)["KeyCount"] == 0


def test_delete_objects_with_a_key_outside_route_is_denied_whole(bob, moto, moto_s3):
    base = unique()
    bob.put_object(Bucket=BUCKET, Key=base + "keep", Body=b"x")
    mark = moto.log_mark()
    with pytest.raises(ClientError) as e:
        bob.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": base + "keep"}, {"Key": "app/seed.txt"}]})
    assert error_of(e.value) == ("AccessDenied", 403)
    assert moto.log_since(mark) == []
    assert moto_s3.head_object(Bucket=BUCKET, Key="app/seed.txt")["ContentLength"] > 0
    assert moto_s3.head_object(Bucket=BUCKET, Key=base + "keep")["ContentLength"] == 1


# ----------------------------------------------------------------------------- answered by apgate

def test_get_bucket_location_is_the_access_point_region(bob, moto):
    mark = moto.log_mark()
    r = bob.get_bucket_location(Bucket=BUCKET)
    assert r["LocationConstraint"] is None  # us-east-1, as S3 answers it
    assert moto.log_since(mark) == []


# ----------------------------------------------------------------------------- response rewriting

def test_listing_shows_the_client_facing_bucket(bob):
    base = unique()
    bob.put_object(Bucket=ALIAS, Key=base + "k", Body=b"x")
    for call in (bob.list_objects_v2, bob.list_objects):
        r = call(Bucket=ALIAS, Prefix=base)
        assert r["Name"] == ALIAS
        assert [o["Key"] for o in r["Contents"]] == [base + "k"]


def test_multipart_responses_show_the_client_facing_bucket_and_url(apgate, bob):
    key = unique() + "mp key+ü.bin"
    mpu = bob.create_multipart_upload(Bucket=ALIAS, Key=key)
    assert mpu["Bucket"] == ALIAS
    part = bob.upload_part(Bucket=ALIAS, Key=key, UploadId=mpu["UploadId"], PartNumber=1, Body=b"p" * 1024)
    parts = bob.list_parts(Bucket=ALIAS, Key=key, UploadId=mpu["UploadId"])
    assert parts["Bucket"] == ALIAS
    done = bob.complete_multipart_upload(
        Bucket=ALIAS, Key=key, UploadId=mpu["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    assert done["Bucket"] == ALIAS
    assert done["Location"].startswith(f"{apgate.shared_endpoint}/{ALIAS}/"), done["Location"]
    assert not leaks(done["Location"]), done["Location"]
    assert bob.get_object(Bucket=ALIAS, Key=key)["Body"].read() == b"p" * 1024


def test_upstream_error_bodies_pass_the_rewriter_intact(apgate, bob):
    """Upstream XML errors go through apgate's response rewriter. moto's error bodies name no
    bucket, so this shows the rewriter keeps them intact; replacing a bucket-revealing error body is
    tested in tests/in_process/proxy.rs against a scripted upstream."""
    import http.client
    import s3wire
    key = unique() + "missing"
    target = f"/{ALIAS}/{key}"
    headers = s3wire.sign("GET", f"127.0.0.1:{apgate.shared_port}", target,
                          access_key=apgate.bob_access_key_id, secret_key=apgate.bob_secret_access_key)
    conn = http.client.HTTPConnection("127.0.0.1", apgate.shared_port, timeout=10)
    conn.request("GET", target, headers=headers)
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    assert resp.status == 404, body
    assert "NoSuchKey" in body
    assert not leaks(body), body
