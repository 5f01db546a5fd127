"""Route patterns (issue 17): a route's bucket may be a glob and its access point a template over the
bucket name. Judged by what moto stored through the access point the template named, by what
`apgate explain` says decided, and by `apgate check`'s warnings.

The client-facing bucket ``bob-access-point-test`` matches bob's pattern ``bob-*``, whose template
``{bucket}`` names moto's access point ``bob-access-point-test`` (on the shared bucket); a more
specific pattern of the same identity and a named bucket show which rule wins.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from conftest import ACCOUNT, BOB_AP, BUCKET, REGION, REPO, apgate_bin
from test_faults import run_apgate

ARN = f"arn:aws:s3:{REGION}:{ACCOUNT}:accesspoint/"
PATTERN_BUCKET = BOB_AP  # "bob-access-point-test": the pattern's {bucket} is moto's access point name

ROUTES = f"""
[[routes]]
identity = "bob"
bucket = "bob-*"
prefix = "Bob/"
access_point = "{ARN}{{bucket}}"

# More specific than "bob-*" for the buckets it matches (bob-access-point-test): it decides them,
# with its own prefixes; read-only under Bob/ro/.
[[routes]]
identity = "bob"
bucket = "bob-access-*"
prefix = "Bob/"
access_point = "{ARN}{{bucket}}"

[[routes]]
identity = "bob"
bucket = "bob-access-*"
prefix = "Bob/ro/"
operations = ["read", "list"]
access_point = "{ARN}{{bucket}}"

# Another pattern of bob's, which overlaps "bob-*" (both match "bob-x-logs").
[[routes]]
identity = "bob"
bucket = "*-logs"
prefix = ""
operations = ["read"]
access_point = "{ARN}{{bucket}}"
"""


def binary() -> Path:
    return apgate_bin()


def apgate(gw, moto, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and not k.startswith("APGATE_")}
    env.update({"APGATE_UPSTREAM_ACCESS_KEY_ID": moto.access_key_id,
                "APGATE_UPSTREAM_SECRET_ACCESS_KEY": moto.secret_access_key,
                "APGATE_TEST_BOB_SECRET": gw.bob_secret})
    return subprocess.run([str(binary()), *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture(scope="module")
def gw(moto, tmp_path_factory):
    with run_apgate(moto, tmp_path_factory.mktemp("patterns"), extra=ROUTES) as g:
        yield g


def config_path(gw) -> str:
    return str(gw.log_path.with_suffix(".toml"))


def test_a_pattern_route_reaches_the_access_point_its_template_names(gw, moto_s3):
    bob = gw.bob()
    key = f"Bob/pattern-{uuid.uuid4().hex}"
    bob.put_object(Bucket=PATTERN_BUCKET, Key=key, Body=b"through a pattern")
    # Stored in the access point's bucket, under the key the client gave.
    assert moto_s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"through a pattern"
    assert bob.get_object(Bucket=PATTERN_BUCKET, Key=key)["Body"].read() == b"through a pattern"
    listed = bob.list_objects_v2(Bucket=PATTERN_BUCKET, Prefix="Bob/pattern-")
    assert key in [o["Key"] for o in listed.get("Contents", [])]
    # The answer names the client's bucket, not the access point's.
    assert listed["Name"] == PATTERN_BUCKET


def test_the_most_specific_pattern_decides(gw, moto_s3):
    bob = gw.bob()
    key = f"Bob/ro/{uuid.uuid4().hex}"
    moto_s3.put_object(Bucket=BUCKET, Key=key, Body=b"seed")
    # "bob-access-*" is more specific than "bob-*": under Bob/ro/ bob reads but cannot write.
    assert bob.get_object(Bucket=PATTERN_BUCKET, Key=key)["Body"].read() == b"seed"
    with pytest.raises(ClientError) as e:
        bob.put_object(Bucket=PATTERN_BUCKET, Key=key, Body=b"overwritten")
    assert e.value.response["Error"]["Code"] == "AccessDenied"
    assert moto_s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"seed"
    # Outside the pattern's prefixes nothing is sent.
    with pytest.raises(ClientError) as e:
        bob.put_object(Bucket=PATTERN_BUCKET, Key=f"ro/{uuid.uuid4().hex}", Body=b"x")
    assert e.value.response["Error"]["Code"] == "AccessDenied"


def test_a_bucket_no_pattern_matches_is_denied_and_list_buckets_names_no_pattern(gw, moto):
    bob = gw.bob()
    mark = moto.log_mark()
    with pytest.raises(ClientError) as e:
        bob.get_object(Bucket="alice-access-point-test", Key="Bob/x")
    assert e.value.response["Error"]["Code"] == "AccessDenied"
    assert moto.log_since(mark) == []
    names = [b["Name"] for b in bob.list_buckets()["Buckets"]]
    assert BUCKET in names and not any("*" in n for n in names), names


def test_explain_names_the_rule_that_matched(gw, moto):
    r = apgate(gw, moto, "explain", "-c", config_path(gw), "--identity", "bob",
               "GET", f"/{PATTERN_BUCKET}/Bob/ro/report.csv")
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'bucket pattern "bob-access-*" (matches bob-access-point-test)' in r.stdout, r.stdout
    assert f"accesspoint/{BOB_AP}" in r.stdout, r.stdout
    # A bucket only the less specific pattern matches: its rule, and the name its template makes.
    r = apgate(gw, moto, "explain", "-c", config_path(gw), "--identity", "bob", "PUT", "/bob-reports/Bob/q3.csv")
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'bucket pattern "bob-*" (matches bob-reports)' in r.stdout, r.stdout
    assert "accesspoint/bob-reports" in r.stdout, r.stdout
    # A bucket whose access point name would be over 50 characters is refused, with the reason.
    long = "bob-" + "x" * 50
    r = apgate(gw, moto, "explain", "-c", config_path(gw), "--identity", "bob", "GET", f"/{long}/Bob/k")
    assert r.returncode == 1 and "too long for the access point" in r.stdout, r.stdout


def test_check_warns_about_overlapping_patterns(gw, moto):
    r = apgate(gw, moto, "check", "-c", config_path(gw))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert '"bob-*" and "*-logs" of identity bob overlap' in out, out
    # "bob-*" and "bob-access-*" overlap too, and the more specific one wins.
    assert '"bob-*" and "bob-access-*" of identity bob overlap' in out, out
