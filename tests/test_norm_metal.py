"""The Metal backend of batch / instance normalization (ops/norm/norm_metal.mm:
MPSCNNBatchNormalization on MPSImages) executed on the Linux Metal emulation, against
the CPU backend (the MpsBatchNorm op on the CPU device).

What is on Metal so far: batch norm inference (given mean and variance) and training (batch
statistics: MPSCNNBatchNormalizationStatistics into an MPSCNNBatchNormalizationState), float32.
Every other case (instance norm, the gradients, float16, no rows) returns Unsupported, so
the caller runs the CPU backend: tested here to write nothing.

What this can tell (docs/metal-emulation.md): the emulation's fake
(emulation/mps/mps_cnn_norm.mm) computes Apple's documented formula with the CPU
backend's own loops after its own image <-> NHWC index maps, so these tests check what
norm_metal.mm does with MPS: the view of [R, C] as images, the data source, epsilon, the
statistics outputs, buffer offsets, waits, nil handling and object lifetimes. They cannot
tell how Apple's kernel rounds, nor confirm the fake's choices where Apple is silent
(listed in mps_cnn_norm.mm).
"""


import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import metal_emu
from tf_mps import _lib

emu = metal_emu.load()
lib = _lib.load()

OK, UNSUPPORTED, INTERNAL = 0, 1, 2
UNWRITTEN = -7.0  # what the bindings fill the outputs with
NONE = np.zeros(0, np.float32)

PER_CALL_CLASSES = ["MPSCNNBatchNormalizationStatisticsGradient", "MPSCNNBatchNormalizationGradient", "TFMPSEmuBuffer", "TFMPSEmuCommandBuffer", "TFMPSHeapString", "MPSMatrix",
                    "MPSMatrixDescriptor", "MPSImage", "MPSImageDescriptor", "MPSImageCopyToMatrix",
                    "MPSMatrixCopyToImage", "MPSCNNBatchNormalization", "TFMPSBatchNormDataSource", "NSError",
                    "MPSCNNBatchNormalizationState", "MPSCNNBatchNormalizationStatistics",
                    "MPSCNNInstanceNormalization", "TFMPSInstanceNormDataSource"]


@pytest.fixture(autouse=True)
def no_leaks():
    yield from metal_emu.no_leaks(emu, PER_CALL_CLASSES)


def _check(result, code=OK):
    got, message = result
    assert got == code, f"Metal backend returned code {got} ({message}), expected {code}"
    return message


