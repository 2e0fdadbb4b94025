#!/usr/bin/env bash
# README command 1: set up from nothing, then run the main job. Until the demos land,
# the main job is the environment report and self-check, `python -m tf_mps`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
exec "$root/.venv/bin/python" -m tf_mps "$@"
