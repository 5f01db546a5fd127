"""Issue 15, tried as an attacker would: every finding, and each fidelity fix, as a request sent as
bob to an apgate with a list-only route (``lo/``), a read-only one (``ro/``), keys that start with
``/``, and a route that allows ACL changes (``Bob/open/``), in front of moto with IAM enforced.

Judged by the far side: what moto received (its request log) and what it stored afterwards (read
directly with the operator's credentials), not by what apgate says about itself. Requests are
signed by hand (the canonical query decoded and re-encoded, as S3 reads it) so that duplicated,
encoded and extra parts really go out; each attack comes with a control that the same request,
within the routes, does go through.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import hashlib
import hmac
import socket
import time
import uuid
from urllib.parse import quote, unquote_plus

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

import aws_chunked as ac
import s3wire
from conftest import ACCOUNT, APP_AP, BOB_ACCESS_KEY_ID, BOB_AP, BUCKET, REGION
from test_faults import run_apgate
from test_signed_chunks import Outcome, exchange

# A KMS key only Bob/open/ may name, and one no route lists.
KMS_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0b7a1d4e-0000-4000-8000-00000000b0b0"
OTHER_KMS_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0b7a1d4e-0000-4000-8000-0000000a11ce"

ROUTES = f"""
[[routes]]
identity = "bob"
bucket = "{BUCKET}"
prefix = "lo/"
operations = ["list"]
access_point = "arn:aws:s3:{REGION}:{ACCOUNT}:accesspoint/{BOB_AP}"

[[routes]]
identity = "bob"
bucket = "{BUCKET}"
prefix = "ro/"
operations = ["read"]
access_point = "arn:aws:s3:{REGION}:{ACCOUNT}:accesspoint/{BOB_AP}"

[[routes]]
identity = "bob"
bucket = "{BUCKET}"
prefix = "/"
access_point = "arn:aws:s3:{REGION}:{ACCOUNT}:accesspoint/{BOB_AP}"

[[routes]]
identity = "bob"
bucket = "{BUCKET}"
prefix = "Bob/open/"
access_point = "arn:aws:s3:{REGION}:{ACCOUNT}:accesspoint/{BOB_AP}"
allow = ["acl", "bypass-governance-retention"]
kms_key_ids = ["{KMS_KEY}"]

[[routes]]
identity = "bob"
bucket = "{BUCKET}"
prefix = "team/"
operations = ["read", "write", "delete"]
access_point = "arn:aws:s3:{REGION}:{ACCOUNT}:accesspoint/{APP_AP}"
"""


@pytest.fixture(scope="module")
def gw(moto, tmp_path_factory):
    with run_apgate(moto, tmp_path_factory.mktemp("enforcement"), extra=ROUTES) as g:
        yield g


def host(gw) -> str:
    return f"127.0.0.1:{gw.shared}"


def unique(prefix: str = "Bob/") -> str:
    return f"{prefix}enf-{uuid.uuid4().hex[:10]}/"


def canonical_query(query: str) -> str:
    """As S3 reads a query: each name and value decoded, re-encoded with the S3 UriEncode, sorted."""
    pairs = []
    for part in filter(None, query.split("&")):
        k, _, v = part.partition("=")
        pairs.append((quote(unquote_plus(k), safe="-_.~"), quote(unquote_plus(v), safe="-_.~")))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def signed_headers(gw, method: str, target: str, headers: list[tuple[str, str]], payload: str,
                   *, date_header: str = "x-amz-date", secret: str | None = None,
                   trim: str = "whitespace") -> list[tuple[str, str]]:
    """SigV4 (Authorization header) as bob over exactly these headers, plus Host, the date and
    x-amz-content-sha256 (unless given). Header values are trimmed as botocore does (runs of any
    white space become one space), or with ``trim="spaces"`` as aws-sigv4 (the Rust SDK) does
    (runs of spaces only)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    hdrs = [("Host", host(gw))]
    if date_header == "x-amz-date":
        hdrs.append(("X-Amz-Date", amz_date))
    else:
        hdrs.append(("Date", email.utils.format_datetime(now, usegmt=True)))
    if not any(k.lower() == "x-amz-content-sha256" for k, _ in headers):
        hdrs.append(("X-Amz-Content-SHA256", payload))
    hdrs += headers
    path, _, query = target.partition("?")
    signed = sorted({k.lower() for k, _ in hdrs} - {"content-length", "transfer-encoding", "expect"})
    by_name: dict[str, list[str]] = {}
    for k, v in hdrs:
        value = " ".join(v.split()) if trim == "whitespace" else " ".join(p for p in v.strip(" ").split(" ") if p)
        by_name.setdefault(k.lower(), []).append(value)
    lines = "".join(f"{n}:{','.join(by_name[n])}\n" for n in signed)
    canonical = "\n".join([method, path, canonical_query(query), lines, ";".join(signed), payload])
    scope = ac.credential_scope(amz_date[:8], REGION)
    key = ac.signing_key(secret or gw.bob_secret, amz_date[:8], REGION)
    signature = hmac.new(key, ac.string_to_sign(amz_date, scope, canonical).encode(), hashlib.sha256).hexdigest()
    hdrs.append(("Authorization", f"AWS4-HMAC-SHA256 Credential={BOB_ACCESS_KEY_ID}/{scope}, "
                                  f"SignedHeaders={';'.join(signed)}, Signature={signature}"))
    return hdrs