def _data(shape, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[-1]
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    gamma = rng.standard_normal(c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    mean = rng.standard_normal(c).astype(np.float32)
    variance = (rng.random(c) * 4).astype(np.float32)
    return x, gamma, beta, mean, variance


def cpu_inference(x, gamma, beta, mean, variance, epsilon):
    with tf.device("/CPU:0"):
        outs = lib.mps_batch_norm(x=x, gamma=gamma, beta=beta, mean=mean, variance=variance, epsilon=epsilon,
                                  is_training=False)
    return [t.numpy() for t in outs]


def cpu_training(x, gamma, beta, epsilon):
    with tf.device("/CPU:0"):
        outs = lib.mps_batch_norm(x=x, gamma=gamma, beta=beta, mean=NONE, variance=NONE, epsilon=epsilon,
                                  is_training=True)
    return [t.numpy() for t in outs]


def _compare_training(x, gamma, beta, epsilon=1e-3, offset=0, stream=False):
    r, y, m, v, inv = emu.norm_forward(x, gamma, beta, NONE, NONE, epsilon, offset=offset, stream=stream)
    _check(r)
    y_cpu, m_cpu, v_cpu, inv_cpu = cpu_training(x, gamma, beta, epsilon)
    # The fake's statistics are the CPU backend's (same loops): bit-identical here; on a
    # Mac they are MPS's sums. y is normalized with the float32 statistics (MPS's formula),
    # the CPU backend with its float64 ones: float32 rounding of the result's scale.
    np.testing.assert_array_equal(m, m_cpu)
    np.testing.assert_array_equal(v, v_cpu)
    # inv_std from the float32 variance (the CPU backend uses its float64 one): 1 ulp.
    np.testing.assert_allclose(inv, inv_cpu, rtol=3e-7, atol=0)
    scale = max(1.0, float(np.max(np.abs(y_cpu))))
    np.testing.assert_allclose(y, y_cpu, rtol=1e-5, atol=2e-6 * scale, err_msg="y: Metal != CPU backend")


def _compare(x, gamma, beta, mean, variance, epsilon=1e-3, offset=0, stream=False):
    r, y, m, v, inv = emu.norm_forward(x, gamma, beta, mean, variance, epsilon, offset=offset, stream=stream)
    _check(r)
    y_cpu, m_cpu, v_cpu, inv_cpu = cpu_inference(x, gamma, beta, mean, variance, epsilon)
    # MPS's documented formula, (x - mean) * gamma / sqrt(var + eps) + beta, is the CPU
    # backend's up to float32 rounding: a few ulps of the result's scale.
    scale = max(1.0, float(np.max(np.abs(y_cpu))) if y_cpu.size else 1.0)
    np.testing.assert_allclose(y, y_cpu, rtol=1e-5, atol=1e-6 * scale, err_msg="y: Metal != CPU backend")
    # The statistics are written as the CPU backend writes them: bit-identical.
    np.testing.assert_array_equal(m, m_cpu)
    np.testing.assert_array_equal(v, v_cpu)
    np.testing.assert_array_equal(inv, inv_cpu)


def _assert_unwritten(*arrays):
    for a in arrays:
        assert np.all(a == UNWRITTEN), "an Unsupported call wrote an output"


# ------------------------------------------------------------------ batch norm inference
@settings(max_examples=25, deadline=None)
@given(dims=st.lists(st.integers(1, 6), min_size=1, max_size=4), channels=st.integers(1, 13),
       epsilon=st.sampled_from([1e-3, 1e-5, 0.5]), seed=st.integers(0, 2**16))
def test_inference_matches_cpu_backend(dims, channels, epsilon, seed):
    _compare(*_data(tuple(dims) + (channels,), seed), epsilon=epsilon)


@pytest.mark.parametrize("shape", [(2, 1, 1, 3), (5, 7), (1, 1, 1, 1), (3, 2, 2, 2, 5), (4, 3, 3, 17), (2, 9, 9, 64)])
def test_inference_shapes(shape):
    _compare(*_data(shape))


def test_rows_beyond_one_texture_side():
    # 3 * 17 * 401 = 20451 rows: more than one 16384-wide row of pixels.
    _compare(*_data((3, 17, 401, 3)))


def test_prime_row_count_beyond_texture_side_is_unsupported():
    # 16411 is prime: no factorization into images fits Metal's limits (16384 x 16384
    # pixels, 2048 slices).
    x, g, b, m, v = _data((16411, 2))
    r, y, mo, vo, inv = emu.norm_forward(x, g, b, m, v, 1e-3)
    assert "Metal's limit" in _check(r, UNSUPPORTED)
    _assert_unwritten(y, mo, vo, inv)


def test_texture_array_limit():
    # 8193 channels are 2049 texture-array slices: Metal allows 2048.
    x, g, b, m, v = _data((2, 8193))
    r, y, mo, vo, inv = emu.norm_forward(x, g, b, m, v, 1e-3)
    assert "2048" in _check(r, UNSUPPORTED)
    _assert_unwritten(y, mo, vo, inv)
    _compare(*_data((2, 8192)))  # 2048 slices: fine


def test_in_a_device_stream():
    x, g, b, m, v = _data((3, 5, 4, 6))
    _compare(x, g, b, m, v, stream=True)
    emu.fail_next_command_buffers(1, "injected GPU fault")
    r = emu.norm_forward(x, g, b, m, v, 1e-3, stream=True)[0]
    assert "injected GPU fault" in _check(r, INTERNAL)


def test_aligned_offsets_are_fine_unaligned_unsupported():
    x, g, b, m, v = _data((2, 3, 3, 5))
    _compare(x, g, b, m, v, offset=32)
    r, y, mo, vo, inv = emu.norm_forward(x, g, b, m, v, 1e-3, offset=4)
    assert "aligned" in _check(r, UNSUPPORTED)
    _assert_unwritten(y, mo, vo, inv)


# ------------------------------------------------------------------ batch norm training
@settings(max_examples=25, deadline=None)
@given(dims=st.lists(st.integers(1, 6), min_size=1, max_size=4), channels=st.integers(1, 13),
       epsilon=st.sampled_from([1e-3, 1e-5, 0.5]), seed=st.integers(0, 2**16))
def test_training_matches_cpu_backend(dims, channels, epsilon, seed):
    x, g, b, _, _ = _data(tuple(dims) + (channels,), seed)
    _compare_training(x, g, b, epsilon=epsilon)


@pytest.mark.parametrize("shape", [(2, 1, 1, 3), (5, 7), (1, 1, 1, 1), (3, 2, 2, 2, 5), (4, 3, 3, 17), (2, 9, 9, 64),
                                   (3, 17, 401, 3)])
def test_training_shapes(shape):
    x, g, b, _, _ = _data(shape, 3)
    _compare_training(x, g, b)


def test_training_constant_channel():
    # Zero variance: inv_std = 1 / sqrt(epsilon), y = beta.
    x, g, b, _, _ = _data((4, 3, 3, 6), 5)
    x[..., 2] = 1.5
    _compare_training(x, g, b)


def test_training_in_a_device_stream_and_offsets():
    x, g, b, _, _ = _data((3, 5, 4, 6), 7)
    _compare_training(x, g, b, stream=True)
    _compare_training(x, g, b, offset=32)
    r, y, mo, vo, inv = emu.norm_forward(x, g, b, NONE, NONE, 1e-3, offset=4)
    assert "aligned" in _check(r, UNSUPPORTED)
    _assert_unwritten(y, mo, vo, inv)


@pytest.mark.parametrize("cls", ["MPSCNNBatchNormalization", "MPSCNNBatchNormalizationStatistics",
                                 "MPSCNNBatchNormalizationState", "MPSImage", "MPSMatrix"])
def test_training_nil_initializer_is_internal(cls):
    x, g, b, _, _ = _data((2, 3, 3, 5))
    emu.fail_next_init(cls, 1)
    r, y, mo, vo, inv = emu.norm_forward(x, g, b, NONE, NONE, 1e-3)
    assert "nil" in _check(r, INTERNAL)
    _assert_unwritten(mo, vo, inv)


def test_training_failed_command_buffer_is_internal():
    x, g, b, _, _ = _data((2, 3, 3, 5))
    emu.fail_next_command_buffers(1, "injected GPU fault")
    r, y, mo, vo, inv = emu.norm_forward(x, g, b, NONE, NONE, 1e-3)
    assert "injected GPU fault" in _check(r, INTERNAL)
    _assert_unwritten(mo, vo, inv)


def test_training_too_many_slices_is_unsupported():
    x, g, b, _, _ = _data((2, 8193))
    r, y, mo, vo, inv = emu.norm_forward(x, g, b, NONE, NONE, 1e-3)
    assert "2048" in _check(r, UNSUPPORTED)
    _assert_unwritten(y, mo, vo, inv)


# ------------------------------------------------------------------ batch norm training gradient
def cpu_backward(dy, x, gamma, mean, inv_std, gm=NONE, gv=NONE, training=True):
    with tf.device("/CPU:0"):
        outs = lib.mps_batch_norm_grad(dy=dy, x=x, gamma=gamma, mean=mean, inv_std=inv_std, mean_backprop=gm,
                                       variance_backprop=gv, is_training=training)
    return [t.numpy() for t in outs]


def _backward_data(shape, seed=0, epsilon=1e-3):
    x, g, b, _, _ = _data(shape, seed)
    dy = np.random.default_rng(seed + 1).standard_normal(shape).astype(np.float32)
    _, m, _, inv = cpu_training(x, g, b, epsilon)
    return dy, x, g, m, inv


def _compare_backward(dy, x, g, m, inv, gm=NONE, gv=NONE, offset=0, stream=False):
    r, dx, dgamma, dbeta = emu.norm_backward(dy, x, g, m, inv, gm, gv, offset=offset, stream=stream)
    _check(r)
    dx_cpu, dgamma_cpu, dbeta_cpu = cpu_backward(dy, x, g, m, inv, gm, gv)
    # The fake runs the CPU backend's backward with inv_std re-formed from the variance
    # 1 / inv_std^2 it was given (epsilon 0): float32 rounding of inv_std, a few ulps of
    # each sum's scale. On a Mac: MPS's sums.
    rows = x.size // x.shape[-1]
    dscale = float(np.sqrt(rows)) * 4
    np.testing.assert_allclose(dbeta, dbeta_cpu, rtol=1e-5, atol=1e-6 * dscale, err_msg="dbeta")
    np.testing.assert_allclose(dgamma, dgamma_cpu, rtol=1e-5, atol=1e-6 * dscale, err_msg="dgamma")
    scale = max(1.0, float(np.max(np.abs(dx_cpu))))
    np.testing.assert_allclose(dx, dx_cpu, rtol=1e-4, atol=1e-5 * scale, err_msg="dx: Metal != CPU backend")


@settings(max_examples=25, deadline=None)
@given(dims=st.lists(st.integers(1, 6), min_size=1, max_size=4), channels=st.integers(1, 13),
       epsilon=st.sampled_from([1e-3, 1e-5, 0.5]), seed=st.integers(0, 2**16))
def test_backward_matches_cpu_backend(dims, channels, epsilon, seed):
    _compare_backward(*_backward_data(tuple(dims) + (channels,), seed, epsilon))


@pytest.mark.parametrize("shape", [(2, 1, 1, 3), (5, 7), (1, 1, 1, 1), (3, 2, 2, 2, 5), (4, 3, 3, 17), (2, 9, 9, 64),
                                   (3, 17, 401, 3)])
def test_backward_shapes(shape):
    _compare_backward(*_backward_data(shape, 11))


def test_backward_zero_statistics_gradients_are_fine():
    dy, x, g, m, inv = _backward_data((3, 4, 4, 5), 2)
    z = np.zeros(5, np.float32)
    _compare_backward(dy, x, g, m, inv, z, z)


def test_backward_stream_and_offsets():
    args = _backward_data((3, 5, 4, 6), 4)
    _compare_backward(*args, stream=True)
    _compare_backward(*args, offset=32)
    r, dx, dg, db = emu.norm_backward(*args, NONE, NONE, offset=4)
    assert "aligned" in _check(r, UNSUPPORTED)
    _assert_unwritten(dx, dg, db)


@pytest.mark.parametrize("which", ["mean", "variance"])
def test_backward_nonzero_statistics_gradient_is_unsupported(which):
    dy, x, g, m, inv = _backward_data((3, 4, 4, 5), 2)
    z = np.zeros(5, np.float32)
    nz = z.copy()
    nz[3] = 0.25
    gm, gv = (nz, z) if which == "mean" else (z, nz)
    r, dx, dg, db = emu.norm_backward(dy, x, g, m, inv, gm, gv)
    assert "nonzero" in _check(r, UNSUPPORTED)
    _assert_unwritten(dx, dg, db)


def test_backward_inference_is_unsupported():
    dy, x, g, m, inv = _backward_data((3, 4, 4, 5), 2)
    r, dx, dg, db = emu.norm_backward(dy, x, g, m, inv, NONE, NONE, training=False)
    assert "inference" in _check(r, UNSUPPORTED)
    _assert_unwritten(dx, dg, db)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.inf, np.nan])
