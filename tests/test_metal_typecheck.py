"""The Linux checks of the Objective-C++ Metal backend: clang type-check of ops/**/*.mm
against ops/metal_stubs/ (with a negative test that must be rejected), and the stubs'
enum values against PyObjC's SDK metadata.

A missing clang or an unreachable package index skips these tests locally; under CI
(CI=true) they fail instead, so CI can never pass without having run them.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.metal_typecheck

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI") == "true"


def _skip_or_fail(reason):
    if IN_CI:
        pytest.fail(f"{reason} (required when CI=true)")
    pytest.skip(reason)


def _run(*cmd, **kwargs):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, **kwargs)


def test_mm_files_typecheck_and_negative_test_is_rejected():
    if shutil.which("bash") is None:
        _skip_or_fail("bash not found")
    r = _run("bash", str(ROOT / "tools" / "metal_typecheck.sh"))
    if r.returncode == 2:
        _skip_or_fail(f"no usable clang++: {r.stderr.strip()}")
    assert r.returncode == 0, r.stdout + r.stderr
    for line in ("ok        ops/optim/optim_metal.mm", "ok        ops/convert/convert_metal.mm",
                 "rejected  tests/metal_negative/wrong_call.mm", "rejected  tests/metal_negative/wrong_convert_call.mm"):
        assert line in r.stdout, r.stdout


@pytest.fixture(scope="module")
def wheel_cache(tmp_path_factory):
    # One download for the whole module; TFMPS_PYOBJC_CACHE lets CI keep the wheels.
    cache = os.environ.get("TFMPS_PYOBJC_CACHE")
    return Path(cache) if cache else tmp_path_factory.mktemp("pyobjc-wheels")


def _check_enums(cache, *extra):
    r = _run(sys.executable, str(ROOT / "tools" / "check_metal_enums.py"),
             "--cache-dir", str(cache), *extra)
    if r.returncode == 3:
        _skip_or_fail(f"could not download PyObjC's wheels: {r.stderr.strip()[-500:]}")
    return r


def test_stub_enum_values_match_pyobjc_metadata(wheel_cache):
    r = _check_enums(wheel_cache)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all match." in r.stdout


def test_enum_check_catches_a_wrong_value(wheel_cache, tmp_path):
    stubs = tmp_path / "metal_stubs"
    shutil.copytree(ROOT / "ops" / "metal_stubs", stubs)
    header = stubs / "MetalPerformanceShaders" / "MetalPerformanceShaders.h"
    text = header.read_text()
    assert "MPSNNRegularizationTypeL2 = 2," in text
    header.write_text(text.replace("TypeL2 = 2,", "TypeL2 = 3,"))
    r = _check_enums(wheel_cache, "--stubs", str(stubs))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "MPSNNRegularizationTypeL2" in r.stdout and "MISMATCH" in r.stdout
