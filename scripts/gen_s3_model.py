#!/usr/bin/env python3
"""Generates src/s3/operation/model.rs, apgate's table of S3 operations, from botocore's S3 API model.

apgate classifies every request into an S3 operation and refuses whatever that operation does not
take. The table that decides this comes from the AWS API model botocore ships
(botocore/data/s3/2006-03-01/service-2.json.gz), not from lists kept by hand: for each operation its
HTTP method, the resource its URI template names (service, bucket or object), the literal marker
sub-resources of the template (`?tagging`, `?list-type=2`), and its input members by location
(`querystring` names, `header` names, `headers` prefixes), which of them are required, whether the
request carries a checksum, and what the body is; of its answer, the headers the model gives it,
whether its body is the object's bytes or an XML document, and the elements that document may
hold, as `parent/child` name pairs (apgate drops any other). And S3's error codes with their documented messages,
from the documentation of the model's `Error.Code` member (apgate writes every error answer itself,
with these messages, so nothing an upstream message names reaches a client).

Left out, each for a reason the table could not express:
- deprecated operations (GetBucketLifecycle, GetBucketNotification, PutBucketLifecycle,
  PutBucketNotification): each shares its method and URI with its successor, which stays;
- operations served on a host of their own (an `endpoint.hostPrefix`, WriteGetObjectResponse);
- service-level operations of the S3 Express control endpoint (ListDirectoryBuckets), which share
  `GET /` with ListBuckets.

Usage:
  scripts/gen_s3_model.py             write the file (model from the installed botocore)
  scripts/gen_s3_model.py --check     exit 1 if the checked-in file differs (tests/e2e/test_s3_model.py)
  scripts/gen_s3_model.py --model P   read the model from P (a service-2.json or .json.gz)
"""

from __future__ import annotations

import argparse
import gzip
import html
import re
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src" / "s3" / "operation" / "model.rs"


def default_model() -> tuple[Path, str]:
    import botocore

    root = Path(botocore.__file__).resolve().parent / "data" / "s3" / "2006-03-01"
    for name in ("service-2.json.gz", "service-2.json"):
        if (root / name).is_file():
            return root / name, f"botocore {botocore.__version__}"
    raise SystemExit(f"no S3 model under {root}")


def load(path: Path) -> dict:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return json.loads(raw)


def skip_reason(name: str, op: dict) -> str | None:
    if op.get("deprecated"):
        return "deprecated"
    if op.get("endpoint", {}).get("hostPrefix"):
        return "host prefix"
    static = op.get("staticContextParams", {})
    if op["http"]["requestUri"].split("?")[0] == "/" and static.get("UseS3ExpressControlEndpoint", {}).get("value"):
        return "S3 Express control endpoint"
    return None


def resource(path: str) -> str:
    if path == "/":
        return "Service"
    if path == "/{Bucket}":
        return "Bucket"
    if path == "/{Bucket}/{Key+}":
        return "Object"
    raise SystemExit(f"unexpected URI template path {path!r}")


def rust_str(s: str) -> str:
    return json.dumps(s)


def element_names(shapes: dict, shape_name: str, parent: str, out: set[str], seen: frozenset = frozenset()) -> None:
    """Every `parent/child` pair of element names an XML document of this shape may hold, the
    root's children with an empty parent (`/Contents`, `Contents/Key`, ...)."""
    shape = shapes[shape_name]
    if shape_name in seen:
        return
    seen = seen | {shape_name}
    if shape["type"] == "structure":
        for member, spec in shape["members"].items():
            if "location" in spec or spec.get("xmlAttribute"):
                continue
            name = spec.get("locationName", member)
            target = shapes[spec["shape"]]
            if target["type"] == "list" and target.get("flattened"):
                # A flattened list is its items, each named by the member.
                item = target["member"].get("locationName", name)
                out.add(f"{parent}/{item}")
                element_names(shapes, target["member"]["shape"], item, out, seen)
                continue
            out.add(f"{parent}/{name}")
            element_names(shapes, spec["shape"], name, out, seen)
    elif shape["type"] == "list":
        member = shape["member"]
        item = member.get("locationName", "member")
        out.add(f"{parent}/{item}")
        element_names(shapes, member["shape"], item, out, seen)


