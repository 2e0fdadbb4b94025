"""tf_mps.ops.conv2d and its gradients against TensorFlow's own ops (tf.nn.conv2d,
tf.nn.depthwise_conv2d, tf.nn.bias_add + tf.nn.relu), over fixed cases that reach every
path of the CPU backend and over random shapes and attributes (hypothesis); gradients
also by tf.test.compute_gradient; every validation path gives InvalidArgumentError
naming the op and the argument.

The reference runs TF's ops in float64 (their Eigen kernels): TF 2.21's float32 Conv2D
(oneDNN) returns zeros for every output row after the first when the stride is wider
than the input (test_tf_float32_stride_wider_than_input), and its float64 gradients
lack dilations, which the reference expresses as a dilated filter instead."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tf_mps
from conftest import RTOL_VS_FLOAT64, assert_rel_close
from tf_mps import _lib

lib = _lib.load()
INVALID = tf.errors.InvalidArgumentError

# Tolerances, norm-wise (max|ours - ref| <= rtol * max|ref|, conftest.assert_rel_close):
# float32 results against the float64 reference, conftest's RTOL_VS_FLOAT64.
RTOL = RTOL_VS_FLOAT64[np.float32]
# tf.test.compute_gradient in float32: the ops are linear, so the finite differences are
# exact but for the rounding of y (~ eps * |y| / delta).
RTOL_NUMERIC_GRADIENT = 2e-3

hypothesis_settings = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                               deadline=None)


def _rand(shape, seed):
    return tf.constant(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def _tf_padding(padding):
    if isinstance(padding, str):
        return padding
    return [[0, 0], list(padding[0]), list(padding[1]), [0, 0]]


def _dilate(f, dilations):
    """The filter with dilation_h - 1 zero rows (and columns) between its taps: the
    dilated convolution as an undilated one (TF's CPU kernels compute gradients of
    dilated convolutions only in some cases). Exact: products with 1 and sums with 0."""
    dh, dw = (dilations, dilations) if isinstance(dilations, int) else dilations
    kh, kw = f.shape[0], f.shape[1]
    rows = np.zeros(((kh - 1) * dh + 1, kh), f.dtype.as_numpy_dtype)
    rows[np.arange(kh) * dh, np.arange(kh)] = 1
    cols = np.zeros(((kw - 1) * dw + 1, kw), f.dtype.as_numpy_dtype)
    cols[np.arange(kw) * dw, np.arange(kw)] = 1
    return tf.einsum("ak,bl,klio->abio", rows, cols, f)


def reference(x, f, strides=1, padding="SAME", dilations=1, groups=1, bias=None, relu=False):
    """TensorFlow's own ops: tf.nn.conv2d (per group: TF's CPU kernels have no grouped
    gradients; dilation as a dilated filter), tf.nn.bias_add, tf.nn.relu."""
    pad = _tf_padding(padding)
    f = _dilate(f, dilations)
    if groups == 1:
        z = tf.nn.conv2d(x, f, strides, pad)
    else:
        z = tf.concat([tf.nn.conv2d(xg, fg, strides, pad)
                       for xg, fg in zip(tf.split(x, groups, axis=-1), tf.split(f, groups, axis=-1))], axis=-1)
    if bias is not None:
        z = tf.nn.bias_add(z, bias)
    return tf.nn.relu(z) if relu else z


def check(x, f, *, strides=1, padding="SAME", dilations=1, groups=1, bias=None, relu=False, ref=reference,
          seed=0):
    """Output and gradients (x, filter, bias) of tf_mps.ops.conv2d against `ref` in float64."""
    sources = [x, f] + ([bias] if bias is not None else [])
    sources64 = [tf.constant(t.numpy().astype(np.float64)) for t in sources]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(sources + sources64)
        y = tf_mps.ops.conv2d(x, f, strides=strides, padding=padding, dilations=dilations, groups=groups,
                              bias=bias, activation="relu" if relu else None)
        z = ref(sources64[0], sources64[1], strides, padding, dilations, groups,
                sources64[2] if bias is not None else None, False)
    expected = tf.nn.relu(z) if relu else z
    assert_rel_close(y, expected, RTOL, "output")
    dy = _rand(y.shape, seed + 1)
    # The relu mask of our own output, so that an element whose pre-activation rounds to
    # the other side of 0 in the reference cannot decide the comparison.
    dz = tf.cast(dy * tf.cast(y > 0, tf.float32) if relu else dy, tf.float64)
    ours = tape.gradient(y, sources, output_gradients=dy)
    theirs = tape.gradient(z, sources64, output_gradients=dz)
    for name, a, b in zip(["d_input", "d_filter", "d_bias"], ours, theirs):
        assert_rel_close(a, b, RTOL, name)
    return y


# -------------------------------------------------------------- fixed cases: every path
@pytest.mark.parametrize("case", [
    # (x shape, filter shape, kwargs): comments name the CPU paths they reach.
    ((2, 9, 8, 5), (3, 3, 5, 7), dict(padding="SAME")),  # im2col GEMM, gather dx
    ((8, 9, 8, 4), (3, 3, 4, 16), dict(padding="SAME")),  # scatter dx (few input channels, many images)
    ((3, 11, 10, 6), (3, 2, 6, 4), dict(strides=2, padding="VALID")),  # strided: scatter dx
    ((2, 12, 12, 3), (3, 3, 3, 5), dict(strides=[2, 3], padding=[[2, 1], [0, 3]], dilations=[2, 1])),
    ((2, 10, 10, 4), (3, 3, 4, 4), dict(dilations=2, padding="SAME")),
    ((2, 7, 6, 8), (1, 1, 8, 12), dict(padding="VALID")),  # pointwise: sgemm on the input rows
    ((2, 7, 6, 8), (1, 1, 8, 12), dict(strides=2, padding="VALID")),  # 1x1 strided: im2col
    # few input channels (KH*KW*C < 32, >= 8 outputs): x86's direct kernel (else GEMM, k = 9)
    ((4, 9, 9, 1), (3, 3, 1, 32), dict(padding="SAME")),
    ((3, 13, 12, 2), (3, 3, 2, 37), dict(strides=2, padding="SAME")),  # vector blocks and a tail
    ((2, 12, 14, 1), (5, 3, 1, 48), dict(padding=[[2, 1], [0, 2]], dilations=2)),
    ((2, 8, 9, 3), (3, 3, 3, 8), dict(padding="VALID")),  # fewer outputs than a block: per pixel
    ((2, 30, 30, 1), (3, 3, 1, 32), dict(strides=[1, 2], padding="VALID")),
    ((2, 6, 6, 4), (3, 3, 4, 3), dict(padding=[[5, 0], [0, 4]])),  # padding beyond the filter
    ((2, 8, 8, 6), (3, 3, 3, 4), dict(groups=2, padding="SAME")),  # grouped
    ((2, 8, 8, 12), (3, 3, 4, 6), dict(groups=3, strides=2, padding="SAME")),  # grouped, scatter
    ((2, 5, 5, 2), (5, 5, 2, 3), dict(padding="VALID")),  # filter as large as the input
    # >= 16 output channels per group: the indirect GEMM (x86), with a partial tile
    ((3, 9, 10, 20), (3, 3, 20, 40), dict(padding="SAME", dilations=[1, 2])),
    ((2, 11, 9, 24), (3, 3, 24, 33), dict(strides=2, padding="SAME")),  # dx in 4 stride phases
    ((2, 13, 12, 17), (2, 3, 17, 18), dict(strides=[3, 2], padding=[[2, 0], [1, 1]], dilations=[2, 1])),
    ((2, 8, 8, 32), (1, 1, 32, 16), dict(strides=3, padding="VALID")),  # phases without taps: dx = 0
    ((2, 7, 7, 40), (3, 3, 20, 32), dict(groups=2, strides=2, padding="VALID")),
])
def test_matches_tf(device, case):
    xs, fs, kw = case
    check(_rand(xs, 1), _rand(fs, 2), **kw)


def test_tf_float32_stride_wider_than_input(device):
    # TF 2.21's float32 tf.nn.conv2d (oneDNN) gives [3, 0, 11, 0] here; its float64
    # kernel and the sums themselves give [3, 7, 11, 15].
    x = np.arange(1, 9, dtype=np.float32).reshape(2, 2, 2, 1)
    y = tf_mps.ops.conv2d(x, np.ones((1, 2, 1, 1), np.float32), strides=[1, 3], padding="SAME")
    np.testing.assert_array_equal(y.numpy().ravel(), [3, 7, 11, 15])
    check(tf.constant(x), _rand((1, 2, 1, 1), 30), strides=[1, 3], padding="SAME")


@pytest.mark.parametrize("relu", [False, True])
def test_bias_and_relu_match_bias_add_relu(device, relu):
    check(_rand((3, 8, 7, 4), 3), _rand((3, 3, 4, 6), 4), bias=_rand((6,), 5), relu=relu, padding="SAME")


def test_relu_accepts_tf_nn_relu_and_keeps_nan(device):
    x = np.ones((1, 3, 3, 1), np.float32)
    x[0, 1, 1, 0] = np.nan
    y = tf_mps.ops.conv2d(x, np.ones((1, 1, 1, 1), np.float32), activation=tf.nn.relu).numpy()
    assert np.isnan(y[0, 1, 1, 0]) and np.all(y[np.isfinite(y)] == 1.0)


def _depthwise_reference(x, f, strides, padding, dilations, groups, bias, relu):
    c = x.shape[-1]
    tf_filter = tf.reshape(f, (f.shape[0], f.shape[1], c, f.shape[-1] // c))
    s = [1, strides, strides, 1]
    z = tf.nn.depthwise_conv2d(x, tf_filter, s, _tf_padding(padding), dilations=[dilations, dilations])
    return z if bias is None else tf.nn.bias_add(z, bias)


@pytest.mark.parametrize("case", [
    ((2, 12, 11, 8), 1, dict(padding="SAME")),  # gather dx as a depthwise conv of dy
    ((2, 12, 11, 8), 1, dict(strides=2, padding="SAME")),  # scatter dx
    ((2, 9, 9, 3), 2, dict(padding="VALID")),  # channel multiplier 2
    ((3, 10, 9, 70), 1, dict(padding=[[1, 2], [2, 0]])),  # 64-channel blocks and a tail
    ((2, 10, 10, 5), 1, dict(dilations=2, padding="SAME")),
])
def test_depthwise_matches_tf(device, case):
    xs, mult, kw = case
    c = xs[-1]
    check(_rand(xs, 6), _rand((3, 3, 1, c * mult), 7), groups=c, ref=_depthwise_reference, **kw)


def test_few_input_channels_with_bias_and_relu(device):
    check(_rand((3, 28, 28, 1), 13), _rand((3, 3, 1, 40), 14), bias=_rand((40,), 15), relu=True)


def test_depthwise_with_bias_and_relu(device):
    check(_rand((2, 8, 8, 16), 8), _rand((3, 3, 1, 16), 9), groups=16, bias=_rand((16,), 10), relu=True,
          ref=_depthwise_reference)


def test_large_shapes_use_many_blocks(device):
    # Several blocks per image and several work units for the filter gradient.
    check(_rand((3, 40, 36, 16), 11), _rand((3, 3, 16, 24), 12), padding="SAME")


def test_empty_batch(device):
    x = tf.zeros((0, 5, 5, 3))
    f = _rand((3, 3, 3, 4), 13)
    with tf.GradientTape() as tape:
        tape.watch([x, f])
        y = tf_mps.ops.conv2d(x, f, bias=tf.ones(4))
    assert y.shape == (0, 5, 5, 4)
    dx, df = tape.gradient(y, [x, f])
    assert dx.shape == (0, 5, 5, 3) and np.all(df.numpy() == 0)


def test_results_do_not_depend_on_scheduling(device):
    # The filter gradient sums fixed work units in a fixed order: bit-identical runs.
    x, f = _rand((8, 20, 20, 8), 14), _rand((3, 3, 8, 16), 15)
    dy = _rand((8, 20, 20, 16), 16)
    runs = [lib.mps_conv2d_backprop_filter(input=x, filter_sizes=f.shape, out_backprop=dy, strides=[1, 1, 1, 1],
                                           padding="SAME", num_bias=1) for _ in range(3)]
    for dw, db in runs[1:]:
        np.testing.assert_array_equal(dw.numpy(), runs[0][0].numpy())
        np.testing.assert_array_equal(db[0].numpy(), runs[0][1][0].numpy())


def test_inside_tf_function_with_unknown_shapes(device):
    x, f = _rand((2, 9, 9, 4), 17), _rand((3, 3, 4, 5), 18)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 4]), tf.TensorSpec([3, 3, 4, 5])])
    def fn(x, f):
        y = tf_mps.ops.conv2d(x, f, strides=2)
        assert y.shape.as_list() == [None, None, None, 5]
        return y, tf.gradients(tf.reduce_sum(y * y), [x, f])

    y, (dx, df) = fn(x, f)
    x64, f64 = tf.cast(x, tf.float64), tf.cast(f, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([x64, f64])
        r = reference(x64, f64, strides=2)
        loss = tf.reduce_sum(r * r)
    rdx, rdf = tape.gradient(loss, [x64, f64])
    assert_rel_close(y, r, RTOL, "output")
    assert_rel_close(dx, rdx, RTOL, "d_input")
    assert_rel_close(df, rdf, RTOL, "d_filter")


def test_static_shape_inference(device):
    @tf.function
    def fn(x, f):
        return tf_mps.ops.conv2d(x, f, strides=[2, 3], padding=[[1, 2], [0, 0]], dilations=[1, 2], groups=2)

    y = fn.get_concrete_function(tf.TensorSpec([4, 11, 13, 6]), tf.TensorSpec([3, 3, 3, 8])).outputs[0]
    # height (11 + 3 - 3) // 2 + 1 = 6, width (13 - 5) // 3 + 1 = 3, groups = 2
    assert y.shape.as_list() == [4, 6, 3, 8]


# ---------------------------------------------------------------- numeric gradients
@pytest.mark.parametrize("kw", [
    dict(strides=1, padding="SAME"),
    dict(strides=2, padding="VALID", dilations=1),
    dict(strides=1, padding=[[1, 0], [2, 1]], dilations=2, groups=2),
    dict(strides=1, padding="SAME", groups=4),  # depthwise
])
def test_compute_gradient(device, kw):
    groups = kw.get("groups", 1)
    x, f, b = _rand((2, 6, 7, 4), 19), _rand((3, 3, 4 // groups, 4), 20), _rand((4,), 21)
    theoretical, numerical = tf.test.compute_gradient(
        lambda x, f, b: tf_mps.ops.conv2d(x, f, bias=b, **kw), [x, f, b], delta=1e-2)
    for name, t, n in zip(["input", "filter", "bias"], theoretical, numerical):
        assert_rel_close(t, n, RTOL_NUMERIC_GRADIENT, name)


def test_second_order_gradients(device):
    # The backprop ops are linear in their tensor inputs: their registered gradients
    # against finite differences.
    x, f, dy = _rand((2, 6, 6, 3), 22), _rand((3, 3, 3, 4), 23), _rand((2, 3, 3, 4), 24)
    attrs = dict(strides=[1, 2, 2, 1], padding="SAME")

    def input_grad(f, dy):
        return lib.mps_conv2d_backprop_input(input_sizes=x.shape, filter=f, out_backprop=dy, **attrs)

    def filter_grad(x, dy):
        dw, (db,) = lib.mps_conv2d_backprop_filter(input=x, filter_sizes=f.shape, out_backprop=dy, num_bias=1,
                                                   **attrs)
        return tf.concat([tf.reshape(dw, [-1]), db], 0)

    for fn, args in [(input_grad, [f, dy]), (filter_grad, [x, dy])]:
        theoretical, numerical = tf.test.compute_gradient(fn, args, delta=1e-2)
        for t, n in zip(theoretical, numerical):
            assert_rel_close(t, n, RTOL_NUMERIC_GRADIENT, fn.__name__)


# ---------------------------------------------------------------- random shapes
@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    # Few channels (BLAS paths, loops) or many (the indirect GEMM needs >= 16 per group).
    wide = draw(st.booleans())
    cg = draw(st.integers(1, 40) if wide else st.integers(1, 4))
    og = draw(st.integers(8, 40) if wide else st.integers(1, 4))
    depthwise = draw(st.booleans()) and groups == 1
    if depthwise:  # one channel per group
        groups, cg = draw(st.integers(2, 6)), 1
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    strides = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    dilations = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    kind = draw(st.sampled_from(["SAME", "VALID", "EXPLICIT"]))
    padding = kind if kind != "EXPLICIT" else [[draw(st.integers(0, 3)), draw(st.integers(0, 3))],
                                               [draw(st.integers(0, 3)), draw(st.integers(0, 3))]]
    # Inputs at least as large as the dilated filter (padding only adds to that).
    h = draw(st.integers((kh - 1) * dilations[0] + 1, 12))
    w = draw(st.integers((kw - 1) * dilations[1] + 1, 12))
    n = draw(st.integers(1, 3 if wide else 5))
    return dict(x=(n, h, w, groups * cg), f=(kh, kw, cg, groups * og), strides=strides, dilations=dilations,
                padding=padding, groups=groups, bias=draw(st.booleans()), relu=draw(st.booleans()),
                seed=draw(st.integers(0, 2**16)))


@hypothesis_settings
@given(case=conv_cases())
def test_random_shapes_and_attributes(device, case):
    s = case["seed"]
    bias = _rand((case["f"][-1],), s + 2) if case["bias"] else None
    check(_rand(case["x"], s), _rand(case["f"], s + 1), strides=case["strides"], padding=case["padding"],
          dilations=case["dilations"], groups=case["groups"], bias=bias, relu=case["relu"], seed=s)


# ------------------------------------------------------------ every build of the loops
ISA_SCRIPT = r"""
import sys
sys.path.insert(0, {tests!r})
import tf_mps, test_conv as T
from tf_mps import _lib
isa = _lib.load().mps_conv_cpu_isa().numpy().decode()
assert isa == {isa!r}, isa
cases = [((2, 9, 8, 20), (3, 3, 20, 40), dict(padding="SAME")),
         ((2, 11, 9, 24), (3, 3, 12, 34), dict(strides=2, padding="SAME", groups=2)),
         ((2, 12, 11, 8), (3, 3, 1, 8), dict(groups=8, padding="SAME")),
         ((2, 12, 11, 8), (3, 3, 1, 16), dict(groups=8, strides=2, padding="VALID")),
         ((3, 9, 9, 3), (3, 3, 3, 5), dict(padding=[[1, 2], [0, 1]], dilations=2)),
         ((2, 13, 12, 2), (3, 3, 2, 37), dict(strides=2, padding="SAME"))]