def test_backward_bad_inv_std_is_unsupported(bad):
    dy, x, g, m, inv = _backward_data((3, 4, 4, 5), 2)
    inv[1] = bad
    r, dx, dg, db = emu.norm_backward(dy, x, g, m, inv, NONE, NONE)
    _check(r, UNSUPPORTED)
    _assert_unwritten(dx, dg, db)


def test_backward_empty_is_unsupported():
    x = np.zeros((0, 3, 5), np.float32)
    g = np.ones(5, np.float32)
    r, dx, dg, db = emu.norm_backward(x, x, g, np.zeros(5, np.float32), np.ones(5, np.float32), NONE, NONE)
    _check(r, UNSUPPORTED)
    _assert_unwritten(dg, db)


@pytest.mark.parametrize("cls", ["MPSCNNBatchNormalization", "MPSCNNBatchNormalizationStatisticsGradient",
                                 "MPSCNNBatchNormalizationGradient", "MPSCNNBatchNormalizationState", "MPSImage",
                                 "MPSMatrix"])
def test_backward_nil_initializer_is_internal(cls):
    args = _backward_data((2, 3, 3, 5))
    emu.fail_next_init(cls, 1)
    r, dx, dg, db = emu.norm_backward(*args, NONE, NONE)
    assert "nil" in _check(r, INTERNAL)
    _assert_unwritten(dx, dg, db)


