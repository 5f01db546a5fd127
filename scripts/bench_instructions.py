#!/usr/bin/env python3
"""Instructions per forwarded 1 KiB request (run it through scripts/bench-instructions).

apgate runs under `valgrind --tool=callgrind --instr-atstart=no` in front of bench_upstream; wrk
(one thread, four connections) sends signed requests for 3 s unmeasured, then instrumentation is
switched on (`callgrind_control -i on`) for SECONDS of the same load and off again; the total
instructions over the requests apgate counted in apgate_requests_total in between is the figure.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the side-by-side bench's helpers: ports, config, signing, wrk)


def main() -> int:
    method = sys.argv[1].upper() if len(sys.argv) > 1 else "GET"
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    if method not in ("GET", "PUT"):
        raise SystemExit("usage: bench_instructions.py [GET|PUT] [SECONDS]")
    out_dir = bench.REPO / "target" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    profile = out_dir / "callgrind.out"
    for old in out_dir.glob("callgrind.out*"):
        old.unlink()
    work = Path(tempfile.mkdtemp(prefix="apgate-instr-"))
    start = bench.start

    def under_valgrind(cmd: list[str], log: Path, env: dict | None = None):
        if Path(cmd[0]).name == "apgate":
            cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                   f"--callgrind-out-file={profile}", *cmd]
        return start(cmd, log, env)

    bench.start = under_valgrind
    try:
        up = bench.free_port()
        start([str(bench.BIN / "bench_upstream"), f"127.0.0.1:{up}"], work / "upstream.log")
        bench.wait_port(up)
        gate = bench.Apgate(work, up, "instructions")
        url = gate.url("obj/1024")
        headers = bench.sign(method, url)
        script = work / "load.lua"
        script.write_text('wrk.method = "PUT"\nwrk.body = string.rep("x", 1024)\n' if method == "PUT" else "")

        def load(duration: int) -> None:
            cmd = ["wrk", "-t1", "-c4", f"-d{duration}s", "-s", str(script)]
            for h in headers:
                cmd += ["-H", h]
            subprocess.run(cmd + [url], check=True, capture_output=True)

        load(3)
        before = bench.metrics_total(gate.admin)
        subprocess.run(["callgrind_control", "-i", "on", str(gate.pid)], check=True, capture_output=True)
        load(seconds)
        subprocess.run(["callgrind_control", "-i", "off", str(gate.pid)], check=True, capture_output=True)
        requests = bench.metrics_total(gate.admin) - before
        subprocess.run(["callgrind_control", "-d", str(gate.pid)], check=True, capture_output=True)
        time.sleep(1)
        dumps = sorted(out_dir.glob("callgrind.out.*"))
        if not dumps or requests <= 0:
            raise SystemExit(f"no profile or no requests (requests {requests:.0f}, dumps {dumps})")
        totals = subprocess.run(["callgrind_annotate", str(dumps[-1])], capture_output=True, text=True).stdout
        total = int(next(line for line in totals.splitlines() if "PROGRAM TOTALS" in line).split()[0].replace(",", ""))
        print(f"{method} 1 KiB: {requests:.0f} requests, {total / requests / 1000:.1f} k instructions per request "
              f"(profile: {dumps[-1]})")
    finally:
        bench.start = start
        for p in bench.PROCS:
            bench.stop(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
