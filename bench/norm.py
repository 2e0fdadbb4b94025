"""Benchmark: batch normalization, tf_mps.ops.norm.batch_norm vs TF's FusedBatchNormV3.

For each case, in one run and interleaved (every round times each contender in turn, so
both meet the same machine; on a shared VM the speed drifts within a minute):
  * tf-mps: tf_mps.ops.norm.batch_norm (MpsBatchNorm, MpsBatchNormGrad);
  * TF: tf.compat.v1.nn.fused_batch_norm (FusedBatchNormV3 and its gradient, TF's CPU
    kernels), the op Keras's BatchNormalization used to call and TF's fastest CPU path.
Both inside tf.function, float32 unless the case says float16 (float32 statistics).
"train fwd": forward with batch statistics; "train f+b": forward and the gradients dx,
dgamma, dbeta for a given dy; "infer fwd": forward with given mean and variance.
Instance norm has no TF op: its line compares with the same math in TF ops
(tf.nn.moments over the spatial axes + tf.nn.batch_normalization, as Keras writes it).

    python bench/norm.py [--repeats 7] [--calls 10] [--cases all]
"""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np

import time

from _common import cores


def time_interleaved_cpu(fns: dict, calls: int, repeats: int) -> tuple[dict, dict]:
    """Wall and CPU (all of this process's threads) seconds per call of each function,
    one entry per round; every round times each function in turn. On a shared machine
    the CPU time is the steadier measure of the work: other processes' load stretches
    the wall time of both contenders, not the cycles each spends."""
    for fn in fns.values():  # trace / warm up
        fn()
        fn()
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(calls):
                fn()
            wall[name].append((time.perf_counter() - t0) / calls)
            cpu[name].append((time.process_time() - c0) / calls)
    return wall, cpu

# name, shape, dtype, kind
CASES = [
    ("N32 56x56 C64", (32, 56, 56, 64), "float32", "batch"),
    ("N32 28x28 C128", (32, 28, 28, 128), "float32", "batch"),
    ("N32 56x56 C64 float16", (32, 56, 56, 64), "float16", "batch"),
    ("N32 28x28 C128 float16", (32, 28, 28, 128), "float16", "batch"),
    ("instance N32 56x56 C64", (32, 56, 56, 64), "float32", "instance"),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timing rounds; the median is kept (default 7)")
    parser.add_argument("--calls", type=int, default=10, help="calls per contender per round (default 10)")
    parser.add_argument("--cases", default="all", help="comma-separated case numbers (1-based) or 'all'")
    args = parser.parse_args(argv)
    if min(args.repeats, args.calls) < 1:
        parser.error("--repeats and --calls must be >= 1")
    cases = CASES if args.cases == "all" else [CASES[int(i) - 1] for i in args.cases.split(",")]

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    import tf_mps
    from tf_mps import _lib
    from tf_mps.ops import norm

    isa = _lib.load().mps_norm_cpu_isa().numpy().decode()
    print(f"tf-mps {tf_mps.__version__} | TensorFlow {tf.__version__} | {cores()} cores | "
          f"intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'default'} | loops {isa}")
    print(f"median of {args.repeats} interleaved rounds x {args.calls} calls; ms per call; "
          "ratio = TF time / tf-mps time (> 1: tf-mps is faster)\n")
    header = (f"{'case':<24} | {'train fwd':>9} {'TF':>7} {'ratio':>6} | {'train f+b':>9} {'TF':>7} {'ratio':>6} | "
              f"{'infer fwd':>9} {'TF':>7} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    cpu_lines = []
    for name, shape, dtype, kind in cases:
        c = shape[-1]
        x = tf.constant((rng.standard_normal(shape) * 2 + 1).astype(dtype))
        dy = tf.constant(rng.standard_normal(shape).astype(dtype))
        gamma = tf.constant(rng.standard_normal(c).astype(np.float32))
        beta = tf.constant(rng.standard_normal(c).astype(np.float32))
        mean = tf.constant(rng.standard_normal(c).astype(np.float32))
        var = tf.constant(rng.uniform(0.5, 2, c).astype(np.float32))

        if kind == "batch":
            def ours_train(x):
                return norm.batch_norm(x, gamma, beta)[0]

            def tf_train(x):
                return tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=1e-3, is_training=True)[0]

            def ours_infer(x):
                return norm.batch_norm(x, gamma, beta, mean, var, training=False)

            def tf_infer(x):
                return tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, mean, var, epsilon=1e-3,
                                                        is_training=False)[0]
        else:
            def ours_train(x):
                return norm.instance_norm(x, gamma, beta)

            def tf_train(x):
                xf = tf.cast(x, tf.float32)
                m, v = tf.nn.moments(xf, axes=[1, 2], keepdims=True)
                return tf.cast(tf.nn.batch_normalization(xf, m, v, beta, gamma, 1e-3), x.dtype)

            ours_infer = tf_infer = None

        def forward_backward(fn):
            @tf.function
            def step(x):
                with tf.GradientTape() as tape:
                    tape.watch([x, gamma, beta])
                    y = fn(x)
                return (y, *tape.gradient(y, [x, gamma, beta], output_gradients=dy))
            return step

        fns = {"ours_f": tf.function(ours_train), "tf_f": tf.function(tf_train),
               "ours_fb": forward_backward(ours_train), "tf_fb": forward_backward(tf_train)}
        if ours_infer is not None:
            fns.update(ours_i=tf.function(ours_infer), tf_i=tf.function(tf_infer))
        # Same results first: the benchmark compares equal work.
        tol = 2e-2 if dtype == "float16" else 1e-4
        for a, b in zip(fns["ours_fb"](x), fns["tf_fb"](x)):
            a, b = tf.cast(a, tf.float64), tf.cast(b, tf.float64)
            err = float(tf.reduce_max(tf.abs(a - b)) / tf.reduce_max(tf.abs(b)))
            assert err < tol, f"{name}: tf-mps and TF disagree (relative {err:.2g})"

        wall, cpu = time_interleaved_cpu({k: (lambda f=f: f(x)) for k, f in fns.items()}, args.calls, args.repeats)
        t = {key: statistics.median(v) * 1e3 for key, v in wall.items()}
        tc = {key: statistics.median(v) * 1e3 for key, v in cpu.items()}

        def cols(key):
            if f"ours_{key}" not in t:
                return f"{'-':>9} {'-':>7} {'-':>6}"
            return f"{t['ours_' + key]:9.2f} {t['tf_' + key]:7.2f} {t['tf_' + key] / t['ours_' + key]:5.2f}x"

        cpu_ratios = ", ".join(f"{label} {tc['tf_' + key] / tc['ours_' + key]:.2f}x"
                               for key, label in [("f", "train fwd"), ("fb", "train f+b"), ("i", "infer fwd")]
                               if f"ours_{key}" in tc)
        print(f"{name:<24} | {cols('f')} | {cols('fb')} | {cols('i')}", flush=True)
        cpu_lines.append(f"{name:<24} | {cpu_ratios}")
    print("\nCPU-time ratios (TF CPU time / tf-mps CPU time, all threads; steadier on a shared machine):")
    print("\n".join(cpu_lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
