"""float16 and bfloat16 variables: Keras trains them (``dtype="float16"`` layers), so the
fused optimizers must, with Keras's results. Keras computes such an update in the
variable's dtype, each TensorFlow op in float rounded back to 16 bits; the CPU kernels
do the same, so the results are bit-identical."""

import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference as ref
import tf_mps
from test_optim_keras import CASES, SHAPES, _gradients
from tf_mps.keras import optimizers as mps_opt

DTYPES16 = ["float16", "bfloat16"]


def _run_pair(case, dtype, sparse, steps, in_function=False, duplicate=False, **extra):
    ours_name, keras_name, kwargs = CASES[case]
    kwargs = {**kwargs, **extra}
    rng = np.random.default_rng(zlib.crc32(f"{case}/{sparse}/{dtype}".encode()))
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    ours_vars = [keras.Variable(x, dtype=dtype) for x in init]
    ref_vars = [keras.Variable(x, dtype=dtype) for x in init]
    ours = getattr(mps_opt, ours_name)(**kwargs)
    theirs = getattr(keras.optimizers, keras_name)(**kwargs)
    ours_apply = lambda g: ours.apply(g, ours_vars)  # noqa: E731
    ref_apply = lambda g: theirs.apply(g, ref_vars)  # noqa: E731
    if in_function:
        ours_apply, ref_apply = tf.function(ours_apply), tf.function(ref_apply)
    for _ in range(steps):
        grads = _gradients(rng, SHAPES, np.float32, sparse, duplicate=duplicate)
        grads = [tf.IndexedSlices(tf.cast(g.values, dtype), g.indices, g.dense_shape)
                 if isinstance(g, tf.IndexedSlices) else tf.cast(g, dtype) for g in grads]
        ours_apply(grads)
        ref_apply(grads)
    return ours, theirs, ours_vars, ref_vars


def _assert_identical(ours, theirs, ours_vars, ref_vars, what):
    for a, b in zip(ours_vars + list(ours.variables), ref_vars + list(theirs.variables), strict=True):
        assert a.dtype == b.dtype, what
        np.testing.assert_array_equal(np.asarray(a.numpy(), np.float32), np.asarray(b.numpy(), np.float32),
                                      err_msg=f"{what}: {a.path}")


def _assert_close16(ours, theirs, ours_vars, ref_vars, dtype, ulps, what):
    """Norm-wise: max |diff| <= ulps * 2^-p * max |expected| per tensor (p: 11 or 8)."""
    unit = 2.0 ** -11 if dtype == "float16" else 2.0 ** -8
    for a, b in zip(ours_vars + list(ours.variables), ref_vars + list(theirs.variables), strict=True):
        x, y = np.asarray(a.numpy(), np.float64), np.asarray(b.numpy(), np.float64)
        err, scale = np.max(np.abs(x - y)), np.max(np.abs(y))
        assert err <= ulps * unit * scale, f"{what}: {a.path}: max |diff| {err:.3g} > {ulps} ulps of {scale:.3g}"


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", DTYPES16)
def test_16bit_matches_keras(dtype, case, sparse, device):
    """Bit-identical, dense and sparse (distinct indices)."""
    ours, theirs, ours_vars, ref_vars = _run_pair(case, dtype, sparse, steps=25)
    _assert_identical(ours, theirs, ours_vars, ref_vars, f"{dtype} {case}")


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", DTYPES16)
def test_16bit_sparse_duplicate_indices(dtype, case):
    """Repeated indices: Keras's SGD and RMSProp scale each slice (g_k * lr) before the
    slices are summed (or scattered one by one); the fused op sums first. Same math,
    other rounding; Adam sums first too and stays identical. Documented in
    docs/optimizers.md."""
    ours, theirs, ours_vars, ref_vars = _run_pair(case, dtype, True, steps=25, duplicate=True)
    if case.startswith("adam"):
        _assert_identical(ours, theirs, ours_vars, ref_vars, f"{dtype} {case}")
    else:
        _assert_close16(ours, theirs, ours_vars, ref_vars, dtype, 8, f"{dtype} {case} duplicates")


