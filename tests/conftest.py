"""Shared test configuration: tolerances (stated once, here), hypothesis profiles, and
the device parameter every op test runs under."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Against a float64 NumPy reference, float32 results differ by accumulated rounding.
RTOL_VS_FLOAT64 = {np.float32: 2e-5, np.float64: 1e-12}

settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "dev", max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


# Devices the op tests run on: the CPU, and with --tfmps-device the tf-mps device on the
# Metal emulation too (every test then also runs with that device present, so ops that
# have a kernel there run there unless a test pins them, as on a Mac's GPU).
DEVICES = ["/CPU:0"]


def pytest_addoption(parser):
    parser.addoption(
        "--tfmps-device", action="store_true",
        help="load the tf-mps device (the Metal emulation's build) and run every device-parametrized "
        "test on it as well as on the CPU")


def pytest_configure(config):
    if not config.getoption("--tfmps-device"):
        return
    # Before TensorFlow starts: the plugin reads it once.
    os.environ["TFMPS_METAL_EMULATION"] = "1"
    import tf_mps.device

    try:
        DEVICES.append(tf_mps.device.load())
    except RuntimeError as e:
        raise pytest.UsageError(str(e)) from e


# Test files whose every case runs in child processes (or external tools) that set up
# their own device, or none: the --tfmps-device pass would run them again unchanged.
ONCE_MODULES = {"test_demo.py", "test_device.py", "test_device_kernels.py", "test_metal_emulation.py",
                "test_metal_typecheck.py"}


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--tfmps-device"):
        return
    skip = pytest.mark.skip(reason="runs in child processes of its own: the plain pass ran it")
    for item in items:
        # test_<family>_metal.py: the family's Metal backend through _tfmps_metal_emu, no
        # device involved (the family's own test file runs it through the device).
        if item.path.name in ONCE_MODULES or item.path.name.endswith("_metal.py"):
            item.add_marker(skip)


def pytest_report_header(config):
    return f"tf-mps test devices: {', '.join(DEVICES)}"


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", DEVICES, indirect=True, ids=[d.strip("/") for d in DEVICES])


@pytest.fixture
def device(request):
    import tensorflow as tf

    with tf.device(request.param):
        yield request.param


def assert_rel_close(actual, expected, rtol, what=""):
    """Norm-wise relative error: max|actual - expected| <= rtol * max|expected|.

    The measure used for "matches to 1e-6 relative": element-wise relative error is
    meaningless for elements that pass near zero."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    err = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    assert actual.shape == expected.shape, f"{what}: shapes {actual.shape} vs {expected.shape}"
    assert err <= rtol * scale, f"{what}: max |diff| {err:.3g} > {rtol:g} * max |expected| {scale:.3g}"


def assert_close(actual, expected, rtol, atol=0.0, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)
