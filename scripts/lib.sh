# Shared helpers for scripts/demo and scripts/test. Source it; do not run it.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/target/e2e-venv"
# The cargo profile of the binaries the scripts build and run: release, or APGATE_CARGO_PROFILE
# (scripts/test sets ci: release's code at opt-level 1, see Cargo.toml). BIN is where they land.
PROFILE="${APGATE_CARGO_PROFILE:-release}"
BIN="$REPO/target/$PROFILE"

say() { printf '\033[1m==> [%4d s] %s\033[0m\n' "$SECONDS" "$*" >&2; }

# Creates target/e2e-venv with the pinned Python packages (moto server, aws CLI, boto3, pytest).
ensure_python_env() {
    local req="$REPO/tests/e2e/requirements.txt" stamp="$VENV/.requirements.sha256"
    local want; want="$(sha256sum "$req" | cut -d' ' -f1)"
    if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    say "Installing Python test dependencies into target/e2e-venv"
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
        if [[ $(id -u) == 0 ]]; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >/dev/null
        else
            echo "python3-venv is missing; install it (apt-get install python3-venv) and retry" >&2
            return 1
        fi
    fi
    mkdir -p "$REPO/target"
    python3 -m venv "$VENV"
    # --no-compile: Python compiles what the suite imports when it imports it, not all of botocore
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-compile -r "$req"
    echo "$want" > "$stamp"
}

# Installs the S3 command-line clients the e2e suite drives besides the aws CLI: s3cmd comes from
# PyPI through requirements.txt (ensure_python_env), rclone from Debian's package when it is not
# already on PATH. Without root and without rclone it fails: the client tests are not optional.
ensure_clients() {
    if [[ ! -x "$VENV/bin/s3cmd" ]]; then
        echo "s3cmd missing from target/e2e-venv (it is in tests/e2e/requirements.txt): run ensure_python_env" >&2
        return 1
    fi
    # rclone (a client under test), curl (presigned URLs, mTLS) and openssl (test certificates).
    local missing=()
    command -v rclone >/dev/null 2>&1 || missing+=(rclone)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    if [[ ${#missing[@]} == 0 ]]; then
        return 0
    fi
    if [[ $(id -u) != 0 ]]; then
        echo "missing: ${missing[*]}; this is not root: install them (apt-get install ${missing[*]}) and retry" >&2
        return 1
    fi
    say "Installing ${missing[*]} (Debian packages)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" ca-certificates >/dev/null
    for tool in "${missing[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || { echo "$tool still not on PATH after apt-get install" >&2; return 1; }
    done
}

# Installs Debian's prometheus package (prometheus and promtool) when either is missing: the
# observability suite (tests/e2e/test_observability.py) lints apgate's /metrics with promtool, checks
# and unit-tests deploy/prometheus/alerts.yml, and scrapes apgate with its own Prometheus. On a host
# running systemd the package also enables its prometheus service (port 9090); the tests do not use it.
ensure_prometheus() {
    if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
        return 0
    fi
    if [[ $(id -u) != 0 ]]; then
        echo "prometheus/promtool missing; this is not root: install them (apt-get install prometheus) and retry" >&2
        return 1
    fi
    say "Installing prometheus and promtool (Debian package prometheus)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    for tool in prometheus promtool; do
        command -v "$tool" >/dev/null 2>&1 || { echo "$tool still not on PATH after apt-get install" >&2; return 1; }
    done
}

# Builds apgate in $PROFILE (the e2e suites and the demo run it).
build_release() {
    # scripts/test has built it already, and its background builds hold cargo's lock meanwhile
    if [[ ${APGATE_PREBUILT:-} == 1 && -x $BIN/apgate ]]; then
        return 0
    fi
    say "Building apgate ($PROFILE)"
    (cd "$REPO" && cargo build --profile "$PROFILE" --quiet)
}

# Installs the benchmark's peer and load tool from Debian when missing: nginx (the plain-hop
# baseline) and wrk (saturation load). The paced load is bench/src/bin/bench_client.rs.
ensure_bench_tools() {
    local missing=() pair
    for pair in nginx:nginx-light wrk:wrk; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    [[ ${#missing[@]} == 0 ]] && return 0
    if [[ $(id -u) != 0 ]]; then
        echo "missing: ${missing[*]}; this is not root: install them (apt-get install ${missing[*]}) and retry" >&2
        return 1
    fi
    say "Installing ${missing[*]} (Debian packages)"
    apt-get update -qq
    # policy-rc.d keeps the package from starting its own nginx service on port 80.
    local policy=/usr/sbin/policy-rc.d created=0
    if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [[ $created == 1 ]] && rm -f "$policy"
    for pair in nginx:nginx-light wrk:wrk; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || { echo "${pair%%:*} still not on PATH after apt-get install" >&2; return 1; }
    done
}
