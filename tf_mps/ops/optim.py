"""Fused optimizer updates on resource variables.

Each function updates variables *in place*, from one variable up to a whole list in a
single op (the multi-tensor form: one pass over memory, spread over TensorFlow's CPU
threads, or one command buffer on the GPU). Variables, slots and gradients must share
one dtype: float16, bfloat16, float32 or float64 (16-bit variables are computed as
TensorFlow computes them, each operation in float rounded back to 16 bits, which is
what Keras's optimizers do on such variables).

All or nothing: every argument is checked, and every sparse gradient summed and
checked, before the one op of a call runs (its inputs depend on all of that, in eager
mode and inside ``tf.function`` alike), and the op validates everything before it
writes; a rejected call leaves every variable and slot exactly as it was.

Two documented semantics (``semantics=``):

* ``"keras"`` (default): Keras 3's ``update_step``, operation for operation and rounding
  for rounding, so results equal ``keras.optimizers.*``.
* ``"mps"``: the formulas of ``MPSNNOptimizerAdam``, ``MPSNNOptimizerStochasticGradient
  Descent`` and ``MPSNNOptimizerRMSProp`` (see ``docs/optimizers.md``).

Both apply MPSNNOptimizerDescriptor's gradient options first, in this order:
``g = clip(g, *gradient_clip)`` if given (Apple: the bounds apply "before gradient is
rescaled"); ``g = g * gradient_rescale``; then
``g += regularization_scale * sign(w)`` (``"l1"``) or ``* w`` (``"l2"``).

Sparse gradients (``tf.IndexedSlices``, e.g. from ``Embedding``) are summed into a dense
gradient (duplicate indices add up; untouched rows get zero), as Keras's optimizers do:
every row's moments decay each step. As TensorFlow's scatter ops require, the values
must have shape ``indices.shape + variable.shape[1:]`` and every index must lie in
``[0, rows)``; anything else is rejected (``InvalidArgumentError`` naming the gradient). In Keras semantics Adam and RMSProp also receive
the per-row sum of the *squared* slices for their second moment, because Keras squares
each slice before summing duplicates (``g1**2 + g2**2`` rather than ``(g1 + g2)**2``);
MPS semantics uses the summed gradient throughout.

Non-finite values follow IEEE arithmetic: a NaN or Inf gradient makes the affected
elements NaN/Inf; nothing else is touched and nothing raises.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tf_mps import _lib

_SEMANTICS = ("keras", "mps")
_REGULARIZATION = ("none", "l1", "l2")
# The variable dtypes the ops are registered for (ops/optim/optim_ops.cc, kAttrT).
DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)
_DTYPE_NAMES = ", ".join(d.name for d in DTYPES[:-1]) + " or " + DTYPES[-1].name

_invalid = _lib.invalid_argument


def _shape_str(shape) -> str:
    """A TensorShape as TensorFlow's kernels print it: [3,2], ? for an unknown dimension."""
    shape = tf.TensorShape(shape)
    if shape.rank is None:
        return "<unknown>"
    return "[" + ",".join("?" if d is None else str(d) for d in shape.as_list()) + "]"


def _resource_variable(op: str, name: str, v):
    """The tf.Variable behind `v` (a tf.Variable or a keras.Variable), or a clear error."""
    inner = getattr(v, "_value", None)  # keras.Variable on the TensorFlow backend
    if isinstance(inner, tf.Variable):
        v = inner
    if not isinstance(v, tf.Variable) or getattr(v, "handle", None) is None or (
        v.handle.dtype != tf.resource
    ):
        raise _invalid(
            f"{op}: {name} must be a resource variable (tf.Variable or keras.Variable), "
            f"got {type(v).__name__}"
        )
    return v


def _as_list(op: str, name: str, values, n: int | None, *, optional: bool = False):
    if values is None:
        if optional:
            return []
        raise _invalid(f"{op}: {name} is required")
    if isinstance(values, (list, tuple)):
        values = list(values)
    else:
        values = [values]
    if n is not None and len(values) not in ((0, n) if optional else (n,)):
        expected = f"0 or {n}" if optional else f"{n}"
        raise _invalid(
            f"{op}: {name} must hold {expected} entries (one per variable), got {len(values)}"
        )
    return values


