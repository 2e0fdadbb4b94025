"""The Metal emulation's own C++ test programs (emulation/tests/*.mm, GoogleTest), run from
pytest so that CI's one test command runs them: the Objective-C runtime's tests, the fakes'
tests, and the negative tests (deliberately wrong Metal code that the emulation must
catch), the last also under the debug mode (TFMPS_METAL_EMU_DEBUG=1: delayed command
buffers, NaN-filled storage)."""

import os
import subprocess

import pytest

import metal_emu

pytestmark = pytest.mark.skipif(os.uname().sysname != "Linux", reason="the emulation is Linux only")


def _run(name, env_extra=None, timeout=600):
    path = metal_emu.binary(name)
    env = dict(os.environ, **(env_extra or {}))
    out = subprocess.run([path, "--gtest_brief=1"], capture_output=True, text=True, env=env, timeout=timeout)
    assert out.returncode == 0, f"{name} failed (exit {out.returncode}):\n{out.stdout[-6000:]}\n{out.stderr[-6000:]}"
    return out


def test_objc_runtime():
    _run("objc_runtime_test")


@pytest.mark.parametrize("debug", ["0", "1"], ids=["plain", "debug-mode"])
def test_metal_fakes(debug):
    _run("fakes_test", {"TFMPS_METAL_EMU_DEBUG": debug})


@pytest.mark.parametrize("debug", ["0", "1"], ids=["plain", "debug-mode"])
def test_negative_variants_are_caught(debug):
    _run("metal_negative_test", {"TFMPS_METAL_EMU_DEBUG": debug})


def test_clang_still_emits_the_abi_the_runtime_reads():
    # Apple-ABI code generation for ELF is not a configuration clang documents: if a new
    # clang emits method lists or sections this runtime does not read, the runtime aborts
    # at load ("method list with entsize/flags ...") and this test names the version.
    out = subprocess.run(["clang++-19", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "version 19." in out.stdout, f"the emulation is pinned to clang 19, found: {out.stdout.splitlines()[0]}"
