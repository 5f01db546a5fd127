"""Edge cases of apgate's HTTP/S3 surface, end to end (docs/SEMANTICS.md).

Every refusal is checked for its status, its S3 error ``Code`` and -- through moto's
request log -- for never reaching the upstream. Where the exchange itself matters
(``Expect: 100-continue``, chunked bodies, HEAD) the request goes over a raw socket.

Fixtures: ``moto``, ``moto_s3`` and ``apgate`` from conftest.py.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass

import boto3
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

import s3wire
from conftest import BOB_ALIAS_BUCKET, BUCKET

NO_RETRIES = {"mode": "standard", "total_max_attempts": 1}
SOCKET_TIMEOUT = 5.0  # seconds to wait for a response head that must come without a body
VHOST_DOMAIN = "s3.localhost"  # [addressing] virtual_host_domains in conftest.apgate_config


@pytest.fixture(scope="module")
def bob(apgate):
    return boto3.client(
        "s3", endpoint_url=apgate.shared_endpoint, region_name=apgate.region,
        aws_access_key_id=apgate.bob_access_key_id,
        aws_secret_access_key=apgate.bob_secret_access_key,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                      retries=NO_RETRIES, connect_timeout=5, read_timeout=60),
    )


def error_of(exc: ClientError) -> tuple[str, int]:
    return exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]


def assert_nothing_upstream(moto, mark: int) -> None:
    entries = moto.log_since(mark)
    assert entries == [], f"apgate forwarded a request it should have refused: {entries}"


def assert_s3_error(status: int, body: bytes, want_status: int, want_code: str) -> None:
    assert status == want_status, (status, body[:500])
    err = s3wire.parse_error(body)
    assert err["Code"] == want_code, err
    assert err.get("RequestId"), f"no RequestId in {body!r}"


# ----------------------------------------------------------------------------- raw HTTP/1.1

def sign_unsigned_payload(method: str, host: str, target: str, *, access_key: str,
                          secret_key: str, region: str = "us-east-1") -> dict[str, str]:
    """SigV4 headers (Host, X-Amz-Date, X-Amz-Content-SHA256: UNSIGNED-PAYLOAD, Authorization)
    for http://{host}{target}, as botocore's S3SigV4Auth makes them with payload signing off."""
    req = AWSRequest(method=method, url=f"http://{host}{target}", data=b"")
    req.headers["Host"] = host
    req.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    S3SigV4Auth(Credentials(access_key, secret_key), "s3", region).add_auth(req)
    hdrs = dict(req.headers.items())
    assert hdrs["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD", hdrs
    return hdrs


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: dict[str, str]  # lower-cased names
    body: bytes


class RawConnection:
    """One TCP connection to apgate on which the test writes bytes and reads responses
    itself, so it decides when (and whether) a request body is sent."""

    def __init__(self, port: int, timeout: float = SOCKET_TIMEOUT):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.reader = self.sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def __enter__(self) -> "RawConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send_head(self, method: str, target: str, headers: dict[str, str]) -> None:
        lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_head(self) -> tuple[int, str, dict[str, str]]:
        """The next response head; raises socket.timeout if none comes in time."""
        line = self.reader.readline(65536)
        if not line:
            raise ConnectionError("connection closed before a response head")
        version, status, *reason = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        assert version.startswith("HTTP/1."), line
        headers: dict[str, str] = {}
        while True:
            h = self.reader.readline(65536)
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        return int(status), (reason[0] if reason else ""), headers

    def read_response(self, *, head_request: bool = False) -> RawResponse:
        status, reason, headers = self.read_head()
        if head_request or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._read_chunked()
        elif "content-length" in headers:
            body = self._read_exact(int(headers["content-length"]))
        else:
            body = self.reader.read()  # delimited by close
        return RawResponse(status, reason, headers, body)

    def read_rest(self) -> bytes:
        """Everything the server still sends until it closes the connection."""
        return self.reader.read()

    def _read_exact(self, n: int) -> bytes:
        data = self.reader.read(n)
        assert len(data) == n, f"short body: {len(data)} of {n} bytes"
        return data

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            size = int(self.reader.readline(1024).split(b";")[0].strip(), 16)
            if size == 0:
                while self.reader.readline(65536) not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += self._read_exact(size)
            assert self.reader.readline(16) in (b"\r\n", b"\n")


def shared_host(apgate) -> str:
    return f"127.0.0.1:{apgate.shared_port}"


# ----------------------------------------------------------------------------- Expect: 100-continue

ONE_MIB = 1024 * 1024


def _expect_refused(apgate, moto, key: str, secret: str, code: str) -> None:
    target = "/" + s3wire.encode_key(f"{BUCKET}/{key}")
    headers = sign_unsigned_payload(
        "PUT", shared_host(apgate), target,
        access_key=apgate.bob_access_key_id, secret_key=secret,
    )
    headers["Content-Length"] = str(ONE_MIB)
    headers["Expect"] = "100-continue"
    mark = moto.log_mark()
    with RawConnection(apgate.shared_port) as conn:
        conn.send_head("PUT", target, headers)
        try:
            # no body byte has been sent: the refusal must come on the head alone
            resp = conn.read_response()
        except socket.timeout:
            pytest.fail(f"no response within {SOCKET_TIMEOUT}s to a refused Expect: 100-continue "
                        "request (apgate waited for the body?)")
    assert resp.status != 100, "apgate sent 100 Continue to a caller it refuses"
    assert_s3_error(resp.status, resp.body, 403, code)
    assert_nothing_upstream(moto, mark)


def test_expect_continue_wrong_secret_refused_before_body(apgate, moto):
    _expect_refused(apgate, moto, "Bob/expect.bin",
                    "not-" + apgate.bob_secret_access_key, "SignatureDoesNotMatch")


def test_expect_continue_no_route_refused_before_body(apgate, moto):
    _expect_refused(apgate, moto, "app/expect.bin",
                    apgate.bob_secret_access_key, "AccessDenied")


def test_expect_continue_accepted_upload(apgate, moto, bob):
    key = "Bob/expect-ok.bin"
    target = "/" + s3wire.encode_key(f"{BUCKET}/{key}")
    headers = sign_unsigned_payload(
        "PUT", shared_host(apgate), target,
        access_key=apgate.bob_access_key_id, secret_key=apgate.bob_secret_access_key,
    )
    headers["Content-Length"] = str(ONE_MIB)
    headers["Expect"] = "100-continue"
    body = os.urandom(ONE_MIB)
    mark = moto.log_mark()
    with RawConnection(apgate.shared_port, timeout=30) as conn:
        conn.send_head("PUT", target, headers)
        conn.sock.settimeout(SOCKET_TIMEOUT)
        try:
            status, reason, _ = conn.read_head()
        except socket.timeout:
            pytest.fail(f"no 100 Continue within {SOCKET_TIMEOUT}s for an accepted upload")
        assert status == 100, f"expected 100 Continue first, got {status} {reason}"
        conn.sock.settimeout(30)
        conn.send(body)
        final = conn.read_response()
    assert final.status == 200, (final.status, final.body[:500])
    assert final.headers.get("etag", "").strip('"') == hashlib.md5(body).hexdigest()
    upstream = moto.log_since(mark)
    assert [e["method"] for e in upstream] == ["PUT"], upstream

    got = bob.get_object(Bucket=BUCKET, Key=key)
    assert got["Body"].read() == body


# ----------------------------------------------------------------------------- virtual-hosted

def test_virtual_hosted_put_get(apgate, moto_s3):
    host = f"{BUCKET}.{VHOST_DOMAIN}:{apgate.shared_port}"
    key = "Bob/vhost key.txt"
    target = "/" + s3wire.encode_key(key)
    assert target == "/Bob/vhost%20key.txt"
    body = b"virtual-hosted " + os.urandom(64)
    addr = ("127.0.0.1", apgate.shared_port)
    creds = dict(access_key=apgate.bob_access_key_id, secret_key=apgate.bob_secret_access_key)

    put = s3wire.signed_request(addr, "PUT", host, target, body=body, **creds)
    assert put.status == 200, (put.status, put.body[:500])
    got = s3wire.signed_request(addr, "GET", host, target, **creds)
    assert got.status == 200, (got.status, got.body[:500])
    assert got.body == body
    # landed under the decoded key, in the real bucket
    assert moto_s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body


def test_virtual_hosted_outside_route_denied(apgate, moto):
    host = f"{BUCKET}.{VHOST_DOMAIN}:{apgate.shared_port}"
    mark = moto.log_mark()
    r = s3wire.signed_request(
        ("127.0.0.1", apgate.shared_port), "GET", host, "/app/seed.txt",
        access_key=apgate.bob_access_key_id, secret_key=apgate.bob_secret_access_key,
    )
    assert_s3_error(r.status, r.body, 403, "AccessDenied")
    assert_nothing_upstream(moto, mark)


# ----------------------------------------------------------------------------- chunked without aws-chunked

CHUNKED_BODY = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"


def _assert_absent(moto_s3, key: str) -> None:
    with pytest.raises(ClientError) as e:
        moto_s3.head_object(Bucket=BUCKET, Key=key)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404, e.value.response


def _chunked_put(port: int, target: str, headers: dict[str, str]) -> RawResponse:
    headers = {**headers, "Transfer-Encoding": "chunked"}
    assert not any(k.lower() == "content-length" for k in headers)
    with RawConnection(port) as conn:
        conn.send_head("PUT", target, headers)
        conn.send(CHUNKED_BODY)
        try:
            return conn.read_response()
        except socket.timeout:
            pytest.fail(f"no response within {SOCKET_TIMEOUT}s to a chunked PUT")


def test_chunked_put_app_sidecar_refused(apgate, moto, moto_s3):
    key = "app/chunked.txt"
    mark = moto.log_mark()
    r = _chunked_put(apgate.sidecar_port, f"/{BUCKET}/{key}",
                     {"Host": f"127.0.0.1:{apgate.sidecar_port}"})
    assert_s3_error(r.status, r.body, 411, "MissingContentLength")
    assert_nothing_upstream(moto, mark)
    _assert_absent(moto_s3, key)


def test_chunked_put_bob_refused(apgate, moto, moto_s3):
    key = "Bob/chunked.txt"
    target = "/" + s3wire.encode_key(f"{BUCKET}/{key}")
    # botocore never signs Transfer-Encoding; _chunked_put adds it after signing
    headers = sign_unsigned_payload(
        "PUT", shared_host(apgate), target,
        access_key=apgate.bob_access_key_id, secret_key=apgate.bob_secret_access_key,
    )
    mark = moto.log_mark()
    r = _chunked_put(apgate.shared_port, target, headers)
    assert_s3_error(r.status, r.body, 411, "MissingContentLength")
    assert_nothing_upstream(moto, mark)
    _assert_absent(moto_s3, key)


# ----------------------------------------------------------------------------- synthesized / refused operations

def test_list_buckets_answered_by_apgate(bob, moto):
    mark = moto.log_mark()
    r = bob.list_buckets()
    # Exactly bob's client-facing buckets, sorted: the real one and the alias route's name.
    assert [b["Name"] for b in r["Buckets"]] == [BUCKET, BOB_ALIAS_BUCKET]
    assert_nothing_upstream(moto, mark)


@pytest.mark.parametrize("op", ["create_bucket", "delete_bucket", "get_bucket_policy", "put_bucket_policy",
                                "put_bucket_versioning"])
def test_bucket_management_not_implemented(bob, moto, op):
    extra = {
        "put_bucket_policy": {"Policy": '{"Version":"2012-10-17","Statement":[]}'},
        "put_bucket_versioning": {"VersioningConfiguration": {"Status": "Enabled"}},
    }.get(op, {})
    mark = moto.log_mark()
    with pytest.raises(ClientError) as e:
        getattr(bob, op)(Bucket=BUCKET, **extra)
    assert error_of(e.value) == ("NotImplemented", 501)
    assert_nothing_upstream(moto, mark)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("target,code", [
    (f"/{BUCKET}/Bob/%zz", "InvalidURI"),
    ("/Bad_Bucket/x", "InvalidBucketName"),
])
def test_bad_request_target_refused_at_parse(apgate, moto, target, code):
    # validly signed by bob, so only the parse can refuse it
    headers = s3wire.sign("GET", shared_host(apgate), target,
                          access_key=apgate.bob_access_key_id,
                          secret_key=apgate.bob_secret_access_key)
    mark = moto.log_mark()
    r = s3wire.send(("127.0.0.1", apgate.shared_port), "GET", target, headers)
    assert_s3_error(r.status, r.body, 400, code)
    assert_nothing_upstream(moto, mark)


# ----------------------------------------------------------------------------- HEAD errors

def test_head_error_has_no_body(apgate, moto):
    target = f"/{BUCKET}/app/x"
    headers = s3wire.sign("HEAD", shared_host(apgate), target,
                          access_key=apgate.bob_access_key_id,
                          secret_key=apgate.bob_secret_access_key)
    headers["Connection"] = "close"
    mark = moto.log_mark()
    with RawConnection(apgate.shared_port) as conn:
        conn.send_head("HEAD", target, headers)
        resp = conn.read_response(head_request=True)
        rest = conn.read_rest()  # the server closes after the response: all that follows the head
    assert resp.status == 403, resp
    assert rest == b"", f"HEAD error response carried a body: {rest[:300]!r}"
    assert resp.headers.get("content-length", "0") == "0", resp.headers
    assert resp.headers.get("x-amz-request-id"), resp.headers
    assert_nothing_upstream(moto, mark)


def test_refused_request_with_unread_body_closes_the_connection(apgate, moto):
    """Regression: a PUT refused without reading its body left the connection looking reusable; the
    client's next request on it then failed with a closed connection (seen as a flaky HEAD after a
    denied PUT). apgate now says `Connection: close` on such refusals."""
    import http.client
    target = f"/{BUCKET}/app/refused-body.txt"
    headers = s3wire.sign("PUT", shared_host(apgate), target, access_key=apgate.bob_access_key_id,
                          secret_key=apgate.bob_secret_access_key, body=b"x" * 1000)
    conn = http.client.HTTPConnection("127.0.0.1", apgate.shared_port, timeout=10)
    mark = moto.log_mark()
    conn.request("PUT", target, body=b"x" * 1000, headers=headers)
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 403
    assert resp.getheader("Connection", "").lower() == "close"
    conn.close()
    assert_nothing_upstream(moto, mark)
