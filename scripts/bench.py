#!/usr/bin/env python3
"""The side-by-side benchmark behind scripts/bench (stdlib only; run it through scripts/bench).

Everything runs on 127.0.0.1 on this machine, in one run, so the ratios compare like with like:
  upstream  target/<profile>/bench_upstream (bench/: hyper; serves N-byte objects, swallows PUTs)
  nginx     a plain nginx reverse proxy in front of it (keep-alive pool, no signing, no access log;
            1 MiB buffers for the streams)
  bare      target/<profile>/bench_bare_proxy: hyper's server and client as apgate's data plane runs
            them (one event loop per core, a per-thread upstream pool) with nothing of apgate's:
            the floor of apgate's stack (1 KiB phases only)
  apgate    verifying SigV4 inbound and re-signing SigV4 outbound, access log on

Phases: 1 KiB GET and 1 KiB PUT at full speed (wrk, 64 connections; CPU per request of nginx and
apgate from /proc), p99 at half of apgate's saturation rate (bench_client paced: 64 connections on
evenly staggered schedules; the same rate direct, through nginx and through apgate, median of three
interleaved rounds), 64 MiB GET/PUT
throughput (one stream, median of five interleaved rounds, direct vs nginx vs apgate), peak RSS
while streaming 5 GiB each way, RSS with 10,000 idle keep-alive connections (3 s after the last
one's request: apgate parks a connection idle for 0.5-1 s, and its allocator hands pages back 1 s
after they were freed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / "target" / os.environ.get("APGATE_CARGO_PROFILE", "release")  # scripts/lib.sh PROFILE
AKID = "APGBENCHKEY000000001"
SECRET = "bench/secret/key/for/loopback/only/0000"
UPSTREAM_AKID = "AKIDBENCHUPSTREAM001"
UPSTREAM_SECRET = "bench-upstream-secret-key-00000000000000"
BUCKET = "bench-bucket"
GIB = 1 << 30
MIB = 1 << 20

PROCS: list[subprocess.Popen] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    p = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
                         start_new_session=True)
    PROCS.append(p)
    return p


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def mib(kib: int) -> float:
    return kib / 1024


class Apgate:
    def __init__(self, work: Path, upstream_port: int, tag: str):
        self.port, self.admin = free_port(), free_port()
        config = work / f"apgate-{tag}.toml"
        config.write_text(f"""
[admin]
address = "127.0.0.1:{self.admin}"

[server]
# One identity, one source address, up to 10,000 connections: the per-caller defaults are for
# a shared gateway, not for a benchmark.
max_concurrent_requests = 20000
max_concurrent_requests_per_identity = 20000
max_connections = 20000
max_connections_per_source = 20000

[[listeners]]
name = "bench"
address = "127.0.0.1:{self.port}"
identity_methods = ["sigv4"]

[sigv4]
accepted_regions = ["us-east-1"]

[upstream]
region = "us-east-1"
endpoint = {{ mode = "custom", url = "http://127.0.0.1:{upstream_port}" }}

[credentials]
type = "static"
access_key_id = {{ env = "BENCH_UPSTREAM_ACCESS_KEY_ID" }}
secret_access_key = {{ env = "BENCH_UPSTREAM_SECRET_ACCESS_KEY" }}

[[identities]]
name = "bench"
[[identities.keys]]
access_key_id = "{AKID}"
secret_access_key = {{ env = "BENCH_SECRET_ACCESS_KEY" }}

