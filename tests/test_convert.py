"""MpsConvert and tf_mps.convert: layouts against NumPy index maps (tests/reference.py),
exact round trips, value conversions, per-channel affine, gradients, bad input, random
shapes, and the tf.data helpers."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
import tf_mps
from tf_mps import convert as cv

INVALID = tf.errors.InvalidArgumentError

DTYPES = [np.uint8, np.float16, np.float32]
CHANNELS = [1, 2, 3, 4, 5, 6, 7, 8, 9]
IMAGE_LAYOUTS = ["nhwc", "image", "matrix_hwc", "matrix_chw"]


def _random(shape, dtype, rng):
    if dtype == np.uint8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(dtype)


def _geometry_kwargs(layout, h, w, c):
    if layout == "image":
        return dict(channels=c)
    if layout.startswith("matrix"):
        return dict(height=h, width=w, channels=c)
    return {}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("src", IMAGE_LAYOUTS)
@pytest.mark.parametrize("dst", IMAGE_LAYOUTS)
def test_layouts_match_index_maps_and_round_trip(src, dst, channels, dtype, device):
    rng = np.random.default_rng(channels)
    n, h, w, c = 2, 3, 5, channels
    logical = _random((n, h, w, c), dtype, rng)
    x = ref.to_layout(logical, src)
    y = cv.convert(x, src, dst, **_geometry_kwargs(src, h, w, c)).numpy()
    assert y.shape == ref.layout_shape(dst, n, h, w, c)
    np.testing.assert_array_equal(ref.from_layout(y, dst, n, h, w, c), logical)
    if dst == "image":  # padding channels are zero
        np.testing.assert_array_equal(y.reshape(n, -1, h, w, 4)[:, -1, :, :, c % 4 or 4:], 0)
        assert np.count_nonzero(y) == np.count_nonzero(logical)
    back = cv.convert(y, dst, src, **_geometry_kwargs(dst, h, w, c)).numpy()
    np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_sequence_time_major_round_trip(dtype, device):
    rng = np.random.default_rng(0)
    x = _random((4, 7, 5), dtype, rng)
    tm = cv.sequence_to_time_major(x).numpy()
    np.testing.assert_array_equal(tm, np.transpose(x, (1, 0, 2)))
    np.testing.assert_array_equal(cv.time_major_to_sequence(tm).numpy(), x)
    # a CNN output (NHWC with W = 1, e.g. a conv over sensor windows) feeds the RNN layout
    np.testing.assert_array_equal(cv.convert(x[:, :, None, :], "nhwc", "time_major").numpy(), tm)


def test_convenience_functions_agree_with_convert():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 3, 6)).astype(np.float32)
    img = cv.to_image(x)
    np.testing.assert_array_equal(cv.from_image(img, 6).numpy(), x)
    for data_layout, layout in [("HWC", "matrix_hwc"), ("CHW", "matrix_chw"),
                                ("MPSDataLayoutFeatureChannelsxHeightxWidth", "matrix_chw")]:
        m = cv.image_to_matrix(img, 6, data_layout)
        np.testing.assert_array_equal(m.numpy(), ref.to_layout(x, layout))
        np.testing.assert_array_equal(cv.matrix_to_image(m, 4, 3, 6, data_layout).numpy(), img.numpy())
        np.testing.assert_array_equal(cv.nhwc_to_matrix(x, data_layout).numpy(), m.numpy())
        np.testing.assert_array_equal(cv.matrix_to_nhwc(m, 4, 3, 6, data_layout).numpy(), x)


# ------------------------------------------------------------------ value conversions
def test_unorm8_read_and_write():
    q = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    f = cv.convert(q, "nhwc", "nhwc", dtype=tf.float32).numpy()
    np.testing.assert_array_equal(f, ref.unorm8_to_float(q))
    np.testing.assert_array_equal(cv.convert(f, "nhwc", "nhwc", dtype=tf.uint8).numpy(), q)  # exact round trip
    y = np.array([-1.0, 0.0, 0.5 / 255, 1.5 / 255, 2.5 / 255, 0.5, 1.0, 7.0, np.nan, np.inf, -np.inf],
                 np.float32).reshape(1, 1, -1, 1)
    np.testing.assert_array_equal(cv.convert(y, "nhwc", "nhwc", dtype=tf.uint8).numpy(), ref.float_to_unorm8(y))


@pytest.mark.parametrize("dst, c", [("image", 1), ("image", 2), ("image", 3), ("image", 4), ("image", 9),
                                    ("matrix_chw", 8), ("matrix_chw", 11), ("matrix_hwc", 3)])
@pytest.mark.parametrize("out_dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("affine", [False, True])
def test_every_byte_through_each_kernel(dst, c, out_dtype, affine):
    """All 256 bytes in every channel through each vector path (4-pixel byte shuffles,
    8 x 8 blocks, slices, plain runs): q/255 must be the correctly rounded quotient."""
    pixels = np.arange(2 * 16 * 16).reshape(2, 16, 16, 1)
    x = ((pixels + 37 * np.arange(c)) % 256).astype(np.uint8)
    rng = np.random.default_rng(c)
    scale = rng.uniform(0.5, 5.0, c).astype(np.float32) if affine else None
    bias = rng.uniform(-3, 3, c).astype(np.float32) if affine else None
    y = cv.convert(x, "nhwc", dst, dtype=out_dtype, scale=scale, bias=bias).numpy()
    expected = ref.unorm8_to_float(x)
    assert len(np.unique(expected)) == 256
    if affine:
        expected = expected * scale + bias
    np.testing.assert_array_equal(ref.from_layout(y, dst, 2, 16, 16, c), expected.astype(out_dtype))


@pytest.mark.parametrize("dtypes", [(np.float32, np.float32), (np.uint8, np.float16), (np.float16, np.uint8)],
                         ids=["f32", "u8-f16", "f16-u8"])
def test_time_major_and_chw_matrix(dtypes):
    """The 8 x 8 transposes with a packed side whose pixels are not adjacent (time-major:
    one row of every sequence per time step)."""
    n, t, c = 5, 43, 19
    rng = np.random.default_rng(9)
    seq = _random((n, t, c), dtypes[0], rng)
    tm = np.ascontiguousarray(np.transpose(seq, (1, 0, 2)))
    m = cv.convert(tm, "time_major", "matrix_chw", dtype=dtypes[1]).numpy()
    values = ref.unorm8_to_float(seq) if dtypes[0] == np.uint8 else seq.astype(np.float32)
    expected = ref.float_to_unorm8(values) if dtypes[1] == np.uint8 else values.astype(dtypes[1])
    np.testing.assert_array_equal(m, np.transpose(expected, (0, 2, 1)).reshape(n, c * t))
    back = cv.convert(m, "matrix_chw", "time_major", dtype=dtypes[1], height=t, width=1, channels=c).numpy()
    np.testing.assert_array_equal(back, np.transpose(expected, (1, 0, 2)))


def test_float16_conversion_is_exact_for_every_half_and_rounds_floats_like_numpy():
    halves = np.arange(65536, dtype=np.uint16).view(np.float16).reshape(1, 256, 256, 1)
    as_float = cv.convert(halves, "nhwc", "nhwc", dtype=tf.float32).numpy()
    np.testing.assert_array_equal(as_float, halves.astype(np.float32))  # NaN == NaN here
    back = cv.convert(as_float, "nhwc", "nhwc", dtype=tf.float16).numpy()
    np.testing.assert_array_equal(back.view(np.uint16)[~np.isnan(back)], halves.view(np.uint16)[~np.isnan(halves)])
    rng = np.random.default_rng(2)
    floats = np.concatenate([
        rng.standard_normal(100_000) * 10.0 ** rng.integers(-9, 6, 100_000),
        [65504, 65519.99, 65520, 1e6, 6e-8, 2.9e-8, 3e-8, -0.0, np.inf, -np.inf],
        (np.arange(2048) + 0.5) * 2.0**-24,  # ties between subnormals
    ]).astype(np.float32).reshape(1, 1, -1, 1)
    ours = cv.convert(floats, "nhwc", "nhwc", dtype=tf.float16).numpy()
    with np.errstate(over="ignore"):  # NumPy's own cast warns about the Inf results
        expected = floats.astype(np.float16)
    np.testing.assert_array_equal(ours.view(np.uint16), expected.view(np.uint16))
    assert np.isnan(cv.convert(np.full((1, 1, 1, 1), np.nan, np.float32), "nhwc", "nhwc", dtype=tf.float16).numpy()).all()


@pytest.mark.parametrize("src_dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("dst", ["image", "matrix_chw", "nhwc"])
@pytest.mark.parametrize("c", [3, 5, 11])  # one pixel vector; slices; 8 x 8 blocks with edges
def test_scale_and_bias_forward_and_inverse(src_dtype, dst, c):
    rng = np.random.default_rng(3)
    x = _random((2, 5, 7, c), src_dtype, rng)
    scale = rng.uniform(0.5, 2.0, c).astype(np.float32)
    bias = rng.uniform(-1, 1, c).astype(np.float32)
    xf = ref.unorm8_to_float(x) if src_dtype == np.uint8 else x.astype(np.float32)
    y = cv.convert(x, "nhwc", dst, dtype=tf.float32, scale=scale, bias=bias).numpy()
    np.testing.assert_array_equal(ref.from_layout(y, dst, 2, 5, 7, c), xf * scale + bias)
    back = cv.convert(y, dst, "nhwc", dtype=tf.float32, scale=scale, bias=bias, affine="inverse",
                      **_geometry_kwargs(dst, 5, 7, c)).numpy()
    np.testing.assert_allclose(back, xf, rtol=1e-6, atol=1e-6)
    if src_dtype == np.uint8:  # normalization undone and requantized: the same bytes
        q = cv.convert(y, dst, "nhwc", dtype=tf.uint8, scale=scale, bias=bias, affine="inverse",
                       **_geometry_kwargs(dst, 5, 7, c)).numpy()
        np.testing.assert_array_equal(q, x)


def test_float16_output_with_scale():
    x = np.random.default_rng(4).standard_normal((1, 2, 2, 3)).astype(np.float32)
    y = cv.to_image(x, dtype=tf.float16, scale=[2.0, 0.5, 1.0]).numpy()
    expected = (x * np.array([2.0, 0.5, 1.0], np.float32)).astype(np.float16)
    np.testing.assert_array_equal(cv.from_image(y, 3).numpy(), expected)


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("src, dst", [("nhwc", "image"), ("image", "matrix_chw"), ("matrix_hwc", "nhwc"),
                                      ("sequence", "time_major")])
@pytest.mark.parametrize("affine", [None, "forward", "inverse"])
def test_gradients(src, dst, affine):
    rng = np.random.default_rng(5)
    n, h, w, c = 2, 3, (1 if src == "sequence" else 2), 5
    x = tf.constant(ref.to_layout(rng.standard_normal((n, h, w, c)).astype(np.float32), src))
    scale = tf.constant(rng.uniform(0.5, 2, c).astype(np.float32))
    bias = tf.constant(rng.uniform(-1, 1, c).astype(np.float32))
    kwargs = _geometry_kwargs(src, h, w, c)

    if affine is None:
        def f(x):
            return cv.convert(x, src, dst, **kwargs)
        args = [x]
    else:
        def f(x, s, b):
            return cv.convert(x, src, dst, scale=s, bias=b, affine=affine, **kwargs)
        args = [x, scale, bias]
    theoretical, numerical = tf.test.compute_gradient(f, args, delta=1e-2)
    for t, nm in zip(theoretical, numerical, strict=True):
        np.testing.assert_allclose(t, nm, rtol=2e-2, atol=2e-2)


def test_no_gradient_through_uint8():
    x = tf.constant(np.ones((1, 2, 2, 3), np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = cv.to_image(x, dtype=tf.uint8)
    assert tape.gradient(y, x) is None


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: cv.convert(np.zeros((2, 3, 4), np.float32), "nhwc", "image"),
         r"MpsConvert: input in layout 'nhwc' must have rank 4, got shape \[2,3,4\]"),
        (lambda: cv.convert(np.zeros((1, 2, 3, 3, 4), np.float32), "image", "nhwc", channels=9),
         r"an image-layout input of 9 channels must have shape \[N, 3, H, W, 4\]"),
        (lambda: cv.convert(np.zeros((1, 2, 3, 3, 4), np.float32), "image", "nhwc"),
         r"attribute channels \(>= 1\) is required to read an input in layout 'image'"),
        (lambda: cv.convert(np.zeros((2, 30), np.float32), "matrix_hwc", "image", height=2, width=3, channels=4),
         r"a matrix input of height\*width\*channels = 2\*3\*4 must have shape \[N, 24\], got \[2,30\]"),
        (lambda: cv.convert(np.zeros((2, 3, 4, 5), np.float32), "nhwc", "image", channels=6),
         r"attribute channels=6 does not match the input's 5"),
        (lambda: cv.convert(np.zeros((2, 3, 4, 5), np.float32), "nhwc", "time_major"),
         r"output layout 'time_major' holds sequences \(width 1\), but the input has width 4"),
        (lambda: cv.to_image(np.zeros((1, 2, 2, 3), np.float32), scale=[1.0, 2.0]),
         r"MpsConvert: scale must be a vector of 3 values \(one per channel\), got shape \[2\]"),
        (lambda: cv.to_image(np.zeros((1, 2, 2, 3), np.int32)),
         r"MpsConvert: input must be uint8, float16 or float32, got int32"),
        (lambda: cv.to_image(np.zeros((1, 2, 2, 3), np.float32), dtype=tf.float64),
         r"dtype must be uint8, float16 or float32, got float64"),
        (lambda: cv.convert(np.zeros((1, 2, 2, 3), np.float32), "nhwc", "planar"),
         r"dst_layout must be one of"),
        (lambda: cv.image_to_matrix(np.zeros((1, 1, 2, 2, 4), np.float32), 3, "WHC"),
         r"data_layout must be 'HWC'"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises((INVALID, ValueError), match=message):
        call()


def test_kernel_checks_without_shape_inference():
    """In a graph with unknown shapes the kernel still validates at run time."""
    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)])
    def f(x):
        return cv.convert(x, "matrix_hwc", "image", height=2, width=2, channels=3)

    with pytest.raises(INVALID, match=r"must have shape \[N, 12\], got \[1,13\]"):
        f(tf.zeros((1, 13)))
    with pytest.raises(INVALID, match=r"must have rank 2"):
        f(tf.zeros((1, 12, 1)))


def test_empty_batch():
    y = cv.to_image(np.zeros((0, 3, 3, 5), np.float32))
    assert y.shape == (0, 2, 3, 3, 4)


# ------------------------------------------------------------------ random shapes
@given(
    n=st.integers(0, 3), h=st.integers(1, 5), w=st.integers(1, 5), c=st.integers(1, 13),
    src=st.sampled_from(IMAGE_LAYOUTS), dst=st.sampled_from(IMAGE_LAYOUTS),
    src_dtype=st.sampled_from(DTYPES), dst_dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31),
)
def test_property_random_shapes(n, h, w, c, src, dst, src_dtype, dst_dtype, seed):
    rng = np.random.default_rng(seed)
    logical = _random((n, h, w, c), src_dtype, rng)
    y = cv.convert(ref.to_layout(logical, src), src, dst, dtype=dst_dtype, **_geometry_kwargs(src, h, w, c)).numpy()
    assert y.shape == ref.layout_shape(dst, n, h, w, c) and y.dtype == dst_dtype
    values = ref.unorm8_to_float(logical) if src_dtype == np.uint8 else logical.astype(np.float32)
    if dst_dtype == np.uint8:
        expected = ref.float_to_unorm8(values)
    else:
        expected = values.astype(dst_dtype)
    np.testing.assert_array_equal(ref.from_layout(y, dst, n, h, w, c), expected)


@given(
    n=st.integers(0, 70), t=st.integers(1, 70), c=st.integers(1, 40),
    src_dtype=st.sampled_from(DTYPES), dst_dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31),
    to_time_major=st.booleans(),
)
def test_property_random_sequences(n, t, c, src_dtype, dst_dtype, seed, to_time_major):
    """sequence <-> time-major for random sizes (row tiles of 16 to 128 rows, rows of 1 to
    160 bytes, ragged tile edges) and every dtype pair."""
    rng = np.random.default_rng(seed)
    seq = _random((n, t, c), src_dtype, rng)
    values = ref.unorm8_to_float(seq) if src_dtype == np.uint8 else seq.astype(np.float32)
    expected = ref.float_to_unorm8(values) if dst_dtype == np.uint8 else values.astype(dst_dtype)
    if src_dtype == dst_dtype:
        expected = seq  # a bit copy
    if to_time_major:
        y = cv.convert(seq, "sequence", "time_major", dtype=dst_dtype).numpy()
        np.testing.assert_array_equal(y, np.transpose(expected, (1, 0, 2)))
    else:
        tm = np.ascontiguousarray(np.transpose(seq, (1, 0, 2)))
        y = cv.convert(tm, "time_major", "sequence", dtype=dst_dtype).numpy()
        np.testing.assert_array_equal(y, expected)


# ------------------------------------------------------------------ tf.data helpers
def test_map_images_in_a_pipeline():
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(10)
    mean, std = np.array([0.5, 0.4, 0.3], np.float32), np.array([0.2, 0.25, 0.3], np.float32)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    ds = tf_mps.data.map_images(ds, dtype=tf.float16, scale=1 / std, bias=-mean / std)
    batches = list(ds)
    assert [b[0].shape for b in batches] == [(4, 1, 4, 4, 4), (4, 1, 4, 4, 4), (2, 1, 4, 4, 4)]
    first = cv.from_image(batches[0][0], 3, dtype=tf.float32).numpy()
    expected = ((ref.unorm8_to_float(images[:4]) * (1 / std) + (-mean / std))).astype(np.float16)
    np.testing.assert_array_equal(first, expected.astype(np.float32))
    np.testing.assert_array_equal(batches[0][1].numpy(), labels[:4])


def test_map_sequences_with_dict_elements():
    x = np.random.default_rng(7).standard_normal((6, 5, 3)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices({"signal": x, "y": np.arange(6)}).batch(3)
    out = list(tf_mps.data.map_sequences(ds, key="signal"))
    np.testing.assert_array_equal(out[0]["signal"].numpy(), np.transpose(x[:3], (1, 0, 2)))
    with pytest.raises(ValueError, match="pass key="):
        tf_mps.data.map_sequences(ds)


# ------------------------------------------------------------------ both CPU builds
@pytest.mark.skipif(tf_mps.build_info()["convert_isa"] == "base", reason="only the portable build exists here")
def test_portable_build_passes_the_same_tests():
    """On x86-64 the kernels also exist as an AVX2/F16C build, picked once per process;
    this runs the converter tests again in a process forced onto the portable build."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TFMPS_CONVERT_ISA="base", TF_CPP_MIN_LOG_LEVEL="3")
    code = "import tf_mps, sys; sys.exit(tf_mps.build_info()['convert_isa'] != 'base')"
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                        "-k", "not portable_build"], env=env, capture_output=True, text=True, timeout=600,
                       cwd=os.path.dirname(__file__))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_gradient_with_dynamic_height_and_width():
    """nhwc -> image needs only the channel count to differentiate: H and W may be dynamic."""
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(cv.to_image(x, scale=[1.0, 2.0, 3.0]))
        return tape.gradient(total, x)

    g = grad(tf.ones((2, 5, 7, 3))).numpy()
    np.testing.assert_array_equal(g, np.broadcast_to(np.array([1.0, 2.0, 3.0], np.float32), (2, 5, 7, 3)))


