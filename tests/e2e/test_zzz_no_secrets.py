"""Runs last: no apgate log written during this test session contains a secret apgate was given, an
STS session token or secret it used, a signature a client sent it or it sent upstream, an
Authorization value or a security token. In one process it runs last because files run in name
order; scripts/test runs the other modules in parallel processes (pytest-xdist) and this one
afterwards on its own, reading what they all recorded in E2E_SESSION_DIR (conftest.session_record).

Every apgate of the session logs at E2E_APGATE_LOG (default trace, conftest.apgate_log_env), and
this test checks that the logs it scans really are that verbose, so it cannot pass on quiet logs.
What is looked for:
- every secret registered with conftest.register_apgate (identity keys, upstream keys, inline
  secrets, the ECS credentials endpoint token, TLS private key lines) and every STS session secret
  and token moto issued in a module that called STS (conftest.register_moto_session_secrets);
- the signatures the session's botocore computed (conftest.CLIENT_SIGNATURES of every process: SigV4
  header and presigned, SigV2) and the SigV4 signatures apgate sent to moto (the request logs'
  "signature");
- the markers below.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import os

import pytest

import conftest

MARKERS = ("AWS4-HMAC-SHA256 Credential=", "Signature=", "X-Amz-Signature", "X-Amz-Security-Token",
           "x-amz-security-token:", "chunk-signature=", "x-amz-trailer-signature")
# aws-sigv4's trace log of the canonical request it signed names the header with the value
# redacted ("x-amz-security-token:** redacted (length=356) **"): that form is not a leak (the tokens
# themselves are registered secrets and looked for as such); any other value is.
_ALLOWED_AFTER = {"x-amz-security-token:": rb"(?!\*\* redacted \(length=\d+\) \*\*)"}
MARKERS_RE = tuple(re.compile(re.escape(m.encode()) + _ALLOWED_AFTER.get(m, b"")) for m in MARKERS)
# SigV4 signatures (64 hex digits) and SigV2 ones (base64 of 20 bytes), as whole tokens.
_HEX64 = re.compile(rb"(?<![0-9a-fA-F])[0-9a-f]{64}(?![0-9a-fA-F])")
_B64_20 = re.compile(rb"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{27}=(?![A-Za-z0-9+/=])")
_LEVEL = re.compile(rb'"level":"(TRACE|DEBUG|INFO|WARN|ERROR)"')


def discovered_apgate_logs(base: Path) -> list[Path]:
    """Logs under the session's temporary directory that look like apgate's (JSON lines with an
    apgate target near the top; at trace level the first lines come from the AWS SDK): a safety
    net that finds an apgate nobody registered."""
    logs = []
    for path in base.rglob("*"):
        if path.is_file() and path.suffix in (".log", ".txt", ".jsonl"):
            with open(path, "rb") as fh:
                head = fh.read(256 << 10)
            if b'"apgate::' in head or b"apgate::access" in head or b'"target":"apgate' in head:
                logs.append(path)
    return logs


def upstream_signatures(base: Path) -> set[str]:
    """The SigV4 signatures moto received (moto_launcher.py's request logs), i.e. apgate's own."""
    out = set()
    for path in base.rglob("*requests.jsonl"):
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if '"signature"' in line:
                    try:
                        sig = json.loads(line).get("signature")
                    except ValueError:
                        continue
                    if sig:
                        out.add(sig)
    return out


def scan(text: bytes, secrets: set[str], signatures: set[str]) -> list[str]:
    """What of `secrets`, `signatures` and MARKERS occurs in `text` (descriptions that do not repeat
    the secret), each with the first line it occurs on, cut short."""
    found = []

    def line_at(i: int) -> str:
        start, end = text.rfind(b"\n", 0, i) + 1, text.find(b"\n", i)
        line = text[start:end if end >= 0 else len(text)].decode(errors="replace")
        return line[:300]

    for s in secrets:
        i = text.find(s.encode())
        if i >= 0:
            found.append(f"a secret ({s[:4]}..., {len(s)} chars) in: {line_at(i).replace(s, '<SECRET>')}")
    tokens = {m.group(0).decode() for m in _HEX64.finditer(text)} | {m.group(0).decode() for m in _B64_20.finditer(text)}
    for sig in tokens & signatures:
        i = text.find(sig.encode())
        found.append(f"a signature ({sig[:6]}...) in: {line_at(i).replace(sig, '<SIGNATURE>')}")
    for marker, pattern in zip(MARKERS, MARKERS_RE):
        m = pattern.search(text)
        if m:
            found.append(f"{marker!r} in: {line_at(m.start())}")
    return found


def test_scanner_finds_what_it_looks_for():
    """Negative control: a planted secret, signature and marker are found, and clean text is clean."""
    secret, sig = "s3cr3t-planted-0123456789", "ab" * 32
    text = (b'{"level":"TRACE","message":"x"}\n{"level":"DEBUG","k":"..' + secret.encode() + b'.."}\n'
            b'{"sig":"' + sig.encode() + b'"}\n{"h":"x-amz-security-token:abc"}\n')
    found = scan(text, {secret}, {sig, "cd" * 32})
    assert len(found) == 3 and secret not in "".join(found), found
    assert scan(b'{"level":"TRACE","hash":"' + b"cd" * 31 + b'"}\n', {secret}, {sig}) == []
    # aws-sigv4's redacted canonical request is fine; the same header with a value is not
    redacted = b'"canonical_request":"PUT\\nx-amz-security-token:** redacted (length=356) **\\n"'
    assert scan(redacted, {secret}, {sig}) == []
    assert len(scan(redacted.replace(b"** redacted (length=356) **", b"IQoJb3JpZ2luX2VjE"), {secret}, {sig})) == 1


def test_no_secret_in_any_apgate_log_of_the_session(tmp_path_factory):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.fail("run test_zzz_no_secrets.py on its own after a parallel run (scripts/test does): "
                    "under pytest-xdist it may run before the modules whose logs it scans")
    record = conftest.session_record()
    bases = {tmp_path_factory.getbasetemp().resolve()} | record["basetemps"]
    bases = {b for b in bases if not any(b != o and b.is_relative_to(o) for o in bases)}  # no nested twice
    registered = {p.resolve() for p in record["logs"]}
    missing = sorted(str(p) for p in registered if not p.is_file())
    assert not missing, f"registered apgate logs that do not exist: {missing}"
    discovered = {p.resolve() for b in bases if b.is_dir() for p in discovered_apgate_logs(b)}
    unregistered = sorted(str(p) for p in discovered - registered)
    assert not unregistered, (
        "apgate logs nobody registered (start apgates with conftest.apgate_log_env() and call "
        f"conftest.register_apgate(log, *secrets)): {unregistered}")
    logs = sorted(registered | discovered)
    assert logs, f"no apgate logs found under {sorted(bases)}: did the session start any apgate?"
    secrets = {s for s in record["secrets"] if s and len(s) >= 8}
    assert secrets, "no secrets were registered"
    assert not record["problems"], record["problems"]
    client_signatures = record["signatures"]
    signatures = set(client_signatures) | {s for b in bases if b.is_dir() for s in upstream_signatures(b)}

    leaks: list[str] = []
    levels_total: Counter = Counter()
    quiet: list[str] = []
    size = 0
    for log in logs:
        text = log.read_bytes()
        size += len(text)
        levels = Counter(m.group(1).decode() for m in _LEVEL.finditer(text))
        levels_total.update(levels)
        if not (levels["TRACE"] or levels["DEBUG"]):
            quiet.append(f"{log} ({dict(levels)})")
        leaks.extend(f"{log}: {f}" for f in scan(text, secrets, signatures))
    print(f"\n[secrets] {len(logs)} apgate logs ({size / 2**20:.1f} MiB, lines by level {dict(levels_total)}, "
          f"RUST_LOG={conftest.apgate_log_filter()}) scanned for {len(secrets)} secrets (incl. "
          f"{record['tokens']} STS session tokens), {len(signatures)} signatures "
          f"({len(client_signatures)} computed by the session's clients) and {len(MARKERS)} markers: "
          + ("clean" if not leaks else f"{len(leaks)} findings"))
    assert not leaks, "\n".join(leaks[:50])
    # Not vacuous: the logs are as verbose as the knob says, every one of them.
    assert levels_total["TRACE"] > 0, (
        f"no TRACE line in any apgate log (E2E_APGATE_LOG={conftest.apgate_log_filter()!r}): "
        "the scan needs trace-level logs")
    assert not quiet, "apgate logs without a single DEBUG/TRACE line (E2E_APGATE_LOG not applied?):\n" + "\n".join(quiet)
    assert signatures and len(client_signatures) > 0, "no signatures recorded"
