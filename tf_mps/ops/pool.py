"""2-D max and average pooling (NHWC) and their gradients.

For an input ``x`` of shape ``[batch, height, width, channels]``, window ``(kh, kw)``
and strides ``(sh, sw)``, output pixel ``(i, j)`` pools the cells of rows
``i*sh - pad_top + [0, kh)`` and columns ``j*sw - pad_left + [0, kw)`` that lie inside
the image (``S(i, j)``), each channel alone::

    max_pool2d: y[n, i, j, c] = max over S(i, j) of x[n, h, w, c]
    avg_pool2d: y[n, i, j, c] = sum over S(i, j) of x[n, h, w, c] / |S(i, j)|

Padding follows TensorFlow: ``"VALID"`` has no padding, ``out = (in - k) // s + 1`` (the
window must fit in the input); ``"SAME"`` gives ``out = ceil(in / s)`` with
``total = max((out - 1)*s + k - in, 0)`` padded cells, ``total // 2`` before. Padded
cells take no part: the average divides by the number of real cells
(``tf.nn.avg_pool2d``'s rule) and the maximum ignores them.

Gradients (registered): the max gradient sends each output gradient to its window's
arg-max, the first maximal cell in scan order (rows, then columns) on ties, as
TensorFlow's CPU ``MaxPoolGrad`` does; a NaN counts as larger than every number (the
first NaN of a window is its maximum, so NaN propagates). The average gradient spreads
``dy / |S(i, j)|`` over the window. Both gradient ops have gradients too (any order):
the max gradient's derivative gathers at the arg-max (``MpsMaxPool2DGradGrad``, TF's
``MaxPoolGradGrad``), the average gradient's is the average pool.

Dtypes: float32 and float16 (float16 computed in float32 and rounded once). On the CPU
the ops run tf-mps's backend (ops/pool/pool_cpu.cc), vectorized across channels, on
TensorFlow's intra-op threads; results do not depend on the thread count. On the tf-mps
device every op has a kernel, which for now runs the same CPU backend on the device's
memory after the stream's queued work (``MPSCNNPoolingMax``/``Average`` and their
gradients come with the MPSImage path).

Under a gradient tape that records ``x``, ``max_pool2d`` runs ``MpsMaxPool2DWithArgmax``,
which also keeps each window's arg-max (a uint8 tap counter; windows of at most 256
cells), and its gradient ``MpsMaxPool2DGradWithArgmax`` scatters from it instead of
reading ``x`` again: the same results, a cheaper backward pass. Without a tape (inference,
or ``tf.gradients`` in a TF1 graph) it runs ``MpsMaxPool2D`` and the gradient finds each
arg-max again from ``x``.

Ops: ``MpsMaxPool2D``, ``MpsAvgPool2D``, ``MpsMaxPool2DGrad(input, grad)``,
``MpsAvgPool2DGrad(input_sizes, grad)``, ``MpsMaxPool2DGradGrad(input, grad)``; attributes
``ksize`` and ``strides`` (``[h, w]`` or ``[1, h, w, 1]``) and ``padding``.
"""

from __future__ import annotations

import numbers

import tensorflow as tf

from tf_mps import _lib

_invalid = _lib.invalid_argument

__all__ = ["max_pool2d", "avg_pool2d"]