def send(gw, method: str, target: str, headers: list[tuple[str, str]] | None = None, body: bytes = b"",
         payload: str | None = None, **kw) -> Outcome:
    headers = list(headers or [])
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        headers.append(("Content-Length", str(len(body))))
    if not body and method in ("PUT", "POST") and not any(k.lower() == "content-length" for k, _ in headers):
        headers.append(("Content-Length", "0"))
    payload = payload or hashlib.sha256(body).hexdigest()
    return exchange(gw.shared, method, target, signed_headers(gw, method, target, headers, payload), body, **kw)


def t(key: str, query: str = "") -> str:
    return "/" + s3wire.encode_key(f"{BUCKET}/{key}") + (f"?{query}" if query else "")


def code(out: Outcome) -> str | None:
    try:
        return s3wire.parse_error(out.body)["Code"]
    except Exception:  # noqa: BLE001 - not an error body
        return None


def put_direct(moto_s3, key: str, data: bytes = b"x") -> None:
    moto_s3.put_object(Bucket=BUCKET, Key=key, Body=data)


def exists(moto_s3, key: str) -> bool:
    try:
        moto_s3.head_object(Bucket=BUCKET, Key=key)
        return True
    except ClientError:
        return False


def refused_and_nothing_sent(moto, mark: int, out: Outcome, status: int, want_code: str) -> None:
    assert (out.status, code(out)) == (status, want_code), out
    assert moto.log_since(mark) == [], moto.log_since(mark)


# ------------------------------------------------------------------------------ finding 1

def delete_xml(keys: list[str], pad: int = 0) -> bytes:
    """A DeleteObjects body with a comment after the first object (padded so a signed first chunk
    can reach past 8 KiB)."""
    objs = [f"<Object><Key>{k}</Key></Object>" for k in keys]
    return ("<Delete>" + objs[0] + "<!-- " + "p" * pad + " -->" + "".join(objs[1:]) + "</Delete>").encode()


def unsigned_chunks(parts: list[bytes], checksum: str) -> bytes:
    out = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts)
    return out + b"0\r\n" + f"x-amz-checksum-crc32:{checksum}\r\n\r\n".encode()


def send_delete(gw, xml: bytes, framing: str) -> Outcome:
    """POST ?delete with the XML framed as aws-chunked, a chunk boundary inside `-->`."""
    split = xml.index(b"-->") + 1
    parts = [xml[:split], xml[split:]]
    if framing == "unsigned-trailer":
        wire = unsigned_chunks(parts, ac.crc32_b64(xml))
        headers = [
            ("Content-Encoding", "aws-chunked"),
            ("X-Amz-Decoded-Content-Length", str(len(xml))),
            ("X-Amz-Trailer", "x-amz-checksum-crc32"),
            ("X-Amz-Sdk-Checksum-Algorithm", "CRC32"),
            ("Content-Length", str(len(wire))),
        ]
        return send(gw, "POST", t("", "delete").replace(f"/{BUCKET}/?", f"/{BUCKET}?"), headers, wire,
                    payload="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    req = ac.encode(
        "POST", host(gw), f"/{BUCKET}", query="delete", access_key=BOB_ACCESS_KEY_ID, secret_key=gw.bob_secret,
        region=REGION, body=xml, chunk_sizes=[len(parts[0]), len(parts[1])], trailer="x-amz-checksum-crc32",
    )
    return exchange(gw.shared, req.method, req.target, list(req.headers), req.body)


