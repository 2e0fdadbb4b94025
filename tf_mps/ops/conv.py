"""2-D convolution (NHWC) with groups, fused bias and activation, and its gradients.

One op, ``MpsConv2D``, computes (cross-correlation, as ``tf.nn.conv2d``)::

    z[n, i, j, o] = sum_{kh, kw, c} x[n, i*sh - pt + kh*dh, j*sw - pl + kw*dw, g*Cg + c]
                                    * filters[kh, kw, c, o]          (x outside the image = 0)
    y = activation(z + bias[o])

for output channel ``o`` of group ``g = o // (O / groups)``, ``Cg = C / groups``. Its
gradient is registered: ``MpsConv2DBackpropInput`` (dx) and ``MpsConv2DBackpropFilter``
(dw and, with a bias, ``db = sum over n, i, j of dy``), after the activation's derivative
(relu: ``dy * (y > 0)``); the backprop ops have gradients too (second order).

On the CPU the ops run tf-mps's own backend (ops/conv/conv_cpu.cc) on TensorFlow's
intra-op threads: on x86 indirect-GEMM micro-kernels (AVX-512 or AVX2; no im2col copy)
for the convolution and both gradients, elsewhere (and for narrow channel counts) im2col
blocks with one single-threaded BLAS sgemm each; depthwise convolutions as vectorized
loops. The filter gradient sums fixed work units in a fixed order: the same inputs give
the same bits on every run (for a given thread count).

``conv2d_transpose`` (``MpsConv2DTranspose``, ``tf.nn.conv2d_transpose``'s semantics) is
the input gradient of the convolution whose input has ``output_shape``, plus a fused bias
and activation; its gradients are ``conv2d`` (w.r.t. its input) and the filter gradient.

Dtypes: float32 and float16 (x, filters and bias of one dtype). ``accumulator_precision``:

* ``"float32"`` (default): float16 data is computed in float32 and rounded once to half.
* ``"float16"``: Metal's half accumulation (``MPSNNConvolutionAccumulatorPrecisionOptionHalf``)
  emulated exactly on the CPU. For each output, ``acc = +0``; for each term of the sum in a
  fixed order (forward: ``kh``, ``kw``, then input channel, increasing; taps in the padding
  skipped), ``acc = round_to_half(acc + x * w)``: the product of two halves is exact, the
  sum is rounded once from its exact value (to nearest even, overflow to inf). Then the
  bias is added in float32, the result rounded to the output dtype, then the activation.
  float32 inputs are rounded to half first (the bias is not). Gradients use the same model
  over their own sums (dx: ``kh``, ``kw``, output channel; dw and db: batch, row, column).
  Slower (no BLAS, one rounding per term) and meant as the tool to study what half
  accumulation does to a model before running it on a Mac: docs/fp16-accumulation.md.
"""

from __future__ import annotations

import numbers

import tensorflow as tf

from tf_mps import _lib

_invalid = _lib.invalid_argument

_OP = "conv2d"
_ACTIVATIONS = {None: "none", "linear": "none", "none": "none", "relu": "relu"}


def _pair(name: str, value) -> list[int]:
    """strides/dilations as TF's 4-element NHWC list from an int, 2 values or 4 values."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        values = [int(value)] * 2
    else:
        try:
            values = [int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else None
                      for v in value]
        except TypeError:
            values = [None]
        if None in values or len(values) not in (1, 2, 4):
            raise _invalid(f"{_OP}: {name} must be an int or a list of 1, 2 or 4 ints, got {value!r}")
        if len(values) == 1:
            values = values * 2
        elif len(values) == 4:
            if values[0] != 1 or values[3] != 1:
                raise _invalid(f"{_OP}: {name} in the batch and depth dimensions must be 1, got {value!r}")
            values = values[1:3]
    if min(values) < 1:
        raise _invalid(f"{_OP}: {name} must be >= 1, got {value!r}")
    return [1, values[0], values[1], 1]


def _padding(padding) -> tuple[str, list[int]]:
    """(padding attr, explicit_paddings attr) from "SAME"/"VALID" or explicit pairs:
    [[top, bottom], [left, right]] or TF's NHWC [[0, 0], [top, bottom], [left, right], [0, 0]]."""
    if isinstance(padding, (str, bytes)):
        p = padding.decode() if isinstance(padding, bytes) else padding
        if p.upper() in ("SAME", "VALID"):
            return p.upper(), []
        raise _invalid(f"{_OP}: padding must be 'SAME', 'VALID' or a list of explicit paddings, got {padding!r}")
    try:
        pairs = [[int(v) for v in pair] for pair in padding]
    except (TypeError, ValueError):
        raise _invalid(f"{_OP}: padding must be 'SAME', 'VALID' or a list of [before, after] pairs, "
                       f"got {padding!r}") from None
    if any(len(pair) != 2 for pair in pairs) or len(pairs) not in (2, 4):
        raise _invalid(f"{_OP}: explicit padding must be 2 pairs [[top, bottom], [left, right]] or 4 NHWC pairs, "
                       f"got {padding!r}")
    if len(pairs) == 4:
        if pairs[0] != [0, 0] or pairs[3] != [0, 0]:
            raise _invalid(f"{_OP}: explicit padding in the batch and depth dimensions must be 0, got {padding!r}")
        pairs = pairs[1:3]
    if min(v for pair in pairs for v in pair) < 0:
        raise _invalid(f"{_OP}: explicit paddings must be >= 0, got {padding!r}")
    return "EXPLICIT", [0, 0, *pairs[0], *pairs[1], 0, 0]


