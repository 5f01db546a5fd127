"""Shared fixtures for apgate's end-to-end tests.

- ``moto``: a fresh moto server (moto_launcher.py, SigV4 fix, request log) set up by
  setup_moto.py, with SigV4 + IAM enforced. Module scope: every test module gets its
  own world.
- ``apgate``: the apgate binary in front of that moto, with a generated config
  (shared SigV4 listener, sidecar source listener, admin port).

Run: target/e2e-venv/bin/python -m pytest tests/e2e -q

Environment knobs:
- APGATE_BIN: apgate binary (default target/<APGATE_CARGO_PROFILE or release>/apgate; scripts/test
  builds and runs the ci profile).
- E2E_APGATE_LOG: RUST_LOG for every apgate the suite starts (default "trace": the most verbose
  logs apgate can write, which test_zzz_no_secrets.py scans for secrets; scripts/test sets it).
- E2E_MOTO_LAUNCHER_ARGS: extra launcher args; "--without-sigv4-fix" reproduces
  moto's stock signature bug (diagnostics only).
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import setup_moto  # noqa: E402

REGION = "us-east-1"
ACCOUNT = setup_moto.ACCOUNT
BUCKET = setup_moto.BUCKET
BOB_AP = setup_moto.BOB_AP
APP_AP = setup_moto.APP_AP
BOB_AP_HOST = f"{BOB_AP}-{ACCOUNT}.s3-accesspoint.{REGION}.amazonaws.com"
APP_AP_HOST = f"{APP_AP}-{ACCOUNT}.s3-accesspoint.{REGION}.amazonaws.com"
BOB_ACCESS_KEY_ID = "APGTESTBOB0000000001"
# A client-facing bucket name for bob that differs from the real bucket (see apgate_config).
BOB_ALIAS_BUCKET = "bob-legacy-name"


# Every secret an apgate of this test session was given or handled (its keys, the upstream
# credentials, session tokens, tokens for credential endpoints); test_zzz_no_secrets.py checks that
# none of them appears in any apgate log of the session. Whatever starts an apgate calls
# register_apgate() with its log and its secrets.
SECRETS_GIVEN_TO_APGATE: set[str] = set()
# Every apgate log of the session (register_apgate); test_zzz_no_secrets.py scans them all.
APGATE_LOGS: set[Path] = set()
# Signatures this test process's botocore computed (SigV4 header and query, SigV2): a sample of the
# signatures clients sent to apgate, which must not appear in its logs either.
CLIENT_SIGNATURES: set[str] = set()
_MAX_CLIENT_SIGNATURES = 50_000


def apgate_log_filter() -> str:
    """RUST_LOG for every apgate the suite starts (E2E_APGATE_LOG, default trace)."""
    return os.environ.get("E2E_APGATE_LOG", "").strip() or "trace"


def apgate_log_env() -> dict[str, str]:
    """The logging part of an apgate's environment; every apgate the suite starts gets it."""
    return {"RUST_LOG": apgate_log_filter()}


# ---------------------------------------------------------------- the session's record
#
# What test_zzz_no_secrets.py needs (apgate logs, the secrets they were given, client signatures,
# the temporary directories to search) is also written to E2E_SESSION_DIR, one file per process and
# kind: the suite runs its modules in parallel processes (pytest-xdist, scripts/test), and the
# secret scan runs afterwards in a process of its own that reads what all of them recorded.


