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
# Twice: as a CPU-only machine sees it, then with the tf-mps device (the Metal emulation)
# loaded, where every device-parametrized test also runs on the device and ops without a
# pinned device go there as they would to a Mac's GPU (tests/conftest.py). TFMPS_TEST_ONCE=1
# skips the second run.
.venv/bin/python -m pytest -p no:cacheprovider "$@"
if [[ "${TFMPS_TEST_ONCE:-0}" != 1 && "$(uname -s)" == Linux ]]; then
  echo "== the test suite again, with the tf-mps device (--tfmps-device)"
  .venv/bin/python -m pytest -p no:cacheprovider --tfmps-device "$@"
fi