def _is_real_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _hyper(op: str, name: str, x, dtype, *, integer: bool = False):
    """Hyper-parameter `x` as a scalar tensor of `dtype`, or an error naming it.

    Python numbers are converted directly (tf.cast would round them through float32
    first: 0.9 would arrive as 0.899999976). Tensors must be real scalars."""
    kind = "an integer" if integer else "a real number"
    if isinstance(x, np.ndarray) and x.ndim == 0 and x.dtype.kind in "iuf":
        x = x.item()
    if _is_real_number(x):
        if integer:
            if not float(x).is_integer():
                raise _invalid(f"{op}: {name} must be {kind} (or an integer scalar tensor), got {x!r}")
            return tf.constant(int(x), dtype)
        return tf.constant(x, dtype)
    try:
        t = tf.convert_to_tensor(x)
    except (TypeError, ValueError):
        t = None
    ok_dtype = t is not None and (t.dtype.is_integer if integer else (t.dtype.is_floating or t.dtype.is_integer))
    if not ok_dtype or t.dtype == tf.bool:
        got = f"a {t.dtype.name} tensor" if t is not None else f"{type(x).__name__} {x!r}"
        raise _invalid(f"{op}: {name} must be {kind} or a scalar tensor of that kind, got {got}")
    if t.shape.rank is not None and t.shape.rank != 0:
        raise _invalid(f"{op}: {name} must be a scalar, got shape {_shape_str(t.shape)}")
    return t if t.dtype == dtype else tf.cast(t, dtype)


def _check_index(op: str, name: str, t, var: tf.Variable):
    """Static checks of a sparse gradient against TensorFlow's scatter rule (values.shape
    = indices.shape + variable.shape[1:]); the op MpsCheckSparseGradient repeats them on
    the runtime shapes and checks the index values."""
    values, indices = t.values.shape, t.indices.shape
    if var.shape.rank == 0:
        raise _invalid(f"{op}: {name} is sparse (IndexedSlices) but its variable is a scalar")
    if indices.rank is not None and indices.rank != 1:
        raise _invalid(f"{op}: {name}: the indices of an IndexedSlices gradient must be a vector, got shape "
                       f"{_shape_str(indices)}")
    expected = tf.TensorShape([indices[0] if indices.rank else None]).concatenate(var.shape[1:])
    if not values.is_compatible_with(expected):
        raise _invalid(
            f"{op}: {name}: Must have updates.shape = indices.shape + params.shape[1:], got updates.shape "
            f"{_shape_str(values)}, indices.shape {_shape_str(indices)}, params.shape {_shape_str(var.shape)} "
            "(the IndexedSlices gradient's values, indices and variable)"
        )


def _dense_gradient(op: str, name: str, g, var: tf.Variable, keras_squares: bool):
    """The gradient as a checked dense tensor of the variable's dtype, IndexedSlices summed.

    Returns (g, g_sq): g_sq is None for a dense gradient. For an IndexedSlices gradient
    with `keras_squares`, g_sq is the sum over duplicate indices of each slice squared,
    which is what Keras's second-moment updates see (ops.square acts on the slices before
    they are summed): with repeated indices it differs from g*g.
    """
    g_sq = None
    if isinstance(g, tf.IndexedSlices):
        if g.values.dtype != var.dtype:
            raise _invalid(
                f"{op}: {name} has dtype {g.values.dtype.name} but its variable holds "
                f"{var.dtype.name}; cast the gradient (Keras's optimizers do)"
            )
        if g.indices.dtype not in (tf.int32, tf.int64):
            raise _invalid(f"{op}: {name}: the indices of an IndexedSlices gradient must be int32 or int64, "
                           f"got {g.indices.dtype.name}")
        _check_index(op, name, g, var)
        var_shape = (tf.constant(var.shape.as_list(), tf.int64) if var.shape.is_fully_defined()
                     else tf.shape(var, out_type=tf.int64))
        # The sums run on the checked indices: nothing downstream can see a bad index.
        indices = _lib.load().mps_check_sparse_gradient(
            indices=g.indices, values_shape=tf.shape(g.values, out_type=tf.int64), var_shape=var_shape,
            label=f"{op}: {name}")
        rows = tf.cast(var_shape[0], indices.dtype)
        if keras_squares:
            g_sq = tf.math.unsorted_segment_sum(tf.square(g.values), indices, rows)
            g_sq.set_shape(var.shape)
        g = tf.math.unsorted_segment_sum(g.values, indices, rows)
        g.set_shape(var.shape)
        return g, g_sq
    if g is None:
        raise _invalid(f"{op}: {name} is None; pass a gradient tensor for every variable (Keras's "
                       "optimizers drop variables whose gradient is None)")
    try:
        g = tf.convert_to_tensor(g)
    except (TypeError, ValueError) as e:
        raise _invalid(f"{op}: {name} must be a tensor or a tf.IndexedSlices, got {type(g).__name__}") from e
    if g.dtype != var.dtype:
        raise _invalid(
            f"{op}: {name} has dtype {g.dtype.name} but its variable holds {var.dtype.name}; "
            "cast the gradient (Keras's optimizers do) or pass a variable of that dtype"
        )
    return g, g_sq


