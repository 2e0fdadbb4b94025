"""tf_mps.ops.norm.batch_norm / instance_norm and their gradients.

Batch norm against TensorFlow's own ops in float64 (tf.nn.moments + tf.nn.batch_normalization,
what Keras's BatchNormalization calls, differentiated by TF), against
tf.compat.v1.nn.fused_batch_norm (FusedBatchNormV3) and against the Keras layer itself;
instance norm against a float64 NumPy reference written from the equations (forward and
backward, below). Gradients also by tf.test.compute_gradient (first and second order);
random shapes, dtypes and modes by hypothesis; every validation path gives
InvalidArgumentError naming the op and the argument; the CPU backend gives the same bits
for any thread count and either build of its loops."""

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
from tf_mps.ops import norm

lib = _lib.load()
INVALID = tf.errors.InvalidArgumentError

# Norm-wise tolerances (max|ours - ref| <= rtol * max|ref|): float32 results against the
# float64 reference; float16 data adds one rounding of x (the reference gets the same
# float16 x) and one of y and dx (2^-11 relative).
RTOL = {np.float32: 4 * RTOL_VS_FLOAT64[np.float32], np.float16: 2e-3}
# tf.test.compute_gradient in float32 on a nonlinear function: central differences with
# delta 1e-2 are good to about 1e-3 here.
RTOL_NUMERIC_GRADIENT = 1e-2

# The statistics are float32 (TF's FusedBatchNormV3 and Keras's too): x - mean carries the
# rounding of the mean, eps32 * |mean|, which is large against a small standard deviation.
EPS32 = 2.0 ** -24


def _conditioned(rtol, x, eps, groups):
    """rtol plus the float32 mean's share: 4 eps32 max |mean| / sqrt(variance + eps)."""
    x3 = x.astype(np.float64).reshape(groups, -1, x.shape[-1])
    if x3.shape[1] == 0:
        return rtol
    cond = np.max(np.abs(x3.mean(axis=1)) / np.sqrt(x3.var(axis=1) + eps))
    return rtol + 4 * EPS32 * cond


def assert_dx_close(dx, expected, rtol, gamma, inv_std, dy, what="dx"):
    """dx norm-wise, against the larger of max|dx| and the size of its terms,
    max|gamma * inv_std * dy|: in training dx is the difference of such terms, which
    cancel almost completely when a channel has few values (two values: dx ~ epsilon)."""
    dx = np.asarray(dx, np.float64)
    expected = np.asarray(expected, np.float64)
    assert dx.shape == expected.shape, f"{what}: shapes {dx.shape} vs {expected.shape}"
    if not dx.size:
        return
    terms = float(np.max(np.abs(gamma)) * np.max(inv_std) * np.max(np.abs(dy.astype(np.float64))))
    scale = max(float(np.max(np.abs(expected))), terms)
    err = float(np.max(np.abs(dx - expected)))
    assert err <= rtol * scale, f"{what}: max |diff| {err:.3g} > {rtol:g} * {scale:.3g}"


def _inv_std(x, eps, groups):
    x3 = x.astype(np.float64).reshape(groups, -1, x.shape[-1])
    return 1.0 / np.sqrt(x3.var(axis=1) + eps) if x3.shape[1] else np.zeros(1)


hypothesis_settings = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                               deadline=None)


def _rand(shape, seed, dtype=np.float32, scale=1.0, shift=0.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + shift).astype(dtype)


# ------------------------------------------------------------------ references
def tf_batch_norm64(x, gamma, beta, mean=None, variance=None, eps=1e-3):
    """TF's own ops in float64 (Keras's path): tf.nn.moments and tf.nn.batch_normalization."""
    axes = list(range(len(x.shape) - 1))
    if mean is None:
        mean, variance = tf.nn.moments(x, axes)
    return tf.nn.batch_normalization(x, mean, variance, beta, gamma, eps), mean, variance


def np_instance_norm(x, gamma, beta, eps):
    """Float64 NumPy, from the equations: statistics per sample and channel over the
    spatial axes, y = gamma * (x - mean) / sqrt(var + eps) + beta."""
    n, c = x.shape[0], x.shape[-1]
    x3 = x.astype(np.float64).reshape(n, -1, c)
    mean = x3.mean(axis=1, keepdims=True)
    var = ((x3 - mean) ** 2).mean(axis=1, keepdims=True)
    y = gamma * (x3 - mean) / np.sqrt(var + eps) + beta
    return y.reshape(x.shape), mean[:, 0], var[:, 0]


