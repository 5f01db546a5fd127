"""apgate streams bodies, it does not buffer them: a 1 GiB PUT and a 1 GiB GET through the
sidecar listener keep apgate's peak RSS (VmHWM in /proc/<pid>/status) under 64 MiB.

Own world, no moto: fake_upstream.py (a fast stdlib S3 stand-in that counts and checks the
bytes, and logs the requests it saw) behind apgate with a generated config. The client is
plain http.client, unsigned: the sidecar listener identifies it by its source address.

Run: target/e2e-venv/bin/python -m pytest tests/e2e/test_streaming_memory.py -q -s
Knobs: E2E_STREAM_BYTES (default 1 GiB), E2E_STREAM_MAX_HWM_MIB (default 64).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, apgate_bin, _readyz, _tail, apgate_log_env, free_port, register_apgate, stop
from fake_upstream import CHUNK, pattern_at, pattern_chunks

HERE = Path(__file__).resolve().parent
REGION = "us-east-1"
ACCOUNT = "123456789012"
BUCKET = "access-point-test"
AP_NAME = "app-vpc-access-point-test"
AP_ARN = f"arn:aws:s3:{REGION}:{ACCOUNT}:accesspoint/{AP_NAME}"
AP_HOST = f"{AP_NAME}-{ACCOUNT}.s3-accesspoint.{REGION}.amazonaws.com"
UPSTREAM_ACCESS_KEY_ID = "AKIDFAKEUPSTREAM0001"
UPSTREAM_SECRET = "fakeUpstreamSecretKey0123456789abcdefGHI"  # 40 chars, never checked
assert len(UPSTREAM_SECRET) == 40

SIZE = int(os.environ.get("E2E_STREAM_BYTES", str(1 << 30)))
MAX_HWM_KIB = int(os.environ.get("E2E_STREAM_MAX_HWM_MIB", "64")) * 1024
KEY_PATH = f"/{BUCKET}/app/big.bin"
UPSTREAM_PATH = "/app/big.bin"
SOCK_BUF = 4 << 20


# --------------------------------------------------------------------------- helpers

def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of ``pid`` in KiB (``VmHWM`` in /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                value, unit = line.split()[1:3]
                assert unit == "kB", line
                return int(value)
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def mib(kib: int) -> float:
    return kib / 1024


def wait_file(path: Path, proc: subprocess.Popen, timeout: float, log: Path) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{_tail(log)}")
        if path.exists():
            return path.read_text()
        time.sleep(0.05)
    raise RuntimeError(f"{path} not written after {timeout}s:\n{_tail(log)}")


def connect(port: int) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.connect()
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)
    return conn


# --------------------------------------------------------------------------- fixtures

@dataclass
class FakeUpstream:
    port: int
    request_log: Path
    process_log: Path

    def requests(self) -> list[dict]:
        return [json.loads(line) for line in self.request_log.read_text().splitlines() if line]

    def requests_after(self, mark: int, count: int, timeout: float = 10.0) -> list[dict]:
        """The requests logged after `mark`, waiting until `count` are there: the fake upstream
        logs a GET only after it has sent the whole body, which can be after the client read it."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.requests()[mark:]
            if len(seen) >= count or time.monotonic() > deadline:
                return seen
            time.sleep(0.05)


@dataclass
class StreamingApgate:
    pid: int
    sidecar_port: int
    admin_port: int
    log_path: Path
    start_hwm_kib: int
    proc: subprocess.Popen

    def access_log(self) -> list[dict]:
        return [line for line in self.log_lines()
                if isinstance(line, dict) and line.get("target") == "apgate::access"]

    def log_lines(self) -> list[dict | str]:
        out: list[dict | str] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append(line)
        return out


@pytest.fixture(scope="module")
def fake_upstream(tmp_path_factory) -> FakeUpstream:
    tmp = tmp_path_factory.mktemp("fake_upstream")
    port_file, request_log, process_log = tmp / "port", tmp / "requests.jsonl", tmp / "fake_upstream.log"
    request_log.touch()
    with open(process_log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "fake_upstream.py"), "--host", "127.0.0.1", "--port", "0",
             "--port-file", str(port_file), "--request-log", str(request_log),
             "--object-size", str(SIZE)],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
        )
    try:
        port = int(wait_file(port_file, proc, 30, process_log))
        yield FakeUpstream(port=port, request_log=request_log, process_log=process_log)
    finally:
        stop(proc)


