"""tf.data helpers: convert batches to the MPS layouts inside the input pipeline, so the
model's first layers receive data in the layout they consume (prepared once, on the
pipeline's threads, overlapping training).

    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(64)
    ds = tf_mps.data.map_images(ds, dtype=tf.float16, scale=1 / std, bias=-mean / std)

Elements may be a tensor, a tuple (the first item is converted) or a dict (``key``).
"""

from __future__ import annotations

import tensorflow as tf

from tf_mps import convert as _convert


def _map_first(dataset: tf.data.Dataset, fn, key):
    spec = dataset.element_spec
    if isinstance(spec, dict):
        if key is None or key not in spec:
            raise ValueError(f"tf_mps.data: dataset elements are dicts; pass key= one of {sorted(spec)}, got key={key!r}")
        return dataset.map(lambda e: {**e, key: fn(e[key])}, num_parallel_calls=tf.data.AUTOTUNE)
    if isinstance(spec, tuple):
        return dataset.map(lambda *e: (fn(e[0]), *e[1:]), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


_IMAGE_LAYOUTS = ("image", "matrix_hwc", "matrix_chw", "nhwc")


def map_images(dataset: tf.data.Dataset, *, layout: str = "image", dtype=tf.float32, scale=None, bias=None,
               key=None) -> tf.data.Dataset:
    """Converts batched NHWC images (``[N, H, W, C]``, uint8/float16/float32) to ``layout``
    (``"image"``, ``"matrix_hwc"``, ``"matrix_chw"`` or ``"nhwc"``) and ``dtype``, with an
    optional per-channel ``x*scale + bias`` folded into the copy."""
    if not isinstance(layout, str) or layout not in _IMAGE_LAYOUTS:
        raise ValueError(f"tf_mps.data.map_images: layout must be one of {_IMAGE_LAYOUTS}, got {layout!r}")

    def fn(x):
        return _convert.convert(x, "nhwc", layout, dtype=dtype, scale=scale, bias=bias)

    return _map_first(dataset, fn, key)


def map_sequences(dataset: tf.data.Dataset, *, dtype=tf.float32, scale=None, bias=None, key=None) -> tf.data.Dataset:
    """Converts batched sequences ``[batch, time, features]`` to the RNN ops' per-timestep
    matrices ``[time, batch, features]``."""
    def fn(x):
        return _convert.convert(x, "sequence", "time_major", dtype=dtype, scale=scale, bias=bias)

    return _map_first(dataset, fn, key)
