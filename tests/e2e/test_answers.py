"""What a client may see of an answer (docs/SEMANTICS.md, "What an answer shows"), judged on the
bytes it receives.

apgate stands in front of an upstream stand-in that answers every operation apgate forwards the way
S3 documents it, from the botocore S3 model apgate's own table is generated from: every header and
every element of the operation's output shape, and error documents with the fields S3 puts in them
(SignatureDoesNotMatch's canonical request and string to sign, InvalidToken's token, AccessDenied's
principal and resource ARNs, PermanentRedirect's endpoint, ...). Where S3 puts the upstream side's
identity (the account, the access point's name, alias, ARN and host, apgate's key id and session
token, owner ids), the stand-in puts it, plus headers and elements S3 does not document at all.

boto3 calls each operation through apgate (bob, SigV4, on a route that allows ACL changes) and every
answer -- status, headers, body -- is swept for any of those values, for the success of every
operation and for every kind of error on every operation. The sweep also checks the answers stay
useful: the documented fields of a success are there (boto3 parses them), errors keep their code,
S3's message and the details that are the client's own, and an upstream refusal of apgate's own
signature or credentials is a 500 InternalError that apgate logs and counts.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import http.server
import json
import re
import threading
import time
from pathlib import Path

import boto3
import botocore
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import ACCOUNT, BOB_ACCESS_KEY_ID, BOB_AP, BUCKET, REGION
import s3wire
from test_faults import metric, run_apgate

SWEEP_BUCKET = "sweep-bucket"
KEY = "Bob/sweep"
TOKEN = "FwoGZXIvYXdzEKz//////////wEaDH1lR9sweepTOKENx0c2Vzc2lvbi10b2tlbg"
CANON = "79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be"
AP_ALIAS = "bob-access-po-q1w2e3r4t5y6u7i8o9p0a1s2d3f4gh-s3alias"
AP_ARN = f"arn:aws:s3:{REGION}:{ACCOUNT}:accesspoint/{BOB_AP}"
AP_HOST = f"{BOB_AP}-{ACCOUNT}.s3-accesspoint.{REGION}.amazonaws.com"
PRINCIPAL = f"arn:aws:iam::{ACCOUNT}:user/apgate-gateway"
KMS_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
UPSTREAM_REQUEST_ID = "UPSTREAMREQ7Q2Z"

# The operations apgate forwards (src/s3/operation.rs Support::Forwarded), each with the boto3
# call that makes it.
OPERATIONS = {
    "GetObject": {"Key": KEY},
    "HeadObject": {"Key": KEY},
    "GetObjectTagging": {"Key": KEY},
    "GetObjectAcl": {"Key": KEY},
    "GetObjectAttributes": {"Key": KEY, "ObjectAttributes": ["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"]},
    "GetObjectLegalHold": {"Key": KEY},
    "GetObjectRetention": {"Key": KEY},
    "PutObject": {"Key": KEY, "Body": b"sweep"},
    "CopyObject": {"Key": KEY, "CopySource": {"Bucket": SWEEP_BUCKET, "Key": "Bob/source"}},
    "CreateMultipartUpload": {"Key": KEY},
    "UploadPart": {"Key": KEY, "UploadId": "sweep-upload", "PartNumber": 1, "Body": b"sweep"},
    "UploadPartCopy": {"Key": KEY, "UploadId": "sweep-upload", "PartNumber": 1,
                       "CopySource": {"Bucket": SWEEP_BUCKET, "Key": "Bob/source"}},
    "CompleteMultipartUpload": {"Key": KEY, "UploadId": "sweep-upload",
                                "MultipartUpload": {"Parts": [{"ETag": '"e1"', "PartNumber": 1}]}},
    "AbortMultipartUpload": {"Key": KEY, "UploadId": "sweep-upload"},
    "PutObjectTagging": {"Key": KEY, "Tagging": {"TagSet": [{"Key": "k", "Value": "v"}]}},
    "DeleteObjectTagging": {"Key": KEY},
    "PutObjectAcl": {"Key": KEY, "ACL": "private"},
    "PutObjectLegalHold": {"Key": KEY, "LegalHold": {"Status": "ON"}},
    "PutObjectRetention": {"Key": KEY, "Retention": {"Mode": "GOVERNANCE", "RetainUntilDate": "2030-01-01T00:00:00Z"}},
    "RestoreObject": {"Key": KEY, "RestoreRequest": {"Days": 1}},
    "DeleteObject": {"Key": KEY},
    "DeleteObjects": {"Delete": {"Objects": [{"Key": KEY}, {"Key": "Bob/other"}]}},
    "HeadBucket": {},
    "ListObjects": {"Prefix": "Bob/"},
    "ListObjectsV2": {"Prefix": "Bob/", "FetchOwner": True},
    "ListObjectVersions": {"Prefix": "Bob/"},
    "ListMultipartUploads": {"Prefix": "Bob/"},
    "ListParts": {"Key": KEY, "UploadId": "sweep-upload"},
}

# Headers that name the upstream side: never shown, whatever their value.
WITHHELD_HEADERS = {"x-amz-server-side-encryption-aws-kms-key-id", "x-amz-server-side-encryption-context",
                    "x-amz-abort-rule-id",
                    "x-amz-bucket-arn", "x-amz-access-point-alias", "x-amz-bucket-location-name",
                    "x-amz-id-2", "x-amz-upstream-debug"}


def s3_model() -> dict:
    root = Path(botocore.__file__).parent / "data" / "s3" / "2006-03-01"
    for name in ("service-2.json.gz", "service-2.json"):
        path = root / name
        if path.is_file():
            raw = path.read_bytes()
            return json.loads(gzip.decompress(raw) if name.endswith(".gz") else raw)
    raise AssertionError(f"no S3 model under {root}")


MODEL = s3_model()
SHAPES = MODEL["shapes"]


def planted(path: list[str]) -> str:
    """The value S3 documents for an element at `path` (root first), with the upstream side's
    identity where S3 puts it."""
    name = path[-1]
    parent = path[-2] if len(path) > 1 else ""
    if len(path) == 2 and name == "Name":
        return AP_ALIAS
    if len(path) == 2 and name == "Bucket":
        return AP_ARN
    if len(path) == 2 and name == "Location":
        return f"https://{AP_HOST}/{KEY}"
    if parent in ("Owner", "Grantee") and name == "ID":
        return CANON
    if parent == "Initiator" and name == "ID":
        return PRINCIPAL
    if name == "DisplayName":
        return f"apgate-{ACCOUNT}"
    if name == "EmailAddress":
        return f"ops-{ACCOUNT}@example.com"
    if name == "URI":
        return "http://acs.amazonaws.com/groups/global/AllUsers"
    if parent == "Error" and name == "Code":
        return "AccessDenied"
    if parent == "Error" and name == "Message":
        return f"User: {PRINCIPAL} is not authorized to perform: s3:DeleteObject on resource: \"{AP_ARN}/object/{KEY}\""
    if name in ("Key", "Prefix", "Marker", "NextMarker", "KeyMarker", "NextKeyMarker", "StartAfter"):
        return KEY
    return "v"


def scalar(shape: dict, path: list[str]) -> str:
    kind = shape["type"]
    if "enum" in shape:
        return shape["enum"][0]
    if kind in ("integer", "long"):
        return "1"
    if kind == "boolean":
        return "true"
    if kind == "timestamp":
        return "2026-01-01T00:00:00.000Z"
    if kind == "blob":
        return base64.b64encode(b"v").decode()
    return planted(path)


def esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def element(shape_name: str, name: str, path: list[str]) -> str:
    """An element of this shape, as S3 writes it: every member, every list with two items."""
    shape = SHAPES[shape_name]
    kind = shape["type"]
    if kind == "structure":
        if len(path) > 6:
            return ""
        attrs, inner = "", ""
        for member, spec in shape["members"].items():
            if "location" in spec:
                continue
            wire = spec.get("locationName", member)
            if spec.get("xmlAttribute"):
                attrs += f' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" {wire}="{SHAPES[spec["shape"]]["enum"][0]}"'
                continue
            inner += member_xml(spec["shape"], wire, path + [wire])
        return f"<{name}{attrs}>{inner}</{name}>"
    return f"<{name}>{esc(scalar(shape, path))}</{name}>"


def member_xml(shape_name: str, name: str, path: list[str]) -> str:
    shape = SHAPES[shape_name]
    if shape["type"] != "list":
        return element(shape_name, name, path)
    member = shape["member"]
    if shape.get("flattened"):
        item = member.get("locationName", name)
        return "".join(element(member["shape"], item, path[:-1] + [item]) for _ in range(2))
    item = member.get("locationName", "member")
    inner = "".join(element(member["shape"], item, path + [item]) for _ in range(2))
    return f"<{name}>{inner}</{name}>"


def success_answer(op: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """The answer S3 documents for a success of `op`, with the upstream's identity planted."""
    spec = MODEL["operations"][op]
    out = SHAPES[spec["output"]["shape"]] if "output" in spec else {"members": {}}
    headers = []
    for member, m in out.get("members", {}).items():
        wire = m.get("locationName", member).lower()
        if m.get("location") == "headers":
            headers.append((wire + "sweep", "v"))
        if m.get("location") != "header" or wire in ("content-length", "content-range"):
            continue
        if wire.startswith("x-amz-checksum-") and wire != "x-amz-checksum-type":
            continue  # boto3 checks a body against these: they are the object's, not identity
        if wire == "expires":
            headers.append((wire, "Thu, 01 Jan 2026 00:00:00 GMT"))
            continue
        shape = SHAPES[m["shape"]]
        value = {
            "x-amz-server-side-encryption-aws-kms-key-id": KMS_KEY,
            "x-amz-server-side-encryption-context": base64.b64encode(
                json.dumps({"aws:s3:arn": f"arn:aws:s3:::{BUCKET}/{KEY}"}).encode()).decode(),
            "x-amz-bucket-arn": f"arn:aws:s3:::{BUCKET}",
            "x-amz-bucket-location-name": f"{BUCKET}-{ACCOUNT}",
            # A lifecycle rule's id is the bucket owner's text (often the bucket's name).
            "x-amz-expiration": f'expiry-date="Fri, 23 Dec 2030 00:00:00 GMT", rule-id="expire-{BUCKET}-{ACCOUNT}"',
            "x-amz-abort-rule-id": f"abort-{BUCKET}-{ACCOUNT}",
        }.get(wire)
        if value is None:
            value = "Thu, 01 Jan 2026 00:00:00 GMT" if shape["type"] == "timestamp" else scalar(shape, [wire])
        headers.append((wire, value))
    # The model gives these answers no body; an upstream that sends one anyway must not be heard.
    body = error_document("AccessDenied", {"Message": f"User: {PRINCIPAL} on {AP_ARN}"})
    payload = out.get("payload")
    if payload and SHAPES[out["members"][payload]["shape"]]["type"] != "structure":
        body = b"object bytes"
    elif payload or any("location" not in m for m in out.get("members", {}).values()):
        if payload:
            root_name = out["members"][payload].get("locationName", payload)
            shape_name = out["members"][payload]["shape"]
        else:
            root_name, shape_name = out.get("locationName", f"{op}Result"), spec["output"]["shape"]
        xml = element(shape_name, root_name, [root_name])
        # S3 does not document these, and an upstream may still send them.
        xml = xml.replace(f"</{root_name}>", f"<UpstreamDebug>{AP_HOST} {ACCOUNT}</UpstreamDebug>"
                                             f"<!-- {AP_ARN} --></{root_name}>", 1)
        xml = xml.replace(f"<{root_name}", f'<{root_name} xmlns="http://s3.amazonaws.com/doc/2006-03-01/"', 1)
        body = b'<?xml version="1.0" encoding="UTF-8"?>\n' + xml.encode()
        headers.append(("content-type", "application/xml"))
    return 200, headers, body


