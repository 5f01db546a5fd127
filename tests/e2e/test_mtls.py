"""TLS listeners and client-certificate (mTLS) identities, end to end.

A throwaway PKI is made with the openssl CLI (certs.py): a CA, a server certificate for
127.0.0.1/localhost, client certificates (the app's SPIFFE id, an unmapped SPIFFE id, a CN-only and
a DNS-SAN one), and an unrelated CA with a client certificate that carries the app's SPIFFE id.

apgate runs in front of the module's moto with four HTTPS listeners:

- ``mtls``: client certificate optional, methods ["mtls", "sigv4"], identity from the URI SAN;
- ``required``: client certificate required, methods ["mtls"];
- ``cn``: methods ["mtls"], identity from the subject CN;
- ``dns``: methods ["mtls"], identity from the DNS SAN.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

import certs
from conftest import (ACCOUNT, APP_AP, BOB_AP, BOB_ACCESS_KEY_ID, BUCKET, REGION, REPO, Moto, apgate_bin,
                      _readyz, _tail, apgate_log_env, free_port, register_apgate, stop)

APP_SPIFFE = "spiffe://example.org/ns/prod/sa/app"
UNMAPPED_SPIFFE = "spiffe://example.org/ns/prod/sa/intruder"
APP_CN = "app-cn.example.org"
APP_DNS = "app.clients.example.org"
SEED_KEY = "app/seed.txt"
SEED_BODY = b"seeded by setup"
BOB_UPSTREAM_HOST_PREFIX = f"{BOB_AP}-{ACCOUNT}."
APP_UPSTREAM_HOST_PREFIX = f"{APP_AP}-{ACCOUNT}."
NO_RETRIES = {"mode": "standard", "total_max_attempts": 1}
# curl exit codes for a failed TLS exchange: 35 handshake, 56 receive failure (TLS 1.3 reports the
# server's verdict on the client certificate after the client's Finished, on the first read).
CURL_TLS_FAILURES = {35, 56}


@dataclass(frozen=True)
class Pki:
    ca: certs.Pair
    server: certs.Pair
    app: certs.Pair          # URI SAN = APP_SPIFFE, CN app-uri-cert
    unmapped: certs.Pair     # URI SAN = UNMAPPED_SPIFFE
    cn: certs.Pair           # CN = APP_CN, no SAN
    dns: certs.Pair          # DNS SAN = APP_DNS
    rogue_ca: certs.Pair
    rogue: certs.Pair        # URI SAN = APP_SPIFFE, signed by rogue_ca


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    try:
        certs.openssl_binary()
    except RuntimeError as e:
        pytest.fail(str(e))
    d = tmp_path_factory.mktemp("pki")
    ca = certs.make_ca(d, "ca", "apgate e2e test CA")
    rogue_ca = certs.make_ca(d, "rogue-ca", "unrelated CA")
    return Pki(
        ca=ca,
        server=certs.make_leaf(d, "server", ca, cn="apgate e2e server",
                               sans=["IP:127.0.0.1", "DNS:localhost"], server=True),
        app=certs.make_leaf(d, "app", ca, cn="app-uri-cert", sans=[f"URI:{APP_SPIFFE}"]),
        unmapped=certs.make_leaf(d, "unmapped", ca, cn="intruder", sans=[f"URI:{UNMAPPED_SPIFFE}"]),
        cn=certs.make_leaf(d, "cn", ca, cn=APP_CN),
        dns=certs.make_leaf(d, "dns", ca, cn="dns-cert", sans=[f"DNS:{APP_DNS}"]),
        rogue_ca=rogue_ca,
        rogue=certs.make_leaf(d, "rogue", rogue_ca, cn="app-uri-cert", sans=[f"URI:{APP_SPIFFE}"]),
    )


def tls_listener(name: str, port: int, pki: Pki, *, methods: list[str], client_certificate: str,
                 identity_from: str, mappings: dict[str, str]) -> str:
    out = f"""
[[listeners]]
name = "{name}"
address = "127.0.0.1:{port}"
identity_methods = {methods!r}

