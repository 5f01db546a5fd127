"""End to end through apgate: clients talk only to apgate, apgate talks to moto.

Fixtures (conftest.py): ``moto`` (auth enforced, request log) and ``apgate`` (the
release binary with a generated config: shared SigV4 listener for bob, sidecar
source-address listener for app, admin port).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import subprocess
import urllib.request
import uuid
from pathlib import Path

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

import s3wire
from conftest import ACCOUNT, APP_AP, BOB_AP, BUCKET, REPO

BOB_UPSTREAM_HOST_PREFIX = f"{BOB_AP}-{ACCOUNT}."
APP_UPSTREAM_HOST_PREFIX = f"{APP_AP}-{ACCOUNT}."
NO_RETRIES = {"mode": "standard", "total_max_attempts": 1}


def client_config(**kw) -> Config:
    return Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                  retries=NO_RETRIES, connect_timeout=5, read_timeout=60, **kw)


@pytest.fixture(scope="module")
def bob(apgate):
    return boto3.client(
        "s3", endpoint_url=apgate.shared_endpoint, region_name=apgate.region,
        aws_access_key_id=apgate.bob_access_key_id,
        aws_secret_access_key=apgate.bob_secret_access_key,
        config=client_config(),
    )


@pytest.fixture(scope="module")
def app(apgate):
    """The sidecar's caller: identified by source address, sends no signature."""
    return boto3.client(
        "s3", endpoint_url=apgate.sidecar_endpoint, region_name=apgate.region,
        config=Config(s3={"addressing_style": "path"}, signature_version=UNSIGNED,
                      retries=NO_RETRIES, connect_timeout=5, read_timeout=60),
    )


def unique(prefix: str = "Bob/") -> str:
    return f"{prefix}t-{uuid.uuid4().hex[:12]}/"


def error_of(exc: ClientError) -> tuple[str, int]:
    return exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]


# ----------------------------------------------------------------------------- bob, boto3

