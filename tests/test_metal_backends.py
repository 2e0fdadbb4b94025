"""The Metal backends (ops/optim/optim_metal.mm, ops/convert/convert_metal.mm,
ops/common/metal_context.mm) executed on the Linux Metal emulation, against the CPU
backend on the same inputs.

What this can tell and what it cannot (docs/metal-emulation.md): the emulation's MPS
fakes compute what Apple documents (the optimizers with the CPU backend's MPS-semantics
rules, the copies with the documented index maps), so these tests check what tf-mps's
Objective-C++ does with MPS: argument mapping (time step, learning rate, epsilon as
float, descriptor options), buffer offsets and lengths, layouts, data types, command
buffer waits, nil handling and object lifetimes. They cannot tell how Apple's GPU
kernels round: on a Mac, MPS results may differ from these in the last bits.

Where the formulas are the same, results must be bit-identical to the CPU backend's:
the fake runs the same C++ as the CPU kernel, so any difference is a mapping bug.
"""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

import metal_emu
import tf_mps

emu = metal_emu.load()

GRADIENT_OPTIONS = {
    "identity": {},
    "rescale": dict(gradient_rescale=0.5),
    "clip": dict(gradient_clip=(-0.3, 0.4)),
    "l1": dict(regularization="l1", regularization_scale=0.01),
    "l2": dict(regularization="l2", regularization_scale=0.02),
    "all": dict(gradient_rescale=2.0, gradient_clip=(-1.0, 1.0), regularization="l2", regularization_scale=0.01),
}
# Sizes that cross the CPU kernel's chunks (tf_glue.cc) with ragged ends, and tiny ones.
SIZES = [(1,), (7,), (3, 5), (40_003,), (70_001,)]


# Made once and kept on purpose: the metal context (device, queue) and the optimizer
# cache (at most 64 MPS optimizers, optim_metal.mm). Everything else a call makes must be
# gone when it returns.
PER_CALL_CLASSES = ["TFMPSEmuBuffer", "TFMPSEmuCommandBuffer", "TFMPSEmuBlitEncoder", "TFMPSEmuComputeEncoder",
                    "TFMPSEmuFunction", "TFMPSHeapString", "MPSVector", "MPSVectorDescriptor",
                    "MPSMatrix", "MPSMatrixDescriptor", "MPSImage", "MPSImageDescriptor",
                    "MPSImageCopyToMatrix", "MPSMatrixCopyToImage", "MPSNNOptimizerDescriptor",
                    "NSError"]


@pytest.fixture(autouse=True)
def no_leaks():
    assert emu.available(), "the metal context found no device on the emulation"
    import tf_mps.device

    # With the tf-mps device in the process (pytest --tfmps-device), its own buffers and
    # command buffers come and go (TF's allocator grows, streams keep their last command
    # buffer): live counts are per class, not per owner, so they are checked in the plain
    # run only.
    count = tf_mps.device.loaded() is None
    before = {c: emu.live_instances(c) for c in PER_CALL_CLASSES}
    yield
    emu.reset_hooks()
    if not count:
        return
    # The emulation's queue threads let go of a completed command buffer (and what it holds,
    # a failed one's NSError) shortly after the waiting thread woke, as Metal may: give
    # them up to a second before calling it a leak.
    import time

    for _ in range(100):
        after = {c: emu.live_instances(c) for c in PER_CALL_CLASSES}
        if after == before:
            break
        time.sleep(0.01)
    assert after == before, f"Objective-C objects leaked: {after} after, {before} before"


def _emu_opts(opts):
    return dict(
        rescale=opts.get("gradient_rescale", 1.0),
        clip=opts.get("gradient_clip"),
        regularization=opts.get("regularization"),
        regularization_scale=opts.get("regularization_scale", 0.0),
    )


def _arrays(rng, shapes, n=1):
    return [rng.standard_normal(s).astype(np.float32) for s in shapes for _ in range(n)]


def _check_ok(result):
    code, message = result
    assert code == 0, f"Metal backend returned code {code}: {message}"


def _assert_same(metal, cpu, what):
    for i, (a, b) in enumerate(zip(metal, cpu)):
        np.testing.assert_array_equal(a, b, err_msg=f"{what}[{i}]: Metal backend != CPU backend")


