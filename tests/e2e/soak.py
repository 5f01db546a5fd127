#!/usr/bin/env python3
"""Soak: mixed traffic through apgate for a while, then errors, RSS and file descriptors.

    python tests/e2e/soak.py [--duration 30m] [--concurrency 4] [--workdir DIR] [--report FILE.json]
                             [--log-level FILTER]

(scripts/soak wraps this with the venv and the release build.)

Starts moto server (moto_launcher.py, SigV4 + IAM enforced, the world from setup_moto.py) and the
release apgate with the e2e suite's configuration (conftest.apgate_config: a shared SigV4/SigV2
listener, the sidecar source listener, the admin port), then runs --concurrency worker threads for
--duration. Each iteration picks a weighted random action:

- bob_small: PUT a small object in Bob/, GET it back (bytes compared), HEAD (length), LIST (the key
  is there), DELETE (boto3, SigV4 headers, bob's apgate-issued key);
- bob_multipart: a 16-32 MiB multipart upload (8 MiB parts), streamed back and its SHA-256 compared,
  then deleted;
- app_sidecar: the app identity, unsigned, through the sidecar listener: GET app/seed.txt, LIST app/;
- presigned_get: a SigV4 presigned GET fetched with urllib;
- sigv2: PUT/GET/DELETE with SigV2 header auth (boto3 signature_version="s3");
- bad input, each with its asserted answer: wrong secret -> 403 SignatureDoesNotMatch, bob reading
  app/ -> 403 AccessDenied, the app writing app/ -> 403 AccessDenied, garbled Authorization -> 400
  AuthorizationHeaderMalformed, unknown key -> 403 InvalidAccessKeyId.

An unexpected error is any outcome other than the action's expectation: an error where success was
expected, another status or code, different bytes, an exception, a timeout (no retries: every client
makes exactly one attempt).

Every 5 s it samples apgate's VmRSS/VmHWM (/proc/PID/status) and its open file descriptors
(/proc/PID/fd); a progress line every ~30 s. At the end: actions by kind, expected and unexpected
errors (the first few described), RSS at the end of the warm-up (the sample after max(10 % of the
run, 30 s), at most half the run) and at the end, drift, peak (VmHWM), fds at warm-up / end / after
~2 s idle with every client connection closed, and apgate's own request counters from /metrics.

Exit status: 0 pass; 1 unexpected errors, fd growth (idle more than FD_TOLERANCE over the count at
warm-up or, lower, before the traffic), apgate's request counter disagreeing with the requests sent,
or (runs >= 10 min) RSS creep: growth >= 5 % of the median RSS over the run after the warm-up,
by the Theil-Sen slope of the samples (robust to the swings of RSS under load; the medians of a
minute after the warm-up and at the end are reported too); 2 usage; 3 the hard deadline (duration + margin) was
hit and everything was killed.
Traffic goes to 127.0.0.1 only. Child processes die with this one (PR_SET_PDEATHSIG) and are
stopped on exit and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import boto3  # noqa: E402
from botocore import UNSIGNED  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

import conftest  # noqa: E402  (helpers and the e2e apgate configuration; no fixtures are used)
import s3wire  # noqa: E402
import setup_moto  # noqa: E402

REGION = conftest.REGION
BUCKET = conftest.BUCKET
BOB_KEY = conftest.BOB_ACCESS_KEY_ID
UNKNOWN_KEY = "APGSOAKNOBODY0000001"

MIN_DURATION = 10.0
MAX_DURATION = 6 * 3600.0
SAMPLE_EVERY = 5.0
PROGRESS_EVERY = 30.0
IDLE_SETTLE = 2.0
FD_TOLERANCE = 8
RSS_DRIFT_LIMIT = 5.0  # percent, enforced for runs of at least RSS_GATE_MIN_DURATION
RSS_GATE_MIN_DURATION = 600.0
HARD_MARGIN = 180.0  # seconds beyond --duration before everything is killed
MIB = 1 << 20
PART = 8 * MIB


# ----------------------------------------------------------------------------- arguments

def parse_duration(text: str) -> float:
    """"30m", "90s", "1h30m", "2h", "45" (seconds) -> seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", text)
    if not m or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"bad duration {text!r}: use e.g. 30m, 90s, 1h30m")
    h, mi, s = m.groups()
    return int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)


def fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return (f"{h}h" if h else "") + (f"{m}m" if m or h else "") + f"{s}s"


# ----------------------------------------------------------------------------- processes