[listeners.tls]
certificate_chain_file = "{pki.server.cert}"
private_key_file = "{pki.server.key}"
client_ca_file = "{pki.ca.cert}"
client_certificate = "{client_certificate}"
client_identity_from = "{identity_from}"
"""
    for subject, identity in mappings.items():
        out += f"""
[[listeners.client_certificates]]
subject = "{subject}"
identity = "{identity}"
"""
    return out.replace("'", '"')


@dataclass
class TlsGateway:
    ports: dict[str, int]
    bob_secret: str
    log_path: Path
    moto: Moto
    config_path: Path | None = None
    proc: subprocess.Popen | None = None

    def url(self, listener: str, path: str = "") -> str:
        return f"https://127.0.0.1:{self.ports[listener]}{path}"

    def log(self) -> str:
        return _tail(self.log_path, 20000)


@pytest.fixture(scope="module")
def gw(moto: Moto, pki: Pki, tmp_path_factory) -> TlsGateway:
    with tls_gateway(moto, pki, tmp_path_factory.mktemp("apgate-tls")) as g:
        yield g


@contextlib.contextmanager
def tls_gateway(moto: Moto, pki: Pki, tmp: Path):
    """An apgate with the four TLS listeners of this module, in front of ``moto``."""
    binary = apgate_bin()
    if not binary.is_file():
        pytest.fail(f"apgate binary not found at {binary} (cargo build --release, or --profile ci as scripts/test)")
    names = ["admin", "mtls", "required", "cn", "dns"]
    ports: dict[str, int] = {}
    while len(set(ports.values()) | {moto.port}) != len(names) + 1:
        ports = {n: free_port() for n in names}
    config = f"""\
# generated by tests/e2e/test_mtls.py
[admin]
address = "127.0.0.1:{ports['admin']}"
{tls_listener("mtls", ports["mtls"], pki, methods=["mtls", "sigv4"], client_certificate="optional",
              identity_from="uri_san", mappings={APP_SPIFFE: "app"})}
{tls_listener("required", ports["required"], pki, methods=["mtls"], client_certificate="required",
              identity_from="uri_san", mappings={APP_SPIFFE: "app"})}
{tls_listener("cn", ports["cn"], pki, methods=["mtls"], client_certificate="optional",
              identity_from="common_name", mappings={APP_CN: "app"})}
{tls_listener("dns", ports["dns"], pki, methods=["mtls"], client_certificate="optional",
              identity_from="dns_san", mappings={APP_DNS: "app"})}
[sigv4]
accepted_regions = ["{REGION}"]
max_clock_skew_seconds = 900

[upstream]
region = "{REGION}"
endpoint = {{ mode = "custom", url = "http://127.0.0.1:{moto.port}" }}
connect_timeout_seconds = 5
response_header_timeout_seconds = 60

[credentials]
type = "static"
access_key_id = {{ env = "APGATE_UPSTREAM_ACCESS_KEY_ID" }}
secret_access_key = {{ env = "APGATE_UPSTREAM_SECRET_ACCESS_KEY" }}

[[identities]]
name = "bob"

[[identities.keys]]
access_key_id = "{BOB_ACCESS_KEY_ID}"
secret_access_key = {{ env = "APGATE_TEST_BOB_SECRET" }}

[[identities]]
name = "app"

[[routes]]
identity = "bob"
bucket = "{BUCKET}"
prefix = "Bob/"
access_point = "arn:aws:s3:{REGION}:{ACCOUNT}:accesspoint/{BOB_AP}"

