#!/usr/bin/env bash
# Runs the runner's own check (check_peers.py) in the peers' environment; build it first with setup_env.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${PEERS_VENV:-$here/.venv}"
[ -x "$venv/bin/python" ] || { echo "no peers environment at $venv: run bash bench/peers/setup_env.sh" >&2; exit 2; }
cd "$here"
"$venv/bin/python" check_peers.py