def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the soak process dies; own session, so a terminal
    Ctrl-C reaches only the soak (which then stops its children itself)."""
    os.setsid()
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Children:
    procs: list[subprocess.Popen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spawn(self, args: list[str], log: Path, **kw) -> subprocess.Popen:
        with open(log, "wb") as out, self.lock:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=_die_with_parent, **kw)
            self.procs.append(proc)
            return proc

    def stop_all(self) -> None:
        with self.lock:
            procs = list(reversed(self.procs))
        for proc in procs:
            with contextlib.suppress(Exception):
                conftest.stop(proc)

    def kill_all(self) -> None:
        for proc in list(self.procs):
            with contextlib.suppress(Exception):
                proc.kill()


@dataclass
class World:
    moto_port: int
    moto_key: str
    moto_secret: str
    apgate: subprocess.Popen
    moto: subprocess.Popen
    shared: int
    sidecar: int
    admin: int
    bob_secret: str
    apgate_log: Path

    @property
    def shared_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.shared}"

    @property
    def sidecar_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.sidecar}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin}"


def start_world(children: Children, workdir: Path, binary: Path, log_level: str) -> World:
    """moto (as conftest's moto fixture starts it) and apgate (as conftest's apgate fixture)."""
    moto_dir, apgate_dir = workdir / "moto", workdir / "apgate"
    moto_dir.mkdir(parents=True, exist_ok=True)
    apgate_dir.mkdir(parents=True, exist_ok=True)
    moto_port = conftest.free_port()
    moto_log = moto_dir / "moto.log"
    # moto reads every part and object into memory; with glibc's dynamic mmap threshold those
    # 8-32 MiB buffers end up in per-thread heaps that are never given back, and a long soak would
    # grow moto by GBs. A fixed threshold keeps big buffers in mmap, returned when freed.
    moto_env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")
    moto = children.spawn([sys.executable, str(HERE / "moto_launcher.py"), "--host", "127.0.0.1",
                           "--port", str(moto_port)], moto_log, cwd=moto_dir, env=moto_env)
    conftest.wait_port(moto_port, moto, 60, moto_log)
    creds = setup_moto.setup_world(f"http://127.0.0.1:{moto_port}", REGION)

    ports = {moto_port}
    admin = shared = sidecar = 0
    while len(ports) < 4:
        admin, shared, sidecar = conftest.free_port(), conftest.free_port(), conftest.free_port()
        ports = {moto_port, admin, shared, sidecar}
    config = apgate_dir / "apgate.toml"
    config.write_text(conftest.apgate_config(admin, shared, sidecar, moto_port))
    bob_secret = secrets.token_urlsafe(30)
    # For whoever runs the soak under a secret scan (tests/e2e/test_soak.py); never printed.
    secrets_file = workdir / "secrets.json"
    secrets_file.write_text(json.dumps({"bob_secret": bob_secret, "upstream_secret": creds["secret_access_key"]}))
    secrets_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "APGATE_", "RUST_LOG"))}
    env.update({
        "APGATE_UPSTREAM_ACCESS_KEY_ID": creds["access_key_id"],
        "APGATE_UPSTREAM_SECRET_ACCESS_KEY": creds["secret_access_key"],
        "APGATE_TEST_BOB_SECRET": bob_secret,
        "AWS_EC2_METADATA_DISABLED": "true",
        "RUST_LOG": log_level,
    })
    apgate_log = apgate_dir / "apgate.log"
    apgate = children.spawn([str(binary), "serve", "-c", str(config)], apgate_log, env=env, cwd=apgate_dir)
    deadline = time.monotonic() + 30
    while conftest._readyz(f"http://127.0.0.1:{admin}/readyz") != 200:
        if apgate.poll() is not None:
            raise RuntimeError(f"apgate exited with {apgate.returncode}:\n{conftest._tail(apgate_log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"apgate /readyz not 200 after 30s:\n{conftest._tail(apgate_log)}")
        time.sleep(0.1)
    conftest.wait_port(shared, apgate, 10, apgate_log)
    conftest.wait_port(sidecar, apgate, 10, apgate_log)
    return World(moto_port=moto_port, moto_key=creds["access_key_id"], moto_secret=creds["secret_access_key"],
                 apgate=apgate, moto=moto, shared=shared, sidecar=sidecar, admin=admin,
                 bob_secret=bob_secret, apgate_log=apgate_log)


# ----------------------------------------------------------------------------- /proc sampling

def proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])  # kB
    return out


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Sample:
    t: float  # seconds since the traffic started
    rss_kib: int
    hwm_kib: int
    anon_kib: int  # RssAnon: the process's own memory (heap, stacks): where a leak shows
    file_kib: int  # RssFile: pages of the executable and libraries mapped in so far
    fds: int
    moto_rss_kib: int
    actions: int

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def take_sample(world: World, t: float, actions: int) -> Sample:
    st = proc_status(world.apgate.pid)
    try:
        moto_rss = proc_status(world.moto.pid).get("VmRSS", 0)
    except OSError:
        moto_rss = 0
    return Sample(t=round(t, 1), rss_kib=st.get("VmRSS", 0), hwm_kib=st.get("VmHWM", 0),
                  anon_kib=st.get("RssAnon", 0), file_kib=st.get("RssFile", 0), fds=fd_count(world.apgate.pid), moto_rss_kib=moto_rss, actions=actions)


# ----------------------------------------------------------------------------- outcome bookkeeping

class Unexpected(Exception):
    """An outcome that differs from the action's expectation."""


@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    actions: Counter = field(default_factory=Counter)
    requests: Counter = field(default_factory=Counter)
    expected_errors: Counter = field(default_factory=Counter)
    unexpected: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)
    max_seconds: dict = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    first_unexpected: list = field(default_factory=list)

    def total_actions(self) -> int:
        with self.lock:
            return sum(self.actions.values())

    def total_unexpected(self) -> int:
        with self.lock:
            return sum(self.unexpected.values())


MAX_DESCRIBED = 10


