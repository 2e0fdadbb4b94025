#!/usr/bin/env bash
# README command 1: set up from nothing, then run the main job: the object-classification
# training demo (demo/object_classification.py) with its defaults, writing into
# runs/object_classification (or the --out you give). Extra arguments go to the demo
# (--help lists them); `.venv/bin/python -m tf_mps` is the environment report and self-check.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
args=("$@")
if [[ "${1-}" != predict && " ${args[*]-} " != *" --out "* && " ${args[*]-} " != *" --out="* && " ${args[*]-} " != *" -h "* && " ${args[*]-} " != *" --help "* ]]; then
  args+=(--out "$root/runs/object_classification")
fi
exec "$root/.venv/bin/python" demo/object_classification.py "${args[@]}"
