"""The Metal backend of pooling (ops/pool/pool_metal.mm: MPSCNNPoolingMax / MPSCNNPoolingAverage
on MPSImages) executed on the Linux Metal emulation, against the CPU backend (pool_cpu: the
same loops the MpsMaxPool2D / MpsAvgPool2D CPU kernels run) and tf.nn's pooling.

What this can tell (docs/metal-emulation.md): the emulation's fake (emulation/mps/mps_cnn_pooling.mm)
turns Apple's documented window geometry (offset = the first window's centre, its top left
corner at offset - floor(k/2), edgeMode Clamp) back into the CPU backend's geometry and runs
its loops, so these tests check what pool_metal.mm does with MPS: the offset it derives
from TF's VALID / SAME padding, edgeMode and zeroPadSize, the image shapes, buffer offsets,
streams, nil handling and object lifetimes. They cannot tell how Apple's kernel rounds an
average, nor confirm the fake's choices where Apple is silent (listed in the fake).
"""


import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import metal_emu

emu = metal_emu.load()

OK, UNSUPPORTED, INTERNAL = 0, 1, 2
UNWRITTEN = -7.0  # what the bindings fill the outputs with

PER_CALL_CLASSES = ["TFMPSEmuBuffer", "TFMPSEmuCommandBuffer", "TFMPSHeapString", "MPSMatrix",
                    "MPSMatrixDescriptor", "MPSImage", "MPSImageDescriptor", "MPSImageCopyToMatrix",
                    "MPSMatrixCopyToImage", "MPSCNNPoolingMax", "MPSCNNPoolingAverage", "NSError",
                    "MPSCNNPoolingMaxGradient", "MPSCNNPoolingAverageGradient", "MPSNNGradientState"]


@pytest.fixture(autouse=True)
def no_leaks():
    yield from metal_emu.no_leaks(emu, PER_CALL_CLASSES)


def _check(result, code=OK):
    got, message = result
    assert got == code, f"Metal backend returned code {got} ({message}), expected {code}"
    return message


def _x(shape, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: many equal maxima
        return rng.integers(-2, 3, size=shape).astype(np.float32)
    return (rng.standard_normal(shape) * 3 - 1).astype(np.float32)


def _tf(kind, x, k, s, padding):
    fn = tf.nn.max_pool2d if kind == "max" else tf.nn.avg_pool2d
    with tf.device("/CPU:0"):
        return fn(x, ksize=list(k), strides=list(s), padding=padding).numpy()


def _forward(kind, x, k, s, padding, offset=0, stream=False):
    r, y = emu.pool_forward(x, k, s, padding, avg=(kind == "avg"), offset=offset, stream=stream)
    _check(r)
    ref = emu.pool_cpu(kind, x, k, s, padding)
    if kind == "max":
        np.testing.assert_array_equal(y, ref)
        np.testing.assert_array_equal(y, _tf(kind, x, k, s, padding))
    else:
        np.testing.assert_allclose(y, ref, rtol=2e-6, atol=2e-6)
        np.testing.assert_allclose(y, _tf(kind, x, k, s, padding), rtol=1e-5, atol=1e-5)
    return y


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("padding", ["VALID", "SAME"])
@pytest.mark.parametrize("k,s", [((1, 1), (1, 1)), ((2, 2), (2, 2)), ((3, 3), (2, 2)), ((3, 2), (1, 3)),
                                 ((4, 4), (1, 1)), ((5, 3), (3, 2))])
def test_forward_shapes(kind, padding, k, s):
    _forward(kind, _x((2, 9, 8, 5)), k, s, padding)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_forward_all_negative_same_padding(kind):
    # Edge mode Zero would put 0.0 into the padded windows' maximum; Clamp does not.
    x = -np.abs(_x((1, 5, 5, 3))) - 1
    y = _forward(kind, x, (3, 3), (2, 2), "SAME")
    assert (y < 0).all()


def test_forward_window_the_whole_image():
    _forward("avg", _x((3, 4, 6, 7)), (4, 6), (1, 1), "VALID")
    _forward("max", _x((3, 4, 6, 7)), (7, 7), (5, 5), "SAME")


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(1, 12), w=st.integers(1, 12), c=st.integers(1, 9),
       kh=st.integers(1, 5), kw=st.integers(1, 5), sh=st.integers(1, 4), sw=st.integers(1, 4),
       padding=st.sampled_from(["VALID", "SAME"]), kind=st.sampled_from(["max", "avg"]),
       ties=st.booleans(), seed=st.integers(0, 2**16))
