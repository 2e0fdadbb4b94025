"""The MPSCNN path of the fully connected layer (ops/dense/dense_metal.mm:
MPSCNNFullyConnected on N images of 1 x 1 x K) executed on the Linux Metal emulation,
against the dense CPU backend (ops/dense/dense_cpu.cc, through the emulation module).

This path is not what the per-op device kernels run (dense_ops.cc stays on
MPSMatrixMultiplication); it is the one the training-graph API will use. What is on Metal
so far, float32 with float32 accumulation: the forward with bias and relu (the fused ReLU
neuron with a = 0), and the identity gradients on MPSCNNFullyConnectedGradient (dx; dW
and db through the gradient state). float16, relu gradients, empty shapes and images
beyond Metal's texture-array limit return Unsupported, tested here to write nothing.

What this can tell (docs/metal-emulation.md): the fake (emulation/mps/mps_cnn_fc.mm)
computes Apple's documented formula with the dense CPU backend after its own image <->
row index maps and its own [M][K] -> [K][M] weight map, so these tests check what
dense_metal.mm does with MPS (the weight repack, the images, the data source, the
descriptor, waits, nil handling, lifetimes). They cannot tell how Apple's kernel rounds,
nor confirm the fake's choices where Apple is silent (listed in mps_cnn_fc.mm).
"""


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import metal_emu

emu = metal_emu.load()

OK, UNSUPPORTED, INTERNAL = 0, 1, 2
UNWRITTEN = -7.0  # what the bindings fill the outputs with
NONE = np.zeros(0, np.float32)

PER_CALL_CLASSES = ["TFMPSEmuBuffer", "TFMPSEmuCommandBuffer", "TFMPSHeapString", "MPSMatrix",
                    "MPSMatrixDescriptor", "MPSImage", "MPSImageDescriptor", "MPSImageCopyToMatrix",
                    "MPSMatrixCopyToImage", "MPSCNNFullyConnected", "MPSCNNFullyConnectedGradient",
                    "TFMPSDenseDataSource", "MPSCNNConvolutionDescriptor", "MPSNNNeuronDescriptor",
                    "MPSCNNConvolutionGradientState", "NSError"]


@pytest.fixture(autouse=True)
def no_leaks():
    yield from metal_emu.no_leaks(emu, PER_CALL_CLASSES, skip_with_device=False)


def _check(result, code=OK):
    got, message = result
    assert got == code, f"Metal backend returned code {got} ({message}), expected {code}"
    return message


def _data(n, k, m, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, k)).astype(np.float32)
    w = rng.standard_normal((k, m)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32) if bias else NONE
    return x, w, b


def _compare(x, w, b, relu=False, offset=0, stream=False):
    r, y = emu.dense_fc_forward(x, w, b, relu=relu, offset=offset, stream=stream)
    _check(r)
    want = emu.dense_forward_cpu(x, w, b, relu=relu)
    k = x.shape[1]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.sqrt(k))
    if relu:
        assert (y >= 0).all()
    return y


def test_fc_weights_are_the_kernels_transpose():
    w = np.arange(15, dtype=np.float32).reshape(3, 5)
    np.testing.assert_array_equal(emu.dense_fc_weights(w), w.T)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 9), k=st.integers(1, 23), m=st.integers(1, 19), bias=st.booleans(), relu=st.booleans(),
       seed=st.integers(0, 2**16))
def test_forward_matches_cpu_backend(n, k, m, bias, relu, seed):
    _compare(*_data(n, k, m, bias, seed), relu=relu)


@pytest.mark.parametrize("n,k,m", [(1, 1, 1), (3, 4, 4), (5, 7, 3), (2, 64, 129), (33, 10, 6)])
def test_forward_shapes(n, k, m):
    _compare(*_data(n, k, m))
    _compare(*_data(n, k, m, bias=False), relu=True)