for i, (xs, fs, kw) in enumerate(cases):
    ref = T._depthwise_reference if kw.get("groups", 1) == xs[-1] else T.reference
    T.check(T._rand(xs, i), T._rand(fs, i + 1), ref=ref, bias=T._rand((fs[-1],), i + 2), relu=True, **kw)
# The half-accumulation loops of this build (portable, F16C, AVX-512: the same bits).
import numpy as np
for case in range(len(T.HALF_CASES)):
    T.test_half_accumulation_is_the_model_bit_for_bit("/CPU:0", case, np.float16)
print("ok")
"""


@pytest.mark.parametrize("isa", ["base", "avx2"])
def test_other_builds(isa):
    # The build is chosen once per process (TFMPS_CONV_ISA narrows it): a child each.
    import os
    import subprocess
    import sys

    if isa == "avx2" and lib.mps_conv_cpu_isa().numpy() == b"base":
        pytest.skip("this processor or compiler has no AVX2 build")
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, TFMPS_CONV_ISA=isa, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", ISA_SCRIPT.format(tests=tests, isa=isa)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr


# ---------------------------------------------------------------- bad input
S1 = [1, 1, 1, 1]
X = tf.ones((1, 5, 5, 4))
F = tf.ones((3, 3, 4, 2))
DY = tf.ones((1, 3, 3, 2))
BIG = 2**62


def conv(x=X, f=F, bias=(), strides=S1, padding="VALID", **kw):
    return lib.mps_conv2d(input=x, filter=f, bias=list(bias), strides=strides, padding=padding, **kw)


def input_grad(sizes=(1, 5, 5, 4), f=F, dy=DY, strides=S1, padding="VALID", **kw):
    return lib.mps_conv2d_backprop_input(input_sizes=tf.constant(sizes, tf.int32), filter=f, out_backprop=dy,
                                         strides=strides, padding=padding, **kw)


def filter_grad(x=X, sizes=(3, 3, 4, 2), dy=DY, strides=S1, padding="VALID", **kw):
    return lib.mps_conv2d_backprop_filter(input=x, filter_sizes=tf.constant(sizes, tf.int32), out_backprop=dy,
                                          strides=strides, padding=padding, **kw)


def explicit(top=0, bottom=0, left=0, right=0):
    return dict(padding="EXPLICIT", explicit_paddings=[0, 0, top, bottom, left, right, 0, 0])


BAD_INPUT = {
    # rank
    "input_rank": (lambda: conv(x=tf.ones((5, 5, 4))),
                   r"MpsConv2D: input must be 4-D \[batch, height, width, channels\] \(NHWC\), got shape \[5,5,4\]"),
    "filter_rank": (lambda: conv(f=tf.ones((3, 3, 4))),
                    r"MpsConv2D: filter must be 4-D \[filter_height, filter_width, in_channels / groups, "
                    r"out_channels\] \(HWIO\), got shape \[3,3,4\]"),
    "out_backprop_rank": (lambda: input_grad(dy=tf.ones((3, 3, 2))),
                          r"MpsConv2DBackpropInput: out_backprop must be 4-D .*got shape \[3,3,2\]"),
    "backprop_filter_input_rank": (lambda: filter_grad(x=tf.ones((5, 5, 4))),
                                   r"MpsConv2DBackpropFilter: input must be 4-D .*got shape \[5,5,4\]"),
    # channels and groups
    "channel_mismatch": (lambda: conv(x=tf.ones((1, 5, 5, 5)), f=tf.ones((3, 3, 2, 2))),
                         r"MpsConv2D: input depth must be evenly divisible by filter depth: 5 vs 2"),
    "out_channels_not_divisible_by_groups": (
        lambda: conv(f=tf.ones((3, 3, 2, 3))),
        r"MpsConv2D: the filter's output channels \(3\) must be divisible by the number of groups \(2 = input "
        r"depth 4 / filter depth 2\)"),
    "backprop_input_channel_mismatch": (lambda: input_grad(sizes=(1, 5, 5, 6), f=tf.ones((3, 3, 4, 2))),
                                        r"MpsConv2DBackpropInput: input depth must be evenly divisible by filter "
                                        r"depth: 6 vs 4 .*\(input_sizes \[1, 5, 5, 6\], filter \[3, 3, 4, 2\]\)"),
    # zero and negative sizes
    "zero_input_height": (lambda: conv(x=tf.ones((1, 0, 5, 4))),
                          r"MpsConv2D: input must have a batch >= 0 and positive height, width and channels, got "
                          r"\[1,0,5,4\]"),
    "zero_input_channels": (lambda: conv(x=tf.ones((1, 5, 5, 0)), f=tf.ones((3, 3, 0, 2))),
                            r"MpsConv2D: input must have .* positive height, width and channels, got \[1,5,5,0\]"),
    "zero_out_channels": (lambda: conv(f=tf.ones((3, 3, 4, 0))),
                          r"MpsConv2D: filter must have positive dimensions .* got \[3,3,4,0\]"),
    "zero_filter_width": (lambda: conv(f=tf.ones((3, 0, 4, 2))),
                          r"MpsConv2D: filter must have positive dimensions .* got \[3,0,4,2\]"),
    "negative_input_sizes": (lambda: input_grad(sizes=(1, -5, 5, 4)),
                             r"MpsConv2DBackpropInput: input must have .* got \[1,-5,5,4\] \(input_sizes "
                             r"\[1, -5, 5, 4\], filter \[3, 3, 4, 2\]\)"),
    "negative_batch": (lambda: input_grad(sizes=(-1, 5, 5, 4)),
                       r"MpsConv2DBackpropInput: input must have a batch >= 0 .* got \[-1,5,5,4\]"),
    "negative_filter_sizes": (lambda: filter_grad(sizes=(3, -3, 4, 2)),
                              r"MpsConv2DBackpropFilter: filter must have positive dimensions .* got \[3,-3,4,2\] "
                              r"\(input \[1, 5, 5, 4\], filter_sizes \[3, -3, 4, 2\]\)"),
    # strides and dilations
    "strides_length": (lambda: conv(strides=[1, 1, 1]),
                       r"MpsConv2D: strides must have 4 elements \[1, strides_height, strides_width, 1\] \(NHWC\), "
                       r"got 3: \[1, 1, 1\]"),
    "strides_batch": (lambda: conv(strides=[2, 1, 1, 1]),
                      r"MpsConv2D: strides in the batch and depth dimensions must be 1 .*got \[2, 1, 1, 1\]"),
    "strides_zero": (lambda: conv(strides=[1, 0, 1, 1]),
                     r"MpsConv2D: strides must be >= 1 in height and width, got \[1, 0, 1, 1\]"),
    "strides_negative": (lambda: input_grad(strides=[1, 1, -2, 1]),
                         r"MpsConv2DBackpropInput: strides must be >= 1 in height and width, got \[1, 1, -2, 1\]"),
    "dilations_depth": (lambda: conv(dilations=[1, 1, 1, 2]),
                        r"MpsConv2D: dilations in the batch and depth dimensions must be 1 .*got \[1, 1, 1, 2\]"),
    "dilations_zero": (lambda: filter_grad(dilations=[1, 1, 0, 1]),
                       r"MpsConv2DBackpropFilter: dilations must be >= 1 in height and width, got \[1, 1, 0, 1\]"),
    "dilation_overflows": (lambda: conv(dilations=[1, BIG, 1, 1], padding="SAME"),
                           r"MpsConv2D: dilations: the dilated filter height \(3-1\)\*4611686018427387904\+1 "
                           r"overflows int64"),
    # output sizes
    "filter_larger_than_input": (lambda: conv(x=tf.ones((1, 2, 5, 4))),
                                 r"MpsConv2D: the filter is larger than the padded input: dilated filter height 3 "
                                 r"\(\(3-1\)\*1\+1\) > input height 2 \+ padding 0\+0"),
    "dilated_filter_larger_than_padded_input": (
        lambda: conv(dilations=[1, 1, 3, 1], **explicit(left=1, right=0)),
        r"MpsConv2D: the filter is larger than the padded input: dilated filter width 7 \(\(3-1\)\*3\+1\) > input "
        r"width 5 \+ padding 1\+0"),
    "output_elements_overflow": (lambda: conv(f=tf.ones((1, 1, 4, 2)), **explicit(top=2**40, left=2**40)),
                                 r"MpsConv2D: the output \[1,1099511627781,1099511627781,2\] has more elements than "
                                 r"int64 can count"),
    # explicit paddings
    "explicit_paddings_length": (lambda: conv(padding="EXPLICIT", explicit_paddings=[0, 0, 1, 1]),
                                 r"MpsConv2D: explicit_paddings must have 8 elements .* got 4: \[0, 0, 1, 1\]"),
    "explicit_paddings_negative": (lambda: conv(**explicit(bottom=-1)),
                                   r"MpsConv2D: explicit_paddings must be >= 0, got \[0, 0, 0, -1, 0, 0, 0, 0\]"),
    "explicit_paddings_batch": (lambda: conv(padding="EXPLICIT", explicit_paddings=[1, 0, 0, 0, 0, 0, 0, 0]),
                                r"MpsConv2D: explicit_paddings in the batch and depth dimensions must be 0"),
    "explicit_paddings_without_explicit": (lambda: conv(padding="SAME", explicit_paddings=[0] * 8),
                                           r"MpsConv2D: explicit_paddings must be empty unless padding is EXPLICIT "
                                           r"\(SAME given\)"),
    "explicit_paddings_overflow": (lambda: conv(**explicit(top=BIG, bottom=BIG)),
                                   r"MpsConv2D: explicit_paddings: the padded input height overflows int64"),
    # bias
    "bias_size": (lambda: conv(bias=[tf.ones(3)]),
                  r"MpsConv2D: bias must be 1-D with one value per output channel \(the filter's last dimension, "
                  r"2\), got shape \[3\]"),
    "bias_rank": (lambda: conv(bias=[tf.ones((1, 2))]), r"MpsConv2D: bias must be 1-D .* got shape \[1,2\]"),
    "bias_list_length": (lambda: conv(bias=[tf.ones(2), tf.ones(2)]),
                         r"MpsConv2D: bias must be a list of 0 or 1 tensors, got 2"),
    "num_bias_gradients": (lambda: filter_grad(num_bias=2),
                           r"MpsConv2DBackpropFilter: num_bias must be 0 or 1 \(one bias gradient or none\), got 2"),
    # the backprop ops' size vectors and out_backprop
    "input_sizes_length": (lambda: input_grad(sizes=(1, 5, 5)),
                           r"MpsConv2DBackpropInput: input_sizes must be a 1-D tensor of 4 elements, got shape \[3\]"),
    "filter_sizes_rank": (lambda: lib.mps_conv2d_backprop_filter(
        input=X, filter_sizes=tf.ones((2, 2), tf.int32), out_backprop=DY, strides=S1, padding="VALID"),
        r"MpsConv2DBackpropFilter: filter_sizes must be a 1-D tensor of 4 elements, got shape \[2,2\]"),
    "out_backprop_shape_input_grad": (lambda: input_grad(dy=tf.ones((1, 3, 3, 3))),
                                      r"MpsConv2DBackpropInput: out_backprop must have the shape of the "
                                      r"convolution's output, \[1,3,3,2\] for input_sizes \[1, 5, 5, 4\] and filter "
                                      r"\[3, 3, 4, 2\] under these strides, dilations and padding; got \[1,3,3,3\]"),
    "out_backprop_shape_filter_grad": (lambda: filter_grad(dy=tf.ones((1, 5, 5, 2))),
                                       r"MpsConv2DBackpropFilter: out_backprop must have the shape of the "
                                       r"convolution's output, \[1,3,3,2\] .* got \[1,5,5,2\]"),
    # dtypes (the op definitions allow float16 and float32; int32 size vectors)
    "dtype_raw_op": (lambda: conv(x=tf.ones((1, 5, 5, 4), tf.float64), f=tf.ones((3, 3, 4, 2), tf.float64)),
                     r"(?s)Value for attr 'T' of double is not in the list of allowed values: half, float"
                     r".*MpsConv2D"),
    "dtype_raw_op_mixed": (lambda: conv(x=tf.ones((1, 5, 5, 4), tf.float16), f=F),
                           r"MpsConv2D as input #1\(zero-based\) was expected to be a half tensor but is a float "
                           r"tensor"),
    "dtype_input_sizes": (lambda: lib.mps_conv2d_backprop_input(
        input_sizes=tf.constant([1, 5, 5, 4], tf.int64), filter=F, out_backprop=DY, strides=S1, padding="VALID"),
        r"MpsConv2DBackpropInput as input #0\(zero-based\) was expected to be a int32 tensor but is a int64"),
    "dtype_wrapper_x": (lambda: tf_mps.ops.conv2d(tf.ones((1, 5, 5, 4), tf.float64), F),
                        r"conv2d: x must be float32 or float16, got float64"),
    "dtype_wrapper_filters": (lambda: tf_mps.ops.conv2d(X, tf.ones((3, 3, 4, 2), tf.float16)),
                              r"conv2d: filters must have x's dtype float32, got float16"),
    "dtype_wrapper_bias": (lambda: tf_mps.ops.conv2d(X, F, bias=tf.ones(2, tf.float64)),
                           r"conv2d: bias must be float32 or float16, got float64"),
    # the Python wrapper's arguments
    "wrapper_strides": (lambda: tf_mps.ops.conv2d(X, F, strides=[1, 2, 3]),
                        r"conv2d: strides must be an int or a list of 1, 2 or 4 ints, got \[1, 2, 3\]"),
    "wrapper_dilations": (lambda: tf_mps.ops.conv2d(X, F, dilations=0), r"conv2d: dilations must be >= 1, got 0"),
    "wrapper_padding": (lambda: tf_mps.ops.conv2d(X, F, padding="FULL"),
                        r"conv2d: padding must be 'SAME', 'VALID' or a list of explicit paddings, got 'FULL'"),
    "wrapper_explicit_padding": (lambda: tf_mps.ops.conv2d(X, F, padding=[[1, 1], [1, -1]]),
                                 r"conv2d: explicit paddings must be >= 0"),
    "wrapper_activation": (lambda: tf_mps.ops.conv2d(X, F, activation="tanh"),
                           r"conv2d: activation must be None, 'linear' or 'relu', got 'tanh'"),
    "wrapper_groups": (lambda: tf_mps.ops.conv2d(X, F, groups=2),
                       r"conv2d: x has 4 channels but filters.shape\[2\] \* groups = 4 \* 2 = 8"),
    "wrapper_groups_type": (lambda: tf_mps.ops.conv2d(X, F, groups=0), r"conv2d: groups must be an int >= 1, got 0"),
    "wrapper_accumulator": (lambda: tf_mps.ops.conv2d(X, F, accumulator_precision="float64"),
                            r"conv2d: accumulator_precision must be 'float32' or 'float16', got 'float64'"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUT))
def test_bad_input(device, name):
    fn, pattern = BAD_INPUT[name]
    with pytest.raises(INVALID, match=pattern):
        fn()


def test_huge_strides_and_dilations_are_exact(device):
    # Strides and dilations near int64's limit: one output pixel, no overflow on the way.
    y = conv(strides=[1, BIG, BIG, 1], padding="SAME")
    np.testing.assert_array_equal(y.numpy(), np.full((1, 1, 1, 2), 36.0, np.float32))
    y = conv(f=tf.ones((2, 1, 4, 2)), dilations=[1, 4, 1, 1], strides=[1, BIG, 1, 1])
    np.testing.assert_array_equal(y.numpy(), np.full((1, 1, 5, 2), 8.0, np.float32))


def test_shape_function_reports_at_trace_time(device):
    # Graph construction runs the shape function: the same message, as TF's ValueError.
    @tf.function
    def fn(x, f):
        return lib.mps_conv2d(input=x, filter=f, bias=[], strides=S1, padding="VALID")

    with pytest.raises(ValueError, match=r"MpsConv2D: input depth must be evenly divisible by filter depth: 5 vs 2"):
        fn.get_concrete_function(tf.TensorSpec((1, 5, 5, 5)), tf.TensorSpec((3, 3, 2, 2)))
    with pytest.raises(ValueError, match=r"MpsConv2D: the filter is larger than the padded input"):
        fn.get_concrete_function(tf.TensorSpec((None, 2, 5, 4)), tf.TensorSpec((3, 3, 4, 2)))
    with pytest.raises(ValueError, match=r"MpsConv2D: input must be 4-D"):
        fn.get_concrete_function(tf.TensorSpec((5, 5, 4)), tf.TensorSpec((3, 3, 4, 2)))


# ================================================================ float16
# Half's unit roundoff: the rounding error of one operation is at most U * |result|.
U = 2.0**-11


def _rand16(shape, seed, scale=1.0):
    return tf.constant((np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float16))


def _to64(t):
    return tf.constant(np.asarray(t).astype(np.float64))


def _pads(size, k, stride, dilation, padding, axis):
    """(pad before, output size) of one spatial dimension under TF's rules."""
    eff = (k - 1) * dilation + 1
    if padding == "SAME":
        out = -(-size // stride)
        return max((out - 1) * stride + eff - size, 0) // 2, out
    before, after = (0, 0) if padding == "VALID" else padding[axis]
    return before, (size + before + after - eff) // stride + 1


def _pair2(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _geometry(x_shape, f_shape, strides, padding, dilations):
    (sh, sw), (dh, dw) = _pair2(strides), _pair2(dilations)
    pt, oh = _pads(x_shape[1], f_shape[0], sh, dh, padding, 0)
    pl, ow = _pads(x_shape[2], f_shape[1], sw, dw, padding, 1)
    return sh, sw, dh, dw, pt, pl, oh, ow


# ---------------------------------------------- the half-accumulation model in NumPy
# Written from the model's statement (conv.h), independently of the kernels: each step
# adds the exact product in float64 and rounds to float16 (NumPy rounds float64 to half
# directly, to nearest even; a float64 sum that is not exact is off by less than 2^-52
# of acc's size, far from half's rounding boundaries, so it rounds the same).
def _half_step(acc, term):
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf and inf - inf are the model's
        return (acc.astype(np.float64) + term).astype(np.float16)


def half_model_forward(x, w, strides=1, padding="SAME", dilations=1):
    """acc[n, i, j, o]: terms (kh, kw, c) increasing, taps in the padding skipped."""
    x, w = np.asarray(x).astype(np.float64), np.asarray(w).astype(np.float64)
    n, h, wd, c = x.shape
    kh_n, kw_n, cg, o = w.shape
    og = o // (c // cg)
    sh, sw, dh, dw, pt, pl, oh, ow = _geometry(x.shape, w.shape, strides, padding, dilations)
    group_of = np.arange(o) // og
    acc = np.zeros((n, oh, ow, o), np.float16)
    for kh in range(kh_n):
        rows = np.arange(oh) * sh - pt + kh * dh
        vr = (rows >= 0) & (rows < h)
        for kw in range(kw_n):
            cols = np.arange(ow) * sw - pl + kw * dw
            valid = (vr[:, None] & ((cols >= 0) & (cols < wd))[None, :])[None, :, :, None]
            xs = x[:, np.clip(rows, 0, h - 1)][:, :, np.clip(cols, 0, wd - 1)]
            for ci in range(cg):
                acc = np.where(valid, _half_step(acc, xs[..., group_of * cg + ci] * w[kh, kw, ci]), acc)
    return acc


def half_model_input_grad(dy, w, x_shape, strides=1, padding="SAME", dilations=1):
    """acc[n, h, v, c]: terms (kh, kw, o) increasing over the taps that reach (h, v)."""
    dy, w = np.asarray(dy).astype(np.float64), np.asarray(w).astype(np.float64)
    n, h, wd, c = x_shape
    kh_n, kw_n, cg, o = w.shape
    og = o // (c // cg)
    sh, sw, dh, dw, pt, pl, oh, ow = _geometry(x_shape, w.shape, strides, padding, dilations)
    group_of, within = np.arange(c) // cg, np.arange(c) % cg
    acc = np.zeros(x_shape, np.float16)
    for kh in range(kh_n):
        num = np.arange(h) + pt - kh * dh
        vr = (num % sh == 0) & (num // sh >= 0) & (num // sh < oh)
        for kw in range(kw_n):
            num_c = np.arange(wd) + pl - kw * dw
            vc = (num_c % sw == 0) & (num_c // sw >= 0) & (num_c // sw < ow)
            valid = (vr[:, None] & vc[None, :])[None, :, :, None]
            ys = dy[:, np.clip(num // sh, 0, oh - 1)][:, :, np.clip(num_c // sw, 0, ow - 1)]
            for k in range(og):
                term = ys[..., group_of * og + k] * w[kh, kw, within, group_of * og + k]
                acc = np.where(valid, _half_step(acc, term), acc)
    return acc


def half_model_filter_grad(x, dy, f_shape, strides=1, padding="SAME", dilations=1):
    """(dw, db): terms (n, i, j) increasing; dw skips the pixels whose tap is in the padding."""
    x, dy = np.asarray(x).astype(np.float64), np.asarray(dy).astype(np.float64)
    n_n, h, wd, c = x.shape
    kh_n, kw_n, cg, o = f_shape
    og = o // (c // cg)
    sh, sw, dh, dw, pt, pl, oh, ow = _geometry(x.shape, f_shape, strides, padding, dilations)
    chan = (np.arange(o) // og)[None, :] * cg + np.arange(cg)[:, None]  # [cg, O]: x's channel
    acc = np.zeros(f_shape, np.float16)
    db = np.zeros(o, np.float16)
    for n in range(n_n):
        for i in range(oh):
            rows = i * sh - pt + np.arange(kh_n) * dh
            for j in range(ow):
                cols = j * sw - pl + np.arange(kw_n) * dw
                valid = (((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < wd))[None, :])[..., None, None]
                xs = x[n, np.clip(rows, 0, h - 1)][:, np.clip(cols, 0, wd - 1)]  # [KH, KW, C]
                term = xs[:, :, chan] * dy[n, i, j]
                acc = np.where(valid, _half_step(acc, term), acc)
                db = _half_step(db, dy[n, i, j])
    return acc, db


def _epilogue(acc, bias, relu, dtype):
    out = acc.astype(np.float32)
    if bias is not None:
        out = out + np.asarray(bias).astype(np.float32)
    out = out.astype(dtype)
    return np.where(out < 0, np.zeros((), dtype), out) if relu else out


def _halves(t):
    """The half values the model's operands take (float32 data is rounded first)."""
    return np.asarray(t).astype(np.float16)


def _assert_bits(actual, expected, what):
    actual = np.asarray(actual)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} vs {expected.dtype}"
    # assert_array_equal: +0 == -0 (a skipped padding term would add one or the other),
    # NaN == NaN, and every other value bit for bit.
    np.testing.assert_array_equal(actual, expected, err_msg=what)


HALF_CASES = [
    # (x shape, filter shape, kwargs)
    ((2, 5, 6, 3), (3, 3, 3, 5), dict(padding="SAME")),
    ((2, 7, 6, 4), (3, 2, 2, 6), dict(strides=[2, 1], padding=[[1, 0], [2, 1]], dilations=[1, 2], groups=2)),
    ((2, 6, 7, 4), (3, 3, 1, 8), dict(strides=2, padding="VALID", groups=4)),  # depthwise, multiplier 2
    ((1, 4, 5, 20), (1, 1, 20, 37), dict(padding="VALID")),  # 1x1, blocks of 16 lanes and a tail
    ((2, 9, 8, 3), (3, 3, 3, 4), dict(strides=3, padding="SAME")),  # stride phases in dx
]


def _run_all(x, f, dy, bias, relu, precision, kw):
    """Forward (with bias and relu), dx and (dw, db) of the ops, with the given dtype."""
    groups = kw.get("groups", 1)
    attrs = dict(strides=_pair("strides", kw.get("strides", 1)), dilations=_pair("dilations", kw.get("dilations", 1)))
    padding, explicit = _padding_attr(kw.get("padding", "SAME"))
    attrs.update(padding=padding, explicit_paddings=explicit, accumulator_precision=precision)
    y = tf_mps.ops.conv2d(x, f, strides=kw.get("strides", 1), padding=kw.get("padding", "SAME"),
                          dilations=kw.get("dilations", 1), groups=groups, bias=bias,
                          activation="relu" if relu else None, accumulator_precision=precision)
    dx = lib.mps_conv2d_backprop_input(input_sizes=x.shape, filter=f, out_backprop=dy, **attrs)
    dw, (db,) = lib.mps_conv2d_backprop_filter(input=x, filter_sizes=f.shape, out_backprop=dy, num_bias=1, **attrs)
    return y, dx, dw, db


def _pair(name, v):
    from tf_mps.ops import conv as conv_module
    return conv_module._pair(name, v)


def _padding_attr(p):
    from tf_mps.ops import conv as conv_module
    return conv_module._padding(p)


def _model_all(x, f, dy, bias, relu, dtype, kw):
    args = dict(strides=kw.get("strides", 1), padding=kw.get("padding", "SAME"), dilations=kw.get("dilations", 1))
    xh, fh, dyh = _halves(x), _halves(f), _halves(dy)
    y = _epilogue(half_model_forward(xh, fh, **args), bias, relu, dtype)
    dx = half_model_input_grad(dyh, fh, xh.shape, **args).astype(dtype)
    dw, db = half_model_filter_grad(xh, dyh, fh.shape, **args)
    return y, dx, dw.astype(dtype), db.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("case", range(len(HALF_CASES)))
def test_half_accumulation_is_the_model_bit_for_bit(device, case, dtype):
    xs, fs, kw = HALF_CASES[case]
    x, f = _rand16(xs, 30 + case), _rand16(fs, 40 + case)
    bias = _rand16((fs[-1],), 50 + case)
    y_shape = half_model_forward(_halves(x), _halves(f), strides=kw.get("strides", 1),
                                 padding=kw.get("padding", "SAME"), dilations=kw.get("dilations", 1)).shape
    dy = _rand16(y_shape, 60 + case)
    if dtype == np.float32:  # float32 data: the op rounds it to half itself; give it more bits
        x, f, dy, bias = (tf.cast(t, tf.float32) * 1.0001 for t in (x, f, dy, bias))
    ours = _run_all(x, f, dy, bias, True, "float16", kw)
    model = _model_all(x, f, dy, bias, True, dtype, kw)
    for name, a, b in zip(["output", "d_input", "d_filter", "d_bias"], ours, model):
        _assert_bits(a, b, name)


def test_half_accumulation_stagnates_and_overflows(device):
    # 1x1 convolutions where half accumulation and float32 differ by design.
    # 4096 terms of 1: the half sum stops at 2048 (2048 + 1 rounds to even, 2048).
    x = tf.ones((1, 1, 1, 4096), tf.float16)
    f = tf.ones((1, 1, 4096, 1), tf.float16)
    assert tf_mps.ops.conv2d(x, f, accumulator_precision="float16").numpy().item() == 2048
    assert tf_mps.ops.conv2d(x, f).numpy().item() == 4096
    # +40000 +40000 -40000 -40000: the half partial sum overflows to inf and stays there;
    # in float32 the sum is 0.
    x = tf.ones((1, 1, 1, 4), tf.float16)
    f = tf.constant([40000, 40000, -40000, -40000], tf.float16, shape=(1, 1, 4, 1))
    assert tf_mps.ops.conv2d(x, f, accumulator_precision="float16").numpy().item() == np.inf
    assert tf_mps.ops.conv2d(x, f).numpy().item() == 0
    # The order matters: -40000 first ends at -inf.
    f = tf.reverse(f, [2])
    assert tf_mps.ops.conv2d(x, f, accumulator_precision="float16").numpy().item() == -np.inf
    # The bias is added in float32 after the sum: 2048 (half) + 0.5 rounds to float32 2048.5.
    x32, f32 = tf.ones((1, 1, 1, 4096)), tf.ones((1, 1, 4096, 1))
    y = tf_mps.ops.conv2d(x32, f32, bias=tf.constant([0.5]), accumulator_precision="float16")
    assert y.dtype == tf.float32 and y.numpy().item() == 2048.5


def test_float32_data_is_rounded_to_half_for_half_accumulation(device):
    # 1 + 2^-12 is not a half: rounded to 1 before the product.
    x = tf.fill((1, 1, 1, 1), 1.0 + 2.0**-12)
    f = tf.ones((1, 1, 1, 1))
    assert tf_mps.ops.conv2d(x, f, accumulator_precision="float16").numpy().item() == 1.0
    assert tf_mps.ops.conv2d(x, f).numpy().item() == np.float32(1.0 + 2.0**-12)


def _abs_conv64(x, f, kw):
    """conv(|x|, |f|) in float64: the scale of the rounding error bound."""
    return reference(tf.abs(_to64(x)), tf.abs(_to64(f)), kw.get("strides", 1), kw.get("padding", "SAME"),
                     kw.get("dilations", 1), kw.get("groups", 1)).numpy()


@pytest.mark.parametrize("case", range(len(HALF_CASES)))
def test_float16_matches_tf_in_float64(device, case):
    # float16 data, both accumulations, against tf.nn.conv2d in float64 on the same halves.
    # float32 accumulation rounds once: |err| <= U |y| (+ float32's rounding, far below).
    # Half accumulation rounds each of the K = KH*KW*Cg terms' partial sums: the classic
    # bound of recursive summation, |err| <= K U / (1 - K U) * conv(|x|, |w|), plus U |y|.
    xs, fs, kw = HALF_CASES[case]
    x, f = _rand16(xs, 70 + case), _rand16(fs, 71 + case)
    ref = reference(_to64(x), _to64(f), kw.get("strides", 1), kw.get("padding", "SAME"), kw.get("dilations", 1),
                    kw.get("groups", 1)).numpy()
    y32 = tf_mps.ops.conv2d(x, f, **kw).numpy().astype(np.float64)
    assert np.all(np.abs(y32 - ref) <= U * np.abs(ref) * (1 + 1e-4) + 1e-30)
    y16 = tf_mps.ops.conv2d(x, f, accumulator_precision="float16", **kw).numpy().astype(np.float64)
    k = fs[0] * fs[1] * fs[2]
    bound = k * U / (1 - k * U) * _abs_conv64(x, f, kw) + U * np.abs(ref) + 1e-30
    assert np.all(np.abs(y16 - ref) <= bound)


@pytest.mark.parametrize("case", range(len(HALF_CASES)))
def test_float16_gradients_match_tf_in_float64(device, case):
    # float16 data with float32 accumulation: gradients computed in float32, rounded once.
    xs, fs, kw = HALF_CASES[case]
    x, f, b = _rand16(xs, 80 + case), _rand16(fs, 81 + case), _rand16((fs[-1],), 82 + case)
    srcs64 = [_to64(t) for t in (x, f, b)]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, f, b] + srcs64)
        y = tf_mps.ops.conv2d(x, f, bias=b, **kw)
        z = reference(*srcs64[:2], kw.get("strides", 1), kw.get("padding", "SAME"), kw.get("dilations", 1),
                      kw.get("groups", 1), srcs64[2])
    assert y.dtype == tf.float16
    dy = _rand16(y.shape, 83 + case)
    ours = tape.gradient(y, [x, f, b], output_gradients=dy)
    theirs = tape.gradient(z, srcs64, output_gradients=_to64(dy))
    for name, a, t in zip(["d_input", "d_filter", "d_bias"], ours, theirs):
        assert a.dtype == tf.float16, name
        assert_rel_close(a, t, 2 * U, name)


# ================================================================ conv2d_transpose
conv2d_transpose = tf_mps.ops.conv.conv2d_transpose


def _out_size(size, k, stride, dilation, padding):
    """The largest transposed output size whose convolution gives `size` (TF's choice in
    Keras: VALID (size-1)*s + eff, SAME size*s)."""
    eff = (k - 1) * dilation + 1
    return size * stride if padding == "SAME" else (size - 1) * stride + eff


TRANSPOSE_CASES = [
    # (x shape, filter shape [h, w, out, in], strides, padding, dilations, output_shape or None)
    ((2, 4, 5, 6), (3, 3, 7, 6), 1, "SAME", 1, None),
    ((2, 4, 5, 6), (3, 3, 7, 6), 2, "SAME", 1, None),
    ((2, 4, 5, 6), (3, 3, 7, 6), 2, "SAME", 1, (2, 7, 9, 7)),  # the other size stride 2 allows
    ((1, 3, 4, 5), (3, 2, 4, 5), [2, 3], "VALID", 1, None),
    ((2, 5, 5, 3), (3, 3, 2, 3), 1, "VALID", 2, None),  # dilated
    ((2, 6, 6, 20), (2, 2, 18, 20), 2, "VALID", 1, None),  # wide channels (indirect GEMM on x86)
]


def _transpose_case(i, dtype=np.float32):
    xs, fs, s, padding, d, out = TRANSPOSE_CASES[i]
    (sh, sw), (dh, dw) = _pair2(s), _pair2(d)
    if out is None:
        out = (xs[0], _out_size(xs[1], fs[0], sh, dh, padding), _out_size(xs[2], fs[1], sw, dw, padding), fs[2])
    rng = np.random.default_rng(90 + i)
    x = tf.constant(rng.standard_normal(xs).astype(dtype))
    f = tf.constant(rng.standard_normal(fs).astype(dtype))
    b = tf.constant(rng.standard_normal(fs[2]).astype(dtype))
    return x, f, b, list(out), dict(strides=s, padding=padding, dilations=d)


def _tf_transpose(x, f, out, kw):
    # TF's float64 conv2d_transpose takes no dilations on the CPU: a dilated filter instead.
    return tf.nn.conv2d_transpose(x, _dilate(f, kw["dilations"]), out, kw["strides"], kw["padding"])


@pytest.mark.parametrize("case", range(len(TRANSPOSE_CASES)))
def test_transpose_matches_tf(device, case):
    x, f, b, out, kw = _transpose_case(case)
    srcs64 = [_to64(t) for t in (x, f, b)]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, f, b] + srcs64)
        y = conv2d_transpose(x, f, out, bias=b, activation="relu", **kw)
        z = _tf_transpose(srcs64[0], srcs64[1], out, kw) + srcs64[2]
    assert y.shape == out
    assert_rel_close(y, tf.nn.relu(z), RTOL, "output")
    dy = _rand(y.shape, 100 + case)
    ours = tape.gradient(y, [x, f, b], output_gradients=dy)
    theirs = tape.gradient(z, srcs64, output_gradients=_to64(dy * tf.cast(y > 0, tf.float32)))
    for name, a, t in zip(["d_input", "d_filter", "d_bias"], ours, theirs):
        assert_rel_close(a, t, RTOL, name)


@pytest.mark.parametrize("case", [0, 1, 3])
def test_transpose_float16(device, case):
    x, f, b, out, kw = _transpose_case(case, np.float16)
    ref = (_tf_transpose(_to64(x), _to64(f), out, kw) + _to64(b)).numpy()
    y = conv2d_transpose(x, f, out, bias=b, **kw)
    assert y.dtype == tf.float16
    assert_rel_close(y, ref, 2 * U, "float32 accumulation")
    # Half accumulation: the model's dx plus the bias in float32, bit for bit.
    (sh, sw), (dh, dw) = _pair2(kw["strides"]), _pair2(kw["dilations"])
    acc = half_model_input_grad(x.numpy(), f.numpy(), tuple(out), kw["strides"], kw["padding"], kw["dilations"])
    yh = conv2d_transpose(x, f, out, bias=b, accumulator_precision="float16", **kw)
    _assert_bits(yh, _epilogue(acc, b.numpy(), False, np.float16), "half accumulation")
    # and its gradients are the half-accumulated conv2d and filter gradient
    with tf.GradientTape() as tape:
        tape.watch([x, f])
        yh = conv2d_transpose(x, f, out, accumulator_precision="float16", **kw)
    dy = _rand16(yh.shape, 110 + case)
    dx, df = tape.gradient(yh, [x, f], output_gradients=dy)
    args = dict(strides=kw["strides"], padding=kw["padding"], dilations=kw["dilations"])
    _assert_bits(dx, half_model_forward(dy.numpy(), f.numpy(), **args), "d_input")
    _assert_bits(df, half_model_filter_grad(dy.numpy(), x.numpy(), f.shape, **args)[0], "d_filter")


@pytest.mark.parametrize("case", [1, 3])
def test_transpose_compute_gradient(device, case):
    x, f, b, out, kw = _transpose_case(case)
    theoretical, numerical = tf.test.compute_gradient(
        lambda x, f, b: conv2d_transpose(x, f, out, bias=b, **kw), [x, f, b], delta=1e-2)
    for name, t, n in zip(["input", "filter", "bias"], theoretical, numerical):
        assert_rel_close(t, n, RTOL_NUMERIC_GRADIENT, name)


def test_transpose_in_tf_function(device):
    x, f, _, out, kw = _transpose_case(1)

    @tf.function(input_signature=[tf.TensorSpec([None, 4, 5, 6]), tf.TensorSpec(None, tf.int32)])
    def fn(x, shape):
        return conv2d_transpose(x, f, shape, **kw)

    y = fn(x, tf.constant(out))
    assert_rel_close(y, _tf_transpose(_to64(x), _to64(f), out, kw), RTOL, "output")
    shape = fn.get_concrete_function().outputs[0].shape
    assert shape.rank == 4


@st.composite
def transpose_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    s = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    d = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    padding = draw(st.sampled_from(["SAME", "VALID"]))
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    cin, cout = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    # Any output size whose convolution gives (h, w): from the largest, up to stride - 1 less.
    out_h = _out_size(h, kh, s[0], d[0], padding) - draw(st.integers(0, s[0] - 1))
    out_w = _out_size(w, kw, s[1], d[1], padding) - draw(st.integers(0, s[1] - 1))
    if padding == "VALID":
        out_h, out_w = max(out_h, (kh - 1) * d[0] + 1), max(out_w, (kw - 1) * d[1] + 1)
    return dict(x=(n, h, w, cin), f=(kh, kw, cout, cin), out=[n, out_h, out_w, cout], strides=s, dilations=d,
                padding=padding, seed=draw(st.integers(0, 2**16)))


@hypothesis_settings
@given(case=transpose_cases())
def test_transpose_random_shapes(device, case):
    kw = dict(strides=case["strides"], padding=case["padding"], dilations=case["dilations"])
    sh, sw, dh, dw, pt, pl, oh, ow = _geometry(case["out"], case["f"], kw["strides"], kw["padding"], kw["dilations"])
    if (oh, ow) != case["x"][1:3]:  # VALID with a size below the largest may not convolve back
        return
    x, f = _rand(case["x"], case["seed"]), _rand(case["f"], case["seed"] + 1)
    srcs64 = [_to64(x), _to64(f)]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, f] + srcs64)
        y = conv2d_transpose(x, f, case["out"], **kw)
        z = _tf_transpose(*srcs64, case["out"], kw)
    assert_rel_close(y, z, RTOL, "output")
    dy = _rand(y.shape, case["seed"] + 2)
    for name, a, t in zip(["d_input", "d_filter"], tape.gradient(y, [x, f], output_gradients=dy),
                          tape.gradient(z, srcs64, output_gradients=_to64(dy))):
        assert_rel_close(a, t, RTOL, name)


