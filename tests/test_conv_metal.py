"""The Metal backend of convolution (ops/conv/conv_metal.mm: MPSCNNConvolution and
MPSCNNConvolutionGradient) executed on the Linux Metal emulation, against the CPU
backend (tf_mps.ops.conv2d and its gradients on the CPU device), and the HWIO <-> OHWI
repacking it feeds MPS with (ops/conv/conv_repack.cc).

What this can tell (docs/metal-emulation.md): the emulation's MPSCNN fakes
(emulation/mps/mps_cnn.mm) compute what Apple documents with the CPU backend's own
convolution, after their own index maps (images <-> NHWC, OHWI <-> HWIO), so these tests
check what conv_metal.mm does with MPS: the offset that places TF's padding, strides,
dilations, groups and depthwise, the fused ReLU and bias, the data source's layout, the
gradient state, image and matrix sizes, buffer offsets, waits, nil handling and object
lifetimes. They cannot tell how Apple's kernels round (on a Mac MPS may differ in the
last bits) nor confirm the emulation's reading of Apple's documentation where it is
silent (listed in mps_cnn.mm).
"""


import numpy as np
import pytest
import tensorflow as tf
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import metal_emu
import tf_mps

emu = metal_emu.load()

OK, UNSUPPORTED, INTERNAL = 0, 1, 2

# Everything one call makes must be gone when it returns (the metal context itself is
# kept on purpose).
PER_CALL_CLASSES = ["TFMPSEmuBuffer", "TFMPSEmuCommandBuffer", "TFMPSEmuBlitEncoder", "TFMPSHeapString",
                    "MPSMatrix", "MPSMatrixDescriptor", "MPSImage", "MPSImageDescriptor",
                    "MPSImageCopyToMatrix", "MPSMatrixCopyToImage", "MPSCNNConvolution",
                    "MPSCNNConvolutionGradient", "MPSCNNConvolutionGradientState", "MPSCNNConvolutionTranspose", "MPSCNNConvolutionDescriptor",
                    "MPSCNNDepthWiseConvolutionDescriptor", "MPSNNNeuronDescriptor", "TFMPSConvDataSource",
                    "NSError"]


@pytest.fixture(autouse=True)
def no_leaks():
    yield from metal_emu.no_leaks(emu, PER_CALL_CLASSES)


# ------------------------------------------------------------------ the CPU backend
def _cpu_padding(padding, pads):
    if padding == "EXPLICIT":
        return [[pads[0], pads[1]], [pads[2], pads[3]]]
    return padding


def cpu_forward(x, w, bias, relu, strides, dilations, padding, pads):
    with tf.device("/CPU:0"):
        y = tf_mps.ops.conv2d(x, w, strides=strides, padding=_cpu_padding(padding, pads), dilations=dilations,
                              groups=x.shape[3] // w.shape[2], bias=bias, activation="relu" if relu else None)
    return y.numpy()


def cpu_gradients(x, w, dy, strides, dilations, padding, pads, with_bias):
    with tf.device("/CPU:0"):
        xt, wt = tf.constant(x), tf.constant(w)
        bt = tf.constant(np.zeros(w.shape[3], np.float32)) if with_bias else None
        with tf.GradientTape() as tape:
            tape.watch([xt, wt] + ([bt] if with_bias else []))
            y = tf_mps.ops.conv2d(xt, wt, strides=strides, padding=_cpu_padding(padding, pads), dilations=dilations,
                                  groups=x.shape[3] // w.shape[2], bias=bt)
        grads = tape.gradient(y, [xt, wt] + ([bt] if with_bias else []), output_gradients=tf.constant(dy))
    return [g.numpy() for g in grads]


def _check(result, code=OK):
    got, message = result
    assert got == code, f"Metal backend returned code {got} ({message}), expected {code}"
    return message


def _close(metal, cpu, what):
    # The fake runs the CPU backend's convolution on the same geometry, but TF's CPU
    # kernel splits the work over TF's threads (the fake uses one): sums may be split
    # differently, so last-bit differences are allowed, nothing more.
    scale = max(1.0, float(np.max(np.abs(cpu))) if cpu.size else 1.0)
    np.testing.assert_allclose(metal, cpu, rtol=1e-5, atol=1e-5 * scale, err_msg=f"{what}: Metal != CPU backend")


def _out_size(n, k, s, d, padding, before, after):
    eff = (k - 1) * d + 1
    if padding == "VALID":
        return (n - eff) // s + 1 if n >= eff else 0
    if padding == "SAME":
        return -(-n // s)
    return (n + before + after - eff) // s + 1 if n + before + after >= eff else 0


# ------------------------------------------------------------------ repacking
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 3, 4, 8), (5, 2, 3, 7), (3, 3, 1, 33), (1, 1, 70, 40)])
def test_repack_is_the_documented_transpose(dtype, shape):
    w = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    ohwi = emu.hwio_to_ohwi(w)
    assert ohwi.dtype == dtype
    # ohwi[o, kh, kw, c] = hwio[kh, kw, c, o]
    np.testing.assert_array_equal(ohwi, np.transpose(w, (3, 0, 1, 2)))
    back = emu.ohwi_to_hwio(ohwi)
    assert back.view(np.uint8).tobytes() == w.view(np.uint8).tobytes()  # bits, NaN payloads too


