"""Hand-built, botocore-signed S3 requests over http.client (stdlib + botocore only).

Used where an SDK client cannot express the request: an explicit access-point Host
sent to 127.0.0.1, a deliberately wrong secret or clock, a garbled Authorization.
"""

from __future__ import annotations

import datetime
import http.client
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from unittest import mock
from urllib.parse import quote, unquote_plus

import botocore.auth
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def encode_key(key: str) -> str:
    """URI-encode an object key the way botocore does: everything but -._~ and /."""
    return quote(key.encode("utf-8"), safe="/-._~")


def encode_query(params: list[tuple[str, str]] | dict[str, str]) -> str:
    items = params.items() if isinstance(params, dict) else params
    return "&".join(
        f"{quote(k.encode('utf-8'), safe='-._~')}={quote(v.encode('utf-8'), safe='-._~')}"
        for k, v in items
    )


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    header_list: list[tuple[str, str]] = field(default_factory=list)

    def error(self) -> dict[str, str | None]:
        return parse_error(self.body)


def parse_error(body: bytes) -> dict[str, str | None]:
    """Fields of an S3 XML error body (<Error><Code>…</Code>…</Error>)."""
    root = ET.fromstring(body)
    if _local(root.tag) != "Error":
        raise AssertionError(f"not an S3 error document: {body[:300]!r}")
    return {_local(child.tag): (child.text or "") for child in root}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def sign(
    method: str,
    host: str,
    target: str,
    *,
    access_key: str,
    secret_key: str,
    region: str = "us-east-1",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    when: datetime.datetime | None = None,
    token: str | None = None,
) -> dict[str, str]:
    """Headers (incl. Host, X-Amz-Date, X-Amz-Content-SHA256, Authorization) for a
    SigV4 request to http://{host}{target}. ``target`` is the encoded path + query as
    it will go on the wire. ``when`` overrides the signing clock."""
    req = AWSRequest(method=method, url=f"http://{host}{target}", data=body, headers=dict(headers or {}))
    req.headers["Host"] = host
    auth = S3SigV4Auth(Credentials(access_key, secret_key, token), "s3", region)
    if when is None:
        auth.add_auth(req)
    else:
        with mock.patch.object(botocore.auth, "get_current_datetime", return_value=when):
            auth.add_auth(req)
    return {k: v for k, v in req.headers.items()}


def send(
    addr: tuple[str, int],
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes = b"",
    timeout: float = 30,
) -> Response:
    """Send exactly this request target and these headers to addr (no extra Host)."""
    conn = http.client.HTTPConnection(addr[0], addr[1], timeout=timeout)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        has_length = any(k.lower() == "content-length" for k in headers)
        for k, v in headers.items():
            conn.putheader(k, v)
        if body and not has_length:
            conn.putheader("Content-Length", str(len(body)))
        elif not body and not has_length and method in ("PUT", "POST"):
            conn.putheader("Content-Length", "0")
        conn.endheaders(body if body else None)
        resp = conn.getresponse()
        data = resp.read()
        hl = resp.getheaders()
        return Response(resp.status, {k.lower(): v for k, v in hl}, data, hl)
    finally:
        conn.close()


def signed_request(
    addr: tuple[str, int],
    method: str,
    host: str,
    target: str,
    *,
    access_key: str,
    secret_key: str,
    region: str = "us-east-1",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    when: datetime.datetime | None = None,
) -> Response:
    hdrs = sign(
        method, host, target, access_key=access_key, secret_key=secret_key,
        region=region, body=body, headers=headers, when=when,
    )
    return send(addr, method, target, hdrs, body)


def list_v2_result(body: bytes) -> tuple[list[str], list[str], str | None]:
    """(keys, common prefixes, EncodingType) from a ListObjectsV2 body; url-decodes (like botocore: unquote_plus)
    keys and prefixes when EncodingType is url."""
    root = ET.fromstring(body)
    enc = None
    keys: list[str] = []
    prefixes: list[str] = []
    for el in root:
        tag = _local(el.tag)
        if tag == "EncodingType":
            enc = el.text
        elif tag == "Contents":
            keys.extend(c.text or "" for c in el if _local(c.tag) == "Key")
        elif tag == "CommonPrefixes":
            prefixes.extend(c.text or "" for c in el if _local(c.tag) == "Prefix")
    if enc == "url":
        keys = [unquote_plus(k) for k in keys]
        prefixes = [unquote_plus(p) for p in prefixes]
    return keys, prefixes, enc
