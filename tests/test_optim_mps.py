"""MPS semantics and MPSNNOptimizerDescriptor's gradient options against float64 NumPy
references written from the equations (tests/reference.py), and hypothesis-driven
random shapes, lists and hyper-parameters."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

import reference as ref
import tf_mps
from conftest import RTOL_VS_FLOAT64, assert_rel_close

GRADIENT_OPTIONS = {
    "identity": {},
    "rescale": dict(gradient_rescale=0.5),
    "clip": dict(gradient_clip=(-0.3, 0.4)),
    "l1": dict(regularization="l1", regularization_scale=0.01),
    "l2": dict(regularization="l2", regularization_scale=0.02),
    "all": dict(gradient_rescale=2.0, gradient_clip=(-1.0, 1.0), regularization="l2", regularization_scale=0.01),
}


def _f32(x):
    return float(np.float32(x))


def _ref_transform(g, w, opts):
    # The gradient options are float32, like MPSNNOptimizerDescriptor's properties.
    clip = opts.get("gradient_clip")
    return ref.transform_gradient(
        g, w, _f32(opts.get("gradient_rescale", 1.0)), None if clip is None else (_f32(clip[0]), _f32(clip[1])),
        opts.get("regularization"), _f32(opts.get("regularization_scale", 0.0)),
    )


def _vars(arrays):
    return [tf.Variable(a) for a in arrays]


def _zeros(arrays):
    return [np.zeros_like(a) for a in arrays]


def _run_adam(semantics, opts, dtype, shapes, steps, amsgrad, seed, lr=0.01, b1=0.9, b2=0.999, eps=1e-7):
    rng = np.random.default_rng(seed)
    w = [rng.standard_normal(s).astype(dtype) for s in shapes]
    vw, vm, vv = _vars(w), _vars(_zeros(w)), _vars(_zeros(w))
    vh = _vars(_zeros(w)) if amsgrad else None
    rw = [x.astype(np.float64) for x in w]
    rm, rv = _zeros(rw), _zeros(rw)
    rh = _zeros(rw) if amsgrad else [None] * len(rw)
    for t in range(1, steps + 1):
        gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
        tf_mps.ops.apply_adam(vw, vm, vv, [tf.constant(g) for g in gs], lr, t, b1, b2, eps, vh,
                              semantics=semantics, **opts)
        for i, g in enumerate(gs):
            g = _ref_transform(g.astype(np.float64), rw[i], opts)
            rw[i], rm[i], rv[i], rh[i] = ref.adam(rw[i], rm[i], rv[i], rh[i], g, np.float64(np.float32(lr)) if dtype == np.float32 else lr, t, b1, b2, eps, semantics)
    return vw, rw


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("opts", sorted(GRADIENT_OPTIONS))
@pytest.mark.parametrize("semantics", ["mps", "keras"])
def test_adam_vs_reference(semantics, opts, amsgrad, dtype, device):
    vw, rw = _run_adam(semantics, GRADIENT_OPTIONS[opts], dtype, [(6, 5), (17,)], 20, amsgrad, 1)
    for a, b in zip(vw, rw):
        assert_rel_close(a.numpy(), b, RTOL_VS_FLOAT64[dtype], what=f"adam {semantics} {opts}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["plain", "momentum", "nesterov"])
@pytest.mark.parametrize("opts", sorted(GRADIENT_OPTIONS))
@pytest.mark.parametrize("semantics", ["mps", "keras"])
def test_sgd_vs_reference(semantics, opts, mode, dtype, device):
    opts_d = GRADIENT_OPTIONS[opts]
    rng = np.random.default_rng(2)
    shapes = [(4, 3), (9,)]
    w = [rng.standard_normal(s).astype(dtype) for s in shapes]
    vw = _vars(w)
    vm = _vars(_zeros(w)) if mode != "plain" else None
    rw = [x.astype(np.float64) for x in w]
    rm = _zeros(rw) if mode != "plain" else [None] * len(rw)
    lr, mu = 0.05, 0.9
    lr_ref = float(np.float32(lr)) if dtype == np.float32 else lr
    mu_ref = float(np.float32(mu)) if semantics == "keras" else mu  # Keras casts via float32
    for _ in range(20):
        gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
        tf_mps.ops.apply_sgd(vw, [tf.constant(g) for g in gs], lr, mu if mode != "plain" else 0.0, vm,
                             nesterov=mode == "nesterov", semantics=semantics, **opts_d)
        for i, g in enumerate(gs):
            g = _ref_transform(g.astype(np.float64), rw[i], opts_d)
            rw[i], rm[i] = ref.sgd(rw[i], rm[i], g, lr_ref, mu_ref, mode == "nesterov", semantics)
    for a, b in zip(vw, rw):
        assert_rel_close(a.numpy(), b, RTOL_VS_FLOAT64[dtype], what=f"sgd {semantics} {mode} {opts}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.5])
@pytest.mark.parametrize("opts", ["identity", "all"])
@pytest.mark.parametrize("semantics", ["mps", "keras"])
def test_rmsprop_vs_reference(semantics, opts, momentum, centered, dtype, device):
    opts_d = GRADIENT_OPTIONS[opts]
    rng = np.random.default_rng(3)
    shapes = [(3, 7), (11,)]
    w = [rng.standard_normal(s).astype(dtype) for s in shapes]
    vw, vs = _vars(w), _vars(_zeros(w))
    va = _vars(_zeros(w)) if centered else None
    vmom = _vars(_zeros(w)) if momentum else None
    rw = [x.astype(np.float64) for x in w]
    rs = _zeros(rw)
    ra = _zeros(rw) if centered else [None] * len(rw)
    rmom = _zeros(rw) if momentum else [None] * len(rw)
    lr, rho, eps = 0.01, 0.9, 1e-7
    lr_ref = float(np.float32(lr)) if dtype == np.float32 else lr
    for _ in range(20):
        gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
        tf_mps.ops.apply_rmsprop(vw, vs, [tf.constant(g) for g in gs], lr, rho, momentum, eps, va, vmom,
                                 semantics=semantics, **opts_d)
        for i, g in enumerate(gs):
            g = _ref_transform(g.astype(np.float64), rw[i], opts_d)
            rw[i], rs[i], ra[i], rmom[i] = ref.rmsprop(rw[i], rs[i], ra[i], rmom[i], g, lr_ref, rho, momentum, eps, semantics)
    for a, b in zip(vw, rw):
        assert_rel_close(a.numpy(), b, RTOL_VS_FLOAT64[dtype] * 10, what=f"rmsprop {semantics} {centered} {momentum}")


def test_single_and_multi_forms_agree(device):
    """The single-variable op and the multi-tensor op are the same update."""
    rng = np.random.default_rng(4)
    shapes = [(8, 3), (5,), (2, 2, 2)]
    w = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    multi = (_vars(w), _vars(_zeros(w)), _vars(_zeros(w)))
    single = (_vars(w), _vars(_zeros(w)), _vars(_zeros(w)))
    for t in range(1, 6):
        gs = [tf.constant(rng.standard_normal(s).astype(np.float32)) for s in shapes]
        tf_mps.ops.apply_adam(*multi, gs, 0.01, t, semantics="mps")
        for i in range(len(shapes)):
            tf_mps.ops.apply_adam(single[0][i], single[1][i], single[2][i], gs[i], 0.01, t, semantics="mps")
    for a, b in zip(multi[0], single[0]):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_sparse_gradient_equals_dense_in_mps_semantics(device):
    """MPS semantics uses the summed gradient: an IndexedSlices gradient (duplicates
    included) updates exactly as its dense equivalent."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((10, 4)).astype(np.float32)
    idx = np.array([1, 3, 3, 7])
    vals = rng.standard_normal((4, 4)).astype(np.float32)
    dense = np.zeros_like(w)
    np.add.at(dense, idx, vals)
    a = (tf.Variable(w), tf.Variable(np.zeros_like(w)), tf.Variable(np.zeros_like(w)))
    b = (tf.Variable(w), tf.Variable(np.zeros_like(w)), tf.Variable(np.zeros_like(w)))
    sparse = tf.IndexedSlices(tf.constant(vals), tf.constant(idx), tf.constant(w.shape))
    tf_mps.ops.apply_adam(*a, sparse, 0.01, 1, semantics="mps")
    tf_mps.ops.apply_adam(*b, tf.constant(dense), 0.01, 1, semantics="mps")
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())


def test_graph_mode_and_tf_function(device):
    """Inside tf.function (a custom training loop), the ops update in place."""
    v = tf.Variable(np.ones((3, 2), np.float32))
    m = tf.Variable(np.zeros((3, 2), np.float32))

    @tf.function
    def step(g):
        tf_mps.ops.apply_sgd([v], [g], 0.1, 0.9, [m])
        return v.read_value()

    out = step(tf.ones((3, 2)))
    step(tf.ones((3, 2)))
    np.testing.assert_allclose(out.numpy(), 0.9 * np.ones((3, 2)), rtol=1e-6)
    # second step: m = 0.9*(-0.1) - 0.1 = -0.19; w = 0.9 - 0.19
    np.testing.assert_allclose(v.numpy(), (0.9 - 0.19) * np.ones((3, 2)), rtol=1e-6)


# Small shapes, and 1-D ones around the CPU kernel's 32K-element work units (one short,
# exact, one over, several units with a ragged end), so that examples cross unit and
# thread-pool chunk boundaries (optim_cpu.cc kChunk, tf_glue.cc CpuParallelFor).
_UNIT = 1 << 15
shapes_strategy = st.lists(
    st.one_of(
        st.lists(st.integers(0, 9), min_size=0, max_size=3).map(tuple),
        st.sampled_from([_UNIT - 1, _UNIT, _UNIT + 1, 2 * _UNIT + 7, 5 * _UNIT - 3]).map(lambda n: (n,)),
        st.tuples(st.integers(1, 3), st.sampled_from([_UNIT - 5, _UNIT + 3])),
    ),
    min_size=1, max_size=6,
)