def error_document(code: str, fields: dict[str, str]) -> bytes:
    inner = "".join(f"<{k}>{esc(v)}</{k}>" for k, v in fields.items())
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>{inner}'
            f"<RequestId>{UPSTREAM_REQUEST_ID}</RequestId><HostId>{base64.b64encode(AP_HOST.encode()).decode()}</HostId></Error>").encode()


def canonical_request(host: str, key_id: str) -> str:
    return (f"GET\n/{KEY}\n\nhost:{host}\nx-amz-content-sha256:UNSIGNED-PAYLOAD\nx-amz-date:20261202T000000Z\n"
            f"x-amz-security-token:{TOKEN}\n\nhost;x-amz-content-sha256;x-amz-date;x-amz-security-token\nUNSIGNED-PAYLOAD")


# The errors of the sweep: (status, code as the upstream sends it, fields as S3 documents them,
# what the client must get: status and code).
def upstream_errors(host: str, key_id: str) -> dict[str, tuple[int, bytes, str, int, str]]:
    creq = canonical_request(host, key_id)
    sts = f"AWS4-HMAC-SHA256\n20261202T000000Z\n20261202/{REGION}/s3/aws4_request\n{'0' * 64}"
    return {
        "SignatureDoesNotMatch": (403, error_document("SignatureDoesNotMatch", {
            "Message": "The request signature we calculated does not match the signature you provided.",
            "AWSAccessKeyId": key_id, "StringToSign": sts, "SignatureProvided": "ab" * 32,
            "StringToSignBytes": sts.encode().hex(" "), "CanonicalRequest": creq,
            "CanonicalRequestBytes": creq.encode().hex(" ")}), "application/xml", 500, "InternalError"),
        "InvalidToken": (400, error_document("InvalidToken", {
            "Message": "The provided token is malformed or otherwise invalid.", "Token-0": TOKEN}),
            "application/xml", 500, "InternalError"),
        "ExpiredToken": (400, error_document("ExpiredToken", {
            "Message": "The provided token has expired.", "Token-0": TOKEN}), "application/xml", 500, "InternalError"),
        "InvalidAccessKeyId": (403, error_document("InvalidAccessKeyId", {
            "Message": "The AWS Access Key Id you provided does not exist in our records.",
            "AWSAccessKeyId": key_id}), "application/xml", 500, "InternalError"),
        "PermanentRedirect": (301, error_document("PermanentRedirect", {
            "Message": "The bucket you are attempting to access must be addressed using the specified endpoint.",
            "Endpoint": AP_HOST, "Bucket": AP_ALIAS}), "application/xml", 500, "InternalError"),
        "AccessDenied": (403, error_document("AccessDenied", {
            "Message": f"User: {PRINCIPAL} is not authorized to perform: s3:GetObject on resource: "
                       f"\"{AP_ARN}/object/{KEY}\" because no resource-based policy allows the s3:GetObject action"}),
            "application/xml", 403, "AccessDenied"),
        "NoSuchKey": (404, error_document("NoSuchKey", {
            "Message": "The specified key does not exist.", "Key": KEY, "Resource": f"/{BOB_AP}/{KEY}"}),
            "application/xml", 404, "NoSuchKey"),
        "InvalidArgument": (400, error_document("InvalidArgument", {
            "Message": f"Unsupported header x-amz-security-token received for this API call ({TOKEN})",
            "ArgumentName": "x-amz-security-token", "ArgumentValue": TOKEN}), "application/xml", 400, "InvalidArgument"),
        "BadGatewayPage": (502, f"<html><body>502 Bad Gateway from {AP_HOST} ({ACCOUNT})</body></html>".encode(),
                           "text/html", 502, "InternalError"),
        # S3's KMS errors carry a dotted code.
        "KMS.NotFoundException": (400, error_document("KMS.NotFoundException", {
            "Message": f"Invalid arn {KMS_KEY}"}), "application/xml", 400, "KMS.NotFoundException"),
        # Not HTTP an upstream may send.
        "Status600": (600, error_document("InternalError", {"Message": AP_HOST}), "application/xml", 502, "BadGateway"),
    }