@st.composite
def half_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2]))
    cg, og = draw(st.integers(1, 4)), draw(st.integers(1, 20))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    s = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    d = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    padding = draw(st.sampled_from(["SAME", "VALID"]))
    h = draw(st.integers((kh - 1) * d[0] + 1, 7))
    w = draw(st.integers((kw - 1) * d[1] + 1, 7))
    return dict(x=(draw(st.integers(1, 2)), h, w, groups * cg), f=(kh, kw, cg, groups * og),
                kw=dict(strides=s, dilations=d, padding=padding, groups=groups),
                scale=draw(st.sampled_from([1.0, 30.0, 1e-3])), seed=draw(st.integers(0, 2**16)))


@hypothesis_settings
@given(case=half_cases())
def test_half_accumulation_random_shapes(device, case):
    s, kw = case["seed"], case["kw"]
    x, f = _rand16(case["x"], s, case["scale"]), _rand16(case["f"], s + 1, case["scale"])
    b = _rand16((case["f"][-1],), s + 2)
    y_shape = half_model_forward(x.numpy(), f.numpy(), kw["strides"], kw["padding"], kw["dilations"]).shape
    dy = _rand16(y_shape, s + 3)
    ours = _run_all(x, f, dy, b, False, "float16", kw)
    for name, a, m in zip(["output", "d_input", "d_filter", "d_bias"], ours,
                          _model_all(x, f, dy, b, False, np.float16, kw)):
        _assert_bits(a, m, name)


