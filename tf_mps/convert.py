"""Data converters between TensorFlow tensors, MPS image layout and MPS matrices.

MPS keeps images as slices of 4 feature channels and RNN data as row-major matrices;
TensorFlow keeps NHWC tensors. One op, ``MpsConvert``, moves data between these layouts
(index maps in ``ops/convert/convert.h`` and ``docs/converters.md``), converting the
dtype and optionally folding a per-channel normalization into the copy:

=============  ==================  =============================================
layout         shape               element (n, h, w, c)
=============  ==================  =============================================
``nhwc``       [N, H, W, C]        TF's layout
``sequence``   [N, T, C]           batch-major sequences (``nhwc`` with W = 1)
``time_major`` [T, N, C]           the per-timestep matrices of the RNN ops
``image``      [N, ceil(C/4), H,   MPSImage's order: slices of 4 channels; channels
               W, 4]               past C are zero padding
``matrix_hwc`` [N, H*W*C]          one image per row, MPSDataLayoutHeightxWidthx
                                   FeatureChannels (MPSImageCopyToMatrix)
``matrix_chw`` [N, C*H*W]          one image per row, MPSDataLayoutFeatureChannels
                                   xHeightxWidth
=============  ==================  =============================================

Values: uint8 is unorm8 (``q/255`` when read; ``round(clamp(y, 0, 1)*255)``, ties to
even, when written), float16 and float32 convert with round-to-nearest-even. With
``scale``/``bias`` (float32 vectors of C) the value becomes ``x*scale + bias``
(``affine="inverse"``: ``(x - bias)/scale``). Without them every same-dtype round trip is
exact, and so is uint8 -> float -> uint8.

Every function is differentiable in float16/float32 (the maps are linear): gradients
flow to the input and to ``scale``/``bias``; a uint8 input or output has none.
"""

from __future__ import annotations

import contextlib
import numbers

import numpy as np
import tensorflow as tf

from tf_mps import _lib

LAYOUTS = ("nhwc", "sequence", "time_major", "image", "matrix_hwc", "matrix_chw")
_DTYPES = (tf.uint8, tf.float16, tf.float32)
_DATA_LAYOUTS = {
    "hwc": "matrix_hwc",
    "heightxwidthxfeaturechannels": "matrix_hwc",
    "chw": "matrix_chw",
    "featurechannelsxheightxwidth": "matrix_chw",
}


_invalid = _lib.invalid_argument


_INT64_MAX = 2**63 - 1


def _geometry(name: str, value) -> int:
    """A height/width/channels argument as the op's attribute: None -> -1 (unset), else an
    integer size in [0, 2**63 - 1] (bools, floats and strings are mistakes, not sizes)."""
    if value is None:
        return -1
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or not 0 <= value <= _INT64_MAX:
        raise _invalid(f"MpsConvert: {name} must be None or an integer size in [0, 2**63 - 1], got {value!r}")
    return int(value)


def _dtype(value) -> tf.DType:
    try:
        dtype = tf.as_dtype(value)
    except TypeError:
        dtype = None
    if dtype not in _DTYPES:
        raise _invalid(f"MpsConvert: dtype must be uint8, float16 or float32, got "
                       f"{dtype.name if dtype is not None else repr(value)}")
    return dtype


def _vector(name: str, value) -> tf.Tensor:
    """scale/bias as a float32 tensor, or an error naming the argument (the kernel checks
    the length: one value per channel)."""
    if isinstance(value, tf.Tensor) and value.dtype == tf.float32:
        return value
    try:
        t = tf.convert_to_tensor(value)
    except (TypeError, ValueError) as e:
        raise _invalid(f"MpsConvert: {name} must be a vector of float32 values (one per channel), got {value!r}") from e
    if not (t.dtype.is_floating or t.dtype.is_integer) or t.dtype == tf.bool:
        raise _invalid(f"MpsConvert: {name} must be a vector of float32 values (one per channel), got dtype "
                       f"{t.dtype.name}")
    return tf.cast(t, tf.float32)


def _matrix_layout(data_layout: str) -> str:
    key = str(data_layout).replace("MPSDataLayout", "").lower()
    if key not in _DATA_LAYOUTS:
        raise _invalid(
            f"MpsConvert: data_layout must be 'HWC' (HeightxWidthxFeatureChannels) or 'CHW' "
            f"(FeatureChannelsxHeightxWidth), got {data_layout!r}"
        )
    return _DATA_LAYOUTS[key]