def test_backward_failed_command_buffer_is_internal():
    args = _backward_data((2, 3, 3, 5))
    emu.fail_next_command_buffers(1, "injected GPU fault")
    r = emu.norm_backward(*args, NONE, NONE)[0]
    assert "injected GPU fault" in _check(r, INTERNAL)


# ------------------------------------------------------------------ instance norm forward
def cpu_instance(x, gamma, beta, epsilon):
    with tf.device("/CPU:0"):
        outs = lib.mps_instance_norm(x=x, gamma=gamma, beta=beta, epsilon=epsilon)
    return [t.numpy() for t in outs]


def _compare_instance(x, gamma, beta, epsilon=1e-3, offset=0, stream=False):
    r, y, m, v, inv = emu.norm_forward(x, gamma, beta, NONE, NONE, epsilon, instance=True, offset=offset,
                                       stream=stream)
    _check(r)
    y_cpu, m_cpu, v_cpu, inv_cpu = cpu_instance(x, gamma, beta, epsilon)
    # Statistics: MPSCNNBatchNormalizationStatistics over one image, which the fake
    # computes with the CPU backend's loops: bit-identical here. y: MPSCNNInstanceNormalization
    # (the fake: the CPU backend's instance forward): bit-identical too, but tested to
    # float32 rounding, what a Mac can promise.
    np.testing.assert_array_equal(m, m_cpu)
    np.testing.assert_array_equal(v, v_cpu)
    np.testing.assert_allclose(inv, inv_cpu, rtol=3e-7, atol=0)
    scale = max(1.0, float(np.max(np.abs(y_cpu))))
    np.testing.assert_allclose(y, y_cpu, rtol=1e-5, atol=2e-6 * scale, err_msg="y: Metal != CPU backend")


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 5), spatial=st.lists(st.integers(1, 6), min_size=1, max_size=3),
       channels=st.integers(1, 13), epsilon=st.sampled_from([1e-3, 1e-5, 0.5]), seed=st.integers(0, 2**16))
