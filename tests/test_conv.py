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
    ((4, 9, 9, 1), (3, 3, 1, 32), dict(padding="SAME")),  # one input channel: GEMM with k = 9
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
         ((3, 9, 9, 3), (3, 3, 3, 5), dict(padding=[[1, 2], [0, 1]], dilations=2))]
for i, (xs, fs, kw) in enumerate(cases):
    ref = T._depthwise_reference if kw.get("groups", 1) == xs[-1] else T.reference
    T.check(T._rand(xs, i), T._rand(fs, i + 1), ref=ref, bias=T._rand((fs[-1],), i + 2), relu=True, **kw)
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
    # dtypes (the op definitions allow float32 only; int32 size vectors)
    "dtype_raw_op": (lambda: conv(x=tf.ones((1, 5, 5, 4), tf.float64), f=tf.ones((3, 3, 4, 2), tf.float64)),
                     r"(?s)Value for attr 'T' of double is not in the list of allowed values: float.*MpsConv2D"),
    "dtype_input_sizes": (lambda: lib.mps_conv2d_backprop_input(
        input_sizes=tf.constant([1, 5, 5, 4], tf.int64), filter=F, out_backprop=DY, strides=S1, padding="VALID"),
        r"MpsConv2DBackpropInput as input #0\(zero-based\) was expected to be a int32 tensor but is a int64"),
    "dtype_wrapper_x": (lambda: tf_mps.ops.conv2d(tf.ones((1, 5, 5, 4), tf.float64), F),
                        r"conv2d: x must be float32, got float64"),
    "dtype_wrapper_filters": (lambda: tf_mps.ops.conv2d(X, tf.ones((3, 3, 4, 2), tf.float16)),
                              r"conv2d: filters must be float32, got float16"),
    "dtype_wrapper_bias": (lambda: tf_mps.ops.conv2d(X, F, bias=tf.ones(2, tf.float64)),
                           r"conv2d: bias must be float32, got float64"),
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


def test_float16_accumulation_is_unimplemented(device):
    with pytest.raises(tf.errors.UnimplementedError,
                       match=r"MpsConv2D: accumulator_precision='float16' is not implemented yet"):
        tf_mps.ops.conv2d(X, F, accumulator_precision="float16")


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