def convert(
    x,
    src_layout: str,
    dst_layout: str,
    *,
    height: int | None = None,
    width: int | None = None,
    channels: int | None = None,
    dtype=None,
    scale=None,
    bias=None,
    affine: str = "forward",
    name: str | None = None,
):
    """Converts ``x`` from ``src_layout`` to ``dst_layout`` (see the module docstring).

    Args:
      x: uint8, float16 or float32 tensor in ``src_layout``.
      src_layout, dst_layout: one of ``LAYOUTS``.
      height, width, channels: the geometry, needed to read ``image`` (channels) and
        matrix (all three) inputs; checked against the input when given otherwise.
        None (unset) or an integer size.
      dtype: output dtype (uint8, float16, float32); default: ``x``'s dtype.
      scale, bias: optional per-channel float32 vectors of length C.
      affine: ``"forward"`` (``x*scale + bias``) or ``"inverse"`` (``(x - bias)/scale``).

    Returns:
      The converted tensor in ``dst_layout``.
    """
    for arg, value in (("src_layout", src_layout), ("dst_layout", dst_layout)):
        if not isinstance(value, str) or value not in LAYOUTS:
            raise _invalid(f"MpsConvert: {arg} must be one of {LAYOUTS}, got {value!r}")
    if not isinstance(affine, str) or affine not in ("forward", "inverse"):
        raise _invalid(f"MpsConvert: affine must be 'forward' or 'inverse', got {affine!r}")
    # Eagerly (a call per batch) the name scope and no-op conversions cost more than the
    # op itself on small batches (34 against 12 us here): skipped there.
    geometry = {k: _geometry(k, v) for k, v in (("height", height), ("width", width), ("channels", channels))}
    with contextlib.nullcontext() if tf.executing_eagerly() else tf.name_scope(name or "mps_convert"):
        if not isinstance(x, tf.Tensor):
            try:
                x = tf.convert_to_tensor(x)
            except (TypeError, ValueError) as e:
                raise _invalid(f"MpsConvert: input must be a uint8, float16 or float32 tensor, got {type(x).__name__}"
                               ) from e
        if x.dtype not in _DTYPES:
            raise _invalid(f"MpsConvert: input must be uint8, float16 or float32, got {x.dtype.name}")
        out_dtype = _dtype(dtype) if dtype is not None else x.dtype
        vectors = {arg: [] if value is None else [_vector(arg, value)] for arg, value in (("scale", scale),
                                                                                          ("bias", bias))}
        return _lib.load().mps_convert(
            input=x,
            scale=vectors["scale"],
            bias=vectors["bias"],
            Tout=out_dtype,
            src_layout=src_layout,
            dst_layout=dst_layout,
            affine=affine,
            **geometry,
        )


def to_image(x, dtype=None, scale=None, bias=None):
    """NHWC ``[N, H, W, C]`` -> MPS image layout ``[N, ceil(C/4), H, W, 4]`` (zero padded)."""
    return convert(x, "nhwc", "image", dtype=dtype, scale=scale, bias=bias)


def from_image(image, channels: int, dtype=None, scale=None, bias=None, affine="forward"):
    """MPS image layout ``[N, ceil(C/4), H, W, 4]`` -> NHWC ``[N, H, W, C]``."""
    return convert(image, "image", "nhwc", channels=channels, dtype=dtype, scale=scale, bias=bias, affine=affine)


def image_to_matrix(image, channels: int, data_layout: str = "HWC", dtype=None):
    """MPS image layout -> matrix ``[N, H*W*C]``, one image per row (MPSImageCopyToMatrix)."""
    return convert(image, "image", _matrix_layout(data_layout), channels=channels, dtype=dtype)


def matrix_to_image(matrix, height: int, width: int, channels: int, data_layout: str = "HWC", dtype=None):
    """Matrix ``[N, H*W*C]`` -> MPS image layout (MPSMatrixCopyToImage)."""
    return convert(matrix, _matrix_layout(data_layout), "image", height=height, width=width, channels=channels,
                   dtype=dtype)


def nhwc_to_matrix(x, data_layout: str = "HWC", dtype=None, scale=None, bias=None):
    """NHWC ``[N, H, W, C]`` -> matrix ``[N, H*W*C]`` in the given channel order."""
    return convert(x, "nhwc", _matrix_layout(data_layout), dtype=dtype, scale=scale, bias=bias)


