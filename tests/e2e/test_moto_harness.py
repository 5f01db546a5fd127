"""The moto harness itself: auth enforced, access points reachable by host, and valid
SigV4 signatures on awkward keys/queries accepted (moto_launcher's raw-URI fix), and
access point object ARNs accepted as copy sources (its copy-source fix).

Requests go straight to moto with Host = the access point's host name
(``{name}-{account}.s3-accesspoint.us-east-1.amazonaws.com``), signed with botocore's
S3SigV4Auth. (boto3 with Bucket=<AP ARN> and endpoint_url=http://127.0.0.1:PORT builds
``http://bob-access-point-test-123456789012.127.0.0.1:PORT/...``, which does not resolve.)
"""

from __future__ import annotations

import datetime
import uuid
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, unquote, urlparse

import pytest

import s3wire
from conftest import ACCOUNT, APP_AP_HOST, BOB_AP, BOB_AP_HOST, BUCKET, REGION
from moto_launcher import (
    AccessPointCopySource,
    parse_access_point_copy_source,
    translate_access_point_copy_source,
)

AWKWARD_KEYS = [
    "Bob/a b.txt",
    "Bob/plus+sign",
    "Bob/ünï.txt",
    "Bob/x=y:z~!'()",
    "Bob//double",
    "Bob/a%20literal-percent",
    "Bob/mixed dir/sp ace+plus&ü~.bin",
]


def ap_request(moto, method, key=None, *, host=BOB_AP_HOST, query=None, body=b"",
               secret=None, access_key=None, headers=None):
    target = "/" + (s3wire.encode_key(key) if key is not None else "")
    if query:
        target += "?" + s3wire.encode_query(query)
    return s3wire.signed_request(
        moto.addr, method, host, target,
        access_key=access_key or moto.access_key_id,
        secret_key=secret or moto.secret_access_key,
        body=body, headers=headers,
    )


def test_auth_is_enforced_unsigned_request_rejected(moto):
    r = s3wire.send(moto.addr, "GET", "/app/seed.txt", {"Host": APP_AP_HOST})
    # moto answers an unsigned request with a bare 403 (empty body)
    assert r.status == 403, r.body
    assert b"seeded by setup" not in r.body


def test_seed_object_readable_through_app_access_point(moto):
    r = ap_request(moto, "GET", "app/seed.txt", host=APP_AP_HOST)
    assert r.status == 200, r.body
    assert r.body == b"seeded by setup"


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_put_get_awkward_key_through_access_point(moto, moto_s3, key):
    body = f"body of {key} {uuid.uuid4()}".encode()
    mark = moto.log_mark()
    put = ap_request(moto, "PUT", key, body=body)
    assert put.status == 200, put.body
    got = ap_request(moto, "GET", key)
    assert got.status == 200, got.body
    assert got.body == body
    # the request log saw exactly the wire target we sent, with the AP host
    entries = moto.log_since(mark)
    assert [(e["method"], e["host"], e["raw_uri"], e["authorization_present"]) for e in entries] == [
        ("PUT", BOB_AP_HOST, "/" + s3wire.encode_key(key), True),
        ("GET", BOB_AP_HOST, "/" + s3wire.encode_key(key), True),
    ]
    # and the object landed in the access point's bucket under that exact key
    assert moto_s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body


def test_list_objects_v2_prefix_delimiter_encoding_url(moto):
    for key in ["Bob/list-a.txt", "Bob/list b+c.txt", "Bob/sub/one", "Bob/sub/two", "Bob//double"]:
        assert ap_request(moto, "PUT", key, body=b"x").status == 200
    r = ap_request(moto, "GET", query=[("list-type", "2"), ("prefix", "Bob/"),
                                       ("delimiter", "/"), ("encoding-type", "url")])
    assert r.status == 200, r.body
    keys, prefixes, enc = s3wire.list_v2_result(r.body)
    assert enc == "url"
    assert {"Bob/list-a.txt", "Bob/list b+c.txt"} <= set(keys)
    assert all(k.startswith("Bob/") and "/" not in k[len("Bob/"):] for k in keys), keys
    assert {"Bob/sub/", "Bob//"} <= set(prefixes)
    assert not any(k.startswith("app/") for k in keys)


