"""tf_mps.ops.dense.dense and its gradients: float32 against TensorFlow's own ops
(tf.matmul + tf.nn.bias_add + tf.nn.relu) in float64 and against keras.layers.Dense;
float16 data with float32 accumulation against the float64 reference rounded to half;
half accumulation bit for bit against a NumPy loop implementing dense.h's model; random
shapes (hypothesis); gradients also by tf.test.compute_gradient (and second order);
every validation path gives InvalidArgumentError naming the op and the argument."""

import importlib

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RTOL_VS_FLOAT64, assert_rel_close
from tf_mps import _lib

# tf_mps.ops exports the function under the module's name: the module itself.
D = importlib.import_module("tf_mps.ops.dense")
lib = _lib.load()
INVALID = tf.errors.InvalidArgumentError

# Norm-wise tolerances (conftest.assert_rel_close): float32 against float64; float16 data
# with float32 accumulation is the float64 result rounded once to half, up to the
# float32 sum's own error: one half ulp of the largest element.
RTOL = RTOL_VS_FLOAT64[np.float32]
RTOL_HALF = 2.0**-10
RTOL_NUMERIC_GRADIENT = 2e-3

hypothesis_settings = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                               deadline=None)


def _rand(shape, seed, dtype=np.float32, scale=1.0):
    return tf.constant((np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype))


def reference(x, kernel, bias=None, relu=False):
    """TensorFlow's ops: matmul over the last dimension, bias_add, relu (in x's dtype)."""
    lead = tf.shape(x)[:-1]
    z = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), kernel)
    z = tf.reshape(z, tf.concat([lead, [kernel.shape[-1]]], 0))
    if bias is not None:
        z = tf.nn.bias_add(z, bias)
    return tf.nn.relu(z) if relu else z


def check(x, kernel, bias=None, relu=False, seed=0, rtol=RTOL, accumulator_precision="float32"):
    """Output and gradients (x, kernel, bias) against `reference` in float64."""
    sources = [x, kernel] + ([bias] if bias is not None else [])
    sources64 = [tf.constant(t.numpy().astype(np.float64)) for t in sources]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(sources + sources64)
        y = D.dense(x, kernel, bias, "relu" if relu else None, accumulator_precision=accumulator_precision)
        z = reference(sources64[0], sources64[1], sources64[2] if bias is not None else None)
    expected = tf.nn.relu(z) if relu else z
    assert y.dtype == x.dtype and y.shape == expected.shape
    assert_rel_close(y, expected, rtol, "output")
    dy = _rand(y.shape, seed + 1, x.dtype.as_numpy_dtype)
    # Our own output's relu mask, so that an element whose pre-activation rounds to the
    # other side of 0 in the reference cannot decide the comparison.
    dz = tf.cast(tf.where(y > 0, dy, tf.zeros_like(dy)) if relu else dy, tf.float64)
    ours = tape.gradient(y, sources, output_gradients=dy)
    theirs = tape.gradient(z, sources64, output_gradients=dz)
    for name, a, b in zip(["dx", "dkernel", "dbias"], ours, theirs):
        assert a.dtype == x.dtype
        assert_rel_close(a, b, rtol, name)
    return y


# ------------------------------------------------------------------ float32: every path
@pytest.mark.parametrize("x_shape, units", [
    ((5, 7), 3),
    ((2, 3, 6), 4),  # rank 3: leading dimensions flattened
    ((2, 2, 3, 5), 6),  # rank 4
    ((1, 9), 1),  # one row, one unit
    ((4, 1), 5),  # one input feature
    ((3, 40), 300),  # few rows: the output split by columns
    ((130, 70), 33),  # many rows: row blocks
])
@pytest.mark.parametrize("bias, relu", [(False, False), (True, False), (True, True), (False, True)])
def test_matches_tf(device, x_shape, units, bias, relu):
    x = _rand(x_shape, 1)
    k = _rand((x_shape[-1], units), 2)
    b = _rand((units,), 3) if bias else None
    check(x, k, b, relu)


