#!/usr/bin/env python3
"""Create apgate's test world in a fresh moto server (auth off), then enforce SigV4 + IAM.

    python setup_moto.py --endpoint http://127.0.0.1:PORT [--region us-east-1] --out FILE.json

Creates: IAM user ``apgate`` (inline policy, access key), IAM roles ``apgate-task-role``,
``bob-role``, ``app-role`` (trusting the user; the user may assume them) and
``untrusted-role`` (trusting another principal), bucket ``access-point-test``,
access points ``bob-access-point-test`` (internet) and ``app-vpc-access-point-test``
(VPC) with access point policies, the object ``app/seed.txt``; then
``POST /moto-api/reset-auth`` with body ``0``. Writes the user's keys as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from urllib.parse import urlsplit, urlunsplit

import boto3
from botocore.config import Config

ACCOUNT = "123456789012"
BUCKET = "access-point-test"
USER = "apgate"
BOB_AP = "bob-access-point-test"
APP_AP = "app-vpc-access-point-test"
APP_VPC_ID = "vpc-0123456789abcdef0"
SEED_KEY = "app/seed.txt"
SEED_BODY = b"seeded by setup"
# IAM roles for the credential tests (tests/e2e/test_credentials.py). The first three trust the
# ``apgate`` user (by its ARN: moto does not honour ``:root``) and grant the same S3 access as its
# own policy; UNTRUSTED_ROLE trusts somebody else, so assuming it fails on the trust policy.
TASK_ROLE = "apgate-task-role"  # what the fake ECS credential endpoint hands out
BOB_ROLE = "bob-role"
APP_ROLE = "app-role"
UNTRUSTED_ROLE = "untrusted-role"
TRUSTED_ROLES = (TASK_ROLE, BOB_ROLE, APP_ROLE)

# moto accepts any credentials while auth is off.
_BOOTSTRAP_CREDS = {"aws_access_key_id": "bootstrap", "aws_secret_access_key": "bootstrap"}


def ap_arn(name: str, region: str) -> str:
    return f"arn:aws:s3:{region}:{ACCOUNT}:accesspoint/{name}"


def user_policy(region: str) -> dict:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "GatewayBucketAndAccessPoints",
                "Effect": "Allow",
                "Action": "s3:*",
                "Resource": [
                    f"arn:aws:s3:::{BUCKET}",
                    f"arn:aws:s3:::{BUCKET}/*",
                    f"arn:aws:s3:{region}:{ACCOUNT}:accesspoint/*",
                    f"arn:aws:s3:{region}:{ACCOUNT}:accesspoint/*/object/*",
                ],
            }
        ],
    }


def bob_ap_policy(region: str) -> dict:
    arn = ap_arn(BOB_AP, region)
    principal = {"AWS": f"arn:aws:iam::{ACCOUNT}:user/{USER}"}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "BobObjects",
                "Effect": "Allow",
                "Principal": principal,
                "Action": [
                    "s3:GetObject",
                    "s3:PutObject",
                    "s3:DeleteObject",
                    "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts",
                    "s3:GetObjectTagging",
                    "s3:PutObjectTagging",
                ],
                "Resource": f"{arn}/object/Bob/*",
            },
            {
                "Sid": "BobList",
                "Effect": "Allow",
                "Principal": principal,
                "Action": ["s3:ListBucket", "s3:ListBucketMultipartUploads"],
                "Resource": arn,
                "Condition": {"StringLike": {"s3:prefix": ["Bob/", "Bob/*"]}},
            },
        ],
    }


def app_ap_policy(region: str) -> dict:
    arn = ap_arn(APP_AP, region)
    principal = {"AWS": f"arn:aws:iam::{ACCOUNT}:user/{USER}"}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AppRead",
                "Effect": "Allow",
                "Principal": principal,
                "Action": ["s3:GetObject"],
                "Resource": f"{arn}/object/app/*",
            },
            {
                "Sid": "AppList",
                "Effect": "Allow",
                "Principal": principal,
                "Action": ["s3:ListBucket"],
                "Resource": arn,
                "Condition": {"StringLike": {"s3:prefix": ["app/", "app/*"]}},
            },
        ],
    }


def role_arn(name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:role/{name}"


def user_arn(name: str = USER) -> str:
    return f"arn:aws:iam::{ACCOUNT}:user/{name}"


def trust_policy(principal_arn: str) -> dict:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": principal_arn},
                "Action": "sts:AssumeRole",
            }
        ],
    }


def assume_roles_policy() -> dict:
    """The ``apgate`` user may call sts:AssumeRole on the test roles (the untrusted one too, so
    that assuming it fails on the role's trust policy, not on this one)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AssumeTestRoles",
                "Effect": "Allow",
                "Action": "sts:AssumeRole",
                "Resource": [role_arn(r) for r in (*TRUSTED_ROLES, UNTRUSTED_ROLE)],
            }
        ],
    }


