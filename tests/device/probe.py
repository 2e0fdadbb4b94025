"""Run in a child process by tests/test_device.py: loads the tf-mps device plugin built on
the Metal emulation, exercises it, and prints one JSON object of what it saw. A child
process, because a PluggableDevice registers itself process-wide."""

import json
import os
import sys
import threading

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import load_library


def run_eager_ops_as_functions(enable):
    """TensorFlow's switch for running each eager op as a one-op function (on by default).
    Its C API (tensorflow/c/eager/c_api_experimental.h: TFE_ContextSetRunEagerOpAsFunction)
    is reachable from Python through pywrap_tfe only; the context must exist, so the
    device plugin must have been loaded before."""
    from tensorflow.python import pywrap_tfe
    from tensorflow.python.eager import context

    context.ensure_initialized()
    pywrap_tfe.TFE_ContextSetRunEagerOpAsFunction(context.context()._handle, enable)


def threads(name, dtype, rounds, per_thread=200, n_threads=8):
    """Each of n_threads Python threads makes its own tensors on the device (filled with
    its number; odd threads 64 elements, even ones 8) and reads them back, at once: how
    many came back with another thread's data, and examples."""
    mixed = []

    def worker(k):
        c = np.full(64 if k % 2 else 8, k, dtype)
        with tf.device(name):
            for _ in range(per_thread):
                t = tf.identity(tf.constant(c))
                got = t.numpy()
                if not np.array_equal(got, c):
                    mixed.append(f"thread {k} got shape {list(got.shape)} values {got[:3].tolist()}")

    for _ in range(rounds):
        ts = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    return {"ops": rounds * n_threads * per_thread, "mixed": len(mixed), "examples": mixed[:4]}


def main(mode):
    plugin = os.environ["TFMPS_TEST_PLUGIN"]
    if os.environ.get("TFMPS_TEST_PRETEND_TF_VERSION") == "another-patch-release":
        # (read by the plugin when it loads, below)
        major, minor = tf.__version__.split(".")[:2]
        os.environ["TFMPS_TEST_PRETEND_TF_VERSION"] = f"{major}.{minor}.99"
    load_library.load_pluggable_device_library(plugin)
    if mode == "load-twice":
        load_library.load_pluggable_device_library(plugin)
    out = {"devices": [(d.name, d.device_type) for d in tf.config.list_physical_devices()]}
    kind = os.environ.get("TFMPS_METAL_EMULATION", "")
    dev_type = "GPU" if kind.lower() == "gpu" else "MPS"
    if mode == "devices" or not any(t == dev_type for _, t in out["devices"]):
        print(json.dumps(out))
        return
    name = f"/{dev_type}:0"
    if mode.startswith("threads:"):
        # threads:<dtype>:<rounds>[:workaround]
        _, dtype, rounds, *rest = mode.split(":")
        if "workaround" in rest:
            run_eager_ops_as_functions(False)
        out["threads"] = threads(name, np.dtype(dtype), int(rounds))
        print(json.dumps(out))
        return
    if mode == "over-limit":
        # 5 GiB on a device whose limit is 4 GiB: an error, never an abort, and the
        # device keeps working.
        try:
            with tf.device(name):
                tf.identity(tf.zeros([5 << 28]))
            out["over_limit"] = "allocated"
        except tf.errors.OpError as e:
            out["over_limit"] = type(e).__name__
        with tf.device(name):
            out["after"] = tf.identity(tf.ones([4])).numpy().tolist()
        print(json.dumps(out))
        return
    rng = np.random.default_rng(0)
    copies = []
    for dtype in (np.float32, np.float16, np.int32, np.uint8, np.float64):
        for shape in ((0,), (1,), (3, 5), (1 << 20,)):
            a = rng.standard_normal(shape).astype(dtype) if dtype != np.uint8 else rng.integers(0, 255, shape, dtype=np.uint8)
            with tf.device(name):
                t = tf.identity(tf.constant(a))
            copies.append(bool(np.array_equal(t.numpy(), a)) and t.device.endswith(f"{dev_type}:0"))
    out["copies_ok"] = all(copies)
    with tf.device(name):
        v = tf.Variable(np.arange(6, dtype=np.float32))
        v.assign(np.full(6, 2.0, np.float32))
        read = v.read_value()
    out["variable_device"] = v.device
    out["variable"] = read.numpy().tolist()

    @tf.function
    def f(x):
        with tf.device(name):
            return tf.identity(x)

    out["function"] = f(tf.constant([1.0, 2.0])).numpy().tolist()
    info0 = tf.config.experimental.get_memory_info(name[1:])
    big = []
    with tf.device(name):
        for _ in range(4):
            big.append(tf.identity(tf.zeros([1 << 20])))
    info1 = tf.config.experimental.get_memory_info(name[1:])
    del big
    info2 = tf.config.experimental.get_memory_info(name[1:])
    out["memory"] = [info0["current"], info1["current"], info2["current"], info1["peak"]]
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
