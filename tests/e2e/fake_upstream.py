"""A fast, minimal S3 stand-in for apgate's streaming tests (stdlib only).

It speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) by hand on a
``socketserver.ThreadingTCPServer``:

- PUT: reads the whole body with 1 MiB ``recv_into`` calls and discards it, counting the
  bytes and checking them against the deterministic pattern (see ``pattern_at``); answers
  200 with ``ETag`` and ``x-fake-received-bytes: N`` / ``x-fake-pattern-ok: true|false``.
- GET: streams ``--object-size`` bytes of the pattern in 1 MiB writes, with Content-Length.
- HEAD: the GET headers, no body.
- anything else: 501.

It never checks signatures. Every request is appended to ``--request-log`` as one JSON
line (method, path, Host, Authorization, x-amz-content-sha256, Content-Length, bytes
received/sent, pattern check, duration) once the exchange has finished.

The pattern: byte at absolute offset ``o`` is ``o % 251`` (251 is prime, so it does not line
up with any power-of-two chunking and a dropped, duplicated or reordered chunk shows).

Run: python fake_upstream.py --port 0 --port-file PORTFILE --request-log LOG --object-size N
"""

from __future__ import annotations

import argparse
import json
import socket
import socketserver
import sys
import threading
import time
from pathlib import Path

