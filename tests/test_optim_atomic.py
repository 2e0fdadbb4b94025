"""Nothing partially updated, nothing silently accepted (issue 8): every rejected call,
in eager mode and inside tf.function, leaves every variable, slot and the Keras
iteration counter exactly as it was, and its message names the argument as the caller
wrote it (the index in the caller's list)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_mps
from tf_mps import _lib
from tf_mps.keras import optimizers as mps_opt

lib = _lib.load()
INVALID = tf.errors.InvalidArgumentError
MODES = ["eager", "tf.function"]


def _snapshot(variables):
    return [np.array(v.numpy(), copy=True) for v in variables]


def _assert_unchanged(variables, before):
    for v, b in zip(variables, before, strict=True):
        np.testing.assert_array_equal(v.numpy(), b, err_msg=f"{v.name} changed by a rejected call")


def _call(mode, fn):
    """Runs fn() eagerly, or traced and run inside a tf.function."""
    if mode == "eager":
        return fn()

    @tf.function
    def traced():
        fn()  # the update op itself is not a return value

    return traced()


def _issue_example():
    a, b = tf.Variable(tf.ones(4)), tf.Variable(tf.ones(6))
    ma, va, vb = [tf.Variable(tf.ones(n)) for n in (4, 4, 6)]
    mb = tf.Variable(tf.ones(5))
    return [a, b], [ma, mb], [va, vb]


# ----------------------------------------------------------- the issue's examples
@pytest.mark.parametrize("mode", MODES)
def test_issue_example_slot_shape_rejected_before_dense_group_writes(mode):
    """A dense and a sparse gradient in one call, the sparse variable's slot misshapen:
    the message names the caller's vars[1]/ms[1], and `a` is not updated."""
    vs, ms, vvs = _issue_example()
    g = tf.IndexedSlices(tf.ones([1]), tf.constant([2]), tf.constant([6]))
    before = _snapshot(vs + ms + vvs)
    with pytest.raises(INVALID, match=r"MpsMultiApplyAdam: vars\[1\] and ms\[1\] do not have the same shape: "
                                      r"\[6\] vs \[5\]"):
        _call(mode, lambda: tf_mps.ops.apply_adam(vs, ms, vvs, [tf.ones(4), g], 0.1, 1))
    _assert_unchanged(vs + ms + vvs, before)


@pytest.mark.parametrize("index", [6, 100, -1], ids=["rows", "far", "negative"])
@pytest.mark.parametrize("mode", MODES)
def test_issue_example_sparse_index_out_of_range(mode, index):
    """Inside tf.function the dense group used to write while the sparse group's segment
    sum failed; negative indices used to be dropped silently."""
    a, b = tf.Variable(tf.ones(4)), tf.Variable(tf.ones(6))
    ms = [tf.Variable(tf.zeros(4)), tf.Variable(tf.zeros(6))]
    vvs = [tf.Variable(tf.zeros(4)), tf.Variable(tf.zeros(6))]
    g = tf.IndexedSlices(tf.ones([2]), tf.constant([0, index]), tf.constant([6]))
    before = _snapshot([a, b] + ms + vvs)
    with pytest.raises(INVALID, match=rf"MpsMultiApplyAdam: grads\[1\]: indices\[1\] = {index} is not in \[0, 6\)"):
        _call(mode, lambda: tf_mps.ops.apply_adam([a, b], ms, vvs, [tf.ones(4), g], 0.1, 1))
    _assert_unchanged([a, b] + ms + vvs, before)


@pytest.mark.parametrize("mode", MODES)
def test_issue_example_rmsprop_float32_and_float16_like_keras(mode):
    """Used to raise after updating the float32 variable (iterations stayed 0)."""
    init = [np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), np.linspace(0.5, -0.5, 4)]
    ours = [keras.Variable(init[0]), keras.Variable(init[1], dtype="float16")]
    ref = [keras.Variable(init[0]), keras.Variable(init[1], dtype="float16")]
    o, r = mps_opt.RMSProp(0.01), keras.optimizers.RMSprop(0.01)
    grads = [tf.constant(np.full((2, 3), 0.3, np.float32)), tf.constant(np.full(4, -0.2, np.float16))]
    _call(mode, lambda: o.apply(grads, ours))
    r.apply(grads, ref)
    assert int(o.iterations) == 1
    for a, b in zip(ours, ref):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# ------------------------------------------------------- the class of bug: ops layer