def _activation(activation) -> str:
    if activation is tf.nn.relu or getattr(activation, "__name__", None) == "relu":
        return "relu"
    key = activation.lower() if isinstance(activation, str) else activation
    try:
        return _ACTIVATIONS[key]
    except (KeyError, TypeError):
        raise _invalid(f"{_OP}: activation must be None, 'linear' or 'relu', got {activation!r}") from None


def _floating(op: str, name: str, value, dtype=None):
    """value as a float32 or float16 tensor (of `dtype`, the first argument's, if given)."""
    t = tf.convert_to_tensor(value, dtype_hint=dtype or tf.float32)
    if t.dtype not in (tf.float32, tf.float16):
        raise _invalid(f"{op}: {name} must be float32 or float16, got {t.dtype.name}")
    if dtype is not None and t.dtype != dtype:
        raise _invalid(f"{op}: {name} must have x's dtype {dtype.name}, got {t.dtype.name}")
    return t


def _accumulator(op: str, accumulator_precision) -> str:
    if accumulator_precision not in ("float32", "float16"):
        raise _invalid(f"{op}: accumulator_precision must be 'float32' or 'float16', got {accumulator_precision!r}")
    return accumulator_precision


def conv2d(x, filters, strides=1, padding="SAME", dilations=1, groups: int = 1, bias=None, activation=None, *,
           accumulator_precision: str = "float32", name: str | None = None):
    """2-D convolution of NHWC images, like ``tf.nn.conv2d`` plus groups, bias and relu.

    Args:
      x: float32 or float16 ``[batch, height, width, channels]``.
      filters: x's dtype, ``[filter_height, filter_width, channels / groups, out_channels]``
        (HWIO, ``tf.nn.conv2d``'s layout); ``out_channels`` divisible by ``groups``.
        Depthwise convolution is ``groups == channels``: ``filters[kh, kw, 0, c*m + k]``
        is ``tf.nn.depthwise_conv2d``'s ``filter[kh, kw, c, k]`` (channel multiplier m).
      strides, dilations: an int, ``[height, width]`` or TF's ``[1, h, w, 1]``.
      padding: ``"SAME"``, ``"VALID"`` (TF's rules) or explicit pads
        ``[[top, bottom], [left, right]]`` (or TF's 4 NHWC pairs).
      groups: the number of groups; checked against the shapes, which define it
        (``channels / filters.shape[2]``) when they are not static.
      bias: None or x's dtype ``[out_channels]``, added before the activation.
      activation: None/``"linear"`` or ``"relu"`` (also ``tf.nn.relu``).
      accumulator_precision: ``"float32"`` (compute in float32, round once) or
        ``"float16"`` (the exact half-accumulation model in this module's docstring).

    Returns:
      x's dtype, ``[batch, out_height, out_width, out_channels]``. With input size ``in``,
      filter ``k``, dilation ``d``, stride ``s`` and ``k' = (k-1)*d + 1``: SAME gives
      ``ceil(in / s)``, VALID ``(in - k') // s + 1``, explicit pads ``b, a`` give
      ``(in + b + a - k') // s + 1``.

    Raises:
      tf.errors.InvalidArgumentError: a wrong dtype, rank, channel count, size or
        attribute, naming the argument (from here or from the op).
    """
    strides_attr = _pair("strides", strides)
    dilations_attr = _pair("dilations", dilations)
    padding_attr, explicit = _padding(padding)
    act = _activation(activation)
    _accumulator(_OP, accumulator_precision)
    if not isinstance(groups, numbers.Integral) or isinstance(groups, bool) or groups < 1:
        raise _invalid(f"{_OP}: groups must be an int >= 1, got {groups!r}")
    with tf.name_scope(name or "MpsConv2D"):
        x = _floating(_OP, "x", x)
        filters = _floating(_OP, "filters", filters, x.dtype)
        biases = [] if bias is None else [_floating(_OP, "bias", bias, x.dtype)]
        if x.shape.rank not in (None, 4):
            raise _invalid(f"{_OP}: x must be 4-D [batch, height, width, channels], got shape {x.shape}")
        if filters.shape.rank not in (None, 4):
            raise _invalid(f"{_OP}: filters must be 4-D [filter_height, filter_width, channels / groups, "
                           f"out_channels], got shape {filters.shape}")
        channels = x.shape[-1] if x.shape.rank == 4 else None
        depth = filters.shape[2] if filters.shape.rank == 4 else None
        if channels is not None and depth is not None and channels != depth * groups:
            raise _invalid(f"{_OP}: x has {channels} channels but filters.shape[2] * groups = {depth} * {groups} = "
                           f"{depth * groups}; filters must be [filter_height, filter_width, channels / groups, "
                           "out_channels]")
        return _lib.load().mps_conv2d(
            input=x, filter=filters, bias=biases, strides=strides_attr, dilations=dilations_attr,
            padding=padding_attr, explicit_paddings=explicit, activation=act,
            accumulator_precision=accumulator_precision)


