"""Batch normalization and instance normalization (channels last), with gradients.

``batch_norm`` (op ``MpsBatchNorm``) normalizes over every axis but the last::

    training:   mean[c] = mean of x[..., c]            variance[c] = mean of (x[..., c] - mean[c])**2
    inference:  mean, variance given
    y = gamma[c] * (x - mean[c]) / sqrt(variance[c] + epsilon) + beta[c]

``instance_norm`` (op ``MpsInstanceNorm``) does the same per sample: statistics of
``x[n, ..., c]`` over the spatial axes, one ``[batch, channels]`` set per call, with gamma
and beta per channel.

Data ``x`` is float32 or float16; gamma, beta, mean, variance and the statistics are
float32 (like ``tf.compat.v1.nn.fused_batch_norm``), and all arithmetic is float32:
float16 data is widened on load and ``y`` rounded once, which is what Keras's
``BatchNormalization`` computes under ``mixed_float16`` (it casts to float32 itself).

The variance is the biased one (divided by the count, as ``tf.nn.moments`` and Keras's
``BatchNormalization`` use, for normalizing and for the moving variance). TF's
``FusedBatchNormV3`` returns the Bessel-corrected ``n / (n - 1)`` variance instead.

The ops are stateless. Keras's layer keeps the moving statistics with (keras 3,
``BatchNormalization.call``, no Bessel correction)::

    moving_mean     = moving_mean * momentum     + batch_mean     * (1 - momentum)
    moving_variance = moving_variance * momentum + batch_variance * (1 - momentum)

An empty batch (no values per channel) gives NaN statistics, as TF's
``FusedBatchNormV3`` does, and zero gradients for gamma and beta.

Gradients are registered: ``MpsBatchNormGrad`` / ``MpsInstanceNormGrad`` give dx (in
training through the batch statistics, including gradients that reach the returned
batch_mean/batch_variance), dgamma and dbeta; in inference also d mean and d variance.
Second-order gradients go through plain TensorFlow ops.

CPU: the same bits for any thread count (fixed blocks summed in float64 in a fixed
order); two passes over x in training (one in inference), vectorized over channels.
"""

from __future__ import annotations

import math
import numbers

import tensorflow as tf

from tf_mps import _lib

_invalid = _lib.invalid_argument

_DATA_DTYPES = (tf.float32, tf.float16)


def _data(op: str, name: str, value, min_rank: int, layout: str):
    t = tf.convert_to_tensor(value)
    if t.dtype not in _DATA_DTYPES:
        raise _invalid(f"{op}: {name} must be float32 or float16, got {t.dtype.name}")
    if t.shape.rank is not None and t.shape.rank < min_rank:
        raise _invalid(f"{op}: {name} must have rank >= {min_rank} {layout}, got shape {t.shape}")
    return t


def _channel_vector(op: str, name: str, value, x, default: float):
    """A float32 [C] tensor; None becomes `default` for every channel of x."""
    if value is None:
        return tf.fill(tf.shape(x)[-1:], tf.constant(default, tf.float32))
    t = tf.convert_to_tensor(value)
    if t.dtype != tf.float32:
        raise _invalid(f"{op}: {name} must be float32 (also for float16 x), got {t.dtype.name}")
    return t


def _epsilon(op: str, epsilon) -> float:
    if (not isinstance(epsilon, numbers.Real) or isinstance(epsilon, bool) or not math.isfinite(epsilon)
            or epsilon <= 0):
        raise _invalid(f"{op}: epsilon must be a positive finite number, got {epsilon!r}")
    return float(epsilon)