@dataclass
class Ctx:
    """One worker's clients and bookkeeping for the action it is running."""
    worker: int
    world: World
    rng: random.Random
    blob: bytes
    run_id: str
    bob: Any
    bob_v2: Any
    app: Any
    wrong_secret: Any
    unknown: Any
    opener: urllib.request.OpenerDirector
    requests: int = 0
    expected_errors: int = 0
    up: int = 0
    down: int = 0
    seq: int = 0

    def key(self, what: str) -> str:
        self.seq += 1
        return f"Bob/soak/{self.run_id}/w{self.worker}/{what}-{self.seq}"

    def small_body(self) -> bytes:
        n = self.rng.randint(0, 64 * 1024)
        off = self.rng.randrange(0, len(self.blob) - n)
        return f"{self.worker}:{self.seq}:".encode() + self.blob[off:off + n]

    def close(self) -> None:
        for c in (self.bob, self.bob_v2, self.app, self.wrong_secret, self.unknown):
            with contextlib.suppress(Exception):
                c.close()


def _config(**kw) -> Config:
    return Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "total_max_attempts": 1},
                  connect_timeout=5, read_timeout=60, max_pool_connections=4, **kw)


def make_ctx(worker: int, world: World, blob: bytes, run_id: str, seed: int) -> Ctx:
    session = boto3.session.Session()

    def client(key: str, secret: str, endpoint: str, **cfg):
        return session.client("s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=key,
                              aws_secret_access_key=secret, config=_config(**cfg))

    shared = world.shared_endpoint
    return Ctx(
        worker=worker, world=world, rng=random.Random(seed), blob=blob, run_id=run_id,
        bob=client(BOB_KEY, world.bob_secret, shared, signature_version="s3v4"),
        bob_v2=client(BOB_KEY, world.bob_secret, shared, signature_version="s3"),
        # Unsigned: the sidecar listener identifies the app by source address. The credentials are
        # never used; they only keep botocore from looking for any.
        app=client("unused", "unused", world.sidecar_endpoint, signature_version=UNSIGNED),
        wrong_secret=client(BOB_KEY, "not-" + world.bob_secret, shared, signature_version="s3v4"),
        unknown=client(UNKNOWN_KEY, secrets.token_urlsafe(30), shared, signature_version="s3v4"),
        opener=urllib.request.build_opener(urllib.request.ProxyHandler({})),
    )


def expect_error(ctx: Ctx, call: Callable[[], Any], status: int, code: str | None) -> None:
    ctx.requests += 1
    try:
        got = call()
    except ClientError as e:
        got_code = e.response.get("Error", {}).get("Code")
        got_status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if got_status != status or (code is not None and got_code != code):
            raise Unexpected(f"wanted {status} {code}, got {got_status} {got_code}: "
                             f"{e.response.get('Error')}") from None
        ctx.expected_errors += 1
        return
    raise Unexpected(f"wanted {status} {code}, the call succeeded: {str(got)[:200]}")


def ok(ctx: Ctx, call: Callable[[], Any]) -> Any:
    ctx.requests += 1
    return call()


def same(what: str, got: bytes, want: bytes) -> None:
    if got != want:
        raise Unexpected(f"{what}: {len(got)} bytes (sha256 {hashlib.sha256(got).hexdigest()[:12]}) != "
                         f"{len(want)} bytes (sha256 {hashlib.sha256(want).hexdigest()[:12]})")


# ----------------------------------------------------------------------------- actions

def act_bob_small(ctx: Ctx) -> None:
    key, body = ctx.key("small"), ctx.small_body()
    ok(ctx, lambda: ctx.bob.put_object(Bucket=BUCKET, Key=key, Body=body))
    ctx.up += len(body)
    got = ok(ctx, lambda: ctx.bob.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    ctx.down += len(got)
    same(f"GET {key}", got, body)
    head = ok(ctx, lambda: ctx.bob.head_object(Bucket=BUCKET, Key=key))
    if head["ContentLength"] != len(body):
        raise Unexpected(f"HEAD {key}: ContentLength {head['ContentLength']} != {len(body)}")
    prefix = key.rsplit("/", 1)[0] + "/"
    listed = ok(ctx, lambda: ctx.bob.list_objects_v2(Bucket=BUCKET, Prefix=prefix))
    keys = [o["Key"] for o in listed.get("Contents", [])]
    if key not in keys:
        raise Unexpected(f"LIST {prefix}: {key} missing from {keys[:5]}")
    ok(ctx, lambda: ctx.bob.delete_object(Bucket=BUCKET, Key=key))


def act_bob_multipart(ctx: Ctx) -> None:
    key = ctx.key("multipart")
    size = ctx.rng.randint(16 * MIB, 32 * MIB)
    off = ctx.rng.randrange(0, len(ctx.blob) - size)
    data = memoryview(ctx.blob)[off:off + size]
    want = hashlib.sha256(data).hexdigest()
    upload_id = ok(ctx, lambda: ctx.bob.create_multipart_upload(Bucket=BUCKET, Key=key))["UploadId"]
    try:
        parts = []
        for n, start in enumerate(range(0, size, PART), start=1):
            chunk = bytes(data[start:start + PART])
            etag = ok(ctx, lambda: ctx.bob.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id,
                                                       PartNumber=n, Body=chunk))["ETag"]
            ctx.up += len(chunk)
            parts.append({"PartNumber": n, "ETag": etag})
        ok(ctx, lambda: ctx.bob.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id,
                                                          MultipartUpload={"Parts": parts}))
    except BaseException:
        with contextlib.suppress(Exception):
            ctx.requests += 1
            ctx.bob.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id)
        raise
    resp = ok(ctx, lambda: ctx.bob.get_object(Bucket=BUCKET, Key=key))
    h, n = hashlib.sha256(), 0
    for chunk in resp["Body"].iter_chunks(MIB):
        h.update(chunk)
        n += len(chunk)
    ctx.down += n
    if n != size or h.hexdigest() != want:
        raise Unexpected(f"GET {key}: {n} bytes sha256 {h.hexdigest()[:12]} != {size} bytes sha256 {want[:12]}")
    ok(ctx, lambda: ctx.bob.delete_object(Bucket=BUCKET, Key=key))


