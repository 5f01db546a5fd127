"""The deploy kit, validated offline: deploy/Dockerfile, deploy/ecs/*.json,
deploy/cloudformation/*.yaml, deploy/kubernetes/*.yaml, deploy/config/*.toml and docs/DEPLOY.md.

- cfn-lint passes on every CloudFormation template.
- The ECS task definitions validate against botocore's ``ecs`` RegisterTaskDefinition input shape
  with botocore's own ParamValidator; so do the task definitions inside the template, rendered with
  example values, and they agree with the JSON files.
- The Kubernetes manifests validate against the Kubernetes JSON schemas that kubernetes-validate
  bundles (strict: unknown fields are errors). The ServiceMonitor is a CRD with no bundled schema: it
  is checked against a small strict schema of the fields used here (names from the
  prometheus-operator CRD) and against the Service it selects.
- deploy/config/*.toml pass ``apgate check``; the template's outputs, evaluated for an example
  account and region, are exactly the ARNs the configs use, its policies name the roles and prefixes
  the configs route to, and deploy/config/render.sh (fed those outputs by a stand-in ``aws``)
  writes configs for another account that pass ``apgate check``.
- The Dockerfile, read by BuildKit's own parser (the ``dockerfile`` package): its build command
  (``cargo build --release --locked``; here the lock file is checked with ``cargo tree --locked``
  and the code compiles in the suite's own profile, which keeps release's cfgs), that the build stage copies all
  the build reads, the configs it copies (``apgate check``), its numeric non-root user, its
  ``apgate health`` health check (whose default URL is the configs' admin port; run against a live
  apgate) and its ports. There is no Docker engine on this machine: the image itself is not built.
- docs/DEPLOY.md names only files that exist, template parameters and outputs that exist.

Every check is also shown failing on a deliberately broken copy. Nothing is sent anywhere.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import botocore.session
import botocore.validate
import dockerfile
import jsonschema
import kubernetes_validate
import pytest
import yaml
from cfnlint.decode import cfn_yaml

from conftest import REPO, apgate_bin, apgate_log_env, free_port, register_apgate

DEPLOY = REPO / "deploy"
TEMPLATES = sorted((DEPLOY / "cloudformation").glob("*.yaml"))
REFERENCE = DEPLOY / "cloudformation" / "apgate-reference.yaml"
ECS_TASK_DEFS = sorted((DEPLOY / "ecs").glob("*.json"))
K8S_DIR = DEPLOY / "kubernetes"
CONFIG_DIR = DEPLOY / "config"
SIDECAR_CONFIG = CONFIG_DIR / "apgate.toml"
SHARED_CONFIG = CONFIG_DIR / "apgate-shared.toml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
DEPLOY_DOC = REPO / "docs" / "DEPLOY.md"
RENDER = CONFIG_DIR / "render.sh"
BIN = apgate_bin()
VENV_BIN = Path(sys.executable).parent

# The example account and region the committed files use, and another one to render for.
EXAMPLE = {"account": "123456789012", "region": "us-east-1", "stack": "apgate-reference"}
OTHER = {"account": "111122223333", "region": "eu-west-1", "stack": "apgate-prod"}
# Values for the env secrets a config names, for `apgate check` only.
DUMMY_ENV = {"APGATE_BOB_SECRET": "dummy-secret-for-apgate-check-0000000000"}
# Kubernetes versions validated against: the oldest with the preStop sleep action, and the newest bundled.
K8S_VERSIONS = ["1.30", kubernetes_validate.utils.latest_version()]


# ------------------------------------------------------------------------------------------ helpers


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout, **kw)


def apgate_check(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    if not BIN.exists():
        pytest.fail(f"{BIN} missing: build it first (cargo build --release, or --profile ci as scripts/test)")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APGATE_")}
    return subprocess.run(
        [str(BIN), "check", "-c", str(path)], env={**clean, **(env or {})}, capture_output=True, text=True, timeout=60
    )


def load_template(path: Path) -> dict:
    """The template as data; intrinsic functions stay as {"Ref": ...}, {"Fn::Sub": ...} etc."""
    return cfn_yaml.loads(path.read_text(), str(path))


def toml_env_secrets(cfg: dict) -> set[str]:
    """Every environment variable a config reads a secret from."""
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if set(node) == {"env"} and isinstance(node["env"], str):
                found.add(node["env"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(cfg)
    return found


class Cfn:
    """Evaluates a template's intrinsic functions for given parameters and pseudo parameters, enough
    to see the names and ARNs a deployed stack would have (Ref, Fn::Sub, Fn::GetAtt, Fn::If,
    Fn::Join, Fn::Not/Equals in conditions)."""

    def __init__(self, template: dict, account: str, region: str, stack: str, params: dict[str, str]):
        self.t = template
        self.account, self.region, self.stack = account, region, stack
        self.params = {}
        for name, p in template.get("Parameters", {}).items():
            if name in params:
                self.params[name] = params[name]
            elif "Default" in p:
                self.params[name] = p["Default"]
            else:
                raise KeyError(f"parameter {name} has no default: give it")
            if p.get("Type", "").startswith("List<") or p.get("Type") == "CommaDelimitedList":
                v = self.params[name]
                self.params[name] = v if isinstance(v, list) else [x for x in str(v).split(",") if x]
        self.pseudo = {
            "AWS::AccountId": account,
            "AWS::Region": region,
            "AWS::Partition": "aws",
            "AWS::StackName": stack,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": None,
        }
        self.conditions = {n: self.eval(c) for n, c in template.get("Conditions", {}).items()}

    def resource(self, name: str) -> dict:
        return self.t["Resources"][name]

    def ref(self, name: str):
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.params:
            return self.params[name]
        res = self.resource(name)
        props = res.get("Properties", {})
        kind = res["Type"]
        if kind == "AWS::S3::Bucket":
            return self.eval(props["BucketName"])
        if kind == "AWS::S3::AccessPoint":
            return self.eval(props["Name"])
        if kind == "AWS::IAM::Role":
            return self.eval(props["RoleName"]) if "RoleName" in props else f"{self.stack}-{name}-EXAMPLE"
        if kind == "AWS::SecretsManager::Secret":
            return f"arn:aws:secretsmanager:{self.region}:{self.account}:secret:{self.eval(props['Name'])}-AbCdEf"
        if kind == "AWS::Logs::LogGroup":
            return self.eval(props["LogGroupName"])
        if kind == "AWS::ECR::Repository":
            return self.eval(props["RepositoryName"])
        return f"{name}-EXAMPLE"

    def get_att(self, name: str, attr: str):
        res = self.resource(name)
        kind = res["Type"]
        if (kind, attr) == ("AWS::S3::Bucket", "Arn"):
            return f"arn:aws:s3:::{self.ref(name)}"
        if (kind, attr) == ("AWS::S3::AccessPoint", "Arn"):
            return f"arn:aws:s3:{self.region}:{self.account}:accesspoint/{self.ref(name)}"
        if (kind, attr) == ("AWS::IAM::Role", "Arn"):
            path = self.eval(res.get("Properties", {}).get("Path", "/"))
            return f"arn:aws:iam::{self.account}:role{path}{self.ref(name)}"
        if (kind, attr) == ("AWS::ECR::Repository", "RepositoryUri"):
            return f"{self.account}.dkr.ecr.{self.region}.amazonaws.com/{self.ref(name)}"
        return f"{name}.{attr}-EXAMPLE"

    def sub(self, text: str, variables: dict) -> str:
        def one(m: re.Match) -> str:
            var = m.group(1)
            if var in variables:
                return str(self.eval(variables[var]))
            if "." in var and var.split(".")[0] in self.t["Resources"]:
                return str(self.get_att(*var.split(".", 1)))
            return str(self.ref(var))

        return re.sub(r"\$\{([^}!]+)\}", one, text)

    def eval(self, node):
        if isinstance(node, list):
            return [self.eval(x) for x in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::Sub":
                return self.sub(arg, {}) if isinstance(arg, str) else self.sub(arg[0], arg[1])
            if key == "Fn::GetAtt":
                parts = arg.split(".", 1) if isinstance(arg, str) else arg
                return self.get_att(parts[0], parts[1])
            if key == "Fn::If":
                return self.eval(arg[1] if self.conditions[arg[0]] else arg[2])
            if key == "Fn::Join":
                return arg[0].join(str(x) for x in self.eval(arg[1]))
            if key == "Fn::Equals":
                a, b = self.eval(arg)
                return a == b
            if key == "Fn::Not":
                return not self.eval(arg[0])
            if key == "Condition":
                return self.conditions[arg]
        return {k: self.eval(v) for k, v in node.items()}

    def outputs(self) -> dict[str, str]:
        out = {}
        for name, o in self.t.get("Outputs", {}).items():
            if "Condition" in o and not self.conditions[o["Condition"]]:
                continue
            out[name] = self.eval(o["Value"])
        return out

    def properties(self, name: str) -> dict:
        return self.eval(self.resource(name).get("Properties", {}))


def network_params(**extra) -> dict[str, str]:
    return {
        "BucketName": "example-apgate-reference-bucket",
        "VpcId": "vpc-0123456789abcdef0",
        "VpcCidr": "10.0.0.0/16",
        "PrivateSubnetIds": "subnet-0123456789abcdef0,subnet-0123456789abcdef1",
        "PrivateRouteTableIds": "rtb-0123456789abcdef0,rtb-0123456789abcdef1",
        "ApgateImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/apgate:v1",
        **extra,
    }


def example_stack(which: dict = EXAMPLE) -> Cfn:
    return Cfn(load_template(REFERENCE), which["account"], which["region"], which["stack"], network_params())


# ------------------------------------------------------------------------------------ CloudFormation


def cfn_lint(path: Path) -> subprocess.CompletedProcess:
    return run([str(VENV_BIN / "cfn-lint"), "--format", "parseable", str(path)], timeout=120)


def test_there_are_templates():
    assert REFERENCE in TEMPLATES


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_cfn_lint_passes(template: Path):
    r = cfn_lint(template)
    assert r.returncode == 0, f"cfn-lint {template.name}:\n{r.stdout}{r.stderr}"


def test_cfn_lint_fails_on_a_broken_copy(tmp_path: Path):
    text = REFERENCE.read_text()
    anchor = "      BucketName: !Ref BucketName\n"
    assert anchor in text
    broken = tmp_path / "broken.yaml"
    # A property AWS::S3::Bucket does not have, and a Ref to a parameter that does not exist.
    broken.write_text(
        text.replace(anchor, anchor + "      BucketNmae: typo\n").replace(
            "VpcId: !Ref VpcId", "VpcId: !Ref VpcIdentifier", 1
        )
    )
    r = cfn_lint(broken)
    assert r.returncode != 0, r.stdout
    assert "BucketNmae" in r.stdout and "VpcIdentifier" in r.stdout, r.stdout


def test_template_policies_grant_what_the_configs_route():
    """The stack and the configs describe the same access: each route's access point has a policy
    naming the role apgate assumes for that route's identity, for that route's prefix and
    operations; that role trusts the task role of the service running that config, which may
    assume it; the bucket delegates to access points; the endpoint policy allows both kinds of ARN."""
    cfn = example_stack()
    resources = cfn.t["Resources"]
    ap_by_arn = {
        cfn.get_att(n, "Arn"): n for n, r in resources.items() if r["Type"] == "AWS::S3::AccessPoint"
    }
    role_by_arn = {cfn.get_att(n, "Arn"): n for n, r in resources.items() if r["Type"] == "AWS::IAM::Role"}
    # Which task definition runs which config (APGATE_CONFIG in the image: /etc/apgate/<file>).
    task_for_config = {}
    for n, r in resources.items():
        if r["Type"] != "AWS::ECS::TaskDefinition":
            continue
        props = cfn.properties(n)
        for c in props["ContainerDefinitions"]:
            for e in c.get("Environment", []):
                if e["Name"] == "APGATE_CONFIG":
                    task_for_config[Path(e["Value"]).name] = props
    assert set(task_for_config) == {SIDECAR_CONFIG.name, SHARED_CONFIG.name}

    action_for_class = {"read": "s3:GetObject", "write": "s3:PutObject", "delete": "s3:DeleteObject", "list": "s3:ListBucket"}
    for config_path in (SIDECAR_CONFIG, SHARED_CONFIG):
        cfg = tomllib.loads(config_path.read_text())
        identities = {i["name"]: i for i in cfg["identities"]}
        task = task_for_config[config_path.name]
        for route in cfg["routes"]:
            where = f"{config_path.name} route {route['identity']} {route['prefix']!r}"
            ap = ap_by_arn.get(route["access_point"])
            assert ap, f"{where}: {route['access_point']} is not an access point of the stack ({sorted(ap_by_arn)})"
            role_arn = identities[route["identity"]]["role_arn"]
            role = role_by_arn.get(role_arn)
            assert role, f"{where}: role {role_arn} is not a role of the stack"
            ap_arn = route["access_point"]
            statements = cfn.properties(ap)["Policy"]["Statement"]
            granted = set()
            for s in statements:
                assert s["Principal"] == {"AWS": role_arn}, f"{where}: {ap}'s policy names {s['Principal']}"
                actions = [s["Action"]] if isinstance(s["Action"], str) else s["Action"]
                if s["Resource"] == f"{ap_arn}/object/{route['prefix']}*":
                    granted |= {a for a in actions if a != "s3:ListBucket"}
                elif s["Resource"] == ap_arn:
                    assert s["Condition"] == {"StringLike": {"s3:prefix": f"{route['prefix']}*"}}, where
                    granted |= set(actions)
                else:
                    pytest.fail(f"{where}: {ap}'s policy grants {s['Resource']}, not the route's prefix")
            wanted = {action_for_class[c] for c in route.get("operations", list(action_for_class))}
            assert wanted <= granted, f"{where}: {ap}'s policy lacks {wanted - granted}"
            # The caller role trusts the task role of the service that runs this config...
            trust = cfn.properties(role)["AssumeRolePolicyDocument"]["Statement"]
            trusted = trust[0]["Principal"]["AWS"]
            trusted = trusted if isinstance(trusted, list) else [trusted]
            assert task["TaskRoleArn"] in trusted, f"{where}: {role} does not trust {task['TaskRoleArn']}"
            # ...and that task role may assume it.
            task_role = role_by_arn[task["TaskRoleArn"]]
            stmts = [s for p in cfn.properties(task_role)["Policies"] for s in p["PolicyDocument"]["Statement"]]
            assert any(s["Action"] == "sts:AssumeRole" and s["Resource"] == role_arn for s in stmts), where
            # The task definition provides every env secret the config reads.
            env_names = {
                e["Name"] for c in task["ContainerDefinitions"] for e in c.get("Environment", []) + c.get("Secrets", [])
            }
            assert toml_env_secrets(cfg) <= env_names, f"{config_path.name}: secrets not provided by its task"

    # Delegation to the account's access points.
    bucket_policy = cfn.properties("BucketPolicy")["PolicyDocument"]["Statement"]
    assert any(
        s["Effect"] == "Allow"
        and s["Principal"] == {"AWS": "*"}
        and s.get("Condition", {}).get("StringEquals", {}).get("s3:DataAccessPointAccount") == EXAMPLE["account"]
        and s["Condition"].get("StringLike", {}).get("s3:DataAccessPointArn")
        == f"arn:aws:s3:{EXAMPLE['region']}:{EXAMPLE['account']}:accesspoint/*"
        for s in bucket_policy
    ), bucket_policy
    # The gateway endpoint allows the access points and the bucket.
    endpoint = cfn.properties("S3GatewayEndpoint")["PolicyDocument"]["Statement"]
    allowed = {r for s in endpoint if s["Effect"] == "Allow" for r in s["Resource"] if isinstance(s["Resource"], list)}
    bucket_arn = cfn.get_att("Bucket", "Arn")
    for ap_arn in ap_by_arn:
        assert {ap_arn, f"{ap_arn}/object/*"} <= allowed
    assert {bucket_arn, f"{bucket_arn}/*"} <= allowed
    # The VPC-origin access point is the sidecar's, and it is in the stack's VPC.
    app_cfg = tomllib.loads(SIDECAR_CONFIG.read_text())
    app_ap = ap_by_arn[app_cfg["routes"][0]["access_point"]]
    assert cfn.properties(app_ap)["VpcConfiguration"]["VpcId"] == cfn.params["VpcId"]


def test_template_outputs_are_the_configs_arns():
    """Evaluated for the example account and region, the outputs render.sh reads are exactly the
    values in deploy/config/*.toml (so render.sh's replacements cover every stack-specific value)."""
    out = example_stack().outputs()
    sidecar = tomllib.loads(SIDECAR_CONFIG.read_text())
    shared = tomllib.loads(SHARED_CONFIG.read_text())
    assert out["Region"] == sidecar["upstream"]["region"] == shared["upstream"]["region"]
    assert out["AppAccessPointArn"] == sidecar["routes"][0]["access_point"]
    assert out["AppCallerRoleArn"] == sidecar["identities"][0]["role_arn"]
    assert out["BobAccessPointArn"] == shared["routes"][0]["access_point"]
    assert out["BobCallerRoleArn"] == shared["identities"][0]["role_arn"]
    render = RENDER.read_text()
    for key in ("Region", "AppAccessPointArn", "AppCallerRoleArn", "BobAccessPointArn", "BobCallerRoleArn"):
        assert f"output {key}" in render, f"render.sh does not read {key}"
        if key != "Region":
            assert f"'{out[key]}'" in render, f"render.sh does not replace the example {key} {out[key]}"


PROMETHEUS_ECS = DEPLOY / "prometheus" / "prometheus-ecs.yml"
PROMETHEUS_TARGETS = DEPLOY / "prometheus" / "targets.yml"


def relabel(rule: dict, labels: dict[str, str]) -> dict[str, str]:
    """One Prometheus relabel_config of the default `replace` action (anchored RE2 regex)."""
    assert rule.get("action", "replace") == "replace", rule
    value = rule.get("separator", ";").join(labels.get(n, "") for n in rule["source_labels"])
    m = re.fullmatch(rule.get("regex", "(.*)"), value)
    if m:
        labels = {**labels, rule["target_label"]: m.expand(rule.get("replacement", "$1").replace("$", "\\"))}
    return labels


def test_every_ecs_service_registers_its_admin_port_where_prometheus_looks():
    """Each ECS service of the reference stack registers its tasks' admin port in Cloud Map (SRV), the
    shipped scrape config asks exactly those names, labels each target with its service, and
    targets.yml holds each service's minimum (its desired count) for ApgateDown."""
    cfn = example_stack()
    resources = cfn.t["Resources"]
    scrape = yaml.safe_load(PROMETHEUS_ECS.read_text())
    [job] = [j for j in scrape["scrape_configs"] if j["job_name"] == "apgate"]
    assert set(scrape["rule_files"]) == {"alerts.yml", "targets.yml"}, scrape["rule_files"]
    asked = {name for sd in job["dns_sd_configs"] for name in sd["names"]}
    assert all(sd["type"] == "SRV" for sd in job["dns_sd_configs"]), job  # the port comes from the answer
    minimums = {r["labels"]["service"]: int(re.fullmatch(r"vector\((\d+)\)", r["expr"]).group(1))
                for g in yaml.safe_load(PROMETHEUS_TARGETS.read_text())["groups"] for r in g["rules"]
                if r["record"] == "apgate:expected_targets:min" and r["labels"]["job"] == "apgate"}

    def referenced(node) -> str:
        (key, arg), = node.items()
        return {"Ref": lambda: arg, "Fn::GetAtt": lambda: arg.split(".")[0] if isinstance(arg, str) else arg[0]}[key]()

    services = [n for n, r in resources.items() if r["Type"] == "AWS::ECS::Service"]
    assert len(services) == 2, services
    registered = {}
    for name in services:
        raw = resources[name]["Properties"]
        props = cfn.properties(name)
        [registry] = raw.get("ServiceRegistries") or pytest.fail(f"{name} registers nowhere: Prometheus cannot find it")
        discovery = referenced(registry["RegistryArn"])
        assert resources[discovery]["Type"] == "AWS::ServiceDiscovery::Service", discovery
        d = cfn.properties(discovery)
        assert [r["Type"] for r in d["DnsConfig"]["DnsRecords"]] == ["SRV"], d
        assert d["DnsConfig"]["RoutingPolicy"] == "MULTIVALUE", d  # every task, not one at random
        assert "HealthCheckCustomConfig" in d, d  # ECS reports the tasks' health
        namespace = referenced(resources[discovery]["Properties"]["NamespaceId"])
        assert resources[namespace]["Type"] == "AWS::ServiceDiscovery::PrivateDnsNamespace", namespace
        ns = cfn.properties(namespace)
        assert ns["Vpc"] == cfn.params["VpcId"], ns
        srv_name = f"{d['Name']}.{ns['Name']}"

        # the registered port is the admin port of the apgate container, where its config listens
        task_def = cfn.properties(referenced(raw["TaskDefinition"]))
        [container] = [c for c in task_def["ContainerDefinitions"] if c["Name"] == registry["ContainerName"]]
        assert registry["ContainerName"] == "apgate", registry
        admin_ports = [p["ContainerPort"] for p in container["PortMappings"] if p.get("Name") == "admin"]
        assert admin_ports == [registry["ContainerPort"]], (name, container["PortMappings"], registry)
        config_path = next(e["Value"] for e in container["Environment"] if e["Name"] == "APGATE_CONFIG")
        admin = tomllib.loads((CONFIG_DIR / Path(config_path).name).read_text())["admin"]["address"]
        assert admin == f"0.0.0.0:{registry['ContainerPort']}", (config_path, admin)
        # and the task's security group lets the VPC (where Prometheus runs) reach it
        groups = props["NetworkConfiguration"]["AwsvpcConfiguration"]["SecurityGroups"]
        ingress = [rule for g in groups for rule in cfn.properties(g.removesuffix("-EXAMPLE"))["SecurityGroupIngress"]]
        assert any(r["FromPort"] <= registry["ContainerPort"] <= r["ToPort"] and r["CidrIp"] == cfn.params["VpcCidr"]
                   for r in ingress), (name, ingress)

        # what Prometheus makes of this service's targets: job apgate, service = the Cloud Map service
        labels = {"__meta_dns_name": srv_name, "__meta_dns_srv_record_target": f"0123456789abcdef.{srv_name}."}
        for rule in job["relabel_configs"]:
            labels = relabel(rule, labels)
        assert labels["service"] == d["Name"], labels
        assert labels["task"] == "0123456789abcdef", labels
        # and ApgateDown's minimum for it is the service's desired count
        assert minimums.get(d["Name"]) == int(props["DesiredCount"]), (d["Name"], minimums, props["DesiredCount"])
        assert minimums[d["Name"]] <= 8, "a DNS answer carries at most 8 records"
        registered[d["Name"]] = srv_name
    assert asked == set(registered.values()), (asked, registered)
    assert set(minimums) == set(registered), (minimums, registered)
    assert set(cfn.outputs()["PrometheusDnsSdNames"].split(",")) == asked


def fake_aws(tmp_path: Path, outputs: dict[str, str]) -> dict[str, str]:
    """A stand-in `aws` for render.sh: answers describe-stacks with the given outputs, as the real
    CLI prints `--query 'Stacks[0].Outputs[].[OutputKey,OutputValue]' --output text`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    script = bin_dir / "aws"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "args = sys.argv[1:]\n"
        "assert args[:2] == ['cloudformation', 'describe-stacks'], args\n"
        "assert args[args.index('--stack-name') + 1] == " + repr(OTHER["stack"]) + ", args\n"
        "assert args[args.index('--output') + 1] == 'text', args\n"
        "assert args[args.index('--query') + 1] == 'Stacks[0].Outputs[].[OutputKey,OutputValue]', args\n"
        f"for k, v in json.load(open({str(tmp_path / 'outputs.json')!r})).items():\n"
        "    print(f'{k}\\t{v}')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_render_writes_configs_for_another_account(tmp_path: Path):
    cfn = Cfn(load_template(REFERENCE), OTHER["account"], OTHER["region"], OTHER["stack"], network_params())
    outputs = cfn.outputs()
    env = fake_aws(tmp_path, outputs)
    out_dir = tmp_path / "rendered"
    r = run(["sh", str(RENDER), OTHER["stack"], str(out_dir)], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in (SIDECAR_CONFIG.name, SHARED_CONFIG.name):
        settings = "\n".join(l for l in (out_dir / name).read_text().splitlines() if not l.lstrip().startswith("#"))
        assert EXAMPLE["account"] not in settings and EXAMPLE["region"] not in settings, settings
        c = apgate_check(out_dir / name, DUMMY_ENV)
        assert c.returncode == 0, c.stdout + c.stderr
    sidecar = tomllib.loads((out_dir / SIDECAR_CONFIG.name).read_text())
    shared = tomllib.loads((out_dir / SHARED_CONFIG.name).read_text())
    assert sidecar["upstream"]["region"] == shared["upstream"]["region"] == OTHER["region"]
    assert sidecar["routes"][0]["access_point"] == outputs["AppAccessPointArn"]
    assert sidecar["identities"][0]["role_arn"] == outputs["AppCallerRoleArn"]
    assert shared["routes"][0]["access_point"] == outputs["BobAccessPointArn"]
    assert shared["identities"][0]["role_arn"] == outputs["BobCallerRoleArn"]
    # Everything else is the committed config, unchanged.
    for committed in (SIDECAR_CONFIG, SHARED_CONFIG):
        rendered = (out_dir / committed.name).read_text().splitlines()
        differ = [a for a, b in zip(committed.read_text().splitlines(), rendered) if a != b]
        assert len(rendered) == len(committed.read_text().splitlines())
        assert all("123456789012" in a or a.startswith("region = ") for a in differ), differ


def test_render_refuses_a_stack_without_the_outputs(tmp_path: Path):
    outputs = Cfn(load_template(REFERENCE), OTHER["account"], OTHER["region"], OTHER["stack"], network_params()).outputs()
    del outputs["BobCallerRoleArn"]
    r = run(["sh", str(RENDER), OTHER["stack"], str(tmp_path / "rendered")], env=fake_aws(tmp_path, outputs))
    assert r.returncode != 0 and "BobCallerRoleArn" in r.stderr, r.stdout + r.stderr
    assert not (tmp_path / "rendered").exists()


# ------------------------------------------------------------------------------------------------ ECS


def ecs_input_shape():
    model = botocore.session.get_session().get_service_model("ecs")
    return model.operation_model("RegisterTaskDefinition").input_shape


def ecs_problems(task_def: dict) -> str:
    report = botocore.validate.ParamValidator().validate(task_def, ecs_input_shape())
    return report.generate_report() if report.has_errors() else ""


def test_there_are_task_definitions():
    names = {p.name for p in ECS_TASK_DEFS}
    assert {"sidecar-task-definition.json", "shared-service-task-definition.json"} <= names


@pytest.mark.parametrize("path", ECS_TASK_DEFS, ids=lambda p: p.name)
def test_ecs_task_definition_validates(path: Path):
    task = json.loads(path.read_text())
    assert ecs_problems(task) == ""
    assert task["networkMode"] == "awsvpc" and task["taskRoleArn"] and task["executionRoleArn"]
    containers = {c["name"]: c for c in task["containerDefinitions"]}
    apgate = containers["apgate"]
    assert apgate["healthCheck"]["command"] == ["CMD", "/usr/local/bin/apgate", "health"]
    assert apgate["logConfiguration"]["logDriver"] == "awslogs"
    assert apgate["readonlyRootFilesystem"] is True and apgate["portMappings"]
    assert all(c["logConfiguration"]["logDriver"] == "awslogs" for c in containers.values())
    # The config it selects is one the image carries, and the task provides the secrets it reads.
    env = {e["name"]: e["value"] for e in apgate.get("environment", [])}
    config = CONFIG_DIR / Path(env["APGATE_CONFIG"]).name
    assert env["APGATE_CONFIG"] == f"/etc/apgate/{config.name}" and config.exists()
    provided = set(env) | {s["name"] for s in apgate.get("secrets", [])}
    assert toml_env_secrets(tomllib.loads(config.read_text())) <= provided
    # Admin port (and, for a non-loopback data listener, the data port) are mapped.
    cfg = tomllib.loads(config.read_text())
    ports = {m["containerPort"] for m in apgate["portMappings"]}
    assert int(cfg["admin"]["address"].rsplit(":", 1)[1]) in ports
    for listener in cfg["listeners"]:
        host, port = listener["address"].rsplit(":", 1)
        if not host.startswith("127."):
            assert int(port) in ports, listener
    if path.name == "sidecar-task-definition.json":
        app = containers["app"]
        assert {"containerName": "apgate", "condition": "HEALTHY"} in app["dependsOn"]
        app_env = {e["name"]: e["value"] for e in app["environment"]}
        sidecar_port = cfg["listeners"][0]["address"].rsplit(":", 1)[1]
        assert app_env["AWS_ENDPOINT_URL_S3"] == f"http://localhost:{sidecar_port}"
    else:
        assert set(containers) == {"apgate"}


def test_ecs_broken_copy_reports_errors():
    task = json.loads((DEPLOY / "ecs" / "sidecar-task-definition.json").read_text())
    broken = copy.deepcopy(task)
    broken["memory"] = 1024  # the API wants a string
    broken["containerDefinitions"][0]["healthcheck"] = broken["containerDefinitions"][0].pop("healthCheck")
    broken["containerDefinitions"][1]["essential"] = "yes"
    report = ecs_problems(broken)
    assert "Invalid type for parameter memory" in report, report
    assert 'Unknown parameter in containerDefinitions[0]: "healthcheck"' in report, report
    assert "containerDefinitions[1].essential" in report, report


def camel(node, under_free_map: bool = False):
    """CloudFormation's ECS properties (PascalCase) as the ECS API's members (camelCase); the log
    driver's options and docker labels are free-form maps whose keys stay as they are."""
    if isinstance(node, list):
        return [camel(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        key = k if under_free_map else k[0].lower() + k[1:]
        out[key] = camel(v, under_free_map=k in ("Options", "DockerLabels"))
    return out


def test_template_task_definitions_validate_and_match_the_json_files():
    cfn = example_stack()
    pairs = {"SidecarTaskDefinition": "sidecar-task-definition.json", "SharedTaskDefinition": "shared-service-task-definition.json"}
    for logical, file_name in pairs.items():
        rendered = camel(cfn.properties(logical))
        assert ecs_problems(rendered) == "", logical
        from_file = json.loads((DEPLOY / "ecs" / file_name).read_text())
        # The same task apart from names and ARNs that depend on the stack.
        for key in ("networkMode", "requiresCompatibilities", "cpu", "memory", "runtimePlatform"):
            assert rendered[key] == from_file[key], (logical, key)
        a = {c["name"]: c for c in rendered["containerDefinitions"]}
        b = {c["name"]: c for c in from_file["containerDefinitions"]}
        assert set(a) == set(b), logical
        for name in a:
            for key in ("healthCheck", "dependsOn", "portMappings", "environment", "entryPoint", "command",
                        "readonlyRootFilesystem", "user", "stopTimeout", "ulimits", "essential"):
                assert a[name].get(key) == b[name].get(key), (logical, name, key)
            assert [s["name"] for s in a[name].get("secrets", [])] == [s["name"] for s in b[name].get("secrets", [])]
            opts_a = a[name]["logConfiguration"]["options"]
            opts_b = b[name]["logConfiguration"]["options"]
            assert {k: v for k, v in opts_a.items() if k != "awslogs-group"} == {
                k: v for k, v in opts_b.items() if k != "awslogs-group"
            }, (logical, name)


# ----------------------------------------------------------------------------------------- Kubernetes

# The ServiceMonitor is a prometheus-operator CRD: kubernetes-validate has no schema for it. This is a
# strict schema of the fields used here, with the CRD's names and types (monitoring.coreos.com/v1).
LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    },
}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": {"type": "object"}},
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "scrapeTimeout": {"type": "string", "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "honorLabels": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}


def k8s_documents(directory: Path = K8S_DIR) -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def k8s_problems(docs: list[tuple[str, dict]]) -> list[str]:
    """Schema problems: the bundled Kubernetes schemas (strict) for built-in kinds, the subset schema
    for the ServiceMonitor; and the ServiceMonitor must select a Service port that exists."""
    problems = []
    for name, doc in docs:
        kind = doc.get("kind")
        where = f"{name} {kind}/{doc.get('metadata', {}).get('name')}"
        if kind == "ServiceMonitor":
            for e in jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).iter_errors(doc):
                problems.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
            continue
        if kind == "Kustomization":
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{where} (Kubernetes {version}): {'.'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{where}: no schema ({e.message})")
    services = [d for _, d in docs if d.get("kind") == "Service"]
    for name, sm in ((n, d) for n, d in docs if d.get("kind") == "ServiceMonitor"):
        want = sm.get("spec", {}).get("selector", {}).get("matchLabels", {})
        chosen = [s for s in services if want and want.items() <= s["metadata"].get("labels", {}).items()]
        if not chosen:
            problems.append(f"{name}: the ServiceMonitor selects no Service")
        for e in sm.get("spec", {}).get("endpoints", []):
            if not any(p.get("name") == e.get("port") for s in chosen for p in s["spec"]["ports"]):
                problems.append(f"{name}: no selected Service has a port named {e.get('port')!r}")
    return problems


def test_kubernetes_manifests_validate():
    docs = k8s_documents()
    kinds = {d["kind"] for _, d in docs}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "ServiceMonitor", "ServiceAccount"} <= kinds
    # A built-in kind without a bundled schema is reported as a problem, never skipped.
    assert k8s_problems(docs) == []
    # kustomization.yaml names every manifest, and only files that exist.
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}


def test_kubernetes_broken_copies_fail():
    docs = k8s_documents()
    broken = copy.deepcopy(docs)
    for _, d in broken:
        # kubernetes-validate reports the first error of a document: one error per document.
        if d["kind"] == "Deployment":
            d["spec"]["replica"] = d["spec"].pop("replicas")  # unknown field (strict)
        if d["kind"] == "Service" and d["metadata"]["name"] == "apgate":
            d["spec"]["ports"][0]["port"] = "8080"  # not an integer
        if d["kind"] == "ServiceMonitor":
            d["spec"]["endpoints"][0]["prot"] = d["spec"]["endpoints"][0].pop("port")
        if d["kind"] == "HorizontalPodAutoscaler":
            d["apiVersion"] = "autoscaling/v2beta9"  # no such API version
    problems = "\n".join(k8s_problems(broken))
    assert "'replica' was unexpected" in problems and "spec.ports.0.port: '8080' is not of type 'integer'" in problems, problems
    assert "'port' is a required property" in problems and "prot" in problems, problems
    assert "no schema" in problems and "HorizontalPodAutoscaler" in problems, problems


def k8s_kind(kind: str, name: str | None = None) -> dict:
    found = [d for _, d in k8s_documents() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def test_kubernetes_deployment_runs_apgate_as_documented(tmp_path: Path):
    deployment = k8s_kind("Deployment")
    configmap = k8s_kind("ConfigMap")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] >= 2
    # The ConfigMap is deploy/config/apgate-shared.toml verbatim, and it passes apgate check.
    (config_key, config_text), = configmap["data"].items()
    assert config_text == SHARED_CONFIG.read_text()
    (tmp_path / config_key).write_text(config_text)
    c = apgate_check(tmp_path / config_key, DUMMY_ENV)
    assert c.returncode == 0, c.stdout + c.stderr
    cfg = tomllib.loads(config_text)
    # It is mounted as a directory (subPath mounts never see ConfigMap updates) where -c points.
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"] and "subPath" not in mount
    assert container["args"] == ["serve", "-c", f"{mount['mountPath']}/{config_key}"]
    # Every env secret the config reads comes from a Secret.
    env = {e["name"]: e for e in container.get("env", [])}
    for var in toml_env_secrets(cfg):
        assert "secretKeyRef" in env[var]["valueFrom"], var
    # Probes on the admin port; the ports are the config's.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["admin"] == int(cfg["admin"]["address"].rsplit(":", 1)[1])
    assert ports["data"] == int(cfg["listeners"][0]["address"].rsplit(":", 1)[1])
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    # Terminating: preStop sleep, then apgate's drain, all within the grace period.
    grace = cfg.get("server", {}).get("shutdown_grace_period_seconds", 30)
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert pod["terminationGracePeriodSeconds"] > grace + pre_stop
    # Non-root, read-only, no privileges; resources set.
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # IRSA.
    sa = k8s_kind("ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    # The client Service carries the data port only; the admin port is on the headless one.
    data_service = k8s_kind("Service", "apgate")
    assert [p["targetPort"] for p in data_service["spec"]["ports"]] == ["data"]
    admin_service = k8s_kind("Service", "apgate-admin")
    assert [p["targetPort"] for p in admin_service["spec"]["ports"]] == ["admin"]
    # Availability and scaling target the Deployment's pods.
    labels = spec["template"]["metadata"]["labels"]
    pdb = k8s_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < spec["replicas"]
    hpa = k8s_kind("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2
    sm = k8s_kind("ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "admin" and sm["spec"]["endpoints"][0]["path"] == "/metrics"


# ------------------------------------------------------------------------------------- apgate configs


@pytest.mark.parametrize("path", [SIDECAR_CONFIG, SHARED_CONFIG], ids=lambda p: p.name)
def test_deploy_config_passes_apgate_check(path: Path):
    r = apgate_check(path, DUMMY_ENV)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warning" not in r.stderr, r.stderr
    cfg = tomllib.loads(path.read_text())
    assert cfg["credentials"] == {"type": "default"}
    assert all(i.get("role_arn") for i in cfg["identities"])


def test_sidecar_config_identifies_the_app_by_source():
    cfg = tomllib.loads(SIDECAR_CONFIG.read_text())
    (listener,) = cfg["listeners"]
    assert listener["identity_methods"] == ["source"] and listener["address"].startswith("127.0.0.1:")


def test_broken_configs_fail_with_exit_64(tmp_path: Path):
    broken = tmp_path / "broken.toml"
    broken.write_text(SIDECAR_CONFIG.read_text().replace("123456789012:accesspoint", "12345678901:accesspoint"))
    r = apgate_check(broken)
    assert r.returncode == 64, r.stdout + r.stderr
    assert "routes[0].access_point" in r.stderr, r.stderr
    # The shared config without the secret's environment variable: check passes (a pipeline has
    # no secrets) and names what serve will need.
    r = apgate_check(SHARED_CONFIG, {})
    assert r.returncode == 0 and "APGATE_BOB_SECRET is not set" in r.stderr, r.stdout + r.stderr


# --------------------------------------------------------------------------------------------- Docker


DOCKERFILE_INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}


def dockerfile_stages(text: str) -> list[dict]:
    """The stages as BuildKit's own parser (the `dockerfile` package wraps it) reads them, with ARG
    defaults substituted: global ones into FROM, a stage's into its instructions."""
    global_args: dict[str, str] = {}
    stages: list[dict] = []

    def subst(value: str, args: dict[str, str]) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)

    for c in dockerfile.parse_string(text):
        if c.cmd.upper() not in DOCKERFILE_INSTRUCTIONS:
            raise ValueError(f"line {c.start_line}: unknown instruction {c.original}")
        cmd = c.cmd.upper()
        if cmd == "ARG" and not stages:
            k, _, v = c.value[0].partition("=")
            global_args[k] = v
            continue
        if cmd == "FROM":
            stages.append({"image": subst(c.value[0], global_args), "args": {}, "instructions": []})
            continue
        stage = stages[-1]
        if cmd == "ARG":
            k, _, v = c.value[0].partition("=")
            stage["args"][k] = v
        stage["instructions"].append(
            {
                "cmd": cmd,
                "flags": list(c.flags),
                "value": [subst(v, stage["args"]) for v in c.value],
                "json": c.json,
            }
        )
    return stages


def copied_sources(stage: dict) -> list[str]:
    """What a stage copies from the build context (COPY sources, without `./` or a trailing `/`)."""
    return [v.rstrip("/").removeprefix("./") for i in stage["instructions"] if i["cmd"] == "COPY"
            for v in i["value"][:-1]]


def dockerfile_problems(text: str, check_configs: bool = True) -> list[str]:
    problems = []
    try:
        stages = dockerfile_stages(text)
    except ValueError as e:
        return [str(e)]
    if len(stages) < 2:
        return ["not a multi-stage build"]
    build, final = stages[0], stages[-1]
    if build["image"] != "rust:1-bookworm":
        problems.append(f"builder image is {build['image']}")
    if final["image"] != "gcr.io/distroless/cc-debian12:nonroot":
        problems.append(f"runtime image is {final['image']}")

    def instructions(stage: dict, cmd: str) -> list[dict]:
        return [i for i in stage["instructions"] if i["cmd"] == cmd]

    runs = [" ".join(i["value"][0].split()) for i in instructions(build, "RUN")]
    if not any(re.search(r"(^|&& )cargo build --release --locked( &&|$)", r) for r in runs):
        problems.append(f"the builder does not run `cargo build --release --locked`: {runs}")
    sources = set(copied_sources(build))
    for needed in ("Cargo.toml", "Cargo.lock", "src"):
        if needed not in sources:
            problems.append(f"the builder does not copy {needed}")
    if (REPO / "build.rs").exists() and "build.rs" not in sources:
        problems.append("the builder does not copy build.rs")

    def one(cmd: str) -> dict:
        found = instructions(final, cmd)
        if len(found) != 1:
            problems.append(f"the image has {len(found)} {cmd} instructions")
            return {"value": [""], "flags": [], "json": False}
        return found[0]

    user = one("USER")["value"][0]
    if not re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", user):
        problems.append(f"USER {user!r} is not a numeric non-root user")
    health = one("HEALTHCHECK")
    if not (health["json"] and health["value"] == ["CMD", "/usr/local/bin/apgate", "health"]):
        problems.append(f"HEALTHCHECK does not run `apgate health` (exec form): {health['value']}")
    entrypoint = one("ENTRYPOINT")
    if not (entrypoint["json"] and entrypoint["value"] == ["/usr/local/bin/apgate"]):
        problems.append(f"ENTRYPOINT is not the apgate binary: {entrypoint['value']}")
    copies = instructions(final, "COPY")
    if not any(c["flags"] == ["--from=build"] and c["value"][-1] == "/usr/local/bin/apgate" for c in copies):
        problems.append("the binary is not copied from the build stage to /usr/local/bin/apgate")
    env = {}
    for i in instructions(final, "ENV"):
        env.update(zip(i["value"][::2], i["value"][1::2]))
    default_config = env.get("APGATE_CONFIG")
    if default_config != "/etc/apgate/apgate.toml":
        problems.append(f"APGATE_CONFIG is {default_config}")
    exposed = {int(p.split("/")[0]) for i in instructions(final, "EXPOSE") for p in i["value"]}
    in_image = {}
    for c in copies:
        if c["flags"]:
            continue
        dest = c["value"][-1]
        for src in c["value"][:-1]:
            in_image[(dest + Path(src).name) if dest.endswith("/") else dest] = REPO / src
    if default_config not in in_image:
        problems.append(f"the default config {default_config} is not copied into the image")
    if check_configs:
        for dest, src in in_image.items():
            if not src.exists():
                problems.append(f"{src} (copied to {dest}) does not exist")
                continue
            r = apgate_check(src, DUMMY_ENV)
            if r.returncode != 0:
                problems.append(f"{src} fails apgate check: {r.stderr}")
                continue
            cfg = tomllib.loads(src.read_text())
            ports = {int(a.rsplit(":", 1)[1]) for a in [cfg["admin"]["address"]] + [l["address"] for l in cfg["listeners"]]}
            if not ports <= exposed:
                problems.append(f"EXPOSE {sorted(exposed)} lacks ports of {src.name}: {sorted(ports)}")
    return problems


def test_dockerfile_builds_a_checked_config_into_a_non_root_image():
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


def test_dockerfile_broken_copies_fail(tmp_path: Path):
    text = DOCKERFILE.read_text()
    cases = {
        "cargo build --release --locked": ("cargo build --release --locked", "cargo build --release"),
        "USER": ("USER 65532:65532", "USER root"),
        "HEALTHCHECK": ('CMD ["/usr/local/bin/apgate", "health"]', 'CMD ["curl", "-f", "http://127.0.0.1:9090/readyz"]'),
        "src": ("COPY src ./src", "COPY src/main.rs ./src/"),
        "unknown instruction": ("EXPOSE 8080 9090", "EXPOSE 8080 9090\nEXPOS 8443"),
        "exec form": ('CMD ["/usr/local/bin/apgate", "health"]', "CMD /usr/local/bin/apgate health"),
    }
    for expected, (old, new) in cases.items():
        assert old in text, old
        problems = dockerfile_problems(text.replace(old, new), check_configs=False)
        assert any(expected in p for p in problems), (expected, problems)
    # A config the image copies that does not pass apgate check.
    bad = CONFIG_DIR / "apgate.toml"
    broken_cfg = tmp_path / "apgate.toml"
    broken_cfg.write_text(bad.read_text().replace('identity_methods = ["source"]', 'identity_methods = ["sorce"]'))
    (tmp_path / "apgate-shared.toml").write_text(SHARED_CONFIG.read_text())
    rel = os.path.relpath(tmp_path, REPO)
    problems = dockerfile_problems(text.replace("ARG CONFIG_DIR=deploy/config", f"ARG CONFIG_DIR={rel}"))
    assert any("fails apgate check" in p and "sorce" in p for p in problems), problems


def test_healthcheck_asks_the_admin_address_of_the_images_config(tmp_path: Path):
    """HEALTHCHECK runs `apgate health` without --url, and the image names its config in
    APGATE_CONFIG: health asks /readyz on that config's [admin] address (a wildcard one on
    loopback), whatever port it is. It answers 0 for a ready apgate, 1 for one that is gone."""
    assert re.search(r"^ENV APGATE_CONFIG=", DOCKERFILE.read_text(), re.M), "the image names no config"
    for config in (SIDECAR_CONFIG, SHARED_CONFIG):
        host, port = tomllib.loads(config.read_text())["admin"]["address"].rsplit(":", 1)
        asked = "127.0.0.1" if host == "0.0.0.0" else host
        r = subprocess.run([str(BIN), "health", "--timeout-seconds", "0.5"], capture_output=True, text=True,
                           env={**os.environ, "APGATE_CONFIG": str(config)}, timeout=30)
        assert f"http://{asked}:{port}/readyz" in r.stderr, (config, r.stderr)
    admin, data = free_port(), free_port()
    cfg = tmp_path / "health.toml"
    cfg.write_text(
        f"""[admin]
address = "127.0.0.1:{admin}"
[[listeners]]
name = "t"
address = "127.0.0.1:{data}"
identity_methods = ["sigv4"]
[upstream]
region = "us-east-1"
endpoint = {{ mode = "custom", url = "http://127.0.0.1:9" }}
[credentials]
type = "static"
access_key_id = {{ insecure_inline = "AKIAHEALTHCHECKTEST0" }}
secret_access_key = {{ insecure_inline = "health-check-test-secret-not-used-anywhere" }}
[[identities]]
name = "t"
[[identities.keys]]
access_key_id = "APGHEALTHCHECKTEST01"
secret_access_key = {{ insecure_inline = "health-check-test-key-secret-not-used-0000" }}
[[routes]]
identity = "t"
bucket = "health-test"
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/health-test"
"""
    )
    url = f"http://127.0.0.1:{admin}/readyz"
    health = [str(BIN), "health", "-c", str(cfg)]  # as the image runs it, with APGATE_CONFIG
    log = tmp_path / "apgate.log"
    register_apgate(log, *re.findall(r'insecure_inline = "([^"]+)"', cfg.read_text()))
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN), "serve", "-c", str(cfg)], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **apgate_log_env()})
    try:
        deadline = time.monotonic() + 20
        while run(health).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, "apgate never became ready"
            time.sleep(0.2)
        assert run([str(BIN), "health", "--url", url]).returncode == 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert run(health).returncode == 1


def test_the_image_build_has_a_current_lock_file_and_reads_only_what_it_copies():
    """What the Dockerfile's `cargo build --release --locked` (checked above) needs: a Cargo.lock
    that is current (cargo resolves the workspace with --locked, offline: everything it needs for
    this platform is here after the suite's own build), code that compiles with release's cfgs (the
    binary under test was built in the suite's profile, which inherits release's: ci under
    scripts/test, whose builds all pass --locked too), and nothing included from outside what the
    image copies: Cargo.toml, Cargo.lock, src/ and bench/, so non-test code must not include files
    from elsewhere."""
    host = run(["rustc", "-vV"]).stdout
    triple = re.search(r"^host: (\S+)$", host, re.M).group(1)
    r = run(["cargo", "tree", "--locked", "--offline", "--target", triple, "-e", "normal,build", "--prefix", "none"],
            cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^apgate v", r.stdout, re.M), r.stdout[:500]
    assert BIN.is_file(), f"{BIN} missing: build it first"
    outside = []
    for path in (REPO / "src").rglob("*.rs"):
        if path.name == "tests.rs" or "tests" in path.relative_to(REPO / "src").parts[:-1]:
            continue
        for m in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"', path.read_text()):
            target = (path.parent / m.group(1)).resolve()
            if not target.is_relative_to(REPO / "src"):
                outside.append(f"{path}: {m.group(1)}")
    assert outside == []


def test_dockerignore_keeps_what_the_build_copies():
    ignore = [l.strip() for l in DOCKERIGNORE.read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert ignore[0] == "*", "an allow-list: the build context is only what the image needs"
    allowed = {l[1:].rstrip("/") for l in ignore[1:] if l.startswith("!")}
    # Every file a stage copies from the context (not from another stage) is let in.
    copied = {s for stage in dockerfile_stages(DOCKERFILE.read_text()) for s in copied_sources(stage)
              if not s.startswith("/")}
    left_out = {s for s in copied if not any(s == a or s.startswith(a + "/") for a in allowed)}
    assert copied and not left_out, left_out
    assert {"Cargo.toml", "src", "bench", "tests/e2e/sdk_client"} <= copied, copied


def cargo_metadata_in(context: Path, sources: list[str]) -> subprocess.CompletedProcess:
    for source in sources:
        src, dst = REPO / source, context / source
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("target"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    # --no-deps: the workspace and its members only. Resolving dependencies would need the crates of
    # every platform in the lock file (anstyle-wincon...), which a Linux machine never downloaded.
    return run(["cargo", "metadata", "--no-deps", "--locked", "--offline", "--format-version", "1"],
               cwd=context, timeout=300)


def test_the_build_stage_copies_a_whole_cargo_workspace(tmp_path: Path):
    """Cargo loads every workspace member's manifest, so a member the image does not copy breaks
    `docker build` (no Docker daemon here: the copied sources are loaded by cargo itself)."""
    sources = copied_sources(dockerfile_stages(DOCKERFILE.read_text())[0])
    r = cargo_metadata_in(tmp_path / "context", sources)
    assert r.returncode == 0, r.stderr
    metadata = json.loads(r.stdout)
    members = {Path(p["manifest_path"]).parent.name for p in metadata["packages"]
               if p["id"] in metadata["workspace_members"]}
    assert members == {"context", "bench", "sdk_client"}, members
    # Without the bench member, the same load fails: the check has teeth.
    r = cargo_metadata_in(tmp_path / "without-bench", [s for s in sources if s != "bench"])
    assert r.returncode != 0 and "workspace member" in r.stderr, r.stderr


# ----------------------------------------------------------------------------------------------- docs

DOC_PATH = re.compile(r"(?<![\w./-])((?:deploy|config|docs|scripts|src|tests)/[\w./-]*[\w/])")
GENERATED = CONFIG_DIR / "rendered"  # written by deploy/config/render.sh in the walkthrough


def doc_problems(text: str, bases: tuple[Path, ...] = (REPO,)) -> list[str]:
    """Paths are relative to the repository (or to one of `bases`, for deploy/README.md)."""
    problems = []
    for m in DOC_PATH.finditer(text):
        path = m.group(1)
        candidates = [base / path for base in bases]
        if any(c == GENERATED or GENERATED in c.parents for c in candidates):
            continue
        if not any(c.exists() for c in candidates):
            problems.append(f"{path} does not exist")
    template = load_template(REFERENCE)
    params = template["Parameters"]
    outputs = template["Outputs"]
    # `aws cloudformation deploy` commands: an existing template, IAM capability, known parameters;
    # one of them (creating the stack) gives every parameter that has no default.
    joined = re.sub(r"\\\n\s*", " ", text)
    deploys = [c for c in re.findall(r"aws cloudformation deploy[^\n`]*", joined)]
    if not deploys:
        problems.append("no `aws cloudformation deploy` command")
    creates = False
    for cmd in deploys:
        words = shlex.split(cmd.replace("$", "")) if cmd.count('"') % 2 == 0 else cmd.split()
        if "--template-file" not in words or not (REPO / words[words.index("--template-file") + 1]).exists():
            problems.append(f"deploy without an existing --template-file: {cmd}")
        if "CAPABILITY_NAMED_IAM" not in words:
            problems.append(f"deploy without CAPABILITY_NAMED_IAM: {cmd}")
        given = set()
        if "--parameter-overrides" in words:
            for w in words[words.index("--parameter-overrides") + 1:]:
                if w.startswith("--"):
                    break
                key = w.split("=", 1)[0]
                given.add(key)
                if key not in params:
                    problems.append(f"unknown template parameter {key} in: {cmd}")
        creates |= {p for p, d in params.items() if "Default" not in d} <= given
    if deploys and not creates:
        problems.append("no `aws cloudformation deploy` gives every parameter without a default")
    for key in re.findall(r"OutputKey=='(\w+)'", text):
        if key not in outputs:
            problems.append(f"unknown stack output {key}")
    return problems


def test_deploy_doc_names_only_what_exists():
    text = DEPLOY_DOC.read_text()
    assert doc_problems(text) == []
    # It covers what the issue asks for.
    for topic in ("sidecar", "shared", "NLB", "scal", "reload", "task definition revision", "IAM", "ConfigMap"):
        assert topic.lower() in text.lower(), topic
    assert len(DOC_PATH.findall(text)) > 10


def test_deploy_readme_names_only_what_exists():
    assert [p for p in doc_problems((DEPLOY / "README.md").read_text(), (REPO, DEPLOY)) if "does not exist" in p] == []


def test_deploy_doc_apgate_commands_run():
    """The apgate commands the walkthrough runs locally give what it says they print."""
    text = DEPLOY_DOC.read_text()
    commands = re.findall(r"^target/release/apgate (.+)$", text, flags=re.M)
    assert commands
    outcomes = []
    for args in commands:
        r = run([str(BIN), *shlex.split(args)], cwd=REPO)
        assert r.returncode in (0, 1), r.stdout + r.stderr
        decision = re.search(r"decision:\s+(\w+)(: \w+)?", r.stdout)
        outcomes.append(decision.group(0).split()[-1] if decision else r.returncode)
    for word in outcomes:
        assert str(word) in text, (word, outcomes)


def test_deploy_doc_broken_copy_fails():
    text = DEPLOY_DOC.read_text()
    broken = (
        text + "\nSee deploy/ecs/no-such-task-definition.json.\n"
        "aws cloudformation deploy --template-file deploy/cloudformation/apgate-reference.yaml "
        "--stack-name x --capabilities CAPABILITY_NAMED_IAM --parameter-overrides BukcetName=x\n"
        "aws cloudformation describe-stacks --query \"Stacks[0].Outputs[?OutputKey=='NoSuchOutput'].OutputValue\"\n"
    )
    problems = "\n".join(doc_problems(broken))
    assert "deploy/ecs/no-such-task-definition.json does not exist" in problems, problems
    assert "BukcetName" in problems and "NoSuchOutput" in problems, problems


# ------------------------------------------------------------------ least privilege: task roles

def s3_grants(statements) -> list[str]:
    """The Allow statements that grant any S3 data (or all) permission."""
    out = []
    for st in statements if isinstance(statements, list) else [statements]:
        if st.get("Effect") != "Allow":
            continue
        actions = st.get("Action", [])
        actions = actions if isinstance(actions, list) else [actions]
        risky = [a for a in actions if isinstance(a, str) and (a == "*" or a.lower().split(":")[0] in ("s3", "s3-object-lambda"))]
        if risky or "NotAction" in st:
            out.append(f"{st.get('Sid', '?')}: {risky or st['NotAction']}")
    return out


def test_task_roles_grant_no_s3_permission_so_apgate_cannot_be_bypassed():
    """ECS gives a task's role to every container of the task, the application's included. If the
    role could reach S3 itself, the application could skip apgate (and its routes). apgate signs
    every request with the caller's own role (identities' role_arn), so a task role needs no S3
    permission at all: only sts:AssumeRole on the caller roles, which allow no more than the
    caller may do anyway."""
    template = load_template(REFERENCE)
    task_roles, problems = [], []
    for name, res in template["Resources"].items():
        if res.get("Type") != "AWS::IAM::Role":
            continue
        if "ecs-tasks.amazonaws.com" not in json.dumps(res["Properties"].get("AssumeRolePolicyDocument")):
            continue
        task_roles.append(name)
        for policy in res["Properties"].get("Policies", []):
            problems += [f"{name}/{policy['PolicyName']}/{g}" for g in s3_grants(policy["PolicyDocument"]["Statement"])]
        for arn in res["Properties"].get("ManagedPolicyArns", []):
            if "s3" in json.dumps(arn).lower():
                problems.append(f"{name}: managed policy {arn}")
    # Task roles of the apgate tasks, not the execution role (ECR pull, logs: no S3 data).
    assert {"SidecarTaskRole", "SharedTaskRole"} <= set(task_roles), task_roles
    assert not problems, problems
    # The task definitions run with those roles.
    for file, role in (("sidecar-task-definition.json", "SidecarTaskRole"), ("shared-service-task-definition.json", "SharedTaskRole")):
        task = json.loads((DEPLOY / "ecs" / file).read_text())
        assert f"-{role}-" in task["taskRoleArn"], (file, task["taskRoleArn"])
    for name in ("SidecarTaskDefinition", "SharedTaskDefinition"):
        assert "TaskRole" in json.dumps(template["Resources"][name]["Properties"]["TaskRoleArn"]), name
    # And the check has teeth: the grant this template had before is caught.
    before = {"Sid": "AccessPoint", "Effect": "Allow", "Action": "s3:*", "Resource": ["arn:aws:s3:us-east-1:1:accesspoint/a"]}
    assert s3_grants([before]) == ["AccessPoint: ['s3:*']"]