def test_forward_random(n, h, w, c, kh, kw, sh, sw, padding, kind, ties, seed):
    if padding == "VALID" and (kh > h or kw > w):
        kh, kw = min(kh, h), min(kw, w)
    _forward(kind, _x((n, h, w, c), seed, ties), (kh, kw), (sh, sw), padding)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_forward_stream_and_offsets(kind):
    x = _x((2, 7, 6, 6), 3)
    _forward(kind, x, (3, 3), (2, 2), "SAME", stream=True)
    _forward(kind, x, (3, 3), (2, 2), "SAME", offset=16)
    r, y = emu.pool_forward(x, (3, 3), (2, 2), "SAME", avg=(kind == "avg"), offset=4)
    assert "aligned" in _check(r, UNSUPPORTED)
    assert (y == UNWRITTEN).all()


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_forward_unsupported_writes_nothing(kind):
    # Metal's texture side (16384) and the empty tensor stay on the CPU.
    for shape, k in [((1, 1, 16385, 1), (1, 1)), ((0, 4, 4, 3), (2, 2)), ((4, 4, 4, 2100 * 4 // 4), (2, 2))]:
        x = np.ones(shape, np.float32)
        r, y = emu.pool_forward(x, k, (1, 1), "VALID", avg=(kind == "avg"))
        _check(r, UNSUPPORTED)
        assert (y == UNWRITTEN).all()


@pytest.mark.parametrize("cls,kind", [("MPSCNNPoolingMax", "max"), ("MPSCNNPoolingAverage", "avg"),
                                      ("MPSImage", "max"), ("MPSMatrixCopyToImage", "avg")])
def test_forward_nil_is_internal(cls, kind):
    x = _x((1, 4, 4, 4))
    emu.fail_next_init(cls, 1)
    r, y = emu.pool_forward(x, (2, 2), (2, 2), "VALID", avg=(kind == "avg"))
    assert "nil" in _check(r, INTERNAL)
    assert (y == UNWRITTEN).all()


def test_forward_gpu_fault_is_internal():
    x = _x((1, 4, 4, 4))
    emu.fail_next_command_buffers(1, "injected GPU fault")
    r, _ = emu.pool_forward(x, (2, 2), (2, 2), "VALID")
    assert "injected GPU fault" in _check(r, INTERNAL)


# ------------------------------------------------------------------------ gradients
def _distinct(shape, seed=0):
    """Values with no ties anywhere (a permutation), so every window has one maximum."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    return (rng.permutation(size).astype(np.float32) - size / 2).reshape(shape) / 8


def _tf_grad(kind, x, dy, k, s, padding):
    fn = tf.nn.max_pool2d if kind == "max" else tf.nn.avg_pool2d
    with tf.device("/CPU:0"):
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = fn(xt, ksize=list(k), strides=list(s), padding=padding)
        return tape.gradient(y, xt, output_gradients=tf.constant(dy)).numpy()


def _gradient(kind, x, k, s, padding, offset=0, stream=False, seed=1):
    ref_y = emu.pool_cpu(kind, x, k, s, padding)
    dy = np.random.default_rng(seed).standard_normal(ref_y.shape).astype(np.float32)
    r, dx = emu.pool_grad(x, list(x.shape), dy, k, s, padding, avg=(kind == "avg"), offset=offset, stream=stream)
    _check(r)
    ref = emu.pool_cpu_grad(kind + "_grad", x, dy, k, s, padding)
    if kind == "max":
        np.testing.assert_array_equal(dx, ref)
        np.testing.assert_array_equal(dx, _tf_grad(kind, x, dy, k, s, padding))
    else:
        np.testing.assert_allclose(dx, ref, rtol=2e-6, atol=2e-6)
        np.testing.assert_allclose(dx, _tf_grad(kind, x, dy, k, s, padding), rtol=1e-5, atol=1e-5)
    return dx


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("padding", ["VALID", "SAME"])
@pytest.mark.parametrize("k,s", [((1, 1), (1, 1)), ((2, 2), (2, 2)), ((3, 3), (2, 2)), ((3, 2), (1, 3)),
                                 ((4, 4), (1, 1)), ((5, 3), (3, 2))])
def test_gradient_shapes(kind, padding, k, s):
    _gradient(kind, _distinct((2, 9, 8, 5)), k, s, padding)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(1, 12), w=st.integers(1, 12), c=st.integers(1, 9),
       kh=st.integers(1, 5), kw=st.integers(1, 5), sh=st.integers(1, 4), sw=st.integers(1, 4),
       padding=st.sampled_from(["VALID", "SAME"]), kind=st.sampled_from(["max", "avg"]),
       seed=st.integers(0, 2**16))
def test_gradient_random(n, h, w, c, kh, kw, sh, sw, padding, kind, seed):
    if padding == "VALID" and (kh > h or kw > w):
        kh, kw = min(kh, h), min(kw, w)
    _gradient(kind, _distinct((n, h, w, c), seed), (kh, kw), (sh, sw), padding, seed=seed)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_gradient_stream_and_offsets(kind):
    x = _distinct((2, 7, 6, 6), 3)
    _gradient(kind, x, (3, 3), (2, 2), "SAME", stream=True)
    _gradient(kind, x, (3, 3), (2, 2), "SAME", offset=16)
    dy = np.ones((2, 4, 3, 6), np.float32)
    r, dx = emu.pool_grad(x, list(x.shape), dy, (3, 3), (2, 2), "SAME", avg=(kind == "avg"), offset=4)
    assert "aligned" in _check(r, UNSUPPORTED)
    assert (dx == UNWRITTEN).all()


def test_average_gradient_ignores_x_values():
    # Apple: any correctly sized image serves as the average gradient's source.
    x = _x((2, 6, 6, 3), ties=True)
    _gradient("avg", x, (3, 3), (2, 2), "SAME")


@pytest.mark.parametrize("stream", [False, True])
def test_max_gradient_ties_and_nan_are_unsupported(stream):
    # MPS picks among tied maxima "implementation specific"; TF the first: decline.
    x = _distinct((1, 6, 6, 3))
    x[0, 0, 1, 2] = x[0, 0, 0, 2] = x[0, :2, :2, 2].max() + 1  # a tie in the first 2x2 window
    dy = np.ones((1, 3, 3, 3), np.float32)
    r, dx = emu.pool_grad(x, list(x.shape), dy, (2, 2), (2, 2), "VALID", stream=stream)
    assert "tied" in _check(r, UNSUPPORTED)
    assert (dx == UNWRITTEN).all()
    x = _distinct((1, 6, 6, 3))
    x[0, 5, 5, 0] = np.nan
    r, dx = emu.pool_grad(x, list(x.shape), dy, (2, 2), (2, 2), "VALID", stream=stream)
    assert "NaN" in _check(r, UNSUPPORTED)
    assert (dx == UNWRITTEN).all()
    # A tie across windows that do not share it is fine: only ties inside one window count.
    x = _distinct((1, 6, 6, 3))
    x[0, 0, 0, 0] = 1000.0
    x[0, 0, 2, 0] = 1000.0
    _gradient("max", x, (2, 2), (2, 2), "VALID", stream=stream)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_gradient_unsupported_writes_nothing(kind):
    x = np.arange(16385, dtype=np.float32).reshape(1, 1, 16385, 1)
    dy = np.ones((1, 1, 16385, 1), np.float32)
    r, dx = emu.pool_grad(x, list(x.shape), dy, (1, 1), (1, 1), "VALID", avg=(kind == "avg"))
    _check(r, UNSUPPORTED)
    assert (dx == UNWRITTEN).all()


@pytest.mark.parametrize("cls,kind", [("MPSCNNPoolingMaxGradient", "max"), ("MPSCNNPoolingAverageGradient", "avg"),
                                      ("MPSCNNPoolingMax", "max"), ("MPSImage", "avg")])
def test_gradient_nil_is_internal(cls, kind):
    x = _distinct((1, 4, 4, 4))
    dy = np.ones((1, 2, 2, 4), np.float32)
    emu.fail_next_init(cls, 1)
    r, dx = emu.pool_grad(x, list(x.shape), dy, (2, 2), (2, 2), "VALID", avg=(kind == "avg"))
    assert "nil" in _check(r, INTERNAL)
    assert (dx == UNWRITTEN).all()


def test_gradient_gpu_fault_is_internal():
    x = _distinct((1, 4, 4, 4))
    dy = np.ones((1, 2, 2, 4), np.float32)
    emu.fail_next_command_buffers(1, "injected GPU fault")
    r, _ = emu.pool_grad(x, list(x.shape), dy, (2, 2), (2, 2), "VALID", avg=True)
    assert "injected GPU fault" in _check(r, INTERNAL)