def create_roles(iam, region: str) -> None:
    for name in TRUSTED_ROLES:
        iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps(trust_policy(user_arn()))
        )
        iam.put_role_policy(
            RoleName=name,
            PolicyName="apgate-gateway",
            PolicyDocument=json.dumps(user_policy(region)),
        )
    iam.create_role(
        RoleName=UNTRUSTED_ROLE,
        AssumeRolePolicyDocument=json.dumps(trust_policy(user_arn("somebody-else"))),
    )
    iam.put_role_policy(
        RoleName=UNTRUSTED_ROLE,
        PolicyName="apgate-gateway",
        PolicyDocument=json.dumps(user_policy(region)),
    )
    iam.put_user_policy(
        UserName=USER,
        PolicyName="apgate-assume-roles",
        PolicyDocument=json.dumps(assume_roles_policy()),
    )


def enforce_auth(endpoint: str) -> None:
    req = urllib.request.Request(
        endpoint.rstrip("/") + "/moto-api/reset-auth",
        data=b"0",
        method="POST",
        # not form-encoded: flask would swallow a form body and moto would read ""
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        if resp.status != 200:
            raise RuntimeError(f"reset-auth answered {resp.status}")


def setup_world(endpoint: str, region: str = "us-east-1") -> dict:
    """Create everything, enforce auth, return the gateway user's credentials."""
    common = dict(endpoint_url=endpoint, region_name=region, **_BOOTSTRAP_CREDS)
    iam = boto3.client("iam", **common)
    s3 = boto3.client("s3", config=Config(s3={"addressing_style": "path"}), **common)
    s3control = boto3.client("s3control", **common)
    # botocore's endpoint rules put the account id in front of the host
    # ("123456789012.127.0.0.1:PORT"), which does not resolve. moto routes S3 Control
    # by its /v20180820/ path, so send it to the plain endpoint (auth is still off).
    endpoint_netloc = urlsplit(endpoint).netloc

    def _plain_host(request, **_):
        parts = urlsplit(request.url)
        request.url = urlunsplit(parts._replace(netloc=endpoint_netloc))

    s3control.meta.events.register("before-sign.s3-control", _plain_host)

    iam.create_user(UserName=USER)
    iam.put_user_policy(
        UserName=USER,
        PolicyName="apgate-gateway",
        PolicyDocument=json.dumps(user_policy(region)),
    )
    key = iam.create_access_key(UserName=USER)["AccessKey"]
    create_roles(iam, region)

    if region == "us-east-1":
        s3.create_bucket(Bucket=BUCKET)
    else:
        s3.create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": region}
        )

    s3control.create_access_point(AccountId=ACCOUNT, Name=BOB_AP, Bucket=BUCKET)
    s3control.put_access_point_policy(
        AccountId=ACCOUNT, Name=BOB_AP, Policy=json.dumps(bob_ap_policy(region))
    )
    s3control.create_access_point(
        AccountId=ACCOUNT,
        Name=APP_AP,
        Bucket=BUCKET,
        VpcConfiguration={"VpcId": APP_VPC_ID},
    )
    s3control.put_access_point_policy(
        AccountId=ACCOUNT, Name=APP_AP, Policy=json.dumps(app_ap_policy(region))
    )

    s3.put_object(Bucket=BUCKET, Key=SEED_KEY, Body=SEED_BODY)

    enforce_auth(endpoint)
    return {
        "access_key_id": key["AccessKeyId"],
        "secret_access_key": key["SecretAccessKey"],
        "account": ACCOUNT,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    creds = setup_world(args.endpoint, args.region)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(creds, fh, indent=2)
        fh.write("\n")


if __name__ == "__main__":
    main()