def test_matches_keras_dense(device):
    import keras

    layer = keras.layers.Dense(11, activation="relu")
    x = _rand((6, 3, 9), 4)
    expected = layer(x)
    got = D.dense(x, layer.kernel, layer.bias, activation="relu")
    assert_rel_close(got, expected, 1e-5, "keras")
    # Keras's own activation objects are accepted.
    got = D.dense(x, layer.kernel, layer.bias, activation=keras.activations.relu)
    assert_rel_close(got, expected, 1e-5, "keras relu object")
    assert_rel_close(D.dense(x, layer.kernel, activation=keras.activations.linear),
                     reference(x, tf.convert_to_tensor(layer.kernel)), 1e-5, "keras linear")


def test_relu_keeps_nan_and_zeroes_the_rest(device):
    x = np.array([[1.0, 0.0], [np.nan, 0.0], [-1.0, 0.0], [0.0, 0.0]], np.float32)
    y = D.dense(x, np.array([[1.0], [0.0]], np.float32), activation=tf.nn.relu).numpy()
    assert y[0, 0] == 1.0 and np.isnan(y[1, 0])
    assert y[2, 0] == 0.0 and y[3, 0] == 0.0 and not np.signbit(y[2, 0])


def test_empty_rows_and_features(device):
    # No rows: empty output, zero kernel and bias gradients.
    x, k = tf.zeros((0, 3, 4)), _rand((4, 5), 5)
    with tf.GradientTape() as tape:
        tape.watch([x, k])
        b = tf.ones(5)
        tape.watch(b)
        y = D.dense(x, k, b, "relu")
    assert y.shape == (0, 3, 5)
    dx, dk, db = tape.gradient(y, [x, k, b])
    assert dx.shape == (0, 3, 4) and np.all(dk.numpy() == 0) and np.all(db.numpy() == 0)
    # No input features: y = act(bias).
    y = D.dense(tf.zeros((3, 0)), tf.zeros((0, 2)), tf.constant([-1.0, 2.0]), "relu")
    np.testing.assert_array_equal(y.numpy(), [[0, 2]] * 3)
    for acc in ("float32", "float16"):
        y = D.dense(tf.zeros((2, 0), tf.float16), tf.zeros((0, 2), tf.float16), tf.constant([1.5, -2], tf.float16),
                    accumulator_precision=acc)
        np.testing.assert_array_equal(y.numpy(), [[1.5, -2]] * 2)


def test_results_do_not_depend_on_scheduling(device):
    x, k, dy = _rand((300, 200), 6), _rand((200, 150), 7), _rand((300, 150), 8)
    runs = [lib.mps_dense_backprop_kernel(x=x, dy=dy, y=[], num_bias=1) for _ in range(3)]
    for dw, db in runs[1:]:
        np.testing.assert_array_equal(dw.numpy(), runs[0][0].numpy())
        np.testing.assert_array_equal(db[0].numpy(), runs[0][1][0].numpy())


def test_inside_tf_function_with_unknown_shapes(device):
    x, k, b = _rand((4, 3, 6), 9), _rand((6, 5), 10), _rand((5,), 11)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 6]), tf.TensorSpec([6, 5]), tf.TensorSpec([5])])
    def fn(x, k, b):
        y = D.dense(x, k, b, "relu")
        assert y.shape.as_list() == [None, None, 5]
        return y, tf.gradients(tf.reduce_sum(y * y), [x, k, b])

    y, grads = fn(x, k, b)
    x64, k64, b64 = (tf.cast(t, tf.float64) for t in (x, k, b))
    with tf.GradientTape() as tape:
        tape.watch([x64, k64, b64])
        r = reference(x64, k64, b64, relu=True)
        loss = tf.reduce_sum(r * r)
    assert_rel_close(y, r, RTOL, "output")
    for name, a, e in zip(["dx", "dkernel", "dbias"], grads, tape.gradient(loss, [x64, k64, b64])):
        assert_rel_close(a, e, RTOL, name)


def test_static_shape_inference(device):
    @tf.function
    def fn(x, k, b):
        return D.dense(x, k, b)

    y = fn.get_concrete_function(tf.TensorSpec([2, None, 7]), tf.TensorSpec([None, 3]), tf.TensorSpec([None]))
    assert y.outputs[0].shape.as_list() == [2, None, 3]