@given(
    shapes=shapes_strategy,
    semantics=st.sampled_from(["keras", "mps"]),
    amsgrad=st.booleans(),
    lr=st.floats(1e-4, 0.5),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.5, 0.9999),
    eps=st.floats(1e-8, 1e-2),
    steps=st.integers(1, 4),
    seed=st.integers(0, 2**31),
)
def test_adam_property_random_shapes(shapes, semantics, amsgrad, lr, beta1, beta2, eps, steps, seed):
    vw, rw = _run_adam(semantics, {}, np.float64, shapes, steps, amsgrad, seed, lr, beta1, beta2, eps)
    for a, b in zip(vw, rw):
        assert_rel_close(a.numpy(), b, 1e-9, what=f"{shapes}")


@given(
    shapes=shapes_strategy,
    semantics=st.sampled_from(["keras", "mps"]),
    mode=st.sampled_from(["plain", "momentum", "nesterov"]),
    lr=st.floats(1e-4, 0.5),
    mu=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**31),
)
def test_sgd_property_random_shapes(shapes, semantics, mode, lr, mu, seed):
    rng = np.random.default_rng(seed)
    w = [rng.standard_normal(s) for s in shapes]
    vw = _vars(w)
    vm = _vars(_zeros(w)) if mode != "plain" else None
    rw = [x.copy() for x in w]
    rm = _zeros(rw) if mode != "plain" else [None] * len(rw)
    mu_ref = float(np.float32(mu)) if semantics == "keras" else mu
    for _ in range(3):
        gs = [rng.standard_normal(s) for s in shapes]
        tf_mps.ops.apply_sgd(vw, [tf.constant(g) for g in gs], lr, mu, vm, nesterov=mode == "nesterov",
                             semantics=semantics)
        for i, g in enumerate(gs):
            rw[i], rm[i] = ref.sgd(rw[i], rm[i], g, lr, mu_ref, mode == "nesterov", semantics)
    for a, b in zip(vw, rw):
        assert_rel_close(a.numpy(), b, 1e-12, what=f"{shapes}")


@given(
    shapes=shapes_strategy,
    semantics=st.sampled_from(["keras", "mps"]),
    centered=st.booleans(),
    momentum=st.sampled_from([0.0, 0.3, 0.9]),
    rho=st.floats(0.5, 0.99),
    seed=st.integers(0, 2**31),
)
def test_rmsprop_property_random_shapes(shapes, semantics, centered, momentum, rho, seed):
    rng = np.random.default_rng(seed)
    w = [rng.standard_normal(s) for s in shapes]
    vw, vs = _vars(w), _vars(_zeros(w))
    va = _vars(_zeros(w)) if centered else None
    vm = _vars(_zeros(w)) if momentum else None
    rw, rs = [x.copy() for x in w], _zeros(w)
    ra = _zeros(w) if centered else [None] * len(w)
    rm = _zeros(w) if momentum else [None] * len(w)
    for _ in range(3):
        gs = [rng.standard_normal(s) for s in shapes]
        tf_mps.ops.apply_rmsprop(vw, vs, [tf.constant(g) for g in gs], 0.01, rho, momentum, 1e-3, va, vm,
                                 semantics=semantics)
        for i, g in enumerate(gs):
            rw[i], rs[i], ra[i], rm[i] = ref.rmsprop(rw[i], rs[i], ra[i], rm[i], g, 0.01, rho, momentum, 1e-3, semantics)
    for a, b in zip(vw, rw):
        assert_rel_close(a.numpy(), b, 1e-10, what=f"{shapes}")