class StandIn(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.answer: tuple[int, list[tuple[str, str]], bytes] = (500, [], b"")
        self.received: list[dict] = []


class Handler(http.server.BaseHTTPRequestHandler):
    server: StandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self) -> None:
        self.read_body()
        with self.server.lock:
            status, headers, body = self.server.answer
            self.server.received.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
        self.send_response_only(status)
        self.send_header("Server", "AmazonS3")
        self.send_header("x-amz-request-id", UPSTREAM_REQUEST_ID)
        self.send_header("x-amz-id-2", base64.b64encode(f"{AP_HOST}/{ACCOUNT}".encode()).decode())
        self.send_header("x-amz-upstream-debug", f"{AP_ARN} via {self.headers.get('Host')}")
        for name, value in headers:
            self.send_header(name, value)
        # A body may be pieces sent over time: [(seconds to wait first, bytes), ...].
        pieces = body if isinstance(body, list) else [(0, body)]
        self.send_header("Content-Length", str(sum(len(b) for _, b in pieces)))
        self.end_headers()
        if self.command != "HEAD":
            for delay, piece in pieces:
                time.sleep(delay)
                self.wfile.write(piece)
                self.wfile.flush()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = answer


@pytest.fixture(scope="module")
def stand_in():
    server = StandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def gw(moto, stand_in, tmp_path_factory):
    extra = f"""
[[routes]]
identity = "bob"
bucket = "{SWEEP_BUCKET}"
prefix = "Bob/"
allow = ["acl", "bypass-governance-retention", "object-lock"]
access_point = "{AP_ARN}"
"""
    with run_apgate(moto, tmp_path_factory.mktemp("answers"), upstream_port=stand_in.server_port,
                    extra=extra, session_token=TOKEN) as gw:
        yield gw