def test_list_objects_v2_awkward_prefix(moto):
    for key in ["Bob/ü dir+/k1", "Bob/ü dir+/k2", "Bob/ü dirX/k3"]:
        assert ap_request(moto, "PUT", key, body=b"x").status == 200
    r = ap_request(moto, "GET", query=[("list-type", "2"), ("prefix", "Bob/ü dir+/"),
                                       ("encoding-type", "url")])
    assert r.status == 200, r.body
    keys, _, _ = s3wire.list_v2_result(r.body)
    assert keys == ["Bob/ü dir+/k1", "Bob/ü dir+/k2"]


def test_wrong_secret_is_signature_does_not_match(moto):
    r = ap_request(moto, "GET", "Bob/a b.txt", secret="wrong" + moto.secret_access_key[5:])
    assert r.status == 403, r.body
    assert r.error()["Code"] == "SignatureDoesNotMatch"


def test_wrong_secret_on_plain_key_is_signature_does_not_match(moto):
    r = ap_request(moto, "GET", "app/seed.txt", host=APP_AP_HOST, secret="x" * 40)
    assert r.status == 403, r.body
    assert r.error()["Code"] == "SignatureDoesNotMatch"


def test_unknown_access_key_is_invalid_access_key_id(moto):
    r = ap_request(moto, "GET", "app/seed.txt", host=APP_AP_HOST,
                   access_key="AKIAUNKNOWNUNKNOWN00", secret="x" * 40)
    assert r.status == 403, r.body
    assert r.error()["Code"] == "InvalidAccessKeyId"


def test_fix_does_not_weaken_verification_path_tampered(moto):
    """Signed for one key, sent with another: must not verify."""
    signed_target = "/" + s3wire.encode_key("Bob/a b.txt")
    hdrs = s3wire.sign("GET", BOB_AP_HOST, signed_target,
                       access_key=moto.access_key_id, secret_key=moto.secret_access_key)
    r = s3wire.send(moto.addr, "GET", "/" + s3wire.encode_key("Bob/a+b.txt"), hdrs)
    assert r.status == 403, r.body
    assert r.error()["Code"] == "SignatureDoesNotMatch"


def test_fix_does_not_weaken_verification_query_tampered(moto):
    q = s3wire.encode_query([("list-type", "2"), ("prefix", "Bob/")])
    hdrs = s3wire.sign("GET", BOB_AP_HOST, "/?" + q,
                       access_key=moto.access_key_id, secret_key=moto.secret_access_key)
    r = s3wire.send(moto.addr, "GET", "/?" + q.replace("Bob", "app"), hdrs)
    assert r.status == 403, r.body
    assert r.error()["Code"] == "SignatureDoesNotMatch"


def test_fix_does_not_weaken_verification_host_changed(moto):
    target = "/" + s3wire.encode_key("app/seed.txt")
    hdrs = s3wire.sign("GET", APP_AP_HOST, target,
                       access_key=moto.access_key_id, secret_key=moto.secret_access_key)
    hdrs["Host"] = BOB_AP_HOST
    r = s3wire.send(moto.addr, "GET", target, hdrs)
    assert r.status == 403, r.body
    assert r.error()["Code"] == "SignatureDoesNotMatch"


def test_request_log_records_unsigned_requests_too(moto):
    mark = moto.log_mark()
    s3wire.send(moto.addr, "GET", "/some/unsigned%20path?x=%2F", {"Host": BOB_AP_HOST})
    assert moto.log_since(mark) == [{
        "method": "GET", "host": BOB_AP_HOST,
        "raw_uri": "/some/unsigned%20path?x=%2F", "authorization_present": False,
    }]


def test_signing_clock_override_is_used(moto):
    """s3wire.sign(when=...) really signs with that time (the gateway's clock-skew test
    relies on it): the header carries it and the signature made with it verifies."""
    when = (datetime.datetime.now(datetime.timezone.utc)
            - datetime.timedelta(minutes=3)).replace(microsecond=0)
    hdrs = s3wire.sign("GET", APP_AP_HOST, "/app/seed.txt", when=when,
                       access_key=moto.access_key_id, secret_key=moto.secret_access_key)
    assert hdrs["X-Amz-Date"] == when.strftime("%Y%m%dT%H%M%SZ")
    assert f"/{when:%Y%m%d}/us-east-1/s3/aws4_request" in hdrs["Authorization"]
    r = s3wire.send(moto.addr, "GET", "/app/seed.txt", hdrs)
    assert r.status == 200, r.body
    assert r.body == b"seeded by setup"


