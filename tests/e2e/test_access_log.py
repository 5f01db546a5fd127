"""apgate's access log: one JSON line per request with the fields ops need, and never a secret.

Runs real traffic through the module's apgate (bob over SigV4, a denial, a multipart upload), then
reads apgate's whole log output."""

from __future__ import annotations

import json
import time
import uuid

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import BUCKET

FIELDS = {"timestamp", "level", "request_id", "listener", "remote", "identity", "method", "operation",
          "bucket", "key", "access_point", "status", "error_code", "bytes_in", "bytes_out", "complete",
          "duration_ms", "attempts", "upstream_ms", "upstream_request_id", "upstream_id2"}


@pytest.fixture(scope="module")
def traffic(apgate):
    bob = boto3.client(
        "s3", endpoint_url=apgate.shared_endpoint, region_name=apgate.region,
        aws_access_key_id=apgate.bob_access_key_id, aws_secret_access_key=apgate.bob_secret_access_key,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4", retries={"total_max_attempts": 1}),
    )
    key = f"Bob/log-{uuid.uuid4().hex[:8]}.txt"
    bob.put_object(Bucket=BUCKET, Key=key, Body=b"x" * 1234)
    bob.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    with pytest.raises(ClientError):
        bob.get_object(Bucket=BUCKET, Key="app/seed.txt")
    return key


def access_lines(apgate, at_least: int = 3, timeout: float = 5.0) -> list[dict]:
    """The access log lines so far. apgate writes them from a writer thread a few milliseconds after
    the response (docs/CONFIG.md), so wait until the fixture's traffic (3 requests) is there."""
    deadline = time.monotonic() + timeout
    while True:
        lines = []
        for raw in apgate.log_path.read_text().splitlines():
            try:
                doc = json.loads(raw)
            except ValueError:
                continue
            if doc.get("target") == "apgate::access":
                lines.append(doc)
        if len(lines) >= at_least or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def test_every_request_has_one_line_with_all_fields(apgate, traffic):
    lines = access_lines(apgate)
    assert lines
    for doc in lines:
        assert FIELDS <= doc.keys(), sorted(FIELDS - doc.keys())
    put = [d for d in lines if d["operation"] == "PutObject" and d["key"] == traffic]
    assert len(put) == 1, put
    put = put[0]
    assert put["identity"] == "bob" and put["access_point"] == "bob-access-point-test"
    assert put["status"] == 200 and put["error_code"] == "-"
    assert put["bytes_in"] == 1234
    assert put["attempts"] == 1
    assert put["upstream_ms"] > 0 and put["upstream_request_id"] != "-"
    get = [d for d in lines if d["operation"] == "GetObject" and d["key"] == traffic][0]
    assert get["bytes_out"] == 1234 and get["complete"] is True


def test_refusals_carry_their_error_code(apgate, traffic):
    denied = [d for d in access_lines(apgate) if d["key"] == "app/seed.txt" and d["identity"] == "bob"]
    assert denied, "no line for the denied request"
    assert denied[0]["status"] == 403 and denied[0]["error_code"] == "AccessDenied"
    assert denied[0]["access_point"] == "-" and denied[0]["upstream_ms"] == 0
    assert denied[0]["attempts"] == 0, "a refused request is never sent upstream"


def test_no_secret_ever_reaches_the_log(apgate, traffic):
    text = apgate.log_path.read_text()
    secrets = {
        "bob's secret": apgate.bob_secret_access_key,
        "apgate's upstream secret": apgate.moto.secret_access_key,
    }
    for what, secret in secrets.items():
        assert secret and secret not in text, f"{what} appears in apgate's log"
    for marker in ("AWS4-HMAC-SHA256 Credential", "Signature=", "X-Amz-Signature", "x-amz-security-token"):
        assert marker not in text, f"{marker!r} appears in apgate's log"