def _hw(op: str, name: str, value) -> list[int]:
    """pool_size/strides as [h, w] from an int, 1 or 2 ints, or TF's [1, h, w, 1]."""
    def is_int(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    if is_int(value):
        values = [int(value)] * 2
    else:
        try:
            values = [int(v) if is_int(v) else None for v in value]
        except TypeError:
            values = [None]
        if None in values or len(values) not in (1, 2, 4):
            raise _invalid(f"{op}: {name} must be an int or a list of 1, 2 or 4 ints, got {value!r}")
        if len(values) == 1:
            values = values * 2
        elif len(values) == 4:
            if values[0] != 1 or values[3] != 1:
                raise _invalid(f"{op}: {name} in the batch and channel dimensions must be 1, got {value!r}")
            values = values[1:3]
    if min(values) < 1 or max(values) > 2**31 - 1:
        raise _invalid(f"{op}: {name} must be in [1, 2147483647], got {value!r}")
    return values


def _padding(op: str, padding) -> str:
    p = padding.decode() if isinstance(padding, bytes) else padding
    if isinstance(p, str) and p.upper() in ("SAME", "VALID"):
        return p.upper()
    raise _invalid(f"{op}: padding must be 'SAME' or 'VALID', got {padding!r}")


try:  # whether a gradient tape records an op on x (TF's own check, as its ops use)
    from tensorflow.python.eager.record import should_record_backprop as _should_record
except ImportError:  # pragma: no cover - another TensorFlow layout: never the arg-max op
    def _should_record(tensors):
        return False


def _with_argmax(x, ksize) -> bool:
    """Whether max_pool2d keeps its arg-max for the gradient: a tape records x, and every
    window has at most 256 cells inside the image (a uint8 counter names them)."""
    if not _should_record([x]):
        return False
    h = x.shape[1] if x.shape.rank == 4 and x.shape[1] is not None else ksize[0]
    w = x.shape[2] if x.shape.rank == 4 and x.shape[2] is not None else ksize[1]
    return min(ksize[0], h) * min(ksize[1], w) <= 256


def _pool(op: str, raw, x, pool_size, strides, padding, name):
    ksize = _hw(op, "pool_size", pool_size)
    stride = ksize if strides is None else _hw(op, "strides", strides)
    pad = _padding(op, padding)
    with tf.name_scope(name or op):
        x = tf.convert_to_tensor(x)
        if x.dtype not in (tf.float32, tf.float16):
            raise _invalid(f"{op}: x must be float32 or float16, got {x.dtype.name}")
        if x.shape.rank not in (None, 4):
            raise _invalid(f"{op}: x must be 4-D [batch, height, width, channels], got shape {x.shape}")
        if op == "max_pool2d" and _with_argmax(x, ksize):
            return _lib.load().mps_max_pool2d_with_argmax(input=x, ksize=ksize, strides=stride, padding=pad)[0]
        return raw(input=x, ksize=ksize, strides=stride, padding=pad)


def max_pool2d(x, pool_size, strides=None, padding="VALID", name: str | None = None):
    """2-D max pooling of NHWC images, like ``tf.nn.max_pool2d`` (Keras's argument names).

    Args:
      x: float32 or float16 ``[batch, height, width, channels]``.
      pool_size: the window, an int or ``[height, width]`` (or TF's ``[1, h, w, 1]``).
      strides: an int, ``[height, width]`` or ``[1, h, w, 1]``; None (default) means
        ``pool_size``, as Keras's ``MaxPooling2D``.
      padding: ``"VALID"`` (default) or ``"SAME"``, case-insensitive (TF's rules).

    Returns:
      ``x``'s dtype, ``[batch, out_height, out_width, channels]``: the maximum of each
      window's cells inside the image (NaN if any is NaN).

    Raises:
      tf.errors.InvalidArgumentError: a wrong dtype, rank or attribute, or (VALID) a
        window larger than the input, naming the argument.
    """
    return _pool("max_pool2d", _lib.load().mps_max_pool2d, x, pool_size, strides, padding, name)


def avg_pool2d(x, pool_size, strides=None, padding="VALID", name: str | None = None):
    """2-D average pooling of NHWC images, like ``tf.nn.avg_pool2d`` (Keras's argument names).

    Args:
      x: float32 or float16 ``[batch, height, width, channels]``.
      pool_size: the window, an int or ``[height, width]`` (or TF's ``[1, h, w, 1]``).
      strides: an int, ``[height, width]`` or ``[1, h, w, 1]``; None (default) means
        ``pool_size``, as Keras's ``AveragePooling2D``.
      padding: ``"VALID"`` (default) or ``"SAME"``, case-insensitive; with ``"SAME"`` each
        average is over the window's cells inside the image only.

    Returns:
      ``x``'s dtype, ``[batch, out_height, out_width, channels]``.

    Raises:
      tf.errors.InvalidArgumentError: a wrong dtype, rank or attribute, or (VALID) a
        window larger than the input, naming the argument.
    """
    return _pool("avg_pool2d", _lib.load().mps_avg_pool2d, x, pool_size, strides, padding, name)


def _attrs(op) -> dict:
    return {k: op.get_attr(k) for k in ("ksize", "strides", "padding")}


@tf.RegisterGradient("MpsMaxPool2D")
def _max_pool2d_grad(op, dy):
    return _lib.load().mps_max_pool2d_grad(input=op.inputs[0], grad=dy, **_attrs(op))


@tf.RegisterGradient("MpsMaxPool2DWithArgmax")
def _max_pool2d_with_argmax_grad(op, dy, _):
    return _lib.load().mps_max_pool2d_grad_with_argmax(input=op.inputs[0], argmax=op.outputs[1], grad=dy,
                                                       **_attrs(op))


@tf.RegisterGradient("MpsMaxPool2DGradWithArgmax")
def _max_pool2d_grad_with_argmax_grad(op, g):
    x = op.inputs[0]
    return [tf.zeros_like(x), None, _lib.load().mps_max_pool2d_grad_grad(input=x, grad=g, **_attrs(op))]


@tf.RegisterGradient("MpsAvgPool2D")
def _avg_pool2d_grad(op, dy):
    return _lib.load().mps_avg_pool2d_grad(input_sizes=tf.shape(op.inputs[0], out_type=tf.int32), grad=dy,
                                           **_attrs(op))


@tf.RegisterGradient("MpsMaxPool2DGrad")
def _max_pool2d_grad_grad(op, g):
    # dx = G(x) dy is linear in dy with a piecewise-constant arg-max: d/dx = 0, and d/d(dy)
    # applied to g gathers g at the arg-max.
    x = op.inputs[0]
    return [tf.zeros_like(x), _lib.load().mps_max_pool2d_grad_grad(input=x, grad=g, **_attrs(op))]


@tf.RegisterGradient("MpsMaxPool2DGradGrad")
def _max_pool2d_grad_grad_grad(op, g):
    # The gather's adjoint is the scatter, MpsMaxPool2DGrad.
    x = op.inputs[0]
    return [tf.zeros_like(x), _lib.load().mps_max_pool2d_grad(input=x, grad=g, **_attrs(op))]


@tf.RegisterGradient("MpsAvgPool2DGrad")
def _avg_pool2d_grad_grad(op, g):
    # Linear in dy; its adjoint is the average pool itself.
    return [None, _lib.load().mps_avg_pool2d(input=g, **_attrs(op))]
