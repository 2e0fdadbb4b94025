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