def conv2d_transpose(x, filters, output_shape, strides=1, padding="SAME", dilations=1, bias=None, activation=None,
                     *, accumulator_precision: str = "float32", name: str | None = None):
    """Transposed 2-D convolution of NHWC images, like ``tf.nn.conv2d_transpose`` plus a
    fused bias and relu.

    The adjoint of ``conv2d`` with the same filter, strides, padding and dilations: with
    ``z = conv2d(u, filters)`` for ``u`` of shape ``output_shape``, ``conv2d_transpose(x)``
    is ``d<z, x>/du``::

        y[n, h, v, c] = sum over (i, kh) with i*sh - pt + kh*dh = h, (j, kw) likewise, and k,
                        of x[n, i, j, k] * filters[kh, kw, c, k]
        y = activation(y + bias[c])

    Args:
      x: float32 or float16 ``[batch, in_height, in_width, in_channels]``.
      filters: x's dtype, ``[filter_height, filter_width, out_channels / groups, in_channels]``
        (``tf.nn.conv2d_transpose``'s ``[h, w, out, in]``; groups from the shapes,
        ``out_channels / filters.shape[2]``; 1 in TF).
      output_shape: 4 ints ``[batch, height, width, out_channels]`` (a list or an int32
        tensor): the convolution of an image of this shape by ``filters`` must have
        ``x``'s shape (several output shapes may: a stride leaves the remainder open).
      strides, dilations, padding: as in ``conv2d``, of the forward convolution.
      bias: None or x's dtype ``[out_channels]``, added before the activation.
      activation: None/``"linear"`` or ``"relu"``.
      accumulator_precision: ``"float32"`` or ``"float16"`` (the half-accumulation model
        over dx's sums: ``kh``, ``kw``, then input channel ``k``, increasing; the bias
        is added in float32 afterwards).

    Returns:
      x's dtype, ``output_shape``.

    Gradients: w.r.t. ``x`` the convolution ``conv2d(dy, filters)``, w.r.t. ``filters``
    the filter gradient of that convolution, w.r.t. ``bias`` the sum of ``dy`` over batch,
    height and width (in float32); after relu's derivative.

    Raises:
      tf.errors.InvalidArgumentError: a wrong dtype, rank, size, output_shape or
        attribute, naming the argument.
    """
    op_name = "conv2d_transpose"
    strides_attr = _pair("strides", strides)
    dilations_attr = _pair("dilations", dilations)
    padding_attr, explicit = _padding(padding)
    act = _activation(activation)
    _accumulator(op_name, accumulator_precision)
    with tf.name_scope(name or "MpsConv2DTranspose"):
        x = _floating(op_name, "x", x)
        filters = _floating(op_name, "filters", filters, x.dtype)
        biases = [] if bias is None else [_floating(op_name, "bias", bias, x.dtype)]
        if x.shape.rank not in (None, 4):
            raise _invalid(f"{op_name}: x must be 4-D [batch, height, width, channels], got shape {x.shape}")
        if filters.shape.rank not in (None, 4):
            raise _invalid(f"{op_name}: filters must be 4-D [filter_height, filter_width, out_channels, "
                           f"in_channels], got shape {filters.shape}")
        try:
            shape = tf.convert_to_tensor(output_shape, dtype_hint=tf.int32)
        except (TypeError, ValueError):
            raise _invalid(f"{op_name}: output_shape must be 4 ints [batch, height, width, channels], "
                           f"got {output_shape!r}") from None
        if shape.dtype == tf.int64:
            shape = tf.cast(shape, tf.int32)
        if shape.dtype != tf.int32:
            raise _invalid(f"{op_name}: output_shape must be int32 or int64, got {shape.dtype.name}")
        if shape.shape.rank not in (None, 1) or (shape.shape.rank == 1 and shape.shape[0] not in (None, 4)):
            raise _invalid(f"{op_name}: output_shape must be 4 ints [batch, height, width, channels], "
                           f"got shape {shape.shape}")
        return _lib.load().mps_conv2d_transpose(
            input=x, filter=filters, output_shape=shape, bias=biases, strides=strides_attr,
            dilations=dilations_attr, padding=padding_attr, explicit_paddings=explicit, activation=act,
            accumulator_precision=accumulator_precision)


