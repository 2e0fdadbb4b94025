"""Keras 3 optimizers that update all variables with one fused tf-mps op per step.

``tf_mps.keras.optimizers.Adam``, ``SGD`` and ``RMSProp`` subclass Keras's own classes:
same constructor arguments and defaults, same schedules, ``weight_decay``,
``clipnorm``/``clipvalue``/``global_clipnorm``, ``use_ema``, gradient accumulation, loss
scaling (``LossScaleOptimizer`` under ``mixed_float16``), ``get_config``/``from_config``
and saving. Only the per-variable ``update_step`` loop is replaced: all variables of one
dtype (float16, bfloat16, float32 or float64) are updated by a single multi-tensor op
(``tf_mps.ops.apply_*``), with results equal to Keras's (``semantics="keras"``, the
default).

All or nothing: ``apply`` checks every gradient against its variable (shapes; a sparse
gradient's indices) before Keras's machinery (weight decay, EMA, ``iterations``) runs,
and the ops of all dtype groups run only after every group's inputs are checked, so a
rejected step changes no variable, slot or counter.

tf-mps-only keyword arguments (all optional; see ``tf_mps.ops.optim``):

* ``semantics``: ``"keras"`` or ``"mps"`` (the MPSNNOptimizer formulas).
* ``gradient_rescale``, ``gradient_clip=(min, max)``, ``regularization`` (``"l1"`` /
  ``"l2"``) and ``regularization_scale``: MPSNNOptimizerDescriptor's gradient options.

Fallback contract: XLA cannot compile custom ops. Inside an XLA-compiled step
(``jit_compile=True``) the optimizer runs Keras's own update math instead (identical
results) when the options are Keras-equivalent, and raises a ``ValueError`` when they are
not (``semantics="mps"`` or gradient options), never silently changing results.
``jit_compile="auto"`` already resolves to ``False`` on Apple-silicon GPUs and on CPU-only
machines. Under a ``tf.distribute`` strategy Keras updates variable by variable; each
update is then the single-variable fused op (all options apply).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_mps.keras._xla import in_xla_context as _in_xla_context
from tf_mps.ops import optim as _optim

_FUSED_KWARGS = ("semantics", "gradient_rescale", "gradient_clip", "regularization", "regularization_scale")


def _check_hyper(owner, name, value):
    """Keras keeps beta_1 and the like as given and fails at the first step; check now."""
    if _optim._is_real_number(value):
        return
    if isinstance(value, (tf.Tensor, tf.Variable, keras.Variable)) and value.dtype.is_floating and (
            value.shape.rank == 0):
        return
    raise ValueError(f"{owner}: {name} must be a real number or a scalar float tensor, got {value!r}")


class _FusedOptimizer:
    """Machinery shared by the fused optimizers (a mixin ahead of the Keras class)."""

    def _init_fused(self, semantics, gradient_rescale, gradient_clip, regularization, regularization_scale,
                    **hyper):
        owner = type(self).__name__
        for name, value in hyper.items():
            _check_hyper(owner, name, value)
        options = _optim.normalize_options(owner, semantics, gradient_rescale, gradient_clip,
                                           regularization, regularization_scale, error=ValueError)
        for name, value in options.items():
            setattr(self, name, value)

    def _fused_options(self) -> dict:
        return dict(
            semantics=self.semantics,
            gradient_rescale=self.gradient_rescale,
            gradient_clip=self.gradient_clip,
            regularization=self.regularization,
            regularization_scale=self.regularization_scale,
        )

    def _keras_equivalent(self) -> bool:
        return _optim.keras_equivalent(**self._fused_options())

    def get_config(self):
        config = super().get_config()  # the Keras class's: every Keras argument
        config.update({k: getattr(self, k) for k in _FUSED_KWARGS})
        return config

    def _cannot_fuse(self, where: str) -> None:
        """Called where the fused op cannot run: fall back or refuse loudly."""
        if not self._keras_equivalent():
            raise ValueError(
                f"{type(self).__name__}: semantics={self.semantics!r} and MPS gradient options "
                f"need the fused tf-mps op, which cannot run {where}. Compile the model with "
                "jit_compile=False (or use the default options)."
            )

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        variables = trainable_variables
        if variables is None and self.built:
            variables = self._trainable_variables
        checks = []
        if variables is not None and not _in_xla_context():
            variables = list(variables)
            if len(variables) == len(grads):  # else Keras raises its own error
                grads, checks = self._check_gradients(grads, variables)
        if checks and not tf.executing_eagerly():
            # Weight decay, EMA and the iteration counter do not consume the gradients:
            # order them after the checks too.
            with tf.control_dependencies(checks):
                return super().apply(grads, trainable_variables)
        return super().apply(grads, trainable_variables)

    def _check_gradients(self, grads, variables):
        """Checks what the fused ops would reject, before anything is written: dtypes the
        ops lack, shapes, and sparse gradients' indices (through MpsCheckSparseGradient,
        whose output indices replace the gradient's). Returns (grads, check tensors)."""
        owner = type(self).__name__
        out, checks = [], []
        for g, v in zip(grads, variables):
            if g is None:  # Keras drops it
                out.append(g)
                continue
            path = getattr(v, "path", None) or getattr(v, "name", "?")
            if v.dtype not in _optim.DTYPES:
                raise ValueError(f"{owner}: variable {path!r} has dtype {tf.as_dtype(v.dtype).name}; the fused "
                                 f"optimizers update {_optim._DTYPE_NAMES} variables")
            shape = tf.TensorShape(v.shape)
            if isinstance(g, tf.IndexedSlices):
                if shape.rank == 0 or not g.values.shape.is_compatible_with(
                        tf.TensorShape([None]).concatenate(shape[1:])):
                    raise ValueError(
                        f"{owner}: the sparse gradient of variable {path!r} has values of shape "
                        f"{_optim._shape_str(g.values.shape)}; expected [indices] + {_optim._shape_str(shape[1:])} "
                        f"(the variable has shape {_optim._shape_str(shape)})")
                var_shape = (tf.constant(shape.as_list(), tf.int64) if shape.is_fully_defined()
                             else tf.shape(v, out_type=tf.int64))
                indices = _optim._lib.load().mps_check_sparse_gradient(
                    indices=g.indices, values_shape=tf.shape(g.values, out_type=tf.int64), var_shape=var_shape,
                    label=f"{owner}: the gradient of variable {path!r}")
                checks.append(indices)
                g = tf.IndexedSlices(g.values, indices, g.dense_shape)
            elif not tf.TensorShape(getattr(g, "shape", None)).is_compatible_with(shape):
                raise ValueError(f"{owner}: the gradient of variable {path!r} has shape "
                                 f"{_optim._shape_str(g.shape)} but the variable has shape {_optim._shape_str(shape)}")
            out.append(g)
        return out, checks

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if _in_xla_context():
            self._cannot_fuse("inside an XLA-compiled function")
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        if tf.distribute.has_strategy():
            # Keras's tf.distribute path merges across replicas, then calls update_step
            # per variable (fused per variable, below).
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        by_dtype: dict = {}
        for g, v in zip(grads, trainable_variables):
            by_dtype.setdefault(v.dtype, []).append((g, v))
        # Every group is checked (and its sparse gradients summed) before any group runs.
        prepared = [self._prepare([g for g, _ in pairs], [v for _, v in pairs], learning_rate)
                    for pairs in by_dtype.values()]
        _optim.run_all(prepared)

    def update_step(self, gradient, variable, learning_rate):
        if _in_xla_context():
            self._cannot_fuse("inside an XLA-compiled function")
            return super().update_step(gradient, variable, learning_rate)
        self._prepare([gradient], [variable], learning_rate).run()

    def _slots(self, slot_list, variables):
        if not slot_list:
            return None
        return [slot_list[self._get_variable_index(v)] for v in variables]

    def _prepare(self, grads, variables, learning_rate) -> _optim.Prepared:
        """The checked fused op for one dtype group (tf_mps.ops.optim.prepare_*)."""
        raise NotImplementedError

    @staticmethod
    def _cast_grads(grads, variables):
        # Keras casts each gradient to its variable's dtype; so do we.
        out = []
        for g, v in zip(grads, variables):
            if isinstance(g, tf.IndexedSlices):
                if g.values.dtype != v.dtype:
                    g = tf.IndexedSlices(tf.cast(g.values, v.dtype), g.indices, g.dense_shape)
            elif g.dtype != v.dtype:
                g = tf.cast(g, v.dtype)
            out.append(g)
        return out