class Seen:
    """Every answer boto3 got, as received (before parsing)."""

    def __init__(self):
        self.answers: list[dict] = []

    def __call__(self, operation_model, response_dict, **_):
        body = response_dict["body"]
        self.answers.append({"op": operation_model.name, "status": response_dict["status_code"],
                             "headers": dict(response_dict["headers"]),
                             "body": body if isinstance(body, (bytes, bytearray)) else None})


def client(gw, seen: Seen):
    c = boto3.client("s3", endpoint_url=gw.shared_endpoint, region_name=REGION,
                     aws_access_key_id=BOB_ACCESS_KEY_ID, aws_secret_access_key=gw.bob_secret,
                     config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                                   retries={"mode": "standard", "total_max_attempts": 1}))
    c.meta.events.register("before-parse.s3.*", seen)
    return c


def leaks(gw, stand_in, moto) -> list[tuple[str, str]]:
    """Every value that names the upstream side, with what it is."""
    return [
        (ACCOUNT, "the account"), (BOB_AP, "the access point's name"), (AP_ALIAS, "the access point's alias"),
        ("accesspoint", "an access point ARN"), ("s3-accesspoint", "the access point's host"),
        (f"127.0.0.1:{stand_in.server_port}", "the upstream host"), (BUCKET, "the real bucket"),
        (moto.access_key_id, "apgate's key id"), (TOKEN, "apgate's session token"), (CANON, "an owner's id"),
        ("apgate-gateway", "apgate's principal"), (UPSTREAM_REQUEST_ID, "the upstream request id"),
        (base64.b64encode(AP_HOST.encode()).decode()[:16], "the upstream host id"),
    ]