@pytest.mark.parametrize("framing", ["unsigned-trailer", "signed"])
def test_finding1_a_chunk_boundary_inside_a_comment_hides_no_key(gw, moto, moto_s3, framing):
    base = unique()
    mine, read_only, others = base + "x", unique("ro/") + "y", unique("app/") + "z"
    for k in (mine, read_only, others):
        put_direct(moto_s3, k)
    pad = 9000 if framing == "signed" else 0  # non-final signed chunks are at least 8 KiB
    mark = moto.log_mark()
    out = send_delete(gw, delete_xml([mine, read_only, others], pad), framing)
    refused_and_nothing_sent(moto, mark, out, 403, "AccessDenied")
    assert all(exists(moto_s3, k) for k in (mine, read_only, others))
    # Control: the same framing with bob's keys only deletes them.
    second = base + "w"
    put_direct(moto_s3, second)
    out = send_delete(gw, delete_xml([mine, second], pad), framing)
    assert out.status == 200, out
    assert not exists(moto_s3, mine) and not exists(moto_s3, second)
    assert exists(moto_s3, read_only) and exists(moto_s3, others)


# ------------------------------------------------------------------------------ finding 2

@pytest.mark.parametrize("listing", ["list-type=2", "versions", "uploads"])
def test_finding2_a_list_only_route_reads_no_bucket_configuration(gw, moto, listing):
    for sub in ["tagging", "acl", "cors", "versioning", "policy", "%74agging"]:
        mark = moto.log_mark()
        out = send(gw, "GET", f"/{BUCKET}?{listing}&prefix=lo%2F&{sub}")
        assert out.status == 400 and code(out) == "InvalidRequest", (sub, out)
        assert moto.log_since(mark) == [], sub
    out = send(gw, "GET", f"/{BUCKET}?{listing}&prefix=lo%2F")
    assert out.status == 200, out


# ------------------------------------------------------------------------------ finding 3

def sigv2_presigner(gw):
    return boto3.client(
        "s3", endpoint_url=f"http://{host(gw)}", region_name=REGION, aws_access_key_id=BOB_ACCESS_KEY_ID,
        aws_secret_access_key=gw.bob_secret,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3"),
    )


def raw(gw, method: str, url: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> Outcome:
    target = url.split(host(gw), 1)[1]
    hdrs = [("Host", host(gw)), ("Content-Length", str(len(body)))] + list(headers or [])
    return exchange(gw.shared, method, target, hdrs, body)


TAGGING = b"<Tagging><TagSet><Tag><Key>k</Key><Value>v</Value></Tag></TagSet></Tagging>"


def test_finding3_a_sigv2_presigned_put_does_not_become_another_operation(gw, moto, moto_s3):
    key = unique() + "t"
    put_direct(moto_s3, key, b"original")
    url = sigv2_presigner(gw).generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": key})
    assert "Signature=" in url, url
    md5 = base64.b64encode(hashlib.md5(TAGGING).digest()).decode()
    for extra in ["&%74agging", "&tagging", "&%61cl", "&retention", "&legal-hold"]:
        mark = moto.log_mark()
        out = raw(gw, "PUT", url + extra, TAGGING, [("Content-MD5", md5)])
        assert out.status in (400, 403), (extra, out)
        assert moto.log_since(mark) == [], extra
    assert moto_s3.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"] == []
    assert moto_s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"original"
    # A presigned GET does not become GetObjectAcl, GetObjectAttributes or GetObjectRetention.
    url = sigv2_presigner(gw).generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key})
    for extra in ["&%61cl", "&attributes", "&retention"]:
        mark = moto.log_mark()
        out = raw(gw, "GET", url + extra)
        assert out.status in (400, 403), (extra, out)
        assert moto.log_since(mark) == [], extra
    # Control: the URL as presigned.
    out = raw(gw, "GET", url)
    assert out.status == 200 and out.body == b"original", out


# ------------------------------------------------------------------------------ finding 4

def test_finding4_a_multibyte_query_key_is_answered_not_a_dead_connection(gw, moto):
    mark = moto.log_mark()
    out = send(gw, "GET", t("Bob/x", "abcde%C3%A9=1"))
    refused_and_nothing_sent(moto, mark, out, 400, "InvalidArgument")


# ------------------------------------------------------------------------------ finding 5

