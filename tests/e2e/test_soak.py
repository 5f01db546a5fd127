"""A short soak (tests/e2e/soak.py, what scripts/soak runs for 30 minutes): mixed traffic through
apgate for E2E_SOAK_DURATION (default 60s) with no unexpected error, no file-descriptor growth and
apgate's request counter matching what the clients sent. Its own moto and apgate; the apgate's log is
under this session's temporary directory, so test_zzz_no_secrets.py scans it too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import soak
from conftest import CLIENT_SIGNATURES, HERE, apgate_log_filter, register_apgate

DURATION = os.environ.get("E2E_SOAK_DURATION", "60s")


def test_short_soak(tmp_path):
    seconds = soak.parse_duration(DURATION)
    report_path = tmp_path / "report.json"
    t = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(HERE / "soak.py"), "--duration", DURATION, "--concurrency", "4",
         "--workdir", str(tmp_path / "soak"), "--report", str(report_path),
         "--log-level", apgate_log_filter()],
        capture_output=True, text=True, timeout=seconds + soak.HARD_MARGIN + 30,
    )
    took = time.monotonic() - t
    secrets_file = tmp_path / "soak" / "secrets.json"
    if secrets_file.exists():
        register_apgate(tmp_path / "soak" / "apgate" / "apgate.log", *json.loads(secrets_file.read_text()).values())
    signatures_file = tmp_path / "soak" / "signatures.json"
    if signatures_file.exists():
        CLIENT_SIGNATURES.update(json.loads(signatures_file.read_text()))
    print(f"\n{proc.stdout[-6000:]}\n[soak] whole run {took:.1f}s")
    assert report_path.exists(), f"no report (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(report_path.read_text())
    assert report["unexpected_errors_total"] == 0, report["first_unexpected"]
    assert report["fds_idle"] is not None, report
    assert report["fds_idle"] <= min(report["fds_warmup"], report["fds_baseline"]) + soak.FD_TOLERANCE, report
    assert report["actions_total"] > 0 and report["expected_errors_total"] > 0, report["actions"]
    # every kind of action ran at least once (the rarest, multipart, has weight 2 of ~96)
    assert set(report["actions"]) >= set(soak.ACTIONS) - {"bob_multipart"}, report["actions"]
    assert report["passed"], report["failures"]
    assert proc.returncode == 0, proc.stderr[-3000:]
