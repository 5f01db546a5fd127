"""End to end with third-party S3 clients: s3cmd (PyPI, in the e2e venv) and rclone (Debian).

Both talk to apgate's ``shared`` listener as bob (SigV4, path-style, region us-east-1) and
apgate forwards to moto through bob's access point. scripts/test installs both clients
(scripts/lib.sh: ensure_python_env + ensure_clients).

Client quirks (../shared/docs/TESTING.md):
- s3cmd 2.3.0 has no option to limit its retries (``--max-retries`` arrived in a later
  release): it retries 5xx answers five times with 3-15 s sleeps. Every run has a
  subprocess timeout, and a successful run must not have retried (its stderr is checked).
- rclone 1.60 fails with LoadCustomCABundleError when AWS_CA_BUNDLE is set: every AWS_*
  variable is removed from its environment. After a multipart upload it sends
  ``HEAD ?versionId=null``, which moto answers with 400: uploads use ``--s3-no-head``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import ACCOUNT, BOB_AP, BUCKET, REPO

BOB_UPSTREAM_HOST_PREFIX = f"{BOB_AP}-{ACCOUNT}."
MIB = 1024 * 1024


def unique(prefix: str = "Bob/") -> str:
    return f"{prefix}t-{uuid.uuid4().hex[:12]}/"


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def client_env(apgate, home: Path) -> dict:
    """apgate's environment without apgate's secrets and without any AWS_* variable
    (AWS_CA_BUNDLE breaks rclone; stray AWS keys must not leak into a client)."""
    env = {k: v for k, v in apgate.env.items()
           if not k.startswith("APGATE_") and not k.startswith("AWS_")}
    env.update({"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                "XDG_CACHE_HOME": str(home / ".cache")})
    return env


def describe(args, proc: subprocess.CompletedProcess) -> str:
    return (f"{' '.join(map(str, args))} -> exit {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")


def assert_multipart_upstream(entries: list[dict], min_parts: int) -> None:
    create = [e for e in entries if e["method"] == "POST" and re.search(r"[?&]uploads(=|&|$)", e["raw_uri"])]
    parts = [e for e in entries if e["method"] == "PUT" and "partNumber=" in e["raw_uri"]
             and "uploadId=" in e["raw_uri"]]
    complete = [e for e in entries if e["method"] == "POST" and "uploadId=" in e["raw_uri"]]
    assert create, f"no CreateMultipartUpload reached moto: {entries}"
    assert len(parts) >= min_parts, f"expected >= {min_parts} UploadPart upstream: {entries}"
    assert complete, f"no CompleteMultipartUpload reached moto: {entries}"
    assert all(e["host"].startswith(BOB_UPSTREAM_HOST_PREFIX) for e in entries), entries
    assert all(e["authorization_present"] for e in entries), entries


def assert_denied_not_forwarded(moto, mark: int, proc, args) -> None:
    assert proc.returncode != 0, "expected a denial\n" + describe(args, proc)
    out = proc.stdout + proc.stderr
    assert "AccessDenied" in out or "Access Denied" in out or "403" in out, describe(args, proc)
    entries = moto.log_since(mark)
    assert entries == [], f"apgate forwarded a denied request: {entries}\n" + describe(args, proc)


# ----------------------------------------------------------------------------- s3cmd

S3CMD_TIMEOUT = 120  # s3cmd's own 5xx retries alone take 45 s per request


@pytest.fixture(scope="module")
def s3cmd(apgate, tmp_path_factory):
    exe = REPO / "target" / "e2e-venv" / "bin" / "s3cmd"
    if not exe.is_file():
        pytest.fail(f"s3cmd not installed at {exe} (scripts/test installs it from requirements.txt)")
    tmp = tmp_path_factory.mktemp("s3cmd")
    cfg = tmp / "s3cfg"
    # SigV4 (the default: signature_v2 = False), path style (host_bucket without %(bucket)s).
    cfg.write_text(
        "[default]\n"
        f"access_key = {apgate.bob_access_key_id}\n"
        f"secret_key = {apgate.bob_secret_access_key}\n"
        f"host_base = 127.0.0.1:{apgate.shared_port}\n"
        f"host_bucket = 127.0.0.1:{apgate.shared_port}\n"
        "use_https = False\n"
        "signature_v2 = False\n"
        f"bucket_location = {apgate.region}\n"
        "progress_meter = False\n"
    )
    env = client_env(apgate, tmp)
    common = [
        f"--config={cfg}",
        f"--host=127.0.0.1:{apgate.shared_port}",
        f"--host-bucket=127.0.0.1:{apgate.shared_port}",
        "--no-ssl",
        f"--region={apgate.region}",
        "--no-progress",
    ]

    def run(*args: str, check: bool = True, timeout: float = S3CMD_TIMEOUT) -> subprocess.CompletedProcess:
        argv = [str(exe), *common, *args]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, cwd=tmp)
        if check:
            assert proc.returncode == 0, describe(["s3cmd", *args], proc)
            # s3cmd retries silently (with sleeps): a run that needed a retry is a failure here.
            assert "Retrying" not in proc.stderr and "Waiting" not in proc.stderr, \
                describe(["s3cmd", *args], proc)
        return proc

    return run


def test_s3cmd_put_get_ls_delete(s3cmd, moto, tmp_path):
    base = unique()
    uri = f"s3://{BUCKET}/{base}small.bin"
    src = tmp_path / "small.bin"
    src.write_bytes(os.urandom(3000) + b"s3cmd\n")

    mark = moto.log_mark()
    s3cmd("put", str(src), uri)
    upstream = moto.log_since(mark)
    assert any(e["method"] == "PUT" for e in upstream), upstream
    assert all(e["host"].startswith(BOB_UPSTREAM_HOST_PREFIX) for e in upstream), upstream

    dst = tmp_path / "back.bin"
    s3cmd("get", "--force", uri, str(dst))
    assert dst.read_bytes() == src.read_bytes()

    listed = s3cmd("ls", f"s3://{BUCKET}/{base}").stdout
    assert re.search(rf"^\S+ \S+\s+{src.stat().st_size}\s+{re.escape(uri)}$", listed, re.M), listed

    s3cmd("del", uri)
    after = s3cmd("ls", f"s3://{BUCKET}/{base}").stdout
    assert uri not in after, after


def test_s3cmd_multipart_round_trip(s3cmd, moto, tmp_path):
    base = unique()
    uri = f"s3://{BUCKET}/{base}big.bin"
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(12 * MIB))

    mark = moto.log_mark()
    s3cmd("put", "--multipart-chunk-size-mb=5", str(src), uri, timeout=300)
    assert_multipart_upstream(moto.log_since(mark), min_parts=3)

    dst = tmp_path / "back.bin"
    s3cmd("get", "--force", uri, str(dst), timeout=300)
    assert dst.stat().st_size == src.stat().st_size
    assert sha256_file(dst) == sha256_file(src)
    s3cmd("del", uri)


def test_s3cmd_get_outside_route_denied_not_forwarded(s3cmd, moto, tmp_path):
    # app/seed.txt exists in the bucket, but bob's only route is Bob/.
    mark = moto.log_mark()
    args = ("get", "--force", f"s3://{BUCKET}/app/seed.txt", str(tmp_path / "seed.txt"))
    proc = s3cmd(*args, check=False)
    assert_denied_not_forwarded(moto, mark, proc, ["s3cmd", *args])
    assert "Retrying" not in proc.stderr and "Waiting" not in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- rclone

RCLONE_TIMEOUT = 180


@pytest.fixture(scope="module")
def rclone(apgate, tmp_path_factory):
    exe = shutil.which("rclone")
    if exe is None:
        pytest.fail("rclone not on PATH (scripts/test installs Debian's rclone package)")
    tmp = tmp_path_factory.mktemp("rclone")
    cfg = tmp / "rclone.conf"
    cfg.write_text(
        "[apg]\n"
        "type = s3\n"
        "provider = Other\n"
        "env_auth = false\n"
        f"access_key_id = {apgate.bob_access_key_id}\n"
        f"secret_access_key = {apgate.bob_secret_access_key}\n"
        f"endpoint = http://127.0.0.1:{apgate.shared_port}\n"
        f"region = {apgate.region}\n"
        "force_path_style = true\n"
        # bob may not create or probe buckets; the bucket exists.
        "no_check_bucket = true\n"
    )
    env = client_env(apgate, tmp)
    common = ["--config", str(cfg), "--retries", "1", "--low-level-retries", "1",
              "--contimeout", "10s", "--timeout", "60s"]

    def run(*args: str, check: bool = True, timeout: float = RCLONE_TIMEOUT) -> subprocess.CompletedProcess:
        argv = [exe, *common, *args]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, cwd=tmp)
        if check:
            assert proc.returncode == 0, describe(["rclone", *args], proc)
        return proc

    return run


def test_rclone_put_get_ls_delete(rclone, moto, tmp_path):
    base = unique()
    remote = f"apg:{BUCKET}/{base}small.bin"
    src = tmp_path / "small.bin"
    src.write_bytes(os.urandom(3000) + b"rclone\n")

    mark = moto.log_mark()
    rclone("copyto", "--s3-no-head", str(src), remote)
    upstream = moto.log_since(mark)
    assert any(e["method"] == "PUT" for e in upstream), upstream
    assert all(e["host"].startswith(BOB_UPSTREAM_HOST_PREFIX) for e in upstream), upstream

    dst = tmp_path / "back.bin"
    rclone("copyto", remote, str(dst))
    assert dst.read_bytes() == src.read_bytes()

    listed = rclone("lsf", "--format", "ps", f"apg:{BUCKET}/{base}").stdout
    assert listed.splitlines() == [f"small.bin;{src.stat().st_size}"], listed

    rclone("deletefile", remote)
    assert rclone("lsf", f"apg:{BUCKET}/{base}").stdout.strip() == ""


def test_rclone_multipart_round_trip(rclone, moto, tmp_path):
    base = unique()
    remote = f"apg:{BUCKET}/{base}big.bin"
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(12 * MIB))

    mark = moto.log_mark()
    # --s3-no-head: rclone 1.60 reads the object back with HEAD ?versionId=null after a
    # multipart upload, which moto answers with 400 (TESTING.md).
    rclone("copyto", "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M", "--s3-no-head",
           str(src), remote, timeout=300)
    assert_multipart_upstream(moto.log_since(mark), min_parts=3)

    dst = tmp_path / "back.bin"
    rclone("copyto", remote, str(dst), timeout=300)
    assert dst.stat().st_size == src.stat().st_size
    assert sha256_file(dst) == sha256_file(src)
    rclone("deletefile", remote)


# ----------------------------------------------------------------------------- bucket root listing

# Listing the bucket root (no prefix) as bob is denied by design: bob's only route is
# `prefix = "Bob/"`, and a ListObjects whose prefix is not inside a route's prefix would
# reveal keys outside it, so apgate answers 403 AccessDenied itself and forwards nothing.
# A client that wants bob's keys lists s3://access-point-test/Bob/ (tested above).

@pytest.mark.parametrize("client", ["s3cmd", "rclone"])
def test_list_bucket_root_denied_by_design(client, request, moto):
    mark = moto.log_mark()
    if client == "s3cmd":
        args = ("ls", f"s3://{BUCKET}")
        proc = request.getfixturevalue("s3cmd")(*args, check=False)
    else:
        args = ("lsf", f"apg:{BUCKET}")
        proc = request.getfixturevalue("rclone")(*args, check=False)
    assert_denied_not_forwarded(moto, mark, proc, [client, *args])
    assert "AccessDenied" in proc.stdout + proc.stderr, describe([client, *args], proc)
