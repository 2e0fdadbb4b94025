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
]


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
          "gradients, 3 x GFLOP.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