# Codes the documentation lists more than once, each time with a message of one particular case:
# the message apgate answers them with instead.
GENERIC_MESSAGES = {"InvalidRequest": "The request is not valid."}


def error_messages(shapes: dict) -> list[tuple[str, str]]:
    """S3's error codes and messages, from the documentation of the model's `Error.Code`."""
    doc = shapes["Error"]["members"]["Code"]["documentation"]
    seen: dict[str, list[str]] = {}
    for item in re.findall(r"<li>\s*<ul>(.*?)</ul>\s*</li>", doc, re.S):
        fields: dict[str, list[str]] = {}
        for key, value in re.findall(r"<i>([^<]*):</i>(.*?)</p>", item, re.S):
            text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", value)).split())
            fields.setdefault(key.strip(), []).append(text)
        code = (fields.get("Code") or [""])[0].split(" ")[0]
        message = (fields.get("Description") or [""])[0]
        # "For more information, see ..." points into documentation the text here does not carry.
        message = message.split(" For more information")[0].strip()
        if re.fullmatch(r"[A-Za-z0-9]{1,64}", code) and message:
            seen.setdefault(code, []).append(message)
    if len(seen) < 50:
        raise SystemExit(f"only {len(seen)} error codes found in the Error.Code documentation")
    return sorted((c, GENERIC_MESSAGES.get(c, m[0]) if len(m) > 1 else m[0]) for c, m in seen.items())