def _check_same_shape(op, a_name, a_shape, b_name, b_shape):
    # The kernel's wording (tfglue::CheckSameShape), so both layers read alike.
    if not tf.TensorShape(a_shape).is_compatible_with(b_shape):
        raise _invalid(f"{op}: {a_name} and {b_name} do not have the same shape: "
                       f"{_shape_str(a_shape)} vs {_shape_str(b_shape)}")


def _common(op: str, variables, grads, slot_lists, keras_squares=False):
    """Normalizes and checks the variable/gradient/slot lists of one call, or raises naming
    the argument (with the index in the caller's list)."""
    multi = isinstance(variables, (list, tuple))
    base = "MpsMulti" + op if multi else "Mps" + op
    names = ("vars", "grads") if multi else ("var", "grad")

    def label(name, i):
        return f"{name}[{i}]" if multi else name

    var_list = _as_list(base, names[0], variables, None)
    if not var_list:
        raise _invalid(f"{base}: {names[0]} is empty; pass at least one variable to update")
    n = len(var_list)
    var_list = [_resource_variable(base, label(names[0], i), v) for i, v in enumerate(var_list)]
    dtype = var_list[0].dtype
    if dtype not in DTYPES:
        raise _invalid(f"{base}: variables must be {_DTYPE_NAMES}; {label(names[0], 0)} holds {dtype.name}")
    for i, v in enumerate(var_list):
        if v.dtype != dtype:
            raise _invalid(
                f"{base}: vars[{i}] holds {v.dtype.name} but vars[0] holds {dtype.name}; "
                "one call updates variables of one dtype"
            )
    slots = []
    for (single, plural, optional), values in slot_lists:
        name = plural if multi else single
        values = _as_list(base, name, values, n, optional=optional)
        group = []
        for i, v in enumerate(values):
            v = _resource_variable(base, label(name, i), v)
            if v.dtype != dtype:
                raise _invalid(f"{base}: {label(name, i)} holds {v.dtype.name} but {label(names[0], i)} holds "
                               f"{dtype.name}; variables, slots and gradients must share one dtype")
            _check_same_shape(base, label(names[0], i), var_list[i].shape, label(name, i), v.shape)
            group.append(v.handle)
        slots.append(group)
    grad_list = _as_list(base, names[1], grads, n)
    pairs = []
    for i, (g, v) in enumerate(zip(grad_list, var_list)):
        g, g_sq = _dense_gradient(base, label(names[1], i), g, v, keras_squares)
        _check_same_shape(base, label(names[0], i), v.shape, label(names[1], i), g.shape)
        pairs.append((g, g_sq))
    grad_list = [g for g, _ in pairs]
    grad_sq_list = [s for _, s in pairs]
    return multi, base, var_list, grad_list, grad_sq_list, slots, dtype


def _real_option(owner, name, value, error, *, allow_inf=False):
    if not _is_real_number(value):
        raise error(f"{owner}: {name} must be a real number, got {type(value).__name__} {value!r}")
    x = float(value)
    # The options are float32 attributes, like MPSNNOptimizerDescriptor's properties.
    if math.isnan(x) or (not allow_inf and not math.isfinite(float(np.float32(x)))):
        raise error(f"{owner}: {name} must be a finite float32 number, got {value!r}")
    return x