def np_instance_norm_grad(dy, x, gamma, eps):
    """The backward pass of np_instance_norm, from the chain rule through mean and
    variance (per sample n and channel c, R values each):
      dxhat = gamma * dy
      dvar  = sum dxhat * (x - mean) * -1/2 (var + eps)^(-3/2)
      dmean = -sum dxhat / sqrt(var + eps) - 2 dvar * mean(x - mean)   (the last term is 0)
      dx    = dxhat / sqrt(var + eps) + dvar * 2 (x - mean) / R + dmean / R"""
    n, c = x.shape[0], x.shape[-1]
    x3 = x.astype(np.float64).reshape(n, -1, c)
    dy3 = dy.astype(np.float64).reshape(n, -1, c)
    r = x3.shape[1]
    mean = x3.mean(axis=1, keepdims=True)
    xc = x3 - mean
    var = (xc ** 2).mean(axis=1, keepdims=True)
    std = np.sqrt(var + eps)
    dxhat = gamma * dy3
    dvar = np.sum(dxhat * xc, axis=1, keepdims=True) * -0.5 * std ** -3
    dmean = -np.sum(dxhat, axis=1, keepdims=True) / std
    dx = dxhat / std + dvar * 2 * xc / r + dmean / r
    dgamma = np.sum(dy3 * xc / std, axis=(0, 1))
    dbeta = np.sum(dy3, axis=(0, 1))
    return dx.reshape(x.shape), dgamma, dbeta


def check_batch_norm(x, gamma, beta, *, training=True, mean=None, variance=None, eps=1e-3, seed=0):
    """Outputs and gradients (x, gamma, beta, and in inference mean, variance) against
    TF's float64 ops; x float32 or float16."""
    dtype = x.dtype.type
    rtol = _conditioned(RTOL[dtype], x, eps, 1) if training else RTOL[dtype]
    x_t = tf.constant(x)
    g_t, b_t = tf.constant(gamma), tf.constant(beta)
    stats = [] if training else [tf.constant(mean), tf.constant(variance)]
    x64 = tf.constant(x.astype(np.float64))
    src64 = [x64, tf.constant(gamma, tf.float64), tf.constant(beta, tf.float64)] + \
        [tf.cast(s, tf.float64) for s in stats]
    dy = _rand(x.shape, seed + 7919, dtype)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x_t, g_t, b_t] + stats + src64)
        if training:
            y, bm, bv = norm.batch_norm(x_t, g_t, b_t, epsilon=eps)
        else:
            y = norm.batch_norm(x_t, g_t, b_t, stats[0], stats[1], epsilon=eps, training=False)
        ref, rm, rv = tf_batch_norm64(*src64[:3], *(src64[3:] if not training else []), eps=eps)
    assert y.dtype == x_t.dtype and y.shape == x.shape
    assert_rel_close(y, ref, rtol, "y")
    if training:
        assert bm.dtype == tf.float32 and bv.dtype == tf.float32
        assert_rel_close(bm, rm, rtol, "batch_mean")
        assert_rel_close(bv, rv, rtol, "batch_variance")
    ours = tape.gradient(y, [x_t, g_t, b_t] + stats, output_gradients=tf.constant(dy))
    theirs = tape.gradient(ref, src64, output_gradients=tf.constant(dy.astype(np.float64)))
    inv_std = _inv_std(x, eps, 1) if training else 1.0 / np.sqrt(variance.astype(np.float64) + eps)
    assert_dx_close(ours[0], theirs[0], rtol, gamma, inv_std, dy)
    for name, a, b in zip(["dgamma", "dbeta", "dmean", "dvariance"], ours[1:], theirs[1:]):
        assert_rel_close(a, b, 4 * rtol, name)
    return y


def check_instance_norm(x, gamma, beta, eps=1e-3, seed=0):
    dtype = x.dtype.type
    rtol = _conditioned(RTOL[dtype], x, eps, x.shape[0])
    x_t, g_t, b_t = tf.constant(x), tf.constant(gamma), tf.constant(beta)
    dy = _rand(x.shape, seed + 7919, dtype)
    with tf.GradientTape() as tape:
        tape.watch([x_t, g_t, b_t])
        y = norm.instance_norm(x_t, g_t, b_t, epsilon=eps)
    ref, _, _ = np_instance_norm(x, gamma.astype(np.float64), beta.astype(np.float64), eps)
    assert y.dtype == x_t.dtype and y.shape == x.shape
    assert_rel_close(y, ref, rtol, "y")
    dx, dg, db = tape.gradient(y, [x_t, g_t, b_t], output_gradients=tf.constant(dy))
    rdx, rdg, rdb = np_instance_norm_grad(dy, x, gamma.astype(np.float64), eps)
    assert_dx_close(dx, rdx, rtol, gamma, _inv_std(x, eps, x.shape[0]), dy)
    assert_rel_close(dg, rdg, 4 * rtol, "dgamma")
    assert_rel_close(db, rdb, 4 * rtol, "dbeta")


