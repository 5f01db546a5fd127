"""Faults that need the real upstream (moto, SigV4 + IAM enforced) and the real binary; the rest
of the fault suite runs in process (tests/in_process/faults.rs, whose header maps every fault to its test).

- A client that aborts an upload mid-body (TCP reset) leaves no object, whether apgate held the
  body for retries (nothing reached moto) or streamed it (moto saw a request that never ended).
- A client that stalls mid-upload gets S3's ``400 RequestTimeout`` after
  ``server.client_body_idle_timeout_seconds``, and no object is created.
- An upstream connection reset before the response (a TCP proxy in front of moto resets the first
  connection) is retried: the PUT succeeds, moto stores it once, the retry is counted.
- SIGTERM under concurrent load: every request in flight at SIGTERM completes, none fails; new
  work is refused at the connection level, never answered with an error or left hanging; exit 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

import s3wire
import conftest  # noqa: E402
from conftest import (
    apgate_bin,
    BOB_ACCESS_KEY_ID, BUCKET, REGION, REPO, _readyz, _tail, apgate_config, free_port,
    stop, wait_port,
)

MIB = 1 << 20
NO_RETRIES = {"mode": "standard", "total_max_attempts": 1}


# ----------------------------------------------------------------------------- helpers

@dataclass
class Gw:
    proc: subprocess.Popen
    admin: int
    shared: int
    bob_secret: str
    log_path: Path

    @property
    def shared_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.shared}"

    def bob(self):
        return boto3.client(
            "s3", endpoint_url=self.shared_endpoint, region_name=REGION,
            aws_access_key_id=BOB_ACCESS_KEY_ID, aws_secret_access_key=self.bob_secret,
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4", retries=NO_RETRIES,
                          connect_timeout=5, read_timeout=30, max_pool_connections=32))

    def metrics(self) -> str:
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def tail(self) -> str:
        return _tail(self.log_path, 6000)


@contextlib.contextmanager
def run_apgate(moto, tmp: Path, *, upstream_port: int | None = None, extra: str = "",
               session_token: str | None = None):
    """An apgate of the test's own (conftest's configuration, plus ``extra``), in front of moto or
    of ``upstream_port``, signing with moto's keys (and ``session_token``, if given)."""
    binary = apgate_bin()
    if not binary.is_file():
        pytest.fail(f"apgate binary not found at {binary} (cargo build --release, or --profile ci as scripts/test)")
    ports = {moto.port}
    admin = shared = sidecar = 0
    while len(ports) < 4:
        admin, shared, sidecar = free_port(), free_port(), free_port()
        ports = {moto.port, admin, shared, sidecar}
    text = apgate_config(admin, shared, sidecar, moto.port)
    if upstream_port is not None:
        text = text.replace(f'url = "http://127.0.0.1:{moto.port}"', f'url = "http://127.0.0.1:{upstream_port}"')
    if session_token is not None:
        line = 'secret_access_key = { env = "APGATE_UPSTREAM_SECRET_ACCESS_KEY" }\n'
        assert line in text
        text = text.replace(line, line + 'session_token = { env = "APGATE_UPSTREAM_SESSION_TOKEN" }\n')
    config = tmp / f"apgate-{admin}.toml"
    config.write_text(text + extra)
    bob_secret = secrets.token_urlsafe(30)
    given = {bob_secret, moto.secret_access_key} | ({session_token} if session_token else set())
    conftest.register_apgate(None, *given)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and not k.startswith("APGATE_")}
    env.update({
        "APGATE_UPSTREAM_ACCESS_KEY_ID": moto.access_key_id,
        "APGATE_UPSTREAM_SECRET_ACCESS_KEY": moto.secret_access_key,
        "APGATE_TEST_BOB_SECRET": bob_secret,
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    if session_token is not None:
        env["APGATE_UPSTREAM_SESSION_TOKEN"] = session_token
    env.update(conftest.apgate_log_env())
    log_path = tmp / f"apgate-{admin}.log"
    conftest.register_apgate(log_path, *given)
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([str(binary), "serve", "-c", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    gw = Gw(proc=proc, admin=admin, shared=shared, bob_secret=bob_secret, log_path=log_path)
    try:
        deadline = time.monotonic() + 30
        while _readyz(f"http://127.0.0.1:{admin}/readyz") != 200:
            if proc.poll() is not None:
                pytest.fail(f"apgate exited with {proc.returncode}:\n{gw.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"apgate /readyz not 200 after 30s:\n{gw.tail()}")
            time.sleep(0.05)
        wait_port(shared, proc, 10, log_path)
        yield gw
    finally:
        stop(proc)


def metric(text: str, name: str, **labels) -> float | None:
    total = None
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total = (total or 0.0) + float(value)
    return total


def signed_put_head(shared_port: int, bob_secret: str, key: str, data: bytes) -> bytes:
    """A SigV4-signed PUT head for the whole of ``data`` (its hash signed), as bob."""
    host = f"127.0.0.1:{shared_port}"
    target = f"/{BUCKET}/{s3wire.encode_key(key)}"
    headers = s3wire.sign("PUT", host, target, access_key=BOB_ACCESS_KEY_ID, secret_key=bob_secret, body=data)
    headers["Content-Length"] = str(len(data))
    lines = [f"PUT {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a crashed or killed client does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def assert_absent(moto_s3, key: str) -> None:
    for _ in range(2):  # now, and after an aborted upstream request could still have landed
        with pytest.raises(ClientError) as e:
            moto_s3.head_object(Bucket=BUCKET, Key=key)
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404, e.value.response
        time.sleep(1.0)


def puts_for(entries: list[dict], key: str) -> list[dict]:
    return [e for e in entries if e["method"] == "PUT" and e["raw_uri"].split("?")[0].endswith("/" + key)]


# ----------------------------------------------------------------------------- client aborts

@pytest.mark.parametrize("size,held", [(512 * 1024, True), (8 * MIB, False)], ids=["held-512KiB", "streamed-8MiB"])
def test_client_abort_mid_upload_leaves_no_object(apgate, moto, moto_s3, size, held):
    key = f"Bob/fault-abort-{uuid.uuid4().hex[:8]}.bin"
    data = os.urandom(size)
    mark = moto.log_mark()
    sock = socket.create_connection(("127.0.0.1", apgate.shared_port), timeout=10)
    sock.sendall(signed_put_head(apgate.shared_port, apgate.bob_secret_access_key, key, data))
    sock.sendall(data[: size // 4])
    time.sleep(0.5)
    reset(sock)
    time.sleep(0.5)
    assert_absent(moto_s3, key)
    upstream = puts_for(moto.log_since(mark), key)
    if held:
        # A body apgate holds for retries only goes upstream whole.
        assert upstream == [], upstream
    else:
        # The streamed upload reached moto, and was cut off before its end (no object, above).
        assert len(upstream) <= 1, upstream
    # apgate finished the request: refused as an incomplete body, or logged as abandoned (499).
    lines = [json.loads(line) for line in apgate.log().splitlines() if key in line and "apgate::access" in line]
    assert len(lines) == 1, lines
    assert lines[0]["status"] in (400, 499), lines[0]


# ----------------------------------------------------------------------------- client stalls

def test_client_stall_mid_upload_gets_request_timeout(moto, moto_s3, tmp_path):
    with run_apgate(moto, tmp_path, extra="\n[server]\nclient_body_idle_timeout_seconds = 1\n") as gw:
        for size in (512 * 1024, 8 * MIB):
            key = f"Bob/fault-stall-{uuid.uuid4().hex[:8]}.bin"
            data = os.urandom(size)
            sock = socket.create_connection(("127.0.0.1", gw.shared), timeout=10)
            sock.sendall(signed_put_head(gw.shared, gw.bob_secret, key, data))
            sock.sendall(data[: size // 4])
            t = time.monotonic()
            answer = b""
            with contextlib.suppress(OSError):
                while chunk := sock.recv(65536):
                    answer += chunk
            took = time.monotonic() - t
            sock.close()
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400"), (size, answer[:500], gw.tail())
            assert b"<Code>RequestTimeout</Code>" in body, (size, body)
            assert 0.9 <= took < 4, (size, took)
            assert_absent(moto_s3, key)


# ----------------------------------------------------------------------------- upstream resets, retried

class ResetFirstProxy:
    """Forwards 127.0.0.1:port to moto, except that the first ``resets`` connections are read from
    and then reset (SO_LINGER 0) without a response byte."""

    def __init__(self, target_port: int, resets: int):
        self.target = ("127.0.0.1", target_port)
        self.resets_left = resets
        self.reset_count = 0
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                cut = self.resets_left > 0
                self.resets_left -= cut
            threading.Thread(target=self._cut if cut else self._forward, args=(client,), daemon=True).start()

    def _cut(self, client: socket.socket) -> None:
        client.settimeout(5)
        with contextlib.suppress(OSError):
            client.recv(65536)  # the request has started
        with self.lock:
            self.reset_count += 1
        reset(client)

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.close()


def test_upstream_reset_before_the_response_is_retried(moto, moto_s3, tmp_path):
    proxy = ResetFirstProxy(moto.port, resets=1)
    try:
        with run_apgate(moto, tmp_path, upstream_port=proxy.port) as gw:
            key = f"Bob/fault-retried-{uuid.uuid4().hex[:8]}.bin"
            data = os.urandom(100 * 1024)
            mark = moto.log_mark()
            gw.bob().put_object(Bucket=BUCKET, Key=key, Body=data)
            stored = moto_s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()
            assert proxy.reset_count == 1
            assert len(puts_for(moto.log_since(mark), key)) == 1, "moto got the PUT exactly once"
            text = gw.metrics()
            assert metric(text, "apgate_upstream_retries_total", reason="connect_error") == 1, text
            # The access log's writer thread writes the line shortly after the answer.
            deadline = time.monotonic() + 5
            while True:
                access = [line for line in gw.tail().splitlines() if key in line and "apgate::access" in line]
                if access or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert len(access) == 1 and '"attempts":2' in access[0] and '"status":200' in access[0], access
    finally:
        proxy.close()


# ----------------------------------------------------------------------------- SIGTERM under load

@dataclass
class Call:
    t0: float
    t1: float
    outcome: str  # "ok", an HTTP status, or an exception class name


def test_sigterm_under_concurrent_load_fails_nothing_in_flight(moto, tmp_path):
    grace = 15
    with run_apgate(moto, tmp_path, extra=f"\n[server]\nshutdown_grace_period_seconds = {grace}\n") as gw:
        stop_at = threading.Event()
        calls: list[Call] = []
        lock = threading.Lock()
        # Large enough that calls last well over the 50 ms margin below, so some are surely in
        # flight at SIGTERM (with 256 KiB, a fast gateway sometimes had none).
        payload = os.urandom(4 * 1024 * 1024)

        def worker(n: int, bob) -> None:
            i = 0
            while not stop_at.is_set():
                key = f"Bob/fault-drain-{n}-{i}.bin"
                t0 = time.monotonic()
                try:
                    if i % 2 == 0:
                        bob.put_object(Bucket=BUCKET, Key=key, Body=payload)
                    else:
                        got = bob.get_object(Bucket=BUCKET, Key=f"Bob/fault-drain-{n}-{i - 1}.bin")["Body"].read()
                        assert got == payload
                    outcome = "ok"
                except ClientError as e:
                    outcome = str(e.response["ResponseMetadata"]["HTTPStatusCode"])
                except Exception as e:  # noqa: BLE001 - classified below
                    outcome = type(e).__name__
                with lock:
                    calls.append(Call(t0, time.monotonic(), outcome))
                i += 1

        # The clients first: making sixteen boto3 clients at once inside the threads holds the GIL
        # for a while on a loaded machine.
        clients = [gw.bob() for _ in range(16)]
        threads = [threading.Thread(target=worker, args=(n, clients[n]), daemon=True) for n in range(16)]
        started = time.monotonic()
        for th in threads:
            th.start()
        # Under load for at least 2 s, and until 32 calls have been completed (a slow machine
        # takes longer than 2 s to get there).
        time.sleep(2.0)
        while time.monotonic() - started < 60:
            with lock:
                if len(calls) >= 32:
                    break
            time.sleep(0.1)
        t_term = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        stop_at.set()
        for th in threads:
            th.join(timeout=30)
        try:
            rc = gw.proc.wait(timeout=grace + 5)
        except subprocess.TimeoutExpired:
            rc = None
        exited_after = time.monotonic() - t_term

    # Requests that apgate had surely received (started more than 50 ms before SIGTERM) all succeed.
    before = [c for c in calls if c.t0 < t_term - 0.05]
    in_flight = [c for c in before if c.t1 > t_term]
    failed = [c for c in before if c.outcome != "ok"]
    after = [c for c in calls if c.t0 >= t_term]
    print(f"\n[faults] SIGTERM under load: {len(before)} requests before, {len(in_flight)} in flight at SIGTERM, "
          f"{len(after)} after ({sorted({c.outcome for c in after})}); exit {rc} after {exited_after:.2f} s")
    assert len(before) >= 32, f"too little load: {len(before)} requests"
    assert in_flight, "nothing was in flight at SIGTERM"
    assert not failed, failed
    # After SIGTERM: served (a request already on its way), or refused at the connection level.
    connection_level = {"ok", "EndpointConnectionError", "ConnectionClosedError"}
    assert {c.outcome for c in after} <= connection_level, after
    assert rc == 0
    assert exited_after < grace