def matrix_to_nhwc(matrix, height: int, width: int, channels: int, data_layout: str = "HWC", dtype=None):
    """Matrix ``[N, H*W*C]`` -> NHWC ``[N, H, W, C]``."""
    return convert(matrix, _matrix_layout(data_layout), "nhwc", height=height, width=width, channels=channels,
                   dtype=dtype)


def sequence_to_time_major(x, dtype=None, scale=None, bias=None):
    """Sequences ``[batch, time, features]`` -> per-timestep matrices ``[time, batch, features]``."""
    return convert(x, "sequence", "time_major", dtype=dtype, scale=scale, bias=bias)


def time_major_to_sequence(x, dtype=None):
    """Per-timestep matrices ``[time, batch, features]`` -> sequences ``[batch, time, features]``."""
    return convert(x, "time_major", "sequence", dtype=dtype)


def _reading_attrs(op, layout):
    """The geometry attributes a conversion reading `layout` needs (the others stay -1):
    an image needs its channel count, a matrix all three; NHWC and the sequence layouts
    carry their own. Taken from the forward op's attributes, or its input's static shape."""
    if layout in ("nhwc", "sequence", "time_major"):
        return dict(height=-1, width=-1, channels=-1)
    attrs = {k: op.get_attr(k) for k in ("height", "width", "channels")}
    shape = op.inputs[0].shape
    src = op.get_attr("src_layout").decode()
    from_shape = {
        "nhwc": lambda s: dict(height=s[1], width=s[2], channels=s[3]),
        "sequence": lambda s: dict(height=s[1], width=1, channels=s[2]),
        "time_major": lambda s: dict(height=s[0], width=1, channels=s[2]),
        "image": lambda s: dict(height=s[2], width=s[3]),
    }.get(src, lambda s: {})(shape) if shape.rank is not None else {}
    for k in list(attrs):
        if attrs[k] < 0 and from_shape.get(k) is not None:
            attrs[k] = int(from_shape[k])
    needed = ("channels",) if layout == "image" else ("height", "width", "channels")
    missing = [k for k in needed if attrs[k] < 0]
    if missing:
        raise _invalid(
            f"MpsConvert gradient: reading layout '{layout}' needs {', '.join(missing)}, which the forward "
            f"input (shape {shape}) does not make static; pass them to convert() explicitly"
        )
    return {k: (attrs[k] if k in needed else -1) for k in attrs}


@tf.RegisterGradient("MpsConvert")
def _convert_grad(op, dy):
    tin, tout = op.get_attr("Tin"), op.get_attr("Tout")
    n_scale, n_bias = op.get_attr("A"), op.get_attr("B")
    none = [None] * len(op.inputs)
    if tout == tf.uint8:
        return none  # quantized output: no gradient
    src, dst = op.get_attr("src_layout").decode(), op.get_attr("dst_layout").decode()
    affine = op.get_attr("affine").decode()
    lib = _lib.load()
    scale = [op.inputs[1]] if n_scale else []

    def to(layout, t, in_layout, out_dtype, **kw):
        return lib.mps_convert(input=t, scale=kw.get("scale", []), bias=[], Tout=out_dtype, src_layout=in_layout,
                               dst_layout=layout, affine=kw.get("affine", "forward"),
                               **_reading_attrs(op, in_layout))

    grads = []
    if tin == tf.uint8:
        grads.append(None)
    else:
        # The map is linear: dx is dy taken back through the layouts, times d(y)/d(x):
        # scale (forward) or 1/scale (inverse, computed as (dy - 0)/scale).
        grads.append(to(src, dy, dst, tin, scale=scale, affine=affine))
    if n_scale or n_bias:
        channels = tf.shape(op.inputs[1] if n_scale else op.inputs[1 + n_scale])[0]
        dy_px = tf.reshape(to("nhwc", dy, dst, tf.float32), [-1, channels])
        if affine == "forward":
            x_px = tf.reshape(to("nhwc", op.inputs[0], src, tf.float32), [-1, channels])
            if n_scale:
                grads.append(tf.reduce_sum(dy_px * x_px, axis=0))
            if n_bias:
                grads.append(tf.reduce_sum(dy_px, axis=0))
        else:
            s = op.inputs[1] if n_scale else tf.ones_like(op.inputs[1 + n_scale])
            y_px = tf.reshape(to("nhwc", op.outputs[0], dst, tf.float32), [-1, channels])
            if n_scale:
                grads.append(-tf.reduce_sum(dy_px * y_px, axis=0) / s)
            if n_bias:
                grads.append(-tf.reduce_sum(dy_px, axis=0) / s)
    return grads
