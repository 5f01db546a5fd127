#!/usr/bin/env python3
"""Run moto's server in-process, with a fixed SigV4 check, access point object ARNs
accepted as copy sources, and an optional request log.

    python moto_launcher.py --host 127.0.0.1 --port PORT [--request-log FILE]

Prints READY (flushed) on stdout once the port is listening.

The SigV4 fix
-------------
In server mode moto (5.2.1, werkzeug 3.1) verifies signatures in
``moto.core.authorization.ActionAuthenticatorMixin._authenticate_and_authorize_action``:
it builds the IAM request's ``path`` from ``self.uri``, which is werkzeug's
``request.url``. That is an IRI, not the request target the client signed: ``%2F`` in the
query comes back as ``/``, UTF-8 escapes are decoded, ``%20`` ends up double-encoded.
``IAMRequestBase._create_aws_request`` then hands that path to botocore's signer, so
valid signatures on such requests fail with SignatureDoesNotMatch.

The patch below changes exactly one input of that check: the ``path`` given to the
IAM request class (``S3IAMRequest`` / ``IAMRequest``) becomes the raw request target as
received on the wire (WSGI ``RAW_URI``, falling back to ``REQUEST_URI``: path + query,
byte for byte). Everything else -- which headers are signed, the payload hash header,
the credential lookup, the IAM policy evaluation -- is moto's own code, unchanged.
No file under site-packages is edited.

The access-point copy-source fix
--------------------------------
For a copy through an access point, AWS SDKs (and apgate) send ``x-amz-copy-source`` as
the URL-encoded access point *object ARN*,
``arn:aws:s3:REGION:ACCOUNT:accesspoint/NAME/object/KEY`` (optionally followed by an
unencoded ``?versionId=ID``); real S3 accepts that. moto 5.2.1 does not:
``S3Response.copy_object`` and ``S3Response.upload_part_copy`` both split the decoded
path at the first ``/`` into bucket and key, so the source bucket becomes
``arn:aws:s3:REGION:ACCOUNT:accesspoint`` and the copy fails with NoSuchBucket.

The patch wraps exactly those two handlers. When the header (path part URL-decoded) is an
access point object ARN (``accesspoint/NAME`` or ``accesspoint:NAME``), NAME is resolved
in account ACCOUNT through moto's own S3 Control backend (the same lookup moto does for
an access point Host) and, for the duration of the handler call only, the handler sees
``x-amz-copy-source: BUCKET/KEY`` (re-encoded; the ``?versionId=`` suffix kept verbatim).
An unknown access point is answered with NoSuchBucket (404), as moto answers any unknown
source bucket. Any other copy source (``bucket/key``, ``/bucket/key``, other ARN kinds)
reaches moto untouched. The ARN's region is not checked (moto does not record where an
access point lives), and -- as for plain sources -- moto checks no permission on the
source.

Ordering: moto authenticates (signature + IAM) in ``_key_response_put`` *before* it
dispatches to these handlers, over the request's own headers; the rewrite is a swapped
header view on the response object, never a change to the request. The wrapper refuses
to run (RuntimeError -> 500) if moto has not authenticated the request by then, so a
future moto that reorders this cannot silently verify signatures over rewritten headers.
No file under site-packages is edited.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote, unquote, urlsplit

_RAW_TARGET_ATTR = "_apgate_raw_request_target"


def wire_request_target(environ: dict[str, Any]) -> str | None:
    """The request target (path + optional ?query) exactly as the client sent it."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not raw:
        return None
    # werkzeug's dev server reads the request line as latin-1 and then applies the
    # WSGI "encoding dance" (utf-8 encode, latin-1 decode). Undo both to get the
    # wire bytes; clients normally send pure ASCII here, where all of this is identity.
    try:
        wire = raw.encode("latin-1").decode("utf-8").encode("latin-1")
    except (UnicodeEncodeError, UnicodeDecodeError):
        wire = raw.encode("latin-1", "surrogateescape")
    target = wire.decode("utf-8", "surrogateescape")
    if "://" in target.split("?", 1)[0]:
        # absolute-form request target (proxy style): keep path + query only
        parts = urlsplit(target)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not target.startswith("/"):
        target = "/" + target
    return target


