"""Run in a child process by tests/test_device_kernels.py, with the tf-mps device on the
Metal emulation: every device kernel against TensorFlow's CPU kernel on random inputs
(mode "sweep"), the ordering stress cases (mode "stress"), or host writes after queued
kernels in a fresh process (mode "host_writes"). Prints one JSON object."""

import hashlib
import json
import sys
import threading

import numpy as np
import tensorflow as tf

import tf_mps.device

DEV = tf_mps.device.load()
rng = np.random.default_rng(int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].isdigit() else 0)


def f32(*shape, low=-3.0, high=3.0):
    return rng.uniform(low, high, shape).astype(np.float32)


def with_nan(a):
    a = a.copy()
    if a.size:
        a.flat[rng.integers(0, a.size)] = np.nan
    return a


# (name, fn, inputs, exact): exact ops round once per element as IEEE float does, so the
# device must give TensorFlow's CPU result bit for bit; the others (transcendental
# functions, sums in another order) within `tol` relative to the largest magnitude.
def cases():
    out = []
    for a, b in [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((5, 1), (1, 6)), ((), (7,)), ((0, 3), (3,)),
                 ((2, 1, 3, 1, 2, 2), (1, 4, 1, 5, 1, 1))]:
        x, y = f32(*a), f32(*b)
        for name, fn in [("add", tf.add), ("sub", tf.subtract), ("mul", tf.multiply), ("div", tf.divide),
                         ("maximum", tf.maximum), ("minimum", tf.minimum),
                         ("squared_difference", tf.math.squared_difference)]:
            out.append((f"{name}{a}{b}", fn, [x, y], True))
        out.append((f"div_no_nan{a}{b}", tf.math.divide_no_nan, [x, np.where(y > 0, y, 0).astype(np.float32)], True))
        out.append((f"pow{a}{b}", tf.pow, [np.abs(x), y], False))
    x = with_nan(f32(4, 5))
    for name, fn, inp in [("neg", tf.negative, x), ("square", tf.square, x), ("sqrt", tf.sqrt, np.abs(x)),
                          ("relu", tf.nn.relu, x), ("abs", tf.abs, x), ("sign", tf.sign, x)]:
        out.append((name, fn, [inp], True))
    # (TF's CPU Reciprocal is Eigen's rcp approximation refined, not 1/x rounded once.)
    for name, fn, inp in [("reciprocal", tf.math.reciprocal, x), ("rsqrt", tf.math.rsqrt, np.abs(x) + 0.1),
                          ("exp", tf.exp, x), ("log", tf.math.log, np.abs(x)), ("tanh", tf.tanh, x),
                          ("sigmoid", tf.sigmoid, x)]:
        out.append((name, fn, [inp], False))
    g, feat = f32(6, 7), f32(6, 7)
    out.append(("relu_grad", lambda g, f: tf.raw_ops.ReluGrad(gradients=g, features=f), [g, feat], True))
    for shape in [(8, 3), (2, 3, 4, 5)]:
        x, b = f32(*shape), f32(shape[-1])
        out.append((f"bias_add{shape}", tf.nn.bias_add, [x, b], True))
        out.append((f"bias_add_grad{shape}", lambda x: tf.raw_ops.BiasAddGrad(out_backprop=x), [x], False))
    x, b = f32(2, 3, 4, 5), f32(3)
    out.append(("bias_add_nchw", lambda x, b: tf.nn.bias_add(x, b, data_format="NCHW"), [x, b], True))
    out.append(("bias_add_grad_nchw", lambda x: tf.raw_ops.BiasAddGrad(out_backprop=x, data_format="NCHW"), [x], False))
    for m, k, n in [(1, 1, 1), (7, 5, 3), (64, 33, 17), (0, 4, 5), (3, 0, 2)]:
        a, b = f32(m, k), f32(k, n)
        out.append((f"matmul{m}x{k}x{n}", tf.matmul, [a, b], False))
        out.append((f"matmul_tt{m}x{k}x{n}", lambda a, b: tf.matmul(a, b, transpose_a=True, transpose_b=True),
                    [a.T.copy(), b.T.copy()], False))
    x = f32(3, 4, 5)
    for axes in [None, 0, 1, 2, (0, 2), (0, 1), (1, 2), -1]:
        for keep in (False, True):
            out.append((f"sum{axes}{keep}", lambda x, axes=axes, keep=keep: tf.reduce_sum(x, axes, keepdims=keep),
                        [x], False))
            out.append((f"mean{axes}{keep}", lambda x, axes=axes, keep=keep: tf.reduce_mean(x, axes, keepdims=keep),
                        [x], False))
    logits = f32(9, 6)
    out.append(("softmax", tf.nn.softmax, [logits], False))
    out.append(("log_softmax", tf.nn.log_softmax, [logits], False))
    for dt in (np.int32, np.int64):
        labels = rng.integers(0, 6, 9).astype(dt)
        out.append((f"sparse_xent_{dt.__name__}",
                    lambda l, y: tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features=l, labels=y), [logits, labels],
                    False))
    casts = {np.float32: f32(4, 6, low=-50, high=50), np.int32: rng.integers(-1000, 1000, (4, 6)).astype(np.int32),
             np.int64: rng.integers(-1000, 1000, (4, 6)), np.bool_: rng.integers(0, 2, (4, 6)).astype(bool)}
    for src, dst in [(np.int64, np.float32), (np.int32, np.float32), (np.bool_, np.float32), (np.float32, np.int64),
                     (np.float32, np.int32), (np.float32, np.bool_), (np.int64, np.int32), (np.int32, np.int64)]:
        out.append((f"cast_{src.__name__}_{dst.__name__}", lambda x, dst=dst: tf.cast(x, dst), [casts[src]], True))
    out.append(("fill", lambda: tf.fill([3, 4], 2.5), [], True))
    out.append(("zeros_like", tf.zeros_like, [f32(5, 2)], True))
    out.append(("ones_like", tf.ones_like, [f32(5, 2)], True))
    v0, d = f32(4, 3), f32(4, 3)
    for name, method in [("assign_add", "assign_add"), ("assign_sub", "assign_sub")]:
        def update(v0, d, method=method):
            v = tf.Variable(v0)
            getattr(v, method)(d)
            read = v.read_value()
            getattr(v, method)(d)  # again, while `read` shares the first value's buffer
            return read, v.read_value()
        out.append((name, update, [v0, d], True))
    # float16: each element-wise op in float, rounded to half once, as TensorFlow's CPU
    # kernels do with Eigen::half; sums, matmuls and softmax within half's rounding.
    h = lambda *shape: f32(*shape).astype(np.float16)  # noqa: E731
    xh, yh = h(3, 1, 4), h(5, 4)
    for name, fn in [("add", tf.add), ("sub", tf.subtract), ("mul", tf.multiply), ("div", tf.divide),
                     ("maximum", tf.maximum)]:
        out.append((f"{name}_f16", fn, [xh, yh], True))
    for name, fn in [("neg", tf.negative), ("square", tf.square), ("relu", tf.nn.relu), ("abs", tf.abs)]:
        out.append((f"{name}_f16", fn, [h(4, 5)], True))
    out.append(("sqrt_f16", tf.sqrt, [np.abs(h(4, 5))], True))
    out.append(("bias_add_f16", tf.nn.bias_add, [h(6, 3), h(3)], True))
    out.append(("relu_grad_f16", lambda g, f: tf.raw_ops.ReluGrad(gradients=g, features=f), [h(4, 5), h(4, 5)], True))
    out.append(("cast_f16_f32", lambda x: tf.cast(x, tf.float32), [h(4, 5)], True))
    out.append(("cast_f32_f16", lambda x: tf.cast(x, tf.float16), [f32(4, 5)], True))
    out.append(("fill_f16", lambda: tf.fill([3, 4], tf.constant(2.5, tf.float16)), [], True))
    out.append(("zeros_like_f16", tf.zeros_like, [h(2, 3)], True))
    out.append(("matmul_f16", tf.matmul, [h(7, 5), h(5, 3)], False))
    out.append(("sum_f16", lambda x: tf.reduce_sum(x, 0), [h(6, 4)], False))
    out.append(("mean_f16", lambda x: tf.reduce_mean(x, [0, 2]), [h(3, 4, 5)], False))
    out.append(("bias_add_grad_f16", lambda x: tf.raw_ops.BiasAddGrad(out_backprop=x), [h(8, 3)], False))
    out.append(("softmax_f16", tf.nn.softmax, [h(5, 6)], False))

    def assign_add_f16(v0, d):
        v = tf.Variable(v0)
        v.assign_add(d)
        return v.read_value()
    out.append(("assign_add_f16", assign_add_f16, [h(4, 3), h(4, 3)], True))
    # The fused optimizers with hyper-parameters computed on the device right before (the
    # kernels read them on the host: they must be HostMemory inputs, copied after the
    # kernel that computes them ran).
    import tf_mps

    for dt in (np.float32, np.float16):
        def fused(w0, g, dt=dt):
            v, m = tf.Variable(w0), tf.Variable(tf.zeros_like(w0))
            lr_var = tf.Variable(np.array(0.01, dt))
            for _ in range(3):
                tf_mps.ops.apply_sgd(v, g, lr_var * 1.5, momentum=tf.cast(lr_var, tf.float64) * 90.0, momentums=m)
            return v.read_value(), m.read_value()
        out.append((f"fused_sgd_device_hyper_{dt.__name__}", fused, [f32(5, 3).astype(dt), f32(5, 3).astype(dt)], True))
    table, upd = f32(6, 4), f32(5, 4)
    for dt in (np.int32, np.int64):
        idx = np.array([3, 0, 3, 5, 1], dt)  # a repeated index: updates apply in order
        out.append((f"gather_{dt.__name__}", lambda t, i: tf.Variable(t).sparse_read(i), [table, idx], True))
        for name, method in [("scatter_add", "scatter_add"), ("scatter_sub", "scatter_sub"),
                             ("scatter_update", "scatter_update")]:
            def scatter(t, i, u, method=method):
                v = tf.Variable(t)
                getattr(v, method)(tf.IndexedSlices(u, i))
                return v.read_value()
            out.append((f"{name}_{dt.__name__}", scatter, [table, idx, upd], True))
    return out