# ------------------------------------------------ access point ARNs as copy sources
#
# moto_launcher's second fix: x-amz-copy-source may be the URL-encoded access point
# object ARN (what AWS SDKs and apgate send for access points), optionally followed by
# an unencoded ?versionId=. The translation itself is a pure function, tested directly.

COPY_KEYS = ["Bob/src dir/a+b ü.txt", "Bob/odd?q=1;p#f%41 ~&=.bin"]


def ap_object_arn(key, name=BOB_AP, account=ACCOUNT, sep="/"):
    return f"arn:aws:s3:{REGION}:{account}:accesspoint{sep}{name}/object/{key}"


def copy_source(source, version_id=None):
    """x-amz-copy-source as SDKs send it: urlencoded (':' too, '/' kept) + ?versionId."""
    value = s3wire.encode_key(source)
    return value if version_id is None else f"{value}?versionId={version_id}"


def moto_parses(value):
    """What moto's copy_object / upload_part_copy make of an x-amz-copy-source value."""
    parsed = urlparse(value)
    bucket, key = unquote(parsed.path).lstrip("/").split("/", 1)
    return bucket, key, parse_qs(parsed.query).get("versionId", [None])[0]


def put_via_ap(moto, key, body):
    r = ap_request(moto, "PUT", key, body=body)
    assert r.status == 200, r.body
    return r


def get_via_ap(moto, key):
    r = ap_request(moto, "GET", key)
    assert r.status == 200, r.body
    return r.body


def xml_text(body, tag):
    for el in ET.fromstring(body).iter():
        if el.tag.rsplit("}", 1)[-1] == tag:
            return el.text
    raise AssertionError(f"no <{tag}> in {body[:300]!r}")


# pure translation function

def test_parse_example_from_sdk_with_version_suffix():
    header = ("arn%3Aaws%3As3%3Aus-east-1%3A123456789012%3Aaccesspoint/bob-access-point-test"
              "/object/Bob/src%20dir/a%2Bb.txt?versionId=XYZ")
    assert parse_access_point_copy_source(header) == AccessPointCopySource(
        partition="aws", region="us-east-1", account="123456789012",
        name="bob-access-point-test", key="Bob/src dir/a+b.txt", query="versionId=XYZ",
    )


@pytest.mark.parametrize("sep", ["/", ":"])
@pytest.mark.parametrize("version_id", [None, "XYZ", "3/L4kqtJl+cp=Z"])
@pytest.mark.parametrize("key", COPY_KEYS + ["Bob//double/", "Bob/percent%2Fliteral", "Bob/ü/ö"])
def test_translate_round_trips_through_motos_parser(key, version_id, sep):
    header = copy_source(ap_object_arn(key, sep=sep))
    if version_id is not None:
        # the suffix is sent unencoded after the encoded source
        header += "?versionId=" + s3wire.encode_query([("v", version_id)])[2:]
    seen = []

    def resolve(src):
        seen.append(src)
        return BUCKET

    parsed, translated = translate_access_point_copy_source(header, resolve)
    assert seen == [parsed]
    assert (parsed.name, parsed.account, parsed.key) == (BOB_AP, ACCOUNT, key)
    assert moto_parses(translated) == (BUCKET, key, version_id)


def test_translate_accepts_unencoded_arn_and_leading_slash():
    for header in [ap_object_arn("Bob/k.txt"), "/" + copy_source(ap_object_arn("Bob/k.txt"))]:
        parsed, translated = translate_access_point_copy_source(header, lambda src: BUCKET)
        assert parsed is not None and parsed.key == "Bob/k.txt"
        assert moto_parses(translated) == (BUCKET, "Bob/k.txt", None)


