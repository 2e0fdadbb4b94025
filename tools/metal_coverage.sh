#!/usr/bin/env bash
# Measures which functions and lines of the project's Metal backends (ops/**/*.mm) the
# tests execute on the Linux Metal emulation: builds the emulation with clang's
# source-based coverage into build/emulation-cov, runs tests/test_metal_backends.py and
# every tests/test_*_metal.py against it, and prints llvm-cov's report (functions, lines) per .mm file.
#
#   tools/metal_coverage.sh [--show]   # --show: also the line-by-line listing of misses
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
dir=build/emulation-cov
if [[ ! -f "$dir/build.ninja" ]]; then
  CC=clang-19 CXX=clang++-19 OBJCXX=clang++-19 ASM=clang-19 \
    .venv/bin/cmake -S emulation -B "$dir" -G Ninja -DPython_EXECUTABLE="$root/.venv/bin/python" \
    -DTFMPS_EMU_COVERAGE=ON >/dev/null
fi
.venv/bin/cmake --build "$dir" -j2 --target _tfmps_metal_emu
rm -f "$dir"/*.profraw
LLVM_PROFILE_FILE="$root/$dir/%p.profraw" TFMPS_EMULATION_BUILD="$root/$dir" TF_CPP_MIN_LOG_LEVEL=1 \
  .venv/bin/python -m pytest -p no:cacheprovider -q tests/test_metal_backends.py tests/test_*_metal.py >/dev/null
llvm-profdata-19 merge -o "$dir/metal.profdata" "$dir"/*.profraw
module="$(ls "$dir"/_tfmps_metal_emu*.so)"
mapfile -t sources < <(find ops -name '*.mm' -not -path 'ops/metal_stubs/*' | sort)
llvm-cov-19 report "$module" -instr-profile="$dir/metal.profdata" "${sources[@]}"
if [[ "${1:-}" == "--show" ]]; then
  llvm-cov-19 show "$module" -instr-profile="$dir/metal.profdata" -show-line-counts-or-regions \
    -region-coverage-lt=100 "${sources[@]}"
fi