def generate(model: dict, source: str) -> str:
    ops = model["operations"]
    shapes = model["shapes"]
    kept = []
    for name in sorted(ops):
        op = ops[name]
        if skip_reason(name, op):
            continue
        kept.append((name, op))

    lines = [
        f"//! @generated by scripts/gen_s3_model.py from {source}'s s3/2006-03-01 service model",
        f"//! ({model['metadata'].get('apiVersion', '?')}, {len(kept)} operations). Do not edit: run the script. The e2e suite",
        "//! (tests/e2e/test_s3_model.py) fails when this file differs from what the script generates.",
        "",
        "use super::{Answer, Checksum, HttpMethod, Marker, Payload, Resource, Spec};",
        "",
        "/// An S3 operation, by its API name.",
        "#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]",
        "pub enum Operation {",
    ]
    lines += [f"    {name}," for name, _ in kept]
    lines += [
        "}",
        "",
        "impl Operation {",
        "    /// Every operation of the model, in name order.",
        f"    pub const ALL: [Self; {len(kept)}] = [",
    ]
    lines += [f"        Self::{name}," for name, _ in kept]
    lines += [
        "    ];",
        "",
        "    /// The API name (the `operation` metric label).",
        "    pub fn as_str(self) -> &'static str {",
        "        match self {",
    ]
    lines += [f"            Self::{name} => {rust_str(name)}," for name, _ in kept]
    lines += [
        "        }",
        "    }",
        "",
        "    /// What the model says of the operation's request.",
        "    pub fn spec(self) -> &'static Spec {",
        "        &SPECS[self as usize]",
        "    }",
        "}",
        "",
        "/// The operations' requests, in the order of [`Operation`].",
        f"pub(super) static SPECS: [Spec; {len(kept)}] = [",
    ]
    for name, op in kept:
        http = op["http"]
        path, _, query = http["requestUri"].partition("?")
        markers = []
        for part in filter(None, query.split("&")):
            k, eq, v = part.partition("=")
            markers.append(f"Marker {{ name: {rust_str(k)}, value: {('Some(' + rust_str(v) + ')') if eq else 'None'} }}")
        shape = shapes[op["input"]["shape"]] if "input" in op else {"members": {}}
        required = set(shape.get("required", []))
        payload_member = shape.get("payload")
        q, h, prefixes = [], [], []
        for member, spec in shape.get("members", {}).items():
            loc = spec.get("location")
            wire = spec.get("locationName", member)
            if loc == "querystring":
                q.append((wire, member in required))
            elif loc == "header":
                h.append((wire.lower(), member in required))
            elif loc == "headers":
                prefixes.append(wire.lower())
        q.sort()
        h.sort()
        prefixes.sort()
        checksum = op.get("httpChecksum", {})
        if checksum.get("requestChecksumRequired") or op.get("httpChecksumRequired"):
            cs = "Checksum::Required"
        elif checksum.get("requestAlgorithmMember"):
            cs = "Checksum::Optional"
        else:
            cs = "Checksum::None"
        if payload_member:
            target = shapes[shape["members"][payload_member]["shape"]]
            if target["type"] == "structure":
                root = shape["members"][payload_member].get("locationName", payload_member)
                payload = f"Payload::Xml({rust_str(root)})"
            else:
                payload = "Payload::Blob"
        elif any("location" not in s for s in shape.get("members", {}).values()):
            payload = f"Payload::Xml({rust_str(name + 'Request')})"
        else:
            payload = "Payload::None"
        out_shape = shapes[op["output"]["shape"]] if "output" in op else {"members": {}}
        out_headers, out_prefixes = [], []
        for member, spec in out_shape.get("members", {}).items():
            wire = spec.get("locationName", member).lower()
            if spec.get("location") == "header":
                out_headers.append(wire)
            elif spec.get("location") == "headers":
                out_prefixes.append(wire)
        out_headers.sort()
        out_prefixes.sort()
        out_payload = out_shape.get("payload")
        if out_payload and shapes[out_shape["members"][out_payload]["shape"]]["type"] != "structure":
            answer = "Answer::Blob"
        elif out_payload or any("location" not in s for s in out_shape.get("members", {}).values()):
            answer = "Answer::Xml"
        else:
            answer = "Answer::None"
        elements: set[str] = set()
        if answer == "Answer::Xml":
            if out_payload:
                element_names(shapes, out_shape["members"][out_payload]["shape"], "", elements)
            else:
                element_names(shapes, op["output"]["shape"], "", elements)
        pairs = lambda xs: ", ".join(f"({rust_str(n)}, {'true' if r else 'false'})" for n, r in xs)
        lines += [
            "    Spec {",
            f"        operation: Operation::{name},",
            f"        method: HttpMethod::{http['method'].capitalize()},",
            f"        resource: Resource::{resource(path)},",
            f"        markers: &[{', '.join(markers)}],",
            f"        query: &[{pairs(q)}],",
            f"        headers: &[{pairs(h)}],",
            f"        header_prefixes: &[{', '.join(rust_str(p) for p in prefixes)}],",
            f"        checksum: {cs},",
            f"        payload: {payload},",
            f"        response_headers: &[{', '.join(rust_str(h) for h in out_headers)}],",
            f"        response_header_prefixes: &[{', '.join(rust_str(p) for p in out_prefixes)}],",
            f"        answer: {answer},",
            f"        response_elements: &[{', '.join(rust_str(e) for e in sorted(elements))}],",
            "    },",
        ]
    lines += ["];", ""]
    algorithms = shapes["ChecksumAlgorithm"]["enum"]
    lines += [
        "/// The checksum headers a request body's checksum travels in (`x-amz-checksum-{algorithm}`, from",
        "/// the model's ChecksumAlgorithm), and the algorithm names `x-amz-sdk-checksum-algorithm` takes.",
        "pub(super) static CHECKSUM_ALGORITHMS: &[(&str, &str)] = &[",
    ]
    lines += [f"    ({rust_str(a)}, {rust_str('x-amz-checksum-' + a.lower())})," for a in algorithms]
    lines += ["];", ""]
    messages = error_messages(shapes)
    lines += [
        "/// S3's error codes and their documented messages (the model's `Error.Code` documentation), by",
        "/// code: the messages of the errors apgate answers in place of the upstream's.",
        "pub(crate) static ERROR_MESSAGES: &[(&str, &str)] = &[",
    ]
    lines += [f"    ({rust_str(c)}, {rust_str(m)})," for c, m in messages]
    lines += ["];", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail if the checked-in file differs")
    ap.add_argument("--model", type=Path, help="service-2.json[.gz] to read instead of botocore's")
    args = ap.parse_args()
    if args.model:
        path, source = args.model, args.model.name
    else:
        path, source = default_model()
    text = generate(load(path), source)
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            import difflib

            diff = difflib.unified_diff(current.splitlines(), text.splitlines(), str(OUT), "generated", lineterm="")
            print("\n".join(list(diff)[:80]))
            print(f"{OUT.relative_to(REPO)} is out of date: run scripts/gen_s3_model.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
