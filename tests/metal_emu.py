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


def no_leaks(emu, classes, skip_with_device=True):
    """A generator for an autouse fixture: the live instance count of each of `classes`
    returns to its value before the test (an Objective-C leak check).

    With the tf-mps device in the process (--tfmps-device) its own Metal objects come and
    go: counts are per class, so with skip_with_device they are checked in the plain run
    only. A completed command buffer is released by the queue's thread just after the
    waiter woke (test_metal_backends.py): the check gives it up to a second."""
    import time

    assert emu.available(), "the metal context found no device on the emulation"
    count = True
    if skip_with_device:
        import tf_mps.device

        count = tf_mps.device.loaded() is None
    before = {c: emu.live_instances(c) for c in classes}
    yield
    emu.reset_hooks()
    if not count:
        return
    for _ in range(100):
        after = {c: emu.live_instances(c) for c in classes}
        if after == before:
            break
        time.sleep(0.01)
    assert after == before, f"Objective-C objects leaked: {after} after, {before} before"