def _adam_lists(n=3):
    vs = [tf.Variable(np.full((4, 2), i + 1.0, np.float32)) for i in range(n)]
    return vs, [tf.Variable(tf.zeros((4, 2))) for _ in range(n)], [tf.Variable(tf.zeros((4, 2))) for _ in range(n)]


def _bad_last(kind):
    """A call whose last gradient is bad in one way (the earlier ones are fine)."""
    if kind == "shape":
        return tf.ones((2, 4))
    if kind == "dtype":
        return tf.ones((4, 2), tf.float64)
    if kind == "rows":
        return tf.IndexedSlices(tf.ones((1, 3)), tf.constant([0]), tf.constant([4, 2]))
    if kind == "same_count":
        return tf.IndexedSlices(tf.ones((1, 1, 2)), tf.constant([0]), tf.constant([4, 2]))
    if kind == "index":
        return tf.IndexedSlices(tf.ones((1, 2)), tf.constant([4]), tf.constant([4, 2]))
    if kind == "negative":
        return tf.IndexedSlices(tf.ones((1, 2)), tf.constant([-2]), tf.constant([4, 2]))
    if kind == "none":
        return None
    raise ValueError(kind)


BAD = {
    "shape": r"vars\[2\] and grads\[2\] do not have the same shape: \[4,2\] vs \[2,4\]",
    "dtype": r"grads\[2\] has dtype float64 but its variable holds float32",
    "rows": r"grads\[2\]: Must have updates.shape = indices.shape \+ params.shape\[1:\], got updates.shape \[1,3\]",
    "same_count": r"grads\[2\]: Must have updates.shape = indices.shape \+ params.shape\[1:\], got updates.shape "
                  r"\[1,1,2\]",
    "index": r"grads\[2\]: indices\[0\] = 4 is not in \[0, 4\)",
    "negative": r"grads\[2\]: indices\[0\] = -2 is not in \[0, 4\)",
    "none": r"grads\[2\] is None",
}


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("rule", ["adam", "sgd", "rmsprop"])
@pytest.mark.parametrize("mode", MODES)
def test_rejected_call_changes_nothing(mode, rule, kind):
    """Dense and sparse gradients mixed in one call, the last one bad: nothing moves."""
    vs, s1, s2 = _adam_lists()
    good_sparse = tf.IndexedSlices(tf.ones((2, 2)), tf.constant([1, 1]), tf.constant([4, 2]))
    grads = [tf.ones((4, 2)), good_sparse, _bad_last(kind)]
    before = _snapshot(vs + s1 + s2)
    op = {"adam": "MpsMultiApplyAdam", "sgd": "MpsMultiApplySgd", "rmsprop": "MpsMultiApplyRmsProp"}[rule]

    def step():
        if rule == "adam":
            return tf_mps.ops.apply_adam(vs, s1, s2, grads, 0.1, 1)
        if rule == "sgd":
            return tf_mps.ops.apply_sgd(vs, grads, 0.1, 0.9, s1)
        return tf_mps.ops.apply_rmsprop(vs, s1, grads, 0.1, momentums=s2)

    with pytest.raises(INVALID, match=rf"{op}: {BAD[kind]}"):
        _call(mode, step)
    _assert_unchanged(vs + s1 + s2, before)


def test_mixed_dense_and_sparse_is_one_op():
    """One call is one op (dense and sparse together): all-or-nothing by construction."""
    vs, ms, vvs = _adam_lists(2)
    g = tf.IndexedSlices(tf.ones((1, 2)), tf.constant([3]), tf.constant([4, 2]))
    graph = tf.function(lambda: (tf_mps.ops.apply_adam(vs, ms, vvs, [tf.ones((4, 2)), g], 0.1, 1), None)[1]
                        ).get_concrete_function().graph
    updates = [op for op in graph.get_operations() if op.type.startswith("MpsMultiApply")]
    assert len(updates) == 1
    assert updates[0].get_attr("sq_vars") == [1]