def test_repack_moves_float16_bits_unchanged():
    bits = np.arange(0, 65536, 7, dtype=np.uint16)[: 2 * 3 * 5 * 7].reshape(2, 3, 5, 7)
    w = bits.view(np.float16)
    assert np.array_equal(emu.hwio_to_ohwi(w).view(np.uint16), np.transpose(bits, (3, 0, 1, 2)))


# ------------------------------------------------------------------ forward + gradients
def run_all(x, w, bias, relu, strides, dilations, padding, pads=(), dy=None, offset=0, stream=False):
    """The three Metal entry points against the CPU backend on one configuration."""
    pads = list(pads)
    r, y = emu.conv2d_forward(x, w, bias if bias is not None else np.zeros(0, np.float32), relu, strides, dilations,
                              padding, pads, offset, stream=stream)
    _check(r)
    _close(y, cpu_forward(x, w, bias, relu, strides, dilations, padding, pads), "y")
    if dy is None:
        dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    with_bias = bias is not None
    r, dx = emu.conv2d_backprop_input(list(x.shape), w, dy, strides, dilations, padding, pads, offset, stream=stream)
    _check(r)
    r, dw, db = emu.conv2d_backprop_filter(x, list(w.shape), dy, with_bias, strides, dilations, padding, pads, offset,
                                           stream=stream)
    _check(r)
    cpu = cpu_gradients(x, w, dy, strides, dilations, padding, pads, with_bias)
    _close(dx, cpu[0], "dx")
    _close(dw, cpu[1], "dw")
    if with_bias:
        _close(db, cpu[2], "db")


def _data(n, h, w, c, kh, kw, cg, o, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, h, w, c)).astype(np.float32),
            rng.standard_normal((kh, kw, cg, o)).astype(np.float32),
            rng.standard_normal(o).astype(np.float32))


@pytest.mark.parametrize("padding,pads", [("VALID", ()), ("SAME", ()), ("EXPLICIT", (0, 2, 1, 0)),
                                          ("EXPLICIT", (3, 1, 2, 2))])
@pytest.mark.parametrize("strides", [[1, 1], [2, 2], [3, 2]])
def test_padding_and_strides(padding, pads, strides):
    x, w, b = _data(2, 9, 8, 5, 3, 3, 5, 6)
    run_all(x, w, b, False, strides, [1, 1], padding, pads)


@pytest.mark.parametrize("k", [(1, 1), (2, 2), (2, 3), (4, 1), (5, 5)])
def test_kernel_sizes_odd_and_even(k):
    # Even kernels: TF's SAME puts the extra pad at the bottom/right, MPS centres the window
    # at kernelWidth >> 1: the offset must absorb the difference.
    x, w, b = _data(2, 7, 9, 3, k[0], k[1], 3, 4)
    for padding in ("SAME", "VALID"):
        run_all(x, w, None, False, [1, 1], [1, 1], padding)
        run_all(x, w, None, False, [2, 1], [1, 1], padding)


def test_dilations():
    x, w, b = _data(2, 11, 10, 4, 3, 3, 4, 4)
    for dilations in ([2, 2], [1, 3], [3, 2]):
        run_all(x, w, b, False, [1, 1], dilations, "SAME")
        run_all(x, w, None, False, [2, 1], dilations, "VALID")