def normalize_options(owner, semantics="keras", gradient_rescale=1.0, gradient_clip=None, regularization=None,
                      regularization_scale=0.0, error=None):
    """Checks and normalizes the semantics and MPSNNOptimizerDescriptor options (shared by
    the op wrappers and the Keras classes). Raises `error(message)` naming `owner` and the
    argument (InvalidArgumentError by default; the Keras classes pass ValueError)."""
    error = error or _invalid
    if not isinstance(semantics, str) or semantics not in _SEMANTICS:
        raise error(f"{owner}: semantics must be one of {_SEMANTICS}, got {semantics!r}")
    if regularization is not None and not isinstance(regularization, str):
        raise error(f"{owner}: regularization must be None, 'l1' or 'l2', got {regularization!r}")
    reg = "none" if regularization is None else regularization.lower()
    if reg not in _REGULARIZATION:
        raise error(f"{owner}: regularization must be None, 'l1' or 'l2', got {regularization!r}")
    if gradient_clip is not None:
        pair = gradient_clip.tolist() if isinstance(gradient_clip, np.ndarray) else gradient_clip
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(_is_real_number(x) for x in pair)
                or any(math.isnan(float(x)) for x in pair) or not float(pair[0]) <= float(pair[1])):
            raise error(f"{owner}: gradient_clip must be None or a pair (min, max) of numbers with min <= max, "
                        f"got {gradient_clip!r}")
        gradient_clip = (float(pair[0]), float(pair[1]))
    return dict(semantics=semantics,
                gradient_rescale=_real_option(owner, "gradient_rescale", gradient_rescale, error),
                gradient_clip=gradient_clip,
                regularization=None if reg == "none" else reg,
                regularization_scale=_real_option(owner, "regularization_scale", regularization_scale, error))


def keras_equivalent(semantics="keras", gradient_rescale=1.0, gradient_clip=None, regularization=None,
                     regularization_scale=0.0):
    """True when the options change nothing Keras would do (its rounding included)."""
    del regularization_scale  # no effect without a regularization type
    return semantics == "keras" and gradient_rescale == 1.0 and gradient_clip is None and regularization in (
        None, "none")


def _gradient_attrs(op, semantics, gradient_rescale, gradient_clip, regularization, regularization_scale):
    o = normalize_options(op, semantics, gradient_rescale, gradient_clip, regularization, regularization_scale)
    attrs = dict(semantics=o["semantics"], gradient_rescale=o["gradient_rescale"],
                 regularization=o["regularization"] or "none", regularization_scale=o["regularization_scale"])
    if o["gradient_clip"] is not None:
        lo, hi = o["gradient_clip"]
        attrs.update(clip_gradient=True, gradient_clip_min=lo, gradient_clip_max=hi)
    return attrs, keras_equivalent(**o)


class Prepared:
    """One checked op call, built but not run: `inputs` are the tensors it consumes (the
    checked and summed gradients among them), `run()` runs it. Callers that update
    several groups (the Keras classes: one call per dtype) prepare every group first and
    run them under control dependencies on every group's inputs, so that no group
    writes unless all of them passed their checks."""

    def __init__(self, fn, kwargs, inputs):
        self._fn, self._kwargs, self.inputs = fn, kwargs, inputs

    def run(self):
        """Runs the op: returns it in graph mode, None in eager mode (the update is done)."""
        return self._fn(**self._kwargs)


def run_all(prepared):
    """Runs prepared calls, none before every one of them is checked (see Prepared)."""
    prepared = list(prepared)
    if len(prepared) == 1:
        return prepared[0].run()
    deps = [] if tf.executing_eagerly() else [t for p in prepared for t in p.inputs]
    with tf.control_dependencies(deps):
        ops = [p.run() for p in prepared]
    return None if tf.executing_eagerly() else tf.group(*[o for o in ops if o is not None])


def _squares(grad_sq_list):
    """The squared-gradient sums present and the variables they belong to (attr sq_vars)."""
    owners = [i for i, s in enumerate(grad_sq_list) if s is not None]
    return [grad_sq_list[i] for i in owners], owners