def test_bob_put_get_head_delete(bob, moto):
    key = unique() + "obj.txt"
    body = os.urandom(1000) + b"end"
    mark = moto.log_mark()
    put = bob.put_object(Bucket=BUCKET, Key=key, Body=body)
    assert put["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert put["ETag"].strip('"') == hashlib.md5(body).hexdigest()
    # apgate went to moto through bob's access point, signed
    upstream = moto.log_since(mark)
    assert upstream, "nothing reached moto"
    assert all(e["host"].startswith(BOB_UPSTREAM_HOST_PREFIX) for e in upstream), upstream
    assert all(e["authorization_present"] for e in upstream), upstream

    got = bob.get_object(Bucket=BUCKET, Key=key)
    assert got["Body"].read() == body
    assert got["ContentLength"] == len(body)

    head = bob.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == len(body)
    assert head["ETag"] == put["ETag"]

    deleted = bob.delete_object(Bucket=BUCKET, Key=key)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as e:
        bob.get_object(Bucket=BUCKET, Key=key)
    assert error_of(e.value) == ("NoSuchKey", 404)


def test_bob_ranged_get(bob):
    key = unique() + "range.bin"
    body = b"0123456789abcdef"
    bob.put_object(Bucket=BUCKET, Key=key, Body=body)
    got = bob.get_object(Bucket=BUCKET, Key=key, Range="bytes=2-5")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["Body"].read() == b"2345"
    assert got["ContentRange"] == f"bytes 2-5/{len(body)}"
    assert got["ContentLength"] == 4


def test_bob_list_objects_v2_prefix_delimiter(bob):
    base = unique()
    for k in ["a.txt", "b c.txt", "sub/x", "sub/y", "sub2/z"]:
        bob.put_object(Bucket=BUCKET, Key=base + k, Body=b"x")

    r = bob.list_objects_v2(Bucket=BUCKET, Prefix=base, Delimiter="/")
    assert r["Name"] == BUCKET
    assert [o["Key"] for o in r.get("Contents", [])] == [base + "a.txt", base + "b c.txt"]
    assert [p["Prefix"] for p in r.get("CommonPrefixes", [])] == [base + "sub/", base + "sub2/"]
    assert r["KeyCount"] == 4

    top = bob.list_objects_v2(Bucket=BUCKET, Prefix="Bob/", Delimiter="/")
    assert top["Name"] == BUCKET
    assert base in [p["Prefix"] for p in top.get("CommonPrefixes", [])]
    for o in top.get("Contents", []):
        assert o["Key"].startswith("Bob/") and "/" not in o["Key"][len("Bob/"):], o["Key"]


AWKWARD_KEYS = [
    "a b.txt", "ünïcødé.txt", "plus+sign", "eq=sign", "co:lon", "til~de", "bang!",
    "quote'", "(paren)", "x=y:z~!'() ü+.txt", "/leading-double", "mid//double",
    "sp ace/and+plus/日本.txt",
]


@pytest.mark.parametrize("suffix", AWKWARD_KEYS)
def test_bob_awkward_keys_round_trip(bob, moto_s3, suffix):
    key = unique() + suffix
    body = f"content of {key}".encode()
    bob.put_object(Bucket=BUCKET, Key=key, Body=body)
    # stored under exactly this key in the bucket (not a re-encoded variant)
    assert moto_s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body
    assert bob.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body
    assert bob.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == len(body)
    listed = bob.list_objects_v2(Bucket=BUCKET, Prefix=key)
    assert [o["Key"] for o in listed.get("Contents", [])] == [key]
    bob.delete_object(Bucket=BUCKET, Key=key)
    assert bob.list_objects_v2(Bucket=BUCKET, Prefix=key)["KeyCount"] == 0


@pytest.mark.parametrize("op", ["get", "put", "head", "list"])
def test_bob_outside_route_is_denied_and_never_forwarded(bob, moto, op):
    mark = moto.log_mark()
    with pytest.raises(ClientError) as e:
        if op == "get":
            bob.get_object(Bucket=BUCKET, Key="app/x")
        elif op == "put":
            bob.put_object(Bucket=BUCKET, Key="app/x", Body=b"nope")
        elif op == "head":
            bob.head_object(Bucket=BUCKET, Key="app/x")
        else:
            bob.list_objects_v2(Bucket=BUCKET, Prefix="app/")
    code, status = error_of(e.value)
    assert status == 403
    if op != "head":  # HEAD errors carry no body, so no code
        assert code == "AccessDenied"
    entries = moto.log_since(mark)
    assert entries == [], f"apgate forwarded a denied request: {entries}"
    assert not any("app/x" in (x.get("raw_uri") or "") for x in entries)


# ----------------------------------------------------------------------------- auth errors

def _raw(apgate, *, access_key=None, secret=None, when=None, authorization=None):
    host = f"127.0.0.1:{apgate.shared_port}"
    target = "/" + s3wire.encode_key(f"{BUCKET}/Bob/auth-check.txt")
    if authorization is None:
        headers = s3wire.sign(
            "GET", host, target,
            access_key=access_key or apgate.bob_access_key_id,
            secret_key=secret or apgate.bob_secret_access_key,
            when=when,
        )
    else:
        now = datetime.datetime.now(datetime.timezone.utc)
        headers = {
            "Host": host,
            "X-Amz-Date": now.strftime("%Y%m%dT%H%M%SZ"),
            "X-Amz-Content-SHA256": hashlib.sha256(b"").hexdigest(),
            "Authorization": authorization,
        }
    return s3wire.send(("127.0.0.1", apgate.shared_port), "GET", target, headers)


def _assert_s3_error(resp, status, code):
    assert resp.status == status, (resp.status, resp.body)
    err = resp.error()
    assert err["Code"] == code, err
    assert err.get("RequestId"), f"no RequestId in {resp.body!r}"


@pytest.mark.parametrize("case,status,code", [
    ("unknown-key", 403, "InvalidAccessKeyId"),
    ("wrong-secret", 403, "SignatureDoesNotMatch"),
    ("skewed-16min", 403, "RequestTimeTooSkewed"),
    ("garbled", 400, "AuthorizationHeaderMalformed"),
])
def test_auth_errors(apgate, moto, case, status, code):
    mark = moto.log_mark()
    if case == "unknown-key":
        r = _raw(apgate, access_key="APGTESTNOBODY0000001")
    elif case == "wrong-secret":
        r = _raw(apgate, secret="not-" + apgate.bob_secret_access_key)
    elif case == "skewed-16min":
        r = _raw(apgate, when=datetime.datetime.now(datetime.timezone.utc)
                 - datetime.timedelta(minutes=16))
    else:
        r = _raw(apgate, authorization="AWS4-HMAC-SHA256 garbage")
    _assert_s3_error(r, status, code)
    assert moto.log_since(mark) == []


def test_valid_raw_signature_is_accepted(apgate, bob):
    """Control for test_auth_errors: the same hand-built request, correctly signed, works."""
    bob.put_object(Bucket=BUCKET, Key="Bob/auth-check.txt", Body=b"auth ok")
    r = _raw(apgate)
    assert r.status == 200, r.body
    assert r.body == b"auth ok"


# ----------------------------------------------------------------------------- aws CLI

@pytest.fixture(scope="module")
def aws(apgate, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("awscli")
    cfg = tmp / "config"
    cfg.write_text("[default]\ns3 =\n  addressing_style = path\nmax_attempts = 1\n")
    env = dict(apgate.env)
    for k in list(env):
        if k.startswith("APGATE_"):
            del env[k]
    env.update({
        "AWS_ACCESS_KEY_ID": apgate.bob_access_key_id,
        "AWS_SECRET_ACCESS_KEY": apgate.bob_secret_access_key,
        "AWS_DEFAULT_REGION": apgate.region,
        "AWS_CONFIG_FILE": str(cfg),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    exe = REPO / "target" / "e2e-venv" / "bin" / "aws"

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(exe), "--endpoint-url", apgate.shared_endpoint, *args],
            env=env, capture_output=True, text=True, timeout=timeout,
        )
        assert proc.returncode == 0, f"aws {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    return run


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def test_cli_cp_multipart_round_trip(aws, moto, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(20 * 1024 * 1024))
    mark = moto.log_mark()
    aws("s3", "cp", str(src), f"s3://{BUCKET}/Bob/big.bin")
    upstream = moto.log_since(mark)
    assert any(e["method"] == "POST" and "uploads" in e["raw_uri"] for e in upstream), \
        "expected CreateMultipartUpload upstream"
    assert sum(1 for e in upstream if e["method"] == "PUT" and "partNumber=" in e["raw_uri"]) >= 3
    dst = tmp_path / "back.bin"
    aws("s3", "cp", f"s3://{BUCKET}/Bob/big.bin", str(dst))
    assert dst.stat().st_size == src.stat().st_size
    assert sha256_file(dst) == sha256_file(src)


def test_cli_ls(aws, bob):
    base = unique()
    bob.put_object(Bucket=BUCKET, Key=base + "listed.txt", Body=b"12345")
    top = aws("s3", "ls", f"s3://{BUCKET}/Bob/").stdout
    name = base[len("Bob/"):]
    assert re.search(rf"^\s*PRE {re.escape(name)}$", top, re.M), top
    inner = aws("s3", "ls", f"s3://{BUCKET}/{base}").stdout
    assert re.search(r"^\S+ \S+\s+5 listed\.txt$", inner, re.M), inner


def test_cli_s3api_put_get_key_with_space(aws, tmp_path):
    key = unique() + "cli key with space.txt"
    src = tmp_path / "in.txt"
    src.write_bytes(b"from the aws cli\n")
    aws("s3api", "put-object", "--bucket", BUCKET, "--key", key, "--body", str(src))
    out = tmp_path / "out.txt"
    aws("s3api", "get-object", "--bucket", BUCKET, "--key", key, str(out))
    assert out.read_bytes() == src.read_bytes()


# ----------------------------------------------------------------------------- app, sidecar

def test_app_reads_seed_through_sidecar(app, moto):
    mark = moto.log_mark()
    got = app.get_object(Bucket=BUCKET, Key="app/seed.txt")
    assert got["Body"].read() == b"seeded by setup"
    upstream = moto.log_since(mark)
    assert upstream and all(e["host"].startswith(APP_UPSTREAM_HOST_PREFIX) for e in upstream), upstream
    assert all(e["authorization_present"] for e in upstream), upstream


def test_app_lists_its_prefix(app):
    r = app.list_objects_v2(Bucket=BUCKET, Prefix="app/")
    assert "app/seed.txt" in [o["Key"] for o in r.get("Contents", [])]
    assert all(o["Key"].startswith("app/") for o in r.get("Contents", []))


@pytest.mark.parametrize("op", ["put-own-prefix", "delete-own-prefix", "get-bob"])
def test_app_denied_and_never_forwarded(app, moto, op):
    mark = moto.log_mark()
    with pytest.raises(ClientError) as e:
        if op == "put-own-prefix":
            app.put_object(Bucket=BUCKET, Key="app/new.txt", Body=b"nope")
        elif op == "delete-own-prefix":
            app.delete_object(Bucket=BUCKET, Key="app/seed.txt")
        else:
            app.get_object(Bucket=BUCKET, Key="Bob/auth-check.txt")
    assert error_of(e.value) == ("AccessDenied", 403)
    assert moto.log_since(mark) == []


# ----------------------------------------------------------------------------- metrics

_SAMPLE = re.compile(r"^apgate_requests_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def test_metrics_count_bob_put(apgate, bob):
    bob.put_object(Bucket=BUCKET, Key=unique() + "metrics.txt", Body=b"m")
    with urllib.request.urlopen(f"{apgate.admin_url}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    samples = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            samples.append((dict(_LABEL.findall(m["labels"])), float(m["value"])))
    assert samples, "no apgate_requests_total samples:\n" + text[:2000]
    want = {"identity": "bob", "access_point": BOB_AP, "operation": "PutObject", "status": "200"}
    matching = [(l, v) for l, v in samples if all(l.get(k) == v2 for k, v2 in want.items())]
    assert matching, f"no sample with {want}; have {[l for l, _ in samples]}"
    assert sum(v for _, v in matching) >= 1