[[routes]]
identity = "bench"
bucket = "{BUCKET}"
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/bench-ap"
""")
        env = dict(os.environ, BENCH_UPSTREAM_ACCESS_KEY_ID=UPSTREAM_AKID,
                   BENCH_UPSTREAM_SECRET_ACCESS_KEY=UPSTREAM_SECRET, BENCH_SECRET_ACCESS_KEY=SECRET)
        env.pop("RUST_LOG", None)
        self.proc = start([str(BIN / "apgate"), "serve", "--config", str(config)], work / f"apgate-{tag}.log", env)
        wait_port(self.port)
        self.pid = self.proc.pid

    def url(self, key: str) -> str:
        return f"http://127.0.0.1:{self.port}/{BUCKET}/{key}"

    def stop(self) -> None:
        stop(self.proc)


def nginx_workers(prefix: Path) -> list[int]:
    master = (prefix / "nginx.pid").read_text().strip()
    out = subprocess.run(["pgrep", "-P", master], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def nginx(work: Path, upstream_port: int) -> tuple[subprocess.Popen, int, int]:
    """nginx on two ports: defaults (the 1 KiB phases) and 1 MiB buffers (the streams)."""
    port, stream_port = free_port(), free_port()
    prefix = work / "nginx"
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    # Streams pass through as they come, as apgate's do: no body size limit, no spooling of
    # request or response bodies to disk.
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_max_temp_file_size 0;
    upstream origin {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    # For the streams: 1 MiB buffers, as apgate's read buffers (with the defaults, 4-8 KiB, nginx
    # moves a 1 GiB stream at half this speed).
    server {{
        listen 127.0.0.1:{stream_port};
        client_body_buffer_size 1m;
        proxy_buffer_size 1m;
        proxy_buffers 8 1m;
        proxy_busy_buffers_size 2m;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
""")
    p = start(["nginx", "-p", str(prefix), "-c", str(conf)], prefix / "stdout.log")
    wait_port(port)
    wait_port(stream_port)
    return p, port, stream_port


def sign(method: str, url: str) -> list[str]:
    env = dict(os.environ, BENCH_ACCESS_KEY_ID=AKID, BENCH_SECRET_ACCESS_KEY=SECRET)
    out = subprocess.run([str(BIN / "bench_client"), "sign", method, url], env=env,
                         check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line]


