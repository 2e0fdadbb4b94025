"""The FP16 accumulation study: how far float16 accumulation (Metal's
MPSNNConvolutionAccumulatorPrecisionOptionHalf, emulated exactly by tf-mps's CPU backend)
moves convolution results from float32 accumulation, both against a float64 reference.

Every measurement feeds the same float16 data to three computations:
  * ref:  tf.nn.conv2d (or its gradients) in float64 on the float16 values (exact enough);
  * fp32: tf_mps.ops.conv2d, accumulator_precision="float32" (float32 sums, one rounding);
  * fp16: tf_mps.ops.conv2d, accumulator_precision="float16" (every partial sum rounded to
          half, in the documented order: kh, kw, input channel).
and reports the error norm-wise, max|y - ref| / max|ref| ("max"), and as the root mean
square, rms(y - ref) / rms(ref) ("rms"), in units of half's unit roundoff u = 2^-11
(4.9e-4) where noted.

Sections (all by default):
  layers    realistic layers: 3x3 convs C_in 16..512, 1x1 convs, depthwise 3x3/5x5,
            forward and the two gradients (dx: K = KH*KW*C_out terms; dw: K = N*OH*OW)
  growth    error vs reduction length K (1x1 convs, K = 16 .. 16384), for zero-mean and
            same-sign (post-ReLU) data, with the fitted exponent of K
  overflow  inputs scaled up until outputs overflow: the fraction of inf outputs with
            half accumulation vs float32 accumulation (which overflows only at the end)
  cnn       (not in the default set: minutes) a small CNN on Fashion-MNIST trained under
            Keras's mixed_float16 policy twice, same data, seed and order, with its
            tf_mps.keras.layers.Conv2D accumulating in float32 and in float16: test accuracy

    python bench/fp16_accumulation.py [--sections layers,growth,overflow] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np

U = 2.0**-11


def _errors(y, ref):
    y = np.asarray(y, np.float64)
    ref = np.asarray(ref, np.float64)
    finite = np.isfinite(y).all()
    if not finite:
        return float("inf"), float("inf")
    err = y - ref
    return float(np.abs(err).max() / np.abs(ref).max()), float(np.sqrt(np.mean(err**2) / np.mean(ref**2)))


def _data(rng, shape, kind):
    """Activations: 'relu' (|N(0,1)|: post-ReLU, all >= 0) or 'normal' (zero-mean)."""
    a = rng.standard_normal(shape)
    return np.abs(a) if kind == "relu" else a


def _he(rng, shape, fan_in):
    return rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)


def _half(a):
    return np.asarray(a, np.float16)


def layers(tf, tf_mps, quick):
    """Forward and gradients of realistic layers."""
    # name, N, H, W, C_in, C_out, K, depthwise
    cases = [
        ("3x3 C16->16 28x28", 4, 28, 28, 16, 16, 3, False),
        ("3x3 C32->32 28x28", 4, 28, 28, 32, 32, 3, False),
        ("3x3 C64->64 14x14", 4, 14, 14, 64, 64, 3, False),
        ("3x3 C128->128 14x14", 2, 14, 14, 128, 128, 3, False),
        ("3x3 C256->256 7x7", 2, 7, 7, 256, 256, 3, False),
        ("3x3 C512->512 7x7", 2, 7, 7, 512, 512, 3, False),
        ("1x1 C64->256 14x14", 2, 14, 14, 64, 256, 1, False),
        ("1x1 C256->64 14x14", 2, 14, 14, 256, 64, 1, False),
        ("1x1 C1024->256 7x7", 2, 7, 7, 1024, 256, 1, False),
        ("dw 3x3 C64 28x28", 4, 28, 28, 64, 64, 3, True),
        ("dw 5x5 C64 28x28", 4, 28, 28, 64, 64, 5, True),
    ]
    if quick:
        cases = cases[::3]
    rng = np.random.default_rng(0)
    print("== layers: float16 data (post-ReLU activations, He-initialized weights), SAME, stride 1")
    print("   error vs the float64 reference, max = max|err|/max|ref|, rms = rms(err)/rms(ref), in units of u")
    print(f"{'layer':<22} {'pass':<4} {'K':>6} | {'fp32 max':>8} {'fp32 rms':>8} | {'fp16 max':>8} {'fp16 rms':>8}"
          f" | {'fp16/fp32 rms':>13}")
    for name, n, h, w, c, o, k, dw in cases:
        groups = c if dw else 1
        x = tf.constant(_half(_data(rng, (n, h, w, c), "relu")))
        f = tf.constant(_half(_he(rng, (k, k, 1 if dw else c, o), k * k * (1 if dw else c))))
        dy = tf.constant(_half(rng.standard_normal((n, h, w, o)) * 0.1))
        x64, f64, dy64 = (tf.cast(t, tf.float64) for t in (x, f, dy))

        def ref_conv(x, f):
            if dw:
                return tf.nn.depthwise_conv2d(x, tf.reshape(f, (k, k, c, o // c)), [1, 1, 1, 1], "SAME")
            return tf.nn.conv2d(x, f, 1, "SAME")

        with tf.GradientTape() as tape:
            tape.watch([x64, f64])
            z = ref_conv(x64, f64)
        rdx, rdf = tape.gradient(z, [x64, f64], output_gradients=dy64)
        out = {}
        for prec in ("float32", "float16"):
            with tf.GradientTape() as tape:
                tape.watch([x, f])
                y = tf_mps.ops.conv2d(x, f, groups=groups, accumulator_precision=prec)
            dx, df = tape.gradient(y, [x, f], output_gradients=dy)
            out[prec] = [(y, z), (dx, rdx), (df, tf.reshape(rdf, df.shape))]
        ks = {"fwd": k * k * (1 if dw else c), "dx": k * k * (1 if dw else o) * (o // c if dw else 1),
              "dw": n * h * w}
        for i, p in enumerate(["fwd", "dx", "dw"]):
            e32 = _errors(*(t.numpy() for t in out["float32"][i]))
            e16 = _errors(*(t.numpy() for t in out["float16"][i]))
            ratio = e16[1] / e32[1] if e32[1] > 0 else float("nan")
            print(f"{name if i == 0 else '':<22} {p:<4} {ks[p]:>6} | {e32[0] / U:8.2f} {e32[1] / U:8.3f} | "
                  f"{e16[0] / U:8.2f} {e16[1] / U:8.3f} | {ratio:13.1f}", flush=True)


def growth(tf, tf_mps, quick):
    """Error vs reduction length on 1x1 convolutions (K = C_in)."""
    ks = [2**p for p in range(4, 13 if quick else 15)]
    rng = np.random.default_rng(1)
    print("\n== growth: 1x1 conv, 256 pixels x 32 outputs, K = C_in terms, float16 data, weights N(0, 1/K)")
    print("   rms(err)/rms(ref) in units of u (fp32: the final rounding alone, ~0.3 u)")
    rows = {}
    print(f"{'K':>6} | {'normal fp32':>11} {'normal fp16':>11} | {'relu fp32':>9} {'relu fp16':>9}"
          f" | {'relu+pos w fp16':>15} {'stagnated':>9}")
    for k in ks:
        line = f"{k:>6} |"
        for kind in ("normal", "relu", "positive"):
            x = tf.constant(_half(_data(rng, (1, 16, 16, k), "normal" if kind == "normal" else "relu")))
            wv = rng.standard_normal((1, 1, k, 32)) / math.sqrt(k)
            if kind == "positive":
                wv = np.abs(wv)  # every term >= 0: the worst case of recursive summation
            f = tf.constant(_half(wv))
            ref = tf.nn.conv2d(tf.cast(x, tf.float64), tf.cast(f, tf.float64), 1, "VALID").numpy()
            e = {p: _errors(tf_mps.ops.conv2d(x, f, padding="VALID", accumulator_precision=p).numpy(), ref)
                 for p in ("float32", "float16")}
            rows.setdefault(kind, []).append(e["float16"][1])
            if kind == "positive":
                # Relative error of the sum itself (all terms positive: err/ref per output).
                y16 = tf_mps.ops.conv2d(x, f, padding="VALID", accumulator_precision="float16").numpy()
                rel = float(np.mean((ref - y16.astype(np.float64)) / ref))
                line += f" {e['float16'][1] / U:15.2f} {rel:9.2%}"
            else:
                line += f" {e['float32'][1] / U:11.3f} {e['float16'][1] / U:11.2f} |"
        print(line, flush=True)
    for kind, errs in rows.items():
        slope = np.polyfit(np.log(ks), np.log(errs), 1)[0]
        print(f"   {kind:<8}: fp16 rms error grows as K^{slope:.2f}")


def overflow(tf, tf_mps, quick):
    """Inputs scaled by s until outputs overflow: the share of inf outputs."""
    rng = np.random.default_rng(2)
    print("\n== overflow: 3x3 conv C64->64, N2 14x14, float16 data x*s (x post-ReLU |N(0,1)|), He weights")
    print("   share of outputs that are +-inf; max|ref| = the largest exact output")
    x0 = _data(rng, (2, 14, 14, 64), "relu")
    f = tf.constant(_half(_he(rng, (3, 3, 64, 64), 9 * 64)))
    # Same-sign weights: partial sums grow monotonically (a layer of all-positive weights,
    # e.g. an averaging filter)
    fpos = tf.constant(_half(np.abs(_he(rng, (3, 3, 64, 64), 9 * 64))))
    print("   (fp16 only: inf with half accumulation where float32 accumulation is finite)")
    print(f"{'s':>8} | {'max|ref|':>10} {'fp32 inf':>8} {'fp16 inf':>8} {'fp16 only':>9} | {'pos w: max|ref|':>15}"
          f" {'fp32 inf':>8} {'fp16 inf':>8} {'fp16 only':>9}")
    for s in ([1, 100, 1000, 3000, 10000] if quick else [1, 100, 1000, 2000, 2500, 3000, 5000, 10000, 11000, 12000, 15000]):
        xs = _half(x0 * s)
        if not np.isfinite(xs).all():
            break
        x = tf.constant(xs)
        line = f"{s:>8} |"
        for filt in (f, fpos):
            ref = tf.nn.conv2d(tf.cast(x, tf.float64), tf.cast(filt, tf.float64), 1, "SAME").numpy()
            inf = {p: np.isinf(tf_mps.ops.conv2d(x, filt, accumulator_precision=p).numpy())
                   for p in ("float32", "float16")}
            only = float(np.mean(inf["float16"] & ~inf["float32"]))
            width = 10 if filt is f else 15
            line += (f" {np.abs(ref).max():{width}.4g} {np.mean(inf['float32']):8.2%} {np.mean(inf['float16']):8.2%}"
                     f" {only:9.2%} |")
        print(line.rstrip(" |"), flush=True)
    # Cancellation: the exact sum is small, a partial sum is not.
    x = tf.ones((1, 1, 1, 4), tf.float16)
    w = tf.constant([40000, 40000, -40000, -40000], tf.float16, shape=(1, 1, 4, 1))
    y32 = tf_mps.ops.conv2d(x, w).numpy().item()
    y16 = tf_mps.ops.conv2d(x, w, accumulator_precision="float16").numpy().item()
    print(f"   cancellation: 1x1 conv, terms +40000 +40000 -40000 -40000: fp32 {y32:g}, fp16 {y16:g}")


def speed(tf, tf_mps):
    """Throughput of the emulation (one 3x3 layer), for planning a study's size."""
    rng = np.random.default_rng(3)
    x = tf.constant(_half(_data(rng, (4, 28, 28, 64), "relu")))
    f = tf.constant(_half(_he(rng, (3, 3, 64, 64), 576)))
    flops = 2.0 * 4 * 28 * 28 * 64 * 576
    out = []
    for p in ("float32", "float16"):
        tf_mps.ops.conv2d(x, f, accumulator_precision=p)
        t0 = time.perf_counter()
        for _ in range(3):
            tf_mps.ops.conv2d(x, f, accumulator_precision=p)
        out.append(flops * 3 / (time.perf_counter() - t0) / 1e9)
    print(f"\n== speed: 3x3 C64->64 N4 28x28 forward, float16 data: fp32 accumulation {out[0]:.1f} GFLOP/s, "
          f"fp16 emulation {out[1]:.2f} GFLOP/s ({out[0] / out[1]:.0f}x slower)")


