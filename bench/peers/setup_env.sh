#!/usr/bin/env bash
# Builds the peers' own virtual environment (default bench/peers/.venv, git-ignored): cleanlab 2.9 and nessie 0.1.1
# with the CPU torch 2.13.0 kept. nessie pulls flair 0.11, jupyter and an unpinned torch, so it is installed with
# --no-deps and its imported dependencies come from nessie-deps.txt under constraints.txt (see README.md).
#
#   bash bench/peers/setup_env.sh            # install exactly requirements.lock.txt (default)
#   bash bench/peers/setup_env.sh --resolve  # resolve afresh from constraints.txt + nessie-deps.txt, rewrite the lock
#
# PEERS_VENV overrides the folder, PYTHON the interpreter (3.11, as the lock was made with).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${PEERS_VENV:-$here/.venv}"
mode="${1:-lock}"
start=$(date +%s)

rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
pip=("$venv/bin/pip" install --quiet --disable-pip-version-check)
"${pip[@]}" torch==2.13.0  # first: the CPU wheel, so that nothing below pulls a CUDA build
if [ "$mode" = "--resolve" ]; then
    "${pip[@]}" -c "$here/constraints.txt" "cleanlab==2.9.*"
    "${pip[@]}" --no-deps nessie==0.1.1 flair==0.11.3
    "${pip[@]}" -c "$here/constraints.txt" -r "$here/nessie-deps.txt"
    "$venv/bin/pip" freeze --all --exclude-editable | grep -v '^pip==' > "$here/requirements.lock.txt"
else
    "${pip[@]}" --no-deps -r "$here/requirements.lock.txt"
fi
"$venv/bin/python" -c "import torch, cleanlab.token_classification.rank, nessie.detectors, nessie.task_support.span_labeling
assert torch.__version__.startswith('2.13.0'), torch.__version__"
echo "peers environment ready: $venv ($(( $(date +%s) - start )) s)"