# -------------------------------------------------------------- fixed cases: every path
SHAPES = [
    (4, 6, 6, 8),     # C < 64: super-rows of 8 rows, no tail
    (3, 5, 7, 3),     # C = 3: super-rows of 22 rows, a partial last one
    (2, 9, 64),       # C = 64: one lane per channel, rank 3
    (5, 70),          # rank 2, C between 64 and 1024
    (2, 3, 3, 1100),  # C > 1024: two channel tiles
    (1, 1, 1, 5),     # one value per channel: variance 0
    (40, 30, 33),     # many blocks per channel
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_batch_norm_matches_tf(device, shape, training):
    c = shape[-1]
    x = _rand(shape, 1, scale=2.0, shift=3.0)
    mean = _rand((c,), 4)
    var = np.random.default_rng(5).uniform(0.2, 3.0, c).astype(np.float32)
    check_batch_norm(x, _rand((c,), 2), _rand((c,), 3), training=training, mean=mean, variance=var)


def test_large_tensor_streamed_output(device):
    # 17.6 MB of float32 output: written with non-temporal stores (rows of 1100 floats,
    # not 32-byte aligned: a scalar head on most rows).
    check_batch_norm(_rand((4, 1000, 1100), 51, scale=2.0, shift=1.0), _rand((1100,), 52), _rand((1100,), 53))


@pytest.mark.parametrize("shape", [(4, 6, 6, 8), (3, 5, 7, 3), (2, 9, 64), (2, 3, 3, 1100), (3, 1, 1, 4),
                                   (2, 4, 5, 6, 7)], ids=str)
def test_instance_norm_matches_numpy(device, shape):
    c = shape[-1]
    check_instance_norm(_rand(shape, 6, scale=3.0, shift=-2.0), _rand((c,), 7), _rand((c,), 8))


def test_variance_is_exact_with_a_large_mean(device):
    # A mean 1e4 standard deviations away from zero: the per-block shifted sums keep the
    # variance accurate (a one-pass E[x^2] - E[x]^2 in float32 would lose every digit).
    x = _rand((64, 32, 16), 9, scale=1.0, shift=1e4)
    _, m, v = norm.batch_norm(x, np.ones(16, np.float32), np.zeros(16, np.float32))
    x64 = x.astype(np.float64).reshape(-1, 16)
    assert_rel_close(v, x64.var(axis=0), 1e-4, "variance")
    assert_rel_close(m, x64.mean(axis=0), 1e-7, "mean")


@pytest.mark.parametrize("training", [True, False])
def test_matches_fused_batch_norm(device, training):
    # FusedBatchNormV3 returns the Bessel-corrected variance (n / (n - 1)) in training;
    # ours is the biased one (tf.nn.moments', Keras's).
    x = _rand((4, 7, 7, 16), 10, scale=2.0, shift=1.0)
    g, b, m, v = _rand((16,), 11), _rand((16,), 12), _rand((16,), 13), np.full(16, 0.7, np.float32)
    dy = _rand(x.shape, 14)
    x_t = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x_t)
        if training:
            y, bm, bv = norm.batch_norm(x_t, g, b)
            ry, rm, rv = tf.compat.v1.nn.fused_batch_norm(x_t, g, b, epsilon=1e-3, is_training=True)
            n = x.size // 16
            assert_rel_close(bm, rm, 1e-5, "batch_mean")
            assert_rel_close(bv, rv * (n - 1) / n, 1e-5, "batch_variance")
        else:
            y = norm.batch_norm(x_t, g, b, m, v, training=False)
            ry, _, _ = tf.compat.v1.nn.fused_batch_norm(x_t, g, b, m, v, epsilon=1e-3, is_training=False)
    assert_rel_close(y, ry, 1e-5, "y")
    assert_rel_close(tape.gradient(y, x_t, dy), tape.gradient(ry, x_t, dy), 1e-4, "dx")


def test_matches_keras_layer_and_its_moving_statistics(device):
    # The layer the lead builds on this op keeps Keras's update (no Bessel correction):
    # moving = moving * momentum + batch * (1 - momentum).
    import keras

    x = _rand((8, 5, 5, 6), 15, scale=2.0, shift=0.5)
    layer = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3)
    layer.build(x.shape)
    rng = np.random.default_rng(16)
    gamma, beta = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    mm0, mv0 = rng.standard_normal(6).astype(np.float32), rng.uniform(0.5, 2, 6).astype(np.float32)
    layer.set_weights([gamma, beta, mm0, mv0])
    y_keras = layer(x, training=True)
    y, bm, bv = norm.batch_norm(x, gamma, beta, epsilon=1e-3)
    assert_rel_close(y, y_keras, 1e-5, "y")
    assert_rel_close(layer.moving_mean.numpy(), mm0 * 0.9 + bm.numpy() * (1 - 0.9), 1e-6, "moving_mean")
    assert_rel_close(layer.moving_variance.numpy(), mv0 * 0.9 + bv.numpy() * (1 - 0.9), 1e-6, "moving_variance")
    # Inference with the moving statistics.
    y_inf = norm.batch_norm(x, gamma, beta, layer.moving_mean.numpy(), layer.moving_variance.numpy(),
                            training=False)
    assert_rel_close(y_inf, layer(x, training=False), 1e-5, "y inference")


def test_float16(device):
    for training in [True, False]:
        x = _rand((4, 6, 6, 12), 17, np.float16, scale=2.0, shift=1.0)
        check_batch_norm(x, _rand((12,), 18), _rand((12,), 19), training=training, mean=_rand((12,), 20),
                         variance=np.full(12, 1.5, np.float32))
    check_instance_norm(_rand((3, 5, 5, 70), 21, np.float16), _rand((70,), 22), _rand((70,), 23))