def session_dir() -> Path:
    """E2E_SESSION_DIR (scripts/test sets it; otherwise pytest_configure makes one per session)."""
    path = Path(os.environ["E2E_SESSION_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    return path


def _record(kind: str, payload) -> None:
    with open(session_dir() / f"{kind}-{os.getpid()}.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(payload) + "\n")


def session_record() -> dict:
    """Everything every process of this session recorded (this one's included: it records as it
    goes), with the client signatures this process computed since it last wrote them."""
    out = {"logs": set(), "secrets": set(), "signatures": set(CLIENT_SIGNATURES), "tokens": 0,
           "problems": [], "basetemps": set()}
    for path in sorted(session_dir().glob("*-*.jsonl")):
        kind = path.name.rsplit("-", 1)[0]
        for line in path.read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            if kind == "apgates":
                if item["log"]:
                    out["logs"].add(Path(item["log"]))
                out["secrets"].update(item["secrets"])
            elif kind == "signatures":
                out["signatures"].update(item)
            elif kind == "tokens":
                out["tokens"] += item
            elif kind == "problems":
                out["problems"].append(item)
            elif kind == "basetemps":
                out["basetemps"].add(Path(item))
    return out


def register_apgate(log: Path | None, *secrets: str) -> None:
    """An apgate of this session: its log (scanned at the end) and the secrets it was given."""
    if log is not None:
        APGATE_LOGS.add(Path(log))
    given = [s for s in secrets if s]
    SECRETS_GIVEN_TO_APGATE.update(given)
    _record("apgates", {"log": str(Path(log).resolve()) if log is not None else None, "secrets": given})


def pytest_configure(config) -> None:
    # Set before pytest-xdist starts its workers (at session start), so they inherit it.
    if not os.environ.get("E2E_SESSION_DIR"):
        os.environ["E2E_SESSION_DIR"] = tempfile.mkdtemp(prefix="apgate-e2e-session-")


_SIGNATURES_WRITTEN: set[str] = set()


def _write_signatures() -> None:
    new = CLIENT_SIGNATURES - _SIGNATURES_WRITTEN
    if new:
        _record("signatures", sorted(new))
        _SIGNATURES_WRITTEN.update(new)


@pytest.fixture(scope="module", autouse=True)
def _record_signatures_per_module():
    """After every module, so that a worker that dies later has still recorded what its clients
    signed."""
    yield
    _write_signatures()


def pytest_sessionfinish(session) -> None:
    _write_signatures()


@pytest.fixture(scope="session", autouse=True)
def _record_basetemp(tmp_path_factory):
    _record("basetemps", str(tmp_path_factory.getbasetemp().resolve()))


# Under pytest-xdist (scripts/test: --dist loadfile --no-loadscope-reorder, which keeps this
# order) the modules that take longest go first, so that the workers do not end with one of them
# alone, and the Rust SDK's last (scripts/test builds its client meanwhile). Run in one process,
# files keep their name order (the secret scan last).
SLOW_FIRST = ("test_soak.py", "test_credentials.py", "test_resource_bounds.py", "test_answers.py",
              "test_observability.py", "test_faults.py", "test_lifecycle.py", "test_demo.py")
LAST = ("test_rust_sdk.py",)


def pytest_collection_modifyitems(config, items) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return

    def rank(item) -> int:
        name = item.path.name
        if name in LAST:
            return len(SLOW_FIRST) + 1 + LAST.index(name)
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: the order within a module is kept


def _record_client_signatures() -> None:
    """Wrap botocore's signature functions (results unchanged) to remember what they computed."""
    import botocore.auth as auth

    if getattr(auth.SigV4Auth.signature, "_e2e_recording", False):
        return
    v4, v1 = auth.SigV4Auth.signature, auth.HmacV1Auth.sign_string

    def signature(self, string_to_sign, request):
        sig = v4(self, string_to_sign, request)
        if len(CLIENT_SIGNATURES) < _MAX_CLIENT_SIGNATURES:
            CLIENT_SIGNATURES.add(sig)
        return sig

    def sign_string(self, string_to_sign):
        sig = v1(self, string_to_sign)
        if len(CLIENT_SIGNATURES) < _MAX_CLIENT_SIGNATURES:
            CLIENT_SIGNATURES.add(sig)
        return sig

    signature._e2e_recording = True  # type: ignore[attr-defined]
    auth.SigV4Auth.signature = signature  # covers S3SigV4Auth and the query (presign) variants
    auth.HmacV1Auth.sign_string = sign_string  # SigV2 header and query auth


_record_client_signatures()


# STS session tokens registered (register_moto_session_secrets), and what went wrong doing it.
SESSION_TOKENS_REGISTERED: list[int] = [0]
SESSION_SECRET_PROBLEMS: list[str] = []


def register_moto_session_secrets(endpoint: str, request_log: Path) -> None:
    """Register every STS session (secret key, session token) moto issued, if the module called
    STS at all (a POST to / in the request log): what apgate's credential providers fetched,
    directly or through a credentials endpoint. Problems are kept for test_zzz_no_secrets.py."""
    try:
        with open(request_log, encoding="utf-8") as fh:
            entries = [json.loads(line) for line in fh if '"method": "POST"' in line]
        # STS (query protocol): POST / to moto's own address, signed by someone other than
        # setup_moto's bootstrap credentials (its IAM calls look the same).
        if not any(e.get("raw_uri") == "/" and (e.get("host") or "").startswith("127.0.0.1:")
                   and e.get("access_key_id") not in (None, "bootstrap") for e in entries):
            return
        with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=120) as resp:
            data = json.loads(resp.read())
        roles = data.get("sts", {}).get("AssumedRole", [])
        register_apgate(None, *(v for role in roles for v in (role.get("secret_access_key"), role.get("session_token"))))
        tokens = sum(1 for r in roles if r.get("session_token"))
        SESSION_TOKENS_REGISTERED[0] += tokens
        _record("tokens", tokens)
        if not roles:
            problem(f"{endpoint}: STS was called but moto lists no AssumedRole")
    except Exception as e:  # noqa: BLE001 - reported by the scan
        problem(f"{endpoint}: reading moto's STS sessions failed: {e!r}")


def problem(text: str) -> None:
    SESSION_SECRET_PROBLEMS.append(text)
    _record("problems", text)


def target_dir() -> Path:
    """Where cargo put the binaries under test: target/<APGATE_CARGO_PROFILE, default release>."""
    return REPO / "target" / (os.environ.get("APGATE_CARGO_PROFILE", "").strip() or "release")


def apgate_bin() -> Path:
    return Path(os.environ.get("APGATE_BIN", "").strip() or target_dir() / "apgate")


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago, for a server the test starts. Parallel
    workers (pytest-xdist) each draw from a range of their own below the kernel's ephemeral range
    (32768-60999 here), so that two of them cannot pick the same port between releasing it and
    the server binding it; a single process lets the kernel choose."""
    worker = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    if worker and int(worker.group(1)) < 5:
        low = 12000 + 4000 * int(worker.group(1))
        for _ in range(1000):
            port = random.randrange(low, low + 4000)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} not listening after {timeout}s:\n{_tail(log)}")


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "<no log>"


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class Moto:
    host: str
    port: int
    access_key_id: str
    secret_access_key: str
    account: str
    request_log: Path
    process_log: Path
    region: str = REGION
    # What moto's backend executed, one S3 operation a line (moto_launcher.py --exec-log).
    exec_log: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)

    def log_mark(self) -> int:
        """Position in the request log; pass to log_since()."""
        return self.request_log.stat().st_size

    def log_since(self, mark: int) -> list[dict]:
        """Requests moto received after log_mark() returned mark."""
        with open(self.request_log, "rb") as fh:
            fh.seek(mark)
            return [json.loads(line) for line in fh.read().decode("utf-8").splitlines() if line]

    def exec_mark(self) -> int:
        """Position in the execution log; pass to executed_since()."""
        return self.exec_log.stat().st_size if self.exec_log else 0

    def executed_since(self, mark: int) -> list[dict]:
        """The S3 operations moto's backend executed after exec_mark() returned mark."""
        if self.exec_log is None:
            return []
        with open(self.exec_log, "rb") as fh:
            fh.seek(mark)
            return [json.loads(line) for line in fh.read().decode("utf-8").splitlines() if line]


@pytest.fixture(scope="module")
def moto(tmp_path_factory) -> Moto:
    tmp = tmp_path_factory.mktemp("moto")
    port = free_port()
    request_log = tmp / "requests.jsonl"
    request_log.touch()
    exec_log = tmp / "executed.jsonl"
    exec_log.touch()
    process_log = tmp / "moto.log"
    extra = shlex.split(os.environ.get("E2E_MOTO_LAUNCHER_ARGS", ""))
    with open(process_log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "moto_launcher.py"), "--host", "127.0.0.1",
             "--port", str(port), "--request-log", str(request_log), "--exec-log", str(exec_log), *extra],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
        )
    try:
        wait_port(port, proc, 60, process_log)
        creds = setup_moto.setup_world(f"http://127.0.0.1:{port}", REGION)
        (tmp / "creds.json").write_text(json.dumps(creds))
        yield Moto(
            host="127.0.0.1", port=port,
            access_key_id=creds["access_key_id"],
            secret_access_key=creds["secret_access_key"],
            account=creds["account"],
            request_log=request_log, process_log=process_log, exec_log=exec_log,
        )
        # Whatever STS sessions this module's apgates used (test_credentials.py) are secrets too.
        register_moto_session_secrets(f"http://127.0.0.1:{port}", request_log)
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def moto_s3(moto):
    """boto3 straight to moto as the gateway's upstream user (path style, bucket ARNs):
    for checking what really landed in the bucket."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=moto.endpoint, region_name=moto.region,
        aws_access_key_id=moto.access_key_id, aws_secret_access_key=moto.secret_access_key,
        config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "total_max_attempts": 1}),
    )


# --------------------------------------------------------------------------- apgate

@dataclass
class Apgate:
    admin_port: int
    shared_port: int
    sidecar_port: int
    bob_access_key_id: str
    bob_secret_access_key: str
    config_path: Path
    log_path: Path
    moto: Moto
    workdir: Path
    region: str = REGION
    env: dict = field(default_factory=dict)

    @property
    def shared_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.shared_port}"

    @property
    def sidecar_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.sidecar_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log(self) -> str:
        return _tail(self.log_path, 20000)


def apgate_config(admin: int, shared: int, sidecar: int, moto_port: int) -> str:
    return f"""\
