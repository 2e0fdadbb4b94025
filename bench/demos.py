"""Benchmark: the object-classification demo's model (demo/object_classification.py) built
from tf-mps's layers and optimizer against the same model from Keras's own layers and
Adam, in one run: epoch time and images/s of `fit` on Fashion-MNIST (a slice of it),
the two trained in alternation so that both see the same machine.

    python bench/demos.py [--images 12000] [--epochs 2] [--rounds 2] [--batch-size 128]

The first epoch of each model includes tracing; the table reports the later epochs
(median over rounds). CPU device only (on Linux the tf-mps device is the Metal emulation:
not a speed to compare).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=12000, help="training images per epoch (default 12000)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per round and model, the first untimed (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="alternations of the two models (default 2)")
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the first epoch of a round is not timed)")

    sys.path.insert(0, os.path.join(ROOT, "demo"))
    import numpy as np
    import object_classification as demo  # noqa: E402
    import keras
    import tensorflow as tf

    (xa, ya), _, classes, source = demo._fashion_mnist(os.path.join(ROOT, "build", "bench-demos"))
    x = demo._to_float(xa[:args.images])
    y = ya[:args.images].astype(np.int32)

    def keras_twin():
        # The demo's architecture with Keras's layers (same arguments as build_model).
        L = keras.layers
        return keras.Sequential([
            keras.Input((28, 28, 1)), L.Conv2D(32, 3, padding="same", use_bias=False),
            L.BatchNormalization(momentum=0.9), L.ReLU(), L.MaxPooling2D(2),
            L.Conv2D(64, 3, padding="same", use_bias=False), L.BatchNormalization(momentum=0.9), L.ReLU(),
            L.MaxPooling2D(2), L.Flatten(), L.Dropout(0.3), L.Dense(128, activation="relu"), L.Dense(len(classes))])

    def make(kind):
        keras.utils.set_random_seed(1)
        if kind == "tf-mps":
            model = demo.build_model(len(classes), "float32")
            opt = demo._optimizer("adam", 2e-3, 10 ** 6)
        else:
            model = keras_twin()
            opt = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, 10 ** 6))
        model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        return model

    class EpochTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.t0)

    models = {k: make(k) for k in ("tf-mps", "keras")}
    times = {k: [] for k in models}
    jit = {}
    for r in range(args.rounds):
        for kind, model in models.items():
            cb = EpochTimes()
            model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0, shuffle=True, callbacks=[cb])
            times[kind].extend(cb.times[1:])
            jit[kind] = model.jit_compile
            print(f"  round {r + 1} {kind:7s} epochs: " + ", ".join(f"{t:.1f} s" for t in cb.times), flush=True)

    print(f"\nDemo model, {source}, {len(x)} images per epoch, batch {args.batch_size}, "
          f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} cores")
    print(f"{'model':28s} {'epoch s':>8s} {'images/s':>9s}  jit_compile")
    med = {k: statistics.median(v) for k, v in times.items()}
    for kind, label in (("tf-mps", "tf_mps layers + tf_mps Adam"), ("keras", "Keras layers + Keras Adam")):
        print(f"{label:28s} {med[kind]:8.2f} {len(x) / med[kind]:9.0f}  {jit[kind]}")
    print(f"ratio (Keras epoch time / tf-mps epoch time): {med['keras'] / med['tf-mps']:.2f}x "
          "(above 1: tf-mps faster; target: not slower)")
    print("jit_compile as compile()'s default 'auto' resolved it: Keras turns XLA off on a CPU-only machine; "
          "tf-mps's layers also say supports_jit=False (XLA cannot compile custom ops).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