def test_raw_op_sq_vars_validation():
    vs, ms, vvs = _adam_lists(2)
    args = dict(vars=[v.handle for v in vs], ms=[m.handle for m in ms], vs=[v.handle for v in vvs], vhats=[],
                grads=[tf.ones((4, 2))] * 2, lr=tf.constant(0.1), step=tf.constant(1, tf.int64),
                beta1=tf.constant(0.9, tf.float64), beta2=tf.constant(0.999, tf.float64),
                epsilon=tf.constant(1e-7, tf.float64))
    with pytest.raises(INVALID, match=r"sq_vars must be increasing variable indices in \[0, 2\), got 2"):
        lib.mps_multi_apply_adam(grads_sq=[tf.ones((4, 2))], sq_vars=[2], **args)
    with pytest.raises(INVALID, match=r"grads_sq must hold one tensor per entry of sq_vars \(2\), got 1"):
        lib.mps_multi_apply_adam(grads_sq=[tf.ones((4, 2))], sq_vars=[0, 1], **args)
    with pytest.raises(INVALID, match=r"vars\[1\] and grads_sq\[0\] do not have the same shape: \[4,2\] vs \[8\]"):
        lib.mps_multi_apply_adam(grads_sq=[tf.ones((8,))], sq_vars=[1], **args)


# ---------------------------------------------------- the class of bug: Keras classes
def _keras_pair(dtypes=("float32", "float64"), weight_decay=0.01, **kwargs):
    vs = [keras.Variable(np.ones((4, 3)), dtype=dtypes[0]), keras.Variable(np.ones((5, 2)), dtype=dtypes[1])]
    return vs, mps_opt.Adam(0.01, weight_decay=weight_decay, **kwargs)


def _keras_state(opt, variables):
    return list(variables) + list(opt.variables)  # opt.variables includes iterations


@pytest.mark.parametrize("bad", ["index", "negative", "shape", "rows"])
@pytest.mark.parametrize("mode", MODES)
def test_keras_rejected_step_changes_nothing(mode, bad):
    """Two dtype groups (two ops), weight decay and EMA on: a bad gradient for the second
    group leaves variables, slots, EMA copies and iterations as they were."""
    vs, opt = _keras_pair(use_ema=True)
    good = [tf.ones((4, 3)), tf.ones((5, 2), tf.float64)]
    opt.apply(good, vs)  # built, one step done
    state = _keras_state(opt, vs)
    before = _snapshot(state)
    bad_grad = {
        "index": tf.IndexedSlices(tf.ones((1, 2), tf.float64), tf.constant([5]), tf.constant([5, 2])),
        "negative": tf.IndexedSlices(tf.ones((1, 2), tf.float64), tf.constant([-1]), tf.constant([5, 2])),
        "shape": tf.ones((2, 5), tf.float64),
        "rows": tf.IndexedSlices(tf.ones((1, 1, 2), tf.float64), tf.constant([0]), tf.constant([5, 2])),
    }[bad]
    error, match = {
        "index": (INVALID, r"Adam: the gradient of variable '.*': indices\[0\] = 5 is not in \[0, 5\)"),
        "negative": (INVALID, r"Adam: the gradient of variable '.*': indices\[0\] = -1 is not in \[0, 5\)"),
        "shape": (ValueError, r"Adam: the gradient of variable '.*' has shape \[2,5\] but the variable has "
                              r"shape \[5,2\]"),
        "rows": (ValueError, r"Adam: the sparse gradient of variable '.*' has values of shape \[1,1,2\]; "
                             r"expected \[indices\] \+ \[2\]"),
    }[bad]
    with pytest.raises(error, match=match):
        _call(mode, lambda: opt.apply([good[0], bad_grad], vs))
    _assert_unchanged(state, before)
    assert int(opt.iterations) == 1


