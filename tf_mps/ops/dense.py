"""The fully connected (dense) layer with fused bias and activation, and its gradients.

One op, ``MpsDense``, computes over the last dimension of ``x``::

    z[..., m] = sum_k x[..., k] * kernel[k, m]
    y = activation(z + bias[m])            activation: identity or relu

with ``kernel`` in Keras's layout ``[in_features, units]``. Its gradient is registered:
``MpsDenseBackpropInput`` (``dx = g @ kernel^T``) and ``MpsDenseBackpropKernel``
(``dkernel = x^T @ g`` and ``dbias = sum of g over the rows``), where ``g`` is ``dy``
masked by ``y > 0`` for relu (TF's ReluGrad), applied inside those ops. The backprop ops
have gradients too (second order).

Accumulator precision (``accumulator_precision``):

* ``"float32"`` (default): float32 data runs BLAS sgemm (single-threaded, on blocks of
  the output spread over TensorFlow's intra-op threads); float16 data is converted to
  float32, multiplied the same way and rounded once to half.
* ``"float16"``: what Metal offers as ``MPSNNConvolutionAccumulatorPrecisionOptionHalf``,
  emulated exactly on the CPU with one model (ops/dense/dense.h, shared with the
  convolutions): for each output, ``acc = +0`` (half); for ``k = 0 .. K-1`` in order,
  ``acc = round_to_half(acc + x_k * w_k)`` (the product exact, the sum rounded once to
  half, nearest even, overflow to inf); then the bias is added in float32, the result
  rounded to the output dtype, then the activation. Float32 inputs are rounded to half
  first (the bias stays float32). The gradients use the same model for their sums (dx
  over units, dkernel and dbias over rows, in order). It is several times slower than
  float32 accumulation (no BLAS): the tool to study what half accumulation does to a
  model before running it on a Mac.

On the tf-mps device, float32 data with float32 accumulation runs on Metal
(MPSMatrixMultiplication and the device's bias/relu kernels); float16 data and half
accumulation run the CPU backend after the device's queued work.
"""

from __future__ import annotations

import tensorflow as tf

from tf_mps import _lib

_invalid = _lib.invalid_argument

_OP = "dense"
_ACTIVATIONS = {None: "none", "linear": "none", "none": "none", "relu": "relu"}
_DTYPES = (tf.float32, tf.float16)


def _activation(activation) -> str:
    if activation is tf.nn.relu or getattr(activation, "__name__", None) == "relu":
        return "relu"
    if getattr(activation, "__name__", None) == "linear":
        return "none"
    key = activation.lower() if isinstance(activation, str) else activation
    try:
        return _ACTIVATIONS[key]
    except (KeyError, TypeError):
        raise _invalid(f"{_OP}: activation must be None, 'linear' or 'relu', got {activation!r}") from None


def dense(x, kernel, bias=None, activation=None, *, accumulator_precision: str = "float32",
          name: str | None = None):
    """Fully connected layer ``activation(x @ kernel + bias)``, as ``keras.layers.Dense``.

    Args:
      x: float32 or float16 ``[..., in_features]``, rank >= 2 (the leading dimensions are
        flattened into rows).
      kernel: ``[in_features, units]`` (Keras's Dense layout), x's dtype.
      bias: None or ``[units]``, x's dtype; added before the activation.
      activation: None/``"linear"`` or ``"relu"`` (also ``tf.nn.relu`` and Keras's relu).
        relu keeps NaN and maps everything else not above 0 to +0.
      accumulator_precision: ``"float32"`` (default) or ``"float16"`` (the exact
        half-accumulation model above; float32 inputs are rounded to half first).
      name: a name scope for the op.

    Returns:
      ``[..., units]`` in x's dtype.

    Raises:
      tf.errors.InvalidArgumentError: a wrong dtype, rank, feature count, bias shape,
        activation or accumulator precision, naming the argument (here or in the op).
    """
    act = _activation(activation)
    if accumulator_precision not in ("float32", "float16"):
        raise _invalid(f"{_OP}: accumulator_precision must be 'float32' or 'float16', got {accumulator_precision!r}")
    with tf.name_scope(name or "MpsDense"):
        x = tf.convert_to_tensor(x)
        if x.dtype not in _DTYPES:
            raise _invalid(f"{_OP}: x must be float32 or float16, got {x.dtype.name}")
        kernel = tf.convert_to_tensor(kernel)
        if kernel.dtype != x.dtype:
            raise _invalid(f"{_OP}: kernel must have x's dtype {x.dtype.name}, got {kernel.dtype.name}")
        biases = []
        if bias is not None:
            bias = tf.convert_to_tensor(bias)
            if bias.dtype != x.dtype:
                raise _invalid(f"{_OP}: bias must have x's dtype {x.dtype.name}, got {bias.dtype.name}")
            biases = [bias]
        if x.shape.rank is not None and x.shape.rank < 2:
            raise _invalid(f"{_OP}: x must be at least 2-D [..., in_features], got shape {x.shape}")
        if kernel.shape.rank not in (None, 2):
            raise _invalid(f"{_OP}: kernel must be 2-D [in_features, units], got shape {kernel.shape}")
        return _lib.load().mps_dense(x=x, kernel=kernel, bias=biases, activation=act,
                                     accumulator_precision=accumulator_precision)