def _attrs(op) -> dict:
    return {k: op.get_attr(k) for k in ("strides", "dilations", "padding", "explicit_paddings",
                                        "accumulator_precision")}


@tf.RegisterGradient("MpsConv2D")
def _conv2d_grad(op, dy):
    lib = _lib.load()
    x, filters = op.inputs[0], op.inputs[1]
    if op.get_attr("activation") == b"relu":
        dy = tf.raw_ops.ReluGrad(gradients=dy, features=op.outputs[0])
    attrs = _attrs(op)
    dx = lib.mps_conv2d_backprop_input(input_sizes=tf.shape(x), filter=filters, out_backprop=dy, **attrs)
    dw, db = lib.mps_conv2d_backprop_filter(input=x, filter_sizes=tf.shape(filters), out_backprop=dy,
                                            num_bias=op.get_attr("num_bias"), **attrs)
    return [dx, dw, *db]


@tf.RegisterGradient("MpsConv2DBackpropInput")
def _conv2d_backprop_input_grad(op, g):
    # dx = B(w, dy) is linear in w and dy: d/d(dy) is the forward conv of g, d/dw the
    # filter gradient of (input g, out_backprop dy).
    lib = _lib.load()
    filters, dy = op.inputs[1], op.inputs[2]
    attrs = _attrs(op)
    d_dy = lib.mps_conv2d(input=g, filter=filters, bias=[], **attrs)
    d_w, _ = lib.mps_conv2d_backprop_filter(input=g, filter_sizes=tf.shape(filters), out_backprop=dy, **attrs)
    return [None, d_w, d_dy]


@tf.RegisterGradient("MpsConv2DBackpropFilter")
def _conv2d_backprop_filter_grad(op, g_w, *g_b):
    lib = _lib.load()
    x, dy = op.inputs[0], op.inputs[2]
    attrs = _attrs(op)
    if g_w is None:  # only the bias gradient is used
        g_w = tf.zeros_like(op.outputs[0])
    bias = [g_b[0]] if g_b and g_b[0] is not None else []
    d_x = lib.mps_conv2d_backprop_input(input_sizes=tf.shape(x), filter=g_w, out_backprop=dy, **attrs)
    d_dy = lib.mps_conv2d(input=x, filter=g_w, bias=bias, **attrs)
    return [d_x, None, d_dy]


@tf.RegisterGradient("MpsConv2DTranspose")
def _conv2d_transpose_grad(op, dy):
    # y = B(w, x) (+ bias): the input gradient of the convolution conv(u, w), linear in x
    # and w. d/dx is the forward convolution of dy, d/dw the filter gradient of
    # (input dy, out_backprop x).
    lib = _lib.load()
    x, filters = op.inputs[0], op.inputs[1]
    if op.get_attr("activation") == b"relu":
        dy = tf.raw_ops.ReluGrad(gradients=dy, features=op.outputs[0])
    attrs = _attrs(op)
    d_x = lib.mps_conv2d(input=dy, filter=filters, bias=[], **attrs)
    d_w, _ = lib.mps_conv2d_backprop_filter(input=dy, filter_sizes=tf.shape(filters), out_backprop=x, **attrs)
    grads = [d_x, d_w, None]
    if op.get_attr("num_bias"):
        grads.append(tf.cast(tf.reduce_sum(tf.cast(dy, tf.float32), axis=[0, 1, 2]), dy.dtype))
    return grads