def test_forward_exact_small_integers():
    x = np.array([[1, -2, 3], [0, 1, -1]], np.float32)
    w = np.array([[1, 0], [2, 1], [-1, 3]], np.float32)
    b = np.array([0.5, -10], np.float32)
    r, y = emu.dense_fc_forward(x, w, b)
    _check(r)
    np.testing.assert_array_equal(y, x @ w + b)
    r, y = emu.dense_fc_forward(x, w, b, relu=True)
    _check(r)
    np.testing.assert_array_equal(y, np.maximum(x @ w + b, 0))


def test_in_a_device_stream_and_offsets():
    args = _data(4, 6, 5)
    _compare(*args, stream=True)
    _compare(*args, relu=True, stream=True)
    _compare(*args, offset=32)
    r, y = emu.dense_fc_forward(*args, offset=4)
    assert "aligned" in _check(r, UNSUPPORTED)
    assert (y == UNWRITTEN).all()


@pytest.mark.parametrize("n,k,m", [(0, 3, 4), (2, 0, 4), (2, 3, 0)])
def test_empty_is_unsupported(n, k, m):
    r, y = emu.dense_fc_forward(*_data(n, k, m))
    _check(r, UNSUPPORTED)
    assert (y == UNWRITTEN).all()


def test_texture_array_limit():
    _compare(*_data(512, 16, 3))  # 512 images x 4 slices: the limit
    r, y = emu.dense_fc_forward(*_data(513, 16, 3))
    assert "2048" in _check(r, UNSUPPORTED)
    assert (y == UNWRITTEN).all()
    r, y = emu.dense_fc_forward(*_data(2, 3, 4097))
    assert "2048" in _check(r, UNSUPPORTED)


@pytest.mark.parametrize("cls", ["MPSCNNFullyConnected", "MPSImage", "MPSMatrix", "MPSMatrixCopyToImage"])
def test_nil_initializer_is_internal(cls):
    emu.fail_next_init(cls, 1)
    r, y = emu.dense_fc_forward(*_data(2, 3, 4))
    assert "nil" in _check(r, INTERNAL)
    assert (y == UNWRITTEN).all()


def test_failed_command_buffer_is_internal():
    emu.fail_next_command_buffers(1, "injected GPU fault")
    r, y = emu.dense_fc_forward(*_data(2, 3, 4))
    assert "injected GPU fault" in _check(r, INTERNAL)


# ------------------------------------------------------------------ gradients


def _compare_grads(n, k, m, seed=0, offset=0, stream=False, bias=True):
    x, w, _ = _data(n, k, m, bias=False, seed=seed)
    dy = np.random.default_rng(seed + 1).standard_normal((n, m)).astype(np.float32)
    want_dx, want_dw, want_db = emu.dense_backprop_cpu(x, w, dy)
    r, dx = emu.dense_fc_backprop_input(dy, w, offset=offset, stream=stream)
    _check(r)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5 * np.sqrt(m))
    r, dw, db = emu.dense_fc_backprop_kernel(x, dy, bias=bias, offset=offset, stream=stream)
    _check(r)
    np.testing.assert_allclose(dw, want_dw, rtol=1e-5, atol=1e-5 * np.sqrt(n))
    if bias:
        np.testing.assert_allclose(db, want_db, rtol=1e-5, atol=1e-5 * np.sqrt(n))
    else:
        assert db.size == 0


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 9), k=st.integers(1, 23), m=st.integers(1, 19), seed=st.integers(0, 2**16))
def test_gradients_match_cpu_backend(n, k, m, seed):
    _compare_grads(n, k, m, seed)


@pytest.mark.parametrize("n,k,m", [(1, 1, 1), (3, 4, 4), (5, 7, 3), (2, 64, 129), (33, 10, 6)])
def test_gradient_shapes(n, k, m):
    _compare_grads(n, k, m)
    _compare_grads(n, k, m, bias=False)


