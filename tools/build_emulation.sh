#!/usr/bin/env bash
# Builds the Metal emulation (emulation/: the Objective-C runtime, the Foundation/Metal/MPS
# fakes, the project's .mm backends on them, and their tests) with clang-19 into
# build/emulation (build/emulation-asan with --sanitize: AddressSanitizer + UBSan).
# Linux only. Needs clang-19, libblocksruntime-dev, libgtest-dev (scripts/setup.sh --test
# installs them) and the project's .venv (for the BLAS wheel and pybind11).
#
#   tools/build_emulation.sh [--sanitize] [--test]   # --test: also run ctest
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
sanitize=OFF; run_tests=0; dir=build/emulation
for arg in "$@"; do
  case "$arg" in
    --sanitize) sanitize=ON; dir=build/emulation-asan ;;
    --test) run_tests=1 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build_emulation.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
python="${PYTHON_FOR_BUILD:-$root/.venv/bin/python}"
cmake_bin="$root/.venv/bin/cmake"; command -v "$cmake_bin" >/dev/null || cmake_bin=cmake
if [[ ! -f "$dir/build.ninja" ]]; then
  CC=clang-19 CXX=clang++-19 OBJCXX=clang++-19 ASM=clang-19 \
    "$cmake_bin" -S emulation -B "$dir" -G Ninja -DPython_EXECUTABLE="$python" \
    -DTFMPS_EMU_SANITIZE="$sanitize" >/dev/null
fi
"$cmake_bin" --build "$dir" -j2
if (( run_tests )); then
  (cd "$dir" && ctest --output-on-failure)
fi