# ------------------------------------------------------------------------ optimizers
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("opts", GRADIENT_OPTIONS.values(), ids=GRADIENT_OPTIONS.keys())
def test_adam_mps_semantics_equals_cpu_backend(amsgrad, opts):
    rng = np.random.default_rng(0)
    w = _arrays(rng, SIZES)
    mw, mm, mv = [x.copy() for x in w], [np.zeros_like(x) for x in w], [np.zeros_like(x) for x in w]
    mh = [np.zeros_like(x) for x in w] if amsgrad else []
    cw, cm, cv = [tf.Variable(x) for x in w], [tf.Variable(np.zeros_like(x)) for x in w], [tf.Variable(np.zeros_like(x)) for x in w]
    ch = [tf.Variable(np.zeros_like(x)) for x in w] if amsgrad else None
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-7
    for step in range(1, 4):
        g = _arrays(rng, SIZES)
        params = dict(lr=lr, beta1=b1, beta2=b2, epsilon=eps, step=step, semantics="mps", **_emu_opts(opts))
        _check_ok(emu.adam(params, mw, mm, mv, mh, g))
        tf_mps.ops.apply_adam(cw, cm, cv, [tf.constant(x) for x in g], lr, step, b1, b2, eps, ch, semantics="mps", **opts)
    _assert_same(mw, [v.numpy() for v in cw], "var")
    _assert_same(mm, [v.numpy() for v in cm], "m")
    _assert_same(mv, [v.numpy() for v in cv], "v")
    if amsgrad:
        _assert_same(mh, [v.numpy() for v in ch], "vhat")


@pytest.mark.parametrize("kind", ["plain", "momentum", "nesterov"])
@pytest.mark.parametrize("opts", GRADIENT_OPTIONS.values(), ids=GRADIENT_OPTIONS.keys())
def test_sgd_mps_semantics_equals_cpu_backend(kind, opts):
    rng = np.random.default_rng(1)
    w = _arrays(rng, SIZES)
    mu = 0.0 if kind == "plain" else 0.9
    mw = [x.copy() for x in w]
    mm = [np.zeros_like(x) for x in w] if kind != "plain" else []
    cw = [tf.Variable(x) for x in w]
    cm = [tf.Variable(np.zeros_like(x)) for x in w] if kind != "plain" else None
    for _ in range(3):
        g = _arrays(rng, SIZES)
        params = dict(lr=0.1, momentum=mu, nesterov=kind == "nesterov", semantics="mps", **_emu_opts(opts))
        _check_ok(emu.sgd(params, mw, mm, g))
        tf_mps.ops.apply_sgd(cw, [tf.constant(x) for x in g], 0.1, momentum=mu, momentums=cm,
                             nesterov=kind == "nesterov", semantics="mps", **opts)
    _assert_same(mw, [v.numpy() for v in cw], "var")
    if kind != "plain":
        _assert_same(mm, [v.numpy() for v in cm], "momentum")


@pytest.mark.parametrize("opts", GRADIENT_OPTIONS.values(), ids=GRADIENT_OPTIONS.keys())
def test_rmsprop_mps_semantics_equals_cpu_backend(opts):
    rng = np.random.default_rng(2)
    w = _arrays(rng, SIZES)
    mw, ms = [x.copy() for x in w], [np.zeros_like(x) for x in w]
    cw, cs = [tf.Variable(x) for x in w], [tf.Variable(np.zeros_like(x)) for x in w]
    for _ in range(3):
        g = _arrays(rng, SIZES)
        params = dict(lr=0.01, rho=0.9, momentum=0.0, epsilon=1e-7, semantics="mps", **_emu_opts(opts))
        _check_ok(emu.rmsprop(params, mw, ms, [], [], g))
        tf_mps.ops.apply_rmsprop(cw, cs, [tf.constant(x) for x in g], 0.01, 0.9, 0.0, 1e-7, semantics="mps", **opts)
    _assert_same(mw, [v.numpy() for v in cw], "var")
    _assert_same(ms, [v.numpy() for v in cs], "ms")