[[routes]]
identity = "app"
bucket = "{BUCKET}"
prefix = "app/"
operations = ["read", "list"]
access_point = "arn:aws:s3:{REGION}:{ACCOUNT}:accesspoint/{APP_AP}"
"""
    config_path = tmp / "apgate.toml"
    config_path.write_text(config)
    bob_secret = secrets.token_urlsafe(30)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "APGATE_"))}
    env.update({
        "APGATE_UPSTREAM_ACCESS_KEY_ID": moto.access_key_id,
        "APGATE_UPSTREAM_SECRET_ACCESS_KEY": moto.secret_access_key,
        "APGATE_TEST_BOB_SECRET": bob_secret,
        "AWS_EC2_METADATA_DISABLED": "true",
        **apgate_log_env(),
    })
    log_path = tmp / "apgate.log"
    # the server's private key too: its PEM body lines
    key_lines = [line for line in pki.server.key.read_text().splitlines() if line and not line.startswith("-----")]
    register_apgate(log_path, bob_secret, moto.secret_access_key, *key_lines)
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([str(binary), "serve", "-c", str(config_path)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    try:
        deadline = time.monotonic() + 30
        while _readyz(f"http://127.0.0.1:{ports['admin']}/readyz") != 200:
            if proc.poll() is not None:
                pytest.fail(f"apgate exited with {proc.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                pytest.fail(f"apgate /readyz not 200 after 30s:\n{_tail(log_path)}")
            time.sleep(0.1)
        yield TlsGateway(ports=ports, bob_secret=bob_secret, log_path=log_path, moto=moto,
                         config_path=config_path, proc=proc)
    finally:
        stop(proc)


# ----------------------------------------------------------------------------- helpers

@dataclass
class CurlResult:
    rc: int
    status: str       # curl's %{http_code}: "000" when no HTTP response arrived
    body: bytes
    stderr: str


def curl(url: str, pki: Pki, client: certs.Pair | None = None, *extra: str) -> CurlResult:
    body = Path(pki.ca.cert).parent / f"curl-{uuid.uuid4().hex}.out"
    args = ["curl", "-sS", "--max-time", "10", "--cacert", str(pki.ca.cert),
            "-o", str(body), "-w", "%{http_code}", *extra]
    if client is not None:
        args += ["--cert", str(client.cert), "--key", str(client.key)]
    r = subprocess.run([*args, url], capture_output=True, text=True, timeout=30)
    data = body.read_bytes() if body.exists() else b""
    return CurlResult(r.returncode, r.stdout.strip(), data, r.stderr)


def s3_client(gw: TlsGateway, pki: Pki, listener: str, *, cert: certs.Pair | None = None,
              bob: bool = False):
    kw = {}
    if bob:
        kw.update(aws_access_key_id=BOB_ACCESS_KEY_ID, aws_secret_access_key=gw.bob_secret)
    config = Config(
        s3={"addressing_style": "path"},
        signature_version="s3v4" if bob else UNSIGNED,
        retries=NO_RETRIES, connect_timeout=5, read_timeout=30,
        client_cert=cert.as_tuple if cert else None,
    )
    return boto3.client("s3", endpoint_url=gw.url(listener), region_name=REGION,
                        verify=str(pki.ca.cert), config=config, **kw)


def error_of(exc: ClientError) -> tuple[str, int]:
    return exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]


def assert_app_read_upstream(entries: list[dict]) -> None:
    assert entries, "nothing reached moto"
    assert all(e["host"].startswith(APP_UPSTREAM_HOST_PREFIX) for e in entries), entries
    assert all(e["authorization_present"] for e in entries), entries


def seed_url(gw: TlsGateway, listener: str) -> str:
    return gw.url(listener, f"/{BUCKET}/{SEED_KEY}")


def wait_for_log(gw: TlsGateway, needle: str, since: int, timeout: float = 3.0) -> str:
    """apgate's log from byte ``since`` once it contains ``needle`` (or as it is at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        with open(gw.log_path, "rb") as fh:
            fh.seek(since)
            text = fh.read().decode("utf-8", "replace")
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def log_size(gw: TlsGateway) -> int:
    return gw.log_path.stat().st_size


# ----------------------------------------------------------------------------- 1. curl, app's cert

def test_curl_with_the_apps_certificate_reads_the_seed(gw, pki, moto):
    mark = moto.log_mark()
    r = curl(seed_url(gw, "mtls"), pki, pki.app)
    assert (r.rc, r.status) == (0, "200"), (r, gw.log()[-3000:])
    assert r.body == SEED_BODY
    assert_app_read_upstream(moto.log_since(mark))