def _mask(op) -> list:
    """The forward output as the backprop ops' relu mask (or nothing)."""
    return [op.outputs[0]] if op.get_attr("activation") == b"relu" else []


def _skip(op, index: int) -> bool:
    """Whether the tape says input `index` needs no gradient (eager; TF's own MatMul
    gradient reads the same hint)."""
    return index in (getattr(op, "skip_input_indices", None) or ())


@tf.RegisterGradient("MpsDense")
def _dense_grad(op, dy):
    lib = _lib.load()
    x, kernel = op.inputs[0], op.inputs[1]
    attrs = dict(activation=op.get_attr("activation"), accumulator_precision=op.get_attr("accumulator_precision"))
    y = _mask(op)
    dx = None if _skip(op, 0) else lib.mps_dense_backprop_input(dy=dy, kernel=kernel, y=y, **attrs)
    num_bias = op.get_attr("num_bias")
    if _skip(op, 1) and (num_bias == 0 or _skip(op, 2)):
        return [dx, None] + [None] * num_bias
    dw, db = lib.mps_dense_backprop_kernel(x=x, dy=dy, y=y, num_bias=num_bias, **attrs)
    return [dx, dw, *db]


def _relu_mask(g, y: list):
    return tf.raw_ops.ReluGrad(gradients=g, features=y[0]) if y else g


@tf.RegisterGradient("MpsDenseBackpropInput")
def _dense_backprop_input_grad(op, g_dx):
    # dx = mask(dy) @ W^T, linear in dy and W (the mask is piecewise constant):
    # d/d(dy) = mask(g_dx @ W), d/dW = g_dx^T @ mask(dy).
    lib = _lib.load()
    dy, kernel = op.inputs[0], op.inputs[1]
    y = list(op.inputs[2:])
    precision = op.get_attr("accumulator_precision")
    d_dy = _relu_mask(lib.mps_dense(x=g_dx, kernel=kernel, bias=[], accumulator_precision=precision), y)
    d_w, _ = lib.mps_dense_backprop_kernel(x=g_dx, dy=dy, y=y, activation=op.get_attr("activation"),
                                           accumulator_precision=precision)
    return [d_dy, d_w] + [None] * len(y)


@tf.RegisterGradient("MpsDenseBackpropKernel")
def _dense_backprop_kernel_grad(op, g_w, *g_b):
    # dW = x^T @ mask(dy), db = sum mask(dy): d/dx = mask(dy) @ g_w^T,
    # d/d(dy) = mask(x @ g_w + g_b).
    lib = _lib.load()
    x, dy = op.inputs[0], op.inputs[1]
    y = list(op.inputs[2:])
    precision = op.get_attr("accumulator_precision")
    if g_w is None:  # only the bias gradient is used
        g_w = tf.zeros_like(op.outputs[0])
    bias = [g_b[0]] if g_b and g_b[0] is not None else []
    d_x = lib.mps_dense_backprop_input(dy=dy, kernel=g_w, y=y, activation=op.get_attr("activation"),
                                       accumulator_precision=precision)
    d_dy = _relu_mask(lib.mps_dense(x=x, kernel=g_w, bias=bias, accumulator_precision=precision), y)
    return [d_x, d_dy] + [None] * len(y)


# tf_mps.ops exports this function under the module's own name, so after
# `import tf_mps.ops` the attribute tf_mps.ops.dense is the function, and
# `from tf_mps.ops import dense; dense.dense(...)` (tf_mps.keras.layers) reaches it
# through this alias.
dense.dense = dense