def test_finding5_a_copy_source_outside_the_copies_goes_nowhere(gw, moto, moto_s3):
    secret = unique("ro/") + "secret"
    put_direct(moto_s3, secret, b"secret")
    source = [("x-amz-copy-source", f"/{BUCKET}/{secret}")]
    base = unique()
    for method, target in [
        ("GET", t(base + "k")),
        ("DELETE", t(base + "k")),
        ("POST", t(base + "k", "uploads")),
        ("PUT", t(base + "k", "tagging")),
        ("HEAD", t(base + "k")),
    ]:
        mark = moto.log_mark()
        out = send(gw, method, target, source, TAGGING if target.endswith("tagging") else b"")
        assert out.status == 400, (method, target, out)
        assert moto.log_since(mark) == [], (method, target)
    assert not exists(moto_s3, base + "k")
    # Control: a copy within the routes (reading ro/, writing Bob/).
    out = send(gw, "PUT", t(base + "copy"), source)
    assert out.status == 200, out
    assert moto_s3.get_object(Bucket=BUCKET, Key=base + "copy")["Body"].read() == b"secret"


def test_finding5_duplicated_parameters_are_refused(gw, moto):
    for query in ["list-type=2&prefix=lo%2F&prefix=ro%2F", "list-type=2&prefix=lo%2F&prefix=lo%2F",
                  "list-type=2&list-type=2&prefix=lo%2F", "prefix=lo%2F&%70refix=Bob%2F"]:
        mark = moto.log_mark()
        out = send(gw, "GET", f"/{BUCKET}?{query}")
        refused_and_nothing_sent(moto, mark, out, 400, "InvalidArgument")


@pytest.mark.parametrize("body", [
    '<!DOCTYPE d [<!ENTITY e "{ro}">]><Delete><Object><Key>&e;</Key></Object></Delete>',
    '<!DOCTYPE Delete><Delete><Object><Key>{mine}</Key></Object></Delete>',
    '<?xml-stylesheet href="x"?><Delete><Object><Key>{mine}</Key></Object></Delete>',
    '<Delete><Object><Key>{mine}</Key></Object><!-- a -- b --></Delete>',
    '<Delete><Object><Key>{mine}</Key><Key>{ro}</Key></Object></Delete>',
    '<Delete><Object><Key>{mine}</Key></Object></Delete><Object><Key>{ro}</Key></Object>',
], ids=["entity", "doctype", "processing-instruction", "bad-comment", "two-keys", "after-the-root"])
def test_finding5_xml_an_xml_parser_may_read_otherwise_is_refused(gw, moto, moto_s3, body):
    mine, ro = unique() + "m", unique("ro/") + "r"
    put_direct(moto_s3, mine)
    put_direct(moto_s3, ro)
    xml = body.format(mine=mine, ro=ro).encode()
    md5 = base64.b64encode(hashlib.md5(xml).digest()).decode()
    mark = moto.log_mark()
    out = send(gw, "POST", f"/{BUCKET}?delete", [("Content-MD5", md5)], xml)
    refused_and_nothing_sent(moto, mark, out, 400, "MalformedXML")
    assert exists(moto_s3, mine) and exists(moto_s3, ro)


def test_finding5_access_widening_headers_need_the_routes_opt_in(gw, moto, moto_s3):
    base = unique()
    for headers in [
        [("x-amz-acl", "public-read")],
        [("x-amz-acl", "authenticated-read")],
        [("x-amz-grant-read", 'uri="http://acs.amazonaws.com/groups/global/AllUsers"')],
        [("x-amz-grant-full-control", f'id="{"0" * 64}"')],
    ]:
        key = base + uuid.uuid4().hex[:6]
        mark = moto.log_mark()
        out = send(gw, "PUT", t(key), headers, b"data")
        refused_and_nothing_sent(moto, mark, out, 403, "AccessDenied")
        assert not exists(moto_s3, key)
    kept = base + "kept"
    put_direct(moto_s3, kept)
    mark = moto.log_mark()
    out = send(gw, "DELETE", t(kept), [("x-amz-bypass-governance-retention", "true")])
    refused_and_nothing_sent(moto, mark, out, 403, "AccessDenied")
    assert exists(moto_s3, kept)
    # PutObjectAcl is not offered without the opt-in (501, which clients read as "no ACLs here").
    mark = moto.log_mark()
    acl = b'<AccessControlPolicy><Owner><ID>x</ID></Owner><AccessControlList/></AccessControlPolicy>'
    out = send(gw, "PUT", t(kept, "acl"), [("x-amz-acl", "public-read")], acl)
    assert out.status in (403, 501), out
    assert moto.log_since(mark) == []
    # Control: a route that allows "acl" forwards the canned ACL, and moto applies it.
    opened = unique("Bob/open/") + "o"
    out = send(gw, "PUT", t(opened), [("x-amz-acl", "public-read")], b"data")
    assert out.status == 200, out
    grants = moto_s3.get_object_acl(Bucket=BUCKET, Key=opened)["Grants"]
    assert any(g["Grantee"].get("URI", "").endswith("/AllUsers") for g in grants), grants
    # A private ACL widens nothing and needs no opt-in.
    out = send(gw, "PUT", t(base + "private"), [("x-amz-acl", "private")], b"data")
    assert out.status == 200, out