def test_plain_sgd_keras_semantics_runs_on_metal_and_equals_cpu_backend():
    # The one Keras-semantics rule MPS expresses exactly (optim_metal.mm's header).
    rng = np.random.default_rng(3)
    w = _arrays(rng, SIZES)
    g = _arrays(rng, SIZES)
    mw = [x.copy() for x in w]
    cw = [tf.Variable(x) for x in w]
    _check_ok(emu.sgd(dict(lr=0.1, momentum=0.0, nesterov=False, semantics="keras"), mw, [], g))
    tf_mps.ops.apply_sgd(cw, [tf.constant(x) for x in g], 0.1)
    _assert_same(mw, [v.numpy() for v in cw], "var")


@given(
    sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=5),
    step=st.integers(1, 10_000),
    lr=st.floats(1e-5, 1.0),
    b1=st.floats(0.0, 0.999),
    b2=st.floats(0.0, 0.9999),
    seed=st.integers(0, 2**31 - 1),
)
def test_adam_random_lists_equal_cpu_backend(sizes, step, lr, b1, b2, seed):
    rng = np.random.default_rng(seed)
    w = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    m = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    v = [np.abs(rng.standard_normal(n)).astype(np.float32) for n in sizes]
    g = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    mw, mm, mv = [x.copy() for x in w], [x.copy() for x in m], [x.copy() for x in v]
    cw, cm, cv = ([tf.Variable(x) for x in a] for a in (w, m, v))
    _check_ok(emu.adam(dict(lr=lr, beta1=b1, beta2=b2, epsilon=1e-7, step=step, semantics="mps"), mw, mm, mv, [], g))
    tf_mps.ops.apply_adam(cw, cm, cv, [tf.constant(x) for x in g], lr, step, b1, b2, 1e-7, semantics="mps")
    _assert_same(mw, [x.numpy() for x in cw], "var")
    _assert_same(mv, [x.numpy() for x in cv], "v")


def test_what_the_metal_backend_cannot_reach_is_unsupported_and_writes_nothing():
    # An array 4 bytes into its buffer: Metal wants buffer offsets aligned for float4.
    w = [np.ones(10, np.float32)]
    g = [np.full(10, 0.5, np.float32)]
    for semantics in ("mps", "keras"):
        code, message = emu.adam(dict(lr=0.1, beta1=0.9, beta2=0.999, epsilon=1e-7, step=1, semantics=semantics),
                                 w, [x * 0 for x in w], [x * 0 for x in w], [], g, offset=4)
        assert code == 1, message  # kUnsupported: the caller runs the CPU backend instead
        np.testing.assert_array_equal(w[0], np.ones(10, np.float32))


# ------------------------------------------- tf-mps's own kernels (optim_kernels.metal)
# Keras semantics, and RMSProp's centered/momentum variants, run on tf-mps's kernels,
# here executed as C++ per thread position (emulation/shaders/): the same operations in
# the same order as the CPU backend, so bit-identical.
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("opts", GRADIENT_OPTIONS.values(), ids=GRADIENT_OPTIONS.keys())
def test_adam_keras_semantics_kernel_equals_cpu_backend(amsgrad, opts):
    rng = np.random.default_rng(10)
    w = _arrays(rng, SIZES)
    mw, mm, mv = [x.copy() for x in w], [np.zeros_like(x) for x in w], [np.zeros_like(x) for x in w]
    mh = [np.zeros_like(x) for x in w] if amsgrad else []
    cw, cm, cv = ([tf.Variable(x) for x in a] for a in (w, mm, mv))
    ch = [tf.Variable(np.zeros_like(x)) for x in w] if amsgrad else None
    for step in range(1, 4):
        g = _arrays(rng, SIZES)
        params = dict(lr=0.01, beta1=0.9, beta2=0.999, epsilon=1e-7, step=step, semantics="keras", **_emu_opts(opts))
        _check_ok(emu.adam(params, mw, mm, mv, mh, g))
        tf_mps.ops.apply_adam(cw, cm, cv, [tf.constant(x) for x in g], 0.01, step, 0.9, 0.999, 1e-7, ch, **opts)
    _assert_same(mw, [v.numpy() for v in cw], "var")
    _assert_same(mm, [v.numpy() for v in cm], "m")
    _assert_same(mv, [v.numpy() for v in cv], "v")
    if amsgrad:
        _assert_same(mh, [v.numpy() for v in ch], "vhat")