def _checked_bool(op, name, x):
    if not isinstance(x, (bool, np.bool_)):
        raise _invalid(f"{op}: {name} must be True or False, got {x!r}")
    return bool(x)


def prepare_adam(
    variables,
    ms,
    vs,
    grads,
    learning_rate,
    step,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    vhats=None,
    *,
    semantics: str = "keras",
    gradient_rescale: float = 1.0,
    gradient_clip: tuple[float, float] | None = None,
    regularization: str | None = None,
    regularization_scale: float = 0.0,
) -> Prepared:
    """``apply_adam``'s checks and gradient sums, without running the update (see Prepared)."""
    op = "MpsMultiApplyAdam" if isinstance(variables, (list, tuple)) else "MpsApplyAdam"
    attrs, keras_squares = _gradient_attrs(op, semantics, gradient_rescale, gradient_clip, regularization,
                                           regularization_scale)
    multi, op, var_list, grad_list, grad_sq_list, slots, dtype = _common(
        "ApplyAdam", variables, grads,
        [(("m", "ms", False), ms), (("v", "vs", False), vs), (("vhat", "vhats", True), vhats)],
        keras_squares=keras_squares,
    )
    if _is_real_number(step) and step < 1:
        raise _invalid(f"{op}: step must be >= 1 (the 1-based time step), got {step!r}")
    common = dict(
        lr=_hyper(op, "learning_rate", learning_rate, dtype),
        step=_hyper(op, "step", step, tf.int64, integer=True),
        beta1=_hyper(op, "beta_1", beta_1, tf.float64),
        beta2=_hyper(op, "beta_2", beta_2, tf.float64),
        epsilon=_hyper(op, "epsilon", epsilon, tf.float64),
        **attrs,
    )
    squares, owners = _squares(grad_sq_list)
    lib = _lib.load()
    handles = [v.handle for v in var_list]
    if multi:
        fn, kwargs = lib.mps_multi_apply_adam, dict(
            vars=handles, ms=slots[0], vs=slots[1], vhats=slots[2], grads=grad_list, grads_sq=squares,
            sq_vars=owners, **common)
    else:
        fn, kwargs = lib.mps_apply_adam, dict(
            var=handles[0], m=slots[0][0], v=slots[1][0], vhat=slots[2], grad=grad_list[0], grad_sq=squares,
            **common)
    return Prepared(fn, kwargs, grad_list + squares)


def apply_adam(
    variables,
    ms,
    vs,
    grads,
    learning_rate,
    step,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    vhats=None,
    *,
    semantics: str = "keras",
    gradient_rescale: float = 1.0,
    gradient_clip: tuple[float, float] | None = None,
    regularization: str | None = None,
    regularization_scale: float = 0.0,
):
    """Adam (Kingma & Ba, 2015; AMSGrad, Reddi et al., 2018, when ``vhats`` is given).

    With ``t = step`` (1-based), ``g`` the transformed gradient:

    * keras: ``alpha = lr*sqrt(1-beta_2**t)/(1-beta_1**t)`` (in the variables' dtype);
      ``m += (g-m)*(1-beta_1)``; ``v += (g*g-v)*(1-beta_2)``;
      AMSGrad: ``vhat = max(vhat, v)`` and ``vhat`` replaces ``v`` below;
      ``w -= (m*alpha)/(sqrt(v)+epsilon)``.
    * mps: ``m = beta_1*m+(1-beta_1)*g``; ``v = beta_2*v+(1-beta_2)*g*g``;
      ``w -= alpha*m/(sqrt(v)+epsilon)`` (same alpha, AMSGrad alike).

    Args:
      variables: a resource variable, or a list of N (multi-tensor op).
      ms, vs: first and second moment slots, same form and shapes as ``variables``.
      grads: gradients (tensors or ``tf.IndexedSlices``), same form, dtype of the variables.
      learning_rate: scalar, cast to the variables' dtype.
      step: scalar int, the 1-based time step t (Keras: ``iterations + 1``).
      beta_1, beta_2, epsilon: floats (or float scalars), Keras's defaults.
      vhats: AMSGrad's max-velocity slots, or None for plain Adam.
      semantics, gradient_rescale, gradient_clip, regularization, regularization_scale:
        see the module docstring.

    Returns:
      The op (None in eager mode, where the update has happened). One op updates the
      whole list, dense and sparse gradients alike: all or nothing.
    """
    return prepare_adam(variables, ms, vs, grads, learning_rate, step, beta_1, beta_2, epsilon, vhats,
                        semantics=semantics, gradient_rescale=gradient_rescale, gradient_clip=gradient_clip,
                        regularization=regularization, regularization_scale=regularization_scale).run()