def install_sigv4_raw_uri_fix() -> None:
    """Monkeypatch moto so that signature verification uses the wire request target."""
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.core.responses import BaseResponse

    original_setup_class = BaseResponse.setup_class
    original_authenticate = ActionAuthenticatorMixin._authenticate_and_authorize_action

    if getattr(original_authenticate, "_apgate_patched", False):
        return

    def setup_class(self: Any, request: Any, full_url: str, headers: Any, *args: Any, **kwargs: Any) -> Any:
        environ = getattr(request, "environ", None)
        setattr(self, _RAW_TARGET_ATTR, wire_request_target(environ) if isinstance(environ, dict) else None)
        return original_setup_class(self, request, full_url, headers, *args, **kwargs)

    def _authenticate_and_authorize_action(self: Any, iam_request_cls: type, resource: str = "*") -> None:
        raw_target = getattr(self, _RAW_TARGET_ATTR, None)
        if raw_target is None:
            return original_authenticate(self, iam_request_cls, resource)

        def iam_request_with_wire_path(**kwargs: Any) -> Any:
            # moto calls iam_request_cls(account_id=..., method=..., path=..., ...);
            # only the path is replaced.
            if "path" not in kwargs:
                raise RuntimeError("moto changed: IAM request class no longer built with path=")
            kwargs["path"] = raw_target
            return iam_request_cls(**kwargs)

        return original_authenticate(self, iam_request_with_wire_path, resource)

    _authenticate_and_authorize_action._apgate_patched = True  # type: ignore[attr-defined]
    BaseResponse.setup_class = setup_class  # type: ignore[method-assign]
    ActionAuthenticatorMixin._authenticate_and_authorize_action = _authenticate_and_authorize_action  # type: ignore[method-assign]


# ------------------------------------------------------------ access point copy sources

_COPY_SOURCE_HEADER = "x-amz-copy-source"
_AUTHENTICATED_ATTR = "_apgate_s3_authenticated"

# arn:PARTITION:s3:REGION:ACCOUNT:accesspoint/NAME/object/KEY (also accesspoint:NAME).
# Only plain S3 access points: s3-outposts / s3-object-lambda ARNs do not match.
_AP_OBJECT_ARN = re.compile(
    r"arn:(?P<partition>[^:/]+):s3:(?P<region>[^:/]*):(?P<account>[^:/]+)"
    r":accesspoint[/:](?P<name>[^/:]+)/object/(?P<key>.+)",
    re.DOTALL,
)


@dataclass(frozen=True)
class AccessPointCopySource:
    partition: str
    region: str
    account: str
    name: str
    key: str
    query: str | None  # what followed the first "?", verbatim (e.g. "versionId=XYZ")


def parse_access_point_copy_source(header: str) -> AccessPointCopySource | None:
    """The access point object ARN in an ``x-amz-copy-source`` value, or None if the
    value is not one. Like S3 (and moto), the value is ``urlencode(source)`` optionally
    followed by an unencoded ``?versionId=...``: split at the first ``?``, then decode."""
    path, sep, query = header.partition("?")
    m = _AP_OBJECT_ARN.fullmatch(unquote(path).lstrip("/"))
    if m is None:
        return None
    return AccessPointCopySource(**m.groupdict(), query=query if sep else None)


def bucket_copy_source(bucket: str, key: str, query: str | None) -> str:
    """An ``x-amz-copy-source`` value naming BUCKET/KEY, encoded so that moto's parser
    (``unquote(urlparse(v).path).lstrip("/").split("/", 1)``) yields exactly
    (bucket, key): everything but ``/`` is percent-encoded, so ``?``, ``#``, ``;``, ``%``
    inside the key cannot be taken for query, fragment, params or escapes."""
    value = quote(f"{bucket}/{key}".encode("utf-8"), safe="/")
    return value if query is None else f"{value}?{query}"


def translate_access_point_copy_source(
    header: str, resolve_bucket: Callable[[AccessPointCopySource], str | None]
) -> tuple[AccessPointCopySource | None, str | None]:
    """(parsed ARN, rewritten header). (None, None): not an access point ARN, leave the
    header alone. (parsed, None): an ARN whose access point ``resolve_bucket`` does not
    know. Pure apart from ``resolve_bucket``."""
    parsed = parse_access_point_copy_source(header)
    if parsed is None:
        return None, None
    bucket = resolve_bucket(parsed)
    if bucket is None:
        return parsed, None
    return parsed, bucket_copy_source(bucket, parsed.key, parsed.query)