def sweep(answer: dict, body: bytes, values: list[tuple[str, str]]) -> list[str]:
    found = []
    text = "\n".join(f"{k}: {v}" for k, v in answer["headers"].items()) + "\n" + body.decode("utf-8", "replace")
    for value, what in values:
        if value.lower() in text.lower():
            found.append(f"{answer['op']} {answer['status']}: {what} ({value}) in {text[:3000]!r}")
    for name in answer["headers"]:
        if name.lower() in WITHHELD_HEADERS:
            found.append(f"{answer['op']}: the header {name}")
    return found


def call(c, op: str, params: dict):
    return getattr(c, botocore.xform_name(op))(Bucket=SWEEP_BUCKET, **params)


def test_no_success_answer_names_the_upstream_side(gw, stand_in, moto):
    seen = Seen()
    c = client(gw, seen)
    values = leaks(gw, stand_in, moto)
    found, parsed = [], {}
    for op, params in OPERATIONS.items():
        stand_in.answer = success_answer(op)
        before = len(stand_in.received)
        result = call(c, op, params)
        assert len(stand_in.received) == before + 1, f"{op} did not reach the upstream"
        answer = seen.answers[-1]
        body = answer["body"] if answer["body"] is not None else result["Body"].read()
        assert answer["status"] == 200, (op, answer, body[:500])
        found += sweep(answer, body, values)
        parsed[op] = result
    # apgate's own answers too. (bob has a route whose client-facing bucket is named like the real
    # one, so ListBuckets rightly shows that name.)
    c.list_buckets()
    c.get_bucket_location(Bucket=SWEEP_BUCKET)
    own = [(v, what) for v, what in values if v != BUCKET]
    for answer in seen.answers[-2:]:
        found += sweep(answer, answer["body"], own)
    assert not found, "\n".join(found)

    # The answers stay useful: the documented fields are there, with the client's names.
    assert parsed["ListObjectsV2"]["Name"] == SWEEP_BUCKET
    assert [o["Key"] for o in parsed["ListObjectsV2"]["Contents"]] == [KEY, KEY]
    assert parsed["ListObjectsV2"]["Contents"][0]["Owner"] == {"ID": "apgate"}
    assert parsed["ListMultipartUploads"]["Bucket"] == SWEEP_BUCKET
    assert parsed["ListMultipartUploads"]["Uploads"][0]["Initiator"] == {"ID": "apgate"}
    assert parsed["GetObjectAcl"]["Owner"] == {"ID": "apgate"}
    grants = parsed["GetObjectAcl"]["Grants"]
    assert grants and all(g["Grantee"].get("ID") == "apgate" for g in grants), grants
    assert parsed["CompleteMultipartUpload"]["Location"].startswith(f"{gw.shared_endpoint}/{SWEEP_BUCKET}/")
    assert parsed["CreateMultipartUpload"]["Bucket"] == SWEEP_BUCKET
    assert parsed["DeleteObjects"]["Errors"][0] == {"Key": KEY, "Code": "AccessDenied", "Message": "Access Denied",
                                                    "VersionId": "v"}
    assert parsed["GetObject"]["Body"] is not None and parsed["HeadObject"]["ContentLength"] >= 0
    assert parsed["HeadObject"]["ServerSideEncryption"] == "AES256" and "SSEKMSKeyId" not in parsed["HeadObject"]
    assert parsed["GetObjectTagging"]["TagSet"][0] == {"Key": KEY, "Value": "v"}
    assert parsed["PutObject"]["ETag"] == "v" and parsed["PutObject"]["ResponseMetadata"]["HTTPHeaders"][
        "x-amz-request-id"] != UPSTREAM_REQUEST_ID
    assert parsed["PutObject"]["Expiration"] == 'expiry-date="Fri, 23 Dec 2030 00:00:00 GMT"'


