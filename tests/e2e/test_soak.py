"""A short soak (tests/e2e/soak.py, what scripts/soak runs for 30 minutes): mixed traffic through
apgate for E2E_SOAK_DURATION (default 60s) with no unexpected error, no file-descriptor growth and
apgate's request counter matching what the clients sent. Its own moto and apgate; the apgate's log is
under this session's temporary directory, so test_zzz_no_secrets.py scans it too.
"""

from __future__ import annotations

import json
import os
import random
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


def synthetic_run(creep_kib_per_min: float, seed: int) -> list[soak.Sample]:
    """30 minutes of 5 s samples around 22 MiB swinging by +-6 MiB (as apgate's RSS does under the
    soak's traffic), plus a steady creep."""
    rng = random.Random(seed)
    return [soak.Sample(t=float(t), rss_kib=int(22 * 1024 + rng.uniform(-6144, 6144) + creep_kib_per_min * t / 60),
                        hwm_kib=0, anon_kib=0, file_kib=0, fds=0, moto_rss_kib=0, actions=0)
            for t in range(0, 1801, 5)]


def test_rss_trend_sees_a_creep_through_the_swings():
    flat_trends, flat_windows = [], []
    for seed in range(10):
        flat = soak.rss_trend(synthetic_run(0, seed), 1800)
        assert abs(flat["projected_percent"]) < soak.RSS_DRIFT_LIMIT, (seed, flat)
        flat_trends.append(abs(flat["projected_percent"]))
        flat_windows.append(abs(soak.rss_windows(synthetic_run(0, seed), 1800)["drift_percent"]))
        # 80 KiB a minute: 2.1 MiB over the 27 minutes after the warm-up, a sixth of the swing.
        creep = soak.rss_trend(synthetic_run(80, seed), 1800)
        assert creep["projected_percent"] >= soak.RSS_DRIFT_LIMIT, (seed, creep)
        assert 40 <= creep["slope_kib_per_min"] <= 120, (seed, creep)
        assert creep["samples"] == 325 and creep["span_s"] == 1620.0, creep
    # The one-minute medians at both ends (the gate before) see drift in flat runs: two medians of
    # 12 samples each are at the mercy of the swings.
    assert max(flat_windows) >= soak.RSS_DRIFT_LIMIT > max(flat_trends), (flat_windows, flat_trends)