def test_keras_groups_run_after_every_group_is_checked():
    """Graph mode: each dtype group's op has control inputs reaching the other group's
    sparse-gradient check, so neither can write before both are checked."""
    vs, opt = _keras_pair(weight_decay=None)
    opt.build(vs)
    grads = [tf.IndexedSlices(tf.ones((1, 3)), tf.constant([0]), tf.constant([4, 3])),
             tf.IndexedSlices(tf.ones((1, 2), tf.float64), tf.constant([1]), tf.constant([5, 2]))]
    graph = tf.function(lambda: opt.apply(grads, vs)).get_concrete_function().graph
    updates = [op for op in graph.get_operations() if op.type == "MpsMultiApplyAdam"]
    assert len(updates) == 2

    def ancestors(op):
        seen, todo = set(), [op]
        while todo:
            o = todo.pop()
            for x in list(o.inputs) + list(o.control_inputs):
                x = x.op if hasattr(x, "op") else x
                if x not in seen:
                    seen.add(x)
                    todo.append(x)
        return seen

    checks = [op for op in graph.get_operations() if op.type == "MpsCheckSparseGradient"]
    labels = {op.get_attr("label").decode() for op in checks}
    for u in updates:
        reached = {op.get_attr("label").decode() for op in ancestors(u) if op.type == "MpsCheckSparseGradient"}
        assert reached == labels, (u.name, reached, labels)


# ----------------------------------------------------------------- validation holes
def test_sparse_rows_of_wrong_shape_same_element_count():
    """apply_sgd(var[2,6], IndexedSlices(ones[1,3,2], [0])) used to update row 0."""
    v = tf.Variable(tf.ones((2, 6)))
    with pytest.raises(INVALID, match=r"MpsApplySgd: grad: Must have updates.shape = indices.shape \+ "
                                      r"params.shape\[1:\], got updates.shape \[1,3,2\], indices.shape \[1\], "
                                      r"params.shape \[2,6\]"):
        tf_mps.ops.apply_sgd(v, tf.IndexedSlices(tf.ones((1, 3, 2)), tf.constant([0]), tf.constant([2, 6])), 0.1)
    np.testing.assert_array_equal(v.numpy(), np.ones((2, 6)))


def test_sparse_checks_at_run_time_when_shapes_are_unknown():
    """The check op repeats the scatter rule on runtime shapes (here: unknown while tracing)."""
    v = tf.Variable(tf.ones((2, 6)))
    f = tf.function(lambda values, idx: (tf_mps.ops.apply_sgd(v, tf.IndexedSlices(values, idx), 0.1), None)[1],
                    input_signature=[tf.TensorSpec(None, tf.float32), tf.TensorSpec(None, tf.int32)])
    with pytest.raises(INVALID, match=r"MpsApplySgd: grad: Must have updates.shape = indices.shape \+ params"
                                      r".shape\[1:\], got updates.shape \[1,3,2\], indices.shape \[1\]"):
        f(tf.ones((1, 3, 2)), tf.constant([0]))
    with pytest.raises(INVALID, match=r"MpsApplySgd: grad: the indices of an IndexedSlices gradient must be a "
                                      r"vector, got shape \[1,1\]"):
        f(tf.ones((1, 6)), tf.constant([[0]]))
    np.testing.assert_array_equal(v.numpy(), np.ones((2, 6)))
    f(tf.ones((2, 6)), tf.constant([1, 1]))  # a valid call through the same graph
    np.testing.assert_allclose(v.numpy(), [[1.0] * 6, [0.8] * 6], rtol=1e-6)


def test_sparse_gradient_other_holes():
    v = tf.Variable(tf.ones((2, 6)))
    s = tf.Variable(1.0)
    with pytest.raises(INVALID, match=r"MpsApplySgd: grad is sparse \(IndexedSlices\) but its variable is a scalar"):
        tf_mps.ops.apply_sgd(s, tf.IndexedSlices(tf.ones((1,)), tf.constant([0])), 0.1)
    with pytest.raises(INVALID, match=r"indices of an IndexedSlices gradient must be int32 or int64, got float32"):
        tf_mps.ops.apply_sgd(v, tf.IndexedSlices(tf.ones((1, 6)), tf.constant([0.0])), 0.1)
    with pytest.raises(INVALID, match=r"MpsCheckSparseGradient: indices\[0\] = 9 is not in \[0, 2\)"):
        lib.mps_check_sparse_gradient(indices=tf.constant([9], tf.int64), values_shape=tf.constant([1, 6], tf.int64),
                                      var_shape=tf.constant([2, 6], tf.int64))