def test_output_too_large_is_an_error_not_a_wrap_around():
    x = tf.zeros((0, 2**31, 2**31, 4))  # empty batch: nothing allocated, but H*W*C overflows
    with pytest.raises(INVALID, match=r"would be too large|do not fit|overflow"):
        cv.convert(x, "nhwc", "matrix_hwc")


@pytest.mark.parametrize("src, dst", [("nhwc", "image"), ("image", "nhwc"), ("nhwc", "matrix_chw"),
                                      ("matrix_chw", "nhwc"), ("image", "matrix_chw"), ("nhwc", "matrix_hwc")])
@pytest.mark.parametrize("c", [3, 5, 130])
@pytest.mark.parametrize("dtypes", [(np.float32, np.float32), (np.uint8, np.float16)], ids=["f32", "u8-f16"])
def test_block_and_tile_boundaries(src, dst, c, dtypes):
    """Shapes that cross the kernels' 256-pixel blocks, 16 x 8 transpose tiles and
    slice boundaries, with ragged ends."""
    n, h, w = 3, 23, 23  # 529 pixels per item: two full blocks and a ragged one
    rng = np.random.default_rng(c)
    logical = _random((n, h, w, c), dtypes[0], rng)
    y = cv.convert(ref.to_layout(logical, src), src, dst, dtype=dtypes[1], **_geometry_kwargs(src, h, w, c)).numpy()
    values = ref.unorm8_to_float(logical) if dtypes[0] == np.uint8 else logical
    np.testing.assert_array_equal(ref.from_layout(y, dst, n, h, w, c), values.astype(dtypes[1]))