def delete_objects(gw, keys: list[str], headers: list[tuple[str, str]] | None = None) -> Outcome:
    xml = ("<Delete>" + "".join(f"<Object><Key>{k}</Key></Object>" for k in keys) + "</Delete>").encode()
    md5 = base64.b64encode(hashlib.md5(xml).digest()).decode()
    target = t("", "delete").replace(f"/{BUCKET}/?", f"/{BUCKET}?")
    return send(gw, "POST", target, [("Content-MD5", md5), *(headers or [])], xml)


def test_delete_objects_is_judged_by_the_routes_of_its_keys(gw, moto, moto_s3):
    """Red-team pass 3, F1: DeleteObjects names its keys in its body, so the route apgate finds
    for its head is only one of the bucket's (the longest that may delete: Bob/open/, which
    allows a governance bypass). Each key's own route must allow what it asks for; the request
    goes through the access point of its keys."""
    bypass = [("x-amz-bypass-governance-retention", "true")]
    plain = unique() + "k"
    opened = unique("Bob/open/") + "k"
    for key in (plain, opened):
        put_direct(moto_s3, key)
    # A bypass for a key whose route (Bob/) does not allow it: nothing reaches moto, alone or
    # beside a key whose route does.
    for keys in ([plain], [opened, plain]):
        mark = moto.log_mark()
        out = delete_objects(gw, keys, bypass)
        refused_and_nothing_sent(moto, mark, out, 403, "AccessDenied")
        assert exists(moto_s3, plain) and exists(moto_s3, opened)
    # Where every key's route allows it, it goes through, and moto deletes.
    out = delete_objects(gw, [opened], bypass)
    assert out.status == 200 and b"<Deleted>" in out.body, out
    assert not exists(moto_s3, opened)
    # Keys of a route through another access point go through that one (refused before: the
    # head's route was Bob/open/'s access point).
    team = [unique("team/") + n for n in ("a", "b")]
    for key in team:
        put_direct(moto_s3, key)
    mark = moto.log_mark()
    out = delete_objects(gw, team)
    hosts = [r.get("host", "") for r in moto.log_since(mark)]
    assert out.status == 200 and out.body.count(b"<Deleted>") == 2, out
    assert hosts and all(h.startswith(f"{APP_AP}-") for h in hosts), hosts
    assert not any(exists(moto_s3, k) for k in team)
    # One request never mixes access points.
    put_direct(moto_s3, team[0])
    mark = moto.log_mark()
    out = delete_objects(gw, [team[0], plain])
    refused_and_nothing_sent(moto, mark, out, 403, "AccessDenied")
    assert exists(moto_s3, team[0]) and exists(moto_s3, plain)


def test_a_plain_body_never_goes_upstream_as_aws_chunked(gw, moto, moto_s3):
    """Red-team pass 3: apgate frames a body by x-amz-content-sha256; a plain body whose
    Content-Encoding says aws-chunked would be read as chunks and a trailer by an upstream that
    goes by that header."""
    key = unique() + "k"
    body = b"5\r\nhello\r\n0\r\nx-amz-acl:public-read\r\n\r\n"
    for encoding in ("aws-chunked", "gzip, AWS-Chunked"):
        mark = moto.log_mark()
        out = send(gw, "PUT", t(key), [("Content-Encoding", encoding)], body)
        refused_and_nothing_sent(moto, mark, out, 400, "InvalidArgument")
        assert not exists(moto_s3, key)
    out = send(gw, "PUT", t(key), [("Content-Encoding", "gzip")], body)
    assert out.status == 200, out
    assert moto_s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body