def batch_norm(x, gamma, beta, mean=None, variance=None, *, epsilon: float = 1e-3, training: bool = True,
               name: str | None = None):
    """Batch normalization over every axis but the last (channels last, any rank >= 2).

    Args:
      x: float32 or float16 ``[..., channels]`` (NHWC for images).
      gamma, beta: float32 ``[channels]``, or None for ones / zeros (Keras's
        ``scale=False`` / ``center=False``).
      mean, variance: float32 ``[channels]``: the statistics to use in inference
        (Keras's moving mean and variance); must be None in training.
      epsilon: added to the variance, > 0 (Keras's default 1e-3).
      training: True: normalize with the batch statistics; False: with mean/variance.
      name: name scope of the op.

    Returns:
      training: ``(y, batch_mean, batch_variance)``, y like x, the statistics float32
      ``[channels]`` (biased variance; an empty batch gives NaN). Inference: ``y``.

    Raises:
      tf.errors.InvalidArgumentError: a wrong dtype, rank or shape, or a bad epsilon,
        naming the argument (from here or from the op).
    """
    op = "batch_norm"
    eps = _epsilon(op, epsilon)
    if not isinstance(training, bool):
        raise _invalid(f"{op}: training must be a Python bool, got {training!r}")
    with tf.name_scope(name or "MpsBatchNorm"):
        x = _data(op, "x", x, 2, "[..., channels]")
        gamma = _channel_vector(op, "gamma", gamma, x, 1.0)
        beta = _channel_vector(op, "beta", beta, x, 0.0)
        if training:
            if mean is not None or variance is not None:
                raise _invalid(f"{op}: mean and variance must be None in training (the batch statistics are used); "
                               "pass training=False to normalize with given statistics")
            mean = variance = tf.zeros([0], tf.float32)
        else:
            if mean is None or variance is None:
                raise _invalid(f"{op}: inference (training=False) needs mean and variance, got "
                               f"mean={'None' if mean is None else 'a tensor'}, "
                               f"variance={'None' if variance is None else 'a tensor'}")
            mean = _channel_vector(op, "mean", mean, x, 0.0)
            variance = _channel_vector(op, "variance", variance, x, 1.0)
        y, batch_mean, batch_variance, _ = _lib.load().mps_batch_norm(
            x=x, gamma=gamma, beta=beta, mean=mean, variance=variance, epsilon=eps, is_training=training)
        return (y, batch_mean, batch_variance) if training else y


def instance_norm(x, gamma, beta, *, epsilon: float = 1e-3, name: str | None = None):
    """Instance normalization: per sample and channel statistics over the spatial axes.

    ``y[n, ..., c] = gamma[c] * (x[n, ..., c] - mean[n, c]) / sqrt(variance[n, c] + epsilon)
    + beta[c]`` with mean and (biased) variance over every axis but the first and last.

    Args:
      x: float32 or float16 ``[batch, spatial..., channels]`` (rank >= 3; NHWC images).
      gamma, beta: float32 ``[channels]``, or None for ones / zeros.
      epsilon: added to the variance, > 0.
      name: name scope of the op.

    Returns:
      y, like x. An image with no pixels gives NaN statistics (y is empty anyway).

    Raises:
      tf.errors.InvalidArgumentError: a wrong dtype, rank or shape, or a bad epsilon.
    """
    op = "instance_norm"
    eps = _epsilon(op, epsilon)
    with tf.name_scope(name or "MpsInstanceNorm"):
        x = _data(op, "x", x, 3, "[batch, spatial..., channels]")
        gamma = _channel_vector(op, "gamma", gamma, x, 1.0)
        beta = _channel_vector(op, "beta", beta, x, 0.0)
        y, _, _, _ = _lib.load().mps_instance_norm(x=x, gamma=gamma, beta=beta, epsilon=eps)
        return y


# ------------------------------------------------------------------ gradients
def _or_zeros(g, like):
    return tf.zeros_like(like) if g is None else g


def _variance_backprop(g_var, g_inv, inv_std):
    """dL/dvariance from the gradients of the variance and inv_std = rsqrt(var + eps) outputs."""
    gv = _or_zeros(g_var, inv_std)
    if g_inv is not None:
        gv = gv - 0.5 * inv_std * inv_std * inv_std * g_inv
    return gv


@tf.RegisterGradient("MpsBatchNorm")
def _batch_norm_grad(op, dy, g_mean, g_var, g_inv):
    x, gamma = op.inputs[0], op.inputs[1]
    _, mean, _, inv_std = op.outputs
    training = op.get_attr("is_training")
    dy = _or_zeros(dy, x)
    lib = _lib.load()
    if training:
        dx, dgamma, dbeta = lib.mps_batch_norm_grad(
            dy=dy, x=x, gamma=gamma, mean=mean, inv_std=inv_std, mean_backprop=_or_zeros(g_mean, mean),
            variance_backprop=_variance_backprop(g_var, g_inv, inv_std), is_training=True)
        return [dx, dgamma, dbeta, None, None]
    empty = tf.zeros([0], tf.float32)
    dx, dgamma, dbeta = lib.mps_batch_norm_grad(dy=dy, x=x, gamma=gamma, mean=mean, inv_std=inv_std,
                                                mean_backprop=empty, variance_backprop=empty, is_training=False)
    # y = A * (x - mean) + beta with A = gamma * inv_std: d/dmean = -A * sum dy,
    # d/dvariance = -A * inv_std^2 / 2 * sum dy * (x - mean) = -A * inv_std / 2 * dgamma.
    a = gamma * inv_std
    dmean = -a * dbeta + _or_zeros(g_mean, mean)
    dvariance = -0.5 * a * inv_std * dgamma + _variance_backprop(g_var, g_inv, inv_std)
    return [dx, dgamma, dbeta, dmean, dvariance]