@pytest.mark.parametrize("n, t", [(37, 41), (1, 300), (300, 1), (131, 133)])
@pytest.mark.parametrize("c, dtype", [(7, np.float32), (64, np.float32), (1, np.uint8), (3, np.uint8),
                                      (5, np.float16), (13, np.float16)])
def test_sequence_tiles(n, t, c, dtype):
    """Row tiles of 16 to 128 rows (short rows get bigger tiles), rows of 1 to 256 bytes."""
    x = _random((n, t, c), dtype, np.random.default_rng(n))
    tm = cv.sequence_to_time_major(x).numpy()
    np.testing.assert_array_equal(tm, np.transpose(x, (1, 0, 2)))
    np.testing.assert_array_equal(cv.time_major_to_sequence(tm).numpy(), x)


def test_kernel_rejects_more_than_one_scale_vector():
    lib = tf_mps._lib.load()
    x = tf.zeros((1, 2, 2, 3))
    with pytest.raises((INVALID, ValueError), match=r"scale and bias are optional single vectors"):
        lib.mps_convert(input=x, scale=[tf.ones(3), tf.ones(3)], bias=[], Tout=tf.float32, src_layout="nhwc",
                        dst_layout="image")


@pytest.mark.parametrize("src, dst, shape", [("nhwc", "image", (3, 128, 128, 256)),
                                             ("sequence", "time_major", (256, 256, 200)),
                                             ("nhwc", "matrix_hwc", (3, 128, 128, 256))])
