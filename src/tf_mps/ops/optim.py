"""Fused optimizer updates on resource variables.

Each function updates variables *in place*, from one variable up to a whole list in a
single op (the multi-tensor form: one pass over memory, spread over TensorFlow's CPU
threads, or one command buffer on the GPU). Variables, slots and gradients must share
one dtype, float32 or float64.

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
every row's moments decay each step. In Keras semantics Adam and RMSProp also receive
the per-row sum of the *squared* slices for their second moment, because Keras squares
each slice before summing duplicates (``g1**2 + g2**2`` rather than ``(g1 + g2)**2``);
MPS semantics uses the summed gradient throughout.

Non-finite values follow IEEE arithmetic: a NaN or Inf gradient makes the affected
elements NaN/Inf; nothing else is touched and nothing raises.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_mps import _lib

_SEMANTICS = ("keras", "mps")
_REGULARIZATION = ("none", "l1", "l2")


_invalid = _lib.invalid_argument


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


def _dense_gradient(op: str, name: str, g, var: tf.Variable, keras_squares: bool):
    """The gradient as a dense tensor of the variable's dtype, IndexedSlices summed.

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
        rows = tf.shape(var, out_type=g.indices.dtype)[0]
        if keras_squares:
            g_sq = tf.reshape(tf.math.unsorted_segment_sum(tf.square(g.values), g.indices, rows), tf.shape(var))
        g = tf.reshape(tf.math.unsorted_segment_sum(g.values, g.indices, rows), tf.shape(var))
    g = tf.convert_to_tensor(g)
    if g.dtype != var.dtype:
        raise _invalid(
            f"{op}: {name} has dtype {g.dtype.name} but its variable holds {var.dtype.name}; "
            "cast the gradient (Keras's optimizers do) or pass a variable of that dtype"
        )
    return g, g_sq


def _split_by_squares(grad_sq_list):
    """Index groups for separate op calls: a multi-tensor call takes squared-gradient
    sums for all of its variables or for none."""
    with_sq = [i for i, s in enumerate(grad_sq_list) if s is not None]
    without = [i for i, s in enumerate(grad_sq_list) if s is None]
    return [(idx, flag) for idx, flag in ((without, False), (with_sq, True)) if idx]


def _common(op: str, variables, grads, slot_lists, keras_squares=False):
    """Normalizes the variable/gradient/slot lists of one call, or raises naming the argument."""
    multi = isinstance(variables, (list, tuple))
    base = "MpsMulti" + op if multi else "Mps" + op
    names = ("vars", "grads") if multi else ("var", "grad")
    var_list = _as_list(base, names[0], variables, None)
    if not var_list:
        raise _invalid(f"{base}: {names[0]} is empty; pass at least one variable to update")
    n = len(var_list)
    var_list = [
        _resource_variable(base, f"{names[0]}[{i}]" if multi else names[0], v)
        for i, v in enumerate(var_list)
    ]
    dtype = var_list[0].dtype
    if dtype not in (tf.float32, tf.float64):
        raise _invalid(f"{base}: variables must be float32 or float64, got {dtype.name}")
    for i, v in enumerate(var_list):
        if v.dtype != dtype:
            raise _invalid(
                f"{base}: vars[{i}] holds {v.dtype.name} but vars[0] holds {dtype.name}; "
                "one call updates variables of one dtype"
            )
    grad_list = _as_list(base, names[1], grads, n)
    pairs = [
        _dense_gradient(base, f"{names[1]}[{i}]" if multi else names[1], g, v, keras_squares)
        for i, (g, v) in enumerate(zip(grad_list, var_list))
    ]
    grad_list = [g for g, _ in pairs]
    grad_sq_list = [s for _, s in pairs]
    slots = []
    for (single, plural, optional), values in slot_lists:
        name = plural if multi else single
        values = _as_list(base, name, values, n, optional=optional)
        slots.append(
            [
                _resource_variable(base, f"{name}[{i}]" if multi else name, v).handle
                for i, v in enumerate(values)
            ]
        )
    return multi, base, var_list, grad_list, grad_sq_list, slots, dtype


def normalize_options(owner, semantics="keras", gradient_rescale=1.0, gradient_clip=None, regularization=None,
                      regularization_scale=0.0, error=None):
    """Checks and normalizes the semantics and MPSNNOptimizerDescriptor options (shared by
    the op wrappers and the Keras classes). Raises `error(message)` naming `owner`
    (InvalidArgumentError by default; the Keras classes pass ValueError)."""
    error = error or _invalid
    if semantics not in _SEMANTICS:
        raise error(f"{owner}: semantics must be one of {_SEMANTICS}, got {semantics!r}")
    reg = "none" if regularization is None else str(regularization).lower()
    if reg not in _REGULARIZATION:
        raise error(f"{owner}: regularization must be None, 'l1' or 'l2', got {regularization!r}")
    if gradient_clip is not None:
        gradient_clip = (float(gradient_clip[0]), float(gradient_clip[1]))
        if not gradient_clip[0] <= gradient_clip[1]:
            raise error(f"{owner}: gradient_clip must be (min, max) with min <= max, got {gradient_clip!r}")
    return dict(semantics=semantics, gradient_rescale=float(gradient_rescale), gradient_clip=gradient_clip,
                regularization=None if reg == "none" else reg, regularization_scale=float(regularization_scale))


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
    return attrs