# ----------------------------------------------------------------------------- 2. boto3, app's cert

def test_boto3_with_the_apps_certificate_reads_but_may_not_write(gw, pki, moto):
    app = s3_client(gw, pki, "mtls", cert=pki.app)
    mark = moto.log_mark()
    got = app.get_object(Bucket=BUCKET, Key=SEED_KEY)
    assert got["Body"].read() == SEED_BODY
    assert_app_read_upstream(moto.log_since(mark))

    listed = app.list_objects_v2(Bucket=BUCKET, Prefix="app/")
    assert SEED_KEY in [o["Key"] for o in listed.get("Contents", [])]

    mark = moto.log_mark()
    with pytest.raises(ClientError) as e:
        app.put_object(Bucket=BUCKET, Key="app/x", Body=b"nope")
    assert error_of(e.value) == ("AccessDenied", 403)
    assert moto.log_since(mark) == []


def test_certificate_comes_first_in_the_chain(gw, pki, moto):
    """identity_methods = ["mtls", "sigv4"]: with the app's certificate a request signed as bob
    is app's (bob's prefix is closed to it, app's is open)."""
    both = s3_client(gw, pki, "mtls", cert=pki.app, bob=True)
    mark = moto.log_mark()
    with pytest.raises(ClientError) as e:
        both.put_object(Bucket=BUCKET, Key=f"Bob/mtls-{uuid.uuid4().hex[:12]}", Body=b"x")
    assert error_of(e.value) == ("AccessDenied", 403)
    assert moto.log_since(mark) == []
    assert both.get_object(Bucket=BUCKET, Key=SEED_KEY)["Body"].read() == SEED_BODY
    assert_app_read_upstream(moto.log_since(mark))


# ----------------------------------------------------------------------------- 3. no cert: sigv4

def test_no_certificate_on_the_optional_listener_falls_through_to_sigv4(gw, pki, moto, moto_s3):
    bob = s3_client(gw, pki, "mtls", bob=True)
    key = f"Bob/mtls-{uuid.uuid4().hex[:12]}/obj.txt"
    body = os.urandom(3000) + b"end"
    mark = moto.log_mark()
    bob.put_object(Bucket=BUCKET, Key=key, Body=body)
    assert bob.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body
    upstream = moto.log_since(mark)
    assert upstream and all(e["host"].startswith(BOB_UPSTREAM_HOST_PREFIX) for e in upstream), upstream
    # it really landed in the bucket
    assert moto_s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body

    # bob may not use app's prefix
    mark = moto.log_mark()
    with pytest.raises(ClientError) as e:
        bob.get_object(Bucket=BUCKET, Key=SEED_KEY)
    assert error_of(e.value) == ("AccessDenied", 403)
    assert moto.log_since(mark) == []


def test_no_certificate_and_no_signature_is_denied(gw, pki, moto):
    anon = s3_client(gw, pki, "mtls")
    mark = moto.log_mark()
    with pytest.raises(ClientError) as e:
        anon.get_object(Bucket=BUCKET, Key=SEED_KEY)
    assert error_of(e.value) == ("AccessDenied", 403)
    r = curl(seed_url(gw, "mtls"), pki)
    assert (r.rc, r.status) == (0, "403"), r
    assert b"<Code>AccessDenied</Code>" in r.body, r.body
    assert moto.log_since(mark) == []


