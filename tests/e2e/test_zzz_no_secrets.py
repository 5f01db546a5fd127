"""Runs last (files run in name order): no apgate log written during this test session contains a
secret apgate was given, an Authorization value, a signature or a security token."""

from __future__ import annotations

from pathlib import Path

from conftest import SECRETS_GIVEN_TO_APGATE

MARKERS = ("AWS4-HMAC-SHA256 Credential=", "Signature=", "X-Amz-Signature", "X-Amz-Security-Token",
           "x-amz-security-token:", "chunk-signature=", "x-amz-trailer-signature")


def apgate_logs(base: Path) -> list[Path]:
    logs = []
    for path in base.rglob("*"):
        if path.is_file() and path.suffix in (".log", ".txt", ".jsonl") and path.stat().st_size < 200 << 20:
            head = path.read_bytes()[:4096]
            if b'"apgate::' in head or b"apgate::access" in head or b'"target":"apgate' in head:
                logs.append(path)
    return logs


def test_no_secret_in_any_apgate_log_of_the_session(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    logs = apgate_logs(base)
    assert logs, f"no apgate logs found under {base}: did the session start any apgate?"
    secrets = {s for s in SECRETS_GIVEN_TO_APGATE if s and len(s) >= 8}
    assert secrets, "no secrets were registered"
    leaks = []
    for log in logs:
        text = log.read_text(errors="replace")
        for s in secrets:
            if s in text:
                leaks.append(f"{log}: a secret ({s[:4]}...)")
        for m in MARKERS:
            if m in text:
                leaks.append(f"{log}: {m!r}")
    assert not leaks, "\n".join(leaks)
    print(f"[secrets] {len(logs)} apgate logs scanned for {len(secrets)} secrets: clean")