def prepare_sgd(
    variables,
    grads,
    learning_rate,
    momentum: float = 0.0,
    momentums=None,
    nesterov: bool = False,
    *,
    semantics: str = "keras",
    gradient_rescale: float = 1.0,
    gradient_clip: tuple[float, float] | None = None,
    regularization: str | None = None,
    regularization_scale: float = 0.0,
) -> Prepared:
    """``apply_sgd``'s checks and gradient sums, without running the update (see Prepared)."""
    op = "MpsMultiApplySgd" if isinstance(variables, (list, tuple)) else "MpsApplySgd"
    attrs, _ = _gradient_attrs(op, semantics, gradient_rescale, gradient_clip, regularization,
                               regularization_scale)
    nesterov = _checked_bool(op, "nesterov", nesterov)
    multi, op, var_list, grad_list, _, slots, dtype = _common(
        "ApplySgd", variables, grads, [(("momentum_slot", "momentums", True), momentums)]
    )
    if nesterov and not slots[0]:
        raise _invalid(f"{op}: nesterov=True needs momentum slots (momentums), got none")
    lib = _lib.load()
    handles = [v.handle for v in var_list]
    common = dict(lr=_hyper(op, "learning_rate", learning_rate, dtype),
                  momentum=_hyper(op, "momentum", momentum, tf.float64), nesterov=nesterov, **attrs)
    if multi:
        fn, kwargs = lib.mps_multi_apply_sgd, dict(vars=handles, momentums=slots[0], grads=grad_list, **common)
    else:
        fn, kwargs = lib.mps_apply_sgd, dict(var=handles[0], momentum_slot=slots[0], grad=grad_list[0], **common)
    return Prepared(fn, kwargs, grad_list)


def apply_sgd(
    variables,
    grads,
    learning_rate,
    momentum: float = 0.0,
    momentums=None,
    nesterov: bool = False,
    *,
    semantics: str = "keras",
    gradient_rescale: float = 1.0,
    gradient_clip: tuple[float, float] | None = None,
    regularization: str | None = None,
    regularization_scale: float = 0.0,
):
    """Stochastic gradient descent, with momentum (when ``momentums`` slots are given)
    and Nesterov momentum (Sutskever et al., 2013).

    * keras: plain ``w -= g*lr``; momentum ``m = m*mu - g*lr``, ``w += m``;
      Nesterov ``m = m*mu - g*lr``, ``w += m*mu - g*lr``.
    * mps: plain ``w -= lr*g``; momentum ``m = mu*m + lr*g``, ``w -= m``;
      Nesterov ``m = mu*m + g``, ``w -= lr*(g + mu*m)``.

    The momentum slot holds ``-m_mps`` in Keras's form and ``m_mps`` (scaled by 1/lr for
    Nesterov) in MPS's: do not switch semantics in the middle of training.

    Args:
      variables: a resource variable or a list of N.
      grads: gradients, same form.
      learning_rate: scalar; momentum: float ``mu``.
      momentums: momentum slots (same form as ``variables``) or None for plain SGD.
      nesterov: Nesterov momentum (needs ``momentums``).
    """
    return prepare_sgd(variables, grads, learning_rate, momentum, momentums, nesterov, semantics=semantics,
                       gradient_rescale=gradient_rescale, gradient_clip=gradient_clip,
                       regularization=regularization, regularization_scale=regularization_scale).run()