def moto_access_point_bucket(src: AccessPointCopySource) -> str | None:
    """The bucket of access point src.name in account src.account, from moto's S3 Control
    backend (as S3Response.parse_bucket_name_from_url does for access point hosts);
    None if there is no such access point. Never creates backends for unknown accounts."""
    from moto.s3control import s3control_backends
    from moto.s3control.exceptions import AccessPointNotFound

    if src.account not in s3control_backends:
        return None
    try:
        backend = s3control_backends[src.account][src.partition]
        return backend.get_access_point(src.account, src.name).bucket
    except (KeyError, AccessPointNotFound):
        return None


def install_access_point_copy_source_fix() -> None:
    """Monkeypatch moto's CopyObject / UploadPartCopy handlers to accept access point
    object ARNs as ``x-amz-copy-source`` (see the module docstring)."""
    from werkzeug.datastructures import Headers

    from moto.s3.exceptions import MissingBucket
    from moto.s3.responses import S3Response

    if getattr(S3Response.copy_object, "_apgate_patched", False):
        return

    original_s3_auth = S3Response._authenticate_and_authorize_s3_action

    def _authenticate_and_authorize_s3_action(self: Any, *args: Any, **kwargs: Any) -> None:
        original_s3_auth(self, *args, **kwargs)
        # only reached if moto accepted the request (or auth is not enforced yet)
        setattr(self, _AUTHENTICATED_ATTR, True)

    def with_translated_copy_source(handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        @functools.wraps(handler)
        def wrapper(self: Any) -> Any:
            value = self.headers.get(_COPY_SOURCE_HEADER)
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            if not value:
                return handler(self)
            parsed, translated = translate_access_point_copy_source(value, moto_access_point_bucket)
            if parsed is None:
                return handler(self)
            if not getattr(self, _AUTHENTICATED_ATTR, False):
                raise RuntimeError(
                    f"moto changed: S3Response.{handler.__name__} reached before "
                    "authentication; not rewriting x-amz-copy-source"
                )
            if translated is None:
                raise MissingBucket(
                    f"arn:{parsed.partition}:s3:{parsed.region}:{parsed.account}:accesspoint/{parsed.name}"
                )
            original_headers = self.headers
            view = Headers(original_headers)
            view.set(_COPY_SOURCE_HEADER, translated)
            self.headers = view
            try:
                return handler(self)
            finally:
                self.headers = original_headers

        wrapper._apgate_patched = True  # type: ignore[attr-defined]
        return wrapper

    S3Response._authenticate_and_authorize_s3_action = _authenticate_and_authorize_s3_action  # type: ignore[method-assign]
    S3Response.copy_object = with_translated_copy_source(S3Response.copy_object)  # type: ignore[method-assign]
    S3Response.upload_part_copy = with_translated_copy_source(S3Response.upload_part_copy)  # type: ignore[method-assign]


# ------------------------------------------------------------ what moto executes

def install_exec_log(path: str) -> None:
    """Log every S3 operation moto's backend executes, one JSON line each: the operation (the S3
    API name whose snake_case is the backend method's, from botocore's S3 model), the bucket, the
    key (the destination's, for copies), the copy source, a listing's prefix, DeleteObjects' keys.
    Only the outermost backend call of a thread is logged (one backend method calling another is
    the same operation). For the differential test: what an independent S3 implementation
    executed for a request, to compare with what apgate decided it was."""
    import gzip
    import inspect

    import botocore
    from botocore import xform_name
    from moto.s3.models import S3Backend

    model_path = os.path.join(os.path.dirname(botocore.__file__), "data", "s3", "2006-03-01", "service-2.json.gz")
    with open(model_path, "rb") as f:
        model = json.loads(gzip.decompress(f.read()))
    local = threading.local()
    lock = threading.Lock()
    fh = open(path, "a", encoding="utf-8")

    def name_of(value: Any) -> str | None:
        if value is None:
            return None
        return str(getattr(value, "name", value))

    def wrap(op: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            depth = getattr(local, "depth", 0)
            if depth == 0:
                try:
                    bound = sig.bind(self, *args, **kwargs).arguments
                except TypeError:
                    bound = {}
                entry: dict[str, Any] = {"op": op}
                for arg, field in (("bucket_name", "bucket"), ("dest_bucket_name", "bucket"), ("bucket", "bucket"),
                                   ("key_name", "key"), ("dest_key_name", "key"), ("key", "key"),
                                   ("src_key", "source"), ("src_key_name", "source"), ("prefix", "prefix"),
                                   ("multipart_id", "upload_id")):
                    if arg in bound:
                        entry[field] = name_of(bound[arg])
                if "objects" in bound:
                    entry["objects"] = [o.get("Key") for o in bound["objects"]]
                with lock:
                    fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
                    fh.flush()
            local.depth = depth + 1
            try:
                return fn(self, *args, **kwargs)
            finally:
                local.depth = depth

        return wrapper

    for op in model["operations"]:
        method = xform_name(op)
        fn = getattr(S3Backend, method, None)
        if callable(fn) and not getattr(fn, "_apgate_exec_logged", False):
            wrapped = wrap(op, fn)
            wrapped._apgate_exec_logged = True  # type: ignore[attr-defined]
            setattr(S3Backend, method, wrapped)


_CREDENTIAL_AKID = re.compile(r"Credential=([^/,\s]+)/")
_SIGNATURE = re.compile(r"Signature=([0-9a-f]{64})")


def request_credentials(environ: dict[str, Any]) -> tuple[str | None, bool]:
    """(access key id, whether a session token came along) of a request: from the SigV4
    ``Authorization`` header, else from a presigned URL's ``X-Amz-Credential`` /
    ``X-Amz-Security-Token``. (None, False) when the request names neither."""
    from urllib.parse import parse_qs

    query = parse_qs(environ.get("QUERY_STRING") or "", keep_blank_values=True)
    token = "HTTP_X_AMZ_SECURITY_TOKEN" in environ or "X-Amz-Security-Token" in query
    m = _CREDENTIAL_AKID.search(environ.get("HTTP_AUTHORIZATION") or "")
    if m:
        return m.group(1), token
    cred = (query.get("X-Amz-Credential") or [""])[0]
    if cred:
        return cred.split("/", 1)[0], token
    return None, token


class RequestLogMiddleware:
    """Append one JSON line per request, before moto handles it."""

    def __init__(self, app: Any, path: str):
        self.app = app
        self.lock = threading.Lock()
        self.fh = open(path, "a", encoding="utf-8")

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        entry = {
            "method": environ.get("REQUEST_METHOD"),
            "host": environ.get("HTTP_HOST"),
            "raw_uri": wire_request_target(environ),
            "authorization_present": "HTTP_AUTHORIZATION" in environ,
        }
        access_key_id, token = request_credentials(environ)
        if access_key_id is not None or token:
            # only for requests that name credentials, so unsigned requests log as before
            entry["access_key_id"] = access_key_id
            entry["security_token_present"] = token
            # the SigV4 header signature (what apgate signed upstream): test_zzz_no_secrets.py
            # checks that no apgate log contains one
            m = _SIGNATURE.search(environ.get("HTTP_AUTHORIZATION") or "")
            if m:
                entry["signature"] = m.group(1)
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self.lock:
            self.fh.write(line)
            self.fh.flush()
        return self.app(environ, start_response)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--request-log", help="append one JSON line per request to this file")
    parser.add_argument("--exec-log", help="append one JSON line per S3 operation moto executes to this file")
    parser.add_argument(
        "--without-sigv4-fix",
        action="store_true",
        help="diagnostic only: run moto's stock (buggy) signature check",
    )
    parser.add_argument(
        "--without-copy-source-ap-fix",
        action="store_true",
        help="diagnostic only: moto's stock copy-source parsing (access point ARNs -> NoSuchBucket)",
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("MOTO_PORT", str(args.port))

    from werkzeug.serving import make_server

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    if not args.without_sigv4_fix:
        install_sigv4_raw_uri_fix()
    if not args.without_copy_source_ap_fix:
        install_access_point_copy_source_fix()
    if args.exec_log:
        install_exec_log(args.exec_log)

    app: Any = DomainDispatcherApplication(create_backend_app)
    app.debug = True
    if args.request_log:
        app = RequestLogMiddleware(app, args.request_log)

    # make_server is what werkzeug's run_simple uses; calling it directly lets us say
    # READY only once the socket is bound and listening.
    server = make_server(args.host, args.port, app, threaded=True)

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    print("READY", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
