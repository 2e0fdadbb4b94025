"""Run in a child process by tests/test_device_kernels.py: a Dense classifier trained with
Keras `fit` (default compile arguments) on the CPU device and on the tf-mps device (the
Metal emulation), with `keras.optimizers.Adam` and `tf_mps.keras.optimizers.Adam`.

mode "fit" (and "fit-mixed", under Keras's mixed_float16 policy): prints JSON with the largest weight difference and both loss histories.
mode "step": one training step with device placement logged; the markers on stderr
bracket it, so the parent counts where each op of the step ran.
"""

import json
import sys

import numpy as np
import tensorflow as tf

import tf_mps
import tf_mps.device

if sys.argv[1] == "step":
    tf.debugging.set_log_device_placement(True)
DEV = tf_mps.device.load()
import keras  # noqa: E402

rng = np.random.default_rng(0)
X = rng.standard_normal((256, 20)).astype("float32")
Y = rng.integers(0, 5, 256)
OPTIMIZERS = {"keras": lambda: keras.optimizers.Adam(1e-2), "tf_mps": lambda: tf_mps.keras.optimizers.Adam(1e-2)}


def model(device, optimizer):
    keras.utils.set_random_seed(1)
    with tf.device(device):
        # (Under mixed_float16 the logits stay float32, as Keras's guide advises.)
        m = keras.Sequential([keras.Input((20,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(5, dtype="float32")])
        m.compile(optimizer=OPTIMIZERS[optimizer](),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return m


def fit(device, optimizer):
    m = model(device, optimizer)
    with tf.device(device):
        h = m.fit(X, Y, epochs=3, batch_size=32, verbose=0, shuffle=False)
    return m.get_weights(), h.history["loss"]


if __name__ == "__main__":
    if sys.argv[1] in ("fit", "fit-mixed"):
        if sys.argv[1] == "fit-mixed":
            keras.mixed_precision.set_global_policy("mixed_float16")
        out = {}
        for name in OPTIMIZERS:
            wc, lc = fit("/CPU:0", name)
            wd, ld = fit(DEV, name)
            out[name] = {"max_weight_diff": max(float(np.abs(a - b).max()) for a, b in zip(wc, wd)),
                         "max_weight": max(float(np.abs(a).max()) for a in wc), "loss_cpu": lc, "loss_device": ld}
        print(json.dumps(out))
    else:
        m = model(DEV, sys.argv[2])
        with tf.device(DEV):
            m.train_on_batch(X[:32], Y[:32])  # builds the train function's variables
            print("=== STEP", file=sys.stderr, flush=True)
            m.make_train_function(force=True)
            m.train_on_batch(X[:32], Y[:32])
            print("=== END", file=sys.stderr, flush=True)
        print(json.dumps({"device": DEV}))