def sse_kms(key_id: str | None) -> list[tuple[str, str]]:
    named = [("x-amz-server-side-encryption-aws-kms-key-id", key_id)] if key_id else []
    return [("x-amz-server-side-encryption", "aws:kms"), *named]


def test_a_kms_key_is_named_only_through_a_route_that_lists_it(gw, moto, moto_s3):
    """S3 encrypts with the named key as apgate's role, which may use keys the caller may not."""
    base = unique()
    source = base + "source"
    put_direct(moto_s3, source)
    # Not listed by the route (Bob/ lists none): a PUT, a multipart upload's start, a copy.
    for method, key, query, headers in [
        ("PUT", base + "put", "", sse_kms(OTHER_KMS_KEY)),
        ("PUT", base + "listed-elsewhere", "", sse_kms(KMS_KEY)),
        ("POST", base + "mpu", "uploads", sse_kms(OTHER_KMS_KEY)),
        ("PUT", base + "copy", "", [("x-amz-copy-source", f"/{BUCKET}/{source}"), *sse_kms(KMS_KEY)]),
    ]:
        mark = moto.log_mark()
        out = send(gw, method, t(key, query), headers, b"data" if method == "PUT" and "copy" not in key else b"")
        refused_and_nothing_sent(moto, mark, out, 403, "AccessDenied")
        assert not exists(moto_s3, key)
    # Bob/open/ lists KMS_KEY: as listed it goes through, and moto stores the object under it.
    opened = unique("Bob/open/")
    out = send(gw, "PUT", t(opened + "k"), sse_kms(KMS_KEY), b"data")
    assert out.status == 200, out
    assert moto_s3.head_object(Bucket=BUCKET, Key=opened + "k")["SSEKMSKeyId"] == KMS_KEY
    # The same key in another form (its bare id) is not taken for it; nor is a key it does not list.
    for other in (KMS_KEY.rsplit("/", 1)[1], OTHER_KMS_KEY):
        mark = moto.log_mark()
        out = send(gw, "PUT", t(opened + "other"), sse_kms(other), b"data")
        refused_and_nothing_sent(moto, mark, out, 403, "AccessDenied")
    assert not exists(moto_s3, opened + "other")
    # SSE-KMS with the bucket's own key (none named) needs no list.
    out = send(gw, "PUT", t(base + "default"), sse_kms(None), b"data")
    assert out.status == 200, out
    assert exists(moto_s3, base + "default")


# ------------------------------------------------------------------------------ fidelity (item 6)

def test_a_signed_header_with_an_empty_value_verifies(gw, moto, moto_s3):
    """`Content-Type:` empty and signed: apgate verifies it (S3 does), and does not forward an empty
    media type (moto, behind WSGI, cannot tell it from none); an empty x-amz-meta-* value travels."""
    key = unique() + "empty-headers"
    mark = moto.log_mark()
    out = send(gw, "PUT", t(key), [("Content-Type", ""), ("X-Amz-Meta-Empty", "")], b"data")
    assert out.status == 200, out
    assert len(moto.log_since(mark)) == 1  # moto verified apgate's signature
    got = moto_s3.get_object(Bucket=BUCKET, Key=key)
    assert got["Body"].read() == b"data" and got["Metadata"] == {"empty": ""}, got


def test_a_key_starting_with_a_slash_verifies_and_round_trips(gw, moto, moto_s3):
    key = "/" + uuid.uuid4().hex[:8] + "/lead"
    target = f"/{BUCKET}/" + s3wire.encode_key(key)
    assert target.startswith(f"/{BUCKET}//"), target
    out = send(gw, "PUT", target, [], b"leading slash")
    assert out.status == 200, out
    assert moto_s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"leading slash"
    out = send(gw, "GET", target)
    assert out.status == 200 and out.body == b"leading slash", out


def test_a_sigv4_request_dated_by_the_date_header(gw, moto_s3):
    key = unique() + "dated"
    put_direct(moto_s3, key, b"dated")
    target = t(key)
    payload = hashlib.sha256(b"").hexdigest()
    headers = signed_headers(gw, "GET", target, [], payload, date_header="date")
    assert not any(k.lower() == "x-amz-date" for k, _ in headers)
    out = exchange(gw.shared, "GET", target, headers, b"")
    assert out.status == 200 and out.body == b"dated", out
    # The Date header must then be signed, as x-amz-date would be.
    unsigned_date = [(k, v.replace("date;host;", "host;")) if k == "Authorization" else (k, v) for k, v in headers]
    out = exchange(gw.shared, "GET", target, unsigned_date, b"")
    assert out.status in (400, 403), out