@pytest.mark.parametrize("header", [
    f"{BUCKET}/Bob/k.txt",
    f"/{BUCKET}/Bob/k.txt?versionId=abc",
    s3wire.encode_key(f"{BUCKET}/Bob/arn:aws:s3:{REGION}:{ACCOUNT}:accesspoint/x/object/k"),
    s3wire.encode_key(f"arn:aws:s3:{REGION}:{ACCOUNT}:accesspoint/{BOB_AP}"),  # no /object/
    s3wire.encode_key(f"arn:aws:s3-object-lambda:{REGION}:{ACCOUNT}:accesspoint/x/object/k"),
    s3wire.encode_key(f"arn:aws:s3-outposts:{REGION}:{ACCOUNT}:outpost/op-1/accesspoint/x/object/k"),
])
def test_translate_leaves_other_copy_sources_alone(header):
    def resolve(src):
        raise AssertionError("must not be looked up")

    assert translate_access_point_copy_source(header, resolve) == (None, None)


def test_translate_unknown_access_point():
    parsed, translated = translate_access_point_copy_source(
        copy_source(ap_object_arn("Bob/k", name="nope")), lambda src: None)
    assert parsed.name == "nope" and translated is None


# against moto, auth enforced

@pytest.mark.parametrize("src_key", COPY_KEYS)
def test_copy_object_with_access_point_arn_source(moto, moto_s3, src_key):
    body = f"copy me {uuid.uuid4()} ü".encode()
    put_via_ap(moto, src_key, body)
    dst_key = f"Bob/copied/{uuid.uuid4()} + ü.txt"
    r = ap_request(moto, "PUT", dst_key,
                   headers={"x-amz-copy-source": copy_source(ap_object_arn(src_key))})
    assert r.status == 200, r.body
    assert b"CopyObjectResult" in r.body
    assert get_via_ap(moto, dst_key) == body
    assert moto_s3.get_object(Bucket=BUCKET, Key=dst_key)["Body"].read() == body


def test_copy_object_with_colon_form_arn(moto):
    src_key, dst_key = "Bob/colon src.txt", "Bob/colon dst.txt"
    put_via_ap(moto, src_key, b"colon form")
    r = ap_request(moto, "PUT", dst_key,
                   headers={"x-amz-copy-source": copy_source(ap_object_arn(src_key, sep=":"))})
    assert r.status == 200, r.body
    assert get_via_ap(moto, dst_key) == b"colon form"


def test_copy_object_with_version_id_suffix(moto):
    """The bucket is not versioned: its objects have version id "null". The suffix reaches
    moto's version lookup: versionId=null copies, an unknown versionId does not."""
    src_key = "Bob/versioned src ü+.txt"
    put_via_ap(moto, src_key, b"version null")
    arn = ap_object_arn(src_key)

    ok = ap_request(moto, "PUT", "Bob/from null version.txt",
                    headers={"x-amz-copy-source": copy_source(arn, version_id="null")})
    assert ok.status == 200, ok.body
    assert get_via_ap(moto, "Bob/from null version.txt") == b"version null"

    bad = ap_request(moto, "PUT", "Bob/from missing version.txt",
                     headers={"x-amz-copy-source": copy_source(arn, version_id="nosuchversion")})
    assert 400 <= bad.status < 500, (bad.status, bad.body)
    assert bad.error()["Code"] == "NoSuchVersion"
    assert ap_request(moto, "GET", "Bob/from missing version.txt").status == 404


def test_upload_part_copy_with_access_point_arn_source(moto, moto_s3):
    src_key = "Bob/mpu src dir/sp ace+plus ü.bin"
    body = bytes(range(256)) * 4096 + b"tail"  # ~1 MiB, single (last) part
    put_via_ap(moto, src_key, body)
    dst_key = "Bob/mpu dst/ü + part.bin"

    created = ap_request(moto, "POST", dst_key, query=[("uploads", "")])
    assert created.status == 200, created.body
    upload_id = xml_text(created.body, "UploadId")

    part = ap_request(moto, "PUT", dst_key,
                      query=[("partNumber", "1"), ("uploadId", upload_id)],
                      headers={"x-amz-copy-source": copy_source(ap_object_arn(src_key))})
    assert part.status == 200, part.body
    etag = xml_text(part.body, "ETag")

    complete_xml = (
        "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber>"
        f"<ETag>{etag}</ETag></Part></CompleteMultipartUpload>"
    ).encode()
    done = ap_request(moto, "POST", dst_key, query=[("uploadId", upload_id)], body=complete_xml)
    assert done.status == 200, done.body
    assert b"<CompleteMultipartUpload" in done.body  # moto: ...Response, S3: ...Result

    assert get_via_ap(moto, dst_key) == body
    assert moto_s3.get_object(Bucket=BUCKET, Key=dst_key)["Body"].read() == body