def test_outputs_larger_than_the_cache(src, dst, shape):
    """Outputs of 48 MB and more take the non-temporal-store paths (AVX2 build)."""
    x = np.random.default_rng(8).standard_normal(shape).astype(np.float32)
    y = cv.convert(x, src, dst).numpy()
    del x
    x = np.random.default_rng(8).standard_normal(shape).astype(np.float32)
    if dst == "time_major":
        np.testing.assert_array_equal(y, np.transpose(x, (1, 0, 2)))
    elif dst == "image":
        np.testing.assert_array_equal(y, np.transpose(x.reshape(3, 128, 128, 64, 4), (0, 3, 1, 2, 4)))
    else:
        np.testing.assert_array_equal(y, x.reshape(3, -1))


def test_bytes_to_a_float_image_larger_than_the_cache():
    """uint8 pixels to a 52 MB float image: the 4-pixel byte path with streaming stores."""
    x = np.random.default_rng(10).integers(0, 256, (200, 128, 128, 3), dtype=np.uint8)
    y = cv.to_image(x, dtype=tf.float32, scale=[2.0, 1.0, 0.5], bias=[0.0, -1.0, 0.25]).numpy()
    assert y.nbytes >= 48 << 20
    expected = ref.unorm8_to_float(x) * np.array([2.0, 1.0, 0.5], np.float32) + np.array([0.0, -1.0, 0.25], np.float32)
    np.testing.assert_array_equal(y, ref.to_layout(expected, "image"))