def _run(multi, groups, call):
    """Runs call(indices, with_sq) per group; returns the op (graph) or None (eager)."""
    results = [call(idx, with_sq) for idx, with_sq in groups]
    if not multi or len(results) == 1:
        return results[0]
    return tf.group(*[r for r in results if r is not None]) if not tf.executing_eagerly() else None


def _scalar(x, dtype):
    """x as a scalar of `dtype`. Python numbers are converted directly (tf.cast would
    round them through float32 first: 0.9 would arrive as 0.899999976)."""
    if isinstance(x, (int, float, np.integer, np.floating)):
        return tf.constant(x, dtype)
    return tf.cast(x, dtype)


def _f64(x):
    return _scalar(x, tf.float64)


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
      The op (None in eager mode, where the update has happened).
    """
    multi, op, var_list, grad_list, grad_sq_list, slots, dtype = _common(
        "ApplyAdam", variables, grads,
        [(("m", "ms", False), ms), (("v", "vs", False), vs), (("vhat", "vhats", True), vhats)],
        keras_squares=keras_equivalent(semantics, gradient_rescale, gradient_clip, regularization),
    )
    attrs = _gradient_attrs(op, semantics, gradient_rescale, gradient_clip, regularization, regularization_scale)
    lib = _lib.load()
    common = dict(
        lr=_scalar(learning_rate, dtype),
        step=tf.cast(step, tf.int64),
        beta1=_f64(beta_1),
        beta2=_f64(beta_2),
        epsilon=_f64(epsilon),
        **attrs,
    )
    handles = [v.handle for v in var_list]

    def call(idx, with_sq):
        pick = lambda xs: [xs[i] for i in idx] if xs else []  # noqa: E731
        sq = pick(grad_sq_list) if with_sq else []
        if multi:
            return lib.mps_multi_apply_adam(
                vars=pick(handles), ms=pick(slots[0]), vs=pick(slots[1]), vhats=pick(slots[2]),
                grads=pick(grad_list), grads_sq=sq, **common,
            )
        return lib.mps_apply_adam(
            var=handles[0], m=slots[0][0], v=slots[1][0], vhat=slots[2], grad=grad_list[0], grad_sq=sq, **common
        )

    return _run(multi, _split_by_squares(grad_sq_list), call)


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
    multi, op, var_list, grad_list, _, slots, dtype = _common(
        "ApplySgd", variables, grads, [(("momentum_slot", "momentums", True), momentums)]
    )
    attrs = _gradient_attrs(op, semantics, gradient_rescale, gradient_clip, regularization, regularization_scale)
    if nesterov and not slots[0]:
        raise _invalid(f"{op}: nesterov=True needs momentum slots (momentums), got none")
    lib = _lib.load()
    handles = [v.handle for v in var_list]
    common = dict(lr=_scalar(learning_rate, dtype), momentum=_f64(momentum), nesterov=bool(nesterov), **attrs)
    if multi:
        return lib.mps_multi_apply_sgd(vars=handles, momentums=slots[0], grads=grad_list, **common)
    return lib.mps_apply_sgd(var=handles[0], momentum_slot=slots[0], grad=grad_list[0], **common)


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
    multi, op, var_list, grad_list, grad_sq_list, slots, dtype = _common(
        "ApplyRmsProp", variables, grads,
        [
            (("ms", "mss", False), velocities),
            (("mg", "mgs", True), average_gradients),
            (("mom", "moms", True), momentums),
        ],
        keras_squares=keras_equivalent(semantics, gradient_rescale, gradient_clip, regularization),
    )
    attrs = _gradient_attrs(op, semantics, gradient_rescale, gradient_clip, regularization, regularization_scale)
    lib = _lib.load()
    handles = [v.handle for v in var_list]
    common = dict(
        lr=_scalar(learning_rate, dtype), rho=_f64(rho), momentum=_f64(momentum), epsilon=_f64(epsilon), **attrs
    )

    def call(idx, with_sq):
        pick = lambda xs: [xs[i] for i in idx] if xs else []  # noqa: E731
        sq = pick(grad_sq_list) if with_sq else []
        if multi:
            return lib.mps_multi_apply_rms_prop(
                vars=pick(handles), mss=pick(slots[0]), mgs=pick(slots[1]), moms=pick(slots[2]),
                grads=pick(grad_list), grads_sq=sq, **common,
            )
        return lib.mps_apply_rms_prop(
            var=handles[0], ms=slots[0][0], mg=slots[1], mom=slots[2], grad=grad_list[0], grad_sq=sq, **common
        )

    return _run(multi, _split_by_squares(grad_sq_list), call)


for _name in (
    "MpsApplyAdam", "MpsMultiApplyAdam", "MpsApplySgd", "MpsMultiApplySgd",
    "MpsApplyRmsProp", "MpsMultiApplyRmsProp", "MpsBuildInfo",
):
    # In-place updates of variables: there is nothing to differentiate.
    tf.no_gradient(_name)
del _name