def test_float16_output_is_rounded_once(device):
    # y is computed in float32 and rounded to half once: equal to the float32 op's y rounded.
    x = _rand((2, 9, 9, 20), 24, np.float16, scale=3.0)
    g, b = _rand((20,), 25), _rand((20,), 26)
    y16, m16, v16 = norm.batch_norm(x, g, b)
    y32, m32, v32 = norm.batch_norm(x.astype(np.float32), g, b)
    np.testing.assert_array_equal(y16.numpy(), y32.numpy().astype(np.float16))
    np.testing.assert_array_equal(m16.numpy(), m32.numpy())
    np.testing.assert_array_equal(v16.numpy(), v32.numpy())


def test_gamma_beta_none_are_ones_and_zeros(device):
    x = _rand((3, 4, 4, 5), 27)
    y, _, _ = norm.batch_norm(x, None, None)
    y1, _, _ = norm.batch_norm(x, np.ones(5, np.float32), np.zeros(5, np.float32))
    np.testing.assert_array_equal(y.numpy(), y1.numpy())
    np.testing.assert_array_equal(norm.instance_norm(x, None, None).numpy(),
                                  norm.instance_norm(x, np.ones(5, np.float32), np.zeros(5, np.float32)).numpy())


def test_gradients_through_the_returned_statistics(device):
    # A loss on batch_mean and batch_variance too: dx includes their paths.
    x = _rand((6, 4, 3), 28, scale=2.0, shift=1.0)
    g, b = _rand((3,), 29), _rand((3,), 30)
    w = _rand((6, 4, 3), 31)
    x_t, x64 = tf.constant(x), tf.constant(x.astype(np.float64))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x_t, x64])
        y, m, v = norm.batch_norm(x_t, g, b)
        loss = tf.reduce_sum(y * w) + tf.reduce_sum(m * [1.0, -2.0, 3.0]) + tf.reduce_sum(v * [0.5, 1.5, -1.0])
        ry, rm, rv = tf_batch_norm64(x64, tf.constant(g, tf.float64), tf.constant(b, tf.float64))
        rloss = (tf.reduce_sum(ry * w) + tf.reduce_sum(rm * [1.0, -2.0, 3.0])
                 + tf.reduce_sum(rv * [0.5, 1.5, -1.0]))
    assert_rel_close(tape.gradient(loss, x_t), tape.gradient(rloss, x64), RTOL[np.float32], "dx")


def test_empty_batch_gives_nan_statistics_like_tf(device):
    x = tf.zeros((0, 4, 4, 3))
    g, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y, m, v = norm.batch_norm(x, g, b)
    _, rm, rv = tf.compat.v1.nn.fused_batch_norm(x, g, b, is_training=True)
    assert y.shape == (0, 4, 4, 3)
    assert np.all(np.isnan(m.numpy())) and np.all(np.isnan(v.numpy()))
    assert np.all(np.isnan(rm.numpy())) and np.all(np.isnan(rv.numpy()))
    assert tape.gradient(y, x).shape == (0, 4, 4, 3)
    dx, dg, db = lib.mps_batch_norm_grad(dy=x, x=x, gamma=g, mean=m, inv_std=m, mean_backprop=m,
                                         variance_backprop=v)
    assert dx.shape == (0, 4, 4, 3) and np.all(dg.numpy() == 0) and np.all(db.numpy() == 0)
    # Inference on an empty batch: nothing to normalize.
    assert norm.batch_norm(x, g, b, g, g, training=False).shape == (0, 4, 4, 3)
    # Instance norm: no samples, or samples with no pixels.
    assert norm.instance_norm(tf.zeros((0, 3, 3, 2)), None, None).shape == (0, 3, 3, 2)
    _, im, iv, _ = lib.mps_instance_norm(x=tf.zeros((2, 0, 3, 2)), gamma=np.ones(2, np.float32),
                                         beta=np.zeros(2, np.float32))
    assert im.shape == (2, 2) and np.all(np.isnan(im.numpy())) and np.all(np.isnan(iv.numpy()))
    # No channels: everything empty.
    y, m, v = norm.batch_norm(tf.zeros((3, 0)), tf.zeros(0), tf.zeros(0))
    assert y.shape == (3, 0) and m.shape == (0,) and v.shape == (0,)


def test_non_finite_values_propagate(device):
    x = _rand((4, 3, 2), 32)
    x[1, 1, 0] = np.nan
    y, m, v = norm.batch_norm(x, None, None)
    assert np.all(np.isnan(y.numpy()[..., 0])) and np.isnan(m.numpy()[0]) and np.isnan(v.numpy()[0])
    assert np.all(np.isfinite(y.numpy()[..., 1]))