# ------------------------------------------------------------------ review: paths and sizes
@pytest.mark.parametrize("c", [1, 3, 4, 7, 9])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_time_major_and_image(c, dtype):
    """Time-major pixels are whole rows of every sequence apart: the image kernels must
    not treat a tile of them as one range."""
    t, n = 40, 4
    seq = _random((n, t, c), dtype, np.random.default_rng(c))
    tm = np.ascontiguousarray(np.transpose(seq, (1, 0, 2)))
    img = cv.convert(tm, "time_major", "image").numpy()
    np.testing.assert_array_equal(img, ref.to_layout(seq.reshape(n, t, 1, c), "image"))
    back = cv.convert(img, "image", "time_major", channels=c).numpy()
    np.testing.assert_array_equal(back, tm)


@pytest.mark.parametrize("shape", [(2, 128, 128, 128), (8, 128, 128, 24)])
@pytest.mark.parametrize("affine", [None, "forward", "inverse"])
def test_streaming_chw_transposes(shape, affine):
    """24 MB and more in + out: the 8 x 8 transposes write whole lines with streaming
    stores (AVX2 build), both directions, with and without the affine."""
    n, h, w, c = shape
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, c).astype(np.float32) if affine else None
    bias = rng.uniform(-1, 1, c).astype(np.float32) if affine else None
    kw = dict(scale=scale, bias=bias, affine=affine or "forward")
    m = cv.convert(x, "nhwc", "matrix_chw", **kw).numpy()
    y = x if affine is None else (x * scale + bias if affine == "forward" else (x - bias) / scale)
    np.testing.assert_array_equal(m, np.transpose(y, (0, 3, 1, 2)).reshape(n, -1))
    back = cv.convert(m, "matrix_chw", "nhwc", height=h, width=w, channels=c, **kw).numpy()
    m_logical = np.transpose(m.reshape(n, c, h, w), (0, 2, 3, 1))
    expected = m_logical if affine is None else (
        m_logical * scale + bias if affine == "forward" else (m_logical - bias) / scale)
    np.testing.assert_array_equal(back, expected)


