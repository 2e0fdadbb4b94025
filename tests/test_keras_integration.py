"""The fused optimizers inside Keras's machinery: compile/fit with defaults, saving and
loading, config round trips, mixed precision, XLA fallback, tf.function training loops,
and Embedding's sparse gradients through fit."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_mps
from tf_mps.keras import optimizers as mps_opt


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 8)).astype(np.float32)
    return x, (x @ rng.standard_normal((8, 1))).astype(np.float32)


PAIRS = [(mps_opt.Adam, keras.optimizers.Adam), (mps_opt.SGD, keras.optimizers.SGD),
         (mps_opt.RMSProp, keras.optimizers.RMSprop)]


@pytest.mark.parametrize("ours, theirs", PAIRS, ids=["adam", "sgd", "rmsprop"])
def test_fit_with_defaults_matches_keras(ours, theirs):
    x, y = _data()
    a, b = _model(), _model()
    a.compile(optimizer=ours(), loss="mse")
    b.compile(optimizer=theirs(), loss="mse")
    ha = a.fit(x, y, epochs=3, batch_size=32, verbose=0, shuffle=False)
    hb = b.fit(x, y, epochs=3, batch_size=32, verbose=0, shuffle=False)
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-6)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-7)


def test_auto_jit_compile_resolves_false_here():
    m = _model()
    m.compile(optimizer=mps_opt.Adam(), loss="mse")  # jit_compile="auto" by default
    assert m.jit_compile is False


def test_explicit_jit_compile_falls_back_to_keras_math():
    """XLA cannot compile custom ops: under jit_compile=True the optimizer runs Keras's own
    update (identical results) instead of failing."""
    x, y = _data()
    a, b = _model(), _model()
    a.compile(optimizer=mps_opt.Adam(), loss="mse", jit_compile=True)
    b.compile(optimizer=keras.optimizers.Adam(), loss="mse", jit_compile=True)
    ha = a.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    hb = b.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-5)


def test_jit_compile_with_mps_semantics_refuses_loudly():
    x, y = _data()
    m = _model()
    m.compile(optimizer=mps_opt.Adam(semantics="mps"), loss="mse", jit_compile=True)
    import tf_mps.device

    if tf_mps.device.loaded():
        # XLA cannot target the tf-mps device: Keras turns jit_compile off (as it does on a
        # Mac's GPU), so the step runs the fused op and trains.
        assert m.jit_compile is False
        m.fit(x, y, epochs=1, verbose=0)
        return
    with pytest.raises(ValueError, match=r"semantics='mps'.*cannot run inside an XLA-compiled function"):
        m.fit(x, y, epochs=1, verbose=0)


@pytest.mark.parametrize(
    "opt",
    [mps_opt.Adam(0.002, amsgrad=True, semantics="mps", gradient_clip=(-1, 1), weight_decay=0.01),
     mps_opt.SGD(0.1, momentum=0.8, nesterov=True, regularization="l2", regularization_scale=1e-4),
     mps_opt.RMSProp(centered=True, momentum=0.1, gradient_rescale=0.5, clipnorm=1.0)],
    ids=["adam", "sgd", "rmsprop"],
)
def test_config_round_trip(opt):
    """The config is Keras's own config of the same Keras arguments plus every tf-mps
    option with the value given (not the config compared with itself), survives JSON,
    and the clone trains exactly as the original."""
    import json

    keras_cls = {mps_opt.Adam: keras.optimizers.Adam, mps_opt.SGD: keras.optimizers.SGD,
                 mps_opt.RMSProp: keras.optimizers.RMSprop}[type(opt)]
    keras_args = {"Adam": dict(learning_rate=0.002, amsgrad=True, weight_decay=0.01),
                  "SGD": dict(learning_rate=0.1, momentum=0.8, nesterov=True),
                  "RMSProp": dict(centered=True, momentum=0.1, clipnorm=1.0)}[type(opt).__name__]
    expected_mps = {"Adam": dict(semantics="mps", gradient_rescale=1.0, gradient_clip=(-1.0, 1.0),
                                 regularization=None, regularization_scale=0.0),
                    "SGD": dict(semantics="keras", gradient_rescale=1.0, gradient_clip=None, regularization="l2",
                                regularization_scale=1e-4),
                    "RMSProp": dict(semantics="keras", gradient_rescale=0.5, gradient_clip=None,
                                    regularization=None, regularization_scale=0.0)}[type(opt).__name__]
    config = opt.get_config()
    assert {k: config[k] for k in expected_mps} == expected_mps
    keras_config = keras_cls(**keras_args, name=config["name"]).get_config()
    assert {k: v for k, v in config.items() if k not in expected_mps} == keras_config

    again = keras.optimizers.deserialize(json.loads(json.dumps(keras.optimizers.serialize(opt))))
    assert type(again) is type(opt)
    assert {k: getattr(again, k) for k in expected_mps} == expected_mps  # the clip pair is a tuple again
    clone = type(opt).from_config(config)
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal((3, 4)).astype(np.float32)
    trained = []
    for o in (type(opt).from_config(config), clone, again):
        v = keras.Variable(w0)
        for _ in range(3):
            o.apply([tf.constant(np.full((3, 4), 0.7, np.float32))], [v])
        trained.append(v.numpy())
    np.testing.assert_array_equal(trained[0], trained[1])
    np.testing.assert_array_equal(trained[0], trained[2])


def test_save_and_load_compiled_model_then_continue(tmp_path):
    x, y = _data()
    m = _model()
    m.compile(optimizer=mps_opt.Adam(0.01, semantics="mps"), loss="mse")
    m.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    m.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, mps_opt.Adam)
    assert loaded.optimizer.semantics == "mps"
    for a, b in zip(m.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    h1 = m.fit(x, y, epochs=1, verbose=0, shuffle=False)
    h2 = loaded.fit(x, y, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-6)


def test_mixed_float16_loss_scaling():
    """mixed_float16 (float32 variables, float16 compute, a LossScaleOptimizer around
    ours): the same losses and weights as Keras's Adam in the same setting."""
    x, y = _data()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        a, b = _model(), _model()
        a.compile(optimizer=mps_opt.Adam(0.01), loss="mse")
        b.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
        assert isinstance(a.optimizer, keras.optimizers.LossScaleOptimizer)
        ha = a.fit(x, y, epochs=3, batch_size=32, verbose=0, shuffle=False)
        hb = b.fit(x, y, epochs=3, batch_size=32, verbose=0, shuffle=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-6)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-7)
    # LossScaleOptimizer skips (and does not count) steps whose gradients overflow.
    assert int(a.optimizer.iterations) == int(b.optimizer.iterations)


