#!/usr/bin/env python3
"""A fake ECS container-credentials endpoint that hands out credentials moto accepts.

    python ecs_credentials_server.py --port PORT --token TOKEN --sts-endpoint http://127.0.0.1:MOTO \
        --role-arn arn:aws:iam::123456789012:role/apgate-task-role [--lifetime 30]

The caller's keys (used to call STS AssumeRole) come from the environment:
ECS_FAKE_STS_ACCESS_KEY_ID, ECS_FAKE_STS_SECRET_ACCESS_KEY. Prints READY (flushed) once listening.

The container-credentials protocol (what AWS SDKs do with AWS_CONTAINER_CREDENTIALS_FULL_URI and
AWS_CONTAINER_AUTHORIZATION_TOKEN): ``GET <uri>`` with ``Authorization: <token>``, answered with
JSON ``{"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}`` (ISO 8601, UTC).

Every credential request (any GET outside /control/) with the right ``Authorization`` calls moto's
STS AssumeRole for --role-arn and returns the session credentials with ``Expiration`` = now +
--lifetime seconds (shorter than the STS session: moto never expires sessions, the client is
meant to rotate on the expiry it was told). A wrong or missing ``Authorization`` gets 401.

Control (no token needed; loopback test fixture):
- ``POST /control/pause?mode=500``: credential requests get 500 (mode ``refuse``: the connection
  is closed without an answer);
- ``POST /control/resume``;
- ``GET /control/stats``: JSON counters: ``served`` (credentials issued), ``unauthorized``,
  ``paused`` (requests refused while paused), ``errors`` (STS failures), ``issued`` (list of
  ``{"access_key_id", "issued_at", "expiration"}``, epoch seconds), ``paused_mode``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import boto3


class State:
    def __init__(self, token: str, lifetime: float, sts, role_arn: str):
        self.token = token
        self.lifetime = lifetime
        self.sts = sts
        self.role_arn = role_arn
        self.lock = threading.Lock()
        self.paused: str | None = None  # None, "500" or "refuse"
        self.served = 0
        self.unauthorized = 0
        self.paused_hits = 0
        self.errors = 0
        self.issued: list[dict] = []

    def stats(self) -> dict:
        with self.lock:
            return {
                "served": self.served,
                "unauthorized": self.unauthorized,
                "paused": self.paused_hits,
                "errors": self.errors,
                "issued": list(self.issued),
                "paused_mode": self.paused,
            }


def iso_utc(epoch: float) -> str:
    return dt.datetime.fromtimestamp(int(epoch), tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_handler(state: State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args) -> None:  # quiet
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if parts.path == "/control/pause":
                mode = (parse_qs(parts.query).get("mode") or ["500"])[0]
                if mode not in ("500", "refuse"):
                    return self._send(400, {"error": f"mode {mode!r}: want 500 or refuse"})
                with state.lock:
                    state.paused = mode
                return self._send(200, {"paused": mode})
            if parts.path == "/control/resume":
                with state.lock:
                    state.paused = None
                return self._send(200, {"paused": None})
            self._send(404, {"error": "not found"})

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/control/stats":
                return self._send(200, state.stats())
            if self.headers.get("Authorization") != state.token:
                with state.lock:
                    state.unauthorized += 1
                return self._send(401, {"code": "Unauthorized", "message": "bad authorization token"})
            with state.lock:
                paused = state.paused
                if paused:
                    state.paused_hits += 1
            if paused == "refuse":
                self.close_connection = True
                return  # no answer: the connection is closed
            if paused == "500":
                return self._send(500, {"code": "InternalError", "message": "paused by the test"})
            try:
                with state.lock:
                    n = state.served + state.errors
                got = state.sts.assume_role(
                    RoleArn=state.role_arn, RoleSessionName=f"ecs-task-{n}", DurationSeconds=3600
                )["Credentials"]
            except Exception as e:  # noqa: BLE001 - report anything STS says
                with state.lock:
                    state.errors += 1
                return self._send(500, {"code": "StsError", "message": str(e)})
            now = time.time()
            expiration = now + state.lifetime
            with state.lock:
                state.served += 1
                state.issued.append(
                    {"access_key_id": got["AccessKeyId"], "issued_at": now, "expiration": int(expiration)}
                )
            self._send(
                200,
                {
                    "Code": "Success",
                    "Type": "AWS-HMAC",
                    "AccessKeyId": got["AccessKeyId"],
                    "SecretAccessKey": got["SecretAccessKey"],
                    "Token": got["SessionToken"],
                    "Expiration": iso_utc(expiration),
                    "LastUpdated": iso_utc(now),
                },
            )

    return Handler


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--sts-endpoint", required=True)
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--role-arn", required=True)
    p.add_argument("--lifetime", type=float, default=30.0, help="seconds until the Expiration handed out")
    args = p.parse_args(argv)

    sts = boto3.client(
        "sts",
        endpoint_url=args.sts_endpoint,
        region_name=args.region,
        aws_access_key_id=os.environ["ECS_FAKE_STS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["ECS_FAKE_STS_SECRET_ACCESS_KEY"],
    )
    state = State(args.token, args.lifetime, sts, args.role_arn)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(state))
    server.daemon_threads = True

    def stop(signum, frame) -> None:
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