def test_instance_matches_cpu_backend(batch, spatial, channels, epsilon, seed):
    x, g, b, _, _ = _data((batch,) + tuple(spatial) + (channels,), seed)
    _compare_instance(x, g, b, epsilon=epsilon)


@pytest.mark.parametrize("shape", [(2, 1, 1, 3), (5, 7, 2), (1, 1, 1, 1), (3, 2, 2, 2, 5), (4, 3, 3, 17),
                                   (2, 9, 9, 64), (2, 17, 401, 3)])
def test_instance_shapes(shape):
    x, g, b, _, _ = _data(shape, 9)
    _compare_instance(x, g, b)


def test_instance_stream_and_offsets():
    x, g, b, _, _ = _data((3, 5, 4, 6), 13)
    _compare_instance(x, g, b, stream=True)
    _compare_instance(x, g, b, offset=32)
    r, y, mo, vo, inv = emu.norm_forward(x, g, b, NONE, NONE, 1e-3, instance=True, offset=4)
    assert "aligned" in _check(r, UNSUPPORTED)
    _assert_unwritten(y, mo, vo, inv)


@pytest.mark.parametrize("cls", ["MPSCNNInstanceNormalization", "MPSCNNBatchNormalization",
                                 "MPSCNNBatchNormalizationStatistics", "MPSCNNBatchNormalizationState", "MPSImage"])