def prepare_rmsprop(
    variables,
    velocities,
    grads,
    learning_rate,
    rho: float = 0.9,
    momentum: float = 0.0,
    epsilon: float = 1e-7,
    average_gradients=None,
    momentums=None,
    *,
    semantics: str = "keras",
    gradient_rescale: float = 1.0,
    gradient_clip: tuple[float, float] | None = None,
    regularization: str | None = None,
    regularization_scale: float = 0.0,
) -> Prepared:
    """``apply_rmsprop``'s checks and gradient sums, without running the update (see Prepared)."""
    op = "MpsMultiApplyRmsProp" if isinstance(variables, (list, tuple)) else "MpsApplyRmsProp"
    attrs, keras_squares = _gradient_attrs(op, semantics, gradient_rescale, gradient_clip, regularization,
                                           regularization_scale)
    multi, op, var_list, grad_list, grad_sq_list, slots, dtype = _common(
        "ApplyRmsProp", variables, grads,
        [
            (("ms", "mss", False), velocities),
            (("mg", "mgs", True), average_gradients),
            (("mom", "moms", True), momentums),
        ],
        keras_squares=keras_squares,
    )
    lib = _lib.load()
    handles = [v.handle for v in var_list]
    common = dict(
        lr=_hyper(op, "learning_rate", learning_rate, dtype), rho=_hyper(op, "rho", rho, tf.float64),
        momentum=_hyper(op, "momentum", momentum, tf.float64), epsilon=_hyper(op, "epsilon", epsilon, tf.float64),
        **attrs,
    )
    squares, owners = _squares(grad_sq_list)
    if multi:
        fn, kwargs = lib.mps_multi_apply_rms_prop, dict(
            vars=handles, mss=slots[0], mgs=slots[1], moms=slots[2], grads=grad_list, grads_sq=squares,
            sq_vars=owners, **common)
    else:
        fn, kwargs = lib.mps_apply_rms_prop, dict(
            var=handles[0], ms=slots[0][0], mg=slots[1], mom=slots[2], grad=grad_list[0], grad_sq=squares,
            **common)
    return Prepared(fn, kwargs, grad_list + squares)


def apply_rmsprop(
    variables,
    velocities,
    grads,
    learning_rate,
    rho: float = 0.9,
    momentum: float = 0.0,
    epsilon: float = 1e-7,
    average_gradients=None,
    momentums=None,
    *,
    semantics: str = "keras",
    gradient_rescale: float = 1.0,
    gradient_clip: tuple[float, float] | None = None,
    regularization: str | None = None,
    regularization_scale: float = 0.0,
):
    """RMSProp (Hinton, lecture 6e), centered when ``average_gradients`` slots are given
    (Graves, 2013), with momentum when ``momentums`` slots are given.

    * keras: ``s = rho*s + (1-rho)*g*g``; centered ``a = rho*a + (1-rho)*g``,
      ``d = s - a*a + epsilon``, else ``d = s + epsilon``; ``inc = lr*g/sqrt(d)``;
      momentum ``mom = mu*mom + inc``, ``w -= mom``, else ``w -= inc``.
    * mps: as MPSNNOptimizerRMSProp, epsilon outside the root: ``d = sqrt(s) + epsilon``
      (centered: ``sqrt(s - a*a) + epsilon``), ``inc = lr*g/d``, momentum alike.

    Args:
      variables: a resource variable or a list of N; velocities: the ``s`` slots.
      grads: gradients, same form. learning_rate: scalar. rho, momentum, epsilon: floats.
      average_gradients: the ``a`` slots (centered) or None.
      momentums: the ``mom`` slots or None.
    """
    return prepare_rmsprop(variables, velocities, grads, learning_rate, rho, momentum, epsilon,
                           average_gradients, momentums, semantics=semantics, gradient_rescale=gradient_rescale,
                           gradient_clip=gradient_clip, regularization=regularization,
                           regularization_scale=regularization_scale).run()


for _name in (
    "MpsApplyAdam", "MpsMultiApplyAdam", "MpsApplySgd", "MpsMultiApplySgd",
    "MpsApplyRmsProp", "MpsMultiApplyRmsProp", "MpsBuildInfo", "MpsCheckSparseGradient",
):
    # In-place updates of variables (and a check of integer indices): nothing to differentiate.
    tf.no_gradient(_name)
del _name