def run(fn, inputs, device):
    with tf.device(device):
        ts = [tf.identity(tf.constant(i)) for i in inputs]
        r = fn(*ts)
    rs = r if isinstance(r, (tuple, list)) else [r]
    return [t.numpy() for t in rs], [t.device for t in rs]


def sweep():
    results, digest = {}, hashlib.sha256()
    for name, fn, inputs, exact in cases():
        cpu, _ = run(fn, inputs, "/CPU:0")
        dev, where = run(fn, inputs, DEV)
        err, scale, same = 0.0, 0.0, True
        for c, d in zip(cpu, dev):
            digest.update(np.ascontiguousarray(d).tobytes())
            same = same and c.shape == d.shape and bool(np.array_equal(c, d, equal_nan=True))
            if c.size and c.shape == d.shape:
                fin = np.isfinite(c)
                same_nan = bool(np.array_equal(np.isnan(c), np.isnan(d)))
                diff = np.abs(c[fin].astype(np.float64) - d[fin]) if fin.any() else np.zeros(1)
                err = max(err, float(diff.max()) if diff.size else 0.0, 0.0 if same_nan else np.inf)
                scale = max(scale, float(np.abs(c[fin]).max()) if fin.any() else 0.0)
        results[name] = {"exact": exact, "half": any(np.asarray(c).dtype == np.float16 for c in cpu), "identical": same, "max_abs": err, "scale": scale,
                         "on_device": all(w.endswith(DEV.strip("/")) for w in where)}
    return {"results": results, "digest": digest.hexdigest()}