@keras.saving.register_keras_serializable(package="tf_mps")
class Adam(_FusedOptimizer, keras.optimizers.Adam):
    """Adam with a fused multi-tensor update: ``keras.optimizers.Adam``'s arguments and
    results, plus tf-mps's keyword arguments (module docstring). Kingma & Ba, 2015;
    AMSGrad: Reddi et al., 2018."""

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        amsgrad=False,
        *,
        semantics="keras",
        gradient_rescale=1.0,
        gradient_clip=None,
        regularization=None,
        regularization_scale=0.0,
        name="adam",
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
            amsgrad=amsgrad, name=name, **kwargs,
        )
        self._init_fused(semantics, gradient_rescale, gradient_clip, regularization, regularization_scale,
                         beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)

    def _prepare(self, grads, variables, learning_rate):
        dtype = variables[0].dtype
        return _optim.prepare_adam(
            variables,
            self._slots(self._momentums, variables),
            self._slots(self._velocities, variables),
            self._cast_grads(grads, variables),
            tf.cast(learning_rate, dtype),
            self.iterations + 1,
            self.beta_1,
            self.beta_2,
            self.epsilon,
            self._slots(self._velocity_hats, variables) if self.amsgrad else None,
            **self._fused_options(),
        )


@keras.saving.register_keras_serializable(package="tf_mps")
class SGD(_FusedOptimizer, keras.optimizers.SGD):
    """SGD (momentum, Nesterov) with a fused multi-tensor update: ``keras.optimizers.SGD``'s
    arguments and results, plus tf-mps's keyword arguments (module docstring)."""

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.0,
        nesterov=False,
        *,
        semantics="keras",
        gradient_rescale=1.0,
        gradient_clip=None,
        regularization=None,
        regularization_scale=0.0,
        name="SGD",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, name=name, **kwargs)
        self._init_fused(semantics, gradient_rescale, gradient_clip, regularization, regularization_scale,
                         momentum=momentum)

    def _prepare(self, grads, variables, learning_rate):
        dtype = variables[0].dtype
        momentums = self._slots(self.momentums, variables) if self.momentum != 0 else None
        return _optim.prepare_sgd(
            variables,
            self._cast_grads(grads, variables),
            tf.cast(learning_rate, dtype),
            self.momentum,
            momentums if momentums else None,
            self.nesterov and self.momentum != 0,
            **self._fused_options(),
        )


