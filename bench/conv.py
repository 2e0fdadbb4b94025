"""Benchmark: Conv2D forward + backward, tf_mps.ops.conv2d vs tf.nn.conv2d (TF's oneDNN).

For each case, in one run and interleaved (every round times each contender in turn, so
both meet the same machine; on a shared VM the speed drifts within a minute):
  * tf-mps: tf_mps.ops.conv2d, its input and filter gradients (MpsConv2D,
    MpsConv2DBackpropInput, MpsConv2DBackpropFilter);
  * TF: tf.nn.conv2d (tf.nn.depthwise_conv2d for the depthwise case) and its gradients,
    the oneDNN kernels of TensorFlow's CPU build.
Both inside tf.function. "fwd+bwd" is one forward pass and both gradients (input and
filter) for a given output gradient: 3 convolutions' worth of multiply-adds, counted as
2 * N * OH * OW * O * KH * KW * C/groups FLOPs each (the same count for both). The
transposed case compares tf_mps.ops.conv.conv2d_transpose with tf.nn.conv2d_transpose
(its FLOPs: those of the convolution it transposes).

The "BN+ReLU+pool" cases time the block that follows a convolution in a CNN: batch
normalization with batch statistics, ReLU, max pooling; forward, and forward plus the
gradients w.r.t. x, gamma and beta. tf-mps: tf_mps.ops.norm.batch_norm (MpsBatchNorm) +
tf.nn.relu + tf_mps.ops.pool.max_pool2d (MpsMaxPool2D); TF: FusedBatchNormV3 (what
Keras's BatchNormalization calls) + tf.nn.relu + tf.nn.max_pool2d. Memory-bound work, so
those lines print milliseconds per call, not GFLOP/s.

--dtype float16 runs both on float16 data (tf-mps: float32 accumulation, rounded once;
TF: its float16 kernels, Eigen's unless oneDNN has an AVX-512 build); add
--accumulator-precision float16 for tf-mps's exact half-accumulation emulation (much
slower: a study tool, docs/fp16-accumulation.md; use --cases to pick small ones).

    python bench/conv.py [--repeats 7] [--calls 5] [--cases all] [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np

from _common import cores, time_interleaved

# name, N, H, W, C, O, K, kind ("conv", "depthwise", or "transpose": H, W, C are the
# transposed op's output, O its input channels, stride 2)
CASES = [
    ("N32 32x32 C64->64 3x3", 32, 32, 32, 64, 64, 3, "conv"),
    ("N64 28x28 C1->32 3x3", 64, 28, 28, 1, 32, 3, "conv"),
    ("N16 56x56 C64->128 3x3", 16, 56, 56, 64, 128, 3, "conv"),
    ("depthwise N32 56x56 C64 3x3", 32, 56, 56, 64, 64, 3, "depthwise"),
    ("transpose N16 28->56 C128->64 3x3 s2", 16, 56, 56, 64, 128, 3, "transpose"),
    # BN+ReLU+pool: K is the pooling window, stride 2, VALID (O unused)
    ("BN+ReLU+pool N32 56x56 C64 2x2/2", 32, 56, 56, 64, 64, 2, "bn_relu_pool"),
    ("BN+ReLU+pool N32 28x28 C128 3x3/2", 32, 28, 28, 128, 128, 3, "bn_relu_pool"),
]


def bn_relu_pool_case(tf, tf_mps, name, shape, k, dtype, repeats, calls, rng):
    """Times one BN+ReLU+pool case; returns its table line."""
    x = tf.constant((rng.standard_normal(shape) * 2 + 0.5).astype(dtype))
    c = shape[-1]
    gamma = tf.constant(rng.uniform(0.5, 1.5, c).astype(np.float32))
    beta = tf.constant(rng.standard_normal(c).astype(np.float32))
    n, h, w, _ = shape
    dy = tf.constant(rng.standard_normal((n, (h - k) // 2 + 1, (w - k) // 2 + 1, c)).astype(dtype))

    def ours(x, gamma, beta):
        y, _, _ = tf_mps.ops.norm.batch_norm(x, gamma, beta, epsilon=1e-3, training=True)
        return tf_mps.ops.pool.max_pool2d(tf.nn.relu(y), k, 2, "VALID")

    def stock(x, gamma, beta):
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=1e-3, is_training=True)
        return tf.nn.max_pool2d(tf.nn.relu(y), k, 2, "VALID")

    def step(block):
        @tf.function
        def forward(x):
            return block(x, gamma, beta)

        @tf.function
        def forward_backward(x):
            with tf.GradientTape() as tape:
                tape.watch([x, gamma, beta])
                y = block(x, gamma, beta)
            return (y, *tape.gradient(y, [x, gamma, beta], output_gradients=dy))

        return forward, forward_backward

    ours_f, ours_fb = step(ours)
    tf_f, tf_fb = step(stock)
    # Same results first. The two batch norms round differently (a few ulps), and where
    # a pooling window holds two near-equal maxima that is enough to send the gradient to
    # the other one: a handful of dx elements (and, through them, dgamma and dbeta a
    # little) differ by a whole dy value. So: y to 1e-4; dx equal to 1e-4 except at most
    # 1 element in 10^4; dgamma and dbeta to 1e-2.
    scale = 1e-4 if dtype == np.float32 else 1e-2
    got, ref = ours_fb(x), tf_fb(x)
    for label, a, b in zip(("y", "dx", "dgamma", "dbeta"), got, ref):
        a, b = tf.cast(a, tf.float64), tf.cast(b, tf.float64)
        off = tf.abs(a - b) / tf.reduce_max(tf.abs(b))
        if label == "dx":
            bad = int(tf.reduce_sum(tf.cast(off > scale, tf.int64)))
            assert bad <= a.shape.num_elements() // 10000, f"{name}: dx disagrees at {bad} elements"
        else:
            err = float(tf.reduce_max(off))
            limit = scale if label == "y" else 1e-2
            assert err < limit, f"{name}: tf-mps and TF disagree on {label} (relative {err:.2g})"
    times = time_interleaved({"ours_f": lambda: ours_f(x), "tf_f": lambda: tf_f(x),
                              "ours_fb": lambda: ours_fb(x), "tf_fb": lambda: tf_fb(x)}, calls, repeats)
    t = {key: statistics.median(v) * 1e3 for key, v in times.items()}
    return (f"{name:<38} {'ms':>6} | {t['ours_f']:10.2f} {t['tf_f']:8.2f} {t['tf_f'] / t['ours_f']:5.2f}x | "
            f"{t['ours_fb']:10.2f} {t['tf_fb']:8.2f} {t['tf_fb'] / t['ours_fb']:5.2f}x")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timing rounds; the median is kept (default 7)")
    parser.add_argument("--calls", type=int, default=5, help="calls per contender per round (default 5)")
    parser.add_argument("--cases", default="all", help="comma-separated case numbers (1-based) or 'all'")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="data type (float32)")
    parser.add_argument("--accumulator-precision", choices=["float32", "float16"], default="float32",
                        help="tf-mps's accumulator_precision (float32)")
    args = parser.parse_args(argv)
    if min(args.repeats, args.calls) < 1:
        parser.error("--repeats and --calls must be >= 1")
    cases = CASES if args.cases == "all" else [CASES[int(i) - 1] for i in args.cases.split(",")]

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    import tf_mps

    info = tf_mps.build_info()
    print(f"tf-mps {tf_mps.__version__} | TensorFlow {tf.__version__} | {cores()} cores | "
          f"intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}")
    print(f"BLAS: {info['blas']}")
    print(f"median of {args.repeats} interleaved rounds x {args.calls} calls, {args.dtype} (tf-mps accumulates in "
          f"{args.accumulator_precision}), SAME padding, stride 1 (transpose: 2)\n")
    dtype = np.dtype(args.dtype)
    prec = args.accumulator_precision
    # Agreement checked before timing: float32 to 1e-4; float16 to a few half ulps (and
    # half accumulation to its sqrt(K) growth, docs/fp16-accumulation.md).
    tolerance = 1e-4 if args.dtype == "float32" else (5e-3 if prec == "float32" else 5e-2)
    header = (f"{'case':<38} {'GFLOP':>6} | {'tf-mps fwd':>10} {'TF fwd':>8} {'ratio':>6} | "
              f"{'tf-mps f+b':>10} {'TF f+b':>8} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    for name, n, h, w, c, o, k, kind in cases:
        if kind == "bn_relu_pool":
            print(bn_relu_pool_case(tf, tf_mps, name, (n, h, w, c), k, dtype, args.repeats, args.calls, rng),
                  flush=True)
            continue
        depthwise = kind == "depthwise"
        if kind == "transpose":
            # y [n, h, w, c] = conv2d_transpose(x [n, h/2, w/2, o], filter [k, k, c, o])
            x = tf.constant(rng.standard_normal((n, h // 2, w // 2, o)).astype(dtype))
            f = tf.constant((rng.standard_normal((k, k, c, o)) * 0.1).astype(dtype))
            dy = tf.constant(rng.standard_normal((n, h, w, c)).astype(dtype))
            out_shape = [n, h, w, c]

            def tf_conv(x, f=f):
                return tf.nn.conv2d_transpose(x, f, out_shape, 2, "SAME")

            def ours_conv(x, f=f):
                return tf_mps.ops.conv.conv2d_transpose(x, f, out_shape, strides=2, padding="SAME",
                                                        accumulator_precision=prec)
        else:
            x = tf.constant(rng.standard_normal((n, h, w, c)).astype(dtype))
            f = tf.constant((rng.standard_normal((k, k, 1 if depthwise else c, o)) * 0.1).astype(dtype))
            dy = tf.constant(rng.standard_normal((n, h, w, o)).astype(dtype))
        groups = c if depthwise else 1
        if depthwise:
            tf_filter = tf.reshape(f, (k, k, c, o // c))

            def tf_conv(x, f=tf_filter):
                return tf.nn.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME")
        elif kind == "conv":
            def tf_conv(x, f=f):
                return tf.nn.conv2d(x, f, 1, "SAME")

        if kind != "transpose":
            def ours_conv(x, f=f, groups=groups):
                return tf_mps.ops.conv2d(x, f, strides=1, padding="SAME", groups=groups, accumulator_precision=prec)

        def step(conv, filt):
            @tf.function
            def forward(x):
                return conv(x)

            @tf.function
            def forward_backward(x):
                with tf.GradientTape() as tape:
                    tape.watch([x, filt])
                    y = conv(x, filt)
                dx, df = tape.gradient(y, [x, filt], output_gradients=dy)
                return y, dx, df

            return forward, forward_backward

        ours_f, ours_fb = step(lambda x, f=f: ours_conv(x, f), f)
        tf_f, tf_fb = step(lambda x, f=(tf_filter if depthwise else f): tf_conv(x, f), tf_filter if depthwise else f)
        # Same results first: the benchmark compares equal work. For float16 against TF's
        # float32 kernels on the same values: TF's float16 depthwise filter gradient sums
        # its 100k terms in half (0.9% off here) and is timed, not trusted.
        if args.dtype == "float16":
            tfilt = tf_filter if depthwise else f
            x32, f32, dy32 = (tf.cast(t, tf.float32) for t in (x, tfilt, dy))
            with tf.GradientTape() as tape:
                tape.watch([x32, f32])
                y32 = tf_conv(x32, f32)
            ref = (y32, *tape.gradient(y32, [x32, f32], output_gradients=dy32))
        else:
            ref = tf_fb(x)
        got = ours_fb(x)
        for a, b in zip(got, ref):
            a, b = tf.cast(a, tf.float64), tf.cast(tf.reshape(b, a.shape), tf.float64)
            err = float(tf.reduce_max(tf.abs(a - b)) / tf.reduce_max(tf.abs(b)))
            assert err < tolerance, f"{name}: tf-mps and TF disagree (relative {err:.2g})"

        times = time_interleaved({"ours_f": lambda: ours_f(x), "tf_f": lambda: tf_f(x),
                                  "ours_fb": lambda: ours_fb(x), "tf_fb": lambda: tf_fb(x)},
                                 args.calls, args.repeats)
        t = {key: statistics.median(v) for key, v in times.items()}
        flops = 2.0 * n * h * w * o * k * k * (1 if depthwise else c)
        if kind == "transpose":
            flops /= 4  # the transposed convolution's input is the stride-2 grid
        gf = lambda seconds, mult=1: mult * flops / seconds / 1e9  # noqa: E731
        print(f"{name:<38} {flops / 1e9:6.3f} | {gf(t['ours_f']):10.1f} {gf(t['tf_f']):8.1f} "
              f"{t['tf_f'] / t['ours_f']:5.2f}x | {gf(t['ours_fb'], 3):10.1f} {gf(t['tf_fb'], 3):8.1f} "
              f"{t['tf_fb'] / t['ours_fb']:5.2f}x", flush=True)
    print("\nGFLOP/s columns; ratio = TF time / tf-mps time (> 1: tf-mps is faster). f+b = forward and both "
          "gradients, 3 x GFLOP; BN+ReLU+pool lines: milliseconds per call.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
