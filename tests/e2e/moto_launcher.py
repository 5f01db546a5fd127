#!/usr/bin/env python3
"""Run moto's server in-process, with a fixed SigV4 check and an optional request log.

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
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Any
from urllib.parse import urlsplit

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
    parser.add_argument(
        "--without-sigv4-fix",
        action="store_true",
        help="diagnostic only: run moto's stock (buggy) signature check",
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("MOTO_PORT", str(args.port))

    from werkzeug.serving import make_server

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    if not args.without_sigv4_fix:
        install_sigv4_raw_uri_fix()

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