# ---------------------------------------------------------------- transpose: bad input
XT = tf.ones((1, 3, 3, 2))  # the convolution of a [1, 5, 5, 4] image by FT, VALID
FT = tf.ones((3, 3, 4, 2))  # [h, w, out, in]


def transpose(x=XT, f=FT, shape=(1, 5, 5, 4), bias=(), strides=S1, padding="VALID", **kw):
    return lib.mps_conv2d_transpose(input=x, filter=f, output_shape=tf.constant(shape, tf.int32), bias=list(bias),
                                    strides=strides, padding=padding, **kw)


BAD_TRANSPOSE = {
    "input_rank": (lambda: transpose(x=tf.ones((3, 3, 2))),
                   r"MpsConv2DTranspose: input must be 4-D \[batch, height, width, channels\] \(NHWC\), got shape "
                   r"\[3,3,2\]"),
    "filter_rank": (lambda: transpose(f=tf.ones((3, 3, 4))),
                    r"MpsConv2DTranspose: filter must be 4-D \[filter_height, filter_width, out_channels / groups, "
                    r"in_channels\] \(tf.nn.conv2d_transpose's\), got shape \[3,3,4\]"),
    "output_shape_length": (lambda: transpose(shape=(1, 5, 5)),
                            r"MpsConv2DTranspose: output_shape must be a 1-D tensor of 4 elements, got shape \[3\]"),
    "output_shape_mismatch": (lambda: transpose(shape=(1, 6, 5, 4)),
                              r"MpsConv2DTranspose: input must have the shape that convolving an image of "
                              r"output_shape \[1, 6, 5, 4\] with filter \[3, 3, 4, 2\] under these strides, dilations "
                              r"and padding gives .*expected \[1,4,3,2\], got \[1,3,3,2\]"),
    "output_shape_batch": (lambda: transpose(shape=(2, 5, 5, 4)),
                           r"MpsConv2DTranspose: input must have the shape .* expected \[2,3,3,2\], got \[1,3,3,2\]"),
    "filter_in_channels": (lambda: transpose(f=tf.ones((3, 3, 4, 3))),
                           r"MpsConv2DTranspose: input must have the shape .*expected \[1,3,3,3\], got \[1,3,3,2\]"),
    "output_channels": (lambda: transpose(shape=(1, 5, 5, 6)),
                        r"MpsConv2DTranspose: input depth must be evenly divisible by filter depth: 6 vs 4 .*"
                        r"\(output_shape \[1, 5, 5, 6\], filter \[3, 3, 4, 2\]\)"),
    "output_shape_negative": (lambda: transpose(shape=(1, -5, 5, 4)),
                              r"MpsConv2DTranspose: input must have a batch >= 0 and positive height"),
    "filter_larger_than_output": (lambda: transpose(shape=(1, 2, 5, 4)),
                                  r"MpsConv2DTranspose: the filter is larger than the padded input"),
    "strides": (lambda: transpose(strides=[1, 0, 1, 1]),
                r"MpsConv2DTranspose: strides must be >= 1 in height and width, got \[1, 0, 1, 1\]"),
    "bias_size": (lambda: transpose(bias=[tf.ones(2)]),
                  r"MpsConv2DTranspose: bias must be 1-D with one value per output channel \(output_shape's last "
                  r"entry, 4\), got shape \[2\]"),
    "bias_list_length": (lambda: transpose(bias=[tf.ones(4), tf.ones(4)]),
                         r"MpsConv2DTranspose: bias must be a list of 0 or 1 tensors, got 2"),
    "dtype_output_shape": (lambda: lib.mps_conv2d_transpose(input=XT, filter=FT, output_shape=tf.constant(
        [1, 5, 5, 4], tf.int64), bias=[], strides=S1, padding="VALID"),
        r"MpsConv2DTranspose as input #2\(zero-based\) was expected to be a int32 tensor but is a int64"),
    "wrapper_dtype": (lambda: conv2d_transpose(tf.ones((1, 3, 3, 2), tf.float64), FT, [1, 5, 5, 4]),
                      r"conv2d_transpose: x must be float32 or float16, got float64"),
    "wrapper_filter_dtype": (lambda: conv2d_transpose(XT, tf.cast(FT, tf.float16), [1, 5, 5, 4]),
                             r"conv2d_transpose: filters must have x's dtype float32, got float16"),
    "wrapper_output_shape": (lambda: conv2d_transpose(XT, FT, [1, 5, 5]),
                             r"conv2d_transpose: output_shape must be 4 ints \[batch, height, width, channels\], "
                             r"got shape \(3,\)"),
    "wrapper_output_shape_type": (lambda: conv2d_transpose(XT, FT, [1.5, 5, 5, 4]),
                                  r"conv2d_transpose: output_shape must be int32 or int64, got float32"),
    "wrapper_accumulator": (lambda: conv2d_transpose(XT, FT, [1, 5, 5, 4], accumulator_precision="half"),
                            r"conv2d_transpose: accumulator_precision must be 'float32' or 'float16', got 'half'"),
    "wrapper_padding": (lambda: conv2d_transpose(XT, FT, [1, 5, 5, 4], padding="FULL"),
                        r"conv2d: padding must be 'SAME', 'VALID'"),
}