def test_inside_tf_function_with_unknown_shapes(device):
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 6]), tf.TensorSpec([6]), tf.TensorSpec([6])])
    def fn(x, g, b):
        y, m, v = norm.batch_norm(x, g, b)
        assert y.shape.as_list() == [None, None, None, 6] and m.shape.as_list() == [6]
        yi = norm.instance_norm(x, g, b)
        return y, yi, tf.gradients(tf.reduce_sum(y * y) + tf.reduce_sum(yi * x), [x, g, b])

    x, g, b = _rand((3, 5, 4, 6), 33), _rand((6,), 34), _rand((6,), 35)
    y, yi, grads = fn(x, g, b)
    x64, g64, b64 = (tf.constant(t.astype(np.float64)) for t in (x, g, b))
    with tf.GradientTape() as tape:
        tape.watch([x64, g64, b64])
        ry, _, _ = tf_batch_norm64(x64, g64, b64)
        m, v = tf.nn.moments(x64, [1, 2], keepdims=True)
        ryi = tf.nn.batch_normalization(x64, m, v, b64, g64, 1e-3)
        loss = tf.reduce_sum(ry * ry) + tf.reduce_sum(ryi * x64)
    assert_rel_close(y, ry, RTOL[np.float32], "y")
    assert_rel_close(yi, ryi, RTOL[np.float32], "instance y")
    for name, a, r in zip(["dx", "dgamma", "dbeta"], grads, tape.gradient(loss, [x64, g64, b64])):
        assert_rel_close(a, r, 4 * RTOL[np.float32], name)


def test_static_shape_inference(device):
    @tf.function
    def fn(x, g, b):
        return lib.mps_instance_norm(x=x, gamma=g, beta=b)

    outs = fn.get_concrete_function(tf.TensorSpec([4, None, 7, 5]), tf.TensorSpec([None]),
                                    tf.TensorSpec([5])).outputs
    assert [o.shape.as_list() for o in outs] == [[4, None, 7, 5], [4, 5], [4, 5], [4, 5]]


# ---------------------------------------------------------------- numeric gradients
@pytest.mark.parametrize("kind", ["batch_training", "batch_inference", "instance"])
def test_compute_gradient(device, kind):
    x, g, b = _rand((3, 4, 5), 36, scale=2.0), _rand((5,), 37), _rand((5,), 38)
    m, v = _rand((5,), 39), np.random.default_rng(40).uniform(0.5, 2.0, 5).astype(np.float32)
    if kind == "batch_training":
        fn, args = (lambda x, g, b: norm.batch_norm(x, g, b)[0]), [x, g, b]
    elif kind == "batch_inference":
        fn, args = (lambda x, g, b, m, v: norm.batch_norm(x, g, b, m, v, training=False)), [x, g, b, m, v]
    else:
        fn, args = (lambda x, g, b: norm.instance_norm(x, g, b)), [x, g, b]
    theoretical, numerical = tf.test.compute_gradient(fn, args, delta=1e-2)
    for i, (t, n) in enumerate(zip(theoretical, numerical)):
        assert_rel_close(t, n, RTOL_NUMERIC_GRADIENT, f"argument {i}")


@pytest.mark.parametrize("kind", ["batch_training", "batch_inference", "instance"])
def test_second_order_gradients(device, kind):
    # d/dx and d/dgamma of <dL/dx, w> (the grad ops' registered gradients, through the
    # statistics) against finite differences.
    x0, g0, b0 = _rand((4, 3, 3), 41, scale=1.5), _rand((3,), 42), _rand((3,), 43)
    m, v = _rand((3,), 44), np.full(3, 0.8, np.float32)
    w, u = _rand((4, 3, 3), 45), _rand((4, 3, 3), 46)

    def forward(x, g):
        if kind == "batch_training":
            return norm.batch_norm(x, g, b0)[0]
        if kind == "batch_inference":
            return norm.batch_norm(x, g, b0, m, v, training=False)
        return norm.instance_norm(x, g, b0)

    def first_order(x, g):
        with tf.GradientTape() as tape:
            tape.watch([x, g])
            loss = tf.reduce_sum(forward(x, g) * u) + tf.reduce_sum(forward(x, g) ** 2) * 0.1
        dx, dg = tape.gradient(loss, [x, g])
        return tf.concat([tf.reshape(dx * w, [-1]), dg], 0)

    theoretical, numerical = tf.test.compute_gradient(first_order, [x0, g0], delta=1e-2)
    for i, (t, n) in enumerate(zip(theoretical, numerical)):
        assert_rel_close(t, n, 2 * RTOL_NUMERIC_GRADIENT, f"argument {i}")


# ---------------------------------------------------------------- random shapes
@st.composite
def norm_cases(draw):
    rank = draw(st.integers(2, 5))
    c = draw(st.sampled_from([1, 2, 3, 5, 8, 17, 63, 64, 65, 130]))
    dims = [draw(st.integers(1, 6)) for _ in range(rank - 1)]
    return dict(shape=tuple(dims + [c]), dtype=draw(st.sampled_from([np.float32, np.float32, np.float16])),
                training=draw(st.booleans()), eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])),
                shift=draw(st.sampled_from([0.0, 4.0, -100.0])), seed=draw(st.integers(0, 2**16)))


