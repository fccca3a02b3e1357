#!/usr/bin/env bash
# The Python client's suite (clients/python, issue 14) against a live
# `vellum dev` cluster: installs the package with pip into a venv under the
# build directory, starts a cluster, runs the unittest suite (offline
# Ed25519 and proof tests, then the live ones: byte-exact round trips,
# expected-offset conflicts, idempotency, receipts checked offline and
# compared with `vellum proof check`, 401/403/429, a client certificate
# instead of a token (the dev service's), subscriptions, HTTP/2,
# consumer groups (with parking past retry_max and lease-expiry
# redelivery, on short leases), enveloped events' proofs),
# stops the cluster, and checks it with offline `vellum verify --cluster`.
#
# Bounded: the suite has a hard time limit (default 120 s); every wait in
# it is bounded too. Only loopback is targeted.
#
# Environment (all optional):
#   VELLUM_BIN               the vellum binary (default ${CARGO_TARGET_DIR:-target}/debug/vellum)
#   VELLUM_PY_VENV           where the client is installed (default ${CARGO_TARGET_DIR:-target}/py-client-venv)
#   VELLUM_PY_SUITE_SECS     hard limit of the suite (default 120)
#   VELLUM_PY_KEEP           keep the work directory (cluster and logs); kept on failure too
set -euo pipefail
cd "$(dirname "$0")/.."

vellum=$(realpath "${VELLUM_BIN:-${CARGO_TARGET_DIR:-target}/debug/vellum}")
venv=${VELLUM_PY_VENV:-${CARGO_TARGET_DIR:-target}/py-client-venv}
suite_secs=${VELLUM_PY_SUITE_SECS:-120}
ready_secs=120

echo "== installing clients/python into $venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# A fresh copy: pip builds in the source tree otherwise (build/, *.egg-info).
work=$(mktemp -d -t vellum-pyclient-XXXXXX)
cp -r clients/python "$work/src"
timeout 300 "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$work/src"
# Not realpath: the venv's python is a symlink to the base interpreter.
python="$(cd "$venv" && pwd)/bin/python"

cluster="$work/cluster"
# shellcheck source=.ci/dev_cluster.sh
source .ci/dev_cluster.sh

cleanup() {
    local code=$?
    stop_dev
    if [ "$code" -ne 0 ] || [ -n "${VELLUM_PY_KEEP:-}" ]; then
        echo "python client work directory kept: $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

echo "== starting the dev cluster in $cluster"
start_dev

VELLUM_URLS=$(awk '/^  replica [0-9]+:/ { print $3 }' "$dev_out" | paste -sd, -)
VELLUM_WRITER_TOKEN=$(awk '/writer token:/ { print $3 }' "$dev_out")
VELLUM_AUDITOR_TOKEN=$(awk '/auditor token:/ { print $3 }' "$dev_out")
VELLUM_CA="$cluster/tls/ca.pem"
VELLUM_POLICY="$cluster/policy.txt"
for value in "$VELLUM_URLS" "$VELLUM_WRITER_TOKEN" "$VELLUM_AUDITOR_TOKEN"; do
    if [ -z "$value" ]; then
        cat "$dev_out" >&2
        echo "could not read the URLs and tokens from vellum dev's output" >&2
        exit 1
    fi
done
export VELLUM_URLS VELLUM_WRITER_TOKEN VELLUM_AUDITOR_TOKEN VELLUM_CA VELLUM_POLICY
# The dev service's client certificate (principal `service`; `vellum dev`
# makes one with its client CA): the suite's mTLS test.
VELLUM_CLIENT_CERT="$cluster/tls/client-service.pem"
VELLUM_CLIENT_KEY="$cluster/tls/client-service.key"
if [ ! -f "$VELLUM_CLIENT_CERT" ] || [ ! -f "$VELLUM_CLIENT_KEY" ]; then
    echo "vellum dev made no client certificate ($VELLUM_CLIENT_CERT)" >&2
    exit 1
fi
export VELLUM_CLIENT_CERT VELLUM_CLIENT_KEY
export VELLUM_BIN="$vellum"
# The repo, for golden files the suite compares with (tests/golden/).
VELLUM_REPO=$(pwd)
export VELLUM_REPO

echo "== python client suite (limit $suite_secs s)"
suite_code=0
# From the work directory, so the installed package (not the source tree) is imported.
(cd "$work" && timeout --kill-after=10 "$suite_secs" "$python" -m unittest discover \
    -s "$work/src/tests" -t "$work/src/tests" -v) || suite_code=$?
[ "$suite_code" -eq 124 ] && echo "the python client suite ran past $suite_secs s" >&2

echo "== stopping the cluster, then offline verify"
stop_dev
verify_code=0
"$vellum" verify --cluster "$cluster" --policy "$cluster/policy.txt" >"$work/verify.out" 2>&1 || verify_code=$?
if [ "$suite_code" -ne 0 ] || [ "$verify_code" -ne 0 ]; then
    cat "$work/verify.out" >&2
    echo "python client step failed: suite exit $suite_code, verify exit $verify_code" >&2
    exit 1
fi
echo "python client step passed"