@pytest.mark.parametrize("case", ["adam_amsgrad", "sgd_nesterov", "rmsprop_centered_momentum"])
@pytest.mark.parametrize("dtype", DTYPES16)
def test_16bit_matches_keras_in_tf_function(dtype, case):
    """Inside tf.function Keras's Python-float constants become 16-bit tensors through
    NumPy (rounded directly, not through float32 as in eager mode); for these values the
    two roundings agree. Grappler rewrites Keras's RMSProp lr*g/sqrt(d) as
    lr*g*rsqrt(d) in a graph, so Keras's own graph results differ from its eager ones
    by rounding there; the fused op computes the eager form in both modes."""
    ours, theirs, ours_vars, ref_vars = _run_pair(case, dtype, sparse=True, steps=10, in_function=True)
    if case.startswith("rmsprop"):
        _assert_close16(ours, theirs, ours_vars, ref_vars, dtype, 8, f"{dtype} {case} in tf.function")
    else:
        _assert_identical(ours, theirs, ours_vars, ref_vars, f"{dtype} {case} in tf.function")


@pytest.mark.parametrize("dtype", DTYPES16)
def test_16bit_keras_options_match(dtype):
    extra = dict(weight_decay=0.01, clipnorm=0.5, use_ema=True)
    ours, theirs, ours_vars, ref_vars = _run_pair("adam", dtype, sparse=False, steps=10, **extra)
    _assert_identical(ours, theirs, ours_vars, ref_vars, f"{dtype} adam {extra}")


@pytest.mark.parametrize("dtype", DTYPES16)
def test_16bit_low_level_ops_match_keras(dtype):
    rng = np.random.default_rng(5)
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    vs = [tf.Variable(tf.cast(x, dtype)) for x in init]
    ms = [tf.Variable(tf.zeros(x.shape, dtype)) for x in init]
    vvs = [tf.Variable(tf.zeros(x.shape, dtype)) for x in init]
    ref_vars = [keras.Variable(x, dtype=dtype) for x in init]
    opt = keras.optimizers.Adam(0.01)
    for step in range(1, 16):
        grads = [tf.cast(rng.standard_normal(s), dtype) for s in SHAPES]
        # Keras casts its float32 learning rate to the variables' dtype; so do we.
        tf_mps.ops.apply_adam(vs, ms, vvs, grads, tf.cast(tf.constant(0.01), dtype), step)
        opt.apply(grads, ref_vars)
    for a, b in zip(vs, ref_vars):
        np.testing.assert_array_equal(np.asarray(a.numpy(), np.float32), np.asarray(b.numpy(), np.float32))


@pytest.mark.parametrize("ours, theirs", [(mps_opt.Adam, keras.optimizers.Adam),
                                          (mps_opt.RMSProp, keras.optimizers.RMSprop)], ids=["adam", "rmsprop"])