@pytest.mark.parametrize("relu", [False, True])
def test_fused_bias_and_relu(relu):
    x, w, b = _data(3, 6, 6, 8, 3, 3, 8, 12)
    r, y = emu.conv2d_forward(x, w, b, relu, [1, 1], [1, 1], "SAME")
    _check(r)
    _close(y, cpu_forward(x, w, b, relu, [1, 1], [1, 1], "SAME", []), "y")
    if relu:
        assert (y >= 0).all() and (y == 0).any()


def test_groups():
    x, w, b = _data(2, 6, 7, 16, 3, 3, 4, 8)  # 4 groups of 4 in, 2 out: 2 is not a multiple of 4
    r, _ = emu.conv2d_forward(x, w, b, False, [1, 1], [1, 1], "SAME")
    assert "multiples of 4" in _check(r, UNSUPPORTED)
    x, w, b = _data(2, 6, 7, 16, 3, 3, 8, 8)  # 2 groups of 8 in, 4 out
    run_all(x, w, b, False, [1, 1], [1, 1], "SAME")
    x, w, b = _data(1, 5, 5, 16, 2, 2, 4, 16)  # 4 groups of 4 in, 4 out
    run_all(x, w, b, False, [2, 2], [1, 1], "VALID")


def test_depthwise():
    x, w, b = _data(2, 8, 7, 6, 3, 3, 1, 6)  # channel multiplier 1
    run_all(x, w, b, False, [1, 1], [1, 1], "SAME")
    run_all(x, w, None, False, [2, 2], [2, 2], "SAME")
    r, y = emu.conv2d_forward(x, w, b, True, [1, 1], [1, 1], "VALID")
    _check(r)
    _close(y, cpu_forward(x, w, b, True, [1, 1], [1, 1], "VALID", []), "y")
    x, w, b = _data(1, 5, 5, 3, 3, 3, 1, 6)  # multiplier 2: MPS supports 1
    r, _ = emu.conv2d_forward(x, w, b, False, [1, 1], [1, 1], "SAME")
    assert "multiplier" in _check(r, UNSUPPORTED)


def test_batch_of_images_beyond_one_texture_slice():
    # 3 images of 9 channels: 3 slices each, a padded last slice per image.
    x, w, b = _data(3, 4, 5, 9, 3, 3, 9, 11)
    run_all(x, w, b, False, [1, 1], [1, 1], "SAME")


@settings(deadline=None)
@given(st.data())
def test_random_shapes_match_cpu_backend(data):
    n = data.draw(st.integers(1, 3), "n")
    kind = data.draw(st.sampled_from(["dense", "groups", "depthwise"]), "kind")
    if kind == "dense":
        groups, cg, og = 1, data.draw(st.integers(1, 6), "c"), data.draw(st.integers(1, 6), "o")
    elif kind == "groups":
        groups, cg, og = data.draw(st.integers(2, 3), "g"), 4 * data.draw(st.integers(1, 2)), 4
    else:
        groups = data.draw(st.integers(1, 7), "c")
        cg, og = 1, 1
    c, o = groups * cg, groups * og
    h, wd = data.draw(st.integers(1, 10), "h"), data.draw(st.integers(1, 10), "w")
    kh, kw = data.draw(st.integers(1, 4), "kh"), data.draw(st.integers(1, 4), "kw")
    strides = [data.draw(st.integers(1, 3), "sh"), data.draw(st.integers(1, 3), "sw")]
    dh = 1 if kh % 2 == 0 else data.draw(st.integers(1, 2), "dh")
    dw = 1 if kw % 2 == 0 else data.draw(st.integers(1, 2), "dw")
    padding = data.draw(st.sampled_from(["VALID", "SAME", "EXPLICIT"]), "padding")
    pads = [data.draw(st.integers(0, 3)) for _ in range(4)] if padding == "EXPLICIT" else []
    p = pads or [0, 0, 0, 0]
    oh = _out_size(h, kh, strides[0], dh, padding, p[0], p[1])
    ow = _out_size(wd, kw, strides[1], dw, padding, p[2], p[3])
    assume(oh > 0 and ow > 0)
    relu = data.draw(st.booleans(), "relu")
    with_bias = data.draw(st.booleans(), "bias")
    x, w, b = _data(n, h, wd, c, kh, kw, cg, o, seed=data.draw(st.integers(0, 2**16)))
    r, y = emu.conv2d_forward(x, w, b if with_bias else np.zeros(0, np.float32), relu, strides, [dh, dw], padding, pads)
    _check(r)
    _close(y, cpu_forward(x, w, b if with_bias else None, relu, strides, [dh, dw], padding, pads), "y")
    run_all(x, w, b if with_bias else None, False, strides, [dh, dw], padding, pads)