def test_adam_kernel_reads_the_per_variable_squared_gradients():
    # grad_sq (Keras's sum of squared sparse slices) for some variables of a call: with
    # grad_sq = g*g the result must be the dense one exactly; a wrong binding would not be.
    rng = np.random.default_rng(11)
    w, g = _arrays(rng, SIZES), _arrays(rng, SIZES)
    sq = [x * x if i % 2 == 0 else np.zeros(0, np.float32) for i, x in enumerate(g)]
    a = [x.copy() for x in w]
    b = [x.copy() for x in w]
    params = dict(lr=0.01, beta1=0.9, beta2=0.999, epsilon=1e-7, step=3, semantics="keras")
    zeros = lambda: [np.zeros_like(x) for x in w]  # noqa: E731
    _check_ok(emu.adam(params, a, zeros(), zeros(), [], g))
    _check_ok(emu.adam(params, b, zeros(), zeros(), [], g, grad_sqs=sq))
    _assert_same(b, a, "var")
    sq_wrong = [2 * x if x.size else x for x in sq]
    c = [x.copy() for x in w]
    _check_ok(emu.adam(params, c, zeros(), zeros(), [], g, grad_sqs=sq_wrong))
    assert not np.array_equal(c[0], a[0])


@pytest.mark.parametrize("nesterov", [False, True], ids=["momentum", "nesterov"])
@pytest.mark.parametrize("opts", GRADIENT_OPTIONS.values(), ids=GRADIENT_OPTIONS.keys())
def test_sgd_keras_momentum_kernel_equals_cpu_backend(nesterov, opts):
    rng = np.random.default_rng(12)
    w = _arrays(rng, SIZES)
    mw, mm = [x.copy() for x in w], [np.zeros_like(x) for x in w]
    cw, cm = [tf.Variable(x) for x in w], [tf.Variable(np.zeros_like(x)) for x in w]
    for _ in range(3):
        g = _arrays(rng, SIZES)
        _check_ok(emu.sgd(dict(lr=0.1, momentum=0.9, nesterov=nesterov, semantics="keras", **_emu_opts(opts)), mw, mm, g))
        tf_mps.ops.apply_sgd(cw, [tf.constant(x) for x in g], 0.1, momentum=0.9, momentums=cm, nesterov=nesterov, **opts)
    _assert_same(mw, [v.numpy() for v in cw], "var")
    _assert_same(mm, [v.numpy() for v in cm], "momentum")


@pytest.mark.parametrize("semantics", ["keras", "mps"])
@pytest.mark.parametrize("centered", [False, True], ids=["plain", "centered"])
@pytest.mark.parametrize("momentum", [0.0, 0.5], ids=["no-momentum", "momentum"])
@pytest.mark.parametrize("opts", [{}, GRADIENT_OPTIONS["all"]], ids=["identity", "all"])
def test_rmsprop_kernel_equals_cpu_backend(semantics, centered, momentum, opts):
    if semantics == "mps" and not centered and momentum == 0.0:
        pytest.skip("MPSNNOptimizerRMSProp's own case: test_rmsprop_mps_semantics_equals_cpu_backend")
    rng = np.random.default_rng(13)
    w = _arrays(rng, SIZES)
    mw, ms = [x.copy() for x in w], [np.zeros_like(x) for x in w]
    mg = [np.zeros_like(x) for x in w] if centered else []
    mo = [np.zeros_like(x) for x in w] if momentum else []
    cw, cs = [tf.Variable(x) for x in w], [tf.Variable(np.zeros_like(x)) for x in w]
    cg = [tf.Variable(np.zeros_like(x)) for x in w] if centered else None
    co = [tf.Variable(np.zeros_like(x)) for x in w] if momentum else None
    for _ in range(3):
        g = _arrays(rng, SIZES)
        params = dict(lr=0.01, rho=0.9, momentum=momentum, epsilon=1e-7, semantics=semantics, **_emu_opts(opts))
        _check_ok(emu.rmsprop(params, mw, ms, mg, mo, g))
        tf_mps.ops.apply_rmsprop(cw, cs, [tf.constant(x) for x in g], 0.01, 0.9, momentum, 1e-7,
                                 average_gradients=cg, momentums=co, semantics=semantics, **opts)
    _assert_same(mw, [v.numpy() for v in cw], "var")
    _assert_same(ms, [v.numpy() for v in cs], "ms")
    if centered:
        _assert_same(mg, [v.numpy() for v in cg], "mg")
    if momentum:
        _assert_same(mo, [v.numpy() for v in co], "mom")