def test_float16_model_fit_matches_keras(ours, theirs):
    """A model of dtype="float16" layers (float16 variables), trained by fit."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    y = (x @ rng.standard_normal((8, 1))).astype(np.float32)

    def build():
        keras.utils.set_random_seed(3)
        return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu", dtype="float16"),
                                 keras.layers.Dense(1, dtype="float16")])

    a, b = build(), build()
    assert a.trainable_variables[0].dtype == "float16"
    a.compile(optimizer=ours(0.01), loss="mse")
    b.compile(optimizer=theirs(0.01), loss="mse")
    ha = a.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False)
    hb = b.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False)
    if ours is mps_opt.Adam:
        np.testing.assert_array_equal(ha.history["loss"], hb.history["loss"])
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(wa, wb)
    else:  # Grappler's rsqrt rewrite of Keras's RMSProp in the graph (see above)
        np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-2)
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            assert np.max(np.abs(wa.astype(np.float64) - wb)) <= 8 * 2.0 ** -11 * np.max(np.abs(wb))


def test_float16_and_float32_variables_in_one_model_match_keras():
    """Two dtype groups (two ops) in one step, each like Keras."""
    rng = np.random.default_rng(2)
    init = [rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(7).astype(np.float32)]
    dtypes = ["float32", "float16"]
    ours = [keras.Variable(x, dtype=d) for x, d in zip(init, dtypes)]
    refs = [keras.Variable(x, dtype=d) for x, d in zip(init, dtypes)]
    o, r = mps_opt.Adam(0.01, amsgrad=True), keras.optimizers.Adam(0.01, amsgrad=True)
    for _ in range(10):
        g = [tf.constant(rng.standard_normal((4, 3)).astype(np.float32)),
             tf.constant(rng.standard_normal(7).astype(np.float16))]
        o.apply(g, ours)
        r.apply(g, refs)
    for a, b in zip(ours, refs):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# ---------------------------------------- 16-bit MPS semantics and gradient options
# No Keras counterpart: against the float64 reference, to 16-bit rounding over 5 steps.
RTOL16 = {"float16": 1e-2, "bfloat16": 6e-2}


@pytest.mark.parametrize("semantics", ["mps", "keras"])
@pytest.mark.parametrize("dtype", DTYPES16)
def test_16bit_mps_semantics_and_options_vs_reference(dtype, semantics):
    opts = dict(gradient_rescale=2.0, gradient_clip=(-1.0, 1.0), regularization="l2", regularization_scale=0.01)
    rng = np.random.default_rng(9)
    w0 = rng.standard_normal((6, 5)).astype(np.float32)
    w = tf.Variable(tf.cast(w0, dtype))
    m, v, vh = (tf.Variable(tf.zeros((6, 5), dtype)) for _ in range(3))
    s = tf.Variable(tf.zeros((6, 5), dtype))
    w2 = tf.Variable(tf.cast(w0, dtype))
    rw = np.asarray(tf.cast(w, tf.float64))
    rm, rv, rh = np.zeros_like(rw), np.zeros_like(rw), np.zeros_like(rw)
    rw2, rs = rw.copy(), np.zeros_like(rw)
    for t in range(1, 6):
        g16 = tf.cast(rng.standard_normal((6, 5)), dtype)
        g = np.asarray(tf.cast(g16, tf.float64))
        tf_mps.ops.apply_adam(w, m, v, g16, 0.01, t, vhats=vh, semantics=semantics, **opts)
        tf_mps.ops.apply_rmsprop(w2, s, g16, 0.01, semantics=semantics, **opts)
        rw, rm, rv, rh = ref.adam(rw, rm, rv, rh, ref.transform_gradient(g, rw, 2.0, (-1.0, 1.0), "l2", 0.01),
                                  0.01, t, 0.9, 0.999, 1e-7, semantics)
        rw2, rs, _, _ = ref.rmsprop(rw2, rs, None, None, ref.transform_gradient(g, rw2, 2.0, (-1.0, 1.0), "l2", 0.01),
                                    0.01, 0.9, 0.0, 1e-7, semantics)
    # The moves (w - w0) are what the rule computes; each step also rounds w to 16 bits
    # (up to half an ulp of w), so the bound grows by one ulp of max |w| per step.
    p = 11 if dtype == "float16" else 8
    for got, want in ((w, rw), (w2, rw2)):
        moved = np.asarray(tf.cast(got, tf.float64)) - w0
        ulp = 2.0 ** (np.floor(np.log2(np.abs(want).max())) - p + 1)
        np.testing.assert_allclose(moved, want - w0, rtol=0,
                                   atol=RTOL16[dtype] * np.abs(want - w0).max() + 5 * ulp)
