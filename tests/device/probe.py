"""Run in a child process by tests/test_device.py: loads the tf-mps device plugin built on
the Metal emulation, exercises it, and prints one JSON object of what it saw. A child
process, because a PluggableDevice registers itself process-wide."""

import json
import os
import sys

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import load_library


def main(mode):
    plugin = os.environ["TFMPS_TEST_PLUGIN"]
    load_library.load_pluggable_device_library(plugin)
    if mode == "load-twice":
        load_library.load_pluggable_device_library(plugin)
    out = {"devices": [(d.name, d.device_type) for d in tf.config.list_physical_devices()]}
    kind = os.environ.get("TFMPS_METAL_EMULATION", "")
    dev_type = "GPU" if kind.lower() == "gpu" else "MPS"
    if not any(t == dev_type for _, t in out["devices"]):
        print(json.dumps(out))
        return
    name = f"/{dev_type}:0"
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
