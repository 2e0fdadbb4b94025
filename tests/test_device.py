"""The tf-mps PluggableDevice (ops/device/) on the Linux Metal emulation: registration,
the opt-in environment variable, device types, copies in both directions for every size
class and dtype, variables, tf.function, memory statistics, loading twice. Each case runs
tests/device/probe.py in a child process (a plugin registers itself process-wide)."""

import json
import os
import subprocess
import sys

import pytest

import metal_emu

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "device", "probe.py")


def _probe(env, mode=""):
    plugin = metal_emu.binary("libtfmps_metal_plugin.so")
    full = dict(os.environ, TFMPS_TEST_PLUGIN=plugin, TF_CPP_MIN_LOG_LEVEL="2", **env)
    full.pop("TFMPS_METAL_EMULATION", None) if "TFMPS_METAL_EMULATION" not in env else None
    out = subprocess.run([sys.executable, PROBE, mode], capture_output=True, text=True, env=full, timeout=300)
    assert out.returncode == 0, f"probe failed ({out.returncode}):\n{out.stderr[-4000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_without_the_environment_variable_there_is_no_device():
    seen, _ = _probe({})
    assert [t for _, t in seen["devices"]] == ["CPU"]


def test_an_unknown_value_is_reported_and_gives_no_device():
    seen, err = _probe({"TFMPS_METAL_EMULATION": "yes please"})
    assert [t for _, t in seen["devices"]] == ["CPU"]
    assert "TFMPS_METAL_EMULATION=yes please is not 1, mps or gpu" in err


@pytest.mark.parametrize("debug", ["0", "1"], ids=["plain", "debug-mode"])
def test_the_mps_device_copies_holds_variables_and_counts_memory(debug):
    seen, _ = _probe({"TFMPS_METAL_EMULATION": "1", "TFMPS_METAL_EMU_DEBUG": debug})
    assert ("/physical_device:MPS:0", "MPS") in [tuple(d) for d in seen["devices"]]
    assert seen["copies_ok"], "a host -> device -> host round trip changed data"
    assert seen["variable_device"].endswith("MPS:0")
    assert seen["variable"] == [2.0] * 6
    assert seen["function"] == [1.0, 2.0]
    before, during, after, peak = seen["memory"]
    assert during >= before + 4 * (4 << 20), seen["memory"]  # four 4 MB tensors live
    assert after <= before + 4096, "freed tensors must return their memory"
    assert peak >= during


def test_gpu_device_type_on_request():
    seen, _ = _probe({"TFMPS_METAL_EMULATION": "gpu"})
    assert ("/physical_device:GPU:0", "GPU") in [tuple(d) for d in seen["devices"]]
    assert seen["copies_ok"]


def test_loading_the_plugin_twice_is_harmless():
    seen, _ = _probe({"TFMPS_METAL_EMULATION": "1"}, mode="load-twice")
    assert [t for _, t in seen["devices"]].count("MPS") == 1
    assert seen["copies_ok"]


def test_an_allocation_over_the_limit_is_an_error_not_an_abort():
    # TF's host-to-device copy reports the failed allocation as InternalError ("Dst
    # tensor is not initialized"); a kernel's own output allocation gives
    # ResourceExhausted once ops have device kernels.
    seen, _ = _probe({"TFMPS_METAL_EMULATION": "1"}, mode="over-limit")
    assert seen["over_limit"] in ("ResourceExhaustedError", "InternalError"), seen
    assert seen["after"] == [1.0] * 4
