"""apgate's observability kit against the real thing: the Prometheus alert rules
(deploy/prometheus/alerts.yml and their promtool unit tests), the Grafana dashboard
(deploy/grafana/apgate-dashboard.json), docs/METRICS.md, and a real Prometheus scraping apgate.

- promtool checks and unit-tests the rules, and lints apgate's /metrics exposition.
- Every metric the dashboard and the rules use is one apgate documents or exports.
- docs/METRICS.md's table (names, types, labels) equals what a live apgate exports once every family
  has been used. Some families only appear after use, and some only under conditions the shared
  fixture never meets, so that comparison runs against a gateway of its own (``full``): bob signs
  with an assumed role (expiring credentials: the expiry gauge and refresh metrics), the upstream is
  reached through a TCP proxy the test can cut (upstream errors, and the retries of the GET that
  meets them), and the configuration is reloaded
  once successfully and once with a broken file.
- Prometheus (Debian's package; scripts/lib.sh ensure_prometheus) scrapes the ``apgate`` fixture's
  admin port every second with alerts.yml loaded; the counters bob's requests caused show up in its
  HTTP API with the right labels, every rule evaluates cleanly and every dashboard query runs.

Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import yaml  # PyYAML: in the venv through awscli and moto
from botocore.config import Config
from botocore.exceptions import ClientError

import setup_moto
from conftest import (BOB_ACCESS_KEY_ID, BUCKET, REGION, REPO, _readyz, _tail, apgate_bin, apgate_config, apgate_log_env,
                      free_port,
                      register_apgate, stop, wait_port)

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
TARGETS = PROMETHEUS_DIR / "targets.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "apgate-dashboard.json"
METRICS_DOC = REPO / "docs" / "METRICS.md"
NO_RETRIES = {"mode": "standard", "total_max_attempts": 1}

METRIC_TOKEN = re.compile(r"\bapgate_[a-z_]+")
HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not on PATH: scripts/test installs it (scripts/lib.sh ensure_prometheus), "
                    "or apt-get install prometheus")
    return path


def run(cmd: list[str], *, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=stdin, capture_output=True, cwd=cwd, timeout=60)


def output(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout + proc.stderr).decode(errors="replace")


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def s3_client(endpoint: str, access_key_id: str, secret: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id=access_key_id, aws_secret_access_key=secret,
                        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                                      retries=NO_RETRIES, connect_timeout=5, read_timeout=30))


def status_of(call) -> int:
    """The HTTP status of a boto3 call, error or not."""
    try:
        return call()["ResponseMetadata"]["HTTPStatusCode"]
    except ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"]


# ----------------------------------------------------------------------------- exposition and docs

@dataclass
class Family:
    type: str
    labels: set[str]
    samples: list[tuple[str, dict[str, str], float]]


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> dict[str, Family]:
    """Families by name, from `# TYPE` lines; their samples follow them (histogram suffixes included)."""
    families: dict[str, Family] = {}
    current: Family | None = None
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            current = families.setdefault(name, Family(kind.strip(), set(), []))
        elif line and not line.startswith("#"):
            m = _SAMPLE.match(line)
            assert m and current is not None, f"unparsable exposition line: {line!r}"
            labels = dict(_LABEL.findall(m["labels"] or ""))
            current.samples.append((m["name"], labels, float(m["value"])))
            current.labels |= set(labels) - {"le", "quantile"}
    return families


def scrape(admin_url: str) -> str:
    status, body = http_get(f"{admin_url}/metrics")
    assert status == 200, body[:500]
    return body.decode()


def sample(families: dict[str, Family], name: str, **labels) -> float | None:
    fam = families.get(name)
    if fam is None:
        return None
    got = [v for n, l, v in fam.samples if n == name and all(l.get(k) == x for k, x in labels.items())]
    return sum(got) if got else None


@dataclass
class DocRow:
    type: str
    labels: set[str]


def documented() -> dict[str, DocRow]:
    """docs/METRICS.md's table: | `name` | type | `label`, ... | meaning |"""
    rows: dict[str, DocRow] = {}
    for line in METRICS_DOC.read_text().splitlines():
        m = re.match(r"^\|\s*`(apgate_[a-z0-9_]+)`\s*\|\s*([a-z]+)\s*\|([^|]*)\|", line)
        if m:
            assert m[1] not in rows, f"{m[1]} documented twice"
            rows[m[1]] = DocRow(m[2], set(re.findall(r"`(\w+)`", m[3])))
    assert rows, "no metric table found in docs/METRICS.md"
    return rows