def act_app_sidecar(ctx: Ctx) -> None:
    got = ok(ctx, lambda: ctx.app.get_object(Bucket=BUCKET, Key=setup_moto.SEED_KEY)["Body"].read())
    ctx.down += len(got)
    same(f"GET {setup_moto.SEED_KEY}", got, setup_moto.SEED_BODY)
    listed = ok(ctx, lambda: ctx.app.list_objects_v2(Bucket=BUCKET, Prefix="app/"))
    keys = [o["Key"] for o in listed.get("Contents", [])]
    if setup_moto.SEED_KEY not in keys:
        raise Unexpected(f"LIST app/: {setup_moto.SEED_KEY} missing from {keys[:5]}")


def act_presigned_get(ctx: Ctx) -> None:
    key, body = ctx.key("presigned"), ctx.small_body()
    ok(ctx, lambda: ctx.bob.put_object(Bucket=BUCKET, Key=key, Body=body))
    ctx.up += len(body)
    url = ctx.bob.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=300)
    if not url.startswith(ctx.world.shared_endpoint + "/") or "X-Amz-Signature=" not in url:
        raise Unexpected(f"presigned URL not SigV4 on apgate: {url[:80]}")
    ctx.requests += 1
    try:
        with ctx.opener.open(url, timeout=60) as resp:
            got = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        raise Unexpected(f"presigned GET {key}: HTTP {e.code} {e.read()[:300]!r}") from None
    if status != 200:
        raise Unexpected(f"presigned GET {key}: HTTP {status}")
    ctx.down += len(got)
    same(f"presigned GET {key}", got, body)
    ok(ctx, lambda: ctx.bob.delete_object(Bucket=BUCKET, Key=key))


