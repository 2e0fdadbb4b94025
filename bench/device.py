"""Benchmark: the tf-mps device's own layer (plugin, streams, kernels) against TensorFlow's
CPU device, in one run.

  * per-kernel launch overhead: a chain of small element-wise ops (eager, and in a
    tf.function) on the tf-mps device vs on TF's CPU device;
  * one training step (Keras `train_on_batch`) of a Dense classifier on both.

On Linux the tf-mps device is the project's Metal code on its CPU emulation of Metal: the
"GPU" work is computed by the CPU, so the numbers measure what tf-mps's layer costs
(encoding, command buffers, synchronization), NOT a GPU. Nobody has run this on a Mac yet.

    TFMPS_METAL_EMULATION=1 python bench/device.py [--ops 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from _common import time_call


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=200, help="small ops per timed chain (default 200)")
    parser.add_argument("--repeats", type=int, default=5, help="timing runs, median reported (default 5)")
    parser.add_argument("--batch", type=int, default=128, help="training batch size (default 128)")
    args = parser.parse_args(argv)
    if not os.environ.get("TFMPS_METAL_EMULATION") and sys.platform != "darwin":
        os.environ["TFMPS_METAL_EMULATION"] = "1"  # the emulation's device: opt in for this run

    import tensorflow as tf

    import tf_mps.device

    dev = tf_mps.device.load()
    import keras

    print(f"tf-mps device {dev} vs TensorFlow {tf.__version__}'s CPU device")
    if sys.platform != "darwin":
        print("NOTE: Linux: the device runs on the Metal emulation (the CPU computes its kernels);\n"
              "      this measures tf-mps's own layer, it is not a GPU number.")

    x0 = np.ones([64], np.float32)
    rows = []

    for where in (dev, "/CPU:0"):
        with tf.device(where):
            x = tf.identity(tf.constant(x0))

            def chain(x=x):
                y = x
                for _ in range(args.ops):
                    y = y * 1.0001 + 0.5
                return y

            def eager(chain=chain):
                chain().numpy()

            fn = tf.function(chain)

            def graph(fn=fn):
                fn().numpy()

            t_eager = time_call(eager, 2, args.repeats) / (2 * args.ops)
            t_graph = time_call(graph, 5, args.repeats) / (2 * args.ops)
        rows.append((where, t_eager, t_graph))
    print(f"\nper small op (64 floats; {2 * args.ops} ops per chain, then one copy to the host):")
    print(f"  {'device':10} {'eager us/op':>12} {'tf.function us/op':>18}")
    for where, te, tg in rows:
        print(f"  {where:10} {te * 1e6:12.1f} {tg * 1e6:18.1f}")
    (_, de, dg), (_, ce, cg) = rows
    print(f"  ratio tf-mps/CPU: eager {de / ce:.2f}x, tf.function {dg / cg:.2f}x (lower is better)")

    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.batch, 784)).astype(np.float32)
    Y = rng.integers(0, 10, args.batch)
    steps = {}
    for where in (dev, "/CPU:0"):
        keras.utils.set_random_seed(0)
        with tf.device(where):
            m = keras.Sequential([keras.Input((784,)), keras.layers.Dense(256, activation="relu"),
                                  keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])
            m.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])

            def step(m=m):
                m.train_on_batch(X, Y)

            steps[where] = time_call(step, 5, args.repeats)
    print(f"\nDense classifier 784-256-128-10, batch {args.batch}, Keras Adam, one train_on_batch:")
    for where, t in steps.items():
        print(f"  {where:10} {t * 1e3:8.2f} ms/step")
    print(f"  ratio tf-mps/CPU: {steps[dev] / steps['/CPU:0']:.2f}x (lower is better)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