def test_in_a_device_stream():
    # As the device kernels call it: encoded into the stream's open command buffer, the
    # results read only after the stream's wait (the debug mode's delays make an early
    # read visible).
    x, w, b = _data(2, 7, 6, 8, 3, 3, 4, 8)
    run_all(x, w, b, True, [2, 1], [1, 1], "SAME", stream=True)
    emu.fail_next_command_buffers(1, "injected GPU fault")
    r, _ = emu.conv2d_forward(x, w, b, False, [1, 1], [1, 1], "SAME", stream=True)
    assert "injected GPU fault" in _check(r, INTERNAL)


# ------------------------------------------------------------------ what returns Unsupported / Internal
def test_even_kernel_with_dilation_is_unsupported():
    x, w, b = _data(1, 9, 9, 2, 2, 3, 2, 2)
    r, _ = emu.conv2d_forward(x, w, b, False, [1, 1], [2, 1], "SAME")
    assert "even kernel" in _check(r, UNSUPPORTED)
    r, _ = emu.conv2d_backprop_input(list(x.shape), w, np.zeros((1, 9, 9, 2), np.float32), [1, 1], [2, 1], "SAME")
    _check(r, UNSUPPORTED)


def test_beyond_metals_texture_array_limit_is_unsupported():
    # 600 images of 16 channels: 2400 texture-array slices, Metal allows 2048.
    x, w, b = _data(600, 1, 1, 16, 1, 1, 16, 4)
    r, _ = emu.conv2d_forward(x, w, b, False, [1, 1], [1, 1], "VALID")
    assert "2048" in _check(r, UNSUPPORTED)
    x, w, b = _data(512, 1, 1, 16, 1, 1, 16, 4)  # 2048 slices: fine
    r, y = emu.conv2d_forward(x, w, b, False, [1, 1], [1, 1], "VALID")
    _check(r)
    _close(y, cpu_forward(x, w, b, False, [1, 1], [1, 1], "VALID", []), "y")


def test_half_accumulation_is_unsupported():
    x, w, b = _data(1, 4, 4, 4, 3, 3, 4, 4)
    r, _ = emu.conv2d_forward(x, w, b, False, [1, 1], [1, 1], "SAME", half_accumulation=True)
    assert "float16" in _check(r, UNSUPPORTED)


def test_unaligned_buffers_are_unsupported():
    x, w, b = _data(1, 4, 4, 4, 3, 3, 4, 4)
    r, _ = emu.conv2d_forward(x, w, b, False, [1, 1], [1, 1], "SAME", offset=4)
    assert "aligned" in _check(r, UNSUPPORTED)
    run_all(x, w, b, False, [1, 1], [1, 1], "SAME", offset=32)  # aligned offsets are fine


@pytest.mark.parametrize("cls", ["MPSCNNConvolution", "MPSImage", "MPSMatrix", "MPSMatrixCopyToImage"])
def test_nil_initializer_is_internal(cls):
    x, w, b = _data(1, 4, 4, 4, 3, 3, 4, 4)
    emu.fail_next_init(cls, 1)
    r, _ = emu.conv2d_forward(x, w, b, False, [1, 1], [1, 1], "SAME")
    assert "nil" in _check(r, INTERNAL)


@pytest.mark.parametrize("cls", ["MPSCNNConvolutionGradient", "MPSCNNConvolutionGradientState"])
def test_nil_gradient_objects_are_internal(cls):
    x, w, b = _data(1, 4, 4, 4, 3, 3, 4, 4)
    dy = np.ones((1, 4, 4, 4), np.float32)
    emu.fail_next_init(cls, 1)
    r, _ = emu.conv2d_backprop_input(list(x.shape), w, dy, [1, 1], [1, 1], "SAME")
    _check(r, INTERNAL)
    emu.fail_next_init(cls, 1)
    r, _, _ = emu.conv2d_backprop_filter(x, list(w.shape), dy, True, [1, 1], [1, 1], "SAME")
    _check(r, INTERNAL)


