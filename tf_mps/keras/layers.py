"""Drop-in Keras layers whose math runs as tf-mps ops.

Each class subclasses Keras's own layer, so it takes Keras's arguments with Keras's
defaults, creates the same weights in the same layouts (``get_weights``/``set_weights``
move weights between the two in both directions), serializes (registered as
``tf_mps>Conv2D`` etc.), and works in Sequential and functional models, ``fit``, custom
training loops and SavedModel export. Only ``call`` differs: it runs one tf-mps op
(bias and ReLU fused into convolutions and dense layers) instead of Keras's chain of ops.

===================  ==========================================  ===========================
tf-mps layer         op                                          Keras's math is used for
===================  ==========================================  ===========================
Conv2D               ``tf_mps.ops.conv2d``                       channels_first
Conv2DTranspose      ``tf_mps.ops.conv2d_transpose``             channels_first, unknown H/W
Dense                ``tf_mps.ops.dense``                        LoRA, quantized kernels
MaxPooling2D         ``tf_mps.ops.max_pool2d``                   channels_first
AveragePooling2D     ``tf_mps.ops.avg_pool2d``                   channels_first
BatchNormalization   ``tf_mps.ops.batch_norm``                   axis other than the last,
                                                                 masks, renorm, synchronized
InstanceNormalization ``tf_mps.ops.instance_norm``               axis other than the last,
                     (Keras's GroupNormalization, groups=-1)     masks
===================  ==========================================  ===========================

Convolutions and dense layers take one more argument, ``accumulator_precision``
("float32", the default, or "float16": what MPS calls
``MPSNNConvolutionAccumulatorPrecisionOption``; the CPU emulates half accumulation
exactly, docs/fp16-accumulation.md).

XLA: XLA cannot compile custom ops. Every layer says ``supports_jit = False``, which is
what Keras's ``jit_compile="auto"`` consults, so ``compile()`` with default arguments
does not use XLA for a model containing one; inside a function XLA compiles anyway
(``tf.function(jit_compile=True)``) a layer computes with Keras's own math instead.

``to_tf_mps(model)`` / ``to_keras(model)`` clone a model with the other family's layers
and the same weights; ``load_model(path)`` loads a ``.keras`` file saved with Keras's
layers into tf-mps's.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_mps.keras._xla import in_xla_context

_PRECISIONS = ("float32", "float16")


def _precision(value: str) -> str:
    if value not in _PRECISIONS:
        raise ValueError(f"accumulator_precision must be one of {_PRECISIONS}; got {value!r}")
    return value


def _fused_activation(activation):
    """(op activation, activation left to apply after the op)."""
    if activation is None or activation is keras.activations.linear:
        return None, None
    if activation is keras.activations.relu:
        return "relu", None
    return None, activation


class _TfMpsLayer:
    """What every tf-mps layer adds to its Keras base class."""

    def _tfmps_init(self):
        # Keras's jit_compile="auto" compiles only if every layer supports XLA.
        self.supports_jit = False

    def _keras_math(self) -> bool:
        return in_xla_context() or getattr(self, "data_format", "channels_last") != "channels_last"


class _AccumulatorPrecision(_TfMpsLayer):
    def get_config(self):
        return {**super().get_config(), "accumulator_precision": self.accumulator_precision}


@keras.saving.register_keras_serializable(package="tf_mps")
class Conv2D(_AccumulatorPrecision, keras.layers.Conv2D):
    """``keras.layers.Conv2D`` on ``tf_mps.ops.conv2d`` (bias and ReLU fused)."""

    def __init__(self, *args, accumulator_precision: str = "float32", **kwargs):
        super().__init__(*args, **kwargs)
        self.accumulator_precision = _precision(accumulator_precision)
        self._tfmps_init()

    def call(self, inputs):
        if self._keras_math():
            return super().call(inputs)
        from tf_mps.ops.conv import conv2d

        fused, after = _fused_activation(self.activation)
        y = conv2d(inputs, self.kernel, strides=list(self.strides), padding=self.padding.upper(),
                        dilations=list(self.dilation_rate), groups=self.groups,
                        bias=self.bias if self.use_bias else None, activation=fused,
                        accumulator_precision=self.accumulator_precision)
        return after(y) if after is not None else y


@keras.saving.register_keras_serializable(package="tf_mps")
class Conv2DTranspose(_AccumulatorPrecision, keras.layers.Conv2DTranspose):
    """``keras.layers.Conv2DTranspose`` on ``tf_mps.ops.conv2d_transpose`` (the output size
    computed as Keras computes it, ``output_padding`` included)."""

    def __init__(self, *args, accumulator_precision: str = "float32", **kwargs):
        super().__init__(*args, **kwargs)
        self.accumulator_precision = _precision(accumulator_precision)
        self._tfmps_init()

    def call(self, inputs):
        if self._keras_math() or any(d is None for d in inputs.shape[1:3]):
            return super().call(inputs)
        from keras.src.backend.common.backend_utils import compute_conv_transpose_output_shape

        from tf_mps.ops.conv import conv2d_transpose

        shape = list(inputs.shape)
        if shape[0] is None:
            shape[0] = tf.shape(inputs)[0]
        out_shape = compute_conv_transpose_output_shape(
            shape, self.kernel_size, self.filters, self.strides, self.padding, self.output_padding,
            self.data_format, self.dilation_rate)
        fused, after = _fused_activation(self.activation)
        y = conv2d_transpose(inputs, self.kernel, tf.stack(out_shape), strides=list(self.strides),
                                  padding=self.padding.upper(), dilations=list(self.dilation_rate),
                                  bias=self.bias if self.use_bias else None, activation=fused,
                                  accumulator_precision=self.accumulator_precision)
        return after(y) if after is not None else y


@keras.saving.register_keras_serializable(package="tf_mps")
class Dense(_AccumulatorPrecision, keras.layers.Dense):
    """``keras.layers.Dense`` on ``tf_mps.ops.dense`` (bias and ReLU fused)."""

    def __init__(self, *args, accumulator_precision: str = "float32", **kwargs):
        super().__init__(*args, **kwargs)
        self.accumulator_precision = _precision(accumulator_precision)
        self._tfmps_init()

    def call(self, inputs, training=None):
        if self._keras_math() or self.lora_enabled or getattr(self, "quantization_mode", None) is not None:
            return super().call(inputs, training=training)
        from tf_mps.ops.dense import dense

        fused, after = _fused_activation(self.activation)
        y = dense(inputs, self.kernel, self.bias, activation=fused,
                        accumulator_precision=self.accumulator_precision)
        return after(y) if after is not None else y


class _Pooling(_TfMpsLayer):
    _op = ""

    def call(self, inputs):
        if self._keras_math():
            return super().call(inputs)
        from tf_mps.ops import pool  # the module (the package exports no `pool` name)

        return getattr(pool, self._op)(inputs, list(self.pool_size), strides=list(self.strides),
                                       padding=self.padding.upper())


@keras.saving.register_keras_serializable(package="tf_mps")
class MaxPooling2D(_Pooling, keras.layers.MaxPooling2D):
    """``keras.layers.MaxPooling2D`` on ``tf_mps.ops.max_pool2d``."""

    _op = "max_pool2d"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._tfmps_init()


@keras.saving.register_keras_serializable(package="tf_mps")
class AveragePooling2D(_Pooling, keras.layers.AveragePooling2D):
    """``keras.layers.AveragePooling2D`` on ``tf_mps.ops.avg_pool2d`` (SAME padding
    averages over the cells inside the image, as Keras does)."""

    _op = "avg_pool2d"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._tfmps_init()


def _channels_last(layer, inputs) -> bool:
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    return len(axis) == 1 and axis[0] % len(inputs.shape) == len(inputs.shape) - 1


@keras.saving.register_keras_serializable(package="tf_mps")
class BatchNormalization(_TfMpsLayer, keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` on ``tf_mps.ops.batch_norm``: batch statistics
    and the normalization in one op; the moving averages updated with Keras's formula
    (``moving = moving * momentum + batch * (1 - momentum)``, biased batch variance)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._tfmps_init()

    def call(self, inputs, training=None, mask=None):
        if (self._keras_math() or mask is not None or self.renorm or self.synchronized
                or not _channels_last(self, inputs)):
            return super().call(inputs, training=training, mask=mask)
        from tf_mps.ops.norm import batch_norm

        c = inputs.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([c], tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([c], tf.float32)
        moving_mean = tf.cast(self.moving_mean, tf.float32)
        moving_variance = tf.cast(self.moving_variance, tf.float32)
        if training and self.trainable:
            y, mean, variance = batch_norm(inputs, gamma, beta, epsilon=self.epsilon, training=True)
            self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            y = batch_norm(inputs, gamma, beta, moving_mean, moving_variance, epsilon=self.epsilon,
                                training=False)
        return tf.cast(y, self.compute_dtype)


@keras.saving.register_keras_serializable(package="tf_mps")
class InstanceNormalization(_TfMpsLayer, keras.layers.GroupNormalization):
    """Instance normalization (per sample and channel, over the spatial axes) on
    ``tf_mps.ops.instance_norm``: Keras's ``GroupNormalization(groups=-1)``, its weights
    (gamma and beta per channel) and its ``epsilon`` default (1e-3)."""

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, **kwargs):
        groups = kwargs.pop("groups", -1)
        if groups != -1:
            raise ValueError(f"InstanceNormalization normalizes each channel alone (groups=-1); got groups={groups}")
        super().__init__(groups=-1, axis=axis, epsilon=epsilon, center=center, scale=scale, **kwargs)
        self._tfmps_init()

    def get_config(self):
        config = super().get_config()
        config.pop("groups", None)
        return config

    def call(self, inputs, mask=None):
        if self._keras_math() or mask is not None or not _channels_last(self, inputs) or len(inputs.shape) < 3:
            return super().call(inputs, mask=mask)
        from tf_mps.ops.norm import instance_norm

        c = inputs.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([c], tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([c], tf.float32)
        y = instance_norm(inputs, gamma, beta, epsilon=self.epsilon)
        return tf.cast(y, self.compute_dtype)


# Keras's class for each tf-mps class, and back (InstanceNormalization's Keras twin is
# GroupNormalization with groups=-1).
_KERAS_TWIN = {Conv2D: keras.layers.Conv2D, Conv2DTranspose: keras.layers.Conv2DTranspose,
               Dense: keras.layers.Dense, MaxPooling2D: keras.layers.MaxPooling2D,
               AveragePooling2D: keras.layers.AveragePooling2D,
               BatchNormalization: keras.layers.BatchNormalization,
               InstanceNormalization: keras.layers.GroupNormalization}


def load_model(path, **kwargs):
    """A ``.keras`` file saved with Keras's layers, loaded with tf-mps's in their place
    (``keras.models.load_model`` then ``to_tf_mps``; compile the result again). A file
    saved with tf-mps's layers loads with ``keras.models.load_model`` directly."""
    return to_tf_mps(keras.models.load_model(path, **kwargs))


