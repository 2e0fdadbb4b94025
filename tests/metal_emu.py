"""The Metal emulation's Python module (_tfmps_metal_emu, built by tools/build_emulation.sh
into build/emulation): the project's Metal backends running on the Linux emulation of the
Objective-C runtime, Metal and MPS (docs/metal-emulation.md)."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_DIR = os.environ.get("TFMPS_EMULATION_BUILD", os.path.join(ROOT, "build", "emulation"))


def load():
    """The module, or a skip (a failure under CI=true: CI must run these tests)."""
    if sys.platform != "linux":
        pytest.skip("the Metal emulation is built on Linux only (a Mac runs Apple's Metal)", allow_module_level=True)
    if BUILD_DIR not in sys.path:
        sys.path.insert(0, BUILD_DIR)
    try:
        import _tfmps_metal_emu
    except ImportError as e:
        message = f"the Metal emulation is not built in {BUILD_DIR} ({e}); run tools/build_emulation.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message, allow_module_level=True)  # load() runs at module level
    return _tfmps_metal_emu


def binary(name):
    path = os.path.join(BUILD_DIR, name)
    if not os.path.exists(path):
        message = f"{path} is not built; run tools/build_emulation.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