def test_failed_command_buffer_is_internal():
    x, w, b = _data(1, 4, 4, 4, 3, 3, 4, 4)
    dy = np.ones((1, 4, 4, 4), np.float32)
    emu.fail_next_command_buffers(1, "injected GPU fault")
    r, _ = emu.conv2d_forward(x, w, b, False, [1, 1], [1, 1], "SAME")
    assert "injected GPU fault" in _check(r, INTERNAL)
    emu.fail_next_command_buffers(1, "injected GPU fault")
    r, _, _ = emu.conv2d_backprop_filter(x, list(w.shape), dy, False, [1, 1], [1, 1], "SAME")
    assert "injected GPU fault" in _check(r, INTERNAL)


def test_empty_batch_is_a_no_op():
    x = np.zeros((0, 4, 4, 4), np.float32)
    w = np.ones((3, 3, 4, 4), np.float32)
    r, y = emu.conv2d_forward(x, w, np.zeros(0, np.float32), False, [1, 1], [1, 1], "SAME")
    _check(r)
    assert y.shape == (0, 4, 4, 4)
    r, dw, db = emu.conv2d_backprop_filter(x, list(w.shape), np.zeros((0, 4, 4, 4), np.float32), True, [1, 1],
                                           [1, 1], "SAME")
    _check(r)
    assert not dw.any() and not db.any()


# ------------------------------------------------------------------ the transposed convolution
# Conv2DTransposeMetal (MPSCNNConvolutionTranspose) against tf_mps.ops.conv2d_transpose on
# the CPU device (the CPU backend's input gradient plus the fused epilogue). y_shape is
# the transpose's output [N, H, W, C]; x its input [N, OH, OW, O]; w [KH, KW, C/G, O].
def cpu_transpose(x, w, y_shape, bias, relu, strides, padding, pads=(), dilations=(1, 1)):
    with tf.device("/CPU:0"):
        y = tf_mps.ops.conv2d_transpose(x, w, y_shape, strides=strides, padding=_cpu_padding(padding, pads),
                                        dilations=list(dilations), bias=bias, activation="relu" if relu else None)
    return y.numpy()