def test_instance_nil_initializer_is_internal(cls):
    x, g, b, _, _ = _data((2, 3, 3, 5))
    emu.fail_next_init(cls, 1)
    r, y, mo, vo, inv = emu.norm_forward(x, g, b, NONE, NONE, 1e-3, instance=True)
    assert "nil" in _check(r, INTERNAL)
    _assert_unwritten(mo, vo, inv)


def test_instance_slices_limit_is_per_image():
    # 3 images of 8192 channels: 2048 texture slices each (Metal's limit), 6144 in all.
    x, g, b, _, _ = _data((3, 1, 2, 8192), 21)
    _compare_instance(x, g, b)
    x, g, b, _, _ = _data((2, 1, 2, 8193), 21)
    r, y, mo, vo, inv = emu.norm_forward(x, g, b, NONE, NONE, 1e-3, instance=True)
    assert "2048" in _check(r, UNSUPPORTED)
    _assert_unwritten(y, mo, vo, inv)


def test_instance_empty_image_is_unsupported():
    x, g, b, _, _ = _data((2, 0, 3, 5))
    r, y, mo, vo, inv = emu.norm_forward(x, g, b, NONE, NONE, 1e-3, instance=True)
    _check(r, UNSUPPORTED)
    _assert_unwritten(mo, vo, inv)


def test_instance_failed_command_buffer_is_internal():
    x, g, b, _, _ = _data((2, 3, 3, 5))
    emu.fail_next_command_buffers(1, "injected GPU fault")
    r = emu.norm_forward(x, g, b, NONE, NONE, 1e-3, instance=True)[0]
    assert "injected GPU fault" in _check(r, INTERNAL)


# ------------------------------------------------------------------ instance norm gradient
def cpu_instance_backward(dy, x, gamma, mean, inv_std, gm=NONE, gv=NONE):
    with tf.device("/CPU:0"):
        outs = lib.mps_instance_norm_grad(dy=dy, x=x, gamma=gamma, mean=mean, inv_std=inv_std, mean_backprop=gm,
                                          variance_backprop=gv)
    return [t.numpy() for t in outs]


def _instance_backward_data(shape, seed=0, epsilon=1e-3):
    x, g, b, _, _ = _data(shape, seed)
    dy = np.random.default_rng(seed + 1).standard_normal(shape).astype(np.float32)
    _, m, _, inv = cpu_instance(x, g, b, epsilon)
    return dy, x, g, m, inv


def _compare_instance_backward(dy, x, g, m, inv, gm=NONE, gv=NONE, offset=0, stream=False):
    r, dx, dgamma, dbeta = emu.norm_backward(dy, x, g, m, inv, gm, gv, instance=True, offset=offset, stream=stream)
    _check(r)
    dx_cpu, dgamma_cpu, dbeta_cpu = cpu_instance_backward(dy, x, g, m, inv, gm, gv)
    dscale = float(np.sqrt(x.size // x.shape[-1])) * 4
    np.testing.assert_allclose(dbeta, dbeta_cpu, rtol=1e-5, atol=1e-6 * dscale, err_msg="dbeta")
    np.testing.assert_allclose(dgamma, dgamma_cpu, rtol=1e-5, atol=1e-6 * dscale, err_msg="dgamma")
    scale = max(1.0, float(np.max(np.abs(dx_cpu))))
    np.testing.assert_allclose(dx, dx_cpu, rtol=1e-4, atol=1e-5 * scale, err_msg="dx: Metal != CPU backend")


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 5), spatial=st.lists(st.integers(1, 6), min_size=1, max_size=3),
       channels=st.integers(1, 13), epsilon=st.sampled_from([1e-3, 1e-5, 0.5]), seed=st.integers(0, 2**16))
def test_instance_backward_matches_cpu_backend(batch, spatial, channels, epsilon, seed):
    _compare_instance_backward(*_instance_backward_data((batch,) + tuple(spatial) + (channels,), seed, epsilon))


