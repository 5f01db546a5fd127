"""The parser differential (issue 15): apgate's reading of a request against an independent S3
implementation's.

Thousands of requests are generated from valid ones bob could send (every operation apgate
forwards, on keys under each kind of route: read-write ``Bob/``, list-only ``lo/``, read-only
``ro/``, keys starting with ``/``, ACL-opted ``Bob/open/``, and app's ``app/``), then mutated:
sub-resources of other operations added, parameter names percent-encoded, parameters duplicated
and reordered, ``x-id`` and authentication parameters added, headers added (copy sources, ACLs,
grants, governance bypass, metadata, checksums), DeleteObjects bodies with comments, CDATA,
entities, DTDs, carriage returns, aws-chunked framing with boundaries inside comments. Each is
signed as bob (so the decision is tested, not the signature), except a share mutated after signing.

Every request is explained by ``apgate explain --requests`` (the same ``decide`` as the proxy),
then sent through the proxy to moto, whose backend logs what it executes (moto_launcher.py
``--exec-log``: the S3 operation, bucket, key, prefix, DeleteObjects' keys). For every request:

- explain and the proxy agree: allowed (forwarded or answered by apgate) or refused, and with the
  same error code;
- a refused request reaches nothing: moto received no request and executed nothing;
- a forwarded one is executed as decided: every operation moto executes is the one apgate decided,
  on the key it decided (the copy source it decided, the listing prefix it decided, exactly the
  DeleteObjects keys it checked), in the bucket behind the access point.

Disagreements are printed with the request, and the test fails on any.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote

import pytest

import aws_chunked as ac
import s3wire
from conftest import BOB_ACCESS_KEY_ID, BUCKET, REGION, REPO, apgate_bin
from test_enforcement import ROUTES, signed_headers
from test_faults import run_apgate
from test_signed_chunks import exchange

SEED = 15
CASES = 2400
PREFIXES = ["Bob/", "lo/", "ro/", "/", "Bob/open/", "app/"]
MARKERS = [
    "tagging", "acl", "cors", "policy", "versioning", "uploads", "versions", "list-type=2", "location",
    "restore", "retention", "legal-hold", "attributes", "torrent", "delete", "uploadId=u1", "partNumber=1",
    "select&select-type=2", "lifecycle", "website", "notification", "object-lock", "encryption",
    "publicAccessBlock", "ownershipControls", "renameObject", "session",
]
OPS = ["GetObject", "PutObject", "DeleteObject", "ListObjectsV2", "GetObjectTagging", "PutObjectTagging",
       "CopyObject", "DeleteObjects", "GetBucketPolicy", "UploadPart"]
EXTRA_HEADERS = [
    ("x-amz-copy-source", f"/{BUCKET}/ro/src"),
    ("x-amz-copy-source", f"/{BUCKET}/app/src"),
    ("x-amz-copy-source", f"/{BUCKET}/Bob/src"),
    ("x-amz-acl", "public-read"),
    ("x-amz-acl", "private"),
    ("x-amz-grant-read", 'uri="http://acs.amazonaws.com/groups/global/AllUsers"'),
    ("x-amz-bypass-governance-retention", "true"),
    ("x-amz-meta-colour", "blue"),
    ("x-amz-tagging", "a=1"),
    ("range", "bytes=0-3"),
    ("x-amz-checksum-crc32", "AAAAAA=="),
    ("x-amz-expected-bucket-owner", "123456789012"),
    ("x-amz-made-up", "1"),
    ("x-amz-object-attributes", "ETag"),
    ("if-none-match", "*"),
    ("x-amz-security-token", "token"),
    ("connection", "range"),
    ("content-md5", "1B2M2Y8AsgTpgAmY7PhCfg=="),
]
TAGGING = b"<Tagging><TagSet><Tag><Key>k</Key><Value>v</Value></Tag></TagSet></Tagging>"
COMPLETE = b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>x</ETag></Part></CompleteMultipartUpload>"
RESTORE = b"<RestoreRequest><Days>1</Days></RestoreRequest>"


@dataclass
class Case:
    method: str
    key: str | None  # None: bucket level
    params: list[tuple[str, str | None]]  # (decoded name, value or None for a bare name)
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    payload: str | None = None  # x-amz-content-sha256; None: the body's SHA-256
    raw_query: str | None = None  # a query as sent, when a mutation encoded it by hand
    unsigned_extra: list[tuple[str, str]] = field(default_factory=list)  # headers added after signing
    what: list[str] = field(default_factory=list)

    def query(self) -> str:
        if self.raw_query is not None:
            return self.raw_query
        return "&".join(quote(k, safe="-_.~") + ("" if v is None else "=" + quote(v, safe="-_.~"))
                        for k, v in self.params)

    def target(self) -> str:
        path = f"/{BUCKET}" if self.key is None else "/" + s3wire.encode_key(f"{BUCKET}/{self.key}")
        q = self.query()
        return path + (f"?{q}" if q else "")


def rkey(rng: random.Random, prefix: str | None = None) -> str:
    prefix = prefix if prefix is not None else rng.choice(PREFIXES)
    return prefix + rng.choice(["a", "b c", "d+e", "ü", "x/y", "src"])


def delete_body(rng: random.Random) -> tuple[bytes, list[str]]:
    mine = rng.random() < 0.6  # often all bob's, so that the check passes and moto deletes
    keys = [rkey(rng, "Bob/" if mine else rng.choice(PREFIXES)) for _ in range(rng.randint(1, 4))]
    objs = [f"<Object><Key>{k}</Key></Object>" for k in keys]
    trick = rng.choice(["none", "comment", "cdata", "entity", "doctype", "cr", "ns", "attr", "space", "pi",
                        "two-keys", "quiet", "version"])
    if trick == "comment":
        objs.insert(rng.randint(0, len(objs)), "<!-- <Object><Key>ro/x</Key></Object> -->")
    elif trick == "cdata" and keys:
        objs[0] = f"<Object><Key><![CDATA[{keys[0]}]]></Key></Object>"
    elif trick == "entity":
        objs[0] = objs[0].replace("<Key>", "<Key>&#66;") if keys[0].startswith("B") else objs[0]
    elif trick == "cr":
        objs[0] = objs[0].replace("</Key>", "\r</Key>")
    elif trick == "attr":
        objs[0] = objs[0].replace("<Object>", '<Object id="1">')
    elif trick == "space":
        objs[0] = objs[0].replace("<Key>", "<Key> ")
    elif trick == "two-keys":
        objs[0] = objs[0].replace("</Object>", "<Key>ro/x</Key></Object>")
    elif trick == "quiet":
        objs.append("<Quiet>true</Quiet>")
    elif trick == "version":
        objs[0] = objs[0].replace("</Object>", "<VersionId>null</VersionId></Object>")
    root = '<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' if trick == "ns" else "<Delete>"
    head = ""
    if trick == "doctype":
        head = '<!DOCTYPE Delete [<!ENTITY e "ro/x">]>'
        objs.append("<Object><Key>&e;</Key></Object>")
    elif trick == "pi":
        head = "<?pi x?>"
    return (head + root + "".join(objs) + "</Delete>").encode(), keys


def base_case(rng: random.Random) -> Case:
    k = rkey(rng)
    p = rng.choice(PREFIXES)
    kind = rng.randrange(24)
    c = {
        0: lambda: Case("GET", k, []),
        1: lambda: Case("HEAD", k, []),
        2: lambda: Case("PUT", k, [], body=b"data"),
        3: lambda: Case("DELETE", k, []),
        4: lambda: Case("GET", k, [("tagging", None)]),
        5: lambda: Case("PUT", k, [("tagging", None)], body=TAGGING),
        6: lambda: Case("DELETE", k, [("tagging", None)]),
        7: lambda: Case("GET", k, [("acl", None)]),
        8: lambda: Case("GET", k, [("uploadId", "u1")]),
        9: lambda: Case("POST", k, [("uploads", None)]),
        10: lambda: Case("PUT", k, [("partNumber", "1"), ("uploadId", "u1")], body=b"part"),
        11: lambda: Case("DELETE", k, [("uploadId", "u1")]),
        12: lambda: Case("POST", k, [("uploadId", "u1")], body=COMPLETE),
        13: lambda: Case("PUT", k, [], headers=[("x-amz-copy-source", f"/{BUCKET}/{quote(rkey(rng))}")]),
        14: lambda: Case("GET", k, [("legal-hold", None)]),
        15: lambda: Case("GET", k, [("attributes", None)], headers=[("x-amz-object-attributes", "ETag")]),
        16: lambda: Case("GET", None, [("list-type", "2"), ("prefix", p)]),
        17: lambda: Case("GET", None, [("prefix", p), ("delimiter", "/")]),
        18: lambda: Case("GET", None, [("versions", None), ("prefix", p)]),
        19: lambda: Case("GET", None, [("uploads", None), ("prefix", p)]),
        20: lambda: Case("HEAD", None, []),
        21: lambda: Case("GET", None, [("location", None)]),
        22: lambda: Case("POST", k, [("restore", None)], body=RESTORE),
        23: lambda: Case("POST", None, [("delete", None)]),
    }[kind]()
    if kind == 23:
        c.body, keys = delete_body(rng)
        c.headers.append(("content-md5", base64.b64encode(hashlib.md5(c.body).digest()).decode()))
        c.what.append(f"delete {keys}")
    c.what.insert(0, f"{c.method} {c.key} {c.params}")
    return c


def encoded_name(name: str, rng: random.Random) -> str:
    i = rng.randrange(len(name))
    return quote(name[:i], safe="-_.~") + f"%{ord(name[i]):02X}" + quote(name[i + 1:], safe="-_.~")


def mutate(c: Case, rng: random.Random) -> None:
    m = rng.randrange(12)
    if m <= 2:
        marker = rng.choice(MARKERS)
        for part in marker.split("&"):
            name, _, value = part.partition("=")
            c.params.insert(rng.randint(0, len(c.params)), (name, value or None))
        c.what.append(f"+{marker}")
    elif m == 3 and c.params:
        i = rng.randrange(len(c.params))
        name, value = c.params[i]
        parts = [quote(k, safe="-_.~") + ("" if v is None else "=" + quote(v, safe="-_.~")) for k, v in c.params]
        parts[i] = encoded_name(name, rng) + ("" if value is None else "=" + quote(value, safe="-_.~"))
        c.raw_query = "&".join(parts)
        c.what.append(f"encoded {name}")
    elif m == 4 and c.params:
        name, value = rng.choice(c.params)
        c.params.append((name, rng.choice([value, "ro/", "lo/", None])))
        c.what.append(f"duplicate {name}")
    elif m == 5:
        rng.shuffle(c.params)
        c.what.append("reordered")
    elif m == 6:
        c.params.append(("x-id", rng.choice(OPS)))
        c.what.append("x-id")
    elif m == 7:
        c.params.append(rng.choice([("Signature", "x"), ("AWSAccessKeyId", BOB_ACCESS_KEY_ID), ("X-Amz-Credential", "x"),
                                    ("Expires", "1")]))
        c.what.append("auth parameter")
    elif m == 8:
        c.params.append(rng.choice([("foo", "bar"), ("prefix", "ro/"), ("versionId", "null"), ("x-amz-acl", "public-read")]))
        c.what.append(f"param {c.params[-1][0]}")
    elif m in (9, 10):
        h = rng.choice(EXTRA_HEADERS)
        c.headers.append(h)
        c.what.append(f"header {h[0]}: {h[1]}")
    else:
        if c.key is not None:
            c.key = rkey(rng)
            c.what.append(f"key {c.key}")


def chunked(c: Case, rng: random.Random) -> None:
    """Frames a DeleteObjects body as aws-chunked with an unsigned trailer, a boundary inside its
    first comment (or anywhere)."""
    xml = c.body
    split = xml.find(b"-->") + 1 if b"-->" in xml else rng.randint(1, max(1, len(xml) - 1))
    parts = [xml[:split], xml[split:]]
    wire = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts if p)
    wire += b"0\r\n" + f"x-amz-checksum-crc32:{ac.crc32_b64(xml)}\r\n\r\n".encode()
    c.headers = [h for h in c.headers if h[0] != "content-md5"] + [
        ("Content-Encoding", "aws-chunked"), ("X-Amz-Decoded-Content-Length", str(len(xml))),
        ("X-Amz-Trailer", "x-amz-checksum-crc32"), ("Content-Length", str(len(wire))),
    ]
    c.body = wire
    c.payload = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    c.what.append("aws-chunked")


def corpus(n: int) -> list[Case]:
    rng = random.Random(SEED)
    cases = []
    for _ in range(n):
        c = base_case(rng)
        for _ in range(rng.choice([0, 1, 1, 1, 2, 2, 3])):
            mutate(c, rng)
        if c.method == "POST" and ("delete", None) in c.params and rng.random() < 0.4:
            chunked(c, rng)
        if rng.random() < 0.08:
            c.unsigned_extra.append(rng.choice(EXTRA_HEADERS[:9]))
            c.what.append(f"unsigned header {c.unsigned_extra[-1][0]}")
        cases.append(c)
    return cases


def wire_headers(gw, c: Case) -> list[tuple[str, str]]:
    headers = list(c.headers)
    if c.body and not any(k.lower() == "content-length" for k, _ in headers):
        headers.append(("Content-Length", str(len(c.body))))
    if not c.body and c.method in ("PUT", "POST"):
        headers.append(("Content-Length", "0"))
    payload = c.payload or hashlib.sha256(c.body).hexdigest()
    return signed_headers(gw, c.method, c.target(), headers, payload) + c.unsigned_extra


@pytest.fixture(scope="module")
def gw(moto, tmp_path_factory):
    with run_apgate(moto, tmp_path_factory.mktemp("differential"), extra=ROUTES) as g:
        yield g


def explain_all(gw, moto, requests: list[dict], tmp: Path) -> list[dict]:
    path = tmp / "requests.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and not k.startswith("APGATE_")}
    env.update({
        "APGATE_UPSTREAM_ACCESS_KEY_ID": moto.access_key_id,
        "APGATE_UPSTREAM_SECRET_ACCESS_KEY": moto.secret_access_key,
        "APGATE_TEST_BOB_SECRET": gw.bob_secret,
    })
    binary = apgate_bin()
    r = subprocess.run([str(binary), "explain", "-c", str(gw.log_path.with_suffix(".toml")), "--listener", "shared",
                        "--requests", str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode in (0, 1), r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert len(lines) == len(requests), r.stderr
    return lines


def object_key(e: dict) -> str | None:
    return e.get("key")


# moto's handlers look the object up (its backend's get_object) before most object operations (a
# copy: its source), and its PutObject also sets the object's tags (put_object_tagging, from
# x-amz-tagging or empty): moto's internals, on the decided keys, not operations of the request's.
LOOKUP = "GetObject"
COMPANIONS = {"PutObject": {"PutObjectTagging"}}


def check(c: Case, decision: dict, status: int | None, body: bytes, received: list, executed: list) -> list[str]:
    """The disagreements between apgate's decision, the proxy's answer and what moto executed."""
    problems = []
    allowed = decision["allowed"]
    synthesized = decision.get("operation") in ("ListBuckets", "GetBucketLocation")
    proxy_allowed = bool(received) or (synthesized and status == 200)
    if allowed != proxy_allowed:
        problems.append(f"explain says allowed={allowed}, the proxy {'forwarded' if received else status}")
    if not allowed:
        if received or executed:
            problems.append(f"refused, yet moto received {received} and executed {executed}")
        if c.method == "HEAD":  # no body: the status says it
            if status != decision.get("status"):
                problems.append(f"explain refuses with {decision.get('status')}, the proxy with {status}")
            return problems
        try:
            got = s3wire.parse_error(body)["Code"]
        except Exception:  # noqa: BLE001
            got = f"status {status}"
        if got != decision.get("code"):
            problems.append(f"explain refuses with {decision.get('code')}, the proxy with {got}")
        return problems
    if synthesized:
        if received or executed:
            problems.append(f"answered by apgate, yet moto received {received}")
        return problems
    op = decision["operation"]
    key = decision.get("key")
    _, _, query = decision["upstream"]["path_and_query"].partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    ops = {e["op"] for e in executed}
    source = decision.get("copy_source_key")
    for e in executed:
        # A lookup of the object, or for a copy of its source (which the decision routed as a read).
        internal = e["op"] == LOOKUP and op != LOOKUP and e.get("key") in (key, source)
        if e["op"] != op and e["op"] not in COMPANIONS.get(op, set()) and not internal:
            problems.append(f"decided {op}, moto executed {e['op']}")
        if e.get("bucket") not in (None, BUCKET):
            problems.append(f"moto executed {e['op']} in bucket {e.get('bucket')}")
        if key is not None and e.get("key") is not None and e["key"] != key and not internal:
            problems.append(f"decided key {key!r}, moto executed {e['op']} on {e['key']!r}")
        if op == "CopyObject" and e["op"] == "CopyObject" and e.get("source") != decision.get("copy_source_key"):
            problems.append(f"decided copy source {decision.get('copy_source_key')!r}, moto copied {e.get('source')!r}")
        if "prefix" in e and (e["prefix"] or "") != params.get("prefix", ""):
            problems.append(f"decided prefix {params.get('prefix')!r}, moto listed {e['prefix']!r}")
        if "objects" in e and e["objects"] != decision.get("keys"):
            problems.append(f"checked keys {decision.get('keys')}, moto deleted {e['objects']}")
    if status is not None and status < 300 and op not in ops:
        problems.append(f"moto answered {status} to {op} without executing it (executed {sorted(ops)})")
    return problems


def test_apgate_explain_and_moto_read_every_request_alike(gw, moto, moto_s3, tmp_path):
    # Objects for the reads and copies to find (whether or not moto finds them changes nothing
    # about what it executes).
    for prefix in PREFIXES:
        for name in ["a", "src"]:
            moto_s3.put_object(Bucket=BUCKET, Key=prefix + name, Body=b"data")
    cases = corpus(CASES)
    heads = [wire_headers(gw, c) for c in cases]
    requests = [{
        "method": c.method,
        "target": c.target(),
        "headers": [[k, v] for k, v in h],
        "body_base64": base64.b64encode(c.body).decode(),
    } for c, h in zip(cases, heads)]
    decisions = explain_all(gw, moto, requests, tmp_path)

    disagreements = []
    tally = {"allowed": 0, "refused": 0, "executed": 0, "not executed": 0}
    by_operation: dict[str, int] = {}
    seen_pairs: dict[tuple[str, tuple[str, ...]], int] = {}
    for c, h, d in zip(cases, heads, decisions):
        mark, exec_mark = moto.log_mark(), moto.exec_mark()
        out = exchange(gw.shared, c.method, c.target(), h, c.body)
        received, executed = moto.log_since(mark), moto.executed_since(exec_mark)
        if d["allowed"] and received:
            pair = (d["operation"], tuple(sorted({e["op"] for e in executed})))
            seen_pairs[pair] = seen_pairs.get(pair, 0) + 1
        problems = check(c, d, out.status, out.body or b"", received, executed)
        tally["allowed" if d["allowed"] else "refused"] += 1
        if d["allowed"] and received:
            tally["executed" if executed else "not executed"] += 1
            by_operation[d["operation"]] = by_operation.get(d["operation"], 0) + 1
        if problems:
            disagreements.append(f"{c.method} {c.target()} [{'; '.join(c.what)}]: {'; '.join(problems)}")
    print(f"{len(cases)} requests: {tally}; forwarded by operation: {dict(sorted(by_operation.items()))}; "
          f"{len(disagreements)} disagreements")
    for line in disagreements[:60]:
        print("  " + line)
    for pair, n in sorted(seen_pairs.items()):
        print(f"  {pair[0]} -> {pair[1]}: {n}")
    assert len(cases) >= 2000
    assert tally["refused"] >= 500 and tally["executed"] >= 300, tally  # both sides are exercised
    assert len(by_operation) >= 15, by_operation
    assert not disagreements, f"{len(disagreements)} disagreements (above)"