# generated by tests/e2e/conftest.py
[admin]
address = "127.0.0.1:{admin}"

[[listeners]]
name = "shared"
address = "127.0.0.1:{shared}"
identity_methods = ["sigv4", "sigv2"]

[[listeners]]
name = "sidecar"
address = "127.0.0.1:{sidecar}"
identity_methods = ["source"]

[[listeners.sources]]
cidr = "127.0.0.0/8"
identity = "app"

[sigv4]
accepted_regions = ["{REGION}"]
max_clock_skew_seconds = 900

[addressing]
virtual_host_domains = ["s3.localhost"]

[upstream]
region = "{REGION}"
endpoint = {{ mode = "custom", url = "http://127.0.0.1:{moto_port}" }}
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

# bob also reaches his prefix under a client-facing name that is not the real bucket's, so tests
# can see apgate rewrite bucket-revealing response fields.
[[routes]]
identity = "bob"
bucket = "{BOB_ALIAS_BUCKET}"
prefix = "Bob/"
access_point = "arn:aws:s3:{REGION}:{ACCOUNT}:accesspoint/{BOB_AP}"

[[routes]]
identity = "app"
bucket = "{BUCKET}"
prefix = "app/"
operations = ["read", "list"]
access_point = "arn:aws:s3:{REGION}:{ACCOUNT}:accesspoint/{APP_AP}"
"""


def _readyz(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


@pytest.fixture(scope="module")
def apgate(moto: Moto, tmp_path_factory) -> Apgate:
    binary = apgate_bin()
    if not binary.is_file():
        pytest.fail(f"apgate binary not found at {binary} (cargo build --release, or --profile ci as scripts/test)")
    tmp = tmp_path_factory.mktemp("apgate")
    admin, shared, sidecar = free_port(), free_port(), free_port()
    while len({admin, shared, sidecar, moto.port}) < 4:
        shared, sidecar = free_port(), free_port()
    config = tmp / "apgate.toml"
    config.write_text(apgate_config(admin, shared, sidecar, moto.port))
    bob_secret = secrets.token_urlsafe(30)
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith("AWS_") and not k.startswith("APGATE_")
    }
    env.update({
        "APGATE_UPSTREAM_ACCESS_KEY_ID": moto.access_key_id,
        "APGATE_UPSTREAM_SECRET_ACCESS_KEY": moto.secret_access_key,
        "APGATE_TEST_BOB_SECRET": bob_secret,
        "AWS_EC2_METADATA_DISABLED": "true",
        **apgate_log_env(),
    })
    log_path = tmp / "apgate.log"
    register_apgate(log_path, bob_secret, moto.secret_access_key)
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [str(binary), "serve", "-c", str(config)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"apgate exited with {proc.returncode}:\n{_tail(log_path)}")
            if _readyz(f"http://127.0.0.1:{admin}/readyz") == 200:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"apgate /readyz not 200 after 30s:\n{_tail(log_path)}")
            time.sleep(0.1)
        yield Apgate(
            admin_port=admin, shared_port=shared, sidecar_port=sidecar,
            bob_access_key_id=BOB_ACCESS_KEY_ID, bob_secret_access_key=bob_secret,
            config_path=config, log_path=log_path, moto=moto, workdir=tmp, env=env,
        )
    finally:
        stop(proc)