@pytest.mark.parametrize("shape", [(2, 1, 1, 3), (5, 7, 2), (1, 1, 1, 1), (3, 2, 2, 2, 5), (4, 3, 3, 17),
                                   (2, 9, 9, 64), (2, 17, 401, 3)])
def test_instance_backward_shapes(shape):
    _compare_instance_backward(*_instance_backward_data(shape, 17))


def test_instance_backward_stream_offsets_and_zero_statistics_gradients():
    dy, x, g, m, inv = _instance_backward_data((3, 5, 4, 6), 19)
    _compare_instance_backward(dy, x, g, m, inv, stream=True)
    _compare_instance_backward(dy, x, g, m, inv, offset=32)
    _compare_instance_backward(dy, x, g, m, inv, np.zeros_like(m), np.zeros_like(m))
    r, dx, dg, db = emu.norm_backward(dy, x, g, m, inv, NONE, NONE, instance=True, offset=4)
    assert "aligned" in _check(r, UNSUPPORTED)
    _assert_unwritten(dx, dg, db)


def test_instance_backward_unsupported_cases_write_nothing():
    dy, x, g, m, inv = _instance_backward_data((3, 4, 4, 5), 2)
    nz = np.zeros_like(m)
    nz[1, 2] = 0.5
    r, dx, dg, db = emu.norm_backward(dy, x, g, m, inv, nz, np.zeros_like(m), instance=True)
    assert "nonzero" in _check(r, UNSUPPORTED)
    _assert_unwritten(dx, dg, db)
    bad = inv.copy()
    bad[2, 0] = 0.0
    r, dx, dg, db = emu.norm_backward(dy, x, g, m, bad, NONE, NONE, instance=True)
    _check(r, UNSUPPORTED)
    _assert_unwritten(dx, dg, db)


@pytest.mark.parametrize("cls", ["MPSCNNBatchNormalization", "MPSCNNBatchNormalizationStatisticsGradient",
                                 "MPSCNNBatchNormalizationGradient", "MPSCNNBatchNormalizationState", "MPSImage"])
def test_instance_backward_nil_initializer_is_internal(cls):
    args = _instance_backward_data((2, 3, 3, 5))
    emu.fail_next_init(cls, 1)
    r, dx, dg, db = emu.norm_backward(*args, NONE, NONE, instance=True)
    assert "nil" in _check(r, INTERNAL)
    _assert_unwritten(dx, dg, db)


def test_instance_backward_failed_command_buffer_is_internal():
    args = _instance_backward_data((2, 3, 3, 5))
    emu.fail_next_command_buffers(1, "injected GPU fault")
    r = emu.norm_backward(*args, NONE, NONE, instance=True)[0]
    assert "injected GPU fault" in _check(r, INTERNAL)


# ------------------------------------------------------------------ what returns Unsupported / Internal




def test_no_rows_is_unsupported():
    x, g, b, m, v = _data((0, 3, 5))
    r, y, mo, vo, inv = emu.norm_forward(x, g, b, m, v, 1e-3)
    _check(r, UNSUPPORTED)
    _assert_unwritten(mo, vo, inv)


@pytest.mark.parametrize("cls", ["MPSCNNBatchNormalization", "MPSImage", "MPSMatrix", "MPSMatrixCopyToImage",
                                 "MPSImageCopyToMatrix"])
def test_nil_initializer_is_internal(cls):
    x, g, b, m, v = _data((2, 3, 3, 5))
    emu.fail_next_init(cls, 1)
    r, y, mo, vo, inv = emu.norm_forward(x, g, b, m, v, 1e-3)
    assert "nil" in _check(r, INTERNAL)
    _assert_unwritten(y, mo, vo, inv)


def test_failed_command_buffer_is_internal():
    x, g, b, m, v = _data((2, 3, 3, 5))
    emu.fail_next_command_buffers(1, "injected GPU fault")
    r = emu.norm_forward(x, g, b, m, v, 1e-3)[0]
    assert "injected GPU fault" in _check(r, INTERNAL)