@pytest.mark.parametrize("name", sorted(BAD_TRANSPOSE))
def test_transpose_bad_input(device, name):
    fn, pattern = BAD_TRANSPOSE[name]
    with pytest.raises(INVALID, match=pattern):
        fn()


def test_transpose_shape_function_reports_at_trace_time(device):
    @tf.function
    def fn(x):
        return lib.mps_conv2d_transpose(input=x, filter=FT, output_shape=[1, 6, 5, 4], bias=[], strides=S1,
                                        padding="VALID")

    with pytest.raises(ValueError, match=r"MpsConv2DTranspose: input must have the shape that convolving"):
        fn.get_concrete_function(tf.TensorSpec((1, 3, 3, 2)))
    assert fn.get_concrete_function(tf.TensorSpec((1, 4, 3, 2))).outputs[0].shape == [1, 6, 5, 4]


def test_float16_bad_inputs_name_the_argument(device):
    x16, f16 = tf.cast(X, tf.float16), tf.cast(F, tf.float16)
    with pytest.raises(INVALID, match=r"MpsConv2D: bias must be 1-D .* got shape \[3\]"):
        conv(x=x16, f=f16, bias=[tf.ones(3, tf.float16)], accumulator_precision="float16")
    with pytest.raises(INVALID, match=r"MpsConv2DBackpropFilter: out_backprop must have the shape"):
        filter_grad(x=x16, dy=tf.ones((1, 5, 5, 2), tf.float16), accumulator_precision="float16")
    with pytest.raises(INVALID, match=r"conv2d: bias must have x's dtype float16, got float32"):
        tf_mps.ops.conv2d(x16, f16, bias=tf.ones(2))