def _transpose_data(n, h, w_, c, kh, kw, o, strides, padding, pads=(), groups=1, seed=0):
    rng = np.random.default_rng(seed)
    oh = _out_size(h, kh, strides[0], 1, padding, *(pads[0:2] if pads else (0, 0)))
    ow = _out_size(w_, kw, strides[1], 1, padding, *(pads[2:4] if pads else (0, 0)))
    x = rng.standard_normal((n, oh, ow, o)).astype(np.float32)
    w = rng.standard_normal((kh, kw, c // groups, o)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    return x, w, b, [n, h, w_, c]


def run_transpose(x, w, y_shape, bias, relu, strides, padding, pads=(), offset=0, stream=False):
    r, y = emu.conv2d_transpose(x, w, y_shape, np.zeros(0, np.float32) if bias is None else bias, relu, strides,
                                [1, 1], padding, list(pads), offset, stream=stream)
    _check(r)
    _close(y, cpu_transpose(x, w, y_shape, bias, relu, strides, padding, pads), "conv2d_transpose")
    return y


def test_transpose_weights_are_rotated_and_swapped():
    w = np.random.default_rng(1).standard_normal((3, 2, 8, 12)).astype(np.float32)
    for groups in (1, 2, 4):
        got = emu.hwio_to_transpose_weights(w, groups)
        og = 12 // groups
        want = np.concatenate([w[::-1, ::-1, :, g * og:(g + 1) * og].transpose(2, 0, 1, 3) for g in range(groups)])
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("padding,pads", [("SAME", ()), ("VALID", ()), ("EXPLICIT", (1, 0, 2, 1)),
                                          ("EXPLICIT", (0, 3, 0, 0))])
@pytest.mark.parametrize("strides", [[1, 1], [2, 2], [3, 2], [1, 3]])
def test_transpose_padding_and_strides(padding, pads, strides):
    x, w, b, ys = _transpose_data(2, 9, 8, 5, 3, 3, 6, strides, padding, pads)
    run_transpose(x, w, ys, None, False, strides, padding, pads)


@pytest.mark.parametrize("k", [(1, 1), (2, 2), (4, 3), (5, 5), (2, 5)])
def test_transpose_kernel_sizes_odd_and_even(k):
    for strides in ([1, 1], [2, 2]):
        x, w, b, ys = _transpose_data(1, 10, 9, 3, k[0], k[1], 7, strides, "SAME")
        run_transpose(x, w, ys, None, False, strides, "SAME")
        x, w, b, ys = _transpose_data(1, 10, 9, 3, k[0], k[1], 7, strides, "VALID")
        run_transpose(x, w, ys, None, False, strides, "VALID")


def test_transpose_output_shape_variants():
    # A stride leaves the remainder open: every output size with the same convolution
    # output (SAME: ceil(h / s) == oh; VALID: (h - k) // s + 1 == oh).
    for padding in ("SAME", "VALID"):
        for h in range(7, 12):
            x, w, b, ys = _transpose_data(2, h, h + 1, 4, 3, 3, 5, [3, 3], padding)
            run_transpose(x, w, ys, b, True, [3, 3], padding)


@pytest.mark.parametrize("relu", [False, True])
def test_transpose_fused_bias_and_relu(relu):
    x, w, b, ys = _transpose_data(3, 6, 7, 6, 3, 3, 5, [2, 2], "SAME")
    run_transpose(x, w, ys, b, relu, [2, 2], "SAME")
    run_transpose(x, w, ys, None, relu, [2, 2], "SAME")


def test_transpose_matches_tf_nn_conv2d_transpose():
    x, w, b, ys = _transpose_data(2, 11, 10, 3, 4, 3, 5, [2, 3], "SAME")
    r, y = emu.conv2d_transpose(x, w, ys, np.zeros(0, np.float32), False, [2, 3], [1, 1], "SAME")
    _check(r)
    with tf.device("/CPU:0"):
        ref = tf.nn.conv2d_transpose(x, w, ys, strides=[1, 2, 3, 1], padding="SAME").numpy()
    _close(y, ref, "tf.nn.conv2d_transpose")


def test_transpose_groups():
    x, w, b, ys = _transpose_data(2, 6, 6, 8, 3, 3, 16, [2, 1], "SAME", groups=2)
    run_transpose(x, w, ys, b, False, [2, 1], "SAME")
    x, w, b, ys = _transpose_data(1, 6, 6, 6, 3, 3, 4, [1, 1], "SAME", groups=2)  # 3 per group
    r, y = emu.conv2d_transpose(x, w, ys, b, False, [1, 1], [1, 1], "SAME")
    assert "multiples of 4" in _check(r, UNSUPPORTED)
    assert not y.any()


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_transpose_random_shapes_match_cpu_backend(data):
    n = data.draw(st.integers(1, 3))
    c = data.draw(st.integers(1, 9))
    o = data.draw(st.integers(1, 9))
    kh, kw = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    sh, sw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    padding = data.draw(st.sampled_from(["SAME", "VALID", "EXPLICIT"]))
    pads = tuple(data.draw(st.integers(0, 2)) for _ in range(4)) if padding == "EXPLICIT" else ()
    h, w_ = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))
    oh = _out_size(h, kh, sh, 1, padding, *(pads[0:2] if pads else (0, 0)))
    ow = _out_size(w_, kw, sw, 1, padding, *(pads[2:4] if pads else (0, 0)))
    assume(oh > 0 and ow > 0)
    x, w, b, ys = _transpose_data(n, h, w_, c, kh, kw, o, [sh, sw], padding, pads, seed=data.draw(st.integers(0, 99)))
    with_bias = data.draw(st.booleans())
    relu = data.draw(st.booleans())
    run_transpose(x, w, ys, b if with_bias else None, relu, [sh, sw], padding, pads,
                  stream=data.draw(st.booleans()))


def test_transpose_in_a_device_stream():
    x, w, b, ys = _transpose_data(2, 7, 6, 5, 3, 3, 8, [2, 1], "SAME")
    run_transpose(x, w, ys, b, True, [2, 1], "SAME", stream=True)
    emu.fail_next_command_buffers(1, "injected GPU fault")
    r, _ = emu.conv2d_transpose(x, w, ys, b, False, [2, 1], [1, 1], "SAME", stream=True)
    assert "injected GPU fault" in _check(r, INTERNAL)