def metric_names(text: str) -> set[str]:
    """apgate_* tokens in PromQL, histogram series suffixes stripped to the family name."""
    return {HISTOGRAM_SUFFIX.sub("", t) for t in METRIC_TOKEN.findall(text)}


# ----------------------------------------------------------------------------- promtool: rules

def test_alert_rules_pass_promtool_check():
    result = run([tool("promtool"), "check", "rules", str(ALERTS), str(TARGETS)])
    assert result.returncode == 0, output(result)
    assert output(result).count("SUCCESS") == 2, output(result)


def test_ecs_prometheus_config_passes_promtool_check():
    # the scrape config shipped for ECS (dns_sd_configs over Cloud Map; test_deploy.py checks it
    # against the CloudFormation template) loads both rule files
    result = run([tool("promtool"), "check", "config", str(PROMETHEUS_DIR / "prometheus-ecs.yml")])
    assert result.returncode == 0, output(result)
    assert "SUCCESS: 2 rule files found" in output(result), output(result)


def test_alert_rules_unit_tests_pass():
    result = run([tool("promtool"), "test", "rules", str(ALERTS_TEST)], cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, output(result)
    assert "SUCCESS" in output(result), output(result)


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


def test_every_alert_has_for_severity_and_annotations_and_a_unit_test():
    cases = [t for case in yaml.safe_load(ALERTS_TEST.read_text())["tests"] for t in case.get("alert_rule_test", [])]
    fires = {t["alertname"] for t in cases if t.get("exp_alerts")}
    quiet = {t["alertname"] for t in cases if not t.get("exp_alerts")}
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), names
    for r in rules:
        assert r.get("for"), r["alert"]
        assert r.get("labels", {}).get("severity") in {"critical", "warning", "info"}, r["alert"]
        assert r.get("annotations", {}).get("summary") and r["annotations"].get("description"), r["alert"]
    # every alert has a case where it fires and one where it must not
    assert set(names) == fires == quiet, (set(names), fires, quiet)
    # the two expressions fixed by the alerting spec
    exprs = {r["alert"]: " ".join(r["expr"].split()) for r in rules}
    assert exprs["ApgateCredentialsExpiringSoon"] == "min by (principal) (apgate_credentials_expiry_seconds) < 300"
    # ApgateDown: a target that fails its scrapes, or fewer targets than deploy/prometheus/targets.yml
    # wants (a target that vanished from service discovery): test_apgate_down_catches_a_target_that_vanished...
    assert exprs["ApgateDown"].startswith('up{job="apgate"} == 0 or ('), exprs["ApgateDown"]
    assert "< apgate:expected_targets:min" in exprs["ApgateDown"], exprs["ApgateDown"]


# ----------------------------------------------------------------------------- fixture apgate traffic

@pytest.fixture(scope="module")
def bob(apgate):
    return s3_client(apgate.shared_endpoint, apgate.bob_access_key_id, apgate.bob_secret_access_key)


@pytest.fixture(scope="module")
def some_traffic(apgate, bob):
    """One successful PUT and GET, a 404 from the upstream, an apgate refusal and an auth failure."""
    key = f"Bob/obs-{uuid.uuid4().hex[:8]}.txt"
    assert status_of(lambda: bob.put_object(Bucket=BUCKET, Key=key, Body=b"observable")) == 200
    assert bob.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"observable"
    assert status_of(lambda: bob.get_object(Bucket=BUCKET, Key=key + ".missing")) == 404
    assert status_of(lambda: bob.get_object(Bucket=BUCKET, Key="NotBob/x")) == 403
    stranger = s3_client(apgate.shared_endpoint, "APGTESTNOBODY0000001", secrets.token_urlsafe(30))
    assert status_of(lambda: stranger.get_object(Bucket=BUCKET, Key="Bob/x")) == 403
    return key


def promtool_lint(text: bytes) -> subprocess.CompletedProcess:
    return run([tool("promtool"), "check", "metrics"], stdin=text)


def test_metrics_pass_promtool_lint(apgate, some_traffic):
    curl = run([tool("curl"), "-sSf", f"{apgate.admin_url}/metrics"])
    assert curl.returncode == 0, output(curl)
    assert b"# TYPE apgate_requests_total counter" in curl.stdout
    result = promtool_lint(curl.stdout)
    assert result.returncode == 0 and not output(result).strip(), \
        f"promtool check metrics on apgate's /metrics:\n{output(result)}"