@pytest.mark.parametrize("hosts", [[], ["a.example", "b.example"]], ids=["missing", "duplicated"])
def test_host_missing_or_duplicated_is_400(gw, moto, hosts):
    head = f"GET /{BUCKET}/Bob/x HTTP/1.1\r\n" + "".join(f"Host: {h}\r\n" for h in hosts) + "\r\n"
    mark = moto.log_mark()
    with socket.create_connection(("127.0.0.1", gw.shared), timeout=10) as s:
        s.sendall(head.encode())
        data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 400"), data
    assert b"<Code>InvalidRequest</Code>" in data, data
    assert moto.log_since(mark) == []


def test_a_put_over_5_gib_is_refused_at_once(gw, moto):
    target = t(unique() + "huge")
    headers = signed_headers(gw, "PUT", target, [("Content-Length", str(6 << 30))], "UNSIGNED-PAYLOAD")
    head = f"PUT {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    mark = moto.log_mark()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", gw.shared), timeout=10) as s:
        s.sendall(head.encode() + b"x" * 1024)
        data = s.recv(65536)
    assert time.monotonic() - started < 5
    assert data.startswith(b"HTTP/1.1 400") and b"<Code>EntityTooLarge</Code>" in data, data
    assert moto.log_since(mark) == []


def test_a_put_without_a_length_is_411(gw, moto, moto_s3):
    key = unique() + "no-length"
    target = t(key)
    headers = signed_headers(gw, "PUT", target, [], "UNSIGNED-PAYLOAD")
    head = f"PUT {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    mark = moto.log_mark()
    with socket.create_connection(("127.0.0.1", gw.shared), timeout=10) as s:
        s.sendall(head.encode())
        data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 411") and b"<Code>MissingContentLength</Code>" in data, data
    assert moto.log_since(mark) == [] and not exists(moto_s3, key)


def test_a_signed_stream_without_its_final_chunk_creates_no_object(gw, moto_s3):
    key = unique() + "no-final-chunk"
    data = bytes(range(256)) * 400  # 100 KiB: two 64 KiB chunks
    req = ac.encode("PUT", host(gw), t(key), access_key=BOB_ACCESS_KEY_ID, secret_key=gw.bob_secret,
                    region=REGION, body=data, sign_content_length=False)
    final = req.body.rindex(b"0;chunk-signature=")
    cut = req.body[:final]
    headers = [(k, str(len(cut)) if k.lower() == "content-length" else v) for k, v in req.headers]
    out = exchange(gw.shared, "PUT", req.target, headers, cut)
    assert out.status is None or out.status >= 400, out
    for _ in range(2):
        assert not exists(moto_s3, key)
        time.sleep(0.5)


def test_a_session_token_beside_an_issued_key_is_refused(gw, moto):
    mark = moto.log_mark()
    out = send(gw, "GET", t("Bob/x"), [("X-Amz-Security-Token", "FwoGZXIvYXdzEBYaDH")])
    refused_and_nothing_sent(moto, mark, out, 400, "InvalidToken")


@pytest.mark.parametrize("sub", ["acl", "cors", "policy", "notification"])
def test_bucket_configuration_reads_are_refused(gw, moto, sub):
    mark = moto.log_mark()
    out = send(gw, "GET", f"/{BUCKET}?{sub}")
    refused_and_nothing_sent(moto, mark, out, 501, "NotImplemented")


def test_another_identitys_access_point_is_not_reached_through_a_delete(gw, moto, moto_s3):
    """app's keys (app/, through app's VPC access point) are not bob's to delete, whatever the
    request says about them."""
    others = unique("app/") + "z"
    put_direct(moto_s3, others)
    xml = f"<Delete><Object><Key>{others}</Key></Object></Delete>".encode()
    md5 = base64.b64encode(hashlib.md5(xml).digest()).decode()
    mark = moto.log_mark()
    out = send(gw, "POST", f"/{BUCKET}?delete", [("Content-MD5", md5)], xml)
    refused_and_nothing_sent(moto, mark, out, 403, "AccessDenied")
    assert exists(moto_s3, others)
    assert APP_AP not in out.body.decode()


# ------------------------------------------------------------------------------ issue 16, item 1

def sigv4_presigner(gw):
    return boto3.client(
        "s3", endpoint_url=f"http://{host(gw)}", region_name=REGION, aws_access_key_id=BOB_ACCESS_KEY_ID,
        aws_secret_access_key=gw.bob_secret,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )


def test_connection_may_not_name_a_header_the_request_carries(gw, moto, moto_s3):
    """A header the client signed, or one apgate forwards, never disappears because `Connection`
    names it (issue 16: a presigned write-once PUT lost its If-None-Match that way, a pinned
    Range its range): the request is refused and nothing reaches the upstream."""
    key = unique() + "write-once"
    put_direct(moto_s3, key, b"original")
    cases = []
    # SigV4, Authorization header: Range signed.
    target = t(key)
    cases.append(("GET", target, signed_headers(gw, "GET", target, [("Range", "bytes=0-3")],
                                                hashlib.sha256(b"").hexdigest()), b""))
    # SigV4 presigned: If-None-Match signed into a write-once PUT.
    url = sigv4_presigner(gw).generate_presigned_url(
        "put_object", Params={"Bucket": BUCKET, "Key": key, "IfNoneMatch": "*"})
    assert "if-none-match" in url.lower(), url
    presigned_target = url.split(host(gw), 1)[1]
    cases.append(("PUT", presigned_target, [("Host", host(gw)), ("If-None-Match", "*"),
                                            ("Content-Length", "11")], b"overwritten"))
    # SigV2 header: Content-MD5 signed (another key: its control does write).
    body, other = b"written", unique() + "v2"
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    date = email.utils.formatdate(usegmt=True)
    sts = f"PUT\n{md5}\n\n{date}\n/{BUCKET}/{other}"
    sig = base64.b64encode(hmac.new(gw.bob_secret.encode(), sts.encode(), hashlib.sha1).digest()).decode()
    cases.append(("PUT", t(other), [("Host", host(gw)), ("Date", date), ("Content-MD5", md5),
                                  ("Authorization", f"AWS {BOB_ACCESS_KEY_ID}:{sig}"),
                                  ("Content-Length", str(len(body)))], body))
    # SigV2 presigned GET with a Range the URL does not sign.
    url = sigv2_presigner(gw).generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key})
    cases.append(("GET", url.split(host(gw), 1)[1], [("Host", host(gw)), ("Range", "bytes=0-3")], b""))
    for method, target, headers, body in cases:
        named = next(n for n, _ in headers if n.lower() in ("range", "if-none-match", "content-md5"))
        mark = moto.log_mark()
        out = exchange(gw.shared, method, target, headers + [("Connection", named.lower())], body)
        refused_and_nothing_sent(moto, mark, out, 400, "InvalidRequest")
        # Control: the same request without the Connection trick goes through (the write-once
        # PUT then fails upstream, as it must: the object exists).
        mark = moto.log_mark()
        out = exchange(gw.shared, method, target, headers + [("Connection", "keep-alive")], body)
        assert len(moto.log_since(mark)) >= 1, (method, target, out)
        assert out.status in (200, 206, 412), (method, target, out)
    # The write-once PUT never overwrote: not with its condition stripped, not with it kept.
    assert moto_s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"original"


# ------------------------------------------------------------------------------ issue 16, item 3

@pytest.mark.parametrize("trim", ["whitespace", "spaces"], ids=["botocore-rule", "aws-sigv4-rule"])
def test_a_tab_in_a_signed_header_value_does_not_break_apgates_own_signature(gw, moto, moto_s3, trim):
    """Signers disagree on tabs (botocore collapses every run of white space, aws-sigv4 only runs
    of spaces). apgate accepts a client's signature made either way, and forwards a value that holds
    a tab with its white space runs made one space, which every rule canonicalizes alike: a client
    cannot make the upstream refuse apgate's own signature (moto checks it with botocore's rule)."""
    key = unique() + "tab-" + trim
    headers = [("x-amz-meta-note", "a\tb  \t c"), ("Content-Type", "text/plain;\tcharset=utf-8")]
    payload = hashlib.sha256(b"data").hexdigest()
    target = t(key)
    signed = signed_headers(gw, "PUT", target, headers + [("Content-Length", "4")], payload, trim=trim)
    mark = moto.log_mark()
    out = exchange(gw.shared, "PUT", target, signed, b"data")
    assert out.status == 200, out
    assert len(moto.log_since(mark)) == 1
    head = moto_s3.head_object(Bucket=BUCKET, Key=key)
    assert head["Metadata"] == {"note": "a b c"}, head
    assert head["ContentType"] == "text/plain; charset=utf-8", head
