"""tf_mps.ops.pool (max_pool2d, avg_pool2d) and their gradients against a float64 NumPy
reference written from the equations (itself checked against TensorFlow's float64 ops,
tf.nn.max_pool2d and tf.nn.avg_pool2d: TF 2.21's float64 AvgPoolGrad is wrong for SAME
windows larger than the input) and TensorFlow's ops and Keras's layers directly, over
fixed cases and over random shapes and attributes (hypothesis); gradients also by
tf.test.compute_gradient; ties as TF's CPU MaxPoolGrad breaks them; second order against
TF's MaxPoolGradGrad; float16; every validation path gives InvalidArgumentError naming
the op and the argument."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RTOL_VS_FLOAT64, assert_rel_close
from tf_mps import _lib
from tf_mps.ops import pool

lib = _lib.load()
INVALID = tf.errors.InvalidArgumentError

# Tolerances, norm-wise (conftest.assert_rel_close): float32 results against the float64
# reference. Max pooling forward is exact (a selection); its gradient sums a few dy values.
RTOL = RTOL_VS_FLOAT64[np.float32]
# float16: each result computed in float32 and rounded once to half (relative 2^-11).
RTOL_HALF = 1e-3
# tf.test.compute_gradient in float32: the ops are piecewise linear, so the finite
# differences are exact but for the rounding of y (~ eps * |y| / delta).
RTOL_NUMERIC_GRADIENT = 2e-3

hypothesis_settings = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                               deadline=None)

OURS = {"max": pool.max_pool2d, "avg": pool.avg_pool2d}
THEIRS = {"max": tf.nn.max_pool2d, "avg": tf.nn.avg_pool2d}


def _rand(shape, seed, dtype=np.float32):
    return tf.constant(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def _geometry(size, k, s, padding):
    """(out, before) of one dimension by TF's rules."""
    if padding == "VALID":
        return (size - k) // s + 1, 0
    out = -(-size // s)
    return out, max((out - 1) * s + k - size, 0) // 2


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def reference(kind, x, dy, pool_size, strides, padding):
    """float64 NumPy, from the equations of pool.h: output and input gradient. The max
    gradient goes to the first maximal cell in scan order (the inputs have no ties)."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    (kh, kw), (sh, sw) = _pair(pool_size), _pair(strides)
    n, h, w, c = x.shape
    oh, pt = _geometry(h, kh, sh, padding)
    ow, pl = _geometry(w, kw, sw, padding)
    y = np.zeros((n, oh, ow, c))
    dx = np.zeros_like(x)
    for i in range(oh):
        h0, h1 = max(i * sh - pt, 0), min(i * sh - pt + kh, h)
        for j in range(ow):
            w0, w1 = max(j * sw - pl, 0), min(j * sw - pl + kw, w)
            cells = x[:, h0:h1, w0:w1, :].reshape(n, -1, c)
            if kind == "avg":
                y[:, i, j] = cells.mean(axis=1)
                dx[:, h0:h1, w0:w1, :] += (dy[:, i, j] / cells.shape[1])[:, None, None, :]
            else:
                a = cells.argmax(axis=1)  # first maximum
                y[:, i, j] = np.take_along_axis(cells, a[:, None, :], 1)[:, 0]
                hh, vv = h0 + a // (w1 - w0), w0 + a % (w1 - w0)
                for b in range(n):
                    np.add.at(dx[b], (hh[b], vv[b], np.arange(c)), dy[b, i, j])
    return y, dx


def check(kind, x, pool_size, strides=None, padding="VALID", seed=0):
    """Output and input gradient of ours against the float64 reference."""
    strides = pool_size if strides is None else strides
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = OURS[kind](x, pool_size, strides, padding)
    assert y.dtype == x.dtype
    dy = _rand(y.shape, seed + 1)
    dx = tape.gradient(y, x, output_gradients=dy)
    y_ref, dx_ref = reference(kind, x, dy, pool_size, strides, padding)
    assert_rel_close(y, y_ref, RTOL, f"{kind} output")
    assert_rel_close(dx, dx_ref, RTOL, f"{kind} input gradient")
    return y


def test_reference_matches_tf(device):
    # The NumPy reference against TensorFlow's own ops (float64 kernels) where those agree
    # with the equations (see test_tf_float64_avg_pool_grad_window_larger_than_input).
    x = _rand((2, 9, 8, 3), 20)
    x64 = tf.cast(x, tf.float64)
    for kind in ("max", "avg"):
        for k, s, padding in [(3, 2, "SAME"), (2, 2, "VALID"), ((2, 3), (1, 2), "SAME")]:
            with tf.GradientTape() as tape:
                tape.watch(x64)
                z = THEIRS[kind](x64, k, s, padding)
            dy = _rand(z.shape, 21)
            y_ref, dx_ref = reference(kind, x, dy, k, s, padding)
            np.testing.assert_allclose(z, y_ref, rtol=1e-12)
            np.testing.assert_allclose(tape.gradient(z, x64, output_gradients=tf.cast(dy, tf.float64)), dx_ref,
                                       rtol=1e-12, atol=1e-12)


def test_tf_float64_avg_pool_grad_window_larger_than_input(device):
    # TF 2.21's float64 AvgPoolGrad (Eigen) is wrong when the SAME window is taller than
    # the input; its float32 kernel (oneDNN), the reference and tf-mps agree.
    x = _rand((1, 4, 1, 1), 0)
    dy = _rand((1, 4, 1, 1), 1)
    _, dx_ref = reference("avg", x, dy, (5, 1), 1, "SAME")
    with tf.device("/CPU:0"):
        tf64 = tf.raw_ops.AvgPoolGrad(orig_input_shape=[1, 4, 1, 1], grad=tf.cast(dy, tf.float64),
                                      ksize=[1, 5, 1, 1], strides=[1, 1, 1, 1], padding="SAME")
        tf32 = tf.raw_ops.AvgPoolGrad(orig_input_shape=[1, 4, 1, 1], grad=dy, ksize=[1, 5, 1, 1],
                                      strides=[1, 1, 1, 1], padding="SAME")
    assert np.max(np.abs(tf64.numpy() - dx_ref)) > 0.01
    assert_rel_close(tf32, dx_ref, RTOL, "TF float32")
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = pool.avg_pool2d(x, (5, 1), 1, "SAME")
    assert_rel_close(tape.gradient(y, x, output_gradients=dy), dx_ref, RTOL, "tf-mps")


CASES = [
    # (x shape, pool_size, strides, padding): comments name the CPU paths they reach.
    ((2, 8, 8, 5), 2, 2, "VALID"),  # windows tile the input: dx written directly
    ((2, 9, 7, 5), 2, 2, "VALID"),  # leftover row and column: zeroed dx
    ((2, 9, 8, 6), 3, 2, "SAME"),  # overlapping windows, padding on both sides
    ((3, 7, 9, 4), 3, 1, "SAME"),  # stride 1: every dx row in three windows
    ((2, 10, 11, 3), (2, 3), (3, 2), "VALID"),  # stride wider than the window: gaps in dx
    ((1, 5, 6, 2), (5, 6), 1, "VALID"),  # one window, the whole image
    ((2, 3, 4, 3), (7, 6), (2, 3), "SAME"),  # window larger than the image (SAME)
    ((2, 6, 6, 300), 3, 2, "SAME"),  # several channel blocks of the arg-max (256 + 44)
    ((1, 40, 6, 2), (4, 1), (1, 1), "SAME"),  # many bands per image, windows across bands
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", CASES)
def test_matches_tf(device, kind, case):
    xs, k, s, padding = case
    check(kind, _rand(xs, 1), k, s, padding)


@pytest.mark.parametrize("kind", ["max", "avg"])
@given(data=st.data())
@hypothesis_settings
def test_random_shapes_match_tf(device, kind, data):
    n = data.draw(st.integers(1, 3), "n")
    h, w = data.draw(st.integers(1, 12), "h"), data.draw(st.integers(1, 12), "w")
    c = data.draw(st.integers(1, 20), "c")
    padding = data.draw(st.sampled_from(["SAME", "VALID"]), "padding")
    kh = data.draw(st.integers(1, h if padding == "VALID" else h + 2), "kh")
    kw = data.draw(st.integers(1, w if padding == "VALID" else w + 2), "kw")
    sh, sw = data.draw(st.integers(1, 4), "sh"), data.draw(st.integers(1, 4), "sw")
    check(kind, _rand((n, h, w, c), data.draw(st.integers(0, 2**31), "seed")), (kh, kw), (sh, sw), padding)


def test_defaults_are_keras(device):
    # strides default to pool_size, padding to VALID; an int is a square window.
    x = _rand((2, 9, 9, 3), 2)
    np.testing.assert_array_equal(pool.max_pool2d(x, 2), tf.keras.layers.MaxPooling2D(2)(x))
    assert_rel_close(pool.avg_pool2d(x, (3, 2)), tf.keras.layers.AveragePooling2D((3, 2))(x), RTOL, "avg")
    assert_rel_close(pool.avg_pool2d(x, 3, 2, "same"), tf.keras.layers.AveragePooling2D(3, 2, "same")(x), RTOL,
                     "avg same")
    np.testing.assert_array_equal(pool.max_pool2d(x, [1, 2, 2, 1], [1, 1, 1, 1]),
                                  tf.nn.max_pool2d(x, 2, 1, "VALID"))


def test_avg_excludes_padding(device):
    x = tf.ones((1, 3, 3, 1))
    y = pool.avg_pool2d(x, 3, 1, "SAME")
    np.testing.assert_array_equal(y.numpy(), np.ones((1, 3, 3, 1), np.float32))


@pytest.mark.parametrize("case", [((2, 6, 6, 3), 2, 2, "VALID"), ((2, 7, 5, 3), 3, 2, "SAME"),
                                  ((1, 5, 5, 2), 3, 1, "SAME")])
def test_max_ties_go_to_the_first_cell_in_scan_order(device, case):
    xs, k, s, padding = case
    # Values from a set of 3: many ties in every window.
    x = tf.constant(np.random.default_rng(3).integers(0, 3, xs).astype(np.float32))
    dy = _rand(tf.nn.max_pool2d(x, k, s, padding).shape, 4)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = pool.max_pool2d(x, k, s, padding)
    dx = tape.gradient(y, x, output_gradients=dy)
    with tf.device("/CPU:0"):
        expected = tf.raw_ops.MaxPoolGrad(orig_input=x, orig_output=y, grad=dy, ksize=[1, k, k, 1],
                                          strides=[1, s, s, 1], padding=padding)
    assert_rel_close(dx, expected, RTOL, "dx with ties")
    # And explicitly: a window of equal values sends everything to its top-left cell.
    with tf.GradientTape() as tape:
        z = tf.zeros((1, 2, 2, 1))
        tape.watch(z)
        y = pool.max_pool2d(z, 2)
    np.testing.assert_array_equal(tape.gradient(y, z).numpy().ravel(), [1, 0, 0, 0])


def test_nan_propagates(device):
    x = np.ones((1, 2, 4, 2), np.float32)
    x[0, 1, 1, 0] = np.nan  # second window, channel 0 only ... the first window
    y = pool.max_pool2d(x, 2).numpy()
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == 1 and np.all(y[0, 0, 1] == 1)
    # The gradient goes to the NaN (the window's maximum).
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = pool.max_pool2d(xt, 2)
    dx = tape.gradient(y, xt).numpy()
    assert dx[0, 1, 1, 0] == 1 and dx[0, 0, 0, 0] == 0 and dx.sum() == 4


def test_minus_inf_windows(device):
    # All cells -inf: the output is -inf and the gradient goes to the first cell inside.
    x = tf.fill((1, 3, 3, 1), -np.inf)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = pool.max_pool2d(x, 2, 2, "SAME")
    assert np.all(y.numpy() == -np.inf)
    dx = tape.gradient(y, x).numpy()[0, :, :, 0]
    np.testing.assert_array_equal(dx, [[1, 0, 1], [0, 0, 0], [1, 0, 1]])


@pytest.mark.parametrize("case", [((2, 6, 6, 3), 2, 2, "VALID"), ((2, 7, 6, 3), 3, 2, "SAME")])
def test_second_order_max_matches_max_pool_grad_grad(device, case):
    xs, k, s, padding = case
    x, x64 = _rand(xs, 5), None
    x64 = tf.cast(x, tf.float64)
    dy = _rand(tf.nn.max_pool2d(x, k, s, padding).shape, 6)
    gg = _rand(xs, 7)
    with tf.GradientTape(persistent=True) as outer:
        outer.watch([dy])
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = pool.max_pool2d(x, k, s, padding)
        dx = inner.gradient(y, x, output_gradients=dy)
    ggy = outer.gradient(dx, dy, output_gradients=gg)
    with tf.device("/CPU:0"):
        expected = tf.raw_ops.MaxPoolGradGrad(orig_input=x64, orig_output=tf.nn.max_pool2d(x64, k, s, padding),
                                              grad=tf.cast(gg, tf.float64), ksize=[1, k, k, 1],
                                              strides=[1, s, s, 1], padding=padding)
    assert_rel_close(ggy, expected, 0, "MpsMaxPool2DGradGrad")
    # Third order: the gather's adjoint is the scatter again.
    g3 = _rand(ggy.shape, 8)
    with tf.GradientTape() as tape:
        tape.watch(gg)
        out = lib.mps_max_pool2d_grad_grad(input=x, grad=gg, ksize=[k, k], strides=[s, s], padding=padding)
    d_gg = tape.gradient(out, gg, output_gradients=g3)
    expected = lib.mps_max_pool2d_grad(input=x, grad=g3, ksize=[k, k], strides=[s, s], padding=padding)
    np.testing.assert_array_equal(d_gg, expected)


def test_second_order_avg(device):
    x = _rand((2, 7, 6, 3), 9)
    x64 = tf.cast(x, tf.float64)
    dy = _rand(tf.nn.avg_pool2d(x, 3, 2, "SAME").shape, 10)
    gg = _rand(x.shape, 11)

    def second(fn, x, dy, gg):
        with tf.GradientTape() as outer:
            outer.watch(dy)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = fn(x, 3, 2, "SAME")
            dx = inner.gradient(y, x, output_gradients=dy)
        return outer.gradient(dx, dy, output_gradients=gg)

    ours = second(pool.avg_pool2d, x, dy, gg)
    theirs = second(tf.nn.avg_pool2d, x64, tf.cast(dy, tf.float64), tf.cast(gg, tf.float64))
    assert_rel_close(ours, theirs, RTOL, "avg second order")


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", [((2, 5, 6, 3), 2, 2, "VALID"), ((1, 6, 5, 2), 3, 2, "SAME")])
def test_numeric_gradient(device, kind, case):
    xs, k, s, padding = case
    # Distinct values far apart (no arg-max changes under the finite differences).
    rng = np.random.default_rng(12)
    x = tf.constant(rng.permutation(np.prod(xs)).reshape(xs).astype(np.float32) * 0.1)
    theoretical, numerical = tf.test.compute_gradient(lambda t: OURS[kind](t, k, s, padding), [x], delta=1e-2)
    assert_rel_close(theoretical[0], numerical[0], RTOL_NUMERIC_GRADIENT, f"{kind} numeric gradient")


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", [((2, 9, 8, 6), 3, 2, "SAME"), ((2, 8, 8, 5), 2, 2, "VALID")])
def test_float16(device, kind, case):
    xs, k, s, padding = case
    x = _rand(xs, 13, np.float16)
    x64 = tf.cast(x, tf.float64)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, x64])
        y = OURS[kind](x, k, s, padding)
        z = THEIRS[kind](x64, k, s, padding)
    assert y.dtype == tf.float16
    # Computed in float32 and rounded once: the float64 result rounded to half, but for
    # the sums' own float32 rounding.
    assert_rel_close(y, tf.cast(tf.cast(z, tf.float16), tf.float64), RTOL_HALF if kind == "avg" else 0, "output")
    dy = _rand(y.shape, 14, np.float16)
    dx = tape.gradient(y, x, output_gradients=dy)
    assert dx.dtype == tf.float16
    assert_rel_close(dx, tape.gradient(z, x64, output_gradients=tf.cast(dy, tf.float64)), RTOL_HALF, "gradient")


def test_float16_conversions_are_exact(device):
    # Every finite half, as 1x1 max pooling (a copy through float32 and back).
    bits = np.arange(0, 1 << 16, dtype=np.uint16)
    halves = bits.view(np.float16)
    finite = halves[np.isfinite(halves)]
    y = pool.max_pool2d(tf.constant(finite.reshape(1, 1, -1, 1)), 1).numpy().ravel()
    np.testing.assert_array_equal(y.view(np.uint16), finite.view(np.uint16))
    # Rounding float32 sums to half: avg of (a, b) against float64 rounded to half.
    rng = np.random.default_rng(15)
    a = rng.standard_normal(4096).astype(np.float16) * np.float16(2.0) ** rng.integers(-20, 15, 4096)
    x = np.stack([a, a[::-1]], 0).reshape(1, 2, -1, 1).astype(np.float16)
    y = pool.avg_pool2d(tf.constant(x), (2, 1)).numpy().ravel()
    expected = ((x[0, 0, :, 0].astype(np.float64) + x[0, 1, :, 0].astype(np.float64)) / 2).astype(np.float16)
    np.testing.assert_array_equal(y, expected)
    # Overflow to inf and back.
    big = np.array([60000, 65504, -65504], np.float16).reshape(1, 1, 3, 1)
    y = pool.avg_pool2d(tf.constant(np.concatenate([big, big], 1)), (2, 1)).numpy().ravel()
    np.testing.assert_array_equal(y, [60000, 65504, -65504])


def test_empty_batch(device):
    x = tf.zeros((0, 5, 5, 3))
    for kind in ("max", "avg"):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = OURS[kind](x, 2, 2, "SAME")
        assert y.shape == (0, 3, 3, 3)
        assert tape.gradient(y, x).shape == (0, 5, 5, 3)
    assert pool.max_pool2d(tf.zeros((2, 4, 4, 0)), 2).shape == (2, 2, 2, 0)
    assert pool.avg_pool2d(tf.zeros((2, 0, 4, 3)), 2, padding="SAME").shape == (2, 0, 2, 3)


def test_results_do_not_depend_on_scheduling(device):
    x = _rand((8, 30, 30, 8), 16)
    dy = _rand((8, 15, 15, 8), 17)
    runs = [lib.mps_avg_pool2d_grad(input_sizes=x.shape, grad=dy, ksize=[3, 3], strides=[2, 2], padding="SAME")
            for _ in range(3)]
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])


def test_inside_tf_function_with_unknown_shapes(device):
    x = _rand((2, 9, 9, 4), 18)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 4], tf.float32)])
    def f(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = pool.max_pool2d(x, 3, 2, "SAME") + pool.avg_pool2d(x, 3, 2, "SAME")
        return y, tape.gradient(y, x)

    y, dx = f(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        z = tf.nn.max_pool2d(x, 3, 2, "SAME") + tf.nn.avg_pool2d(x, 3, 2, "SAME")
    assert_rel_close(y, z, RTOL, "output")
    assert_rel_close(dx, tape.gradient(z, x), RTOL, "gradient")


def test_static_shapes():
    @tf.function
    def f(x):
        y = lib.mps_max_pool2d(input=x, ksize=[3, 3], strides=[2, 2], padding="SAME")
        assert y.shape.as_list() == [None, 5, 4, 3], y.shape
        dx = lib.mps_max_pool2d_grad(input=x, grad=y, ksize=[3, 3], strides=[2, 2], padding="SAME")
        assert dx.shape.as_list() == [None, 9, 7, 3]
        return y

    f.get_concrete_function(tf.TensorSpec([None, 9, 7, 3], tf.float32))


def test_portable_build_matches():
    # The portable loops (TFMPS_POOL_ISA=base) against the default build, in a child.
    code = (
        "import numpy as np, tensorflow as tf\n"
        "from tf_mps.ops import pool\n"
        "x = tf.constant(np.random.default_rng(0).standard_normal((2, 9, 8, 37)).astype(np.float32))\n"
        "with tf.GradientTape(persistent=True) as t:\n"
        "    t.watch(x); a = pool.max_pool2d(x, 3, 2, 'SAME'); b = pool.avg_pool2d(x, 3, 2, 'SAME')\n"
        "np.save('/dev/stdout', np.concatenate([a.numpy().ravel(), b.numpy().ravel(),"
        " t.gradient(a, x).numpy().ravel(), t.gradient(b, x).numpy().ravel()]))\n")
    outs = []
    for isa in ("base", "default"):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TFMPS_POOL_ISA=isa)
        env.pop("TFMPS_METAL_EMULATION", None)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=120, check=True)
        outs.append(r.stdout)
    assert outs[0] == outs[1]


# -------------------------------------------------------------- validation
ATTRS = dict(ksize=[2, 2], strides=[2, 2], padding="VALID")


@pytest.mark.parametrize("op", ["mps_max_pool2d", "mps_avg_pool2d"])
def test_forward_rank(device, op):
    with pytest.raises(INVALID, match=r"Mps(Max|Avg)Pool2D: input must be 4-D"):
        getattr(lib, op)(input=tf.zeros((4, 4, 3)), **ATTRS)


@pytest.mark.parametrize("attr,value,message", [
    ("ksize", [2], r"ksize must have 2 elements"),
    ("ksize", [2, 2, 2], r"ksize must have 2 elements"),
    ("ksize", [2, 2, 2, 1], r"ksize in the batch and channel dimensions must be 1"),
    ("ksize", [0, 2], r"ksize must be in \[1, 2147483647\]"),
    ("ksize", [2, 2**31], r"ksize must be in \[1, 2147483647\]"),
    ("strides", [1, 0], r"strides must be in \[1, 2147483647\]"),
    ("strides", [1, 1, 1, 2], r"strides in the batch and channel dimensions must be 1"),
])
@pytest.mark.parametrize("op", ["mps_max_pool2d", "mps_avg_pool2d"])
def test_forward_attributes(device, op, attr, value, message):
    with pytest.raises(INVALID, match=r"Mps(Max|Avg)Pool2D: " + message):
        getattr(lib, op)(input=tf.zeros((1, 4, 4, 3)), **dict(ATTRS, **{attr: value}))


@pytest.mark.parametrize("op", ["mps_max_pool2d", "mps_avg_pool2d"])
def test_window_larger_than_input_valid(device, op):
    with pytest.raises(INVALID, match=r"Mps(Max|Avg)Pool2D: the window is larger than the input under VALID "
                                      r"padding: ksize width 5 > input width 4"):
        getattr(lib, op)(input=tf.zeros((1, 6, 4, 3)), ksize=[5, 5], strides=[1, 1], padding="VALID")


def test_window_larger_than_input_in_shape_function():
    @tf.function
    def f(x):
        return lib.mps_max_pool2d(input=x, ksize=[5, 5], strides=[1, 1], padding="VALID")

    with pytest.raises(ValueError, match=r"MpsMaxPool2D: the window is larger than the input"):
        f.get_concrete_function(tf.TensorSpec([1, 4, 4, 3], tf.float32))


def test_max_grad_shapes(device):
    x = tf.zeros((2, 6, 6, 3))
    with pytest.raises(INVALID, match=r"MpsMaxPool2DGrad: grad must have the pooled output's shape for input "
                                      r"\[2,6,6,3\], \[2,3,3,3\], got \[2,3,3,4\]"):
        lib.mps_max_pool2d_grad(input=x, grad=tf.zeros((2, 3, 3, 4)), **ATTRS)
    with pytest.raises(INVALID, match=r"MpsMaxPool2DGrad: grad must be 4-D"):
        lib.mps_max_pool2d_grad(input=x, grad=tf.zeros((2, 3, 3)), **ATTRS)
    with pytest.raises(INVALID, match=r"MpsMaxPool2DGrad: input must be 4-D"):
        lib.mps_max_pool2d_grad(input=tf.zeros((6, 6, 3)), grad=tf.zeros((2, 3, 3, 3)), **ATTRS)
    with pytest.raises(INVALID, match=r"MpsMaxPool2DGrad: the window is larger than the input"):
        lib.mps_max_pool2d_grad(input=tf.zeros((2, 1, 6, 3)), grad=tf.zeros((2, 1, 3, 3)), **ATTRS)


def test_max_grad_grad_shapes(device):
    x = tf.zeros((2, 6, 6, 3))
    with pytest.raises(INVALID, match=r"MpsMaxPool2DGradGrad: grad must have the input's shape, \[2,6,6,3\], "
                                      r"got \[2,3,3,3\]"):
        lib.mps_max_pool2d_grad_grad(input=x, grad=tf.zeros((2, 3, 3, 3)), **ATTRS)
    with pytest.raises(INVALID, match=r"MpsMaxPool2DGradGrad: input must be 4-D"):
        lib.mps_max_pool2d_grad_grad(input=tf.zeros((6, 6, 3)), grad=tf.zeros((6, 6, 3)), **ATTRS)


def test_avg_grad_inputs(device):
    dy = tf.zeros((2, 3, 3, 3))
    with pytest.raises(INVALID, match=r"MpsAvgPool2DGrad: input_sizes must be a 1-D tensor of 4 elements"):
        lib.mps_avg_pool2d_grad(input_sizes=[2, 6, 6], grad=dy, **ATTRS)
    with pytest.raises(INVALID, match=r"MpsAvgPool2DGrad: input_sizes must be >= 0, got \[2,-6,6,3\]"):
        lib.mps_avg_pool2d_grad(input_sizes=[2, -6, 6, 3], grad=dy, **ATTRS)
    with pytest.raises(INVALID, match=r"MpsAvgPool2DGrad: grad must have the pooled output's shape for "
                                      r"input_sizes \[2,8,6,3\], \[2,4,3,3\], got \[2,3,3,3\]"):
        lib.mps_avg_pool2d_grad(input_sizes=[2, 8, 6, 3], grad=dy, **ATTRS)
    with pytest.raises(INVALID, match=r"MpsAvgPool2DGrad: grad must be 4-D"):
        lib.mps_avg_pool2d_grad(input_sizes=[2, 6, 6, 3], grad=tf.zeros((3, 3, 3)), **ATTRS)
    with pytest.raises(INVALID, match=r"MpsAvgPool2DGrad: the window is larger than the input"):
        lib.mps_avg_pool2d_grad(input_sizes=[2, 1, 6, 3], grad=tf.zeros((2, 1, 3, 3)), **ATTRS)


def test_dtype_mismatch_between_inputs(device):
    # One T for both inputs: TensorFlow's own type check refuses a float16 grad for a
    # float32 input before any kernel runs.
    with pytest.raises((INVALID, TypeError)):
        lib.mps_max_pool2d_grad(input=tf.zeros((1, 4, 4, 1)), grad=tf.zeros((1, 2, 2, 1), tf.float16), **ATTRS)


@pytest.mark.parametrize("fn", [pool.max_pool2d, pool.avg_pool2d])
def test_python_arguments(device, fn):
    op = fn.__name__
    x = tf.zeros((1, 4, 4, 2))
    with pytest.raises(INVALID, match=rf"{op}: x must be float32 or float16, got float64"):
        fn(tf.zeros((1, 4, 4, 2), tf.float64), 2)
    with pytest.raises(INVALID, match=rf"{op}: x must be float32 or float16, got int32"):
        fn(tf.zeros((1, 4, 4, 2), tf.int32), 2)
    with pytest.raises(INVALID, match=rf"{op}: x must be 4-D"):
        fn(tf.zeros((4, 4, 2)), 2)
    with pytest.raises(INVALID, match=rf"{op}: pool_size must be an int or a list of 1, 2 or 4 ints"):
        fn(x, (2, 2, 2))
    with pytest.raises(INVALID, match=rf"{op}: pool_size must be an int or a list"):
        fn(x, 2.5)
    with pytest.raises(INVALID, match=rf"{op}: pool_size must be in \[1, 2147483647\]"):
        fn(x, 0)
    with pytest.raises(INVALID, match=rf"{op}: strides must be in \[1, 2147483647\]"):
        fn(x, 2, (1, -1))
    with pytest.raises(INVALID, match=rf"{op}: strides in the batch and channel dimensions must be 1"):
        fn(x, 2, (2, 1, 1, 1))
    with pytest.raises(INVALID, match=rf"{op}: padding must be 'SAME' or 'VALID'"):
        fn(x, 2, 2, "FULL")
    with pytest.raises(INVALID, match=r"the window is larger than the input"):
        fn(x, 5)


def test_runs_on_the_requested_device(device):
    # Each op has a kernel on the tf-mps device (its CPU backend after the stream's work,
    # until the Metal path lands), so nothing falls back to the CPU device.
    x = _rand((2, 6, 6, 3), 22)
    dy = tf.ones((2, 3, 3, 3))
    attrs = dict(ksize=[3, 3], strides=[2, 2], padding="SAME")
    outs = [lib.mps_max_pool2d(input=x, **attrs), lib.mps_avg_pool2d(input=x, **attrs),
            lib.mps_max_pool2d_grad(input=x, grad=dy, **attrs),
            lib.mps_avg_pool2d_grad(input_sizes=[2, 6, 6, 3], grad=dy, **attrs),
            lib.mps_max_pool2d_grad_grad(input=x, grad=x, **attrs)]
    y, argmax = lib.mps_max_pool2d_with_argmax(input=x, **attrs)
    outs += [y, argmax, lib.mps_max_pool2d_grad_with_argmax(input=x, argmax=argmax, grad=dy, **attrs)]
    expected = tf.DeviceSpec.from_string(device)
    for t in outs:
        got = tf.DeviceSpec.from_string(t.device)
        assert (got.device_type, got.device_index) == (expected.device_type, expected.device_index), t.device


def test_largest_window_is_global_pooling(device):
    # ksize and strides at their limit (2^31 - 1) with SAME: every window covers the image.
    x = _rand((2, 3, 4, 5), 23)
    big = 2**31 - 1
    y = pool.max_pool2d(x, big, 1, "SAME")
    assert y.shape == (2, 3, 4, 5)
    np.testing.assert_array_equal(y, np.broadcast_to(np.max(x, axis=(1, 2), keepdims=True), y.shape))
    z = pool.avg_pool2d(x, big, big, "SAME")
    assert z.shape == (2, 1, 1, 5)
    assert_rel_close(z, np.mean(x.numpy().astype(np.float64), axis=(1, 2), keepdims=True), RTOL, "global avg")


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_large_tiling_gradient_streams(device, kind):
    # dx >= 16 MB, windows tiling the input, channels a multiple of 8 (16-lane blocks and an
    # 8-channel tail): the gradient is written with non-temporal stores (AVX2 build).
    x = _rand((4, 128, 128, 72), 24)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = OURS[kind](x, 2)
        z = THEIRS[kind](x, 2, 2, "VALID")
    np.testing.assert_array_equal(y, z) if kind == "max" else assert_rel_close(y, z, RTOL, "output")
    dy = _rand(y.shape, 25)
    np.testing.assert_array_equal(tape.gradient(y, x, output_gradients=dy), tape.gradient(z, x, output_gradients=dy))


@pytest.mark.parametrize("kind", ["max", "avg"])
@given(data=st.data())
@settings(hypothesis_settings, max_examples=10)
def test_random_shapes_float16(device, kind, data):
    n, c = data.draw(st.integers(1, 2), "n"), data.draw(st.integers(1, 40), "c")
    h, w = data.draw(st.integers(1, 9), "h"), data.draw(st.integers(1, 9), "w")
    padding = data.draw(st.sampled_from(["SAME", "VALID"]), "padding")
    k = (data.draw(st.integers(1, h if padding == "VALID" else h + 1), "kh"),
         data.draw(st.integers(1, w if padding == "VALID" else w + 1), "kw"))
    s = (data.draw(st.integers(1, 3), "sh"), data.draw(st.integers(1, 3), "sw"))
    seed = data.draw(st.integers(0, 2**31), "seed")
    x = _rand((n, h, w, c), seed, np.float16)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = OURS[kind](x, k, s, padding)
    dy = _rand(y.shape, seed + 1, np.float16)
    dx = tape.gradient(y, x, output_gradients=dy)
    assert y.dtype == dx.dtype == tf.float16
    y_ref, dx_ref = reference(kind, x, dy, k, s, padding)
    assert_rel_close(y, y_ref, RTOL_HALF, "float16 output")
    assert_rel_close(dx, dx_ref, RTOL_HALF, "float16 gradient")


def _op_types(fn, *specs):
    return {op.type for op in tf.function(fn).get_concrete_function(*specs).graph.get_operations()}


def test_max_pool_keeps_its_argmax_only_under_a_tape():
    spec = tf.TensorSpec([2, 8, 8, 3], tf.float32)

    def plain(x):
        return pool.max_pool2d(x, 2)

    def taped(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = pool.max_pool2d(x, 2)
        return tape.gradient(y, x)

    def wide(x):  # a 3x3 window of 9 cells fits; 17x17 = 289 does not
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = pool.max_pool2d(x, 17, 1, "SAME")
        return tape.gradient(y, x)

    assert "MpsMaxPool2D" in _op_types(plain, spec) and "MpsMaxPool2DWithArgmax" not in _op_types(plain, spec)
    assert {"MpsMaxPool2DWithArgmax", "MpsMaxPool2DGradWithArgmax"} <= _op_types(taped, spec)
    big = tf.TensorSpec([1, 20, 20, 2], tf.float32)
    assert {"MpsMaxPool2D", "MpsMaxPool2DGrad"} <= _op_types(wide, big)
    assert "MpsMaxPool2DWithArgmax" not in _op_types(wide, big)


@pytest.mark.parametrize("case", CASES + [((2, 6, 6, 40), 3, 2, "SAME"), ((4, 128, 128, 72), 2, 2, "VALID")])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_argmax_gradient_equals_the_recomputed_one(device, case, dtype):
    xs, k, s, padding = case
    attrs = dict(ksize=list(_pair(k)), strides=list(_pair(s)), padding=padding)
    # Few distinct values: ties everywhere, resolved the same way by both.
    x = tf.constant(np.random.default_rng(26).integers(0, 4, xs).astype(dtype))
    y, argmax = lib.mps_max_pool2d_with_argmax(input=x, **attrs)
    np.testing.assert_array_equal(y, lib.mps_max_pool2d(input=x, **attrs))
    assert argmax.dtype == tf.uint8
    dy = _rand(y.shape, 27, dtype)
    np.testing.assert_array_equal(lib.mps_max_pool2d_grad_with_argmax(input=x, argmax=argmax, grad=dy, **attrs),
                                  lib.mps_max_pool2d_grad(input=x, grad=dy, **attrs))


def test_argmax_with_nan_and_minus_inf(device):
    x = np.full((1, 4, 4, 16), -np.inf, np.float32)
    x[0, 1, 1, 3] = np.nan
    x[0, 2, 3, 5] = 7
    attrs = dict(ksize=[3, 3], strides=[1, 1], padding="SAME")
    y, argmax = lib.mps_max_pool2d_with_argmax(input=x, **attrs)
    dy = _rand(y.shape, 28)
    np.testing.assert_array_equal(y, lib.mps_max_pool2d(input=x, **attrs))
    np.testing.assert_array_equal(lib.mps_max_pool2d_grad_with_argmax(input=x, argmax=argmax, grad=dy, **attrs),
                                  lib.mps_max_pool2d_grad(input=x, grad=dy, **attrs))


def test_argmax_validation(device):
    x = tf.zeros((2, 20, 20, 3))
    with pytest.raises(INVALID, match=r"MpsMaxPool2DWithArgmax: ksize: a window covers more than 256 cells"):
        lib.mps_max_pool2d_with_argmax(input=x, ksize=[17, 17], strides=[1, 1], padding="SAME")
    with pytest.raises(INVALID, match=r"MpsMaxPool2DWithArgmax: input must be 4-D"):
        lib.mps_max_pool2d_with_argmax(input=tf.zeros((4, 4, 3)), **ATTRS)
    am = tf.zeros((2, 10, 10, 3), tf.uint8)
    dy = tf.zeros((2, 10, 10, 3))
    with pytest.raises(INVALID, match=r"MpsMaxPool2DGradWithArgmax: argmax must have the pooled output's shape"):
        lib.mps_max_pool2d_grad_with_argmax(input=x, argmax=am[:, :5], grad=dy, **ATTRS)
    with pytest.raises(INVALID, match=r"MpsMaxPool2DGradWithArgmax: grad must have the pooled output's shape"):
        lib.mps_max_pool2d_grad_with_argmax(input=x, argmax=am, grad=dy[..., :2], **ATTRS)
    with pytest.raises(INVALID, match=r"MpsMaxPool2DGradWithArgmax: argmax must be 4-D"):
        lib.mps_max_pool2d_grad_with_argmax(input=x, argmax=am[0], grad=dy, **ATTRS)
    with pytest.raises(INVALID, match=r"MpsMaxPool2DGradWithArgmax: ksize: a window covers more than 256"):
        lib.mps_max_pool2d_grad_with_argmax(input=x, argmax=tf.zeros((2, 20, 20, 3), tf.uint8),
                                            grad=tf.zeros((2, 20, 20, 3)), ksize=[17, 17], strides=[1, 1],
                                            padding="SAME")
    # A counter that names no tap of its window routes nothing (no crash).
    dx = lib.mps_max_pool2d_grad_with_argmax(input=x, argmax=am + 200, grad=dy + 1, **ATTRS)
    assert np.all(dx.numpy() == 0)
