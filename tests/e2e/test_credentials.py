"""apgate's own credentials, end to end: the aws-config default chain fed by a (fake) ECS
container-credentials endpoint that rotates short-lived moto STS session credentials, the
behaviour while that endpoint is down, and per-identity roles assumed through moto's STS.

Each test starts its own apgate (and, where needed, its own ECS endpoint) against the module's
moto (conftest.py). The rotation loop dominates the run time (about 75 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

import setup_moto
from conftest import (
    apgate_bin,
    APP_AP_HOST,
    BOB_ACCESS_KEY_ID,
    BOB_AP,
    BOB_AP_HOST,
    BUCKET,
    HERE,
    REGION,
    REPO,
    _readyz,
    _tail,
    apgate_config,
    apgate_log_env,
    free_port,
    register_apgate,
    stop,
    wait_port,
)

# apgate refreshes min(before_expiry, lifetime / 2) ahead of expiry, less a jitter under
# lifetime / 4: with a 16 s lifetime every 4-8 s, so 5-10 rotations during the 40 s loop.
ROTATION_SECONDS = float(os.environ.get("E2E_CRED_ROTATION_SECONDS", "40"))
ROTATION_LIFETIME = 16  # seconds, what the fake ECS endpoint puts in Expiration
ROTATION_RATE = 10.0  # requests per second in the steady loop
OUTAGE_LIFETIME = 20
NO_RETRIES = {"mode": "standard", "total_max_attempts": 1}

CAROL_ACCESS_KEY_ID = "APGTESTCAROL0000001"
DAVE_ACCESS_KEY_ID = "APGTESTDAVE00000001"
MISSING_ROLE_ARN = setup_moto.role_arn("no-such-role")

_STATIC_CREDENTIALS = """\
[credentials]
type = "static"
access_key_id = { env = "APGATE_UPSTREAM_ACCESS_KEY_ID" }
secret_access_key = { env = "APGATE_UPSTREAM_SECRET_ACCESS_KEY" }
"""


# ----------------------------------------------------------------------------- helpers

def client_config() -> Config:
    return Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                  retries=NO_RETRIES, connect_timeout=5, read_timeout=60)


def s3_client(endpoint: str, access_key_id: str, secret: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id=access_key_id, aws_secret_access_key=secret,
                        config=client_config())


def sidecar_client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                        config=Config(s3={"addressing_style": "path"}, signature_version=UNSIGNED,
                                      retries=NO_RETRIES, connect_timeout=5, read_timeout=60))


def error_of(exc: ClientError) -> tuple[str, int]:
    return exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]


def http(method: str, url: str, timeout: float = 5) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metrics(admin_url: str) -> list[tuple[str, dict, float]]:
    status, body = http("GET", f"{admin_url}/metrics")
    assert status == 200, body
    out = []
    for line in body.decode().splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            out.append((m["name"], dict(_LABEL.findall(m["labels"] or "")), float(m["value"])))
    return out


def metric(samples, name: str, **labels) -> float | None:
    """Sum of the samples of `name` whose labels include `labels`; None if there is none."""
    got = [v for n, l, v in samples if n == name and all(l.get(k) == v2 for k, v2 in labels.items())]
    return sum(got) if got else None


def s3_entries(entries: list[dict], host: str | None = None) -> list[dict]:
    """Requests moto saw on an access point host (i.e. S3 requests apgate forwarded)."""
    return [e for e in entries if ".s3-accesspoint." in (e.get("host") or "")
            and (host is None or e["host"] == host)]


def sts_entries(entries: list[dict]) -> list[dict]:
    return [e for e in entries if e.get("host", "").startswith("127.0.0.1:") and e["method"] == "POST"
            and e["raw_uri"].split("?")[0] == "/"]


def distinct_in_order(items) -> list:
    out = []
    for x in items:
        if not out or out[-1] != x:
            out.append(x)
    return out


def moto_assumed_roles(moto) -> list[dict]:
    status, body = http("GET", f"{moto.endpoint}/moto-api/data.json", timeout=30)
    assert status == 200, body[:500]
    return json.loads(body).get("sts", {}).get("AssumedRole", [])


# ----------------------------------------------------------------------------- ECS endpoint

@dataclass
class EcsServer:
    port: int
    token: str
    proc: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def credentials_uri(self) -> str:
        return f"{self.url}/creds"

    def stats(self) -> dict:
        status, body = http("GET", f"{self.url}/control/stats")
        assert status == 200, body
        return json.loads(body)

    def pause(self, mode: str = "500") -> None:
        status, body = http("POST", f"{self.url}/control/pause?mode={mode}")
        assert status == 200, body

    def resume(self) -> None:
        status, body = http("POST", f"{self.url}/control/resume")
        assert status == 200, body


@contextlib.contextmanager
def ecs_server(moto, tmp: Path, lifetime: float):
    port = free_port()
    token = secrets.token_urlsafe(24)
    register_apgate(None, token)  # apgate sends it to the endpoint: never to its log
    log = tmp / f"ecs-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "ECS_FAKE_STS_ACCESS_KEY_ID": moto.access_key_id,
        "ECS_FAKE_STS_SECRET_ACCESS_KEY": moto.secret_access_key,
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "ecs_credentials_server.py"), "--port", str(port),
             f"--token={token}", "--sts-endpoint", moto.endpoint, "--region", REGION,
             "--role-arn", setup_moto.role_arn(setup_moto.TASK_ROLE), "--lifetime", str(lifetime)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    try:
        wait_port(port, proc, 30, log)
        yield EcsServer(port=port, token=token, proc=proc, log=log)
    finally:
        stop(proc)


# ----------------------------------------------------------------------------- apgate

@dataclass
class Gateway:
    admin_url: str
    shared_endpoint: str
    sidecar_endpoint: str
    bob_secret: str
    log_path: Path
    proc: subprocess.Popen

    def log(self) -> str:
        return _tail(self.log_path, 20000)

    def readyz(self) -> int | None:
        return _readyz(f"{self.admin_url}/readyz")

    def bob(self):
        return s3_client(self.shared_endpoint, BOB_ACCESS_KEY_ID, self.bob_secret)

    def metrics(self):
        return metrics(self.admin_url)


def gateway_config(admin: int, shared: int, sidecar: int, moto_port: int, *,
                   credentials: str | None = None, roles: dict[str, str] | None = None,
                   extra: str = "") -> str:
    """conftest's config, with [credentials] replaced by `credentials`, `role_arn` added to the
    identities in `roles`, and `extra` appended."""
    text = apgate_config(admin, shared, sidecar, moto_port)
    if credentials is not None:
        assert text.count(_STATIC_CREDENTIALS) == 1, "conftest's [credentials] block changed"
        text = text.replace(_STATIC_CREDENTIALS, credentials)
    for name, arn in (roles or {}).items():
        line = f'name = "{name}"\n'
        assert text.count(line) == 1, f"identity {name} not in conftest's config"
        text = text.replace(line, f'{line}role_arn = "{arn}"\n')
    return text + extra


@contextlib.contextmanager
def run_apgate(moto, tmp: Path, *, env: dict, credentials: str | None = None,
               roles: dict[str, str] | None = None, extra: str = "", wait_ready: bool = True):
    binary = apgate_bin()
    if not binary.is_file():
        pytest.fail(f"apgate binary not found at {binary} (cargo build --release, or --profile ci as scripts/test)")
    ports: set[int] = {moto.port}
    admin, shared, sidecar = 0, 0, 0
    while len(ports) < 4:
        admin, shared, sidecar = free_port(), free_port(), free_port()
        ports = {moto.port, admin, shared, sidecar}
    config = tmp / f"apgate-{admin}.toml"
    config.write_text(gateway_config(admin, shared, sidecar, moto.port, credentials=credentials,
                                     roles=roles, extra=extra))
    bob_secret = secrets.token_urlsafe(30)
    env = dict(env, APGATE_TEST_BOB_SECRET=bob_secret, **apgate_log_env())
    log_path = tmp / f"apgate-{admin}.log"
    register_apgate(log_path, bob_secret, *(v for k, v in env.items() if k.endswith(("SECRET_ACCESS_KEY", "TOKEN"))),
                    *re.findall(r'insecure_inline = "([^"]+)"', extra))
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([str(binary), "serve", "-c", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    gw = Gateway(admin_url=f"http://127.0.0.1:{admin}", shared_endpoint=f"http://127.0.0.1:{shared}",
                 sidecar_endpoint=f"http://127.0.0.1:{sidecar}", bob_secret=bob_secret,
                 log_path=log_path, proc=proc)
    try:
        # The admin port answering /healthz means start-up (including the credential warm-up) is over.
        wait_port(admin, proc, 30, log_path)
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"apgate exited with {proc.returncode}:\n{_tail(log_path)}")
            status = _readyz(f"{gw.admin_url}/readyz")
            if status == 200 or (not wait_ready and status is not None):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"apgate /readyz not 200 after 30s (last {status}):\n{_tail(log_path)}")
            time.sleep(0.1)
        wait_port(shared, proc, 10, log_path)
        wait_port(sidecar, proc, 10, log_path)
        yield gw
    finally:
        stop(proc)
        print(f"\n[apgate log {log_path}]")


def static_env(moto) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and not k.startswith("APGATE_")}
    env.update({
        "APGATE_UPSTREAM_ACCESS_KEY_ID": moto.access_key_id,
        "APGATE_UPSTREAM_SECRET_ACCESS_KEY": moto.secret_access_key,
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    return env


def ecs_env(ecs: EcsServer, tmp: Path) -> dict:
    """apgate's whole environment for the ECS case, built from scratch: nothing but the ECS
    variables can give the default chain credentials."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    empty_config, empty_credentials = tmp / "aws-config", tmp / "aws-credentials"
    empty_config.write_text("")
    empty_credentials.write_text("")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": ecs.credentials_uri,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": ecs.token,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(empty_config),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty_credentials),
    }
    env.update(apgate_log_env())
    for forbidden in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                      "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        assert forbidden not in env
    return env


