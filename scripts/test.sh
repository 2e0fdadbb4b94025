#!/usr/bin/env bash
# README command 2 (and what CI runs through .ci/run): set up from nothing with the test
# tools, then run the whole test suite, the Linux type-check of the Metal backend
# included. Extra arguments go to pytest (e.g. -m "not slow", -k adam).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh" --test
cd "$root"
# TF_CPP_MIN_LOG_LEVEL=1 hides TensorFlow's start-up banners, not warnings or errors.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
