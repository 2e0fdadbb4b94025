"""Benchmark: the layout converters against a plain memory copy and stock TensorFlow.

For each conversion (16 MB and more) prints the time, the achieved rate (bytes read +
bytes written per second), that rate as a fraction of a plain memory copy touching the
same number of bytes (target >= 0.7), and the speed-up over the same conversion written
with stock TensorFlow ops (cast, pad, reshape, transpose).

How it is timed: the tf_mps function is called eagerly, as a user calls it (one op; a
tf.function call costs ~170 us more here); the stock path runs eagerly or as a
tf.function, whichever is faster; the copy is numpy's, on 1 thread or all cores,
whichever is faster. Rounds interleave the three (copy, tf_mps, stock, copy, ...) and
the fraction is the median over rounds of copy time / tf_mps time (its interquartile
range is printed too), so that a drift of the machine's memory bandwidth hits both
sides alike.

Run at two sizes by default: 16-46 MB per call (near this machine's 32 MB L3, where a
plain copy is fastest) and 4x that (DRAM-bound).

    python bench/convert.py [--calls 10] [--repeats 21] [--scales 1,4]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from _common import copier, cores, time_call, time_interleaved


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10, help="calls per timing round (default 10)")
    parser.add_argument("--repeats", type=int, default=21,
                        help="interleaved timing rounds; medians are kept (default 21)")
    parser.add_argument("--scales", default="1,4",
                        help="comma-separated batch-size multipliers (default 1,4: 16-46 MB and 4x that)")
    args = parser.parse_args(argv)
    try:
        scales = [float(x) for x in args.scales.split(",")]
    except ValueError:
        parser.error(f"--scales must be numbers separated by commas, got {args.scales!r}")
    if args.calls < 1 or args.repeats < 1 or min(scales) <= 0:
        parser.error("--calls and --repeats must be >= 1 and every scale > 0")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    import tf_mps
    from tf_mps import convert as cv

    print(f"tf-mps {tf_mps.__version__} | TensorFlow {tf.__version__} | {cores()} cores | "
          f"{args.calls} calls x {args.repeats} interleaved rounds (medians)")
    # ImageNet normalization, (x - mean) / std = x * (1 / std) + (-mean / std): the scale
    # and bias are computed once, as an input pipeline does (three eager ops per call would
    # add ~0.1 ms to every call of either path).
    mean = tf.constant([0.485, 0.456, 0.406])
    std = tf.constant([0.229, 0.224, 0.225])
    norm_scale, norm_bias = 1 / std, -mean / std

    def stock_to_image(x, dtype=tf.float32, scale=None, bias=None):
        c = x.shape[-1]
        x = tf.cast(x, tf.float32) / 255.0 if x.dtype == tf.uint8 else tf.cast(x, tf.float32)
        if scale is not None:
            x = x * scale + bias
        s = (c + 3) // 4
        x = tf.pad(x, [[0, 0], [0, 0], [0, 0], [0, 4 * s - c]])
        n, h, w = x.shape[:3]
        return tf.cast(tf.transpose(tf.reshape(x, [n, h, w, s, 4]), [0, 3, 1, 2, 4]), dtype)

    def stock_from_image(img, c):
        n, s, h, w, _ = img.shape
        return tf.reshape(tf.transpose(img, [0, 2, 3, 1, 4]), [n, h, w, 4 * s])[..., :c]

    worst = 1.0
    for factor in scales:
        def batch(n, factor=factor):
            return max(1, int(round(n * factor)))

        rng = np.random.default_rng(0)
        rgb = rng.standard_normal((batch(96), 128, 128, 3)).astype(np.float32)  # 18.9 MB
        rgb_u8 = rng.integers(0, 256, (batch(256), 128, 128, 3), dtype=np.uint8)  # 12.6 MB in, 33.6 MB out
        feat = rng.standard_normal((batch(32), 32, 32, 128)).astype(np.float32)  # 16.8 MB
        seq = rng.standard_normal((batch(256), 256, 64)).astype(np.float32)  # 16.8 MB
        rgb_img = cv.to_image(rgb).numpy()
        feat_img = cv.to_image(feat).numpy()
        feat_chw = cv.nhwc_to_matrix(feat, "CHW").numpy()
        seq_tm = cv.sequence_to_time_major(seq).numpy()
        sensors = rng.standard_normal((batch(5472), 128, 6)).astype(np.float32)  # 16.8 MB (sensor windows)

        cases = [
            ("NHWC f32 C=3 -> image f32", rgb, lambda x: cv.to_image(x), lambda x: stock_to_image(x)),
            ("image f32 -> NHWC f32 C=3", rgb_img, lambda x: cv.from_image(x, 3), lambda x: stock_from_image(x, 3)),
            ("NHWC u8 -> image f16, normalized", rgb_u8,
             lambda x: cv.to_image(x, dtype=tf.float16, scale=norm_scale, bias=norm_bias),
             lambda x: stock_to_image(x, tf.float16, norm_scale, norm_bias)),
            ("NHWC f32 C=128 -> matrix CHW", feat, lambda x: cv.nhwc_to_matrix(x, "CHW"),
             lambda x: tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [x.shape[0], -1])),
            ("NHWC f32 C=128 -> image f32", feat, lambda x: cv.to_image(x), lambda x: stock_to_image(x)),
            ("sequence -> time-major f32", seq, lambda x: cv.sequence_to_time_major(x),
             lambda x: tf.transpose(x, [1, 0, 2])),
            # the other directions
            ("image f32 -> NHWC f32 C=128", feat_img, lambda x: cv.from_image(x, 128),
             lambda x: stock_from_image(x, 128)),
            ("matrix CHW -> NHWC f32 C=128", feat_chw, lambda x: cv.matrix_to_nhwc(x, 32, 32, 128, "CHW"),
             lambda x: tf.transpose(tf.reshape(x, [x.shape[0], 128, 32, 32]), [0, 2, 3, 1])),
            ("time-major -> sequence f32", seq_tm, lambda x: cv.time_major_to_sequence(x),
             lambda x: tf.transpose(x, [1, 0, 2])),
            ("sequence C=6 -> time-major f32", sensors, lambda x: cv.sequence_to_time_major(x),
             lambda x: tf.transpose(x, [1, 0, 2])),
        ]
        print(f"\nscale {factor:g}:")
        print(f"{'conversion':<34}{'MB in+out':>10}{'ms':>9}{'GB/s':>8}{'of copy':>9}{'(IQR)':>12}{'vs TF':>8}")
        for name, data, ours, stock in cases:
            x = tf.constant(data)
            f_ours = lambda x=x, f=ours: f(x)
            stock_eager = lambda x=x, f=stock: f(x)
            stock_graph = tf.function(stock_eager, autograph=False)
            np.testing.assert_array_equal(f_ours().numpy(), stock_graph().numpy())  # same result, or no comparison
            f_stock = min((stock_eager, stock_graph), key=lambda f: time_call(f, 3, 3))
            out_bytes = f_ours().numpy().nbytes
            moved = data.nbytes + out_bytes
            copy, _ = copier(moved // 2)  # a copy touching as many bytes (read + written)
            times = time_interleaved({"copy": copy, "ours": f_ours, "stock": f_stock}, args.calls, args.repeats)
            t_ours = float(np.median(times["ours"]))
            fractions = np.array(times["copy"]) / np.array(times["ours"])
            fraction = float(np.median(fractions))
            q1, q3 = np.percentile(fractions, [25, 75])
            speedup = float(np.median(np.array(times["stock"]) / np.array(times["ours"])))
            worst = min(worst, fraction)
            print(f"{name:<34}{moved / 1e6:>10.1f}{t_ours * 1e3:>9.2f}{moved / t_ours / 1e9:>8.1f}"
                  f"{fraction:>9.2f}{f'{q1:.2f}-{q3:.2f}':>12}{speedup:>7.2f}x")
    print(f"\nlowest fraction of the memory-copy rate: {worst:.2f} (target >= 0.7)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