DEFAULT_CREDENTIALS = '[credentials]\ntype = "default"\n'


# ----------------------------------------------------------------------------- 1. rotation

def test_ecs_credentials_rotate_under_steady_load(moto, tmp_path):
    with ecs_server(moto, tmp_path, ROTATION_LIFETIME) as ecs:
        # The fake endpoint itself: wrong token -> 401 and nothing issued.
        req = urllib.request.Request(ecs.credentials_uri, headers={"Authorization": "wrong"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 401
        assert ecs.stats()["unauthorized"] == 1 and ecs.stats()["served"] == 0

        with run_apgate(moto, tmp_path, env=ecs_env(ecs, tmp_path), credentials=DEFAULT_CREDENTIALS) as gw:
            assert ecs.stats()["served"] >= 1, "apgate became ready without calling the ECS endpoint"
            bob = gw.bob()
            base = f"Bob/cred-rotation-{uuid.uuid4().hex[:8]}/"
            served_before = ecs.stats()["served"]
            mark = moto.log_mark()
            requests = failures = 0
            errors: list[str] = []
            t0 = time.monotonic()
            next_at = t0
            i = 0
            while time.monotonic() - t0 < ROTATION_SECONDS:
                key = f"{base}{(i // 2) % 20}.txt"
                body = f"rotation {i // 2}".encode()
                requests += 1
                try:
                    if i % 2 == 0:
                        bob.put_object(Bucket=BUCKET, Key=key, Body=body)
                    else:
                        got = bob.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                        if got != body:
                            raise AssertionError(f"GET {key}: {got!r} != {body!r}")
                except Exception as exc:  # noqa: BLE001 - every failure counts
                    failures += 1
                    if len(errors) < 10:
                        errors.append(f"t={time.monotonic() - t0:.1f}s #{i}: {exc!r}")
                i += 1
                next_at += 1 / ROTATION_RATE
                time.sleep(max(0.0, next_at - time.monotonic()))
            elapsed = time.monotonic() - t0
            upstream = s3_entries(moto.log_since(mark), BOB_AP_HOST)
            stats = ecs.stats()
            samples = gw.metrics()
            ready = gw.readyz()
            log = gw.log()

        keys_seen = [e.get("access_key_id") for e in upstream]
        key_sequence = distinct_in_order(keys_seen)
        issued_keys = [x["access_key_id"] for x in stats["issued"]]
        refreshed_ok = metric(samples, "apgate_credential_refreshes_total", principal="base", result="success")
        refresh_failed = metric(samples, "apgate_credential_refreshes_total", principal="base", result="failure")
        print(
            f"\n[rotation] {elapsed:.1f}s, credentials lifetime {ROTATION_LIFETIME}s: "
            f"requests={requests} failures={failures} ({requests / elapsed:.1f} req/s); "
            f"ECS endpoint: served={stats['served']} (during the loop {stats['served'] - served_before}), "
            f"unauthorized={stats['unauthorized']}, errors={stats['errors']}; "
            f"upstream S3 requests={len(upstream)}, distinct upstream access keys={len(set(keys_seen))}; "
            f"apgate refreshes success={refreshed_ok} failure={refresh_failed}"
        )
        issued_at = [x["issued_at"] for x in stats["issued"]]
        print(f"[rotation] intervals between ECS fetches: "
              f"{[round(b - a, 1) for a, b in zip(issued_at, issued_at[1:])]}")

        assert failures == 0, f"{failures}/{requests} requests failed: {errors}\n{log[-4000:]}"
        assert requests >= ROTATION_SECONDS * ROTATION_RATE * 0.8
        assert stats["served"] >= 3, stats
        assert stats["unauthorized"] == 1, "apgate sent a wrong/missing Authorization token"
        assert stats["errors"] == 0, stats
        # Every request reached moto, signed with session credentials the ECS endpoint issued.
        assert len(upstream) == requests, (len(upstream), requests)
        assert all(e.get("security_token_present") for e in upstream), [e for e in upstream if not e.get("security_token_present")][:3]
        assert moto.access_key_id not in keys_seen
        assert set(keys_seen) <= set(issued_keys), set(keys_seen) - set(issued_keys)
        # The key changed over time, moving forward through the issued keys (never back).
        assert len(set(keys_seen)) >= 3, key_sequence
        assert len(key_sequence) == len(set(key_sequence)), f"an older key came back: {key_sequence}"
        positions = [issued_keys.index(k) for k in key_sequence]
        assert positions == sorted(positions), (key_sequence, issued_keys)
        assert refreshed_ok is not None and refreshed_ok >= 3, samples
        assert not refresh_failed, f"refresh failures: {refresh_failed}"
        assert refreshed_ok == stats["served"], (refreshed_ok, stats["served"])
        assert ready == 200


# ----------------------------------------------------------------------------- 2. outage

def test_ecs_endpoint_down_then_back(moto, tmp_path):
    with ecs_server(moto, tmp_path, OUTAGE_LIFETIME) as ecs, \
            run_apgate(moto, tmp_path, env=ecs_env(ecs, tmp_path), credentials=DEFAULT_CREDENTIALS) as gw:
        bob = gw.bob()
        key = f"Bob/cred-outage-{uuid.uuid4().hex[:8]}.txt"
        bob.put_object(Bucket=BUCKET, Key=key, Body=b"outage")

        ecs.pause("500")
        issued = ecs.stats()["issued"]
        expiry = issued[-1]["expiration"]  # what apgate holds: nothing is issued from now on
        old_key = issued[-1]["access_key_id"]
        gauge = metric(gw.metrics(), "apgate_credentials_expiry_seconds", principal="base")
        assert gauge is not None and abs(gauge - (expiry - time.time())) < 2.5, (gauge, expiry - time.time())

        # Cached credentials keep serving until they expire.
        ok_while_valid = 0
        while time.time() < expiry - 1.5:
            assert bob.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"outage"
            ok_while_valid += 1
            time.sleep(0.5)
        samples = gw.metrics()
        failed_refreshes = metric(samples, "apgate_credential_refreshes_total", principal="base", result="failure")
        paused_hits = ecs.stats()["paused"]
        assert failed_refreshes and failed_refreshes > 0, "no failed background refresh while the endpoint was down"
        assert paused_hits > 0
        assert gw.readyz() == 200, "not ready although the cached credentials are still valid"

        # Expired: a clear S3 error, no upstream request, not ready.
        time.sleep(max(0.0, expiry + 0.5 - time.time()))
        outcomes = {}
        for mode in ("500", "refuse"):
            ecs.pause(mode)
            mark = moto.log_mark()
            t = time.monotonic()
            with pytest.raises(ClientError) as e:
                bob.get_object(Bucket=BUCKET, Key=key)
            outcomes[mode] = round(time.monotonic() - t, 2)
            assert error_of(e.value) == ("ServiceUnavailable", 503), e.value.response
            assert s3_entries(moto.log_since(mark)) == []
            assert gw.readyz() == 503
        samples = gw.metrics()
        left = metric(samples, "apgate_credentials_expiry_seconds", principal="base")
        assert left is None or left <= 0, left
        failed_refreshes = metric(samples, "apgate_credential_refreshes_total", principal="base", result="failure")

        # Back: requests succeed again within a few seconds, without a restart.
        ecs.resume()
        t = time.monotonic()
        recovered = None
        last_error = None
        while time.monotonic() - t < 10:
            try:
                assert bob.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"outage"
                recovered = time.monotonic() - t
                break
            except ClientError as exc:
                last_error = exc.response
                time.sleep(0.2)
        stats = ecs.stats()
        print(f"\n[outage] lifetime {OUTAGE_LIFETIME}s: {ok_while_valid} GETs ok on cached credentials while "
              f"the endpoint was down; failed refreshes by expiry+: {failed_refreshes}; ECS hits while paused: "
              f"{stats['paused']}; time to the 503 (500 / refused connection): {outcomes}; recovered after "
              f"resume in {recovered if recovered is None else round(recovered, 2)}s")
        assert recovered is not None and recovered <= 5, (recovered, last_error, gw.log()[-3000:])
        assert gw.proc.poll() is None
        assert gw.readyz() == 200
        assert stats["issued"][-1]["access_key_id"] != old_key


# ----------------------------------------------------------------------------- 3. roles

STS_EXTRA = """
[sts]
region = "{region}"
endpoint_url = "{endpoint}"
"""


def test_identities_sign_with_their_own_assumed_roles(moto, tmp_path):
    roles = {"bob": setup_moto.role_arn(setup_moto.BOB_ROLE), "app": setup_moto.role_arn(setup_moto.APP_ROLE)}
    mark = moto.log_mark()
    with run_apgate(moto, tmp_path, env=static_env(moto), roles=roles,
                    extra=STS_EXTRA.format(region=REGION, endpoint=moto.endpoint)) as gw:
        startup = moto.log_since(mark)
        mark = moto.log_mark()
        bob = gw.bob()
        key = f"Bob/cred-roles-{uuid.uuid4().hex[:8]}.txt"
        bob.put_object(Bucket=BUCKET, Key=key, Body=b"via bob-role")
        assert bob.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"via bob-role"
        app = sidecar_client(gw.sidecar_endpoint)
        assert app.get_object(Bucket=BUCKET, Key=setup_moto.SEED_KEY)["Body"].read() == setup_moto.SEED_BODY
        entries = moto.log_since(mark)
        samples = gw.metrics()

    # apgate assumed both roles (signed as the apgate user, no token) at start-up.
    assume_calls = sts_entries(startup)
    assert len(assume_calls) >= 2, startup
    assert all(e.get("access_key_id") == moto.access_key_id and not e.get("security_token_present") for e in assume_calls)

    bob_up, app_up = s3_entries(entries, BOB_AP_HOST), s3_entries(entries, APP_AP_HOST)
    assert len(bob_up) == 2 and len(app_up) == 1, entries
    assert all(e.get("security_token_present") for e in bob_up + app_up), bob_up + app_up
    bob_keys = {e.get("access_key_id") for e in bob_up}
    app_keys = {e.get("access_key_id") for e in app_up}
    assert len(bob_keys) == 1 and len(app_keys) == 1, (bob_keys, app_keys)
    (bob_key,), (app_key,) = bob_keys, app_keys
    assert bob_key != app_key
    assert moto.access_key_id not in (bob_key, app_key)

    by_key = {r["access_key_id"]: r for r in moto_assumed_roles(moto)}
    assert by_key[bob_key]["role_arn"] == roles["bob"], by_key[bob_key]
    assert by_key[app_key]["role_arn"] == roles["app"], by_key[app_key]
    assert by_key[bob_key]["session_name"] == "apgate-bob"
    assert by_key[app_key]["session_name"] == "apgate-app"
    print(f"\n[roles] bob -> {bob_key} ({by_key[bob_key]['arn']}), app -> {app_key} ({by_key[app_key]['arn']})")

    for who in ("bob", "app"):
        left = metric(samples, "apgate_credentials_expiry_seconds", principal=f"identity:{who}")
        assert left is not None and left > 0, (who, left)
        assert metric(samples, "apgate_credential_refreshes_total", principal=f"identity:{who}", result="success") >= 1
    # static base credentials never expire: no gauge for them
    assert metric(samples, "apgate_credentials_expiry_seconds", principal="base") is None


# ----------------------------------------------------------------------------- 4. unassumable roles

UNASSUMABLE_EXTRA = f"""
[[identities]]
name = "carol"
role_arn = "{setup_moto.role_arn(setup_moto.UNTRUSTED_ROLE)}"

[[identities.keys]]
access_key_id = "{CAROL_ACCESS_KEY_ID}"
secret_access_key = {{ insecure_inline = "carol-secret-0123456789" }}

[[identities]]
name = "dave"
role_arn = "{MISSING_ROLE_ARN}"

[[identities.keys]]
access_key_id = "{DAVE_ACCESS_KEY_ID}"
secret_access_key = {{ insecure_inline = "dave-secret-0123456789" }}

[[routes]]
identity = "carol"
bucket = "{BUCKET}"
prefix = "Carol/"
access_point = "arn:aws:s3:{REGION}:{setup_moto.ACCOUNT}:accesspoint/{BOB_AP}"

[[routes]]
identity = "dave"
bucket = "{BUCKET}"
prefix = "Dave/"
access_point = "arn:aws:s3:{REGION}:{setup_moto.ACCOUNT}:accesspoint/{BOB_AP}"
"""


@pytest.mark.parametrize("who,access_key_id,secret,prefix", [
    ("carol", CAROL_ACCESS_KEY_ID, "carol-secret-0123456789", "Carol/"),  # trust policy names someone else
    ("dave", DAVE_ACCESS_KEY_ID, "dave-secret-0123456789", "Dave/"),  # role does not exist
])
def test_unassumable_role(moto, tmp_path, who, access_key_id, secret, prefix):
    roles = {"bob": setup_moto.role_arn(setup_moto.BOB_ROLE), "app": setup_moto.role_arn(setup_moto.APP_ROLE)}
    extra = STS_EXTRA.format(region=REGION, endpoint=moto.endpoint) + UNASSUMABLE_EXTRA
    with run_apgate(moto, tmp_path, env=static_env(moto), roles=roles, extra=extra, wait_ready=False) as gw:
        assert gw.proc.poll() is None
        assert gw.readyz() == 503

        client = s3_client(gw.shared_endpoint, access_key_id, secret)
        mark = moto.log_mark()
        t = time.monotonic()
        with pytest.raises(ClientError) as e:
            client.put_object(Bucket=BUCKET, Key=f"{prefix}x.txt", Body=b"nope")
        took = time.monotonic() - t
        assert error_of(e.value) == ("ServiceUnavailable", 503), e.value.response
        entries = moto.log_since(mark)
        assert s3_entries(entries) == [], "a request was forwarded without credentials"
        sts_calls = sts_entries(entries)

        # everybody else still works
        bob = gw.bob()
        key = f"Bob/cred-unassumable-{uuid.uuid4().hex[:8]}.txt"
        bob.put_object(Bucket=BUCKET, Key=key, Body=b"still fine")
        assert bob.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"still fine"
        app = sidecar_client(gw.sidecar_endpoint)
        assert app.get_object(Bucket=BUCKET, Key=setup_moto.SEED_KEY)["Body"].read() == setup_moto.SEED_BODY

        samples = gw.metrics()
        assert gw.readyz() == 503
        log = gw.log()

    assert metric(samples, "apgate_credential_refreshes_total", principal=f"identity:{who}", result="failure") >= 1
    # Exported from the start (so the failure alert sees the first failure), and never a success.
    assert metric(samples, "apgate_credential_refreshes_total", principal=f"identity:{who}", result="success") == 0
    assert metric(samples, "apgate_credentials_expiry_seconds", principal=f"identity:{who}") is None
    assert metric(samples, "apgate_credentials_expiry_seconds", principal="identity:bob") > 0
    why = [line for line in log.splitlines() if f"identity:{who}" in line]
    assert why, log[-3000:]
    print(f"\n[unassumable {who}] 503 in {took:.2f}s; STS calls made for that request: {len(sts_calls)}; "
          f"apgate log: {why[0][:400]}")