def test_half_accumulation_rounding_edge_cases(device):
    # 1x1 convolutions over crafted terms, against the NumPy model: ties to even at
    # 2048 + 1 and 65504 + 16 (= 65520: inf), just below it (65504 + 15.99), subnormal
    # sums (products below 2^-14 and 2^-24), signed zeros, cancellation, and inf/NaN inputs.
    rows = [
        [2048, 1, 1, 1],
        [65504, 16, -16, 0],
        [65504, 15.99, 0, 0],
        [2.0**-14, 2.0**-24, -2.0**-24, 2.0**-25],
        [3.0 * 2.0**-24, 2.0**-24, 2.0**-24, -(2.0**-23)],
        [-0.0, 0.0, -0.0, 0.0],
        [1e-3, 1e-3, -1e-3, 7.0],
        [40000, 40000, -40000, -40000],
        [np.inf, -1, 1, 0],
        [np.inf, -np.inf, 1, 0],
        [np.nan, 1, 1, 1],
    ]
    terms = np.array(rows, np.float64)
    x = terms.astype(np.float16).reshape(1, 1, len(rows), 4)
    # w = 1 per term: every product is the term itself (exact)
    f = np.ones((1, 1, 4, 1), np.float16)
    y = tf_mps.ops.conv2d(tf.constant(x), tf.constant(f), padding="VALID", accumulator_precision="float16")
    _assert_bits(y, half_model_forward(x, f, padding="VALID"), "output")
    assert y.numpy()[0, 0, :3, 0].tolist() == [2048, np.inf, 65504]
    # and through products of two halves: 4 terms into one output
    xw = np.array([[2.0**-12, 3.0], [2.0**-8, 2.0**-17], [255.0, 257.0], [-1e-4, 6e-5]], np.float16)
    x, f = xw[:, 0].reshape(1, 1, 1, 4), xw[:, 1].reshape(1, 1, 4, 1)
    y = tf_mps.ops.conv2d(tf.constant(x), tf.constant(f), padding="VALID", accumulator_precision="float16")
    _assert_bits(y, half_model_forward(x, f, padding="VALID"), "products")