def test_embedding_sparse_gradients_through_fit():
    keras.utils.set_random_seed(1)
    ids = np.random.default_rng(1).integers(0, 50, size=(256, 6))
    target = (ids.sum(axis=1, keepdims=True) % 7).astype(np.float32)

    def build():
        keras.utils.set_random_seed(1)
        return keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(50, 4),
                                 keras.layers.Flatten(), keras.layers.Dense(1)])

    a, b = build(), build()
    a.compile(optimizer=mps_opt.Adam(0.01), loss="mse")
    b.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    ha = a.fit(ids, target, epochs=2, batch_size=32, verbose=0, shuffle=False)
    hb = b.fit(ids, target, epochs=2, batch_size=32, verbose=0, shuffle=False)
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(a.layers[0].get_weights()[0], b.layers[0].get_weights()[0], rtol=1e-5, atol=1e-6)


def test_custom_training_loop_in_tf_function():
    """A tf.function training loop: the same losses and weights as Keras's RMSprop in the
    same loop (to rounding: Grappler rewrites Keras's lr*g/sqrt(d) as lr*g*rsqrt(d) in a
    graph, docs/optimizers.md)."""
    x, y = _data()
    results = []
    for opt in (mps_opt.RMSProp(0.01, momentum=0.5), keras.optimizers.RMSprop(0.01, momentum=0.5)):
        m = _model()
        loss_fn = keras.losses.MeanSquaredError()

        @tf.function
        def step(xb, yb):
            with tf.GradientTape() as tape:
                loss = loss_fn(yb, m(xb, training=True))
            grads = tape.gradient(loss, m.trainable_variables)
            opt.apply_gradients(zip(grads, m.trainable_variables))
            return loss

        losses = [float(step(x[i:i + 32], y[i:i + 32])) for i in range(0, 128, 32) for _ in range(5)]
        assert int(opt.iterations) == 20
        results.append((losses, m.get_weights()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for wa, wb in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)


def test_mirrored_strategy_trains():
    """Under MirroredStrategy (Keras updates variable by variable, each with the
    single-variable fused op): the same losses and weights as Keras's SGD there."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    x, y = _data()
    results = []
    for opt in (lambda: mps_opt.SGD(0.01, momentum=0.9), lambda: keras.optimizers.SGD(0.01, momentum=0.9)):
        with strategy.scope():
            m = _model()
            m.compile(optimizer=opt(), loss="mse")
        h = m.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
        results.append((h.history["loss"], m.get_weights()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
    for wa, wb in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-7)


def test_constructor_rejects_bad_options():
    with pytest.raises(ValueError, match="semantics must be one of"):
        mps_opt.Adam(semantics="cuda")
    with pytest.raises(ValueError, match="regularization must be None, 'l1' or 'l2'"):
        mps_opt.SGD(regularization="l0")
    with pytest.raises(ValueError, match="gradient_clip must be"):
        mps_opt.RMSProp(gradient_clip=(2, 1))


def test_public_names():
    assert tf_mps.keras.optimizers.RMSprop is tf_mps.keras.optimizers.RMSProp
    assert issubclass(mps_opt.Adam, keras.optimizers.Adam)