@pytest.mark.parametrize("semantics", ["keras", "mps"])
def test_l1_of_a_nan_weight_is_nan_on_both_paths(semantics):
    # sign(NaN) = NaN, as tf.sign (the CPU backend's rule). Whether MPS's own L1 agrees
    # is for a Mac run to settle: the fake follows the CPU backend.
    w = [np.array([np.nan, 1.0, -1.0, 0.0], np.float32)]
    g = [np.full(4, 0.5, np.float32)]
    mw, mm, mv = [w[0].copy()], [np.zeros(4, np.float32)], [np.zeros(4, np.float32)]
    opts = dict(regularization="l1", regularization_scale=0.1)
    params = dict(lr=0.1, beta1=0.9, beta2=0.999, epsilon=1e-7, step=1, semantics=semantics, **_emu_opts(opts))
    _check_ok(emu.adam(params, mw, mm, mv, [], g))
    cw, cm, cv = tf.Variable(w[0]), tf.Variable(np.zeros(4, np.float32)), tf.Variable(np.zeros(4, np.float32))
    tf_mps.ops.apply_adam(cw, cm, cv, tf.constant(g[0]), 0.1, 1, 0.9, 0.999, 1e-7, semantics=semantics, **opts)
    np.testing.assert_array_equal(mm[0], cm.numpy())
    assert np.isnan(mm[0][0])