@keras.saving.register_keras_serializable(package="tf_mps")
class RMSProp(_FusedOptimizer, keras.optimizers.RMSprop):
    """RMSProp (centered, momentum) with a fused multi-tensor update:
    ``keras.optimizers.RMSprop``'s arguments and results, plus tf-mps's keyword arguments
    (module docstring). Hinton, Coursera lecture 6e; centered: Graves, 2013."""

    def __init__(
        self,
        learning_rate=0.001,
        rho=0.9,
        momentum=0.0,
        epsilon=1e-7,
        centered=False,
        *,
        semantics="keras",
        gradient_rescale=1.0,
        gradient_clip=None,
        regularization=None,
        regularization_scale=0.0,
        name="rmsprop",
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate, rho=rho, momentum=momentum, epsilon=epsilon,
            centered=centered, name=name, **kwargs,
        )
        self._init_fused(semantics, gradient_rescale, gradient_clip, regularization, regularization_scale,
                         rho=rho, momentum=momentum, epsilon=epsilon)

    def _prepare(self, grads, variables, learning_rate):
        dtype = variables[0].dtype
        return _optim.prepare_rmsprop(
            variables,
            self._slots(self._velocities, variables),
            self._cast_grads(grads, variables),
            tf.cast(learning_rate, dtype),
            self.rho,
            self.momentum,
            self.epsilon,
            self._slots(self._average_gradients, variables) if self.centered else None,
            self._slots(self._momentums, variables) if self.momentum > 0 else None,
            **self._fused_options(),
        )


RMSprop = RMSProp  # Keras's spelling

__all__ = ["Adam", "SGD", "RMSProp", "RMSprop"]