def _clone(model, convert):
    def clone_layer(layer):
        new = convert(layer)
        return new if new is not None else layer.__class__.from_config(layer.get_config())

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone


def to_tf_mps(model):
    """A clone of a Keras model whose Keras layers with a tf-mps twin are tf-mps layers,
    with the same weights (GroupNormalization(groups=-1) becomes InstanceNormalization)."""
    twins = {keras_cls: cls for cls, keras_cls in _KERAS_TWIN.items()}

    def convert(layer):
        cls = twins.get(type(layer))
        if cls is None:
            return None
        config = layer.get_config()
        if cls is InstanceNormalization:
            if config.get("groups") != -1:
                return None
            config.pop("groups")
        return cls.from_config(config)

    return _clone(model, convert)


def to_keras(model):
    """The inverse of ``to_tf_mps``: Keras's own layers, the same weights."""

    def convert(layer):
        keras_cls = _KERAS_TWIN.get(type(layer))
        if keras_cls is None:
            return None
        config = layer.get_config()
        config.pop("accumulator_precision", None)
        if keras_cls is keras.layers.GroupNormalization:
            config["groups"] = -1
        return keras_cls.from_config(config)

    return _clone(model, convert)


__all__ = ["Conv2D", "Conv2DTranspose", "Dense", "MaxPooling2D", "AveragePooling2D", "BatchNormalization",
           "InstanceNormalization", "load_model", "to_tf_mps", "to_keras"]