def test_a_kernel_compile_failure_is_an_error_not_success():
    # The library is compiled once per process, so this runs in a child process.
    import subprocess
    import sys

    code = (
        f"import sys, numpy as np; sys.path.insert(0, {metal_emu.BUILD_DIR!r}); import _tfmps_metal_emu as e; "
        "e.fail_next_init('MTLLibrary', 1); w=[np.ones(4, np.float32)]; "
        "r = e.sgd(dict(lr=0.1, momentum=0.9, nesterov=False, semantics='keras'), w, [np.zeros(4, np.float32)], [np.ones(4, np.float32)]); "
        "print(r[0], r[1]); print(w[0][0]); "
        "r = e.sgd(dict(lr=0.1, momentum=0.9, nesterov=False, semantics='keras'), w, [np.zeros(4, np.float32)], [np.ones(4, np.float32)]); "
        "print(r[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, value, second = out.stdout.strip().splitlines()
    assert first.startswith("2 ") and "compiling optim_kernels.metal failed" in first, first
    assert value == "1.0"  # nothing written
    assert second == "0"   # nothing failed was cached: the next call compiles and runs


@pytest.mark.parametrize(
    "cls", ["MPSNNOptimizerAdam", "MPSNNOptimizerDescriptor", "MPSVector"],
)
def test_a_nil_from_an_mps_initializer_is_an_error_not_success(cls):
    w, g = [np.ones(10, np.float32)], [np.full(10, 0.5, np.float32)]
    # A configuration no other call uses, so that the optimizer is not in the cache.
    params = dict(lr=0.1, beta1=0.5, beta2=0.75, epsilon=1e-3 * (1 + len(cls)), step=1, semantics="mps")
    emu.fail_next_init(cls, 1)
    code, message = emu.adam(params, w, [np.zeros(10, np.float32)], [np.zeros(10, np.float32)], [], g)
    assert code == 2 and "nil" in message, (code, message)
    np.testing.assert_array_equal(w[0], np.ones(10, np.float32))
    # Nothing nil was cached: the next call builds the optimizer and updates.
    _check_ok(emu.adam(params, w, [np.zeros(10, np.float32)], [np.zeros(10, np.float32)], [], g))
    assert not np.array_equal(w[0], np.ones(10, np.float32))


def test_a_failed_command_buffer_is_reported_with_the_metal_error():
    w, g = [np.ones(10, np.float32)], [np.full(10, 0.5, np.float32)]
    emu.fail_next_command_buffers(1, "emulated GPU fault")
    code, message = emu.sgd(dict(lr=0.1, momentum=0.0, nesterov=False, semantics="mps"), w, [], g)
    assert code == 2 and "emulated GPU fault" in message, (code, message)


def test_nan_hyper_parameters_do_not_corrupt_the_optimizer_cache():
    # NaN betas once broke the cache's ordering (doubles compared with <): later valid
    # calls could get an optimizer with other parameters. Keys are bit patterns now.
    rng = np.random.default_rng(4)
    for b1 in [0.9, float("nan"), 0.8, float("nan"), 0.7, 0.9, 0.8]:
        w, g = [rng.standard_normal(50).astype(np.float32)], [rng.standard_normal(50).astype(np.float32)]
        mw, mm, mv = [w[0].copy()], [np.zeros(50, np.float32)], [np.zeros(50, np.float32)]
        _check_ok(emu.adam(dict(lr=0.1, beta1=b1, beta2=0.999, epsilon=1e-7, step=2, semantics="mps"), mw, mm, mv, [], g))
        cw, cm, cv = tf.Variable(w[0]), tf.Variable(np.zeros(50, np.float32)), tf.Variable(np.zeros(50, np.float32))
        tf_mps.ops.apply_adam(cw, cm, cv, tf.constant(g[0]), 0.1, 2, b1, 0.999, 1e-7, semantics="mps")
        np.testing.assert_array_equal(mw[0], cw.numpy(), err_msg=f"beta1={b1}")


# ------------------------------------------------------------------------ converters
DTYPES = [np.uint8, np.float16, np.float32]


def _random(rng, shape, dtype):
    if dtype == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(dtype)


def _nhwc_to(x, layout):
    n, h, w, c = x.shape
    if layout in ("nhwc", "matrix_hwc"):
        return x.reshape(n, h * w * c) if layout == "matrix_hwc" else x
    return x.transpose(0, 3, 1, 2).reshape(n, c * h * w)  # matrix_chw


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("c", [1, 3, 4, 5, 8, 13])
@pytest.mark.parametrize("memory", ["nhwc", "matrix_chw"])
def test_write_then_read_and_copy_to_matrix_follow_the_documented_layouts(dtype, c, memory):
    rng = np.random.default_rng(c)
    n, h, w = 3, 4, 5
    x = _random(rng, (n, h, w, c), dtype)
    img = emu.Image(n, h, w, c, np.dtype(dtype))
    _check_ok(emu.write_image(img, _nhwc_to(x, memory), memory))
    # readBytes in both layouts
    for layout in ("nhwc", "matrix_chw"):
        out = np.zeros_like(_nhwc_to(x, layout))
        _check_ok(emu.read_image(img, out, layout))
        np.testing.assert_array_equal(out, _nhwc_to(x, layout), err_msg=f"readBytes {layout}")
    # MPSImageCopyToMatrix on the GPU, both data layouts: one image per row, equal to the
    # CPU backend's image -> matrix conversion of the same data.
    cpu_image = tf_mps.convert.to_image(tf.constant(x))
    for layout in ("matrix_hwc", "matrix_chw"):
        out = np.zeros_like(_nhwc_to(x, layout))
        _check_ok(emu.image_to_matrix(img, out, layout))
        np.testing.assert_array_equal(out, _nhwc_to(x, layout), err_msg=f"MPSImageCopyToMatrix {layout}")
        cpu = tf_mps.convert.image_to_matrix(cpu_image, channels=c, data_layout="HWC" if layout == "matrix_hwc" else "CHW")
        np.testing.assert_array_equal(out, cpu.numpy(), err_msg=f"{layout}: Metal backend != CPU backend")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", ["matrix_hwc", "matrix_chw"])
def test_matrix_to_image_then_read_equals_the_cpu_index_map(dtype, layout):
    rng = np.random.default_rng(7)
    n, h, w, c = 2, 3, 6, 7
    x = _random(rng, (n, h, w, c), dtype)
    img = emu.Image(n, h, w, c, np.dtype(dtype))
    _check_ok(emu.matrix_to_image(img, _nhwc_to(x, layout), layout))
    out = np.zeros_like(x)
    _check_ok(emu.read_image(img, out, "nhwc"))
    np.testing.assert_array_equal(out, x)
    # ... and the same conversion by the CPU backend (tf_mps.convert), from the same memory.
    data_layout = "HWC" if layout == "matrix_hwc" else "CHW"
    cpu = tf_mps.convert.matrix_to_image(tf.constant(_nhwc_to(x, layout)), height=h, width=w, channels=c, data_layout=data_layout)
    np.testing.assert_array_equal(tf_mps.convert.from_image(cpu, channels=c).numpy(), out)


def test_sequences_and_time_major_of_one_sequence_are_one_image_row_each():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 9, 1, 6)).astype(np.float32)  # [N, T, 1, C]
    img = emu.Image(2, 9, 1, 6, np.dtype(np.float32))
    _check_ok(emu.write_image(img, x.reshape(2, 9, 6), "sequence"))
    out = np.zeros((2, 9 * 6), np.float32)
    _check_ok(emu.image_to_matrix(img, out, "matrix_hwc"))
    np.testing.assert_array_equal(out, x.reshape(2, 54))
    one = emu.Image(1, 9, 1, 6, np.dtype(np.float32))
    _check_ok(emu.write_image(one, x[:1].reshape(9, 1, 6), "time_major"))
    back = np.zeros((9, 1, 6), np.float32)
    _check_ok(emu.read_image(one, back, "time_major"))
    np.testing.assert_array_equal(back, x[:1].reshape(9, 1, 6))


