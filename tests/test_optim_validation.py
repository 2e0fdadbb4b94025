"""Bad input to the optimizer ops: every mistake gives an InvalidArgumentError (or, for
a variable that does not exist, TensorFlow's own NotFound) whose message names the op
and the argument; nothing crashes, nothing is half-updated."""

import numpy as np
import pytest
import tensorflow as tf

import tf_mps
from tf_mps import _lib

lib = _lib.load()
INVALID = tf.errors.InvalidArgumentError


def _v(shape=(3, 2), dtype=np.float32, value=1.0):
    return tf.Variable(np.full(shape, value, dtype))


def _adam_args(n=2, shape=(3, 2)):
    return [_v(shape) for _ in range(n)], [_v(shape, value=0) for _ in range(n)], [
        _v(shape, value=0) for _ in range(n)], [tf.ones(shape) for _ in range(n)]


# ----------------------------------------------------------------- Python wrappers
def test_empty_list():
    with pytest.raises(INVALID, match=r"MpsMultiApplyAdam: vars is empty"):
        tf_mps.ops.apply_adam([], [], [], [], 0.1, 1)


def test_list_length_mismatch():
    vs, ms, vvs, gs = _adam_args()
    with pytest.raises(INVALID, match=r"MpsMultiApplyAdam: ms must hold 2 entries"):
        tf_mps.ops.apply_adam(vs, ms[:1], vvs, gs, 0.1, 1)
    with pytest.raises(INVALID, match=r"MpsMultiApplyAdam: grads must hold 2 entries"):
        tf_mps.ops.apply_adam(vs, ms, vvs, gs[:1], 0.1, 1)
    with pytest.raises(INVALID, match=r"MpsMultiApplyAdam: vhats must hold 0 or 2 entries"):
        tf_mps.ops.apply_adam(vs, ms, vvs, gs, 0.1, 1, vhats=[_v()])


def test_non_variable_inputs():
    vs, ms, vvs, gs = _adam_args()
    with pytest.raises(INVALID, match=r"MpsMultiApplyAdam: vars\[1\] must be a resource variable.*EagerTensor"):
        tf_mps.ops.apply_adam([vs[0], tf.ones((3, 2))], ms, vvs, gs, 0.1, 1)
    with pytest.raises(INVALID, match=r"MpsApplySgd: momentum_slot must be a resource variable.*ndarray"):
        tf_mps.ops.apply_sgd(vs[0], gs[0], 0.1, 0.9, np.zeros((3, 2)))
    with pytest.raises(INVALID, match=r"MpsMultiApplyRmsProp: mss\[0\] must be a resource variable"):
        tf_mps.ops.apply_rmsprop(vs, [1.0, 2.0], gs, 0.1)


def test_wrong_dtypes():
    vs, ms, vvs, gs = _adam_args()
    with pytest.raises(INVALID, match=r"grads\[1\] has dtype float64 but its variable holds float32"):
        tf_mps.ops.apply_adam(vs, ms, vvs, [gs[0], tf.ones((3, 2), tf.float64)], 0.1, 1)
    with pytest.raises(INVALID, match=r"MpsApplySgd: variables must be float16, bfloat16, float32 or float64; "
                                      r"var holds int32"):
        tf_mps.ops.apply_sgd(tf.Variable([1, 2]), tf.constant([1, 2]), 0.1)
    with pytest.raises(INVALID, match=r"vars\[1\] holds float64 but vars\[0\] holds float32"):
        tf_mps.ops.apply_sgd([_v(), _v(dtype=np.float64)], [tf.ones((3, 2)), tf.ones((3, 2), tf.float64)], 0.1)


def test_bad_options():
    v, g = _v(), tf.ones((3, 2))
    with pytest.raises(INVALID, match=r"MpsApplySgd: semantics must be one of"):
        tf_mps.ops.apply_sgd(v, g, 0.1, semantics="torch")
    with pytest.raises(INVALID, match=r"regularization must be None, 'l1' or 'l2'"):
        tf_mps.ops.apply_sgd(v, g, 0.1, regularization="l3")
    with pytest.raises(INVALID, match=r"gradient_clip must be None or a pair \(min, max\) of numbers with min <= max"):
        tf_mps.ops.apply_sgd(v, g, 0.1, gradient_clip=(1.0, -1.0))
    with pytest.raises(INVALID, match=r"nesterov=True needs momentum slots"):
        tf_mps.ops.apply_sgd(v, g, 0.1, 0.9, nesterov=True)


# ------------------------------------------------------------- kernel validation
# The raw ops, bypassing the Python checks: the kernel must catch the same mistakes.
def _raw_adam(vs, ms, vvs, gs, **kw):
    args = dict(lr=tf.constant(0.1), step=tf.constant(1, tf.int64), beta1=tf.constant(0.9, tf.float64),
                beta2=tf.constant(0.999, tf.float64), epsilon=tf.constant(1e-7, tf.float64))
    args.update(kw)
    return lib.mps_multi_apply_adam(vars=[v.handle for v in vs], ms=[m.handle for m in ms],
                                    vs=[v.handle for v in vvs], vhats=[], grads=gs, grads_sq=[], **args)


def test_kernel_shape_mismatch_grad():
    vs, ms, vvs, gs = _adam_args()
    before = vs[0].numpy().copy()
    with pytest.raises(INVALID, match=r"MpsMultiApplyAdam: vars\[1\] and grads\[1\] do not have the same shape: \[3,2\] vs \[2,3\]"):
        _raw_adam(vs, ms, vvs, [gs[0], tf.ones((2, 3))])
    np.testing.assert_array_equal(vs[0].numpy(), before)  # nothing was half-updated


def test_kernel_shape_mismatch_slot():
    vs, ms, vvs, gs = _adam_args()
    ms[1] = _v((4,))
    with pytest.raises(INVALID, match=r"vars\[1\] and ms\[1\] do not have the same shape: \[3,2\] vs \[4\]"):
        _raw_adam(vs, ms, vvs, gs)


def test_kernel_dtype_mismatch():
    vs, ms, vvs, gs = _adam_args()
    vvs[0] = _v(dtype=np.float64)
    with pytest.raises(INVALID, match=r"vs\[0\] holds double but the gradients are float"):
        _raw_adam(vs, ms, vvs, gs)


def test_kernel_same_variable_twice():
    vs, ms, vvs, gs = _adam_args()
    with pytest.raises(INVALID, match=r"vars\[0\] and ms\[1\] are the same variable"):
        _raw_adam(vs, [ms[0], vs[0]], vvs, gs)


def test_kernel_non_scalar_hyperparameters():
    vs, ms, vvs, gs = _adam_args()
    with pytest.raises(INVALID, match=r"MpsMultiApplyAdam: lr must be a scalar, got shape \[2\]"):
        _raw_adam(vs, ms, vvs, gs, lr=tf.constant([0.1, 0.2]))
    with pytest.raises(INVALID, match=r"MpsMultiApplyAdam: step must be >= 1"):
        _raw_adam(vs, ms, vvs, gs, step=tf.constant(0, tf.int64))


def test_kernel_bad_clip_attr():
    v, g = _v(), tf.ones((3, 2))
    with pytest.raises(INVALID, match=r"MpsApplySgd: gradient_clip_min must be <= gradient_clip_max"):
        lib.mps_apply_sgd(var=v.handle, momentum_slot=[], grad=g, lr=tf.constant(0.1),
                          momentum=tf.constant(0.0, tf.float64), clip_gradient=True,
                          gradient_clip_min=1.0, gradient_clip_max=-1.0)


def test_kernel_optional_list_length():
    vs, ms, vvs, gs = _adam_args()
    with pytest.raises(INVALID, match=r"vhats must hold 0 or 2 variables, got 1"):
        lib.mps_multi_apply_adam(vars=[v.handle for v in vs], ms=[m.handle for m in ms],
                                 vs=[v.handle for v in vvs], vhats=[vs[0].handle], grads=gs, grads_sq=[],
                                 lr=0.1, step=tf.constant(1, tf.int64), beta1=tf.constant(0.9, tf.float64),
                                 beta2=tf.constant(0.9, tf.float64), epsilon=tf.constant(1e-7, tf.float64))


def test_kernel_handle_to_nothing():
    """A resource handle naming no variable."""
    vs, ms, vvs, gs = _adam_args(n=1)
    nothing = tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[3, 2], shared_name="tf_mps_test_no_such_variable")
    with pytest.raises(tf.errors.NotFoundError, match=r"vars\[0\] does not refer to a live resource variable"):
        lib.mps_multi_apply_adam(vars=[nothing], ms=[ms[0].handle], vs=[vvs[0].handle], vhats=[], grads=gs,
                                 grads_sq=[], lr=0.1, step=tf.constant(1, tf.int64),
                                 beta1=tf.constant(0.9, tf.float64), beta2=tf.constant(0.9, tf.float64),
                                 epsilon=tf.constant(1e-7, tf.float64))


def test_uninitialized_variable():
    """Graph mode: a variable used before its initializer ran."""
    with tf.Graph().as_default():
        v = tf.compat.v1.Variable(np.ones((2,), np.float32), use_resource=True)
        op = tf_mps.ops.apply_sgd(v, tf.ones((2,)), 0.1)
        with tf.compat.v1.Session() as sess:
            with pytest.raises(tf.errors.NotFoundError,
                               match=r"MpsApplySgd: var does not refer to a live resource variable \(deleted, never"):
                sess.run(op)


def test_shape_function_catches_mismatch_in_graph():
    """The raw op's shape function, at graph construction."""
    @tf.function
    def f(v, m, vv, g):
        return _raw_adam([v], [m], [vv], [g])

    v, m, vv = _v(), _v(value=0), _v(value=0)
    # Named as the kernel names them, not by input position.
    with pytest.raises(ValueError, match=r"MpsMultiApplyAdam: vars\[0\] and grads\[0\] do not have the same "
                                         r"shape: \[3,2\] vs \[4\]"):
        f(v, m, vv, tf.ones((4,)))


def test_shape_function_names_slots_and_squares():
    """A slot or a squared-gradient sum of the wrong shape, at graph construction."""
    v, m, vv = _v(), _v(value=0), _v((3, 3), value=0)

    @tf.function
    def slot():
        return _raw_adam([v], [m], [vv], [tf.ones((3, 2))])

    with pytest.raises(ValueError, match=r"vars\[0\] and vs\[0\] do not have the same shape: \[3,2\] vs \[3,3\]"):
        slot()
    vv2 = _v(value=0)

    @tf.function
    def square():
        return _raw_adam_sq([v], [m], [vv2], [tf.ones((3, 2))], [tf.ones((2, 3))])

    with pytest.raises(ValueError, match=r"grads\[0\] and grads_sq\[0\] do not have the same shape"):
        square()


def test_l1_of_nan_weight_is_nan():
    """sign(NaN) is NaN (tf.sign, np.sign): L1 regularization passes a NaN weight on."""
    v, m = tf.Variable([np.nan, 2.0]), tf.Variable([0.0, 0.0])
    tf_mps.ops.apply_sgd(v, tf.constant([1.0, 1.0]), 0.1, momentum=0.9, momentums=m,
                         regularization="l1", regularization_scale=0.0)
    assert np.isnan(m.numpy()[0]) and np.isfinite(m.numpy()[1])


def test_wrapper_catches_mismatch_while_tracing():
    """The Python wrapper names the pair (the kernel's wording) before any op exists."""
    @tf.function
    def f(v, m, vv, g):
        return tf_mps.ops.apply_adam(v, m, vv, g, 0.1, 1)

    v, m, vv = _v(), _v(value=0), _v(value=0)
    with pytest.raises(INVALID, match=r"MpsApplyAdam: var and grad do not have the same shape: \[3,2\] vs \[4\]"):
        f(v, m, vv, tf.ones((4,)))


# ------------------------------------------------------------- non-finite values
def test_nan_and_inf_gradients_follow_ieee():
    """Documented behaviour: NaN/Inf gradients poison exactly the elements they touch."""
    v, m, vv = _v((4,)), _v((4,), value=0), _v((4,), value=0)
    g = tf.constant([np.nan, np.inf, -np.inf, 1.0], tf.float32)
    tf_mps.ops.apply_adam(v, m, vv, g, 0.1, 1)
    w = v.numpy()
    assert np.isnan(w[0]) and np.isnan(w[1]) and np.isnan(w[2])  # inf/inf -> nan in Adam
    assert np.isfinite(w[3])
    s = _v((3,))
    tf_mps.ops.apply_sgd(s, tf.constant([np.nan, np.inf, 1.0]), 0.1)
    np.testing.assert_array_equal(np.isnan(s.numpy()), [True, False, False])
    assert s.numpy()[1] == -np.inf


def test_nan_survives_clipping():
    v = _v((2,))
    tf_mps.ops.apply_sgd(v, tf.constant([np.nan, 5.0]), 1.0, gradient_clip=(-1.0, 1.0))
    assert np.isnan(v.numpy()[0]) and v.numpy()[1] == 0.0


def test_empty_variable_is_fine():
    v, m, vv = _v((0, 3)), _v((0, 3)), _v((0, 3))
    tf_mps.ops.apply_adam([v, _v()], [m, _v(value=0)], [vv, _v(value=0)], [tf.ones((0, 3)), tf.ones((3, 2))], 0.1, 1)
    assert v.shape == (0, 3)


def test_kernel_grads_sq_shape_mismatch():
    vs, ms, vvs, gs = _adam_args()
    with pytest.raises((INVALID, ValueError), match=r"grads_sq\[1\]|squared-gradient sum"):
        _raw_adam_sq(vs, ms, vvs, gs, [tf.ones((3, 2)), tf.ones((2, 3))])


def test_kernel_nesterov_without_momentum_slots():
    v, g = _v(), tf.ones((3, 2))
    with pytest.raises(INVALID, match=r"MpsApplySgd: nesterov=True needs momentum slots \(momentum_slot\)"):
        lib.mps_apply_sgd(var=v.handle, momentum_slot=[], grad=g, lr=tf.constant(0.1),
                          momentum=tf.constant(0.9, tf.float64), nesterov=True)


def _raw_adam_sq(vs, ms, vvs, gs, sq):
    return lib.mps_multi_apply_adam(vars=[v.handle for v in vs], ms=[m.handle for m in ms],
                                    vs=[v.handle for v in vvs], vhats=[], grads=gs, grads_sq=sq,
                                    lr=tf.constant(0.1), step=tf.constant(1, tf.int64),
                                    beta1=tf.constant(0.9, tf.float64), beta2=tf.constant(0.999, tf.float64),
                                    epsilon=tf.constant(1e-7, tf.float64))
