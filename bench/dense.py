"""Benchmark: the fully connected layer, tf_mps.ops.dense vs keras.layers.Dense's ops
(tf.matmul + tf.nn.bias_add + tf.nn.relu), and the precision of half accumulation.

Part 1, speed (float32, in one run and interleaved: every round times each contender in
turn, so both meet the same machine; on a shared VM the speed drifts within a minute):
  * tf-mps: tf_mps.ops.dense.dense(x, W, b, "relu") and its gradients (MpsDense,
    MpsDenseBackpropInput, MpsDenseBackpropKernel);
  * TF: tf.nn.relu(tf.nn.bias_add(tf.matmul(x, W), b)), what keras.layers.Dense runs,
    and its gradients (MatMul x2, ReluGrad, BiasAddGrad).
Both inside tf.function. "fwd+bwd" is the forward pass and the gradients for x, W and b
for a given output gradient: 3 x 2*N*K*M FLOPs (the same count for both).

Part 2, precision: float16 data, y = x @ W + b with float32 accumulation and with
float16 accumulation (dense.h's exact model of MPS's half accumulation), each against
float64, for in_features K = 64 .. 4096: x = relu of a standard normal (as a hidden
layer's input), W and b Glorot-uniform as Keras initializes them. Errors are norm-wise,
max |y - y64| / max |y64|, and the root mean square of (y - y64) / rms(y64).

    python bench/dense.py [--repeats 7] [--calls 20] [--skip-precision]
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import time

import numpy as np

from _common import cores, time_interleaved

# name, N, K, M
CASES = [
    ("N128 784->256", 128, 784, 256),
    ("N128 256->128", 128, 256, 128),
    ("N512 1024->1024", 512, 1024, 1024),
]
PRECISION_K = [64, 256, 1024, 4096]
PRECISION_N, PRECISION_M = 256, 256


def speed(tf, D, repeats: int, calls: int) -> None:
    print(f"{'case':<18} {'GFLOP':>6} | {'tf-mps fwd':>10} {'TF fwd':>8} {'ratio':>6} | "
          f"{'tf-mps f+b':>10} {'TF f+b':>8} {'ratio':>6}")
    print("-" * 80)
    rng = np.random.default_rng(0)
    for name, n, k, m in CASES:
        x = tf.constant(rng.standard_normal((n, k)).astype(np.float32))
        w = tf.constant((rng.standard_normal((k, m)) / np.sqrt(k)).astype(np.float32))
        b = tf.constant(rng.standard_normal(m).astype(np.float32))
        dy = tf.constant(rng.standard_normal((n, m)).astype(np.float32))

        def ours(x, w, b):
            return D.dense(x, w, b, "relu")

        def theirs(x, w, b):
            return tf.nn.relu(tf.nn.bias_add(tf.matmul(x, w), b))

        def step(layer):
            @tf.function
            def forward(x):
                return layer(x, w, b)

            @tf.function
            def forward_backward(x):
                with tf.GradientTape() as tape:
                    tape.watch([x, w, b])
                    y = layer(x, w, b)
                return (y, *tape.gradient(y, [x, w, b], output_gradients=dy))

            return forward, forward_backward

        ours_f, ours_fb = step(ours)
        tf_f, tf_fb = step(theirs)
        # The same results first (equal work), each against float64 (the relu mask from
        # the contender's own y: an element within float32 rounding of 0 may fall either way).
        x64, w64, b64, dy64 = (t.numpy().astype(np.float64) for t in (x, w, b, dy))
        for who, fn in (("tf-mps", ours_fb), ("TF", tf_fb)):
            got = fn(x)
            g64 = np.where(got[0].numpy() > 0, dy64, 0)
            exact = [np.maximum(x64 @ w64 + b64, 0), g64 @ w64.T, x64.T @ g64, g64.sum(0)]
            for what, a, e in zip(("y", "dx", "dW", "db"), got, exact):
                err = float(np.max(np.abs(a.numpy() - e)) / np.max(np.abs(e)))
                assert err < 1e-4, f"{name}: {who}'s {what} is off by {err:.2g} (relative, against float64)"
        times = time_interleaved({"ours_f": lambda: ours_f(x), "tf_f": lambda: tf_f(x),
                                  "ours_fb": lambda: ours_fb(x), "tf_fb": lambda: tf_fb(x)}, calls, repeats)
        t = {key: statistics.median(v) for key, v in times.items()}
        flops = 2.0 * n * k * m
        gf = lambda seconds, mult=1: mult * flops / seconds / 1e9  # noqa: E731
        print(f"{name:<18} {flops / 1e9:6.3f} | {gf(t['ours_f']):10.1f} {gf(t['tf_f']):8.1f} "
              f"{t['tf_f'] / t['ours_f']:5.2f}x | {gf(t['ours_fb'], 3):10.1f} {gf(t['tf_fb'], 3):8.1f} "
              f"{t['tf_fb'] / t['ours_fb']:5.2f}x", flush=True)
    print("\nGFLOP/s columns; ratio = TF time / tf-mps time (> 1: tf-mps is faster). f+b = forward and the "
          "gradients for x, W and b, 3 x GFLOP.\n")


def precision(tf, D) -> None:
    print(f"float16 data, N{PRECISION_N} K->M{PRECISION_M}, errors against float64 (max-norm relative; rms "
          "relative); time of one forward call")
    print(f"{'K':>6} | {'f32 acc max':>11} {'f32 acc rms':>11} | {'f16 acc max':>11} {'f16 acc rms':>11} | "
          f"{'f16/f32 rms':>11} | {'f32 acc ms':>10} {'f16 acc ms':>10}")
    print("-" * 100)
    rng = np.random.default_rng(1)
    for k in PRECISION_K:
        limit = np.sqrt(6.0 / (k + PRECISION_M))  # Glorot uniform, Keras's default
        x = np.maximum(rng.standard_normal((PRECISION_N, k)), 0).astype(np.float16)
        w = rng.uniform(-limit, limit, (k, PRECISION_M)).astype(np.float16)
        b = rng.uniform(-0.1, 0.1, PRECISION_M).astype(np.float16)
        exact = x.astype(np.float64) @ w.astype(np.float64) + b.astype(np.float64)
        row = []
        ms = []
        for acc in ("float32", "float16"):
            D.dense(x, w, b, accumulator_precision=acc)  # warm up
            t0 = time.perf_counter()
            y = D.dense(x, w, b, accumulator_precision=acc).numpy().astype(np.float64)
            ms.append((time.perf_counter() - t0) * 1e3)
            row.append((np.max(np.abs(y - exact)) / np.max(np.abs(exact)),
                        np.sqrt(np.mean((y - exact) ** 2)) / np.sqrt(np.mean(exact**2))))
        print(f"{k:>6} | {row[0][0]:11.2e} {row[0][1]:11.2e} | {row[1][0]:11.2e} {row[1][1]:11.2e} | "
              f"{row[1][1] / row[0][1]:10.1f}x | {ms[0]:10.2f} {ms[1]:10.2f}", flush=True)
    print("\nfloat32 accumulation: the half result rounded once (its error is half's rounding, ~2^-12 rms); "
          "float16 accumulation: every partial sum rounded to half, in order (dense.h).")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timing rounds; the median is kept (default 7)")
    parser.add_argument("--calls", type=int, default=20, help="calls per contender per round (default 20)")
    parser.add_argument("--skip-precision", action="store_true", help="only the speed table")
    args = parser.parse_args(argv)
    if min(args.repeats, args.calls) < 1:
        parser.error("--repeats and --calls must be >= 1")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    import tf_mps

    D = importlib.import_module("tf_mps.ops.dense")  # (tf_mps.ops.dense is also the function's name)
    info = tf_mps.build_info()
    print(f"tf-mps {tf_mps.__version__} | TensorFlow {tf.__version__} | {cores()} cores | "
          f"intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}")
    print(f"BLAS: {info['blas']}")
    print(f"median of {args.repeats} interleaved rounds x {args.calls} calls, float32, relu\n")
    speed(tf, D, args.repeats, args.calls)
    if not args.skip_precision:
        precision(tf, D)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
