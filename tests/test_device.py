"""The tf-mps PluggableDevice (ops/device/) on the Linux Metal emulation: registration,
the opt-in environment variable, device types, copies in both directions for every size
class and dtype, variables, tf.function, memory statistics, loading twice, eight threads at
once, declining in another TensorFlow. Each case runs tests/device/probe.py in a child
process (a plugin registers itself process-wide)."""

import json
import os
import re
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


# Eight Python threads doing eager ops on the device at once. float32 tensors live in the
# device's memory (the plugin's streams, events and copies): no thread may see another's.
# int32 tensors stay in host memory on a GPU-like device, so an eager int32 op on the
# device becomes a two-device one-op function (its argument on the CPU, the op on the
# device) with a _Send/_Recv pair between the two; TensorFlow runs all such functions on
# ONE shared rendezvous (execute.cc: reuse_rendezvous_for_functions while running eager
# ops as functions) under the same key each time, so two threads running the same op at
# once can take each other's tensors. TensorFlow's bug, not the plugin's: nothing of it
# touches the plugin (the int32 data never leaves host memory), it goes away with eager
# ops as functions off, and CUDA GPUs show the same symptom (tensorflow/tensorflow#123980:
# int32 shape ops of concurrent eager threads getting other threads' inputs); the CPU
# device never (one device: no rendezvous). Workaround: eager ops as functions off
# (TFE_ContextSetRunEagerOpAsFunction; probe.run_eager_ops_as_functions(False)).
def test_threads_never_see_each_others_device_tensors():
    seen, _ = _probe({"TFMPS_METAL_EMULATION": "1"}, mode="threads:float32:2")
    assert seen["threads"]["ops"] == 3200
    assert seen["threads"]["mixed"] == 0, seen["threads"]


def test_threads_never_see_each_others_int32_tensors_with_the_workaround():
    seen, _ = _probe({"TFMPS_METAL_EMULATION": "1"}, mode="threads:int32:5:workaround")
    assert seen["threads"]["ops"] == 8000
    assert seen["threads"]["mixed"] == 0, seen["threads"]


# TFMPS_TEST_PRETEND_TF_VERSION (test-only, read by the plugin's version check alone)
# stands for the running TensorFlow's version.
MISMATCH = re.compile(r"^tf-mps: this device plugin was built for TensorFlow (\S+) but runs in (\S+); "
                      r"no tf-mps device \(rebuild it\)$", re.M)


def test_a_plugin_built_for_another_tensorflow_declines_with_one_message():
    seen, err = _probe({"TFMPS_METAL_EMULATION": "1", "TFMPS_TEST_PRETEND_TF_VERSION": "2.99.0"},
                       mode="load-twice")
    assert [t for _, t in seen["devices"]] == ["CPU"]
    found = MISMATCH.findall(err)
    assert len(found) == 1, err[-2000:]
    built_for, runs_in = found[0]
    assert built_for.split(".")[:2] != ["2", "99"] and runs_in == "2.99.0"


def test_another_patch_release_of_the_same_tensorflow_keeps_the_device():
    seen, err = _probe({"TFMPS_METAL_EMULATION": "1", "TFMPS_TEST_PRETEND_TF_VERSION": "another-patch-release"},
                       mode="devices")
    assert ("/physical_device:MPS:0", "MPS") in [tuple(d) for d in seen["devices"]]
    assert not MISMATCH.search(err), err[-2000:]