def streaming_config(admin: int, sidecar: int, upstream_port: int) -> str:
    return f"""\
# generated by tests/e2e/test_streaming_memory.py
[admin]
address = "127.0.0.1:{admin}"

[[listeners]]
name = "sidecar"
address = "127.0.0.1:{sidecar}"
identity_methods = ["source"]

[[listeners.sources]]
cidr = "127.0.0.0/8"
identity = "app"

[upstream]
region = "{REGION}"
endpoint = {{ mode = "custom", url = "http://127.0.0.1:{upstream_port}" }}
connect_timeout_seconds = 5
response_header_timeout_seconds = 60

[credentials]
type = "static"
access_key_id = {{ env = "APGATE_UPSTREAM_ACCESS_KEY_ID" }}
secret_access_key = {{ env = "APGATE_UPSTREAM_SECRET_ACCESS_KEY" }}

[[identities]]
name = "app"

[[routes]]
identity = "app"
bucket = "{BUCKET}"
prefix = "app/"
access_point = "{AP_ARN}"
"""


@pytest.fixture(scope="module")
def streaming_apgate(fake_upstream: FakeUpstream, tmp_path_factory) -> StreamingApgate:
    binary = apgate_bin()
    if not binary.is_file():
        pytest.fail(f"apgate binary not found at {binary} (cargo build --release, or --profile ci as scripts/test)")
    tmp = tmp_path_factory.mktemp("apgate_stream")
    admin, sidecar = free_port(), free_port()
    while len({admin, sidecar, fake_upstream.port}) < 3:
        admin, sidecar = free_port(), free_port()
    config = tmp / "apgate.toml"
    config.write_text(streaming_config(admin, sidecar, fake_upstream.port))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and not k.startswith("APGATE_")}
    env.update({
        "APGATE_UPSTREAM_ACCESS_KEY_ID": UPSTREAM_ACCESS_KEY_ID,
        "APGATE_UPSTREAM_SECRET_ACCESS_KEY": UPSTREAM_SECRET,
        "AWS_EC2_METADATA_DISABLED": "true",
        **apgate_log_env(),
    })
    log_path = tmp / "apgate.log"
    register_apgate(log_path, UPSTREAM_SECRET)
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([str(binary), "serve", "-c", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
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
        yield StreamingApgate(pid=proc.pid, sidecar_port=sidecar, admin_port=admin, log_path=log_path,
                              start_hwm_kib=vm_hwm_kib(proc.pid), proc=proc)
    finally:
        stop(proc)


# --------------------------------------------------------------------------- tests

def test_measurement_can_fail():
    """The VmHWM reading works and the 64 MiB threshold would catch a buffering process."""
    me = vm_hwm_kib(os.getpid())
    assert me > 0
    # A process that really holds ~96 MiB: its VmHWM must cross the threshold we apply to apgate.
    hog = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; b = b'\\x01' * (96 << 20); print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert hog.stdout.readline().strip() == "ready"
        hog_hwm = vm_hwm_kib(hog.pid)
    finally:
        hog.stdin.close()
        stop(hog)
    print(f"\n[streaming] negative control: a process holding 96 MiB has VmHWM {mib(hog_hwm):.1f} MiB")
    assert hog_hwm >= 96 * 1024
    assert not hog_hwm < MAX_HWM_KIB, "the threshold would not catch a process that buffers 96 MiB"


def test_1gib_put_and_get_stream_without_buffering(streaming_apgate: StreamingApgate,
                                                    fake_upstream: FakeUpstream, record_property):
    ap = streaming_apgate
    start_hwm = ap.start_hwm_kib
    mark = len(fake_upstream.requests())

    # PUT: 1 GiB from a generator, 1 MiB at a time.
    conn = connect(ap.sidecar_port)
    t0 = time.perf_counter()
    conn.putrequest("PUT", KEY_PATH, skip_accept_encoding=True)
    conn.putheader("Content-Length", str(SIZE))
    conn.putheader("Content-Type", "application/octet-stream")
    conn.endheaders()
    for piece in pattern_chunks(SIZE, CHUNK):
        conn.send(piece)
    resp = conn.getresponse()
    put_body = resp.read()
    put_s = time.perf_counter() - t0
    assert resp.status == 200, (resp.status, put_body[:2000], _tail(ap.log_path))
    # What the upstream received is judged from its request log below (apgate shows a client only
    # the headers the model gives the answer, so the stand-in's own x-fake-* headers stay behind).
    assert resp.getheader("x-fake-received-bytes") is None
    assert resp.getheader("ETag", "").startswith('"')
    after_put_hwm = vm_hwm_kib(ap.pid)

    # GET: read in 1 MiB pieces, count, and check every byte against the pattern (memcmp).
    t0 = time.perf_counter()
    conn.putrequest("GET", KEY_PATH, skip_accept_encoding=True)
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 200, (resp.status, resp.read(2000), _tail(ap.log_path))
    assert resp.getheader("Content-Length") == str(SIZE)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    got = 0
    mismatch_at = None
    while True:
        n = resp.readinto(view)
        if not n:
            break
        if mismatch_at is None and not buf.startswith(pattern_at(got, n)):
            mismatch_at = got
        got += n
    get_s = time.perf_counter() - t0
    conn.close()
    assert got == SIZE
    assert mismatch_at is None, f"GET body differs from the pattern in the piece at offset {mismatch_at}"

    final_hwm = vm_hwm_kib(ap.pid)
    assert ap.proc.poll() is None, "apgate exited"

    put_mbs, get_mbs = SIZE / put_s / 1e6, SIZE / get_s / 1e6
    figures = {
        "bytes": SIZE,
        "vmhwm_start_mib": round(mib(start_hwm), 1),
        "vmhwm_after_put_mib": round(mib(after_put_hwm), 1),
        "vmhwm_final_mib": round(mib(final_hwm), 1),
        "put_seconds": round(put_s, 2), "put_MB_per_s": round(put_mbs),
        "get_seconds": round(get_s, 2), "get_MB_per_s": round(get_mbs),
    }
    for k, v in figures.items():
        record_property(k, v)
    print(f"\n[streaming] {json.dumps(figures)}")
    print(f"[streaming] apgate VmHWM: start {mib(start_hwm):.1f} MiB, after PUT {mib(after_put_hwm):.1f} MiB, "
          f"final {mib(final_hwm):.1f} MiB (limit {mib(MAX_HWM_KIB):.0f} MiB); "
          f"PUT {SIZE / 2**20:.0f} MiB in {put_s:.2f} s = {put_mbs:.0f} MB/s, "
          f"GET in {get_s:.2f} s = {get_mbs:.0f} MB/s")

    # The point of it all: peak RSS after 2 GiB went through.
    assert final_hwm >= start_hwm > 0
    assert final_hwm < MAX_HWM_KIB, (
        f"apgate peak RSS {mib(final_hwm):.1f} MiB >= {mib(MAX_HWM_KIB):.0f} MiB: is it buffering bodies?")

    # What reached the upstream: the access point host and key, re-signed, unsigned payload.
    seen = fake_upstream.requests_after(mark, 2)
    assert [(r["method"], r["path"]) for r in seen] == [("PUT", UPSTREAM_PATH), ("GET", UPSTREAM_PATH)], seen
    for r in seen:
        assert r["host"] == AP_HOST, r
        assert r["authorization"].startswith(
            f"AWS4-HMAC-SHA256 Credential={UPSTREAM_ACCESS_KEY_ID}/"), r
        assert f"/{REGION}/s3/aws4_request" in r["authorization"], r
        assert r["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD", r
    put, get = seen
    assert put["content-length"] == str(SIZE) and put["transfer-encoding"] is None, put
    assert put["received_bytes"] == SIZE and put["pattern_ok"], put
    assert get["sent_bytes"] == SIZE, get

    # apgate's access log: both requests, 200, the GET with every byte counted. (Its
    # `complete` flag is checked separately: test_access_log_marks_full_bodies_complete.)
    # The GET's line is written when apgate's side of the body ends, which can be a moment after
    # the client has read the last byte (seen with trace logging): wait for it.
    deadline = time.monotonic() + 10
    while len(ap.access_log()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    access = ap.access_log()
    assert [(a["method"], a["operation"], a["status"]) for a in access] == [
        ("PUT", "PutObject", 200), ("GET", "GetObject", 200)], access
    assert access[1]["bytes_out"] == SIZE, access
    problems = [line for line in ap.log_lines()
                if not isinstance(line, dict) or line.get("level") in ("WARN", "ERROR")]
    assert not problems, problems


def test_access_log_marks_full_bodies_complete(streaming_apgate: StreamingApgate):
    """Reads the access log of the 1 GiB exchange above (no new traffic): both bodies were
    delivered in full (the client counted every byte), so both lines should say complete."""
    access = streaming_apgate.access_log()
    if len(access) < 2:
        pytest.skip("needs test_1gib_put_and_get_stream_without_buffering to run first")
    assert [a["complete"] for a in access[:2]] == [True, True], access[:2]