def test_gradients_exact_small_integers():
    x = np.array([[1, -2, 3], [0, 1, -1]], np.float32)
    w = np.array([[1, 0], [2, 1], [-1, 3]], np.float32)
    dy = np.array([[1, 2], [-3, 1]], np.float32)
    r, dx = emu.dense_fc_backprop_input(dy, w)
    _check(r)
    np.testing.assert_array_equal(dx, dy @ w.T)
    r, dw, db = emu.dense_fc_backprop_kernel(x, dy)
    _check(r)
    np.testing.assert_array_equal(dw, x.T @ dy)
    np.testing.assert_array_equal(db, dy.sum(0))


def test_gradients_in_a_device_stream_and_offsets():
    _compare_grads(4, 6, 5, stream=True)
    _compare_grads(4, 6, 5, offset=32)
    x, w, _ = _data(4, 6, 5, bias=False)
    dy = np.ones((4, 5), np.float32)
    r, dx = emu.dense_fc_backprop_input(dy, w, offset=4)
    assert "aligned" in _check(r, UNSUPPORTED)
    assert (dx == UNWRITTEN).all()
    r, dw, db = emu.dense_fc_backprop_kernel(x, dy, offset=4)
    assert "aligned" in _check(r, UNSUPPORTED)
    assert (dw == UNWRITTEN).all() and (db == UNWRITTEN).all()


def test_gradients_relu_is_unsupported():
    x, w, _ = _data(3, 4, 5, bias=False)
    dy = np.ones((3, 5), np.float32)
    r, dx = emu.dense_fc_backprop_input(dy, w, relu=True)
    assert "relu" in _check(r, UNSUPPORTED)
    assert (dx == UNWRITTEN).all()
    r, dw, db = emu.dense_fc_backprop_kernel(x, dy, relu=True)
    assert "relu" in _check(r, UNSUPPORTED)
    assert (dw == UNWRITTEN).all() and (db == UNWRITTEN).all()


@pytest.mark.parametrize("n,k,m", [(0, 3, 4), (2, 0, 4), (2, 3, 0), (513, 16, 3)])
def test_gradients_empty_or_too_large_is_unsupported(n, k, m):
    x, w, _ = _data(n, k, m, bias=False)
    dy = np.ones((n, m), np.float32)
    r, dx = emu.dense_fc_backprop_input(dy, w)
    _check(r, UNSUPPORTED)
    assert (dx == UNWRITTEN).all()
    r, dw, db = emu.dense_fc_backprop_kernel(x, dy)
    _check(r, UNSUPPORTED)
    assert (dw == UNWRITTEN).all() and (db == UNWRITTEN).all()


@pytest.mark.parametrize("cls", ["MPSCNNFullyConnected", "MPSCNNFullyConnectedGradient",
                                 "MPSCNNConvolutionGradientState", "MPSImage"])
def test_gradients_nil_initializer_is_internal(cls):
    x, w, _ = _data(2, 3, 4, bias=False)
    dy = np.ones((2, 4), np.float32)
    emu.fail_next_init(cls, 1)
    r, dx = emu.dense_fc_backprop_input(dy, w)
    assert "nil" in _check(r, INTERNAL)
    assert (dx == UNWRITTEN).all()
    emu.fail_next_init(cls, 1)
    r, dw, db = emu.dense_fc_backprop_kernel(x, dy)
    assert "nil" in _check(r, INTERNAL)
    assert (dw == UNWRITTEN).all() and (db == UNWRITTEN).all()


def test_gradients_failed_command_buffer_is_internal():
    x, w, _ = _data(2, 3, 4, bias=False)
    dy = np.ones((2, 4), np.float32)
    emu.fail_next_command_buffers(1, "injected GPU fault")
    r, dw, db = emu.dense_fc_backprop_kernel(x, dy)
    assert "injected GPU fault" in _check(r, INTERNAL)
    assert (dw == UNWRITTEN).all() and (db == UNWRITTEN).all()