def test_eager_gradient_skips_unneeded_dx(device):
    # The tape says x needs no gradient (a constant): only the kernel gradient op runs.
    x, k = _rand((3, 4), 12), tf.Variable(_rand((4, 2), 13))
    with tf.GradientTape() as tape:
        y = D.dense(x, k)
    np.testing.assert_allclose(tape.gradient(y, k).numpy(), np.tile(x.numpy().sum(0)[:, None], (1, 2)), rtol=1e-6)


# ---------------------------------------------------------------- numeric gradients
@pytest.mark.parametrize("relu", [False, True])
def test_compute_gradient(device, relu):
    x, k, b = _rand((3, 2, 5), 14), _rand((5, 4), 15), _rand((4,), 16)
    theoretical, numerical = tf.test.compute_gradient(
        lambda x, k, b: D.dense(x, k, b, "relu" if relu else None), [x, k, b], delta=1e-2)
    for name, t, n in zip(["x", "kernel", "bias"], theoretical, numerical):
        assert_rel_close(t, n, RTOL_NUMERIC_GRADIENT, name)


@pytest.mark.parametrize("relu", [False, True])
def test_second_order_gradients(device, relu):
    # The backprop ops are linear in dy and in the kernel / x (the mask is constant).
    x, k, dy = _rand((4, 3), 17), _rand((3, 5), 18), _rand((4, 5), 19)
    y = [D.dense(x, k, activation="relu")] if relu else []
    act = "relu" if relu else "none"

    def input_grad(k, dy):
        return lib.mps_dense_backprop_input(dy=dy, kernel=k, y=y, activation=act)

    def kernel_grad(x, dy):
        dw, (db,) = lib.mps_dense_backprop_kernel(x=x, dy=dy, y=y, num_bias=1, activation=act)
        return tf.concat([tf.reshape(dw, [-1]), db], 0)

    for fn, args in [(input_grad, [k, dy]), (kernel_grad, [x, dy])]:
        theoretical, numerical = tf.test.compute_gradient(fn, args, delta=1e-2)
        for t, n in zip(theoretical, numerical):
            assert_rel_close(t, n, RTOL_NUMERIC_GRADIENT, fn.__name__)