def test_a_slow_copy_answer_reaches_the_client_at_once(gw, stand_in, moto):
    """S3 answers a long CopyObject with its head at once and white space while it copies: the
    client must see bytes at once too, or its read timeout fires and it copies again."""
    seen = Seen()
    c = client(gw, seen)
    document = (f'<CopyObjectResult><ETag>"e"</ETag><LastModified>2026-01-01T00:00:00.000Z</LastModified>'
                f"<Owner>{ACCOUNT}</Owner></CopyObjectResult>").encode()
    pieces = [(0, b'<?xml version="1.0" encoding="UTF-8"?>\n')] + [(0.5, b" ")] * 6 + [(0.5, document)]
    stand_in.answer = (200, [("content-type", "application/xml")], pieces)
    started = time.monotonic()
    raw = []
    c.meta.events.register("after-call.s3.CopyObject", lambda http_response, **_: raw.append(http_response))
    result = call(c, "CopyObject", OPERATIONS["CopyObject"])
    assert result["CopyObjectResult"]["ETag"] == '"e"', result
    assert time.monotonic() - started >= 3.0, "the stand-in answers over 3.5 s"
    assert not sweep(seen.answers[-1], raw[-1].content, leaks(gw, stand_in, moto))
    # The head came at once (botocore reads the body before parsing: time the head with a raw GET).
    host = f"127.0.0.1:{gw.shared}"
    stand_in.answer = (200, [("content-type", "application/xml")], pieces)
    headers = s3wire.sign("PUT", host, f"/{SWEEP_BUCKET}/{KEY}", access_key=BOB_ACCESS_KEY_ID,
                          secret_key=gw.bob_secret,
                          headers={"x-amz-copy-source": f"/{SWEEP_BUCKET}/Bob/source"})
    conn = http.client.HTTPConnection("127.0.0.1", gw.shared, timeout=10)
    conn.putrequest("PUT", f"/{SWEEP_BUCKET}/{KEY}", skip_host=True, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.putheader("Content-Length", "0")
    conn.endheaders()
    started = time.monotonic()
    resp = conn.getresponse()
    first = resp.read(1)
    at_first_byte = time.monotonic() - started
    rest = resp.read()
    conn.close()
    assert resp.status == 200 and first == b"<", (resp.status, first)
    assert at_first_byte < 1.0, f"the first byte took {at_first_byte:.2f} s"
    assert (first + rest).startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n      '), first + rest
    assert (first + rest).rstrip().endswith(b"</CopyObjectResult>") and ACCOUNT.encode() not in rest


def test_no_error_answer_names_the_upstream_side(gw, stand_in, moto):
    seen = Seen()
    c = client(gw, seen)
    values = leaks(gw, stand_in, moto)
    key_id = moto.access_key_id
    errors = upstream_errors(AP_HOST, key_id)
    found, outcomes = [], {}
    mark = gw.metrics()
    for kind, (status, document, ctype, want_status, want_code) in errors.items():
        for op, params in OPERATIONS.items():
            # Entity and caching headers of the upstream's document are not apgate's document's.
            stand_in.answer = (status, [("content-type", ctype), ("content-encoding", "gzip"),
                                        ("cache-control", "max-age=3600")], document)
            with pytest.raises(ClientError) as raised:
                call(c, op, params)
            answer = seen.answers[-1]
            body = answer["body"] or b""
            found += sweep(answer, body, values)
            got = raised.value.response
            code = got["Error"].get("Code")
            assert "content-encoding" not in answer["headers"] and "cache-control" not in answer["headers"], (
                kind, op, answer["headers"])
            expected = want_status
            if op in ("HeadObject", "HeadBucket") and status < 600:
                # S3 answers HEAD without a document: the code is unknown, the status the
                # upstream's, except a redirect (apgate's endpoint is wrong).
                expected = 500 if 300 <= status < 400 else status
            assert answer["status"] == expected, (kind, op, answer, body[:500])
            if op not in ("HeadObject", "HeadBucket"):
                assert code == want_code, (kind, op, got)
                outcomes[(kind, op)] = got
    assert not found, "\n".join(found)

    # Errors keep their code, S3's message for it, and the details that are the client's own.
    nsk = outcomes[("NoSuchKey", "GetObject")]["Error"]
    assert nsk == {"Code": "NoSuchKey", "Message": "The specified key does not exist.", "Key": KEY}, nsk
    arg = outcomes[("InvalidArgument", "PutObject")]["Error"]
    assert arg == {"Code": "InvalidArgument", "Message": "Invalid Argument"}, arg
    denied = outcomes[("AccessDenied", "ListObjectsV2")]["Error"]
    assert denied == {"Code": "AccessDenied", "Message": "Access Denied"}, denied

    # apgate's faults are counted by the upstream's code (what the alert watches) and logged.
    after = gw.metrics()
    for code in ("SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidAccessKeyId", "PermanentRedirect"):
        grew = (metric(after, "apgate_upstream_responses_total", code=code) or 0) - (
            metric(mark, "apgate_upstream_responses_total", code=code) or 0)
        # HEAD answers carry no document: their code is not known.
        assert grew == len(OPERATIONS) - 2, (code, grew)
    log = gw.log_path.read_text()
    assert "The upstream refused apgate's own request" in log
    assert TOKEN not in log, "apgate's token reached its log"


def test_a_200_error_document_is_relayed_as_the_error_it_is(gw, stand_in, moto):
    """S3 may answer CopyObject, UploadPartCopy or CompleteMultipartUpload with a 200 and an error
    document. (Sent by hand: botocore turns such a 200 into a 500 before anyone sees it.)"""
    host = f"127.0.0.1:{gw.shared}"
    requests = {
        "CopyObject": ("PUT", "", {"x-amz-copy-source": f"/{SWEEP_BUCKET}/Bob/source"}, b""),
        "UploadPartCopy": ("PUT", "?partNumber=1&uploadId=sweep-upload",
                           {"x-amz-copy-source": f"/{SWEEP_BUCKET}/Bob/source"}, b""),
        "CompleteMultipartUpload": ("POST", "?uploadId=sweep-upload", {}, (
            b'<CompleteMultipartUpload><Part><ETag>"e1"</ETag><PartNumber>1</PartNumber></Part>'
            b"</CompleteMultipartUpload>")),
    }
    for op, (method, query, headers, body) in requests.items():
        stand_in.answer = (200, [("content-type", "application/xml")], error_document("InternalError", {
            "Message": f"We encountered an internal error at {AP_HOST}. Please try again."}))
        before = len(stand_in.received)
        resp = s3wire.signed_request(("127.0.0.1", gw.shared), method, host, f"/{SWEEP_BUCKET}/{KEY}{query}",
                                     access_key=BOB_ACCESS_KEY_ID, secret_key=gw.bob_secret, body=body,
                                     headers=headers)
        assert len(stand_in.received) == before + 1, f"{op} did not reach the upstream: {resp.body[:300]!r}"
        answer = {"op": op, "status": resp.status, "headers": resp.headers}
        assert resp.status == 200, (op, resp.status, resp.body[:500])
        assert not sweep(answer, resp.body, leaks(gw, stand_in, moto))
        error = s3wire.parse_error(resp.body)
        assert error["Code"] == "InternalError" and error["Message"] == \
            "We encountered an internal error. Please try again.", error
        assert error["RequestId"] == resp.headers["x-amz-request-id"], (error, resp.headers)