@pytest.mark.parametrize(
    "case",
    ["dtype-mismatch", "scale", "time-major-n2", "misaligned"],
)
def test_what_mps_copies_cannot_do_is_unsupported(case):
    img = emu.Image(2, 2, 2, 3, np.dtype(np.float32))
    x = np.ones((2, 2, 2, 3), np.float32)
    if case == "dtype-mismatch":
        code, msg = emu.write_image(img, x.astype(np.float16), "nhwc")
    elif case == "scale":
        code, msg = emu.write_image(img, x, "nhwc", scale=[1.0, 2.0, 3.0])
    elif case == "time-major-n2":
        code, msg = emu.write_image(img, x.reshape(2, 2, 2, 3)[:, :, 0, :].copy(), "time_major")
    else:
        code, msg = emu.matrix_to_image(img, x.reshape(2, 12), "matrix_hwc", offset=8)
    assert code == 1, (code, msg)


def test_image_creation_failure_raises():
    emu.fail_next_init("MPSImage", 1)
    with pytest.raises(RuntimeError, match="nil"):
        emu.Image(1, 2, 2, 3, np.dtype(np.float32))


@pytest.mark.parametrize("cls", ["MPSImageCopyToMatrix", "MPSMatrix"])
def test_a_nil_copy_kernel_or_matrix_is_an_error(cls):
    img = emu.Image(1, 2, 2, 3, np.dtype(np.float32))
    out = np.zeros((1, 12), np.float32)
    emu.fail_next_init(cls, 1)
    code, message = emu.image_to_matrix(img, out, "matrix_hwc")
    assert code == 2 and "nil" in message, (code, message)


# ------------------------------------------------------------------------ metal context
@pytest.mark.parametrize("failures,expected", [(1, "True"), (2, "False")], ids=["fallback", "no-device"])
def test_the_context_falls_back_to_mtl_copy_all_devices(failures, expected):
    # MTLCreateSystemDefaultDevice gives nil on a Mac whose process links no CoreGraphics;
    # the context then takes the first of MTLCopyAllDevices that MPS supports, and reports
    # no device (every backend call: unsupported, the CPU runs) when there is none. The
    # context is made once per process, hence a child process.
    import subprocess
    import sys

    code = (
        f"import sys; sys.path.insert(0, {metal_emu.BUILD_DIR!r}); import _tfmps_metal_emu as e; "
        f"e.fail_next_init('MTLDevice', {failures}); print(e.available())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected
