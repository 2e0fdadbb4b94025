"""tf_mps.keras.optimizers against keras.optimizers: 100 steps on random problems, dense
and sparse gradients, float32 and float64; results must agree to 1e-6 relative (they are
in fact bit-identical: the kernels repeat Keras's operations in Keras's order)."""

import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_mps
from conftest import assert_close, assert_rel_close

SHAPES = [(5, 7), (13,), (3, 4, 2), (64,), (20, 6)]
STEPS = 100

CASES = {
    "adam": ("Adam", "Adam", dict(learning_rate=0.01)),
    "adam_amsgrad": ("Adam", "Adam", dict(learning_rate=0.01, amsgrad=True)),
    "adam_custom": ("Adam", "Adam", dict(learning_rate=0.003, beta_1=0.8, beta_2=0.95, epsilon=1e-4)),
    "sgd": ("SGD", "SGD", dict(learning_rate=0.05)),
    "sgd_momentum": ("SGD", "SGD", dict(learning_rate=0.05, momentum=0.9)),
    "sgd_nesterov": ("SGD", "SGD", dict(learning_rate=0.05, momentum=0.9, nesterov=True)),
    "rmsprop": ("RMSProp", "RMSprop", dict(learning_rate=0.01)),
    "rmsprop_centered": ("RMSProp", "RMSprop", dict(learning_rate=0.01, centered=True)),
    "rmsprop_momentum": ("RMSProp", "RMSprop", dict(learning_rate=0.01, momentum=0.5)),
    "rmsprop_centered_momentum": (
        "RMSProp", "RMSprop", dict(learning_rate=0.01, centered=True, momentum=0.5, rho=0.8)),
}