def test_gradient_clip_must_be_a_pair():
    v, g = tf.Variable(tf.ones(3)), tf.ones(3)
    for bad in ([1, 2, 3], (1.0,), 5, "ab", (0.0, float("nan")), (None, 1.0), (True, 2.0)):
        with pytest.raises(INVALID, match=r"MpsApplySgd: gradient_clip must be None or a pair \(min, max\) of "
                                          r"numbers with min <= max, got"):
            tf_mps.ops.apply_sgd(v, g, 0.1, gradient_clip=bad)
        with pytest.raises(ValueError, match=r"SGD: gradient_clip must be None or a pair"):
            mps_opt.SGD(gradient_clip=bad)
    np.testing.assert_array_equal(v.numpy(), np.ones(3))
    tf_mps.ops.apply_sgd(v, g, 1.0, gradient_clip=np.array([-0.5, 0.5]))  # an array pair is fine
    np.testing.assert_array_equal(v.numpy(), np.full(3, 0.5))
    tf_mps.ops.apply_sgd(v, g, 1.0, gradient_clip=(-np.inf, 0.25))  # one-sided clipping
    np.testing.assert_array_equal(v.numpy(), np.full(3, 0.25))


@pytest.mark.parametrize("name, value", [("regularization_scale", None), ("regularization_scale", "0.1"),
                                         ("gradient_rescale", None), ("gradient_rescale", float("inf")),
                                         ("gradient_rescale", 1e40), ("regularization", 5),
                                         ("semantics", None)])
def test_options_name_the_argument(name, value):
    v, g = tf.Variable(tf.ones(3)), tf.ones(3)
    with pytest.raises(INVALID, match=rf"MpsApplySgd: {name} must be"):
        tf_mps.ops.apply_sgd(v, g, 0.1, **{name: value})
    with pytest.raises(ValueError, match=rf"Adam: {name} must be"):
        mps_opt.Adam(**{name: value})


@pytest.mark.parametrize("name, value, expected", [
    ("beta_1", "x", "a real number"), ("beta_2", None, "a real number"), ("epsilon", [1e-7, 1e-8], "a scalar"),
    ("learning_rate", "fast", "a real number"), ("learning_rate", tf.constant(True), "a real number"),
    ("step", 1.5, "an integer"), ("step", tf.constant(1.0), "an integer"), ("step", 0, ">= 1"),
])
def test_hyper_parameters_name_the_argument(name, value, expected):
    vs, ms, vvs = _adam_lists(1)
    args = dict(learning_rate=0.1, step=1)
    args[name] = value
    with pytest.raises(INVALID, match=rf"MpsMultiApplyAdam: {name} must be {expected}"):
        tf_mps.ops.apply_adam(vs, ms, vvs, [tf.ones((4, 2))], **args)
    _assert_unchanged(vs, [np.ones((4, 2))])


def test_keras_hyper_parameters_checked_in_constructor():
    with pytest.raises(ValueError, match=r"Adam: beta_1 must be a real number or a scalar float tensor, got 'x'"):
        mps_opt.Adam(beta_1="x")
    with pytest.raises(ValueError, match=r"RMSProp: rho must be a real number or a scalar float tensor, got None"):
        mps_opt.RMSProp(rho=None)
    mps_opt.Adam(beta_1=tf.constant(0.8))  # Keras allows a constant float tensor


def test_rmsprop_and_sgd_hyper_parameters():
    v, s = tf.Variable(tf.ones(3)), tf.Variable(tf.zeros(3))
    with pytest.raises(INVALID, match=r"MpsApplyRmsProp: rho must be a real number"):
        tf_mps.ops.apply_rmsprop(v, s, tf.ones(3), 0.1, rho="x")
    with pytest.raises(INVALID, match=r"MpsApplySgd: momentum must be a real number"):
        tf_mps.ops.apply_sgd(v, tf.ones(3), 0.1, momentum=None, momentums=s)
    with pytest.raises(INVALID, match=r"MpsApplySgd: nesterov must be True or False, got 'yes'"):
        tf_mps.ops.apply_sgd(v, tf.ones(3), 0.1, 0.9, s, nesterov="yes")
    _assert_unchanged([v, s], [np.ones(3), np.zeros(3)])


