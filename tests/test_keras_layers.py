"""tf_mps.keras.layers against Keras's own layers: the same outputs and gradients with the
same weights, Keras's arguments and defaults, weights that move both ways, serialization,
models saved with one family loading into the other, fit with default compile arguments,
custom training loops, SavedModel export, and Keras's math inside XLA."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_mps.ops
from tf_mps.keras import layers as L

# (tf-mps layer, Keras layer, constructor arguments, input shape, tf_mps.ops module and
# function the layer needs)
CASES = [
    ("conv_same_relu", L.Conv2D, keras.layers.Conv2D, dict(filters=8, kernel_size=3, padding="same", activation="relu"),
     (2, 9, 9, 3), ("conv", "conv2d")),
    ("conv_valid_stride_tanh", L.Conv2D, keras.layers.Conv2D,
     dict(filters=5, kernel_size=(3, 2), strides=2, activation="tanh"), (2, 10, 9, 4), ("conv", "conv2d")),
    ("conv_dilated_groups_nobias", L.Conv2D, keras.layers.Conv2D,
     dict(filters=6, kernel_size=3, dilation_rate=2, groups=2, use_bias=False, padding="same"), (1, 11, 11, 4),
     ("conv", "conv2d")),
    ("conv_transpose", L.Conv2DTranspose, keras.layers.Conv2DTranspose,
     dict(filters=4, kernel_size=3, strides=2, padding="same", activation="relu"), (2, 5, 6, 3),
     ("conv", "conv2d_transpose")),
    ("conv_transpose_output_padding", L.Conv2DTranspose, keras.layers.Conv2DTranspose,
     dict(filters=3, kernel_size=3, strides=2, output_padding=1), (2, 4, 4, 2), ("conv", "conv2d_transpose")),
    ("dense_relu", L.Dense, keras.layers.Dense, dict(units=7, activation="relu"), (5, 6), ("dense", "dense")),
    ("dense_rank3_nobias", L.Dense, keras.layers.Dense, dict(units=4, use_bias=False), (2, 3, 6),
     ("dense", "dense")),
    ("max_pool", L.MaxPooling2D, keras.layers.MaxPooling2D, dict(pool_size=2), (2, 8, 7, 3), ("pool", "max_pool2d")),
    ("max_pool_same", L.MaxPooling2D, keras.layers.MaxPooling2D, dict(pool_size=3, strides=2, padding="same"),
     (2, 7, 7, 3), ("pool", "max_pool2d")),
    ("avg_pool_same", L.AveragePooling2D, keras.layers.AveragePooling2D, dict(pool_size=3, strides=2, padding="same"),
     (2, 7, 8, 3), ("pool", "avg_pool2d")),
    ("batch_norm", L.BatchNormalization, keras.layers.BatchNormalization, dict(momentum=0.9), (4, 5, 5, 3),
     ("norm", "batch_norm")),
    ("batch_norm_no_scale", L.BatchNormalization, keras.layers.BatchNormalization,
     dict(scale=False, center=False, epsilon=1e-2), (6, 4), ("norm", "batch_norm")),
    ("instance_norm", L.InstanceNormalization, keras.layers.GroupNormalization, dict(), (3, 5, 4, 3),
     ("norm", "instance_norm")),
]
IDS = [c[0] for c in CASES]


def _needs(module, fn):
    import importlib

    try:
        mod = importlib.import_module(f"tf_mps.ops.{module}")
    except ImportError:
        pytest.skip(f"tf_mps.ops.{module} not built yet")
    if not hasattr(mod, fn):
        pytest.skip(f"tf_mps.ops.{module}.{fn} not written yet")


def _twins(mps_cls, keras_cls, kwargs, shape, seed=0, ours_device=None):
    keras_kwargs = dict(kwargs, groups=-1) if keras_cls is keras.layers.GroupNormalization else kwargs
    ref = keras_cls(**keras_kwargs)
    ours = mps_cls(**kwargs)
    with tf.device("/CPU:0"):  # the reference's variables where XLA (grouped convs) reaches them
        ref.build(shape)
    with tf.device(ours_device):
        ours.build(shape)
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(w.shape).astype(np.float32) * 0.5 for w in ref.get_weights()]
    if keras_cls is keras.layers.BatchNormalization:  # moving variance must be positive
        weights = [np.abs(w) + 0.5 if "variance" in v.path else w for w, v in zip(weights, ref.weights)]
    ref.set_weights(weights)
    ours.set_weights(weights)
    return ours, ref


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_outputs_and_gradients_match_keras(case, training, device):
    name, mps_cls, keras_cls, kwargs, shape, needs = case
    _needs(*needs)
    ours, ref = _twins(mps_cls, keras_cls, kwargs, shape, ours_device=device)
    with tf.device("/CPU:0"):  # an XLA function runs where its inputs are
        x = tf.constant(np.random.default_rng(1).standard_normal(shape).astype(np.float32))
    results = []
    for layer in (ours, ref):
        # Keras's grouped convolution compiles with XLA, which cannot target the tf-mps
        # device: the reference runs on the CPU.
        with tf.device(device if layer is ours else "/CPU:0"):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=training)
                # A loss whose gradient differs per element.
                loss = tf.reduce_sum(y * tf.reshape(tf.cos(tf.range(tf.size(y), dtype=tf.float32)), tf.shape(y)))
            grads = tape.gradient(loss, [x] + layer.trainable_weights)
        results.append((y.numpy(), [g.numpy() for g in grads], [w.numpy() for w in layer.weights]))
    (y0, g0, w0), (y1, g1, w1) = results
    np.testing.assert_allclose(y0, y1, rtol=2e-5, atol=2e-5, err_msg=f"{name}: outputs")
    for a, b in zip(g0, g1):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4, err_msg=f"{name}: gradients")
    # BatchNormalization's moving statistics after a training step.
    for a, b in zip(w0, w1):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{name}: weights after the call")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_config_round_trip_and_keras_defaults(case):
    name, mps_cls, keras_cls, kwargs, shape, _ = case
    ours = mps_cls(**kwargs)
    keras_kwargs = dict(kwargs, groups=-1) if keras_cls is keras.layers.GroupNormalization else kwargs
    ref = keras_cls(**keras_kwargs)
    config = ours.get_config()
    ref_config = ref.get_config()
    ref_config.pop("groups", None) if mps_cls is L.InstanceNormalization else None
    extra = {k: v for k, v in config.items() if k not in ref_config}
    assert extra in ({}, {"accumulator_precision": "float32"}), extra
    for k, v in ref_config.items():
        if k != "name":
            assert config[k] == v, f"{name}: {k}"
    again = mps_cls.from_config(config)
    assert again.get_config() == config
    assert keras.saving.get_registered_name(mps_cls) == f"tf_mps>{mps_cls.__name__}"
    assert ours.supports_jit is False


def test_bad_accumulator_precision_and_groups_are_clear():
    with pytest.raises(ValueError, match="accumulator_precision must be one of"):
        L.Conv2D(4, 3, accumulator_precision="float64")
    with pytest.raises(ValueError, match="groups=-1"):
        L.InstanceNormalization(groups=2)


def _cnn(family):
    return keras.Sequential([
        keras.Input((12, 12, 1)),
        family.Conv2D(6, 3, padding="same", activation="relu"),
        family.BatchNormalization(),
        family.MaxPooling2D(2),
        family.Conv2D(8, 3, activation="relu"),
        family.AveragePooling2D(2),
        keras.layers.Flatten(),
        family.Dense(10),
    ])


def _needs_all():
    for needs in {c[5] for c in CASES}:
        _needs(*needs)


def _data(n=64):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 12, 12, 1)).astype(np.float32)
    y = (x[:, :6].mean(axis=(1, 2, 3)) > 0).astype(np.int32) + 2 * (x[:, :, :6].mean(axis=(1, 2, 3)) > 0)
    return x, y


def test_a_cnn_fit_with_default_compile_matches_keras_layers(device):
    """Default compile arguments (jit_compile="auto" resolves to no XLA), Adam, two epochs:
    the same losses and weights as the same model built from Keras's layers."""
    _needs_all()
    x, y = _data()
    keras.utils.set_random_seed(3)
    ref = _cnn(keras.layers)
    ours = L.to_tf_mps(ref)
    assert [type(l).__module__ for l in ours.layers if not isinstance(l, keras.layers.Flatten)] == \
        ["tf_mps.keras.layers"] * 6
    hist = []
    for m in (ours, ref):
        m.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
        hist.append(m.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False).history["loss"])
    assert ours.jit_compile is False
    np.testing.assert_allclose(hist[0], hist[1], rtol=1e-4)
    for a, b in zip(ours.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_saved_with_keras_layers_loads_into_tf_mps_and_back(tmp_path):
    _needs_all()
    keras.utils.set_random_seed(4)
    ref = _cnn(keras.layers)
    x, _ = _data(8)
    path = os.path.join(tmp_path, "keras_layers.keras")
    ref.save(path)
    ours = L.load_model(path)
    assert isinstance(ours.layers[0], L.Conv2D)
    np.testing.assert_allclose(ours.predict(x, verbose=0), ref.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    # tf-mps's model saved and loaded as itself, then converted back to Keras's layers.
    path2 = os.path.join(tmp_path, "tf_mps_layers.keras")
    ours.save(path2)
    again = keras.models.load_model(path2)
    assert isinstance(again.layers[0], L.Conv2D)
    np.testing.assert_allclose(again.predict(x, verbose=0), ref.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    back = L.to_keras(again)
    assert type(back.layers[0]) is keras.layers.Conv2D
    np.testing.assert_allclose(back.predict(x, verbose=0), ref.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_custom_training_loop_and_saved_model_export(tmp_path):
    _needs_all()
    keras.utils.set_random_seed(5)
    model = L.to_tf_mps(_cnn(keras.layers))
    opt = keras.optimizers.SGD(0.05)
    x, y = _data(32)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    losses = [float(step(x, y)) for _ in range(8)]
    assert losses[-1] < losses[0]
    export = os.path.join(tmp_path, "exported")
    model.export(export, verbose=False)
    loaded = tf.saved_model.load(export)  # kept: its variables live as long as it does
    served = loaded.serve(tf.constant(x))
    np.testing.assert_allclose(served.numpy(), model(x, training=False).numpy(), rtol=1e-5, atol=1e-5)


def test_inside_xla_the_layers_use_keras_math():
    """(On the CPU: XLA cannot target the tf-mps device, "No JIT device registered".)"""
    _needs("conv", "conv2d")
    ours, ref = _twins(L.Conv2D, keras.layers.Conv2D, dict(filters=4, kernel_size=3, activation="relu"), (1, 6, 6, 2),
                       ours_device="/CPU:0")
    x = tf.constant(np.random.default_rng(2).standard_normal((1, 6, 6, 2)).astype(np.float32))
    with tf.device("/CPU:0"):
        y = tf.function(lambda t: ours(t), jit_compile=True)(x)
        np.testing.assert_allclose(y.numpy(), ref(x).numpy(), rtol=1e-5, atol=1e-5)


def test_tf_mps_ops_exports_the_layer_ops():
    for name in ["conv2d", "conv2d_transpose", "dense", "max_pool2d", "avg_pool2d", "batch_norm", "instance_norm"]:
        assert callable(getattr(tf_mps.ops, name)), name
