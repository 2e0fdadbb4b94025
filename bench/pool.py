"""Benchmark: 2-D max and average pooling, tf_mps.ops.pool vs tf.nn.max_pool2d / avg_pool2d.

For each case and each pooling, in one run and interleaved (every round times each
contender in turn, so both meet the same machine; on a shared VM the speed drifts within
a minute):
  * tf-mps: tf_mps.ops.pool.max_pool2d / avg_pool2d and their gradients (MpsMaxPool2D,
    MpsMaxPool2DGrad, MpsAvgPool2D, MpsAvgPool2DGrad);
  * TF: tf.nn.max_pool2d / avg_pool2d and their gradients, TensorFlow's CPU kernels
    (oneDNN's when TF_ENABLE_ONEDNN_OPTS is on, TF's default on x86).
Both inside tf.function. "fwd+bwd" is one forward pass and the input gradient for a
given output gradient (under a tape, tf-mps's max pooling keeps its arg-max, as oneDNN's
keeps a workspace). Pooling moves memory rather than computing, so the columns are GB/s
of a nominal byte count (forward: x and y; backward: x, dy and dx for max, dy and dx for
avg), the same for both contenders. Each ratio is given
twice: by wall time, and by the process's CPU time (every thread's), which a machine
shared with other jobs disturbs less (there, wall time favours whichever side keeps more
threads runnable; TensorFlow's kernels wake more of its pool than tf-mps's do).

    python bench/pool.py [--repeats 7] [--calls 10] [--cases all] [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from _common import cores


def time_interleaved(fns: dict, calls: int, repeats: int) -> dict:
    """(wall seconds, process CPU seconds) per call of each function, one entry per round;
    every round times `calls` calls of each function in turn (_common.time_interleaved, with
    the CPU time as well)."""
    for fn in fns.values():  # trace / warm up
        fn()
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(calls):
                fn()
            times[name].append(((time.perf_counter() - w0) / calls, (time.process_time() - c0) / calls))
    return times


# name, N, H, W, C, window, stride, padding
CASES = [
    ("N32 56x56 C64 2x2/2 VALID", 32, 56, 56, 64, 2, 2, "VALID"),
    ("N32 28x28 C128 3x3/2 SAME", 32, 28, 28, 128, 3, 2, "SAME"),
    ("N32 112x112 C64 3x3/2 SAME", 32, 112, 112, 64, 3, 2, "SAME"),
    ("N64 14x14 C256 2x2/2 VALID", 64, 14, 14, 256, 2, 2, "VALID"),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timing rounds; the median is kept (default 7)")
    parser.add_argument("--calls", type=int, default=10, help="calls per contender per round (default 10)")
    parser.add_argument("--cases", default="all", help="comma-separated case numbers (1-based) or 'all'")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    args = parser.parse_args(argv)
    if min(args.repeats, args.calls) < 1:
        parser.error("--repeats and --calls must be >= 1")
    cases = CASES if args.cases == "all" else [CASES[int(i) - 1] for i in args.cases.split(",")]

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    import tf_mps
    from tf_mps.ops import pool

    dtype = getattr(tf, args.dtype)
    size = dtype.size
    print(f"tf-mps {tf_mps.__version__} | TensorFlow {tf.__version__} | {cores()} cores | "
          f"intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'default'} | "
          f"oneDNN opts {os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'default (on)')}")
    print(f"median of {args.repeats} interleaved rounds x {args.calls} calls, {args.dtype}\n")
    header = (f"{'case':<28} {'pool':<4} | {'tf-mps fwd':>10} {'TF fwd':>8} {'ratio':>6} {'cpu':>6} | "
              f"{'tf-mps f+b':>10} {'TF f+b':>8} {'ratio':>6} {'cpu':>6}")
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    for name, n, h, w, c, k, s, padding in cases:
        x = tf.constant(rng.standard_normal((n, h, w, c)), dtype=dtype)
        for kind, ours_fn, tf_fn in [("max", pool.max_pool2d, tf.nn.max_pool2d),
                                     ("avg", pool.avg_pool2d, tf.nn.avg_pool2d)]:
            y0 = tf_fn(x, k, s, padding)
            dy = tf.constant(rng.standard_normal(y0.shape), dtype=dtype)

            def step(fn):
                @tf.function
                def forward(x):
                    return fn(x, k, s, padding)

                @tf.function
                def forward_backward(x):
                    with tf.GradientTape() as tape:
                        tape.watch(x)
                        y = fn(x, k, s, padding)
                    return y, tape.gradient(y, x, output_gradients=dy)

                return forward, forward_backward

            ours_f, ours_fb = step(ours_fn)
            tf_f, tf_fb = step(tf_fn)
            # Same results first: the benchmark compares equal work.
            for a, b in zip(ours_fb(x), tf_fb(x)):
                a, b = tf.cast(a, tf.float64), tf.cast(b, tf.float64)
                err = float(tf.reduce_max(tf.abs(a - b)) / tf.reduce_max(tf.abs(b)))
                assert err < (1e-5 if size == 4 else 2e-3), f"{name} {kind}: tf-mps and TF disagree ({err:.2g})"

            times = time_interleaved({"ours_f": lambda: ours_f(x), "tf_f": lambda: tf_f(x),
                                      "ours_fb": lambda: ours_fb(x), "tf_fb": lambda: tf_fb(x)},
                                     args.calls, args.repeats)
            t = {key: statistics.median(w for w, _ in v) for key, v in times.items()}
            cpu = {key: statistics.median(c for _, c in v) for key, v in times.items()}
            xb, yb = x.shape.num_elements() * size, y0.shape.num_elements() * size
            fwd_bytes = xb + yb
            bwd_bytes = (xb + yb + xb) if kind == "max" else (yb + xb)
            gbs = lambda nbytes, seconds: nbytes / seconds / 1e9  # noqa: E731
            print(f"{name:<28} {kind:<4} | {gbs(fwd_bytes, t['ours_f']):10.1f} {gbs(fwd_bytes, t['tf_f']):8.1f} "
                  f"{t['tf_f'] / t['ours_f']:5.2f}x {cpu['tf_f'] / cpu['ours_f']:5.2f}x | "
                  f"{gbs(fwd_bytes + bwd_bytes, t['ours_fb']):10.1f} {gbs(fwd_bytes + bwd_bytes, t['tf_fb']):8.1f} "
                  f"{t['tf_fb'] / t['ours_fb']:5.2f}x {cpu['tf_fb'] / cpu['ours_fb']:5.2f}x", flush=True)
    print("\nGB/s columns (bytes each pass must move, by wall time); ratio = TF wall time / tf-mps wall time, "
          "cpu = the same with process CPU time (> 1: tf-mps is faster). f+b = forward and input gradient.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
