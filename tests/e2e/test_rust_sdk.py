"""End to end with the Rust AWS SDK (aws-sdk-s3) as the client: tests/e2e/sdk_client (src/main.rs).

Over a plain-http endpoint the Rust SDK uploads PutObject/UploadPart bodies as *signed*
aws-chunked payloads with a CRC32 trailer (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER``,
../shared/docs/PROTOCOL.md §5), which apgate must verify chunk by chunk and re-sign. The client
prints, per HTTP request, the headers that show how the body was framed and signed, so these
tests also assert that this path really was exercised.

The client runs as bob against apgate's shared listener (path style, us-east-1, retries off),
with an environment holding only ENDPOINT and bob's keys (plus SDK_CLIENT_MOTO_COMPAT=1: moto
5.2.1 names the CompleteMultipartUpload result root ``CompleteMultipartUploadResponse``, which the
Rust SDK refuses to parse; sdk_client renames it on that call only). Build it with
``cargo build --profile ci -p apgate-sdk-client`` (scripts/test does, while the suite runs; the
fixture waits for it, or builds it when run on its own).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from botocore.exceptions import ClientError

from conftest import BOB_AP_HOST, BUCKET, REPO, target_dir

MIB = 1024 * 1024
SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
SDK_TIMEOUT = 120


class SdkFailure(Exception):
    def __init__(self, proc: subprocess.CompletedProcess, args):
        self.proc = proc
        try:
            self.error = json.loads(proc.stderr.strip().splitlines()[0])
        except (ValueError, IndexError):
            self.error = {}
        super().__init__(describe(args, proc))


def describe(args, proc: subprocess.CompletedProcess) -> str:
    return (f"sdk_client {' '.join(map(str, args))} -> exit {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")


@pytest.fixture(scope="module")
def sdk(apgate, tmp_path_factory):
    exe = Path(os.environ.get("SDK_CLIENT_BIN", "").strip() or target_dir() / "sdk_client")
    status = os.environ.get("SDK_CLIENT_BUILD_STATUS", "").strip()
    if status:
        # scripts/test builds the client in the background while the suite runs and writes the
        # build's exit status here when it is done
        deadline = time.monotonic() + 900
        while not Path(status).is_file() and time.monotonic() < deadline:
            time.sleep(1)
        assert Path(status).is_file(), f"the sdk_client build did not finish ({status})"
        assert Path(status).read_text().strip() == "0", f"the sdk_client build failed ({status})"
    elif not exe.is_file():
        build = subprocess.run(["cargo", "build", "--profile", target_dir().name, "-p", "apgate-sdk-client",
                                "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=1800)
        assert build.returncode == 0, build.stderr[-3000:]
    if not exe.is_file():
        pytest.fail(f"sdk_client not built at {exe} (cargo build --profile {target_dir().name} -p apgate-sdk-client)")
    home = tmp_path_factory.mktemp("sdk_home")
    # Nothing from the test runner's environment: no stray AWS_* settings, profiles or CA bundles.
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ENDPOINT": apgate.shared_endpoint,
        "AWS_ACCESS_KEY_ID": apgate.bob_access_key_id,
        "AWS_SECRET_ACCESS_KEY": apgate.bob_secret_access_key,
        "AWS_EC2_METADATA_DISABLED": "true",
        # moto answers CompleteMultipartUpload with a <CompleteMultipartUploadResponse> root,
        # which the Rust SDK refuses; sdk_client renames it on that one call (see its docs).
        "SDK_CLIENT_MOTO_COMPAT": "1",
    }

    def run(*args) -> dict:
        argv = [str(exe), *map(str, args)]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=SDK_TIMEOUT,
                              stdin=subprocess.DEVNULL, cwd=home)
        if proc.returncode != 0:
            raise SdkFailure(proc, args)
        lines = proc.stdout.strip().splitlines()
        assert len(lines) == 1, describe(args, proc)
        return json.loads(lines[0])

    return run


def unique(prefix: str = "Bob/sdk/") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}/"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload_requests(result: dict) -> list[dict]:
    return [r for r in result["requests"] if r["method"] == "PUT"]


def assert_signed_chunks_used(result: dict) -> None:
    """The SDK sent its upload bodies as signed aws-chunked with a trailer (so apgate's
    chunk verification, not some other path, was exercised)."""
    puts = upload_requests(result)
    assert puts, result
    for r in puts:
        assert r["x-amz-content-sha256"] == SIGNED_TRAILER, r
        assert "aws-chunked" in (r["content-encoding"] or ""), r
        assert r["x-amz-trailer"], r


def assert_upstream_via_bob_ap(entries: list[dict]) -> None:
    assert entries, "nothing reached moto"
    assert all(e["host"] == BOB_AP_HOST for e in entries), entries
    assert all(e["authorization_present"] for e in entries), entries


def assert_same(got: bytes, want: bytes, what: str) -> None:
    assert len(got) == len(want) and sha(got) == sha(want), \
        f"{what}: {len(got)} bytes (sha256 {sha(got)[:16]}) vs {len(want)} uploaded (sha256 {sha(want)[:16]})"


@pytest.mark.parametrize("size,name", [
    (3 * 1024 + 7, "small a b+c ü €.bin"),
    (MIB + 13, "big+plus space/ünïcode ☃.bin"),
], ids=["few-kib", "one-mib"])
def test_sdk_put_get_round_trip(sdk, moto, moto_s3, tmp_path, size, name):
    key = unique() + name
    data = os.urandom(size)
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    src.write_bytes(data)

    mark = moto.log_mark()
    put = sdk("put", BUCKET, key, src)
    assert_signed_chunks_used(put)
    upstream = moto.log_since(mark)
    assert [e["method"] for e in upstream] == ["PUT"], upstream
    assert_upstream_via_bob_ap(upstream)
    assert unquote(upstream[0]["raw_uri"].split("?")[0]) == "/" + key, upstream

    got = sdk("get", BUCKET, key, dst)
    assert got["bytes"] == size
    assert_same(dst.read_bytes(), data, "GET through apgate")
    assert_same(moto_s3.get_object(Bucket=BUCKET, Key=key)["Body"].read(), data, "object in moto")


def test_sdk_list_with_prefix(sdk, moto, tmp_path):
    base = unique()
    src = tmp_path / "x.bin"
    src.write_bytes(b"listed\n")
    keys = [f"{base}dir/one.txt", f"{base}dir/two words+.txt", f"{base}dir/ü.txt"]
    for k in [*keys, f"{base}other/three.txt"]:
        sdk("put", BUCKET, k, src)
    mark = moto.log_mark()
    listed = sdk("list", BUCKET, f"{base}dir/")
    assert sorted(listed["keys"]) == sorted(keys), listed
    assert_upstream_via_bob_ap(moto.log_since(mark))


def test_sdk_delete(sdk, moto, moto_s3, tmp_path):
    key = unique() + "gone soon.txt"
    src = tmp_path / "x.bin"
    src.write_bytes(b"to be deleted\n")
    sdk("put", BUCKET, key, src)
    mark = moto.log_mark()
    sdk("delete", BUCKET, key)
    upstream = moto.log_since(mark)
    assert [e["method"] for e in upstream] == ["DELETE"], upstream
    assert_upstream_via_bob_ap(upstream)
    with pytest.raises(SdkFailure) as e:
        sdk("get", BUCKET, key, tmp_path / "y.bin")
    assert e.value.error.get("error") == "NoSuchKey", str(e.value)
    with pytest.raises(ClientError) as ce:
        moto_s3.head_object(Bucket=BUCKET, Key=key)
    assert ce.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_sdk_multipart_round_trip(sdk, moto, moto_s3, tmp_path):
    key = unique() + "multi part ü.bin"
    data = os.urandom(12 * MIB)
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    src.write_bytes(data)
    mark = moto.log_mark()
    done = sdk("multipart", BUCKET, key, src, 5 * MIB)
    assert done["parts"] == 3, done
    assert done["moto_compat_rewrites"] <= 1, done
    assert_signed_chunks_used(done)
    entries = moto.log_since(mark)
    assert_upstream_via_bob_ap(entries)
    create = [e for e in entries if e["method"] == "POST" and re.search(r"[?&]uploads(=|&|$)", e["raw_uri"])]
    parts = [e for e in entries if e["method"] == "PUT" and "partNumber=" in e["raw_uri"]]
    complete = [e for e in entries if e["method"] == "POST" and "uploadId=" in e["raw_uri"]]
    assert (len(create), len(parts), len(complete)) == (1, 3, 1), entries

    sdk("get", BUCKET, key, dst)
    assert_same(dst.read_bytes(), data, "GET through apgate")
    assert_same(moto_s3.get_object(Bucket=BUCKET, Key=key)["Body"].read(), data, "object in moto")


def test_sdk_copy_within_bob(sdk, moto, tmp_path):
    base = unique()
    src_key, dst_key = f"{base}copy source ü+.bin", f"{base}copy target.bin"
    data = os.urandom(40 * 1024)
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    src.write_bytes(data)
    sdk("put", BUCKET, src_key, src)
    mark = moto.log_mark()
    sdk("copy", BUCKET, src_key, dst_key)
    upstream = moto.log_since(mark)
    assert [e["method"] for e in upstream] == ["PUT"], upstream
    assert_upstream_via_bob_ap(upstream)
    sdk("get", BUCKET, dst_key, dst)
    assert_same(dst.read_bytes(), data, "copied object")


def test_sdk_presigned_get(sdk, apgate, moto, tmp_path):
    key = unique() + "presigned a+b ü.txt"
    data = os.urandom(10_000)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    sdk("put", BUCKET, key, src)
    url = sdk("presign-get", BUCKET, key, 300)["url"]
    parts = urlsplit(url)
    assert parts.netloc == f"127.0.0.1:{apgate.shared_port}" and "X-Amz-Signature=" in parts.query, url
    mark = moto.log_mark()
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.status == 200
        got = resp.read()
    assert_same(got, data, "presigned GET")
    upstream = moto.log_since(mark)
    assert [e["method"] for e in upstream] == ["GET"], upstream
    assert_upstream_via_bob_ap(upstream)
    assert "X-Amz-" not in upstream[0]["raw_uri"], "query auth must not be forwarded"


DENIAL_ATTEMPTS = 10


def test_sdk_put_outside_route_denied(sdk, moto, tmp_path):
    """bob may not write app/: the SDK must get the 403 AccessDenied -- every time. The SDK
    streams the body without ``Expect: 100-continue`` and apgate refuses on the head, so the
    refusal races the upload; a gateway that closes without draining the unread body makes the
    client see a broken pipe instead of the answer (hence several attempts, with a 1 MiB body)."""
    src = tmp_path / "x.bin"
    src.write_bytes(os.urandom(MIB))
    mark = moto.log_mark()
    outcomes = []
    for _ in range(DENIAL_ATTEMPTS):
        with pytest.raises(SdkFailure) as e:
            sdk("put", BUCKET, "app/x", src)
        outcomes.append((e.value.error.get("error"), e.value.error.get("status"), e.value.error.get("message", "")[:200]))
    assert moto.log_since(mark) == [], "apgate forwarded a denied request"
    bad = [o for o in outcomes if o[:2] != ("AccessDenied", 403)]
    assert not bad, f"{len(bad)} of {DENIAL_ATTEMPTS} denials did not reach the SDK as 403 AccessDenied: {bad}"
