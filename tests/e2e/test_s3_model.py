"""The operation table apgate classifies requests with (src/s3/operation/model.rs) is generated from
botocore's S3 API model by scripts/gen_s3_model.py: the checked-in file must be what the script
generates from the installed botocore, and the script must notice a model that differs."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import botocore

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gen_s3_model.py"
MODEL = Path(botocore.__file__).parent / "data" / "s3" / "2006-03-01" / "service-2.json.gz"


def run_check(*extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", *extra], capture_output=True, text=True, timeout=120)


def test_the_generated_operation_table_matches_the_installed_botocore_model():
    r = run_check()
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_changed_model_is_drift(tmp_path: Path):
    model = json.loads(gzip.decompress(MODEL.read_bytes()))
    # An operation gains a query parameter (as a new S3 feature would).
    shape = model["shapes"][model["operations"]["GetObject"]["input"]["shape"]]
    shape["members"]["NewThing"] = {"shape": "Prefix", "location": "querystring", "locationName": "new-thing"}
    changed = tmp_path / "service-2.json"
    changed.write_text(json.dumps(model))
    r = run_check("--model", str(changed))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "new-thing" in r.stdout and "out of date" in r.stderr, r.stdout + r.stderr


REGIONS_SCRIPT = REPO / "scripts" / "gen_regions.py"


def test_the_region_table_matches_the_installed_botocore_partitions():
    r = subprocess.run([sys.executable, str(REGIONS_SCRIPT), "--check"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_new_region_is_drift(tmp_path: Path):
    partitions = json.loads((Path(botocore.__file__).parent / "data" / "partitions.json").read_text())
    aws = next(p for p in partitions["partitions"] if p["id"] == "aws")
    aws["regions"]["xx-test-1"] = {"description": "a region that does not exist"}
    changed = tmp_path / "partitions.json"
    changed.write_text(json.dumps(partitions))
    r = subprocess.run([sys.executable, str(REGIONS_SCRIPT), "--check", "--partitions", str(changed)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "xx-test-1" in r.stdout and "out of date" in r.stderr, r.stdout + r.stderr
