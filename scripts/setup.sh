#!/usr/bin/env bash
# Sets up tf-mps from nothing on a Debian machine with Python 3.10-3.13: a virtual
# environment in .venv with TensorFlow, the BLAS wheel and the build tools, then builds
# and installs tf-mps into it. Idempotent: a second run rebuilds only what changed.
#
#   scripts/setup.sh            # the package, and what the demo needs (matplotlib, the
#                               # Fashion-MNIST data from Debian)
#   scripts/setup.sh --test     # plus the test tools (pytest, hypothesis, pybind11), and
#                               # clang-19 with what the Metal emulation needs, which it
#                               # then builds (build/emulation, tools/build_emulation.sh)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

with_test=0
for arg in "$@"; do
  case "$arg" in
    --test) with_test=1 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))'; then
  echo "setup.sh: tf-mps needs Python 3.10-3.13 (TensorFlow 2.21); '$python' is $("$python" --version 2>&1)." >&2
  echo "setup.sh: set PYTHON=/path/to/python3.11 and run again." >&2
  exit 1
fi

# System packages (Debian): a C++ compiler for the op library, venv support for
# Debian's own python3, and for the tests clang-19 (the Linux type-check of the
# Objective-C++ Metal backend).
if [[ "$(uname -s)" == "Linux" ]] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  command -v g++ >/dev/null 2>&1 || missing+=(g++)
  "$python" -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
  if [[ "$with_test" == 1 ]]; then
    # The Metal emulation (emulation/): clang-19, blocks, GoogleTest, sanitizer runtimes.
    command -v clang++-19 >/dev/null 2>&1 || missing+=(clang-19)
    [[ -f /usr/include/Block.h ]] || missing+=(libblocksruntime-dev)
    [[ -f /usr/include/gtest/gtest.h ]] || missing+=(libgtest-dev)
    compgen -G "/usr/lib/llvm-19/lib/clang/19/lib/linux/libclang_rt.asan*" >/dev/null || missing+=(libclang-rt-19-dev)
  fi
  command -v readelf >/dev/null 2>&1 || missing+=(binutils)
  # The demo's data (demo/object_classification.py): Fashion-MNIST, 30 MB.
  [[ -d /usr/share/datasets/fashion-mnist ]] || missing+=(dataset-fashion-mnist)
  if ((${#missing[@]})); then
    echo "== installing ${missing[*]} (apt)"
    sudo_cmd=""
    [[ "$(id -u)" != 0 ]] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

# A venv whose pip works (a failed earlier attempt can leave one without pip).
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  echo "== creating .venv with $("$python" --version 2>&1)"
  rm -rf .venv
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check)

echo "== installing TensorFlow, BLAS and build tools into .venv"
case "$(uname -s)" in
  Darwin) tf_pkgs=("tensorflow==2.21.*") ;;
  *) tf_pkgs=("tensorflow-cpu==2.21.*" "scipy-openblas32>=0.3.27") ;;
esac
"${pip[@]}" install -q "${tf_pkgs[@]}" "scikit-build-core>=0.10" cmake ninja

extras="[demo]"
[[ "$with_test" == 1 ]] && extras="[test,demo]"
echo "== building and installing tf-mps$extras (at most 2 compile jobs)"
# No build isolation: the build must see the very TensorFlow it will load into.
"${pip[@]}" install -q --no-build-isolation ".$extras"
if [[ "$with_test" == 1 && "$(uname -s)" == "Linux" ]]; then
  echo "== building the Metal emulation (clang-19, build/emulation)"
  tools/build_emulation.sh >/dev/null
fi
echo "== ready: .venv/bin/python -m tf_mps"