def test_urls_apgate_hands_out_use_https(gw, pki):
    bob = s3_client(gw, pki, "mtls", bob=True)
    key = f"Bob/mtls-{uuid.uuid4().hex[:12]}/mp.bin"
    mpu = bob.create_multipart_upload(Bucket=BUCKET, Key=key)
    part = bob.upload_part(Bucket=BUCKET, Key=key, UploadId=mpu["UploadId"], PartNumber=1,
                           Body=b"p" * 1024)
    done = bob.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=mpu["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    assert done["Location"].startswith(f"{gw.url('mtls')}/{BUCKET}/"), done["Location"]


# ----------------------------------------------------------------------------- 4. unmapped cert

def test_unmapped_certificate_is_denied(gw, pki, moto):
    mark = moto.log_mark()
    r = curl(seed_url(gw, "mtls"), pki, pki.unmapped)
    assert (r.rc, r.status) == (0, "403"), (r, gw.log()[-3000:])
    assert b"<Code>AccessDenied</Code>" in r.body, r.body
    with pytest.raises(ClientError) as e:
        s3_client(gw, pki, "mtls", cert=pki.unmapped).get_object(Bucket=BUCKET, Key=SEED_KEY)
    assert error_of(e.value) == ("AccessDenied", 403)
    # an unmapped cert does not fall through to sigv4 either: an unmapped cert plus bob's signature
    # is still denied (the certificate decides).
    with pytest.raises(ClientError) as e:
        s3_client(gw, pki, "mtls", cert=pki.unmapped, bob=True).get_object(
            Bucket=BUCKET, Key=SEED_KEY)
    assert error_of(e.value) == ("AccessDenied", 403)
    assert moto.log_since(mark) == []


def test_certificate_without_the_configured_subject_kind_is_denied(gw, pki, moto):
    """A verified certificate with no URI SAN on a `uri_san` listener is refused by the mtls method;
    it does not fall through to sigv4 even with bob's valid signature."""
    mark = moto.log_mark()
    for bob in (False, True):
        with pytest.raises(ClientError) as e:
            s3_client(gw, pki, "mtls", cert=pki.cn, bob=bob).get_object(Bucket=BUCKET, Key=SEED_KEY)
        assert error_of(e.value) == ("AccessDenied", 403)
    assert moto.log_since(mark) == []


# ----------------------------------------------------------------------------- 5. handshake failures

def assert_tls_failure(r: CurlResult) -> None:
    assert r.rc in CURL_TLS_FAILURES, r
    assert r.status == "000", r
    assert r.body == b"", r


def test_certificate_from_another_ca_fails_the_handshake(gw, pki, moto):
    mark, log_mark = moto.log_mark(), log_size(gw)
    for listener in ("mtls", "required"):
        r = curl(seed_url(gw, listener), pki, pki.rogue)
        assert_tls_failure(r)
    with pytest.raises(Exception) as e:
        s3_client(gw, pki, "mtls", cert=pki.rogue).get_object(Bucket=BUCKET, Key=SEED_KEY)
    assert not isinstance(e.value, ClientError), e.value  # no HTTP response at all
    assert moto.log_since(mark) == []
    log = wait_for_log(gw, "TLS handshake failed.", log_mark)
    assert "TLS handshake failed." in log, log


def test_required_listener_without_a_certificate_fails_the_handshake(gw, pki, moto):
    mark, log_mark = moto.log_mark(), log_size(gw)
    assert_tls_failure(curl(seed_url(gw, "required"), pki))
    # signed as bob makes no difference: there is no HTTP exchange to sign
    with pytest.raises(Exception) as e:
        s3_client(gw, pki, "required", bob=True).get_object(Bucket=BUCKET, Key="Bob/x")
    assert not isinstance(e.value, ClientError), e.value
    assert moto.log_since(mark) == []
    log = wait_for_log(gw, "TLS handshake failed.", log_mark)
    assert "TLS handshake failed." in log, log


def test_required_listener_with_the_apps_certificate(gw, pki, moto):
    mark = moto.log_mark()
    r = curl(seed_url(gw, "required"), pki, pki.app)
    assert (r.rc, r.status, r.body) == (0, "200", SEED_BODY), r
    assert_app_read_upstream(moto.log_since(mark))


# ----------------------------------------------------------------------------- 6. CN / DNS SAN modes

def test_common_name_mode(gw, pki, moto):
    mark = moto.log_mark()
    r = curl(seed_url(gw, "cn"), pki, pki.cn)
    assert (r.rc, r.status, r.body) == (0, "200", SEED_BODY), r
    assert_app_read_upstream(moto.log_since(mark))
    # the app's URI-SAN cert has CN app-uri-cert, which this listener does not map
    mark = moto.log_mark()
    for client in (pki.app, pki.dns):
        r = curl(seed_url(gw, "cn"), pki, client)
        assert (r.rc, r.status) == (0, "403"), r
        assert b"<Code>AccessDenied</Code>" in r.body, r.body
    assert moto.log_since(mark) == []


def test_dns_san_mode(gw, pki, moto):
    mark = moto.log_mark()
    got = s3_client(gw, pki, "dns", cert=pki.dns).get_object(Bucket=BUCKET, Key=SEED_KEY)
    assert got["Body"].read() == SEED_BODY
    assert_app_read_upstream(moto.log_since(mark))
    # neither the URI-SAN cert nor the CN-only cert has the mapped DNS name
    mark = moto.log_mark()
    for client in (pki.app, pki.cn):
        r = curl(seed_url(gw, "dns"), pki, client)
        assert (r.rc, r.status) == (0, "403"), r
        assert b"<Code>AccessDenied</Code>" in r.body, r.body
    assert moto.log_since(mark) == []


# ----------------------------------------------------------------------------- 6b. ambiguous identities (issue 16)

def test_a_common_name_under_a_name_constrained_intermediate_names_nobody(gw, pki, moto, tmp_path):
    """Name constraints bind SANs, never the CN: an intermediate limited to team-a names could mint
    any CN, so a CN is not taken from a chain with a constrained intermediate. The same CN under an
    unconstrained intermediate is the control."""
    constrained = certs.make_intermediate(tmp_path, "team-a", pki.ca, cn="team-a CA",
                                          name_constraints="permitted;DNS:.team-a.example.org")
    open_ca = certs.make_intermediate(tmp_path, "open", pki.ca, cn="open CA")
    minted = certs.make_leaf(tmp_path, "minted", constrained, cn=APP_CN, sans=["DNS:x.team-a.example.org"])
    control = certs.make_leaf(tmp_path, "control", open_ca, cn=APP_CN)
    mark = moto.log_mark()
    r = curl(seed_url(gw, "cn"), pki, certs.with_chain(tmp_path, "minted", minted, constrained))
    assert (r.rc, r.status) == (0, "403") and b"<Code>AccessDenied</Code>" in r.body, r
    assert moto.log_since(mark) == []
    r = curl(seed_url(gw, "cn"), pki, certs.with_chain(tmp_path, "control", control, open_ca))
    assert (r.rc, r.status, r.body) == (0, "200", SEED_BODY), r


def test_several_common_names_or_uri_sans_name_nobody(gw, pki, moto, tmp_path):
    """Stacks disagree on which of several CNs or URI SANs they take: apgate takes none."""
    two_cns = [certs.make_leaf(tmp_path, "cn-first", pki.ca, cn=APP_CN, subject=f"/CN={APP_CN}/CN=other"),
               certs.make_leaf(tmp_path, "cn-last", pki.ca, cn=APP_CN, subject=f"/CN=other/CN={APP_CN}")]
    two_uris = certs.make_leaf(tmp_path, "two-uris", pki.ca, cn="two-uris",
                               sans=[f"URI:{APP_SPIFFE}", f"URI:{UNMAPPED_SPIFFE}"])
    mark = moto.log_mark()
    for listener, client in [("cn", two_cns[0]), ("cn", two_cns[1]), ("required", two_uris)]:
        r = curl(seed_url(gw, listener), pki, client)
        assert (r.rc, r.status) == (0, "403") and b"<Code>AccessDenied</Code>" in r.body, (listener, r)
    assert moto.log_since(mark) == []


def test_check_refuses_common_name_with_a_name_constrained_client_ca(pki, tmp_path):
    constrained_root = certs.make_ca(tmp_path, "constrained-root", "constrained root",
                                     name_constraints="permitted;DNS:.team-a.example.org")
    binary = apgate_bin()
    config = tmp_path / "cn.toml"
    for identity_from, want in [("common_name", 64), ("dns_san", 0)]:
        config.write_text(f"""\
[admin]
address = "127.0.0.1:19090"
[[listeners]]
name = "cn"
address = "127.0.0.1:18443"
identity_methods = ["mtls"]
[listeners.tls]
certificate_chain_file = "{pki.server.cert}"
private_key_file = "{pki.server.key}"
client_ca_file = "{constrained_root.cert}"
client_identity_from = "{identity_from}"
[[listeners.client_certificates]]
subject = "{APP_CN}"
identity = "app"
[upstream]
region = "us-east-1"
[credentials]
type = "default"
[[identities]]
name = "app"
""")
        r = subprocess.run([str(binary), "check", "-c", str(config)], capture_output=True, text=True, timeout=30)
        assert r.returncode == want, r.stdout + r.stderr
        if want:
            assert "listeners[0].tls.client_identity_from" in r.stderr and "name constraints" in r.stderr, r.stderr


def reload_and_wait(g: TlsGateway, config: str) -> None:
    """Writes the configuration, sends SIGHUP and waits for apgate to say it reloaded."""
    mark = g.log_path.stat().st_size
    g.config_path.write_text(config)
    g.proc.send_signal(signal.SIGHUP)
    log = wait_for_log(g, "Configuration reloaded.", mark, timeout=15)
    assert "Configuration reloaded." in log, log


def test_a_reload_that_changes_the_trust_applies_to_open_connections(moto, pki, tmp_path):
    """Issue 16: a connection opened with a certificate of the old CA does not keep its identity
    once the client CA is replaced: its next request names nobody, and the connection closes."""
    (tmp_path / "gw").mkdir()
    with tls_gateway(moto, pki, tmp_path / "gw") as g:
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        context.load_cert_chain(str(pki.app.cert), str(pki.app.key))
        conn = http.client.HTTPSConnection("127.0.0.1", g.ports["required"], context=context, timeout=10)
        try:
            conn.request("GET", f"/{BUCKET}/{SEED_KEY}", headers={"Host": f"127.0.0.1:{g.ports['required']}"})
            first = conn.getresponse()
            assert (first.status, first.read()) == (200, SEED_BODY)
            original = g.config_path.read_text()
            # A reload that keeps the trust keeps the connection's identity.
            reload_and_wait(g, original + "\n# the same trust\n")
            conn.request("GET", f"/{BUCKET}/{SEED_KEY}", headers={"Host": f"127.0.0.1:{g.ports['required']}"})
            kept = conn.getresponse()
            assert (kept.status, kept.read()) == (200, SEED_BODY)
            # The client CA replaced by another: the open connection's certificate no longer verifies.
            reload_and_wait(g, original.replace(f'client_ca_file = "{pki.ca.cert}"',
                                                f'client_ca_file = "{pki.rogue_ca.cert}"'))
            mark = moto.log_mark()
            conn.request("GET", f"/{BUCKET}/{SEED_KEY}", headers={"Host": f"127.0.0.1:{g.ports['required']}"})
            refused = conn.getresponse()
            body = refused.read()
            assert refused.status == 403 and b"<Code>AccessDenied</Code>" in body, (refused.status, body)
            assert refused.getheader("connection") == "close"
            assert moto.log_since(mark) == []
        finally:
            conn.close()


# ----------------------------------------------------------------------------- 7. plain HTTP

@pytest.mark.parametrize("listener", ["mtls", "required"])
def test_plain_http_to_a_tls_listener_gets_no_http_response(gw, pki, moto, listener):
    mark = moto.log_mark()
    with socket.create_connection(("127.0.0.1", gw.ports[listener]), timeout=5) as s:
        s.sendall(f"GET /{BUCKET}/{SEED_KEY} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  "Connection: close\r\n\r\n".encode())
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    assert not data.startswith(b"HTTP/"), data
    assert SEED_BODY not in data
    r = curl(f"http://127.0.0.1:{gw.ports[listener]}/{BUCKET}/{SEED_KEY}", pki)
    assert r.rc != 0 and r.status == "000", r
    assert moto.log_since(mark) == []