@pytest.mark.parametrize("shape", [(3, 128, 128, 130), (200, 128, 128, 2), (200, 128, 128, 4)])
def test_streaming_image_outputs(shape):
    """Streaming stores into an image: a partial last slice (scattered slices), and float
    pixels of C <= 4 (outputs of 48 MB and more)."""
    x = np.random.default_rng(12).standard_normal(shape).astype(np.float32)
    img = cv.to_image(x).numpy()
    np.testing.assert_array_equal(img, ref.to_layout(x, "image"))
    np.testing.assert_array_equal(cv.from_image(img, shape[-1]).numpy(), x)


@pytest.mark.parametrize("src_dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("affine", [None, "inverse"])
def test_streaming_image_to_many_channels(src_dtype, affine):
    """Image -> float NHWC with C a multiple of 4 above 4, 24 MB and more in + out: blocks
    of 4 slices x 4 pixels with streaming stores (AVX2 build), ragged pixel count."""
    n, h, w, c = 4, 127, 129, 68
    rng = np.random.default_rng(14)
    x = rng.standard_normal((n, h, w, c)).astype(src_dtype)
    img = ref.to_layout(x, "image")
    scale = rng.uniform(0.5, 2.0, c).astype(np.float32) if affine else None
    bias = rng.uniform(-1, 1, c).astype(np.float32) if affine else None
    y = cv.convert(img, "image", "nhwc", channels=c, dtype=tf.float32, scale=scale, bias=bias,
                   affine=affine or "forward").numpy()
    xf = x.astype(np.float32)
    np.testing.assert_array_equal(y, xf if affine is None else (xf - bias) / scale)


@pytest.mark.parametrize("dtype, c", [(np.uint8, 1), (np.uint8, 7), (np.uint8, 8), (np.uint8, 33),
                                      (np.float16, 3), (np.float16, 7), (np.float16, 6), (np.float16, 31),
                                      (np.float32, 6), (np.float32, 3), (np.float32, 9), (np.float32, 15),
                                      (np.float32, 4), (np.float32, 8), (np.float32, 12)])
@pytest.mark.parametrize("n", [1024, 1021])
def test_streaming_size_sequences_of_short_rows(dtype, c, n):
    """24 MB and more in + out with rows shorter than a line (1 to 63 bytes): bit copies
    (float16 NaN payloads kept); both directions gathered 16-64 rows at a time and
    streamed as whole lines, the parts of lines at each run's ends in 4- or 8-byte
    streaming stores or plain ones (AVX2 build). n = 1021 leaves every run unaligned and
    a last tile of fewer rows; t is never a multiple of the 64 time steps of a tile."""
    rng = np.random.default_rng(13 + c)
    size = np.dtype(dtype).itemsize
    t = (12_600_000 // (n * c * size) + 1) | 1
    view = {np.float16: np.uint16, np.float32: np.uint32, np.uint8: np.uint8}[dtype]
    x = rng.integers(0, np.iinfo(view).max, (n, t, c), dtype=view, endpoint=True).view(dtype)
    assert 2 * x.nbytes >= 24 << 20
    tm = cv.sequence_to_time_major(x).numpy()
    np.testing.assert_array_equal(tm.view(view), np.transpose(x, (1, 0, 2)).view(view))
    np.testing.assert_array_equal(cv.time_major_to_sequence(tm).numpy().view(view), x.view(view))


@pytest.mark.parametrize("c", [1, 2, 3, 4])
def test_uint8_pixel_groups_and_tails(c):
    """uint8 -> image in groups of 4 pixels, 16-byte loads while the block has them,
    exact-size loads near its end, single pixels after: every pixel count up to 40."""
    rng = np.random.default_rng(c)
    for pixels in range(1, 41):
        x = rng.integers(0, 256, (2, 1, pixels, c), dtype=np.uint8)
        y = cv.to_image(x, dtype=tf.float32, scale=np.full(c, 2.0, np.float32)).numpy()
        np.testing.assert_array_equal(y, ref.to_layout(ref.unorm8_to_float(x) * np.float32(2.0), "image"))


@pytest.mark.parametrize("threads", [1, 3])
def test_other_thread_pool_sizes(threads):
    """The work-sharing ParallelFor with an intra-op pool of 1 (everything inline) and of
    more threads than cores."""
    import os
    import subprocess
    import sys

    code = f"""
import numpy as np, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads({threads})
from tf_mps import convert as cv
from tf_mps.ops import apply_adam
x = np.random.default_rng(0).standard_normal((16, 64, 64, 24)).astype(np.float32)
assert np.array_equal(cv.nhwc_to_matrix(x, "CHW").numpy(), x.transpose(0, 3, 1, 2).reshape(16, -1))
assert np.array_equal(cv.from_image(cv.to_image(x), 24).numpy(), x)
v = tf.Variable(np.ones(300_000, np.float32)); m = tf.Variable(np.zeros(300_000, np.float32))
u = tf.Variable(np.zeros(300_000, np.float32))
apply_adam([v], [m], [u], [tf.ones(300_000)], 0.1, 1)
assert np.allclose(v.numpy(), 0.9, atol=1e-5), v.numpy()[:4]
"""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


# ------------------------------------------------------------------ issue 8: validation holes
@pytest.mark.parametrize("attr", ["height", "width", "channels"])
@pytest.mark.parametrize("value", [-2, -5, -(2**31), -(2**63)])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_kernel_rejects_negative_geometry_other_than_unset(attr, value, graph):
    """-1 means "take it from the input"; any other negative value is a mistake, named."""
    lib = tf_mps._lib.load()

    def call():
        return lib.mps_convert(input=tf.zeros((1, 2, 2, 3)), scale=[], bias=[], Tout=tf.float32, src_layout="nhwc",
                               dst_layout="image", **{attr: value})

    with pytest.raises((INVALID, ValueError), match=rf"MpsConvert: attribute {attr} must be -1 \(unset\) or a size "
                                                    rf">= 0, got {value}"):
        tf.function(call)() if graph else call()
    assert lib.mps_convert(input=tf.zeros((1, 2, 2, 3)), scale=[], bias=[], Tout=tf.float32, src_layout="nhwc",
                           dst_layout="image", **{attr: -1}).shape == (1, 1, 2, 2, 4)


@pytest.mark.parametrize("value", [2**63, 2**64, 10**30, -1, -5, 1.5, 2.0, "3", True, np.bool_(True), [2], float("nan")])
@pytest.mark.parametrize("attr", ["height", "width", "channels"])
def test_python_geometry_arguments_are_sizes(attr, value):
    """One InvalidArgumentError naming the argument, never OverflowError/TypeError or a
    silent int() (1.5 -> 1, True -> 1, "3" -> 3)."""
    x = np.zeros((1, 2, 2, 3), np.float32)
    with pytest.raises(INVALID, match=rf"MpsConvert: {attr} must be None or an integer size in \[0, 2\*\*63 - 1\]"):
        cv.convert(x, "nhwc", "image", **{attr: value})


def test_python_geometry_accepts_numpy_integers_and_the_largest_size():
    x = np.zeros((1, 2, 2, 3), np.float32)
    assert cv.convert(x, "nhwc", "image", height=np.int64(2), channels=np.uint8(3)).shape == (1, 1, 2, 2, 4)
    with pytest.raises(INVALID, match=r"attribute height=9223372036854775807 does not match the input's 2"):
        cv.convert(x, "nhwc", "image", height=2**63 - 1)


@pytest.mark.parametrize("helper, args", [
    (cv.from_image, (np.zeros((1, 1, 2, 2, 4), np.float32), 2**63)),
    (cv.image_to_matrix, (np.zeros((1, 1, 2, 2, 4), np.float32), -3)),
    (cv.matrix_to_image, (np.zeros((1, 12), np.float32), 2, 2.5, 3)),
    (cv.matrix_to_nhwc, (np.zeros((1, 12), np.float32), "2", 2, 3)),
])
def test_helpers_name_the_geometry_argument(helper, args):
    with pytest.raises(INVALID, match=r"MpsConvert: (height|width|channels) must be None or an integer size"):
        helper(*args)


@pytest.mark.parametrize("kwargs, message", [
    (dict(scale="x"), r"scale must be a vector of float32 values \(one per channel\), got dtype string"),
    (dict(bias=[["a", "b", "c"]]), r"bias must be a vector of float32 values"),
    (dict(scale=[True, False, True]), r"scale must be a vector of float32 values \(one per channel\), got dtype bool"),
    (dict(scale=object()), r"scale must be a vector of float32 values"),
    (dict(dtype="x"), r"dtype must be uint8, float16 or float32, got 'x'"),
    (dict(dtype=tf.bfloat16), r"dtype must be uint8, float16 or float32, got bfloat16"),
    (dict(affine=None), r"affine must be 'forward' or 'inverse', got None"),
])
def test_python_arguments_of_the_wrong_type_are_named(kwargs, message):
    with pytest.raises(INVALID, match=message):
        cv.convert(np.zeros((1, 2, 2, 3), np.float32), "nhwc", "image", **kwargs)


def test_input_that_is_no_tensor_is_named():
    with pytest.raises(INVALID, match=r"MpsConvert: input must be a uint8, float16 or float32 tensor, got object"):
        cv.to_image(object())


def test_shape_function_names_input_rank_and_vector_lengths():
    """In a graph (and a tf.data pipeline) mistakes show when it is built, with the
    kernel's messages; scale/bias lengths are known as soon as the channel count is."""
    @tf.function(input_signature=[tf.TensorSpec([None, 4, 4, 3], tf.float32)])
    def f(x):
        return cv.to_image(x, scale=[1.0, 2.0])

    with pytest.raises((INVALID, ValueError), match=r"scale must be a vector of 3 values \(one per channel\), got "
                                                    r"shape \[2\]"):
        f.get_concrete_function()

    @tf.function(input_signature=[tf.TensorSpec([None, 4, 3], tf.float32)])
    def g(x):
        return cv.convert(x, "nhwc", "image")

    with pytest.raises((INVALID, ValueError), match=r"input in layout 'nhwc' must have rank 4, got shape \[\?,4,3\]"):
        g.get_concrete_function()


def test_map_images_checks_layout_and_vectors_when_built():
    ds = tf.data.Dataset.from_tensor_slices(np.zeros((0, 2, 2, 3), np.uint8)).batch(4)  # never yields a batch
    with pytest.raises(ValueError, match=r"tf_mps.data.map_images: layout must be one of \('image', 'matrix_hwc', "
                                         r"'matrix_chw', 'nhwc'\), got 'sequence'"):
        tf_mps.data.map_images(ds, layout="sequence")
    with pytest.raises((INVALID, ValueError), match=r"bias must be a vector of 3 values"):
        tf_mps.data.map_images(ds, bias=[0.0, 1.0])
    with pytest.raises(ValueError, match=r"pass key= one of \['label', 'x'\], got key='image'"):
        tf_mps.data.map_images(tf.data.Dataset.from_tensor_slices({"x": np.zeros((2, 2, 2, 3), np.uint8),
                                                                    "label": np.arange(2)}), key="image")


# ------------------------------------------------------------------ issue 8: shapes across blocks and chunks
# The work units of ConvertCpu (convert_kernels.inc): 256-pixel blocks when one side is an
# image or CHW matrix (tiles of 32 pixels inside), max(16, 16384 / C)-pixel blocks when both
# are channel-packed; CpuParallelFor (ops/common/tf_glue.cc) shares units out in up to 8
# chunks per thread once the work reaches 100000 cycles, the last chunk ragged. These shapes
# cross all of them with ragged ends.
@settings(max_examples=30, deadline=None)
@given(
    n=st.sampled_from([1, 2, 3, 5, 9, 17]), pixels=st.integers(200, 40_000), c=st.sampled_from([1, 2, 3, 4, 5, 7, 8,
                                                                                                 11, 13, 64, 130]),
    src=st.sampled_from(IMAGE_LAYOUTS), dst=st.sampled_from(IMAGE_LAYOUTS),
    dtypes=st.sampled_from([(np.float32, np.float32), (np.uint8, np.float16), (np.float16, np.uint8),
                            (np.uint8, np.uint8), (np.float16, np.float32)]),
    affine=st.booleans(), seed=st.integers(0, 2**31),
)
def test_property_shapes_across_blocks_tiles_and_chunks(n, pixels, c, src, dst, dtypes, affine, seed):
    while n * pixels * c > 1_500_000 and pixels > 300:
        pixels //= 2
    h = next(d for d in (7, 5, 3, 2, 1) if pixels % d == 0)  # ragged in both directions where it can be
    w = pixels // h
    rng = np.random.default_rng(seed)
    logical = _random((n, h, w, c), dtypes[0], rng)
    scale = rng.uniform(0.5, 2.0, c).astype(np.float32) if affine else None
    bias = rng.uniform(-1, 1, c).astype(np.float32) if affine else None
    y = cv.convert(ref.to_layout(logical, src), src, dst, dtype=dtypes[1], scale=scale, bias=bias,
                   **_geometry_kwargs(src, h, w, c)).numpy()
    values = ref.unorm8_to_float(logical) if dtypes[0] == np.uint8 else logical.astype(np.float32)
    if affine:
        values = values * scale + bias
    expected = ref.float_to_unorm8(values) if dtypes[1] == np.uint8 else values.astype(dtypes[1])
    np.testing.assert_array_equal(y, ref.to_layout(expected, dst))  # padding channels included


@settings(max_examples=20, deadline=None)
@given(n=st.integers(100, 300), t=st.integers(100, 300), c=st.integers(1, 40), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**31))
def test_property_sequences_across_row_tiles_and_chunks(n, t, c, dtype, seed):
    """Row tiles of 16-128 rows a side, dozens of them: shared out in chunks with a ragged
    last one, tiles cut at both edges."""
    x = _random((n, t, c), dtype, np.random.default_rng(seed))
    tm = cv.sequence_to_time_major(x).numpy()
    np.testing.assert_array_equal(tm, np.transpose(x, (1, 0, 2)))
    np.testing.assert_array_equal(cv.time_major_to_sequence(tm).numpy(), x)
