#!/bin/sh
# Writes apgate's configs for a deployed reference stack (deploy/cloudformation/apgate-reference.yaml):
# deploy/config/apgate.toml (sidecar) and deploy/config/apgate-shared.toml (shared service), with the
# example account, region, access point ARNs and role ARNs replaced by the stack's outputs.
#
#   deploy/config/render.sh STACK_NAME OUT_DIR      (needs the aws CLI and credentials for the stack)
#
# Then build the image with them: docker build -f deploy/Dockerfile --build-arg CONFIG_DIR=OUT_DIR .
# (OUT_DIR inside the build context, e.g. deploy/config/rendered).
set -eu

if [ $# -ne 2 ]; then
    echo "usage: $0 STACK_NAME OUT_DIR" >&2
    exit 64
fi
stack=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)

outputs=$(aws cloudformation describe-stacks --stack-name "$stack" \
    --query 'Stacks[0].Outputs[].[OutputKey,OutputValue]' --output text)

output() {
    value=$(printf '%s\n' "$outputs" | awk -F '\t' -v key="$1" '$1 == key { print $2 }')
    if [ -z "$value" ] || [ "$value" = "None" ]; then
        echo "$0: stack $stack has no output $1" >&2
        exit 1
    fi
    printf '%s' "$value"
}

region=$(output Region)
app_ap=$(output AppAccessPointArn)
app_role=$(output AppCallerRoleArn)
bob_ap=$(output BobAccessPointArn)
bob_role=$(output BobCallerRoleArn)

# The example values in the committed configs (tests/e2e/test_deploy.py keeps them in step with the
# template's defaults).
ex_app_ap='arn:aws:s3:us-east-1:123456789012:accesspoint/app-vpc-access-point-test'
ex_app_role='arn:aws:iam::123456789012:role/apgate-caller-app'
ex_bob_ap='arn:aws:s3:us-east-1:123456789012:accesspoint/bob-access-point-test'
ex_bob_role='arn:aws:iam::123456789012:role/apgate-caller-bob'

mkdir -p "$out"
for f in apgate.toml apgate-shared.toml; do
    sed -e "s|\"$ex_app_ap\"|\"$app_ap\"|" \
        -e "s|\"$ex_app_role\"|\"$app_role\"|" \
        -e "s|\"$ex_bob_ap\"|\"$bob_ap\"|" \
        -e "s|\"$ex_bob_role\"|\"$bob_role\"|" \
        -e "s|^region = \"us-east-1\"|region = \"$region\"|" \
        "$here/$f" > "$out/$f"
    if grep -q '123456789012' "$out/$f"; then
        echo "$0: $out/$f still names the example account 123456789012" >&2
        exit 1
    fi
    echo "wrote $out/$f"
done
echo "check them with: apgate check -c $out/apgate.toml (and APGATE_BOB_SECRET set for apgate-shared.toml)"