def _gradients(rng, shapes, dtype, sparse, duplicate=True):
    grads = []
    for shape in shapes:
        if sparse and len(shape) == 2:
            # Embedding-like: a few rows, with a repeated index (duplicates add up)
            # unless `duplicate` is off.
            if duplicate:
                idx = rng.integers(0, shape[0], size=shape[0] // 2)
                idx[-1] = idx[0]
            else:
                idx = rng.permutation(shape[0])[: shape[0] // 2]
            values = rng.standard_normal((len(idx), shape[1])).astype(dtype)
            grads.append(tf.IndexedSlices(tf.constant(values), tf.constant(idx), tf.constant(shape)))
        else:
            grads.append(tf.constant(rng.standard_normal(shape).astype(dtype)))
    return grads


def _run_pair(case, dtype, sparse, steps=STEPS, **extra):
    ours_name, keras_name, kwargs = CASES[case]
    kwargs = {**kwargs, **extra}
    rng = np.random.default_rng(zlib.crc32(f"{case}/{sparse}/{np.dtype(dtype).name}".encode()))
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    ours_vars = [keras.Variable(x, dtype=dtype) for x in init]
    ref_vars = [keras.Variable(x, dtype=dtype) for x in init]
    ours = getattr(tf_mps.keras.optimizers, ours_name)(**kwargs)
    ref = getattr(keras.optimizers, keras_name)(**kwargs)
    for _ in range(steps):
        grads = _gradients(rng, SHAPES, dtype, sparse)
        ours.apply(grads, ours_vars)
        ref.apply(grads, ref_vars)
    return ours, ref, ours_vars, ref_vars


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_keras_100_steps(case, sparse, device):
    ours, ref, ours_vars, ref_vars = _run_pair(case, np.float32, sparse)
    for a, b in zip(ours_vars, ref_vars):
        assert_rel_close(a.numpy(), b.numpy(), 1e-6, what=f"{case} variable {a.path}")
    for a, b in zip(ours.variables, ref.variables):
        assert_rel_close(a.numpy(), b.numpy(), 1e-6, what=f"{case} slot {a.path}")


@pytest.mark.parametrize("case", ["adam_amsgrad", "sgd_nesterov", "rmsprop_centered_momentum"])
def test_matches_keras_float64(case, device):
    _, _, ours_vars, ref_vars = _run_pair(case, np.float64, sparse=False, steps=30)
    for a, b in zip(ours_vars, ref_vars):
        assert_close(a.numpy(), b.numpy(), rtol=1e-12, what=case)


@pytest.mark.parametrize(
    "extra",
    [
        dict(weight_decay=0.01),
        dict(clipnorm=0.5),
        dict(clipvalue=0.1),
        dict(global_clipnorm=1.0),
        dict(use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=7),
        dict(learning_rate=keras.optimizers.schedules.ExponentialDecay(0.01, 10, 0.9)),
        dict(gradient_accumulation_steps=3),
        dict(loss_scale_factor=128.0),
    ],
    ids=["weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "ema", "schedule",
         "accumulation", "loss_scale_factor"],
)
@pytest.mark.parametrize("case", ["adam", "sgd_momentum", "rmsprop_centered"])
def test_keras_options_match(case, extra, device):
    if "learning_rate" in extra:
        extra = dict(extra, learning_rate=keras.optimizers.schedules.ExponentialDecay(0.01, 10, 0.9))
    ours, ref, ours_vars, ref_vars = _run_pair(case, np.float32, sparse=False, steps=20, **extra)
    for a, b in zip(ours_vars, ref_vars):
        assert_rel_close(a.numpy(), b.numpy(), 1e-6, what=f"{case} {extra}")


def test_two_dtypes_in_one_model_match_keras(device):
    """Variables of two dtypes in one model (one fused op per dtype group): each like Keras."""
    rng = np.random.default_rng(3)
    init32, init64 = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(5)
    ours = [keras.Variable(init32), keras.Variable(init64, dtype="float64")]
    ref = [keras.Variable(init32), keras.Variable(init64, dtype="float64")]
    o, r = tf_mps.keras.optimizers.Adam(0.01), keras.optimizers.Adam(0.01)
    for _ in range(10):
        g = [tf.constant(rng.standard_normal((4, 3)).astype(np.float32)), tf.constant(rng.standard_normal(5))]
        o.apply(g, ours)
        r.apply(g, ref)
    for a, b in zip(ours, ref):
        assert_close(a.numpy(), b.numpy(), rtol=1e-6)


def test_gradient_cast_to_variable_dtype(device):
    """Keras casts each gradient to its variable's dtype; so do the fused optimizers."""
    v_ours, v_ref = keras.Variable(np.ones(3, np.float32)), keras.Variable(np.ones(3, np.float32))
    g = tf.constant([0.5, -1.0, 2.0], tf.float64)
    tf_mps.keras.optimizers.SGD(0.1).apply([g], [v_ours])
    keras.optimizers.SGD(0.1).apply([g], [v_ref])
    assert_close(v_ours.numpy(), v_ref.numpy(), rtol=0)


def test_low_level_multi_op_matches_keras(device):
    """tf_mps.ops.apply_adam on plain tf.Variables (the multi-tensor op) equals Keras."""
    rng = np.random.default_rng(7)
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    vs = [tf.Variable(x) for x in init]
    ms = [tf.Variable(tf.zeros_like(x)) for x in init]
    vvs = [tf.Variable(tf.zeros_like(x)) for x in init]
    ref_vars = [keras.Variable(x) for x in init]
    ref = keras.optimizers.Adam(0.01)
    for step in range(1, 51):
        grads = [tf.constant(rng.standard_normal(s).astype(np.float32)) for s in SHAPES]
        tf_mps.ops.apply_adam(vs, ms, vvs, grads, 0.01, step)
        ref.apply(grads, ref_vars)
    for a, b in zip(vs, ref_vars):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("case", ["adam_amsgrad", "sgd_nesterov", "rmsprop_centered_momentum"])
def test_variables_larger_than_a_work_chunk(case):
    """Variables spanning several 32K-element work units (and a ragged last one) update
    exactly like Keras's, as do tiny ones in the same call."""
    ours_name, keras_name, kwargs = CASES[case]
    rng = np.random.default_rng(11)
    shapes = [(70001,), (3,), (256, 300)]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    ours_vars, ref_vars = [keras.Variable(x) for x in init], [keras.Variable(x) for x in init]
    ours = getattr(tf_mps.keras.optimizers, ours_name)(**kwargs)
    ref = getattr(keras.optimizers, keras_name)(**kwargs)
    for _ in range(5):
        grads = [tf.constant(rng.standard_normal(s).astype(np.float32)) for s in shapes]
        ours.apply(grads, ours_vars)
        ref.apply(grads, ref_vars)
    for a, b in zip(ours_vars, ref_vars, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("case", ["adam", "sgd_momentum", "rmsprop_centered"])
def test_float32_gradient_for_float64_variable(case, sparse, device):
    """Keras casts each gradient to its variable's dtype (IndexedSlices values too): a
    float32 gradient updates a float64 variable exactly as Keras's does."""
    ours_name, keras_name, kwargs = CASES[case]
    rng = np.random.default_rng(21)
    init = rng.standard_normal((6, 4))
    ours_v, ref_v = keras.Variable(init, dtype="float64"), keras.Variable(init, dtype="float64")
    ours = getattr(tf_mps.keras.optimizers, ours_name)(**kwargs)
    ref = getattr(keras.optimizers, keras_name)(**kwargs)
    for _ in range(5):
        values = rng.standard_normal((3, 4)).astype(np.float32)
        if sparse:
            g = tf.IndexedSlices(tf.constant(values), tf.constant([0, 2, 5]), tf.constant([6, 4]))
        else:
            g = tf.constant(rng.standard_normal((6, 4)).astype(np.float32))
        ours.apply([g], [ours_v])
        ref.apply([g], [ref_v])
    assert ours_v.dtype == "float64"
    np.testing.assert_array_equal(ours_v.numpy(), ref_v.numpy())


# The Keras classes' tf-mps options against tf_mps.ops with the same options (identical
# calls underneath) and, in float64, against the float64 reference.
KERAS_OPTIONS = {
    "mps": dict(semantics="mps"),
    "clip": dict(gradient_clip=(-0.3, 0.4)),
    "rescale": dict(gradient_rescale=0.5),
    "l1": dict(regularization="l1", regularization_scale=0.01),
    "l2": dict(regularization="l2", regularization_scale=0.02),
    "all_mps": dict(semantics="mps", gradient_rescale=2.0, gradient_clip=(-1.0, 1.0), regularization="l2",
                    regularization_scale=0.01),
}


def _ops_step(rule, vs, slots, grads, lr, t, opts):
    if rule == "adam":
        return tf_mps.ops.apply_adam(vs, slots[0], slots[1], grads, lr, t, 0.9, 0.999, 1e-7, slots[2], **opts)
    if rule == "sgd":
        return tf_mps.ops.apply_sgd(vs, grads, lr, 0.9, slots[0], True, **opts)
    return tf_mps.ops.apply_rmsprop(vs, slots[0], grads, lr, 0.9, 0.5, 1e-7, slots[1], slots[2], **opts)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("opts", sorted(KERAS_OPTIONS))
@pytest.mark.parametrize("rule", ["adam", "sgd", "rmsprop"])
def test_keras_class_options_match_ops_and_reference(rule, opts, dtype):
    import reference as refm

    o = KERAS_OPTIONS[opts]
    make = {"adam": lambda: tf_mps.keras.optimizers.Adam(0.01, amsgrad=True, **o),
            "sgd": lambda: tf_mps.keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True, **o),
            "rmsprop": lambda: tf_mps.keras.optimizers.RMSProp(0.01, momentum=0.5, centered=True, **o)}[rule]
    lr = {"adam": 0.01, "sgd": 0.05, "rmsprop": 0.01}[rule]
    rng = np.random.default_rng(zlib.crc32(f"{rule}/{opts}".encode()))
    shapes = [(5, 3), (7,)]
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    kvars = [keras.Variable(x, dtype=dtype) for x in init]
    tvars = [tf.Variable(x) for x in init]
    nslots = {"adam": 3, "sgd": 1, "rmsprop": 3}[rule]
    slots = [[tf.Variable(np.zeros_like(x)) for x in init] for _ in range(nslots)]
    ref_w = [x.astype(np.float64) for x in init]
    ref_s = [[np.zeros_like(x) for x in ref_w] for _ in range(nslots)]
    opt = make()
    lr_t = float(np.float32(lr))  # Keras's learning rate is a float32 variable
    clip = o.get("gradient_clip")
    f32 = lambda x: float(np.float32(x))  # noqa: E731  the options are float32
    for t in range(1, 11):
        gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
        opt.apply([tf.constant(g) for g in gs], kvars)
        _ops_step(rule, tvars, slots, [tf.constant(g) for g in gs], tf.constant(lr_t, dtype), t, o)
        sem = o.get("semantics", "keras")
        for i, g in enumerate(gs):
            g = refm.transform_gradient(g.astype(np.float64), ref_w[i], f32(o.get("gradient_rescale", 1.0)),
                                        None if clip is None else (f32(clip[0]), f32(clip[1])),
                                        o.get("regularization"), f32(o.get("regularization_scale", 0.0)))
            if rule == "adam":
                ref_w[i], ref_s[0][i], ref_s[1][i], ref_s[2][i] = refm.adam(
                    ref_w[i], ref_s[0][i], ref_s[1][i], ref_s[2][i], g, lr_t, t, 0.9, 0.999, 1e-7, sem)
            elif rule == "sgd":
                mu = f32(0.9) if sem == "keras" else 0.9
                ref_w[i], ref_s[0][i] = refm.sgd(ref_w[i], ref_s[0][i], g, lr_t, mu, True, sem)
            else:
                ref_w[i], ref_s[0][i], ref_s[1][i], ref_s[2][i] = refm.rmsprop(
                    ref_w[i], ref_s[0][i], ref_s[1][i], ref_s[2][i], g, lr_t, 0.9, 0.5, 1e-7, sem)
    for k, tv, r in zip(kvars, tvars, ref_w):
        np.testing.assert_array_equal(k.numpy(), tv.numpy())  # the class runs exactly these ops
        assert_rel_close(k.numpy(), r, {np.float32: 5e-5, np.float64: 1e-12}[dtype], what=f"{rule} {opts}")


@pytest.mark.parametrize("case", ["adam_amsgrad", "sgd_nesterov", "rmsprop_centered_momentum"])
def test_many_parallel_chunks_with_a_ragged_end(case):
    """The CPU kernel cuts the list into 32K-element units (optim_cpu.cc, kChunk) and the
    thread pool's ParallelFor hands out runs of units (tf_glue.cc CpuParallelFor: up to
    8 runs per thread). 41 units (39 full, one of 1234 elements, one for the 5-element
    variable) split into runs of 2-3 units on 2-5 threads leave a short last run and a
    short last unit; every element of the result must still equal Keras's."""
    ours_name, keras_name, kwargs = CASES[case]
    rng = np.random.default_rng(17)
    shapes = [(39 * 32768 + 1234,), (5,)]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    ours_vars, ref_vars = [keras.Variable(x) for x in init], [keras.Variable(x) for x in init]
    ours = getattr(tf_mps.keras.optimizers, ours_name)(**kwargs)
    ref = getattr(keras.optimizers, keras_name)(**kwargs)
    for _ in range(2):
        grads = [tf.constant(rng.standard_normal(s).astype(np.float32)) for s in shapes]
        ours.apply(grads, ours_vars)
        ref.apply(grads, ref_vars)
    for a, b in zip(ours_vars + list(ours.variables), ref_vars + list(ref.variables), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_amsgrad_keeps_the_maximum():
    """A large gradient, then small ones: v decays but vhat keeps the maximum, so AMSGrad's
    steps are much smaller than Adam's. Float64 and exact against Keras, and the steps
    against the reference to 1e-12: dropping the max cannot hide in a tolerance."""
    import reference as refm

    w0 = np.linspace(-1.0, 1.0, 8)
    ours_v, ref_v = keras.Variable(w0, dtype="float64"), keras.Variable(w0, dtype="float64")
    # beta_2 = 0.9: v forgets the large gradients within the run, vhat does not.
    ours = tf_mps.keras.optimizers.Adam(0.01, beta_2=0.9, amsgrad=True)
    ref = keras.optimizers.Adam(0.01, beta_2=0.9, amsgrad=True)
    rw, rm, rv, rh = w0.copy(), np.zeros(8), np.zeros(8), np.zeros(8)
    for t in range(1, 21):
        g = np.full(8, 10.0 if t <= 2 else 0.01)
        ours.apply([tf.constant(g)], [ours_v])
        ref.apply([tf.constant(g)], [ref_v])
        rw, rm, rv, rh = refm.adam(rw, rm, rv, rh, g, float(np.float32(0.01)), t, 0.9, 0.9, 1e-7, "keras")
    np.testing.assert_array_equal(ours_v.numpy(), ref_v.numpy())
    vhat = ours.variables[-1].numpy()
    assert np.all(vhat > 2 * ours.variables[-2].numpy())  # the max is what the update used
    assert_close(ours_v.numpy() - w0, rw - w0, rtol=1e-12)


def test_rmsprop_unsorted_sparse_rows_with_nan_match_the_dense_gradient():
    """Keras 3's own RMSprop misplaces rows here (its sparse division pairs the sorted
    union of indices with the values in their given order when the divisor has a NaN or
    zero: fuzz finding F3); tf-mps computes what the dense equivalent computes, which is
    also Keras's result for the same rows sorted."""
    w0 = np.ones((3, 2), np.float32)
    g = tf.IndexedSlices(tf.constant([[np.nan, 1.0], [2.0, 1.0]]), tf.constant([1, 0]), tf.constant([3, 2]))
    dense = tf.convert_to_tensor(g)
    results = []
    for cls, grad in [(tf_mps.keras.optimizers.RMSProp, g), (keras.optimizers.RMSprop, dense),
                      (keras.optimizers.RMSprop, tf.IndexedSlices(tf.gather(g.values, [1, 0]), tf.constant([0, 1]),
                                                                  g.dense_shape))]:
        v = keras.Variable(w0)
        cls(learning_rate=0.1).apply([grad], [v])
        results.append(v.numpy())
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])
    assert np.isnan(results[0][1, 0]) and np.isfinite(results[0][0]).all()