@hypothesis_settings
@given(case=norm_cases())
def test_random_batch_norm(device, case):
    s, c = case["seed"], case["shape"][-1]
    x = _rand(case["shape"], s, case["dtype"], scale=2.0, shift=case["shift"])
    mean = _rand((c,), s + 3, shift=case["shift"])
    var = np.random.default_rng(s + 4).uniform(0.1, 4.0, c).astype(np.float32)
    check_batch_norm(x, _rand((c,), s + 1), _rand((c,), s + 2), training=case["training"], mean=mean,
                     variance=var, eps=case["eps"], seed=s)


@hypothesis_settings
@given(case=norm_cases())
def test_random_instance_norm(device, case):
    s, shape = case["seed"], case["shape"]
    if len(shape) < 3:
        shape = (shape[0], 3, shape[1])
    x = _rand(shape, s, case["dtype"], scale=2.0, shift=case["shift"])
    check_instance_norm(x, _rand((shape[-1],), s + 1), _rand((shape[-1],), s + 2), eps=case["eps"], seed=s)


# ------------------------------------------------- determinism: threads and builds
CHILD = r"""
import sys
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
from tf_mps import _lib
lib = _lib.load()
assert lib.mps_norm_cpu_isa().numpy() == b"base", lib.mps_norm_cpu_isa().numpy()
sys.path.insert(0, {tests!r})
import test_norm as T
np.savez({out!r}, *T.deterministic_outputs())
print("ok")
"""


def deterministic_outputs():
    """Every output of the four ops on shapes with many blocks, both dtypes."""
    outs = []
    # The last is larger than 16 MB: the AVX2 build writes it with non-temporal stores.
    for shape, dtype in [((16, 40, 40, 24), np.float32), ((8, 30, 30, 3), np.float16), ((64, 9, 1100), np.float32),
                         ((4, 1001, 1100), np.float32)]:
        c = shape[-1]
        x, dy = _rand(shape, 47, dtype, 2.0, 1.0), _rand(shape, 48, dtype)
        g, b = _rand((c,), 49), _rand((c,), 50)
        y, m, v, inv = lib.mps_batch_norm(x=x, gamma=g, beta=b, mean=np.zeros(0, np.float32),
                                          variance=np.zeros(0, np.float32))
        grads = lib.mps_batch_norm_grad(dy=dy, x=x, gamma=g, mean=m, inv_std=inv, mean_backprop=m,
                                        variance_backprop=v)
        yi, mi, vi, invi = lib.mps_instance_norm(x=x, gamma=g, beta=b)
        gradsi = lib.mps_instance_norm_grad(dy=dy, x=x, gamma=g, mean=mi, inv_std=invi, mean_backprop=mi,
                                            variance_backprop=vi)
        ginf = lib.mps_batch_norm_grad(dy=dy, x=x, gamma=g, mean=m, inv_std=inv, mean_backprop=m[:0],
                                       variance_backprop=v[:0], is_training=False)
        outs += [t.numpy() for t in (y, m, v, inv, *grads, yi, mi, vi, invi, *gradsi, *ginf)]
    return outs


