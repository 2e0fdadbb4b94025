#!/usr/bin/env bash
# Type-checks every Objective-C++ file (ops/**/*.mm) on Linux with clang against the
# project's declarations of the Apple APIs it uses (ops/metal_stubs/), and checks that
# tests/metal_negative/*.mm -- calls that Apple's real headers would reject -- are
# rejected here too, so that the stubs keep catching wrong selectors and types.
#
# Exit status: 0 all good; 1 a type error, or a negative test that compiled; 2 no usable
# clang (Debian: apt-get install clang-19).
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

find_clang() {
  local c major
  for c in "${CLANGXX:-}" clang++-19 clang++; do
    [[ -n "$c" ]] && command -v "$c" >/dev/null 2>&1 || continue
    major="$("$c" -dumpversion 2>/dev/null | cut -d. -f1)"
    if [[ "$major" =~ ^[0-9]+$ ]] && (( major >= 14 )); then
      echo "$c"
      return 0
    fi
  done
  return 1
}

if ! clangxx="$(find_clang)"; then
  echo "metal_typecheck: no clang++ >= 14 found (tried \$CLANGXX, clang++-19, clang++)." >&2
  echo "metal_typecheck: install one, e.g. 'apt-get install -y clang-19'." >&2
  exit 2
fi

# -fobjc-runtime=macosx-14.0 gives the Apple runtime's rules (ARC, modern ABI) while
# staying on the Linux target: targeting x86_64-apple-macos breaks on glibc headers.
flags=(-x objective-c++ -std=c++17 -fobjc-arc -fblocks -fobjc-runtime=macosx-14.0
       -fsyntax-only -Werror -Wall -I ops/metal_stubs -I .)

echo "metal_typecheck: $("$clangxx" --version | head -n1)"
status=0

mapfile -t sources < <(find ops -name '*.mm' -not -path 'ops/metal_stubs/*' | sort)
if (( ${#sources[@]} == 0 )); then
  echo "metal_typecheck: no .mm files under ops/" >&2
  exit 1
fi
for f in "${sources[@]}"; do
  if "$clangxx" "${flags[@]}" "$f"; then
    echo "ok        $f"
  else
    echo "FAILED    $f" >&2
    status=1
  fi
done

mapfile -t negatives < <(find tests/metal_negative -name '*.mm' | sort)
if (( ${#negatives[@]} == 0 )); then
  echo "metal_typecheck: no negative tests under tests/metal_negative/" >&2
  status=1
fi
for f in "${negatives[@]}"; do
  if "$clangxx" "${flags[@]}" "$f" >/dev/null 2>&1; then
    echo "NOT REJECTED  $f: it compiled, so the stubs let these mistakes through" >&2
    status=1
  elif ! out="$("$clangxx" "${flags[@]}" -Xclang -verify "$f" 2>&1)"; then
    # Rejected, but not (only) with the errors its expected-error comments name.
    echo "WRONG ERRORS  $f:" >&2
    echo "$out" >&2
    status=1
  else
    echo "rejected  $f ($(grep -c 'expected-error' "$f") expected errors, no others)"
  fi
done

exit "$status"