@tf.RegisterGradient("MpsInstanceNorm")
def _instance_norm_grad(op, dy, g_mean, g_var, g_inv):
    x, gamma = op.inputs[0], op.inputs[1]
    _, mean, _, inv_std = op.outputs
    dx, dgamma, dbeta = _lib.load().mps_instance_norm_grad(
        dy=_or_zeros(dy, x), x=x, gamma=gamma, mean=mean, inv_std=inv_std, mean_backprop=_or_zeros(g_mean, mean),
        variance_backprop=_variance_backprop(g_var, g_inv, inv_std))
    return [dx, dgamma, dbeta]


def _backward_math(dy, x, gamma, mean, inv_std, gm, gv, training: bool, instance: bool):
    """The grad ops' outputs in plain TensorFlow ops (float32; norm.h's equations), for
    second-order gradients. gm/gv None mean zero."""
    dtype = x.dtype
    shape = tf.shape(x)
    channels = shape[-1]
    groups = shape[0] if instance else 1
    x3 = tf.reshape(tf.cast(x, tf.float32), tf.stack([groups, -1, channels]))
    dy3 = tf.reshape(tf.cast(dy, tf.float32), tf.stack([groups, -1, channels]))
    stats = tf.stack([groups, 1, channels])
    m3, inv3 = tf.reshape(mean, stats), tf.reshape(inv_std, stats)
    xc = x3 - m3
    xhat = xc * inv3
    s1 = tf.reduce_sum(dy3, axis=1, keepdims=True)
    s2 = tf.reduce_sum(dy3 * xhat, axis=1, keepdims=True)
    dbeta = tf.reduce_sum(s1, axis=[0, 1])
    dgamma = tf.reduce_sum(s2, axis=[0, 1])
    a = gamma * inv3
    if training:
        rows = tf.cast(tf.shape(x3)[1], tf.float32)
        dx = a * (dy3 - s1 / rows - xhat * s2 / rows)
        if gm is not None:
            dx += tf.reshape(gm, stats) / rows
        if gv is not None:
            dx += 2.0 * tf.reshape(gv, stats) * xc / rows
    else:
        dx = a * dy3
    return tf.cast(tf.reshape(dx, shape), dtype), dgamma, dbeta


def _is_empty(t) -> bool:
    return t.shape.rank == 1 and t.shape[0] == 0


def _grad_of_grad(op, grads, training: bool, instance: bool):
    inputs = list(op.inputs)
    # mean_backprop / variance_backprop of shape [0] stand for zero (and get no gradient).
    optional = [None if _is_empty(t) or not training else t for t in inputs[5:7]]
    watched = inputs[:5] + [t for t in optional if t is not None]
    with tf.GradientTape() as tape:
        tape.watch(watched)
        outs = _backward_math(*inputs[:5], *optional, training=training, instance=instance)
    out_grads = [_or_zeros(g, o) for g, o in zip(grads, outs)]
    got = tape.gradient(outs, watched, output_gradients=out_grads)
    result = got[:5]
    it = iter(got[5:])
    for t in optional:
        result.append(next(it) if t is not None else None)
    return result


@tf.RegisterGradient("MpsBatchNormGrad")
def _batch_norm_grad_grad(op, g_dx, g_dgamma, g_dbeta):
    return _grad_of_grad(op, [g_dx, g_dgamma, g_dbeta], op.get_attr("is_training"), instance=False)


@tf.RegisterGradient("MpsInstanceNormGrad")
def _instance_norm_grad_grad(op, g_dx, g_dgamma, g_dbeta):
    return _grad_of_grad(op, [g_dx, g_dgamma, g_dbeta], True, instance=True)