def test_same_bits_for_any_thread_count_and_build(tmp_path):
    # Here: TF's default pool (2+ threads) and the widest build; the child: one thread
    # and the portable build. Fixed blocks, fixed combination order: the same bits.
    if os.cpu_count() == 1:
        pytest.skip("one core: the thread count cannot differ")
    out = tmp_path / "child.npz"
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, TFMPS_NORM_ISA="base", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TFMPS_METAL_EMULATION", None)
    run = subprocess.run([sys.executable, "-c", CHILD.format(tests=tests, out=str(out))], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stdout + run.stderr
    with tf.device("/CPU:0"):
        ours = deterministic_outputs()
    child = np.load(out)
    assert len(child.files) == len(ours)
    for i, a in enumerate(ours):
        np.testing.assert_array_equal(a, child[f"arr_{i}"], err_msg=f"output {i}")


# ---------------------------------------------------------------- bad input
X = tf.ones((2, 3, 4))
C4 = tf.ones(4)
E = tf.zeros(0)


def bn(x=X, gamma=C4, beta=C4, mean=E, variance=E, **kw):
    return lib.mps_batch_norm(x=x, gamma=gamma, beta=beta, mean=mean, variance=variance, **kw)


def bn_grad(dy=X, x=X, gamma=C4, mean=C4, inv_std=C4, gm=C4, gv=C4, **kw):
    return lib.mps_batch_norm_grad(dy=dy, x=x, gamma=gamma, mean=mean, inv_std=inv_std, mean_backprop=gm,
                                   variance_backprop=gv, **kw)


S = tf.ones((2, 4))


def inorm(x=X, gamma=C4, beta=C4, **kw):
    return lib.mps_instance_norm(x=x, gamma=gamma, beta=beta, **kw)


def in_grad(dy=X, x=X, gamma=C4, mean=S, inv_std=S, gm=S, gv=S):
    return lib.mps_instance_norm_grad(dy=dy, x=x, gamma=gamma, mean=mean, inv_std=inv_std, mean_backprop=gm,
                                      variance_backprop=gv)


BAD_INPUT = {
    # rank
    "bn_x_rank": (lambda: bn(x=tf.ones(4)), r"MpsBatchNorm: x must have rank >= 2 \[\.\.\., channels\] "
                                            r"\(channels last\), got shape \[4\]"),
    "bn_grad_x_rank": (lambda: bn_grad(dy=tf.ones(4), x=tf.ones(4)), r"MpsBatchNormGrad: x must have rank >= 2"),
    "in_x_rank": (lambda: inorm(x=tf.ones((2, 4))),
                  r"MpsInstanceNorm: x must have rank >= 3 \[batch, spatial\.\.\., channels\] \(channels last\), "
                  r"got shape \[2,4\]"),
    "in_grad_x_rank": (lambda: in_grad(dy=tf.ones((2, 4)), x=tf.ones((2, 4))),
                       r"MpsInstanceNormGrad: x must have rank >= 3"),
    # per-channel vectors
    "bn_gamma_size": (lambda: bn(gamma=tf.ones(3)),
                      r"MpsBatchNorm: gamma must be 1-D \[channels\] with one value per channel of x \(4\), got "
                      r"shape \[3\]"),
    "bn_beta_rank": (lambda: bn(beta=tf.ones((1, 4))), r"MpsBatchNorm: beta must be 1-D \[channels\] .*\[1,4\]"),
    "bn_mean_inference": (lambda: bn(mean=E, variance=C4, is_training=False),
                          r"MpsBatchNorm: mean must be 1-D \[channels\] with one value per channel of x \(4\), got "
                          r"shape \[0\]"),
    "bn_variance_inference": (lambda: bn(mean=C4, variance=tf.ones(5), is_training=False),
                              r"MpsBatchNorm: variance must be 1-D .*\(4\), got shape \[5\]"),
    "bn_mean_training": (lambda: bn(mean=tf.ones(2)),
                         r"MpsBatchNorm: mean must be 1-D \[channels\] .*\(4\) or \[0\] in training, got shape \[2\]"),
    "in_gamma_size": (lambda: inorm(gamma=tf.ones(5)), r"MpsInstanceNorm: gamma must be 1-D .*\(4\), got shape \[5\]"),
    "in_beta_size": (lambda: inorm(beta=tf.ones(2)), r"MpsInstanceNorm: beta must be 1-D .*\(4\), got shape \[2\]"),
    "bn_grad_gamma": (lambda: bn_grad(gamma=tf.ones(2)), r"MpsBatchNormGrad: gamma must be 1-D .*got shape \[2\]"),
    # the grad ops' statistics and dy
    "bn_grad_dy_shape": (lambda: bn_grad(dy=tf.ones((2, 4, 4))),
                         r"MpsBatchNormGrad: dy must have the shape of x, \[2,3,4\], got \[2,4,4\]"),
    "bn_grad_mean": (lambda: bn_grad(mean=tf.ones(3)),
                     r"MpsBatchNormGrad: mean must have the statistics' shape \[channels\] = \[4\], got shape \[3\]"),
    "bn_grad_inv_std": (lambda: bn_grad(inv_std=E), r"MpsBatchNormGrad: inv_std must have the statistics' shape "
                                                    r"\[channels\] = \[4\], got shape \[0\]"),
    "bn_grad_mean_backprop": (lambda: bn_grad(gm=tf.ones(2)),
                              r"MpsBatchNormGrad: mean_backprop must have the statistics' shape \[channels\] = \[4\] "
                              r"\(or \[0\] for none\), got shape \[2\]"),
    "bn_grad_variance_backprop": (lambda: bn_grad(gv=tf.ones((4, 1))),
                                  r"MpsBatchNormGrad: variance_backprop must have .* got shape \[4,1\]"),
    "in_grad_dy_shape": (lambda: in_grad(dy=tf.ones((2, 3, 5))), r"MpsInstanceNormGrad: dy must have the shape of x"),
    "in_grad_mean": (lambda: in_grad(mean=C4),
                     r"MpsInstanceNormGrad: mean must have the statistics' shape \[batch, channels\] = \[2,4\], got "
                     r"shape \[4\]"),
    "in_grad_inv_std": (lambda: in_grad(inv_std=tf.ones((3, 4))),
                        r"MpsInstanceNormGrad: inv_std must have the statistics' shape .* got shape \[3,4\]"),
    "in_grad_variance_backprop": (lambda: in_grad(gv=C4), r"MpsInstanceNormGrad: variance_backprop must have"),
    # epsilon
    "bn_epsilon_zero": (lambda: bn(epsilon=0.0), r"MpsBatchNorm: epsilon must be positive and finite, got 0"),
    "bn_epsilon_negative": (lambda: bn(epsilon=-1e-3), r"MpsBatchNorm: epsilon must be positive and finite, got -0.001"),
    "bn_epsilon_inf": (lambda: bn(epsilon=float("inf")), r"MpsBatchNorm: epsilon must be positive and finite, got inf"),
    "in_epsilon_nan": (lambda: inorm(epsilon=float("nan")),
                       r"MpsInstanceNorm: epsilon must be positive and finite, got nan"),
    # dtypes (the op definitions: T half or float, float32 statistics and parameters)
    "dtype_raw_x": (lambda: bn(x=tf.ones((2, 4), tf.float64)),
                    r"(?s)Value for attr 'T' of double is not in the list of allowed values: half, float.*MpsBatchNorm"),
    "dtype_raw_gamma": (lambda: bn(gamma=tf.ones(4, tf.float16)),
                        r"MpsBatchNorm as input #1\(zero-based\) was expected to be a float tensor but is a half"),
    "dtype_raw_dy_mismatch": (lambda: bn_grad(dy=tf.ones((2, 3, 4), tf.float16)),
                              r"(?s)MpsBatchNormGrad.*(half|float)"),
    "dtype_wrapper_x": (lambda: norm.batch_norm(tf.ones((2, 4), tf.float64), C4, C4),
                        r"batch_norm: x must be float32 or float16, got float64"),
    "dtype_wrapper_gamma": (lambda: norm.batch_norm(X, tf.ones(4, tf.float16), C4),
                            r"batch_norm: gamma must be float32 \(also for float16 x\), got float16"),
    "dtype_wrapper_mean": (lambda: norm.batch_norm(X, C4, C4, tf.ones(4, tf.float64), C4, training=False),
                           r"batch_norm: mean must be float32 .* got float64"),
    "dtype_wrapper_instance_beta": (lambda: norm.instance_norm(X, C4, tf.ones(4, tf.int32)),
                                    r"instance_norm: beta must be float32 .* got int32"),
    "dtype_wrapper_instance_x": (lambda: norm.instance_norm(tf.ones((2, 3, 4), tf.int32), C4, C4),
                                 r"instance_norm: x must be float32 or float16, got int32"),
    # the Python wrappers' arguments
    "wrapper_rank": (lambda: norm.batch_norm(tf.ones(4), C4, C4), r"batch_norm: x must have rank >= 2"),
    "wrapper_instance_rank": (lambda: norm.instance_norm(tf.ones((2, 4)), C4, C4),
                              r"instance_norm: x must have rank >= 3"),
    "wrapper_epsilon": (lambda: norm.batch_norm(X, C4, C4, epsilon=0), r"batch_norm: epsilon must be a positive finite"),
    "wrapper_epsilon_type": (lambda: norm.instance_norm(X, C4, C4, epsilon="1e-3"),
                             r"instance_norm: epsilon must be a positive finite number, got '1e-3'"),
    "wrapper_training_type": (lambda: norm.batch_norm(X, C4, C4, training=1),
                              r"batch_norm: training must be a Python bool, got 1"),
    "wrapper_stats_in_training": (lambda: norm.batch_norm(X, C4, C4, C4, C4),
                                  r"batch_norm: mean and variance must be None in training"),
    "wrapper_no_stats_in_inference": (lambda: norm.batch_norm(X, C4, C4, C4, training=False),
                                      r"batch_norm: inference \(training=False\) needs mean and variance, got "
                                      r"mean=a tensor, variance=None"),
    "wrapper_gamma_size": (lambda: norm.batch_norm(X, tf.ones(3), C4), r"MpsBatchNorm: gamma must be 1-D"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUT))
def test_bad_input(device, name):
    fn, pattern = BAD_INPUT[name]
    with pytest.raises(INVALID, match=pattern):
        fn()


def test_shape_function_reports_at_trace_time(device):
    @tf.function
    def fn(x, g):
        return lib.mps_batch_norm(x=x, gamma=g, beta=g, mean=E, variance=E)

    with pytest.raises(ValueError, match=r"MpsBatchNorm: gamma must be 1-D \[channels\] with one value per channel "
                                         r"of x \(4\), got shape \[3\]"):
        fn.get_concrete_function(tf.TensorSpec((None, 4)), tf.TensorSpec((3,)))
    with pytest.raises(ValueError, match=r"MpsBatchNorm: x must have rank >= 2"):
        fn.get_concrete_function(tf.TensorSpec((4,)), tf.TensorSpec((4,)))

    @tf.function
    def bad_eps(x):
        return lib.mps_instance_norm(x=x, gamma=C4, beta=C4, epsilon=-1.0)

    with pytest.raises(ValueError, match=r"MpsInstanceNorm: epsilon must be positive and finite, got -1"):
        bad_eps.get_concrete_function(tf.TensorSpec((2, 3, 4)))

    @tf.function
    def grad(dy, mean):
        return lib.mps_instance_norm_grad(dy=dy, x=X, gamma=C4, mean=mean, inv_std=S, mean_backprop=E,
                                          variance_backprop=E)

    with pytest.raises(ValueError, match=r"MpsInstanceNormGrad: mean must have the statistics' shape"):
        grad.get_concrete_function(tf.TensorSpec((2, 3, 4)), tf.TensorSpec((3, 4)))
    with pytest.raises(ValueError, match=r"MpsInstanceNormGrad: dy must have the shape of x"):
        grad.get_concrete_function(tf.TensorSpec((2, 5, 4)), tf.TensorSpec((2, 4)))