@pytest.mark.parametrize("arn", [
    ap_object_arn("Bob/x.txt", name="no-such-access-point"),
    ap_object_arn("Bob/x.txt", account="210987654321"),
])
def test_copy_source_with_unknown_access_point_is_client_error(moto, arn):
    put_via_ap(moto, "Bob/x.txt", b"x")
    r = ap_request(moto, "PUT", "Bob/never.txt", headers={"x-amz-copy-source": copy_source(arn)})
    assert 400 <= r.status < 500, (r.status, r.body)
    assert r.error()["Code"] == "NoSuchBucket"

    created = ap_request(moto, "POST", "Bob/never-mpu.txt", query=[("uploads", "")])
    upload_id = xml_text(created.body, "UploadId")
    part = ap_request(moto, "PUT", "Bob/never-mpu.txt",
                      query=[("partNumber", "1"), ("uploadId", upload_id)],
                      headers={"x-amz-copy-source": copy_source(arn)})
    assert 400 <= part.status < 500, (part.status, part.body)
    assert part.error()["Code"] == "NoSuchBucket"
    assert ap_request(moto, "GET", "Bob/never.txt").status == 404


@pytest.mark.parametrize("signed_src, sent_src", [
    (ap_object_arn("Bob/tamper a.txt"), ap_object_arn("Bob/tamper b.txt")),
    (f"{BUCKET}/Bob/tamper a.txt", ap_object_arn("Bob/tamper b.txt")),
    (ap_object_arn("Bob/tamper a.txt"), f"{BUCKET}/Bob/tamper b.txt"),
])
def test_copy_source_tampered_after_signing_is_signature_does_not_match(moto, signed_src, sent_src):
    """The signature is checked over the copy source as received, before (and unaffected
    by) the ARN translation."""
    put_via_ap(moto, "Bob/tamper a.txt", b"a")
    put_via_ap(moto, "Bob/tamper b.txt", b"b")
    target = "/" + s3wire.encode_key("Bob/tamper dst.txt")
    hdrs = s3wire.sign("PUT", BOB_AP_HOST, target,
                       access_key=moto.access_key_id, secret_key=moto.secret_access_key,
                       headers={"x-amz-copy-source": copy_source(signed_src)})
    assert "x-amz-copy-source" in hdrs["Authorization"]  # it is a signed header
    hdrs["x-amz-copy-source"] = copy_source(sent_src)
    r = s3wire.send(moto.addr, "PUT", target, hdrs)
    assert r.status == 403, r.body
    assert r.error()["Code"] == "SignatureDoesNotMatch"
    assert ap_request(moto, "GET", "Bob/tamper dst.txt").status == 404


@pytest.mark.parametrize("leading_slash", ["", "/"])
def test_plain_bucket_key_copy_source_still_works(moto, leading_slash):
    src_key = "Bob/plain src+ü dir/a b.txt"
    put_via_ap(moto, src_key, b"plain source")
    dst_key = f"Bob/plain dst {len(leading_slash)}.txt"
    r = ap_request(moto, "PUT", dst_key,
                   headers={"x-amz-copy-source": leading_slash + copy_source(f"{BUCKET}/{src_key}")})
    assert r.status == 200, r.body
    assert get_via_ap(moto, dst_key) == b"plain source"


def test_plain_copy_source_to_missing_bucket_still_no_such_bucket(moto):
    r = ap_request(moto, "PUT", "Bob/never-plain.txt",
                   headers={"x-amz-copy-source": copy_source("no-such-bucket-xyz/Bob/a.txt")})
    assert r.status == 404, r.body
    assert r.error()["Code"] == "NoSuchBucket"