CHUNK = 1 << 20
PERIOD = 251
# One chunk plus one period, so any offset's next CHUNK bytes are a slice of it.
_PATTERN = bytes(i % PERIOD for i in range(PERIOD)) * ((CHUNK // PERIOD) + 2)
PATTERN = memoryview(_PATTERN)


def pattern_at(offset: int, n: int) -> memoryview:
    """The pattern bytes [offset, offset + n), for n <= CHUNK."""
    s = offset % PERIOD
    return PATTERN[s:s + n]


def pattern_chunks(total: int, chunk: int = CHUNK):
    """Yields the pattern for [0, total) in pieces of at most ``chunk`` (<= CHUNK) bytes."""
    off = 0
    while off < total:
        n = min(chunk, total - off)
        yield pattern_at(off, n)
        off += n


class BadRequest(Exception):
    pass


class Handler(socketserver.BaseRequestHandler):
    server: "Server"

    def setup(self) -> None:
        self.sock: socket.socket = self.request
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
            except OSError:
                pass
        self.buf = bytearray(CHUNK)
        self.view = memoryview(self.buf)
        self.pending = b""  # bytes read past the current request head

    def handle(self) -> None:
        try:
            while self.one_request():
                pass
        except (ConnectionError, BadRequest, socket.timeout, OSError):
            pass

    # ------------------------------------------------------------------ parsing

    def read_head(self) -> bytes | None:
        data = self.pending
        while b"\r\n\r\n" not in data:
            if len(data) > 64 * 1024:
                raise BadRequest("head too large")
            got = self.sock.recv(65536)
            if not got:
                if data:
                    raise BadRequest("EOF inside the request head")
                return None
            data += got
        head, _, rest = data.partition(b"\r\n\r\n")
        self.pending = rest
        return head

    def one_request(self) -> bool:
        head = self.read_head()
        if head is None:
            return False
        started = time.monotonic()
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            raise BadRequest(lines[0]) from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise BadRequest(line)
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"

        record = {
            "method": method,
            "path": target,
            "host": headers.get("host"),
            "authorization": headers.get("authorization"),
            "x-amz-content-sha256": headers.get("x-amz-content-sha256"),
            "x-amz-date": headers.get("x-amz-date"),
            "content-length": headers.get("content-length"),
            "transfer-encoding": headers.get("transfer-encoding"),
            "header_names": sorted(headers),
        }

        if "chunked" in headers.get("transfer-encoding", "").lower():
            # Not needed by the tests: apgate forwards Content-Length bodies as they are.
            self.send_simple(411, b"chunked bodies are not supported by fake_upstream\n", keep_alive=False)
            record.update(status=411)
            self.server.log(record)
            return False

        length = int(headers.get("content-length", "0") or "0")
        received, pattern_ok = self.read_body(length, check=(method == "PUT"))
        record.update(received_bytes=received, pattern_ok=pattern_ok)

        if method == "PUT":
            self.send_head(200, [
                ("ETag", '"fake-etag-%d"' % received),
                ("x-fake-received-bytes", str(received)),
                ("x-fake-pattern-ok", "true" if pattern_ok else "false"),
                ("x-amz-request-id", "FAKE%012d" % self.server.next_id()),
                ("Content-Length", "0"),
            ], keep_alive)
            record.update(status=200, sent_bytes=0)
        elif method in ("GET", "HEAD"):
            size = self.server.object_size
            self.send_head(200, [
                ("ETag", '"fake-object"'),
                ("Content-Type", "application/octet-stream"),
                ("Last-Modified", "Thu, 01 Jan 2026 00:00:00 GMT"),
                ("x-amz-request-id", "FAKE%012d" % self.server.next_id()),
                ("Content-Length", str(size)),
            ], keep_alive)
            sent = 0
            if method == "GET":
                for piece in pattern_chunks(size):
                    self.sock.sendall(piece)
                    sent += len(piece)
            record.update(status=200, sent_bytes=sent)
        else:
            self.send_simple(501, b"fake_upstream: method not implemented\n", keep_alive)
            record.update(status=501)
        record["duration_s"] = round(time.monotonic() - started, 3)
        self.server.log(record)
        return keep_alive

    def read_body(self, length: int, check: bool) -> tuple[int, bool]:
        """Reads and discards exactly ``length`` body bytes; optionally checks the pattern."""
        received = 0
        ok = True
        if self.pending:
            take = self.pending[:length]
            self.pending = self.pending[length:]
            if check and take != bytes(pattern_at(0, len(take))):
                ok = False
            received = len(take)
        view, sock = self.view, self.sock
        while received < length:
            want = min(CHUNK, length - received)
            n = sock.recv_into(view, want)
            if n == 0:
                raise ConnectionError(f"EOF after {received} of {length} body bytes")
            # bytearray.startswith is a zero-copy memcmp of buf[:n] against the pattern.
            if check and ok and not self.buf.startswith(pattern_at(received, n)):
                ok = False
            received += n
        return received, ok

    # ------------------------------------------------------------------ writing

    def send_head(self, status: int, headers: list[tuple[str, str]], keep_alive: bool) -> None:
        reason = {200: "OK", 411: "Length Required", 501: "Not Implemented"}.get(status, "Status")
        out = [f"HTTP/1.1 {status} {reason}", "Server: fake_upstream"]
        out += [f"{k}: {v}" for k, v in headers]
        out.append("Connection: keep-alive" if keep_alive else "Connection: close")
        self.sock.sendall(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))

    def send_simple(self, status: int, body: bytes, keep_alive: bool) -> None:
        self.send_head(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))], keep_alive)
        self.sock.sendall(body)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, object_size: int, request_log: Path | None):
        super().__init__(addr, Handler)
        self.object_size = object_size
        self.request_log = request_log
        self._lock = threading.Lock()
        self._ids = 0

    def next_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids

    def log(self, record: dict) -> None:
        if self.request_log is None:
            return
        line = json.dumps(record, sort_keys=True) + "\n"
        with self._lock, open(self.request_log, "a", encoding="utf-8") as fh:
            fh.write(line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (see --port-file)")
    p.add_argument("--port-file", type=Path, help="written with the bound port once listening")
    p.add_argument("--request-log", type=Path, help="JSON-lines log of the requests seen")
    p.add_argument("--object-size", type=int, default=1 << 30, help="GET body size in bytes (default 1 GiB)")
    args = p.parse_args(argv)

    server = Server((args.host, args.port), args.object_size, args.request_log)
    port = server.server_address[1]
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(args.port_file)
    print(f"fake_upstream listening on {args.host}:{port}, object size {args.object_size}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