# ----------------------------------------------------------------------------- dashboard

def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict]):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def dashboard_exprs(d: dict) -> list[str]:
    return [t["expr"] for p in all_panels(d["panels"]) for t in p.get("targets", []) if "expr" in t]


def test_dashboard_is_grafana_json_with_variables():
    d = dashboard()
    assert 36 <= d["schemaVersion"] <= 41, d["schemaVersion"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("identity", "access_point"):
        assert variables[name]["type"] == "query", name
        assert "label_values(apgate_requests_total" in variables[name]["definition"], name
    panels = [p for p in all_panels(d["panels"]) if p["type"] != "row"]
    ids = [p["id"] for p in all_panels(d["panels"])]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p.get("targets"), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
    # every requested subject has a panel
    exprs = "\n".join(dashboard_exprs(d))
    for needed in ("sum by (identity) (rate(apgate_requests_total", "sum by (access_point) (rate(apgate_requests_total",
                   'status=~"5.."', 'status=~"4.."', "histogram_quantile(0.5,", "histogram_quantile(0.95,",
                   "histogram_quantile(0.99,", "apgate_request_duration_seconds_bucket",
                   "apgate_upstream_response_duration_seconds_bucket", "apgate_received_bytes_total",
                   "apgate_sent_bytes_total", "apgate_inflight_requests", "sum by (listener, code)",
                   "apgate_upstream_errors_total", "apgate_upstream_responses_total",
                   "apgate_credentials_expiry_seconds", 'result="failure"', "apgate_config_reloads_total",
                   "time() - max by (instance) (apgate_config_last_reload_success_timestamp_seconds",
                   "apgate_build_info",
                   # saturation (issue 17): the process collector, connections, latency by identity
                   "process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
                   "apgate_client_connections{", "apgate_client_connections_closed_total",
                   "apgate_identity_request_duration_seconds_bucket"):
        assert needed in exprs, needed
    # One unit per axis: a panel's queries are all latencies (histogram_quantile, seconds) or none.
    for p in panels:
        kinds = {"histogram_quantile(" in t["expr"] for t in p["targets"]}
        assert len(kinds) == 1, f"{p['title']} mixes seconds with other units"


def test_dashboard_and_alerts_use_only_known_metrics(full):
    exported = set(full.families)  # a gateway that has been through every kind of event (below)
    docs = set(documented())
    d = dashboard()
    used_by_dashboard = metric_names("\n".join(dashboard_exprs(d)))
    used_by_variables = metric_names("\n".join(v.get("definition", "") for v in d["templating"]["list"]))
    used_by_alerts = metric_names("\n".join(r["expr"] for r in alert_rules()))
    problems = []
    for where, used in (("dashboard panels", used_by_dashboard), ("dashboard variables", used_by_variables),
                        ("alert rules", used_by_alerts)):
        for name in sorted(used - docs - exported):
            problems.append(f"{where} use {name}: neither in docs/METRICS.md nor exported by apgate")
    # (whether docs and exports agree with each other is test_metrics_doc_matches_exports' business)
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- docs/METRICS.md vs. a gateway that used everything

class TcpProxy:
    """Forwards 127.0.0.1:port to a target port until cut(): then it stops listening and drops
    every open connection, so the upstream is unreachable (connection refused)."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()
        self.cut_off = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                if self.cut_off:
                    client.close()
                    upstream.close()
                    return
                self.open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self.lock:
            if self.cut_off:
                return
            self.cut_off = True
            conns = list(self.open)
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@dataclass
class Full:
    text: str
    families: dict[str, Family]
    reloads_supported: bool
    log: str


def full_config(moto, admin: int, shared: int, sidecar: int, upstream_port: int) -> str:
    text = apgate_config(admin, shared, sidecar, moto.port)
    upstream = f'url = "http://127.0.0.1:{moto.port}"'
    assert text.count(upstream) == 1, "conftest's [upstream] endpoint changed"
    text = text.replace(upstream, f'url = "http://127.0.0.1:{upstream_port}"')
    bob = 'name = "bob"\n'
    assert text.count(bob) == 1, "conftest's identity bob changed"
    text = text.replace(bob, f'{bob}role_arn = "{setup_moto.role_arn(setup_moto.BOB_ROLE)}"\n')
    return text + f'\n[sts]\nregion = "{REGION}"\nendpoint_url = "{moto.endpoint}"\n'


def wait_for(what: str, check, timeout: float, log=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n{log()}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def full(moto, tmp_path_factory) -> Full:
    """A gateway of its own that has been through every kind of event apgate counts."""
    binary = apgate_bin()
    if not binary.is_file():
        pytest.fail(f"apgate binary not found at {binary} (cargo build --release, or --profile ci as scripts/test)")
    tmp = tmp_path_factory.mktemp("apgate-full")
    proxy = TcpProxy(moto.port)
    ports = {moto.port, proxy.port}
    admin = shared = sidecar = 0
    while len(ports) < 5:
        admin, shared, sidecar = free_port(), free_port(), free_port()
        ports = {moto.port, proxy.port, admin, shared, sidecar}
    config = tmp / "apgate.toml"
    good_config = full_config(moto, admin, shared, sidecar, proxy.port)
    config.write_text(good_config)
    bob_secret = secrets.token_urlsafe(30)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and not k.startswith("APGATE_")}
    env.update({
        "APGATE_UPSTREAM_ACCESS_KEY_ID": moto.access_key_id,
        "APGATE_UPSTREAM_SECRET_ACCESS_KEY": moto.secret_access_key,
        "APGATE_TEST_BOB_SECRET": bob_secret,
        "AWS_EC2_METADATA_DISABLED": "true",
        **apgate_log_env(),
    })
    log_path = tmp / "apgate.log"
    register_apgate(log_path, bob_secret, moto.secret_access_key)
    admin_url = f"http://127.0.0.1:{admin}"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([str(binary), "serve", "-c", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)

    def log() -> str:
        return _tail(log_path, 6000)

    try:
        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"apgate exited with {proc.returncode}:\n{log()}")
            return _readyz(f"{admin_url}/readyz") == 200

        wait_for("apgate /readyz 200", ready, 30, log)
        wait_port(shared, proc, 10, log_path)
        bob = s3_client(f"http://127.0.0.1:{shared}", BOB_ACCESS_KEY_ID, bob_secret)
        key = f"Bob/obs-full-{uuid.uuid4().hex[:8]}.txt"
        # a successful PUT and GET (bob signs with his assumed role: expiring credentials)
        assert status_of(lambda: bob.put_object(Bucket=BUCKET, Key=key, Body=b"full")) == 200, log()
        assert bob.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"full"
        # an upstream S3 error response
        assert status_of(lambda: bob.get_object(Bucket=BUCKET, Key=key + ".missing")) == 404
        # refused by apgate: outside bob's prefix; and an unknown key (auth failure)
        assert status_of(lambda: bob.get_object(Bucket=BUCKET, Key="NotBob/x")) == 403
        stranger = s3_client(f"http://127.0.0.1:{shared}", "APGTESTNOBODY0000001", secrets.token_urlsafe(30))
        assert status_of(lambda: stranger.get_object(Bucket=BUCKET, Key="Bob/x")) == 403

        # configuration reloads (SIGHUP), when this apgate has them: the reload metrics are
        # exported from start-up (the last-success timestamp is set when the configuration loads).
        before = parse_exposition(scrape(admin_url))
        reloads = "apgate_config_last_reload_success_timestamp_seconds" in before
        if reloads:
            config.write_text(good_config + "\n[[listeners]]\nthis is not toml\n")
            proc.send_signal(signal.SIGHUP)
            wait_for("a failed reload to be counted",
                     lambda: (sample(parse_exposition(scrape(admin_url)), "apgate_config_reloads_total",
                                     result="failure") or 0) >= 1, 10, log)
            config.write_text(good_config)
            proc.send_signal(signal.SIGHUP)
            wait_for("a successful reload to be counted",
                     lambda: (sample(parse_exposition(scrape(admin_url)), "apgate_config_reloads_total",
                                     result="success") or 0) >= 1, 10, log)
            assert proc.poll() is None, log()

        # the upstream becomes unreachable: an upstream error
        proxy.cut()
        status = status_of(lambda: bob.get_object(Bucket=BUCKET, Key=key))
        assert status in (502, 503, 504), (status, log())

        text = scrape(admin_url)
        yield Full(text=text, families=parse_exposition(text), reloads_supported=reloads, log=log())
    finally:
        stop(proc)
        proxy.cut()


def test_metrics_doc_matches_exports(full):
    """The names in docs/METRICS.md's table are exactly the families a gateway that saw every kind
    of event exports."""
    docs = set(documented())
    exported = {n for n in full.families if n.startswith("apgate_")}
    problems = [f"{n}: exported by apgate, missing from docs/METRICS.md" for n in sorted(exported - docs)]
    problems += [f"{n}: in docs/METRICS.md, not exported by apgate (after a successful GET, a 404, a "
                 f"refusal, an auth failure, an upstream error and its retries, assumed-role credentials"
                 f"{', config reloads' if full.reloads_supported else ''})" for n in sorted(docs - exported)]
    assert not problems, "\n".join(problems)


def test_metrics_doc_types_and_labels_match_exports(full):
    problems = []
    for name, row in sorted(documented().items()):
        fam = full.families.get(name)
        if fam is None:
            continue  # test_metrics_doc_matches_exports reports it
        if fam.type != row.type:
            problems.append(f"{name}: documented as {row.type}, exported as {fam.type}")
        if fam.labels != row.labels:
            problems.append(f"{name}: documented labels {sorted(row.labels)}, exported {sorted(fam.labels)}")
    assert not problems, "\n".join(problems)


def test_full_exposition_passes_promtool_lint(full):
    """Lint with every family present (the fixture's gateway shows only some)."""
    result = promtool_lint(full.text.encode())
    assert result.returncode == 0 and not output(result).strip(), \
        f"promtool check metrics on apgate's /metrics (all families):\n{output(result)}"


def test_full_gateway_counted_what_it_saw(full):
    f = full.families
    assert sample(f, "apgate_requests_total", identity="bob", operation="GetObject", status="200") >= 1
    assert sample(f, "apgate_requests_total", identity="bob", operation="GetObject", status="404") >= 1
    assert sample(f, "apgate_requests_total", identity="bob", status="403") >= 1
    assert sample(f, "apgate_auth_failures_total", listener="shared", code="InvalidAccessKeyId") >= 1
    assert sample(f, "apgate_upstream_errors_total") >= 1, full.log
    if "apgate_upstream_retries_total" in f:
        assert sample(f, "apgate_upstream_retries_total", reason="connect_error") >= 1, full.log
    assert sample(f, "apgate_credentials_expiry_seconds", principal="identity:bob") > 0
    assert sample(f, "apgate_credential_refreshes_total", principal="identity:bob", result="success") >= 1
    if "apgate_upstream_responses_total" in f:
        assert sample(f, "apgate_upstream_responses_total", status="404", code="NoSuchKey") >= 1
        assert sample(f, "apgate_upstream_responses_total", status="200", code="-") >= 1
    if full.reloads_supported:
        assert sample(f, "apgate_config_reloads_total", result="failure") >= 1
        assert sample(f, "apgate_config_reloads_total", result="success") >= 1
        assert abs(sample(f, "apgate_config_last_reload_success_timestamp_seconds") - time.time()) < 120


# ----------------------------------------------------------------------------- a real Prometheus

@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen
    log: Path

    def api(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params)
        status, body = http_get(f"{self.url}/api/v1/{path}" + (f"?{query}" if query else ""))
        data = json.loads(body)
        assert status == 200 and data.get("status") == "success", (path, params, status, body[:1000])
        return data["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]


@contextlib.contextmanager
def running_prometheus(tmp: Path, scrape_configs: str, rule_files: list[Path], avoid: tuple[int, ...] = ()):
    """A real Prometheus on 127.0.0.1 that scrapes and evaluates every second."""
    port = free_port()
    while port in avoid:
        port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(f"""\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: {json.dumps([str(f) for f in rule_files])}
scrape_configs:
{scrape_configs}""")
    check = run([tool("promtool"), "check", "config", str(config)])
    assert check.returncode == 0, output(check)
    log = tmp / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    prom = Prometheus(url=f"http://127.0.0.1:{port}", proc=proc, log=log)
    try:
        def ready():
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}:\n{_tail(log)}")
            try:
                return http_get(f"{prom.url}/-/ready", timeout=1)[0] == 200
            except OSError:
                return False
        wait_for("prometheus /-/ready", ready, 20, lambda: _tail(log))
        yield prom
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def prometheus(apgate, tmp_path_factory) -> Prometheus:
    scrape = f"""\
  - job_name: apgate
    metrics_path: /metrics
    static_configs:
      - targets: ["127.0.0.1:{apgate.admin_port}"]
"""
    avoid = (apgate.admin_port, apgate.shared_port, apgate.sidecar_port, apgate.moto.port)
    with running_prometheus(tmp_path_factory.mktemp("prometheus"), scrape, [ALERTS], avoid) as prom:
        # the first scrape of apgate
        wait_for("prometheus to scrape apgate (up == 1)",
                 lambda: [r for r in prom.query('up{job="apgate"}') if r["value"][1] == "1"], 15,
                 lambda: _tail(prom.log))
        yield prom


def test_prometheus_sees_bobs_requests(apgate, bob, prometheus):
    wanted = {("PutObject", "200"): 1, ("GetObject", "200"): 3, ("GetObject", "404"): 2, ("HeadObject", "200"): 1}
    before = parse_exposition(scrape(apgate.admin_url))
    base = {k: sample(before, "apgate_requests_total", identity="bob", operation=k[0], status=k[1]) or 0
            for k in wanted}
    key = f"Bob/obs-prom-{uuid.uuid4().hex[:8]}.txt"
    assert status_of(lambda: bob.put_object(Bucket=BUCKET, Key=key, Body=b"scraped")) == 200
    for _ in range(3):
        assert bob.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"scraped"
    for _ in range(2):
        assert status_of(lambda: bob.get_object(Bucket=BUCKET, Key=key + ".missing")) == 404
    assert status_of(lambda: bob.head_object(Bucket=BUCKET, Key=key)) == 200
    expected = {k: base[k] + n for k, n in wanted.items()}

    def seen():
        rows = prometheus.query('apgate_requests_total{identity="bob"}')
        got = {(r["metric"]["operation"], r["metric"]["status"]): float(r["value"][1]) for r in rows}
        return got if all(got.get(k) == v for k, v in expected.items()) else None

    got = wait_for(f"prometheus to report bob's counters {expected}", seen, 20, lambda: _tail(prometheus.log))
    rows = prometheus.query('apgate_requests_total{identity="bob",operation="GetObject",status="200"}')
    assert len(rows) == 1, rows  # one access point for bob in the fixture's configuration
    labels = rows[0]["metric"]
    assert labels["job"] == "apgate" and labels["instance"] == f"127.0.0.1:{apgate.admin_port}", labels
    assert labels["access_point"] != "-", labels
    print(f"\n[prometheus] bob's requests as Prometheus sees them: {got}")


def test_prometheus_evaluates_every_alert_rule(prometheus):
    names = {r["alert"] for r in alert_rules()}

    def evaluated():
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        return rules if {r["name"] for r in rules} == names and all(r.get("lastEvaluation", "").startswith("20")
                                                                     and r["health"] != "unknown" for r in rules) else None

    rules = wait_for("prometheus to evaluate every rule", evaluated, 10, lambda: _tail(prometheus.log))
    bad = [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    firing = [r["name"] for r in rules if r["state"] == "firing"]
    assert not firing, firing  # nothing fires within seconds (every rule has a for:)


def test_every_dashboard_query_runs_in_prometheus(prometheus, some_traffic):
    d = dashboard()
    problems = []
    for expr in dashboard_exprs(d):
        concrete = (expr.replace("$__rate_interval", "1m").replace("$job", ".*")
                    .replace("$identity", ".*").replace("$access_point", ".*"))
        assert "$" not in concrete, expr
        query = urllib.parse.urlencode({"query": concrete})
        status, body = http_get(f"{prometheus.url}/api/v1/query?{query}")
        if status != 200:
            problems.append(f"{expr}: {status} {body[:300]!r}")
    assert not problems, "\n".join(problems)
    # and the panels that must have data do, after the traffic above
    for expr in ('sum by (identity) (rate(apgate_requests_total{job=~".*"}[1m]))',
                 'max by (instance, version) (apgate_build_info{job=~".*"})'):
        wait_for(f"data for {expr}", lambda: prometheus.query(expr), 10, lambda: _tail(prometheus.log))


# ------------------------------------------------------------- a target that vanished
#
# With service discovery (Cloud Map on ECS: deploy/prometheus/prometheus-ecs.yml) a stopped task
# leaves Prometheus' targets: its `up` goes stale instead of 0, and an `up == 0` alert never sees
# it. Here a real Prometheus discovers admin endpoints through a file (file_sd: the same target
# groups with the same `service` label the DNS relabelling gives) with the shipped alerts.yml and
# targets.yml loaded, and ApgateDown's own expression is evaluated as targets come and go.


class FakeAdmin:
    """An admin endpoint whose /metrics answers 200 or, once broken, 500."""

    def __init__(self):
        import http.server

        target = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                body = b'apgate_build_info{version="fake"} 1\n'
                self.send_response(target.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.status = 200
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_apgate_down_catches_a_target_that_vanished_from_service_discovery(tmp_path):
    targets_rules = TARGETS
    minimums = {r["labels"]["service"]: r["expr"] for g in yaml.safe_load(targets_rules.read_text())["groups"]
                for r in g["rules"]}
    assert minimums == {"apgate-shared": "vector(2)", "apgate-sidecar": "vector(1)"}, minimums
    down = next(r["expr"] for r in alert_rules() if r["alert"] == "ApgateDown")
    admins = {name: FakeAdmin() for name in ("shared-a", "shared-b", "sidecar-1")}
    sd = tmp_path / "targets.json"

    def publish(shared: list[str], sidecar: list[str]):
        groups = [{"targets": [admins[n].address for n in shared], "labels": {"service": "apgate-shared"}},
                  {"targets": [admins[n].address for n in sidecar], "labels": {"service": "apgate-sidecar"}}]
        staged = sd.with_suffix(".tmp")
        staged.write_text(json.dumps(groups))
        os.replace(staged, sd)

    scrape = f"""\
  - job_name: apgate
    file_sd_configs:
      - files: [{json.dumps(str(sd))}]
        refresh_interval: 1s
"""
    publish(["shared-a", "shared-b"], ["sidecar-1"])
    try:
        with running_prometheus(tmp_path, scrape, [ALERTS, targets_rules]) as prom:
            def up(service: str) -> dict[str, str]:
                return {r["metric"]["instance"]: r["value"][1] for r in prom.query(f'up{{service="{service}"}}')}

            def settled(shared: set[str], sidecar: set[str], sidecar_up: str = "1"):
                got_shared, got_sidecar = up("apgate-shared"), up("apgate-sidecar")
                return (got_shared == {admins[n].address: "1" for n in shared}
                        and got_sidecar == {admins[n].address: sidecar_up for n in sidecar}
                        and len(prom.query("apgate:expected_targets:min")) == 2)

            def alerting() -> set[tuple]:
                return {(r["metric"].get("service"), r["metric"].get("instance"), r["value"][1])
                        for r in prom.query(down)}

            log = lambda: _tail(prom.log)  # noqa: E731
            wait_for("the first targets to be scraped", lambda: settled({"shared-a", "shared-b"}, {"sidecar-1"}),
                     20, log)
            assert alerting() == set()

            # A task stops and nothing replaces it: no up == 0 anywhere, the service is one short.
            # At the same time a sidecar target still listed answers 500: its instance alerts, and
            # its service (which still has its one target) does not alert a second time. (Prometheus
            # applies discovery changes every 5 s, hence two steps only; promtool's unit tests in
            # alerts_test.yml cover the rolling deploy and the for: 2m.)
            admins["sidecar-1"].status = 500
            publish(["shared-b"], ["sidecar-1"])
            wait_for("shared-a to leave, sidecar-1 to fail", lambda: settled({"shared-b"}, {"sidecar-1"}, "0"), 20, log)
            expect = {("apgate-shared", None, "1"), ("apgate-sidecar", admins["sidecar-1"].address, "0")}
            assert wait_for("ApgateDown's expression", lambda: alerting() == expect, 10, log)
            # and the rule as Prometheus loaded it is pending (it fires after its for: 2m)
            wait_for("ApgateDown pending for apgate-shared",
                     lambda: prom.query('ALERTS{alertname="ApgateDown",alertstate="pending",service="apgate-shared"}'),
                     10, log)

            # every task of a service gone (or DNS answers nothing): 0 targets
            publish(["shared-b"], [])
            wait_for("the sidecar service to empty", lambda: settled({"shared-b"}, set()), 20, log)
            expect = {("apgate-shared", None, "1"), ("apgate-sidecar", None, "0")}
            assert wait_for("ApgateDown for an empty service", lambda: alerting() == expect, 10, log)
    finally:
        for a in admins.values():
            a.close()


# ------------------------------------------------------------- alerts fire on the first failure
#
# An `increase(counter{label="x"}[w]) > 0` alert cannot see a series' first sample: a series
# that appears only when the first failure happens starts at 1 and never "increases" in
# Prometheus' eyes. So every counter series such an alert selects must exist, at 0, on an apgate
# that has done nothing yet, or the rule must catch a series' first sample itself (`unless ...
# offset`). Judged on a real, fresh apgate's /metrics, not on what the rule tests assume.

SERIES_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
INCREASE = re.compile(r'increase\(\s*(apgate_[a-z_]+)\{([^}]*)\}\[')


def exposition_series(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = SERIES_LINE.match(line)
        if m and not line.startswith("#"):
            out.append((m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def selects(matchers: str, labels: dict[str, str]) -> bool:
    for name, op, value in MATCHER.findall(matchers):
        have = labels.get(name, "")
        ok = {"=": have == value, "!=": have != value,
              "=~": re.fullmatch(value, have) is not None, "!~": re.fullmatch(value, have) is None}[op]
        if not ok:
            return False
    return True


@pytest.fixture(scope="module")
def fresh_series(moto, tmp_path_factory) -> list[tuple[str, dict[str, str], float]]:
    """The series of an apgate that has served nothing (its credentials fetched at start)."""
    from test_faults import run_apgate
    with run_apgate(moto, tmp_path_factory.mktemp("fresh")) as gw:
        status, body = http_get(f"http://127.0.0.1:{gw.admin}/metrics")
        assert status == 200
    return exposition_series(body.decode())


def test_every_series_an_increase_alert_selects_exists_at_zero_from_the_start(fresh_series):
    problems, checked = [], 0
    for rule in alert_rules():
        expr = rule["expr"]
        first_sample_clause = "unless" in expr and "offset" in expr
        for name, matchers in INCREASE.findall(expr):
            checked += 1
            found = [(labels, v) for n, labels, v in fresh_series if n == name and selects(matchers, labels)]
            if not found and not first_sample_clause:
                problems.append(f"{rule['alert']}: {name}{{{matchers}}} is not exported by a fresh apgate")
            for labels, v in found:
                if v != 0:
                    problems.append(f"{rule['alert']}: {name}{labels} starts at {v}, not 0")
    assert checked >= 3, "the increase() alerts were not found"
    assert not problems, "\n".join(problems)


def test_the_failure_alerts_fire_on_the_first_failure_of_the_series_apgate_exports(fresh_series, tmp_path):
    """promtool evaluates the rules over the series a fresh apgate really exports (labels as
    scraped, plus job and instance), each failure counter going from its start value up by one."""
    rules = {r["alert"]: r for r in alert_rules()}
    cases = [("ApgateConfigReloadFailed", "apgate_config_reloads_total", ("job", "instance")),
             ("ApgateCredentialRefreshFailures", "apgate_credential_refreshes_total", ("job", "principal"))]
    tests = []
    for alert, family, by in cases:
        series = [(labels, v) for n, labels, v in fresh_series if n == family and labels.get("result") == "failure"]
        assert series, f"{family}{{result=\"failure\"}} is not exported by a fresh apgate"
        input_series, expected = [], []
        for labels, v in series:
            labels = {**labels, "job": "apgate", "instance": "gw:9090"}
            text = ",".join(f'{k}="{val}"' for k, val in sorted(labels.items()))
            # Its value as scraped for 3 minutes, then one failure.
            input_series.append({"series": f"{family}{{{text}}}", "values": f"{v:g} {v:g} {v:g} {v + 1:g}x27"})
            expected.append({"labels": "{" + ",".join(f'{k}="{labels[k]}"' for k in by) + "}", "value": 1})
        tests.append({
            "interval": "1m",
            "input_series": input_series,
            "promql_expr_test": [
                # Before the failure: nothing; after it: the alert's expression holds for each series.
                {"expr": rules[alert]["expr"], "eval_time": "2m", "exp_samples": []},
                {"expr": rules[alert]["expr"], "eval_time": "10m", "exp_samples": expected},
            ],
        })
    path = tmp_path / "first_failure_test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": tests}))
    result = run([tool("promtool"), "test", "rules", str(path)])
    assert result.returncode == 0, output(result) + path.read_text()