FASHION_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist


def _fashion_mnist():
    import gzip

    def read(name):
        with gzip.open(os.path.join(FASHION_DIR, name), "rb") as fh:
            data = fh.read()
        dims = data[3]
        shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
        return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)

    try:
        return (read("train-images-idx3-ubyte.gz"), read("train-labels-idx1-ubyte.gz"),
                read("t10k-images-idx3-ubyte.gz"), read("t10k-labels-idx1-ubyte.gz"))
    except OSError as e:
        raise SystemExit(f"cnn: Fashion-MNIST not found in {FASHION_DIR} (Debian's dataset-fashion-mnist, "
                         f"scripts/setup.sh installs it): {e}") from None


def cnn(tf, tf_mps, quick, train=20000, epochs=3, seeds=(0, 1)):
    """A small CNN trained with each accumulator precision, per seed."""
    import keras

    from tf_mps.keras import layers as mps_layers

    xa, ya, xb, yb = _fashion_mnist()
    if quick:
        train, epochs, seeds = min(train, 3000), 1, seeds[:1]
    xa, ya = xa[:train, :, :, None].astype(np.float32) / 255.0, ya[:train]
    xb = xb[:, :, :, None].astype(np.float32) / 255.0
    print(f"\n== cnn: Fashion-MNIST, {len(xa)} training images, {epochs} epochs, batch 64, Adam 1e-3, seeds "
          f"{', '.join(map(str, seeds))}; test on {len(xb)}")
    print("   Conv2D(16, 3, relu) - MaxPool - Conv2D(32, 3, relu) - MaxPool - Flatten - Dense(10), Keras policy "
          "mixed_float16 (float16 data, float32 weights; Dense and the rest in Keras's own float16 math)")
    def train_one(prec, seed):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([
            keras.Input((28, 28, 1)),
            mps_layers.Conv2D(16, 3, padding="same", activation="relu", accumulator_precision=prec),
            keras.layers.MaxPooling2D(),
            mps_layers.Conv2D(32, 3, padding="same", activation="relu", accumulator_precision=prec),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
            keras.layers.Activation("linear", dtype="float32"),
        ])
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
                      jit_compile=False)
        t0 = time.perf_counter()
        hist = model.fit(xa, ya, batch_size=64, epochs=epochs, shuffle=True, verbose=0)
        seconds = time.perf_counter() - t0
        loss, acc = model.evaluate(xb, yb, batch_size=500, verbose=0)
        print(f"   seed {seed}, accumulator {prec}: train loss {hist.history['loss'][-1]:.4f}, test loss "
              f"{loss:.4f}, test accuracy {acc:.2%} ({seconds:.0f} s training)", flush=True)
        return acc

    diffs = []
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        for seed in seeds:
            acc = {prec: train_one(prec, seed) for prec in ("float32", "float16")}
            diffs.append(100 * (acc["float16"] - acc["float32"]))
            print(f"   seed {seed}: float16 - float32 accumulation: {diffs[-1]:+.2f} points of test accuracy",
                  flush=True)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    print(f"   mean difference over {len(diffs)} seed(s): {np.mean(diffs):+.2f} points")


SECTIONS = {"layers": layers, "growth": growth, "overflow": overflow, "cnn": cnn}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--sections", default="layers,growth,overflow",
                        help="comma-separated: layers, growth, overflow, cnn (default: the first three)")
    parser.add_argument("--quick", action="store_true", help="fewer layers, sizes and scales")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    import tf_mps

    print(f"tf-mps {tf_mps.__version__} | TensorFlow {tf.__version__} | u = 2^-11 = {U:.3g}\n")
    for name in names:
        SECTIONS[name](tf, tf_mps, args.quick)
    speed(tf, tf_mps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