def test_transpose_unsupported_cases_write_nothing():
    x, w, b, ys = _transpose_data(1, 8, 8, 4, 3, 3, 4, [1, 1], "SAME")
    r, y = emu.conv2d_transpose(x, w, ys, b, False, [1, 1], [2, 2], "SAME")
    assert "dilation" in _check(r, UNSUPPORTED) and not y.any()
    r, y = emu.conv2d_transpose(x, w, ys, b, False, [1, 1], [1, 1], "SAME", half_accumulation=True)
    assert "float16" in _check(r, UNSUPPORTED) and not y.any()
    r, y = emu.conv2d_transpose(x, w, ys, b, False, [1, 1], [1, 1], "SAME", offset=4)
    assert "aligned" in _check(r, UNSUPPORTED) and not y.any()
    run_transpose(x, w, ys, b, False, [1, 1], "SAME", offset=32)
    # Depthwise (G == C, one channel per group).
    xd, wd, bd, ysd = _transpose_data(1, 5, 5, 4, 3, 3, 4, [1, 1], "SAME", groups=4)
    r, y = emu.conv2d_transpose(xd, wd, ysd, bd, False, [1, 1], [1, 1], "SAME")
    _check(r, UNSUPPORTED)
    assert not y.any()
    # 600 images of 16 channels: beyond Metal's 2048 texture-array slices.
    xb, wb, bb, ysb = _transpose_data(600, 1, 1, 16, 1, 1, 4, [1, 1], "VALID")
    r, y = emu.conv2d_transpose(xb, wb, ysb, bb, False, [1, 1], [1, 1], "VALID")
    assert "2048" in _check(r, UNSUPPORTED) and not y.any()


@pytest.mark.parametrize("cls", ["MPSCNNConvolutionTranspose", "MPSImage", "MPSMatrix", "MPSImageCopyToMatrix"])
def test_transpose_nil_initializer_is_internal(cls):
    x, w, b, ys = _transpose_data(1, 4, 4, 4, 3, 3, 4, [1, 1], "SAME")
    emu.fail_next_init(cls, 1)
    r, _ = emu.conv2d_transpose(x, w, ys, b, False, [1, 1], [1, 1], "SAME")
    assert "nil" in _check(r, INTERNAL)


def test_transpose_empty_batch_is_a_no_op():
    x = np.zeros((0, 4, 4, 4), np.float32)
    w = np.ones((3, 3, 4, 4), np.float32)
    r, y = emu.conv2d_transpose(x, w, [0, 4, 4, 4], np.zeros(0, np.float32), False, [1, 1], [1, 1], "SAME")
    _check(r)
    assert y.shape == (0, 4, 4, 4)


@pytest.mark.parametrize("padding,pads,strides", [("SAME", (), [2, 2]), ("VALID", (), [1, 3]),
                                                  ("EXPLICIT", (1, 2, 0, 1), [2, 1])])
@pytest.mark.parametrize("relu", [False, True])
def test_transpose_gradients_through_the_metal_conv_entry_points(padding, pads, strides, relu):
    # tf_mps/ops/conv.py's gradient of MpsConv2DTranspose: d/dx = conv2d(dy') and
    # d/dw = conv2d_backprop_filter(input dy', out_backprop x), dy' = dy through relu's
    # derivative, d/dbias = sum of dy'. The Metal forward and filter-gradient entry points
    # compute them in the very geometry the transpose was built with.
    x, w, b, ys = _transpose_data(2, 7, 8, 5, 3, 3, 6, strides, padding, pads)
    dy = np.random.default_rng(5).standard_normal(ys).astype(np.float32)
    with tf.device("/CPU:0"):
        xt, wt, bt = tf.constant(x), tf.constant(w), tf.constant(b)
        with tf.GradientTape() as tape:
            tape.watch([xt, wt, bt])
            y = tf_mps.ops.conv2d_transpose(xt, wt, ys, strides=strides, padding=_cpu_padding(padding, pads),
                                            bias=bt, activation="relu" if relu else None)
        gx, gw, gb = [g.numpy() for g in tape.gradient(y, [xt, wt, bt], output_gradients=tf.constant(dy))]
    y_metal = run_transpose(x, w, ys, b, relu, strides, padding, pads)
    d = np.where(y_metal > 0, dy, 0).astype(np.float32) if relu else dy
    r, dx = emu.conv2d_forward(d, w, np.zeros(0, np.float32), False, strides, [1, 1], padding, list(pads))
    _check(r)
    _close(dx, gx, "d/dx")
    r, dw, _ = emu.conv2d_backprop_filter(d, list(w.shape), x, False, strides, [1, 1], padding, list(pads))
    _check(r)
    _close(dw, gw, "d/dw")
    _close(d.sum(axis=(0, 1, 2)), gb, "d/dbias")