def stress():
    out = {}
    # Many small kernels with variable updates between them, each read right after it is
    # written, eagerly and in a tf.function.
    with tf.device(DEV):
        v = tf.Variable(tf.zeros([16]))
        ok = True
        for i in range(200):
            v.assign_add(tf.ones([16]))
            ok = ok and float(v.read_value()[0]) == 0.5 * i + 1
            v.assign_sub(tf.fill([16], 0.5))
            ok = ok and float(tf.reduce_sum(v)) == 16 * (i + 1) * 0.5
        out["eager_read_after_write"] = ok

        @tf.function
        def steps(v, n):
            for _ in tf.range(n):
                v.assign_add(tf.sqrt(tf.square(v) + 1.0) - tf.abs(v))
            return v.read_value()

        w = tf.Variable(tf.zeros([1000]))
        got = steps(w, 50).numpy()
        ref = np.zeros(1000, np.float32)
        for _ in range(50):
            ref = ref + (np.sqrt(np.square(ref) + np.float32(1)) - np.abs(ref))
        out["function_loop"] = bool(np.array_equal(got, ref))

    # 8 threads enqueueing on the device at once, each on its own variable.
    errors = []

    def worker(k):
        try:
            with tf.device(DEV):
                u = tf.Variable(tf.zeros([64]))
                for j in range(100):
                    u.assign_add(tf.fill([64], float(k)))
                    x = tf.matmul(tf.reshape(u, [8, 8]), tf.eye(8))
                if not np.all(tf.reshape(x, [-1]).numpy() == 100.0 * k):
                    errors.append(f"thread {k}: wrong result")
        except Exception as e:  # noqa: BLE001 - reported to the test
            errors.append(f"thread {k}: {e}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["threads"] = errors

    # 10,000 allocate/free cycles return device memory to its baseline.
    name = DEV.strip("/")
    with tf.device(DEV):
        tf.identity(tf.zeros([1])).numpy()
    base = tf.config.experimental.get_memory_info(name)["current"]
    with tf.device(DEV):
        for i in range(10000):
            t = tf.fill([1 + i % 1024], 1.0)
            del t
    out["memory"] = [base, tf.config.experimental.get_memory_info(name)["current"]]

    # A device kernel's output over the 4 GiB limit: ResourceExhausted, and the device
    # keeps working.
    try:
        with tf.device(DEV):
            tf.fill([5 << 28], 1.0).numpy()
        out["over_limit"] = "allocated"
    except tf.errors.OpError as e:
        out["over_limit"] = type(e).__name__
    with tf.device(DEV):
        out["after_over_limit"] = tf.fill([3], 2.0).numpy().tolist()

    # Bad input on the device's kernels: TensorFlow's error class, a message naming the op.
    errors = {}
    with tf.device(DEV):
        table = tf.Variable(tf.zeros([6, 2]))
        for name, fn in [("gather", lambda: table.sparse_read([2, 99])),
                         ("scatter", lambda: table.scatter_add(tf.IndexedSlices(tf.ones([1, 2]), [-1]))),
                         ("matmul", lambda: tf.matmul(tf.ones([2, 3]), tf.ones([4, 2]))),
                         ("add", lambda: tf.ones([2, 3]) + tf.ones([4]))]:
            try:
                fn()
                errors[name] = "no error"
            except tf.errors.OpError as e:
                errors[name] = f"{type(e).__name__}: {e.message}"
        out["unchanged_after_errors"] = table.numpy().tolist() == [[0.0, 0.0]] * 6
    out["errors"] = errors
    return out


def host_writes():
    """Each case first in a fresh process (argv[2] names it): the device's queued kernels,
    then a tf.function whose constant TF copies in on the host-to-device stream without
    ordering it after the compute stream, into memory just freed by a tensor the queued
    kernels still use."""
    case = sys.argv[2]
    if case == "function_constant":
        x = np.linspace(0, 1, 16, dtype=np.float32).reshape(16, 1)
        a = tf.constant(x) + 0.0  # on the device: the next ops are queued, not run
        y = a * 2.0 - 0.5  # the product is freed once the subtraction is queued

        @tf.function
        def const():
            return tf.zeros((16, 1))

        const()
        return {case: y.numpy().ravel().tolist() == (x * 2.0 - 0.5).ravel().tolist()}
    # The same through Keras: an optimizer built inside a tf.function (its zeros copied
    # in) after a model's initializers were queued (this overwrote a Dense kernel with
    # the initializer's minval).
    import keras

    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(1)])
    opt = keras.optimizers.RMSprop(0.01)

    @tf.function
    def build():
        opt.build(m.trainable_variables)
        return 1

    build()
    k = m.get_weights()[2]
    return {case: bool(np.unique(k).size == k.size)}


def graph():
    @tf.function
    def f(x):
        with tf.device(DEV):
            return tf.nn.relu(tf.matmul(x, x)) + 1.0

    return {"result": f(tf.ones([4, 4])).numpy().tolist()}


if __name__ == "__main__":
    mode = sys.argv[1]
    print(json.dumps({"sweep": sweep, "stress": stress, "graph": graph, "host_writes": host_writes}[mode]()))