def to_ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def cpu_ticks(pids: list[int]) -> int:
    """User + system clock ticks of the processes so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def wrk(url: str, headers: list[str], seconds: float, connections: int, script: Path | None = None,
        pids: list[int] | None = None) -> dict:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    if script:
        cmd += ["-s", str(script)]
    before = cpu_ticks(pids or [])
    out = subprocess.run(cmd + [url], check=True, capture_output=True, text=True).stdout
    ticks = cpu_ticks(pids or []) - before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {p: to_ms(v, u) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if errors or socket_errors:
        raise SystemExit(f"wrk against {url} saw errors:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    result = {"rps": rps, "p50_ms": lat["50"], "p99_ms": lat["99"]}
    if pids:
        result["cpu_us"] = ticks * 1e6 / os.sysconf("SC_CLK_TCK") / max(requests, 1)
    return result


def paced(url: str, sign_for: str, seconds: float, connections: int, rate: float) -> dict:
    """Open-loop GETs at `rate` over `connections` connections, their schedules evenly staggered.

    hey's `-q` would do the same rate, but it starts every worker's ticker at once, so its requests
    arrive in bursts of one per connection and the latency measured is mostly the time to drain a
    burst of 64 (docs/PERFORMANCE.md)."""
    env = dict(os.environ, BENCH_ACCESS_KEY_ID=AKID, BENCH_SECRET_ACCESS_KEY=SECRET)
    out = subprocess.run([str(BIN / "bench_client"), "paced", url, f"{rate:.0f}", f"{seconds:g}",
                          str(connections), sign_for], env=env, check=True, capture_output=True, text=True).stdout
    fields = out.split()
    r = {fields[i]: float(fields[i + 1]) for i in range(0, len(fields) - 1, 2)}
    if r["errors"] > 0:
        raise SystemExit(f"paced load against {url} saw errors: {out}")
    return {"rps": r["rps"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "p999_ms": r["p999_ms"],
            "late": int(r["late"]), "requests": int(r["requests"])}


def stream(method: str, url: str, size: int) -> float:
    env = dict(os.environ, BENCH_ACCESS_KEY_ID=AKID, BENCH_SECRET_ACCESS_KEY=SECRET)
    out = subprocess.run([str(BIN / "bench_client"), "stream", method, url, str(size)],
                         env=env, check=True, capture_output=True, text=True).stdout.split()
    return float(out[2])


def metrics_total(admin: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("apgate_requests_total{") and 'status="200"' in line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short points and small sizes (CI: runs to completion)")
    ap.add_argument("--seconds", type=float, help="seconds per load point (default 10, quick 2)")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--out", default=str(REPO / "target" / "bench"), help="where results.md/json and logs go")
    args = ap.parse_args()
    seconds = max(1, round(args.seconds or (2 if args.quick else 10)))  # wrk takes whole seconds
    warmup = 1 if args.quick else 3
    big = 64 * MIB
    huge = 256 * MIB if args.quick else 5 * GIB
    idle_n = 1000 if args.quick else 10_000
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="apgate-bench-"))
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "quick": args.quick, "seconds": seconds,
                     "connections": args.connections, "cpus": os.cpu_count()}
    started = time.time()
    try:
        up_port = free_port()
        start([str(BIN / "bench_upstream"), f"127.0.0.1:{up_port}"], work / "upstream.log")
        wait_port(up_port)
        ngx, ngx_port, ngx_stream_port = nginx(work, up_port)
        bare_port = free_port()
        bare = start([str(BIN / "bench_bare_proxy"), f"127.0.0.1:{bare_port}", f"127.0.0.1:{up_port}"],
                     work / "bare.log")
        wait_port(bare_port)
        gate = Apgate(work, up_port, "load")
        key = "obj/1024"
        targets = {
            "direct": f"http://127.0.0.1:{up_port}/{key}",
            "nginx": f"http://127.0.0.1:{ngx_port}/{key}",
            "apgate": gate.url(key),
        }
        # The same signed header set on every target, so every request has the same size; only
        # apgate checks it.
        headers = sign("GET", targets["apgate"])
        put_headers = sign("PUT", targets["apgate"])
        put_script = work / "put.lua"
        put_script.write_text('wrk.method = "PUT"\nwrk.body = string.rep("x", 1024)\n')
        pids = {"direct": None, "nginx": nginx_workers(work / "nginx"), "bare": [bare.pid], "apgate": [gate.pid]}
        # The 1 KiB phases also measure the bare proxy, between nginx and apgate.
        load_targets = {"direct": targets["direct"], "nginx": targets["nginx"],
                        "bare": f"http://127.0.0.1:{bare_port}/{key}", "apgate": targets["apgate"]}

        load, load_put = {}, {}
        for method, table, hdrs, script in (("GET", load, headers, None), ("PUT", load_put, put_headers, put_script)):
            print(f"== 1 KiB {method}, {args.connections} connections, {seconds:g} s per point (wrk)", flush=True)
            for name, url in load_targets.items():
                wrk(url, hdrs, warmup, args.connections, script)
                table[name] = wrk(url, hdrs, seconds, args.connections, script, pids[name])
                cpu = f"  CPU {table[name]['cpu_us']:.1f} µs/request" if "cpu_us" in table[name] else ""
                print(f"   {name:7} {table[name]['rps']:>10.0f} req/s  p50 {table[name]['p50_ms']:.2f} ms"
                      f"  p99 {table[name]['p99_ms']:.2f} ms{cpu}", flush=True)
        served = metrics_total(gate.admin)
        expected = (load["apgate"]["rps"] + load_put["apgate"]["rps"]) * seconds * 0.9
        if served < expected:
            raise SystemExit(f"apgate's metrics count {served:.0f} requests served; wrk reported more")
        results["load"] = load
        results["load_put"] = load_put

        half = load["apgate"]["rps"] / 2
        paced_rounds = 1 if args.quick else 3
        print(f"== p99 at half of apgate's saturation rate ({half:.0f} req/s, {args.connections} connections, "
              f"staggered schedules, median of {paced_rounds} interleaved rounds)", flush=True)
        # Interleaved rounds, each figure the median of its rounds: one paced point on this
        # machine can move by several milliseconds at p99 with the load generator's luck.
        runs = {name: [] for name in targets}
        for _ in range(paced_rounds):
            for name in targets:
                runs[name].append(paced(targets[name], targets["apgate"], seconds, args.connections, half))
        paced_load = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
        for name, r in paced_load.items():
            print(f"   {name:7} {r['rps']:>10.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms"
                  f"  p99.9 {r['p999_ms']:.2f} ms  (late {r['late']} of {r['requests']})", flush=True)
        results["paced"] = paced_load
        rss_load = status_kib(gate.pid, "VmHWM")
        gate.stop()

        rounds = 1 if args.quick else 5
        print(f"== Streaming: {big // MIB} MiB GET and PUT, one connection, median of {rounds} "
              "(direct, nginx, apgate)", flush=True)
        gate = Apgate(work, up_port, "stream")
        rss_stream_start = status_kib(gate.pid, "VmRSS")
        size_key = f"obj/{big}"
        stream_urls = {
            "direct": f"http://127.0.0.1:{up_port}/{size_key}",
            "nginx": f"http://127.0.0.1:{ngx_stream_port}/{size_key}",
            "apgate": gate.url(size_key),
        }
        streams = {}
        for method in ("GET", "PUT"):
            # Rounds interleave the targets, so a slow moment of the machine hits all three alike.
            runs: dict[str, list[float]] = {name: [] for name in stream_urls}
            for _ in range(rounds):
                for name, url in stream_urls.items():
                    runs[name].append(stream(method, url, big))
            streams[method] = {f"{name}_mib_s": sorted(r)[len(r) // 2] for name, r in runs.items()}
            streams[method]["runs"] = runs
            print(f"   {method}  " + "   ".join(f"{name} {streams[method][f'{name}_mib_s']:8.0f} MiB/s"
                                              for name in stream_urls), flush=True)
        stop(ngx)
        print(f"== Peak RSS streaming {huge // MIB} MiB each way through apgate", flush=True)
        for method in ("GET", "PUT"):
            stream(method, gate.url(f"obj/{huge}"), huge)
        rss_stream_peak = status_kib(gate.pid, "VmHWM")
        print(f"   start {mib(rss_stream_start):.1f} MiB, peak {mib(rss_stream_peak):.1f} MiB", flush=True)
        results["stream"] = streams
        results["rss_stream"] = {"start_mib": mib(rss_stream_start), "peak_mib": mib(rss_stream_peak),
                                 "streamed_mib": 2 * huge // MIB + 2 * big // MIB}
        gate.stop()

        print(f"== RSS with {idle_n} idle keep-alive connections", flush=True)
        gate = Apgate(work, up_port, "idle")
        rss_idle_start = status_kib(gate.pid, "VmRSS")
        env = dict(os.environ, BENCH_ACCESS_KEY_ID=AKID, BENCH_SECRET_ACCESS_KEY=SECRET)
        client = subprocess.Popen([str(BIN / "bench_client"), "idle", gate.url(key), str(idle_n)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        ready = client.stdout.readline().split()
        if ready != ["ready", str(idle_n)]:
            raise SystemExit(f"idle client: {ready}")
        time.sleep(3)
        rss_idle = status_kib(gate.pid, "VmRSS")
        client.stdin.close()
        still = client.stdout.readline().split()
        client.wait(30)
        if still != ["open", str(idle_n)]:
            raise SystemExit(f"apgate closed idle connections before the measurement ended: {still}")
        print(f"   start {mib(rss_idle_start):.1f} MiB, with {idle_n} open {mib(rss_idle):.1f} MiB", flush=True)
        results["rss_idle"] = {"connections": idle_n, "start_mib": mib(rss_idle_start), "open_mib": mib(rss_idle)}
        results["rss_load_peak_mib"] = mib(rss_load)
        gate.stop()
    finally:
        for p in PROCS:
            stop(p)
    results["wall_seconds"] = round(time.time() - started, 1)
    report = render(results)
    print(report)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(report)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def render(r: dict) -> str:
    load, load_put, paced, streams = r["load"], r["load_put"], r["paced"], r["stream"]
    ratio_direct = load["apgate"]["rps"] / load["direct"]["rps"]
    ratio_nginx = load["apgate"]["rps"] / load["nginx"]["rps"]
    put_nginx = load_put["apgate"]["rps"] / load_put["nginx"]["rps"]
    added_p99 = paced["apgate"]["p99_ms"] - paced["direct"]["p99_ms"]
    get_ratio = streams["GET"]["apgate_mib_s"] / streams["GET"]["direct_mib_s"]
    put_ratio = streams["PUT"]["apgate_mib_s"] / streams["PUT"]["direct_mib_s"]
    ngx_get = streams["GET"]["nginx_mib_s"] / streams["GET"]["direct_mib_s"]
    ngx_put = streams["PUT"]["nginx_mib_s"] / streams["PUT"]["direct_mib_s"]
    added_p99_nginx = paced["nginx"]["p99_ms"] - paced["direct"]["p99_ms"]
    big = "64 MiB"

    def cpu(x: dict) -> str:
        return f"{x['cpu_us']:.1f}" if "cpu_us" in x else ""

    def met(ok: bool) -> str:
        return "met" if ok else "**NOT met**"
    lines = [
        f"apgate bench — {r['date']} — {r['cpus']} CPUs — {r['seconds']:g} s per point, "
        f"{r['connections']} connections{' (--quick)' if r['quick'] else ''}",
        "",
        "| target | 1 KiB GET req/s | p50 ms | p99 ms | CPU µs/req | 1 KiB PUT req/s | p50 ms | p99 ms | CPU µs/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("direct", "nginx", "bare", "apgate"):
        if name not in load:
            continue
        x, y = load[name], load_put[name]
        lines.append(f"| {name} | {x['rps']:.0f} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {cpu(x)} "
                     f"| {y['rps']:.0f} | {y['p50_ms']:.2f} | {y['p99_ms']:.2f} | {cpu(y)} |")
    lines += [
        "",
        f"| paced at {paced['apgate']['rps']:.0f} req/s (half of apgate's saturation), "
        f"{r['connections']} connections, staggered | p50 ms | p99 ms | p99.9 ms |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {paced[name]['p50_ms']:.2f} | {paced[name]['p99_ms']:.2f} | {paced[name]['p999_ms']:.2f} |"
          for name in ("direct", "nginx", "apgate")),
        "",
        f"| {big}, one stream (median of {1 if r['quick'] else 5}) | direct MiB/s | nginx MiB/s | apgate MiB/s | nginx/direct | apgate/direct |",
        "|---|---:|---:|---:|---:|---:|",
        f"| GET | {streams['GET']['direct_mib_s']:.0f} | {streams['GET']['nginx_mib_s']:.0f} | "
        f"{streams['GET']['apgate_mib_s']:.0f} | {ngx_get:.2f} | {get_ratio:.2f} |",
        f"| PUT | {streams['PUT']['direct_mib_s']:.0f} | {streams['PUT']['nginx_mib_s']:.0f} | "
        f"{streams['PUT']['apgate_mib_s']:.0f} | {ngx_put:.2f} | {put_ratio:.2f} |",
        "",
        "| apgate RSS | MiB |",
        "|---|---:|",
        f"| at start | {r['rss_stream']['start_mib']:.1f} |",
        f"| peak, streaming {r['rss_stream']['streamed_mib']} MiB | {r['rss_stream']['peak_mib']:.1f} |",
        f"| peak, 1 KiB GET load | {r['rss_load_peak_mib']:.1f} |",
        f"| {r['rss_idle']['connections']} idle keep-alive connections | {r['rss_idle']['open_mib']:.1f} |",
        "",
        "| target | measured | goal | |",
        "|---|---:|---:|---|",
        f"| 1 KiB GET req/s apgate/nginx | {ratio_nginx:.2f}× | ≥ 0.85× | {met(ratio_nginx >= 0.85)} |",
        f"| 1 KiB PUT req/s apgate/nginx | {put_nginx:.2f}× | ≥ 0.85× | {met(put_nginx >= 0.85)} |",
        f"| 1 KiB GET req/s apgate/direct | {ratio_direct:.2f}× | | |",
        *([f"| (bare hyper proxy/nginx: GET, PUT) | {load['bare']['rps'] / load['nginx']['rps']:.2f}×, "
           f"{load_put['bare']['rps'] / load_put['nginx']['rps']:.2f}× | | |",
           f"| CPU µs/request above the bare proxy (apgate's own work): GET, PUT | "
           f"{load['apgate']['cpu_us'] - load['bare']['cpu_us']:.1f}, "
           f"{load_put['apgate']['cpu_us'] - load_put['bare']['cpu_us']:.1f} | | |"]
          if "bare" in load else []),
        f"| p99 added at half saturation | {added_p99:.2f} ms | ≤ 1 ms | {met(added_p99 <= 1.0)} |",
        f"| (p99 added by nginx at the same rate) | {added_p99_nginx:.2f} ms | | |",
        f"| {big} GET apgate/direct | {get_ratio:.2f}× | ≥ 0.85× | {met(get_ratio >= 0.85)} |",
        f"| {big} PUT apgate/direct | {put_ratio:.2f}× | ≥ 0.9× | {met(put_ratio >= 0.9)} |",
        f"| (nginx/direct: GET, PUT) | {ngx_get:.2f}×, {ngx_put:.2f}× | | |",
        f"| peak RSS streaming | {r['rss_stream']['peak_mib']:.1f} MiB | ≤ 64 MiB | "
        f"{met(r['rss_stream']['peak_mib'] <= 64)} |",
        f"| RSS, {r['rss_idle']['connections']} idle connections | {r['rss_idle']['open_mib']:.1f} MiB | ≤ 100 MiB | "
        f"{met(r['rss_idle']['open_mib'] <= 100)} |",
        "",
        f"wall time {r['wall_seconds']} s",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
