"""scripts/demo as a new user meets it: the walkthrough runs to the end and shows both addressing
styles, and every command it suggests for trying apgate afterwards (``scripts/demo --serve``)
succeeds as printed.

A user's demo listens on 127.0.0.1:5000/8080/8081/9090 (config/demo.toml); here each run gets free
ports and a working directory of its own (APGATE_DEMO_PORTS, APGATE_DEMO_WORK), so that it can run
beside the other modules. Its apgate log and moto's request log stay under the session's temporary
directory, where test_zzz_no_secrets.py scans them.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, apgate_log_env, free_port, register_apgate

DEMO = REPO / "scripts" / "demo"
BOB_KEY = "APGDEMOBOB0000000001"
BOB_SECRET = "demo/bob/secret/key/not/for/production/use"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def demo_env(work: Path) -> dict[str, str]:
    """The environment of someone who just cloned the repository: no AWS settings of their own,
    the venv's aws CLI first on PATH (scripts/demo installs it there); plus the demo's ports and
    working directory for this run, and the suite's log level."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["NO_COLOR"] = "1"
    env.update(apgate_log_env())  # for test_zzz_no_secrets.py's scan
    ports: list[int] = []
    while len(ports) < 4:
        port = free_port()
        if port not in ports:
            ports.append(port)
    env["APGATE_DEMO_PORTS"] = " ".join(map(str, ports))
    env["APGATE_DEMO_WORK"] = str(work)
    return env


@pytest.fixture
def work(tmp_path):
    work = tmp_path / "demo"
    yield work
    register_apgate(work / "apgate.log", BOB_SECRET, *upstream_secrets(work))


def upstream_secrets(work: Path) -> list[str]:
    try:
        keys = json.loads((work / "upstream-keys.json").read_text())
    except (OSError, ValueError):
        return []
    return [keys["secret_access_key"]]


def access_log(work: Path) -> list[dict]:
    rows = []
    for line in (work / "apgate.log").read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("target") == "apgate::access":
            rows.append(row.get("fields", row))
    return rows


def test_demo_walkthrough_runs_and_shows_virtual_hosted_style(work):
    # one stream, in order: the step headings go to stderr, the commands' output to stdout
    proc = subprocess.Popen([str(DEMO)], cwd=REPO, env=demo_env(work), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=300)
    finally:
        stop_group(proc)
    out = ANSI.sub("", stdout)
    assert proc.returncode == 0, f"scripts/demo exited {proc.returncode}\n{out[-6000:]}"
    # the virtual-hosted read: the bucket in the Host header, signed by curl, answered with bob's object
    section = out.split("Virtual-hosted style", 1)
    assert len(section) == 2, out
    body = section[1].split("==>", 1)[0]
    assert "--resolve" in body and "access-point-test.s3.localhost" in body, body
    assert "hello from bob" in body, body
    # the refusal really kept the request from the upstream
    assert "requests that reached moto meanwhile: 0" in out, out
    # apgate logged bob's two reads of the object: path-style (aws CLI) and virtual-hosted (curl)
    reads = [row for row in access_log(work) if row.get("identity") == "bob" and row.get("operation") == "GetObject"
             and row.get("key") == "Bob/hello.txt" and row.get("status") == 200]
    assert len(reads) == 2, access_log(work)
    assert "apgate_requests_total" in out, out  # and it shows where the metrics are


def read_lines(proc: subprocess.Popen, lines: queue.Queue) -> None:
    for line in proc.stdout:
        lines.put(ANSI.sub("", line.rstrip("\n")))
    lines.put(None)


def stop_group(proc: subprocess.Popen) -> None:
    """Stop the demo and what it started (moto, apgate), as Ctrl-C does."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_demo_serve_suggestions_succeed_as_printed(work):
    env = demo_env(work)
    proc = subprocess.Popen([str(DEMO), "--serve"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=read_lines, args=(proc, lines), daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 180
        # the suggestions: the lines after "Try:" up to the blank line that ends the text
        suggestions: list[str] | None = None
        while True:
            try:
                # the suggestions end with a blank line; a quiet spell after them ends them too
                wait = 5.0 if suggestions else max(0.1, deadline - time.monotonic())
                line = lines.get(timeout=wait)
            except queue.Empty:
                if suggestions:
                    break
                pytest.fail("scripts/demo --serve printed no suggestions in time:\n" + "\n".join(seen[-60:]))
            if line is None:
                pytest.fail(f"scripts/demo --serve ended ({proc.wait()}):\n" + "\n".join(seen[-60:]))
            seen.append(line)
            if line.strip() == "Try:":
                suggestions = []
            elif suggestions is not None:
                if not line.strip():
                    break
                suggestions.append(line)
        commands = re.split(r"(?<!\\)\n", "\n".join(suggestions))
        commands = [c.replace("\\\n", " ").strip() for c in commands if c.strip() and not c.strip().startswith("#")]
        assert len(commands) >= 3, suggestions
        assert any("--resolve" in c and ".s3.localhost:" in c for c in commands), commands  # virtual-hosted too
        outputs = []
        for command in commands:
            r = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=120)
            assert r.returncode == 0, f"suggested command failed ({r.returncode}): {command}\n{r.stdout}\n{r.stderr}"
            outputs.append(r.stdout)
        # the curl read returns the README the first suggestion uploaded, not an error document
        curl = next(i for i, c in enumerate(commands) if c.startswith("curl "))
        assert outputs[curl] == (REPO / "README.md").read_text(), outputs[curl][:500]
    finally:
        stop_group(proc)
