"""The moto harness itself: auth enforced, access points reachable by host, and valid
SigV4 signatures on awkward keys/queries accepted (moto_launcher's raw-URI fix).

Requests go straight to moto with Host = the access point's host name
(``{name}-{account}.s3-accesspoint.us-east-1.amazonaws.com``), signed with botocore's
S3SigV4Auth. (boto3 with Bucket=<AP ARN> and endpoint_url=http://127.0.0.1:PORT builds
``http://bob-access-point-test-123456789012.127.0.0.1:PORT/...``, which does not resolve.)
"""

from __future__ import annotations

import datetime
import uuid

import pytest

import s3wire
from conftest import APP_AP_HOST, BOB_AP_HOST, BUCKET

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