def act_sigv2(ctx: Ctx) -> None:
    key, body = ctx.key("sigv2"), ctx.small_body()
    ok(ctx, lambda: ctx.bob_v2.put_object(Bucket=BUCKET, Key=key, Body=body))
    ctx.up += len(body)
    got = ok(ctx, lambda: ctx.bob_v2.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    ctx.down += len(got)
    same(f"SigV2 GET {key}", got, body)
    ok(ctx, lambda: ctx.bob_v2.delete_object(Bucket=BUCKET, Key=key))


def act_bad_wrong_secret(ctx: Ctx) -> None:
    key = ctx.key("never")
    expect_error(ctx, lambda: ctx.wrong_secret.get_object(Bucket=BUCKET, Key=key), 403, "SignatureDoesNotMatch")


def act_bad_bob_app(ctx: Ctx) -> None:
    expect_error(ctx, lambda: ctx.bob.get_object(Bucket=BUCKET, Key=setup_moto.SEED_KEY), 403, "AccessDenied")


def act_bad_app_write(ctx: Ctx) -> None:
    key = f"app/soak-{ctx.run_id}-never"
    expect_error(ctx, lambda: ctx.app.put_object(Bucket=BUCKET, Key=key, Body=b"nope"), 403, "AccessDenied")


def act_bad_unknown_key(ctx: Ctx) -> None:
    key = ctx.key("never")
    expect_error(ctx, lambda: ctx.unknown.get_object(Bucket=BUCKET, Key=key), 403, "InvalidAccessKeyId")


def act_bad_garbled(ctx: Ctx) -> None:
    host = f"127.0.0.1:{ctx.world.shared}"
    target = "/" + s3wire.encode_key(f"{BUCKET}/{ctx.key('never')}")
    headers = {
        "Host": host,
        "X-Amz-Date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
        "X-Amz-Content-SHA256": hashlib.sha256(b"").hexdigest(),
        "Authorization": "AWS4-HMAC-SHA256 " + ctx.rng.choice(["garbage", "Credential=,,,", "Signature=zz"]),
    }
    ctx.requests += 1
    r = s3wire.send(("127.0.0.1", ctx.world.shared), "GET", target, headers, timeout=60)
    code = s3wire.parse_error(r.body).get("Code") if r.body else None
    if (r.status, code) != (400, "AuthorizationHeaderMalformed"):
        raise Unexpected(f"wanted 400 AuthorizationHeaderMalformed, got {r.status} {code}")
    ctx.expected_errors += 1


# kind -> (weight, function). Weights are per iteration; a multipart action moves ~100x the bytes.
ACTIONS: dict[str, tuple[float, Callable[[Ctx], None]]] = {
    "bob_small": (40, act_bob_small),
    "bob_multipart": (2, act_bob_multipart),
    "app_sidecar": (15, act_app_sidecar),
    "presigned_get": (10, act_presigned_get),
    "sigv2": (10, act_sigv2),
    "bad_wrong_secret": (4, act_bad_wrong_secret),
    "bad_bob_reads_app": (4, act_bad_bob_app),
    "bad_app_writes": (3, act_bad_app_write),
    "bad_unknown_key": (4, act_bad_unknown_key),
    "bad_garbled_auth": (4, act_bad_garbled),
}


# ----------------------------------------------------------------------------- the run

@dataclass
class Run:
    world: World
    stats: Stats
    stop: threading.Event
    t0: float
    samples: list[Sample] = field(default_factory=list)
    samples_lock: threading.Lock = field(default_factory=threading.Lock)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0


def worker(run: Run, ctx: Ctx) -> None:
    kinds = list(ACTIONS)
    weights = [ACTIONS[k][0] for k in kinds]
    stats = run.stats
    while not run.stop.is_set():
        kind = ctx.rng.choices(kinds, weights)[0]
        ctx.requests = ctx.expected_errors = ctx.up = ctx.down = 0
        t = time.monotonic()
        problem = None
        try:
            ACTIONS[kind][1](ctx)
        except Unexpected as e:
            problem = str(e)
        except Exception as e:  # noqa: BLE001 - every failure counts
            problem = f"{type(e).__name__}: {e}"
            if not isinstance(e, ClientError):
                problem += " | " + "".join(traceback.format_exception_only(type(e), e)).strip()[-300:]
        took = time.monotonic() - t
        with stats.lock:
            stats.actions[kind] += 1
            stats.requests[kind] += ctx.requests
            stats.expected_errors[kind] += ctx.expected_errors
            stats.seconds[kind] += took
            stats.max_seconds[kind] = max(stats.max_seconds.get(kind, 0.0), took)
            stats.bytes_up += ctx.up
            stats.bytes_down += ctx.down
            if problem is not None:
                stats.unexpected[kind] += 1
                if len(stats.first_unexpected) < MAX_DESCRIBED:
                    stats.first_unexpected.append(
                        f"t={run.elapsed():.1f}s worker {ctx.worker} {kind}: {problem[:600]}")


def monitor(run: Run, duration: float, out: Callable[[str], None]) -> None:
    next_sample = 0.0
    next_progress = PROGRESS_EVERY
    while not run.stop.is_set():
        now = run.elapsed()
        if now >= next_sample:
            try:
                s = take_sample(run.world, now, run.stats.total_actions())
            except OSError as e:
                out(f"[soak] cannot sample apgate: {e}")
                run.stop.set()
                return
            with run.samples_lock:
                run.samples.append(s)
            next_sample += SAMPLE_EVERY
        if now >= next_progress:
            with run.samples_lock:
                s = run.samples[-1]
            n = run.stats.total_actions()
            out(f"[soak] {fmt_duration(now)}/{fmt_duration(duration)}: {n} actions ({n / max(now, 1e-9):.1f}/s), "
                f"unexpected {run.stats.total_unexpected()}, apgate RSS {s.rss_kib / 1024:.1f} MiB "
                f"(peak {s.hwm_kib / 1024:.1f}), fds {s.fds}, moto RSS {s.moto_rss_kib / 1024:.0f} MiB")
            next_progress += PROGRESS_EVERY
        run.stop.wait(max(0.05, min(next_sample, next_progress) - run.elapsed()))


_SAMPLE_RE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(admin_url: str) -> list[tuple[str, dict, float]]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{admin_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = []
    for line in text.splitlines():
        m = _SAMPLE_RE.match(line)
        if m and not line.startswith("#"):
            out.append((m["name"], dict(_LABEL_RE.findall(m["labels"] or "")), float(m["value"])))
    return out


def summarize_metrics(samples: list[tuple[str, dict, float]]) -> dict:
    by = defaultdict(float)
    by_status = defaultdict(float)
    auth = defaultdict(float)
    upstream_errors = defaultdict(float)
    for name, labels, value in samples:
        if name == "apgate_requests_total":
            by[f'{labels.get("identity")} {labels.get("operation")} {labels.get("status")}'] += value
            by_status[labels.get("status", "?")] += value
        elif name == "apgate_auth_failures_total":
            auth[f'{labels.get("listener")} {labels.get("code")}'] += value
        elif name == "apgate_upstream_errors_total":
            upstream_errors[f'{labels.get("access_point")} {labels.get("kind")}'] += value
    return {
        "requests_total": sum(by.values()),
        "requests_by_status": dict(sorted(by_status.items())),
        "requests_by_identity_operation_status": dict(sorted(by.items())),
        "auth_failures": dict(sorted(auth.items())),
        "upstream_errors": dict(sorted(upstream_errors.items())),
    }


def warmup_point(duration: float) -> float:
    return min(max(0.1 * duration, 30.0), 0.5 * duration)


def median(values: Iterable[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return float(values[mid]) if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def rss_windows(samples: list[Sample], traffic_seconds: float) -> dict:
    """apgate's RSS under load swings by a few percent from one 5 s sample to the next (what is in
    flight at that instant), so the drift that is gated compares medians: of the samples in the
    window after the warm-up point and of those in the window ending with the traffic (each a
    minute long, shorter for short runs)."""
    wp = warmup_point(traffic_seconds)
    width = max(SAMPLE_EVERY, min(60.0, (traffic_seconds - wp) / 2))

    warm_samples = [s for s in samples if wp <= s.t < wp + width] or [samples[-1]]
    end_samples = [s for s in samples if traffic_seconds - width < s.t <= traffic_seconds] or [samples[-1]]

    def drift(field: str) -> tuple[float, float, float]:
        w = median([getattr(s, field) for s in warm_samples])
        e = median([getattr(s, field) for s in end_samples])
        return round(w / 1024, 2), round(e / 1024, 2), round(100.0 * (e - w) / w, 2) if w else 0.0

    w, e, d = drift("rss_kib")
    aw, ae, ad = drift("anon_kib")
    fw, fe, fd = drift("file_kib")
    return {
        "window_s": width,
        "warmup_window": [round(wp, 1), round(wp + width, 1)],
        "end_window": [round(traffic_seconds - width, 1), round(traffic_seconds, 1)],
        "warmup_median_mib": w,
        "end_median_mib": e,
        "drift_percent": d,
        # The two parts of VmRSS: anonymous memory (heap, stacks: a leak shows here) and the
        # executable's pages mapped in so far (grows as rarely taken code paths first run).
        "anon_warmup_median_mib": aw,
        "anon_end_median_mib": ae,
        "anon_drift_percent": ad,
        "file_warmup_median_mib": fw,
        "file_end_median_mib": fe,
        "file_drift_percent": fd,
        "samples_in_windows": [len(warm_samples), len(end_samples)],
    }


def rss_trend(samples: list[Sample], traffic_seconds: float) -> dict:
    """The gated measure of creep: the Theil-Sen slope of RSS over the samples after the warm-up
    point (the median of the slopes between every pair of samples, at most 800 samples evenly
    picked), and the growth it projects over that span as a share of the median RSS. Under mixed
    traffic apgate's RSS swings by a third from one sample to the next (which connections hold
    grown 1 MiB read buffers, what is in flight), so two one-minute medians compare chance phases
    (the same 30-minute run gave -12 % and, on another day, +12 %), while a slow leak moves every
    pair's slope and shows through the swings."""
    after = [s for s in samples if s.t >= warmup_point(traffic_seconds)]
    if len(after) > 800:
        after = [after[i * len(after) // 800] for i in range(800)]
    slopes = [(b.rss_kib - a.rss_kib) / (b.t - a.t) for i, a in enumerate(after) for b in after[i + 1:] if b.t > a.t]
    if not slopes:
        return {"slope_kib_per_min": 0.0, "span_s": 0.0, "projected_mib": 0.0, "median_mib": 0.0,
                "projected_percent": 0.0, "samples": len(after)}
    slope = median(slopes)  # KiB per second
    span = after[-1].t - after[0].t
    level = median(s.rss_kib for s in after)
    return {
        "slope_kib_per_min": round(slope * 60, 1),
        "span_s": round(span, 1),
        "projected_mib": round(slope * span / 1024, 2),
        "median_mib": round(level / 1024, 2),
        "projected_percent": round(100.0 * slope * span / level, 2) if level else 0.0,
        "samples": len(after),
    }


def soak(duration: float, concurrency: int, workdir: Path, binary: Path, log_level: str,
         out: Callable[[str], None] = print) -> dict:
    children = Children()
    stop = threading.Event()
    interrupted = {"n": 0}

    def on_signal(signum, frame):
        interrupted["n"] += 1
        if interrupted["n"] > 1:
            raise KeyboardInterrupt
        out(f"[soak] signal {signum}: stopping the traffic (again to abort)")
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

    def hard_kill():
        out(f"[soak] HARD DEADLINE: {fmt_duration(duration + HARD_MARGIN)} passed; killing everything")
        children.kill_all()
        os._exit(3)

    watchdog = threading.Timer(duration + HARD_MARGIN, hard_kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        t_setup = time.monotonic()
        world = start_world(children, workdir, binary, log_level)
        out(f"[soak] moto 127.0.0.1:{world.moto_port} (pid {world.moto.pid}), apgate pid {world.apgate.pid} "
            f"(shared :{world.shared}, sidecar :{world.sidecar}, admin :{world.admin}, RUST_LOG={log_level}), "
            f"ready in {time.monotonic() - t_setup:.1f}s; logs in {workdir}")
        run_id = uuid.uuid4().hex[:8]
        blob = os.urandom(40 * MIB)
        seeder = random.Random()
        ctxs = [make_ctx(i, world, blob, run_id, seeder.getrandbits(64)) for i in range(concurrency)]
        baseline = take_sample(world, 0.0, 0)
        stats = Stats()
        run = Run(world=world, stats=stats, stop=stop, t0=time.monotonic())
        out(f"[soak] {fmt_duration(duration)} of traffic, {concurrency} workers; apgate before traffic: "
            f"RSS {baseline.rss_kib / 1024:.1f} MiB, fds {baseline.fds}")
        threads = [threading.Thread(target=worker, args=(run, c), name=f"soak-w{c.worker}", daemon=True)
                   for c in ctxs]
        mon = threading.Thread(target=monitor, args=(run, duration, out), name="soak-monitor", daemon=True)
        mon.start()
        for th in threads:
            th.start()
        while not stop.wait(min(1.0, max(0.0, duration - run.elapsed()))):
            if run.elapsed() >= duration:
                break
            if world.apgate.poll() is not None:
                out(f"[soak] apgate exited with {world.apgate.returncode}")
                break
        traffic_seconds = run.elapsed()
        stop.set()
        # The last sample under load, before the workers finish their last actions.
        end_load = take_sample(world, traffic_seconds, stats.total_actions())
        with run.samples_lock:
            run.samples.append(end_load)
        stuck = []
        join_deadline = time.monotonic() + 90
        for th in threads:
            th.join(max(0.0, join_deadline - time.monotonic()))
            if th.is_alive():
                stuck.append(th.name)
        mon.join(10)
        for c in ctxs:
            c.close()
        time.sleep(IDLE_SETTLE)
        apgate_alive = world.apgate.poll() is None
        idle = take_sample(world, run.elapsed(), stats.total_actions()) if apgate_alive else None
        metrics = summarize_metrics(scrape(world.admin_url)) if apgate_alive else {}
        # The signatures the clients computed (conftest records botocore's), for a secret scan.
        (workdir / "signatures.json").write_text(json.dumps(sorted(conftest.CLIENT_SIGNATURES)))

        with run.samples_lock:
            samples = list(run.samples)
        wp = warmup_point(traffic_seconds)
        warm = next((s for s in samples if s.t >= wp), samples[-1])
        peak_hwm = max(s.hwm_kib for s in samples + ([idle] if idle else []))
        drift = 100.0 * (end_load.rss_kib - warm.rss_kib) / warm.rss_kib if warm.rss_kib else 0.0
        windows = rss_windows(samples, traffic_seconds)
        trend = rss_trend(samples, traffic_seconds)
        with stats.lock:
            sent = sum(stats.requests.values())
            report = {
                "duration_requested_s": duration,
                "traffic_s": round(traffic_seconds, 1),
                "concurrency": concurrency,
                "log_level": log_level,
                "actions": dict(sorted(stats.actions.items())),
                "actions_total": sum(stats.actions.values()),
                "requests_sent": dict(sorted(stats.requests.items())),
                "requests_sent_total": sent,
                "expected_errors": dict(sorted((k, v) for k, v in stats.expected_errors.items() if v)),
                "expected_errors_total": sum(stats.expected_errors.values()),
                "unexpected_errors": dict(sorted((k, v) for k, v in stats.unexpected.items() if v)),
                "unexpected_errors_total": sum(stats.unexpected.values()),
                "first_unexpected": list(stats.first_unexpected),
                "mean_seconds": {k: round(stats.seconds[k] / stats.actions[k], 3) for k in sorted(stats.actions)},
                "max_seconds": {k: round(v, 2) for k, v in sorted(stats.max_seconds.items())},
                "mib_up": round(stats.bytes_up / MIB, 1),
                "mib_down": round(stats.bytes_down / MIB, 1),
            }
        report.update({
            "stuck_workers": stuck,
            "apgate_alive": apgate_alive,
            "baseline": baseline.as_dict(),
            "warmup_at_s": round(wp, 1),
            "warmup": warm.as_dict(),
            "end": end_load.as_dict(),
            "idle": idle.as_dict() if idle else None,
            "rss_warmup_mib": round(warm.rss_kib / 1024, 2),
            "rss_end_mib": round(end_load.rss_kib / 1024, 2),
            "rss_drift_percent": round(drift, 2),
            "rss_windows": windows,
            "rss_trend": trend,
            "rss_peak_mib": round(peak_hwm / 1024, 2),
            "fds_baseline": baseline.fds,
            "fds_warmup": warm.fds,
            "fds_end": end_load.fds,
            "fds_idle": idle.fds if idle else None,
            "metrics": metrics,
            "samples": [s.as_dict() for s in samples],
        })
        failures = []
        if report["unexpected_errors_total"]:
            failures.append(f"{report['unexpected_errors_total']} unexpected errors")
        if stuck:
            failures.append(f"workers still running {90}s after the end: {stuck}")
        if not apgate_alive:
            failures.append(f"apgate died (exit {world.apgate.returncode})")
        if idle is not None and idle.fds > min(warm.fds, baseline.fds) + FD_TOLERANCE:
            failures.append(f"fd growth: {idle.fds} open after idle > min({warm.fds} at warm-up, {baseline.fds} "
                            f"before traffic) + {FD_TOLERANCE}")
        if metrics and metrics["requests_total"] != sent and not stuck:
            failures.append(f"apgate counted {metrics['requests_total']:.0f} requests, the clients sent {sent}")
        if traffic_seconds >= RSS_GATE_MIN_DURATION and trend["projected_percent"] >= RSS_DRIFT_LIMIT:
            failures.append(f"RSS creeps: {trend['slope_kib_per_min']:+.1f} KiB/min, {trend['projected_mib']:+.2f} MiB "
                            f"over the run after the warm-up, {trend['projected_percent']:.1f} % >= {RSS_DRIFT_LIMIT} % "
                            f"of its median")
        if interrupted["n"] or traffic_seconds < duration - 1:
            failures.append(f"stopped early after {fmt_duration(traffic_seconds)}")
        report["failures"] = failures
        report["passed"] = not failures
        return report
    finally:
        watchdog.cancel()
        children.stop_all()


def render(report: dict) -> str:
    lines = [
        f"soak report: {fmt_duration(report['traffic_s'])} of traffic "
        f"(requested {fmt_duration(report['duration_requested_s'])}), {report['concurrency']} workers, "
        f"apgate RUST_LOG={report['log_level']}",
        f"  actions: {report['actions_total']} ({report['actions_total'] / max(report['traffic_s'], 1e-9):.1f}/s), "
        f"requests sent: {report['requests_sent_total']}, {report['mib_up']} MiB up, {report['mib_down']} MiB down",
    ]
    for kind in report["actions"]:
        lines.append(
            f"    {kind:<20} {report['actions'][kind]:>7}  requests {report['requests_sent'].get(kind, 0):>7}  "
            f"expected errors {report['expected_errors'].get(kind, 0):>6}  "
            f"unexpected {report['unexpected_errors'].get(kind, 0):>4}  "
            f"mean {report['mean_seconds'][kind]:.3f}s max {report['max_seconds'][kind]:.2f}s")
    lines.append(f"  expected errors: {report['expected_errors_total']}; "
                 f"unexpected errors: {report['unexpected_errors_total']}")
    for d in report["first_unexpected"]:
        lines.append(f"    - {d}")
    w, e, i = report["warmup"], report["end"], report["idle"]
    lines.append(f"  apgate RSS: before traffic {report['baseline']['rss_kib'] / 1024:.2f} MiB, "
                 f"warm-up (t={w['t']}s) {report['rss_warmup_mib']:.2f} MiB, end (t={e['t']}s) "
                 f"{report['rss_end_mib']:.2f} MiB, drift {report['rss_drift_percent']:+.2f} %, "
                 f"peak (VmHWM) {report['rss_peak_mib']:.2f} MiB"
                 + (f", idle after {IDLE_SETTLE:.0f}s {i['rss_kib'] / 1024:.2f} MiB" if i else ""))
    rw, rt = report["rss_windows"], report["rss_trend"]
    lines.append(f"  apgate RSS trend after the warm-up (Theil-Sen over {rt['samples']} samples; gated for runs >= "
                 f"{fmt_duration(RSS_GATE_MIN_DURATION)}): {rt['slope_kib_per_min']:+.1f} KiB/min, "
                 f"{rt['projected_mib']:+.2f} MiB over {fmt_duration(rt['span_s'])}, {rt['projected_percent']:+.2f} % "
                 f"of the median {rt['median_mib']:.2f} MiB")
    lines.append(f"  apgate RSS, medians of {rw['window_s']:.0f}s windows: warm-up {rw['warmup_window']} "
                 f"{rw['warmup_median_mib']:.2f} MiB, end {rw['end_window']} {rw['end_median_mib']:.2f} MiB, "
                 f"drift {rw['drift_percent']:+.2f} %")
    lines.append(f"    of which anonymous (heap, stacks) {rw['anon_warmup_median_mib']:.2f} -> {rw['anon_end_median_mib']:.2f} MiB "
                 f"({rw['anon_drift_percent']:+.2f} %), file-backed (the executable's pages) "
                 f"{rw['file_warmup_median_mib']:.2f} -> {rw['file_end_median_mib']:.2f} MiB ({rw['file_drift_percent']:+.2f} %)")
    lines.append(f"  apgate fds: before traffic {report['fds_baseline']}, warm-up {report['fds_warmup']}, "
                 f"end {report['fds_end']}, idle {report['fds_idle']} (tolerance +{FD_TOLERANCE})")
    lines.append(f"  moto RSS: warm-up {w['moto_rss_kib'] / 1024:.0f} MiB, end {e['moto_rss_kib'] / 1024:.0f} MiB")
    m = report["metrics"]
    if m:
        lines.append(f"  apgate /metrics: apgate_requests_total {m['requests_total']:.0f} "
                     f"(clients sent {report['requests_sent_total']}), by status "
                     + ", ".join(f"{k}: {v:.0f}" for k, v in m["requests_by_status"].items()))
        for k, v in m["requests_by_identity_operation_status"].items():
            lines.append(f"    {k}: {v:.0f}")
        if m["auth_failures"]:
            lines.append("    auth failures: " + ", ".join(f"{k}: {v:.0f}" for k, v in m["auth_failures"].items()))
        lines.append("    upstream errors: " + (", ".join(f"{k}: {v:.0f}" for k, v in m["upstream_errors"].items())
                                                 or "none"))
    lines.append("  result: " + ("PASS" if report["passed"] else "FAIL: " + "; ".join(report["failures"])))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=parse_duration, default=parse_duration("30m"),
                        help="how long to run the traffic: 30m (default), 90s, 1h30m; at most 6h")
    parser.add_argument("--concurrency", type=int, default=4, help="worker threads (default 4)")
    parser.add_argument("--workdir", type=Path, help="logs and config (default target/soak/<timestamp>)")
    parser.add_argument("--report", type=Path, help="also write the report as JSON here")
    parser.add_argument("--log-level", default="info", help="apgate's RUST_LOG (default info)")
    parser.add_argument("--binary", type=Path,
                        default=conftest.apgate_bin())
    args = parser.parse_args(argv)
    # Traffic goes to 127.0.0.1 only: no proxies, no metadata service, no ambient credentials.
    for var in list(os.environ):
        if var.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy") or var.startswith("AWS_"):
            del os.environ[var]
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    if not MIN_DURATION <= args.duration <= MAX_DURATION:
        parser.error(f"--duration must be between {fmt_duration(MIN_DURATION)} and {fmt_duration(MAX_DURATION)}")
    if not 1 <= args.concurrency <= 64:
        parser.error("--concurrency must be between 1 and 64")
    if not args.binary.is_file():
        parser.error(f"apgate binary not found at {args.binary} (cargo build --release, or --profile ci as scripts/test)")
    workdir = args.workdir or REPO / "target" / "soak" / time.strftime("%Y%m%d-%H%M%S")
    report = soak(args.duration, args.concurrency, workdir, args.binary, args.log_level,
                  out=lambda s: print(s, flush=True))
    print(render(report), flush=True)
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