# ---------------------------------------------------------------- random shapes
@st.composite
def dense_cases(draw):
    rank = draw(st.integers(2, 4))
    lead = [draw(st.integers(1, 6)) for _ in range(rank - 1)]
    return dict(x=tuple(lead) + (draw(st.integers(1, 48)),), units=draw(st.integers(1, 48)),
                bias=draw(st.booleans()), relu=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


@hypothesis_settings
@given(case=dense_cases())
def test_random_shapes(device, case):
    s = case["seed"]
    b = _rand((case["units"],), s + 2) if case["bias"] else None
    check(_rand(case["x"], s), _rand((case["x"][-1], case["units"]), s + 1), b, case["relu"], seed=s)


# ------------------------------------------------ float16 data, float32 accumulation
@pytest.mark.parametrize("x_shape, units", [((6, 9), 5), ((2, 3, 40), 17), ((64, 130), 70)])
@pytest.mark.parametrize("relu", [False, True])
def test_float16_data_float32_accumulation(device, x_shape, units, relu):
    x = _rand(x_shape, 20, np.float16)
    k = _rand((x_shape[-1], units), 21, np.float16, scale=0.3)
    check(x, k, _rand((units,), 22, np.float16), relu, rtol=RTOL_HALF)


def test_float16_result_is_rounded_once(device):
    # 1 + 2^-11 + 2^-12 in the sum: float32 holds it, half rounds it up once to
    # 1 + 2^-10 (summing in half term by term would give 1).
    x = np.array([[1.0, 2.0**-11, 2.0**-12]], np.float16)
    y = D.dense(x, np.ones((3, 1), np.float16))
    assert y.numpy()[0, 0] == np.float16(1 + 2.0**-10)
    y = D.dense(x, np.ones((3, 1), np.float16), accumulator_precision="float16")
    assert y.numpy()[0, 0] == np.float16(1.0)


# ------------------------------------------------------------ half accumulation model
def model_matmul(a16, b16):
    """dense.h's model: acc = +0 (half); for s in order: acc = half(acc + a_s * b_s),
    the product exact and the sum formed in float64 and rounded once (NumPy converts
    float64 to float16 directly, rounding to nearest even)."""
    a = a16.astype(np.float64)
    b = b16.astype(np.float64)
    acc = np.zeros((a.shape[0], b.shape[1]), np.float16)
    with np.errstate(over="ignore", invalid="ignore"):
        for s in range(a.shape[1]):
            acc = (acc.astype(np.float64) + a[:, s:s + 1] * b[s]).astype(np.float16)
    return acc


def model_relu(z):
    with np.errstate(invalid="ignore"):
        return np.where((z > 0) | np.isnan(z), z, np.zeros_like(z))


def model_forward(x, k, b, relu):
    dtype = x.dtype
    acc = model_matmul(x.reshape(-1, x.shape[-1]).astype(np.float16), k.astype(np.float16))
    z = acc.astype(np.float32)
    if b is not None:
        z = z + b.astype(np.float32)
    z = z.astype(dtype)
    z = model_relu(z) if relu else z
    return z.reshape(x.shape[:-1] + (k.shape[1],))


def model_mask(dy, y):
    return dy if y is None else np.where(y > 0, dy, np.zeros_like(dy))


def model_backprop_input(dy, k, y):
    g = model_mask(dy, y).reshape(-1, dy.shape[-1]).astype(np.float16)
    dx = model_matmul(g, k.astype(np.float16).T).astype(dy.dtype)
    return dx.reshape(dy.shape[:-1] + (k.shape[0],))


def model_backprop_kernel(x, dy, y):
    g = model_mask(dy, y).reshape(-1, dy.shape[-1]).astype(np.float16)
    x16 = x.reshape(-1, x.shape[-1]).astype(np.float16)
    dw = model_matmul(x16.T, g).astype(dy.dtype)
    db = model_matmul(np.ones((1, g.shape[0]), np.float16), g)[0].astype(dy.dtype)
    return dw, db


def assert_same_bits(actual, expected, what=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(actual), nan, err_msg=f"{what}: NaN positions")
    view = np.uint16 if actual.dtype == np.float16 else np.uint32
    np.testing.assert_array_equal(np.where(nan, 0, actual).view(view), np.where(nan, 0, expected).view(view),
                                  err_msg=f"{what}: bits")


def check_model(x, k, b, relu, seed=0):
    """Forward and both gradient ops in half accumulation, bit for bit against the model."""
    dtype = x.dtype
    y = lib.mps_dense(x=x, kernel=k, bias=[] if b is None else [b], activation="relu" if relu else "none",
                      accumulator_precision="float16").numpy()
    assert_same_bits(y, model_forward(x, k, b, relu), "forward")
    dy = (np.random.default_rng(seed).standard_normal(y.shape)).astype(dtype)
    mask = [y] if relu else []
    attrs = dict(activation="relu" if relu else "none", accumulator_precision="float16")
    dx = lib.mps_dense_backprop_input(dy=dy, kernel=k, y=mask, **attrs).numpy()
    assert_same_bits(dx, model_backprop_input(dy, k, y if relu else None), "dx")
    dw, (db,) = lib.mps_dense_backprop_kernel(x=x, dy=dy, y=mask, num_bias=1, **attrs)
    ew, eb = model_backprop_kernel(x, dy, y if relu else None)
    assert_same_bits(dw.numpy(), ew, "dkernel")
    assert_same_bits(db.numpy(), eb, "dbias")


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("x_shape, units, scale", [
    ((5, 9), 4, 1.0),
    ((2, 3, 70), 13, 1.0),  # long sums: many roundings
    ((7, 600), 520, 0.05),  # more than one column tile (512)
    ((3, 20), 6, 1e-4),  # products in half's subnormal range
])
@pytest.mark.parametrize("relu", [False, True])
def test_half_accumulation_bit_exact(device, dtype, x_shape, units, scale, relu):
    rng = np.random.default_rng(23)
    x = rng.standard_normal(x_shape).astype(dtype)
    k = (rng.standard_normal((x_shape[-1], units)) * scale).astype(dtype)
    b = rng.standard_normal(units).astype(dtype)
    check_model(x, k, b, relu, seed=24)


def test_half_accumulation_overflow_and_nan(device):
    # Partial sums beyond 65504 become inf (and inf - inf NaN), as in half hardware;
    # float32 accumulation of the same data stays finite.
    x = np.array([[300.0, 300.0, -300.0, 1.0], [200.0, -200.0, 200.0, np.nan]], np.float16)
    k = np.array([[300.0, 1.0], [-300.0, 2.0], [300.0, 3.0], [1.0, 4.0]], np.float16)
    check_model(x, k, None, relu=False)
    y = D.dense(x[:1], k, accumulator_precision="float16").numpy()
    assert np.isinf(y[0, 0]) or np.isnan(y[0, 0])
    assert np.isfinite(D.dense(x[:1].astype(np.float32), k.astype(np.float32)).numpy()).all()


def test_half_accumulation_differs_from_float32(device):
    # Many small terms: half accumulation stalls where float32 accumulation does not,
    # and the model (not float32) is what the op returns.
    x = np.full((1, 4096), 0.01, np.float16)
    k = np.ones((4096, 1), np.float16)
    exact = float(np.float64(np.float16(0.01)) * 4096)
    y32 = float(D.dense(x, k).numpy()[0, 0])
    y16 = D.dense(x, k, accumulator_precision="float16").numpy()
    assert abs(y32 - exact) <= 0.05
    assert abs(float(y16[0, 0]) - exact) > 1.0
    assert_same_bits(y16, model_forward(x, k, None, False))


@st.composite
def model_cases(draw):
    return dict(x=(draw(st.integers(1, 5)), draw(st.integers(1, 30))), units=draw(st.integers(1, 20)),
                dtype=draw(st.sampled_from([np.float16, np.float32])), bias=draw(st.booleans()),
                relu=draw(st.booleans()), scale=draw(st.sampled_from([1.0, 8.0, 1e-3])),
                seed=draw(st.integers(0, 2**16)))


@hypothesis_settings
@given(case=model_cases())
def test_half_accumulation_random_shapes(device, case):
    rng = np.random.default_rng(case["seed"])
    x = (rng.standard_normal(case["x"]) * case["scale"]).astype(case["dtype"])
    k = rng.standard_normal((case["x"][-1], case["units"])).astype(case["dtype"])
    b = rng.standard_normal(case["units"]).astype(case["dtype"]) if case["bias"] else None
    check_model(x, k, b, case["relu"], seed=case["seed"])


def test_half_accumulation_gradients_through_the_wrapper(device):
    # The registered gradient carries accumulator_precision to the backprop ops.
    x, k, b = _rand((4, 6), 25, np.float16), _rand((6, 3), 26, np.float16), _rand((3,), 27, np.float16)
    with tf.GradientTape() as tape:
        tape.watch([x, k, b])
        y = D.dense(x, k, b, "relu", accumulator_precision="float16")
    dy = _rand(y.shape, 28, np.float16)
    dx, dk, db = tape.gradient(y, [x, k, b], output_gradients=dy)
    assert_same_bits(dx.numpy(), model_backprop_input(dy.numpy(), k.numpy(), y.numpy()), "dx")
    ew, eb = model_backprop_kernel(x.numpy(), dy.numpy(), y.numpy())
    assert_same_bits(dk.numpy(), ew, "dkernel")
    assert_same_bits(db.numpy(), eb, "dbias")


# ---------------------------------------------------------------- bad input
X = tf.ones((2, 4))
K = tf.ones((4, 3))
DY = tf.ones((2, 3))


def fwd(x=X, k=K, bias=(), **kw):
    return lib.mps_dense(x=x, kernel=k, bias=list(bias), **kw)


def bin_(dy=DY, k=K, y=(), **kw):
    return lib.mps_dense_backprop_input(dy=dy, kernel=k, y=list(y), **kw)


def bker(x=X, dy=DY, y=(), **kw):
    return lib.mps_dense_backprop_kernel(x=x, dy=dy, y=list(y), **kw)


BAD_INPUT = {
    # ranks
    "x_rank": (lambda: fwd(x=tf.ones(4)), r"MpsDense: x must be at least 2-D \[\.\.\., in_features\], got shape \[4\]"),
    "kernel_rank": (lambda: fwd(k=tf.ones((1, 4, 3))),
                    r"MpsDense: kernel must be 2-D \[in_features, units\], got shape \[1,4,3\]"),
    "dy_rank_input_grad": (lambda: bin_(dy=tf.ones(3)),
                           r"MpsDenseBackpropInput: dy must be at least 2-D \[\.\.\., units\], got shape \[3\]"),
    "kernel_rank_input_grad": (lambda: bin_(k=tf.ones(3)),
                               r"MpsDenseBackpropInput: kernel must be 2-D .* got shape \[3\]"),
    "x_rank_kernel_grad": (lambda: bker(x=tf.ones(4)),
                           r"MpsDenseBackpropKernel: x must be at least 2-D .* got shape \[4\]"),
    "dy_rank_kernel_grad": (lambda: bker(dy=tf.ones(3)),
                            r"MpsDenseBackpropKernel: dy must be at least 2-D .* got shape \[3\]"),
    # feature counts
    "k_mismatch": (lambda: fwd(x=tf.ones((2, 5))),
                   r"MpsDense: x's last dimension must equal the kernel's first \(in_features\): expected 4, got 5 "
                   r"\(x \[2,5\], kernel \[4,3\]\)"),
    "units_mismatch_input_grad": (lambda: bin_(dy=tf.ones((2, 2))),
                                  r"MpsDenseBackpropInput: dy's last dimension must equal the kernel's last \(units\): "
                                  r"expected 3, got 2"),
    "rows_mismatch_kernel_grad": (lambda: bker(dy=tf.ones((3, 3))),
                                  r"MpsDenseBackpropKernel: dy's leading dimensions must be x's .*expected \[2\], "
                                  r"got \[3\]"),
    # bias
    "bias_size": (lambda: fwd(bias=[tf.ones(4)]),
                  r"MpsDense: bias must be 1-D \[units\] with one value per unit \(the kernel's last dimension\): "
                  r"expected \[3\], got shape \[4\]"),
    "bias_rank": (lambda: fwd(bias=[tf.ones((1, 3))]), r"MpsDense: bias must be 1-D .* got shape \[1,3\]"),
    "bias_list_length": (lambda: fwd(bias=[tf.ones(3), tf.ones(3)]),
                         r"MpsDense: bias must be a list of 0 or 1 tensors, got 2"),
    "num_bias_gradients": (lambda: bker(num_bias=2), r"MpsDenseBackpropKernel: dbias must be a list of 0 or 1 "
                                                     r"tensors, got 2"),
    # the relu mask
    "y_missing_for_relu": (lambda: bin_(activation="relu"),
                           r"MpsDenseBackpropInput: y \(the forward output, relu's mask\) must be given exactly when "
                           r"activation is 'relu': expected 1 tensor for activation 'relu', got 0"),
    "y_without_relu": (lambda: bker(y=[DY]),
                       r"MpsDenseBackpropKernel: y .* expected 0 tensors for activation 'none', got 1"),
    "y_shape_input_grad": (lambda: bin_(y=[tf.ones((3, 3))], activation="relu"),
                           r"MpsDenseBackpropInput: y must have dy's shape: expected \[2,3\], got \[3,3\]"),
    "y_shape_kernel_grad": (lambda: bker(y=[tf.ones((2, 2))], activation="relu"),
                            r"MpsDenseBackpropKernel: y must have dy's shape: expected \[2,3\], got \[2,2\]"),
    # attributes
    "activation": (lambda: fwd(activation="tanh"), r"MpsDense: activation must be 'none' or 'relu', got 'tanh'"),
    "activation_input_grad": (lambda: bin_(activation="sigmoid"),
                              r"MpsDenseBackpropInput: activation must be 'none' or 'relu', got 'sigmoid'"),
    "accumulator": (lambda: fwd(accumulator_precision="float64"),
                    r"MpsDense: accumulator_precision must be 'float32' or 'float16', got 'float64'"),
    "accumulator_kernel_grad": (lambda: bker(accumulator_precision="half"),
                                r"MpsDenseBackpropKernel: accumulator_precision must be 'float32' or 'float16', "
                                r"got 'half'"),
    # sizes BLAS cannot index (a tensor with no elements can have 2^31 rows)
    "rows_beyond_int": (lambda: fwd(x=tf.zeros((2**31, 0)), k=tf.zeros((0, 3))),
                        r"MpsDense: the number of rows \(the product of the leading dimensions\) must be at most "
                        r"2147483647 \(the BLAS index range\), got 2147483648"),
    # dtypes
    "dtype_raw_op": (lambda: fwd(x=tf.ones((2, 4), tf.float64), k=tf.ones((4, 3), tf.float64)),
                     r"(?s)Value for attr 'T' of double is not in the list of allowed values: half, float.*MpsDense"),
    "dtype_mismatch_raw_op": (lambda: fwd(k=tf.ones((4, 3), tf.float16)), r"cannot compute MpsDense as input #1\(zero-based\) was expected to be a float tensor but is a half tensor"),
    "dtype_wrapper_x": (lambda: D.dense(tf.ones((2, 4), tf.float64), K),
                        r"dense: x must be float32 or float16, got float64"),
    "dtype_wrapper_kernel": (lambda: D.dense(X, tf.ones((4, 3), tf.float16)),
                             r"dense: kernel must have x's dtype float32, got float16"),
    "dtype_wrapper_bias": (lambda: D.dense(X, K, tf.ones(3, tf.float16)),
                           r"dense: bias must have x's dtype float32, got float16"),
    # the Python wrapper's arguments
    "wrapper_rank": (lambda: D.dense(tf.ones(4), K), r"dense: x must be at least 2-D \[\.\.\., in_features\]"),
    "wrapper_kernel_rank": (lambda: D.dense(X, tf.ones(4)), r"dense: kernel must be 2-D \[in_features, units\]"),
    "wrapper_activation": (lambda: D.dense(X, K, activation="tanh"),
                           r"dense: activation must be None, 'linear' or 'relu', got 'tanh'"),
    "wrapper_accumulator": (lambda: D.dense(X, K, accumulator_precision="bfloat16"),
                            r"dense: accumulator_precision must be 'float32' or 'float16', got 'bfloat16'"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUT))
def test_bad_input(device, name):
    fn, pattern = BAD_INPUT[name]
    with pytest.raises(INVALID, match=pattern):
        fn()


def test_shape_function_reports_at_trace_time(device):
    # Graph construction runs the shape functions: the same messages, as TF's ValueError.
    @tf.function
    def fn(x, k, b):
        return lib.mps_dense(x=x, kernel=k, bias=[b])

    with pytest.raises(ValueError, match=r"MpsDense: x's last dimension must equal the kernel's first"):
        fn.get_concrete_function(tf.TensorSpec((None, 5)), tf.TensorSpec((4, 3)), tf.TensorSpec((3,)))
    with pytest.raises(ValueError, match=r"MpsDense: bias must have one value per unit"):
        fn.get_concrete_function(tf.TensorSpec((None, 4)), tf.TensorSpec((4, 3)), tf.TensorSpec((2,)))
    with pytest.raises(ValueError, match=r"MpsDense: x must be at least 2-D"):
        fn.get_concrete_function(tf.TensorSpec((4,)), tf.TensorSpec((4, 3)), tf.TensorSpec((3,)))

    @tf.function
    def grad(dy, k):
        return lib.mps_dense_backprop_input(dy=dy, kernel=k, y=[], activation="relu")

    with pytest.raises(ValueError, match=r"MpsDenseBackpropInput: y \(the forward output"):
        grad.get_concrete_function(tf.TensorSpec((2, 3)), tf.TensorSpec((4, 3)))