def test_float16_gradient_for_float32_variable():
    """tf-mps's own messages, in the wrapper and in the kernel (not TF's generic ones)."""
    v = tf.Variable(tf.ones(3))
    with pytest.raises(INVALID, match=r"MpsApplySgd: grad has dtype float16 but its variable holds float32"):
        tf_mps.ops.apply_sgd(v, tf.ones(3, tf.float16), 0.1)
    with pytest.raises(INVALID, match=r"MpsApplySgd: grad has dtype float16 but its variable holds float32"):
        tf_mps.ops.apply_sgd(v, tf.IndexedSlices(tf.ones((1,), tf.float16), tf.constant([0])), 0.1)
    with pytest.raises(INVALID, match=r"MpsApplySgd: var holds float but the gradients are half; variables, "
                                      r"slots and gradients must share one dtype"):
        lib.mps_apply_sgd(var=v.handle, momentum_slot=[], grad=tf.ones(3, tf.float16),
                          lr=tf.constant(0.1, tf.float16), momentum=tf.constant(0.0, tf.float64))


@pytest.fixture
def on_cpu():
    # tf.stack of resource handles has no kernel on a GPU-like device (nor on the tf-mps
    # device): these malformed-handle cases are built on the CPU.
    with tf.device("/CPU:0"):
        yield


def test_resource_inputs_must_be_one_handle(on_cpu):
    v = tf.Variable(tf.ones(3))
    handles = tf.stack([v.handle, v.handle])
    sgd = dict(momentum_slot=[], grad=tf.ones(3), lr=tf.constant(0.1), momentum=tf.constant(0.0, tf.float64))
    with pytest.raises(INVALID, match=r"MpsApplySgd: var must be one resource variable handle \(a scalar\), got "
                                      r"shape \[2\]"):
        lib.mps_apply_sgd(var=handles, **sgd)
    # An empty handle list: eager placement reads the first handle before any kernel
    # runs, so TensorFlow's runtime answers there ("Empty resource handle [Op:MpsApplySgd]");
    # inside a graph the kernel does, and so it does eagerly once eager ops no longer run
    # as functions (tf_mps.device.load() turns that off).
    with pytest.raises(INVALID, match=r"(Empty resource handle|MpsApplySgd: var must be one resource variable "
                                      r"handle \(a scalar\), got shape \[0\]) \[Op:MpsApplySgd\]"):
        lib.mps_apply_sgd(var=handles[:0], **sgd)

    @tf.function
    def empty_in_graph():
        lib.mps_apply_sgd(var=tf.stack([v.handle, v.handle])[:0], **sgd)

    with pytest.raises(INVALID, match=r"MpsApplySgd: var must be one resource variable handle \(a scalar\), got "
                                      r"shape \[0\]"):
        empty_in_graph()
    empty = tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[3], shared_name="")
    with pytest.raises(tf.errors.NotFoundError, match=r"MpsApplySgd: var does not refer to a live resource variable"):
        lib.mps_apply_sgd(var=empty, **sgd)
    np.testing.assert_array_equal(v.numpy(), np.ones(3))


def test_run_all_orders_every_group_after_every_check():
    """tf_mps.ops.optim.run_all (several prepared calls, e.g. one per dtype): in a graph
    each update op waits for the other groups' checked gradients too."""
    from tf_mps.ops import optim

    a, b = tf.Variable(tf.ones((4, 2))), tf.Variable(tf.ones((3,), tf.float64))
    ga = tf.IndexedSlices(tf.ones((1, 2)), tf.constant([1]), tf.constant([4, 2]))
    gb = tf.IndexedSlices(tf.ones((1,), tf.float64), tf.constant([7]), tf.constant([3]))

    def step():
        optim.run_all([optim.prepare_sgd([a], [ga], 0.1), optim.prepare_sgd([b], [gb], 0.1)])

    graph = tf.function(step).get_concrete_function().graph
    checks = {op.name for op in graph.get_operations() if op.type == "MpsCheckSparseGradient"}
    for u in [op for op in graph.get_operations() if op.type == "MpsMultiApplySgd"]:
        seen, todo = set(), [u]
        while todo:
            o = todo.pop()
            for x in [t.op for t in o.inputs] + list(o.control_inputs):
                if x.name not in seen:
                    seen.add(x.name)
                    todo.append(x)
        assert checks <= seen, (u.name, checks - seen)
    with pytest.raises(INVALID, match=r"MpsMultiApplySgd: grads\[0\]: indices\[0\] = 7 is not in \[0, 3\)"):
        tf.function(step)()
    _assert_unchanged([a, b], [np.ones((4, 2)), np.ones(3)])
