#!/usr/bin/env python3
"""Object classification training using TensorFlow with MPS: the demo of Apple's WWDC 2018
talk "Metal for Accelerating Machine Learning", on tf-mps.

Trains a CNN built from tf-mps's Keras layers (tf_mps.keras.layers) with a tf-mps
optimizer on Fashion-MNIST (10 classes of clothing and shoes, 60,000 training and 10,000
test images of 28x28 pixels), or on your own images (--data DIR, one sub-folder of images
per class), and writes into --out: the trained model (model.keras), a JSON summary, a
confusion matrix and training curves (PNG), and a few test images to try `predict` on.

  python demo/object_classification.py --out runs/demo           # train with the defaults
  python demo/object_classification.py predict --model runs/demo/model.keras runs/demo/samples/*.png

Data, in this order: --data DIR; Debian's dataset-fashion-mnist package
(/usr/share/datasets/fashion-mnist, which scripts/setup.sh installs); Keras's download of
Fashion-MNIST (kept under --out). Nothing is written outside --out.

On Linux --device mps runs on tf-mps's Metal emulation (the CPU computes the kernels): it
shows the code path of a Mac, not a GPU's speed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time

sys.dont_write_bytecode = True  # nothing written outside --out, not even __pycache__

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


class DemoError(Exception):
    """A problem the user can fix: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------- arguments
def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def parse_args(argv):
    if argv and argv[0] == "predict":
        return _predict_parser().parse_args(argv[1:]), "predict"
    if argv and argv[0] == "train":
        argv = argv[1:]
    return _train_parser().parse_args(argv), "train"


def _train_parser():
    p = argparse.ArgumentParser(
        prog="object_classification.py",
        description="Train a CNN of tf-mps layers on Fashion-MNIST (or your own images) and write the model, "
        "a summary, a confusion matrix and training curves into --out. "
        "`object_classification.py predict --help` classifies image files with a saved model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (created; everything the demo writes goes here)")
    p.add_argument("--epochs", type=_positive(int), default=8, help="passes over the training images")
    p.add_argument("--batch-size", type=_positive(int), default=128, help="images per training step")
    p.add_argument("--device", choices=["cpu", "mps"], default="cpu",
                   help="cpu: TensorFlow's CPU device (tf-mps's ops run their CPU backend); mps: the tf-mps "
                   "device (a Mac's GPU; on Linux the Metal emulation)")
    p.add_argument("--accumulation", choices=["float32", "float16"], default="float32",
                   help="accumulator precision of the convolutions and dense layers (float16: MPS's half "
                   "accumulation, emulated exactly on the CPU, slower there)")
    p.add_argument("--optimizer", choices=["adam", "sgd", "rmsprop"], default="adam",
                   help="tf-mps's fused optimizer (tf_mps.keras.optimizers)")
    p.add_argument("--learning-rate", type=_positive(float), default=None,
                   help="initial learning rate, decayed to 0 over the run on a cosine; default: 2e-3 for adam, "
                   "1e-3 for rmsprop, 0.05 for sgd (momentum 0.9)")
    p.add_argument("--seed", type=int, default=1, help="seed of the weights and the data order: same seed, same run")
    p.add_argument("--data", default=None,
                   help="a directory with one sub-folder of images per class (its name is the class); "
                   "a sixth of each class is held out for testing. Default: Fashion-MNIST")
    p.add_argument("--train-size", type=_positive(int), default=None,
                   help="use only the first N training images (a quick try)")
    p.add_argument("--test-size", type=_positive(int), default=None, help="use only the first N test images")
    p.add_argument("--samples", type=int, default=10, help="test images written to OUT/samples for `predict`")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _predict_parser():
    p = argparse.ArgumentParser(
        prog="object_classification.py predict",
        description="Classify image files with a model saved by the training run (OUT/model.keras). Images are "
        "read as grayscale and resized to the model's input size; Fashion-MNIST's images are light objects "
        "on a black background.")
    p.add_argument("--model", required=True, help="a model.keras written by the training run")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, BMP, GIF)")
    p.add_argument("--top", type=_positive(int), default=1, help="classes to print per image")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    return p


# ---------------------------------------------------------------------------- environment
def _prepare_environment(out_dir, device):
    """Before TensorFlow and Keras start: keep their caches and config in --out, and opt in
    to the tf-mps device on Linux (its emulation) when asked for."""
    os.makedirs(out_dir, exist_ok=True)
    cache = os.path.join(out_dir, ".cache")
    os.environ.setdefault("KERAS_HOME", os.path.join(cache, "keras"))
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(cache, "matplotlib"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if device == "mps" and sys.platform != "darwin":
        os.environ.setdefault("TFMPS_METAL_EMULATION", "1")


def _load_device(device):
    import tensorflow as tf

    if device == "cpu":
        return "/CPU:0"
    import tf_mps.device

    try:
        return tf_mps.device.load()
    except RuntimeError as e:
        raise DemoError(f"--device mps: {e}") from None


# ---------------------------------------------------------------------------- data
def _read_idx(path):
    import numpy as np

    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    dims = magic & 0xFF
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _fashion_mnist(out_dir):
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz"]
    if all(os.path.isfile(os.path.join(DEBIAN_DIR, n)) for n in names):
        arrays = [_read_idx(os.path.join(DEBIAN_DIR, n)) for n in names]
        return (arrays[0], arrays[1]), (arrays[2], arrays[3]), CLASSES, f"Fashion-MNIST ({DEBIAN_DIR})"
    import keras

    try:  # KERAS_HOME is inside --out: the download stays there
        (xa, ya), (xb, yb) = keras.datasets.fashion_mnist.load_data()
    except Exception as e:  # noqa: BLE001 - any download failure: one clear message
        raise DemoError(
            "no data: Fashion-MNIST is neither in " + DEBIAN_DIR + " (Debian: apt-get install "
            "dataset-fashion-mnist, or run scripts/setup.sh) nor downloadable by Keras "
            f"({type(e).__name__}: {e}); or give --data DIR with one sub-folder of images per class") from None
    return (xa, ya), (xb, yb), CLASSES, "Fashion-MNIST (Keras download)"


def _read_image(path, size):
    import numpy as np
    import tensorflow as tf

    try:
        raw = tf.io.read_file(path)
        img = tf.io.decode_image(raw, channels=1, expand_animations=False)
    except (tf.errors.OpError, ValueError) as e:
        raise DemoError(f"{path}: not an image TensorFlow can read ({e.message if hasattr(e, 'message') else e})")
    img = tf.image.resize(img, size, antialias=True)
    return np.clip(np.rint(img.numpy()[..., 0]), 0, 255).astype(np.uint8)


def _folder(data_dir, seed):
    import numpy as np

    if not os.path.isdir(data_dir):
        raise DemoError(f"--data {data_dir}: no such directory")
    classes = sorted(d for d in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, d)))
    if len(classes) < 2:
        raise DemoError(f"--data {data_dir}: expected one sub-folder of images per class (at least 2), "
                        f"found {len(classes)}")
    rng = np.random.default_rng(seed)
    train, test = ([], []), ([], [])
    for label, cls in enumerate(classes):
        files = sorted(f for f in os.listdir(os.path.join(data_dir, cls)) if f.lower().endswith(IMAGE_EXTENSIONS))
        if len(files) < 2:
            raise DemoError(f"--data {data_dir}: class folder {cls!r} has {len(files)} images; at least 2 are needed")
        files = [files[i] for i in rng.permutation(len(files))]
        n_test = max(1, len(files) // 6)
        for i, f in enumerate(files):
            part = test if i < n_test else train
            part[0].append(_read_image(os.path.join(data_dir, cls, f), (28, 28)))
            part[1].append(label)
    as_arrays = lambda p: (np.stack(p[0]), np.asarray(p[1], np.uint8))  # noqa: E731
    return as_arrays(train), as_arrays(test), classes, f"{data_dir} ({len(classes)} classes)"


def load_data(args):
    if args.data is not None:
        (xa, ya), (xb, yb), classes, source = _folder(args.data, args.seed)
    else:
        (xa, ya), (xb, yb), classes, source = _fashion_mnist(args.out)
    if args.train_size:
        xa, ya = xa[:args.train_size], ya[:args.train_size]
    if args.test_size:
        xb, yb = xb[:args.test_size], yb[:args.test_size]
    return (xa, ya), (xb, yb), classes, source


def _to_float(images):
    import numpy as np

    return (images.astype(np.float32) / 255.0)[..., None]


# ---------------------------------------------------------------------------- model
def build_model(num_classes, accumulation, input_shape=(28, 28, 1)):
    """Conv-BN-ReLU-pool twice, then a dense layer: tf-mps's layers with Keras's arguments
    (batch norm with momentum 0.9: its moving statistics settle within a few hundred steps,
    which short runs need; Keras's default 0.99 needs thousands)."""
    import keras

    from tf_mps.keras import layers as L

    acc = dict(accumulator_precision=accumulation)
    return keras.Sequential([
        keras.Input(input_shape),
        L.Conv2D(32, 3, padding="same", use_bias=False, **acc),
        L.BatchNormalization(momentum=0.9),
        keras.layers.ReLU(),
        L.MaxPooling2D(2),
        L.Conv2D(64, 3, padding="same", use_bias=False, **acc),
        L.BatchNormalization(momentum=0.9),
        keras.layers.ReLU(),
        L.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.3),
        L.Dense(128, activation="relu", **acc),
        L.Dense(num_classes, **acc),
    ], name="tf_mps_object_classifier")


def _optimizer(name, lr, steps):
    import keras

    from tf_mps.keras import optimizers

    initial = lr or {"adam": 2e-3, "rmsprop": 1e-3, "sgd": 0.05}[name]
    schedule = keras.optimizers.schedules.CosineDecay(initial, decay_steps=max(steps, 1))
    if name == "adam":
        return optimizers.Adam(schedule)
    if name == "rmsprop":
        return optimizers.RMSProp(schedule)
    return optimizers.SGD(schedule, momentum=0.9)


def _throughput_callback():
    import keras

    class Throughput(keras.callbacks.Callback):
        """Images per second, shown in Keras's progress bar and kept per epoch."""

        def __init__(self, batch_size):
            super().__init__()
            self.batch_size = batch_size
            self.per_epoch = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start, self._seen = time.perf_counter(), 0

        def on_train_batch_end(self, batch, logs=None):
            self._seen = (batch + 1) * self.batch_size
            if logs is not None:
                logs["images/s"] = self._seen / max(time.perf_counter() - self._start, 1e-9)

        def on_epoch_end(self, epoch, logs=None):
            rate = self._seen / max(time.perf_counter() - self._start, 1e-9)
            self.per_epoch.append(rate)
            if logs is not None:
                logs["images/s"] = rate

    return Throughput


# ---------------------------------------------------------------------------- plots
def _plot_curves(history, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["loss"]) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, history["loss"], "o-", label="training")
    a.plot(epochs, history["val_loss"], "s-", label="test")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.set_title("Loss"), a.legend(), a.grid(alpha=0.3)
    b.plot(epochs, [100 * v for v in history["accuracy"]], "o-", label="training")
    b.plot(epochs, [100 * v for v in history["val_accuracy"]], "s-", label="test")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy (%)"), b.set_title("Accuracy"), b.legend(), b.grid(alpha=0.3)
    fig.suptitle("tf-mps object classification")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_confusion(matrix, classes, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.asarray(matrix, dtype=np.float64)
    frac = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if frac[i, j] > 0.5 else "black")
    ax.set_title(f"Confusion matrix (test accuracy {100 * np.trace(m) / max(m.sum(), 1):.2f}%)")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- train
def train(args):
    out = os.path.abspath(args.out)
    _prepare_environment(out, args.device)
    import numpy as np
    import tensorflow as tf

    device = _load_device(args.device)
    import keras

    import tf_mps

    (xa, ya), (xb, yb), classes, source = load_data(args)
    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()
    x_train, x_test = _to_float(xa), _to_float(xb)
    y_train, y_test = ya.astype(np.int32), yb.astype(np.int32)
    print(f"data: {source}: {len(x_train)} training, {len(x_test)} test images, {len(classes)} classes")
    print(f"device: {device}   optimizer: tf_mps {args.optimizer}   accumulation: {args.accumulation}   "
          f"seed: {args.seed}")
    if sys.platform != "darwin" and args.device == "mps":
        print("note: on Linux the tf-mps device is the Metal emulation: the CPU computes its kernels "
              "(a Mac's code path, not a GPU's speed)")

    with tf.device(device):
        model = build_model(len(classes), args.accumulation)
        steps = args.epochs * -(-len(x_train) // args.batch_size)
        model.compile(optimizer=_optimizer(args.optimizer, args.learning_rate, steps),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        throughput = _throughput_callback()(args.batch_size)
        start = time.perf_counter()
        hist = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                         validation_data=(x_test, y_test), callbacks=[throughput], shuffle=True,
                         verbose=0 if args.quiet else 1)
        train_seconds = time.perf_counter() - start
        logits = model.predict(x_test, batch_size=512, verbose=0)
    test_loss = float(hist.history["val_loss"][-1])
    pred = logits.argmax(axis=1)
    test_acc = float((pred == y_test).mean())
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(matrix, (y_test, pred), 1)

    model_path = os.path.join(out, "model.keras")
    model.save(model_path)
    _plot_curves(hist.history, os.path.join(out, "training_curves.png"))
    _plot_confusion(matrix, classes, os.path.join(out, "confusion_matrix.png"))
    samples = _write_samples(xb, y_test, pred, classes, os.path.join(out, "samples"), args.samples)
    summary = {
        "test_accuracy": test_acc, "test_loss": test_loss,
        "epochs": args.epochs, "batch_size": args.batch_size,
        "loss_per_epoch": [float(v) for v in hist.history["loss"]],
        "accuracy_per_epoch": [float(v) for v in hist.history["accuracy"]],
        "test_loss_per_epoch": [float(v) for v in hist.history["val_loss"]],
        "test_accuracy_per_epoch": [float(v) for v in hist.history["val_accuracy"]],
        "images_per_second_per_epoch": [float(v) for v in throughput.per_epoch],
        "train_seconds": train_seconds,
        "device": device, "device_kind": args.device, "metal_emulation": sys.platform != "darwin" and args.device == "mps",
        "optimizer": args.optimizer, "learning_rate": {"schedule": "cosine decay to 0",
                                                       "initial": float(model.optimizer._learning_rate.initial_learning_rate)},
        "accumulation": args.accumulation, "seed": args.seed,
        "data": source, "train_images": len(x_train), "test_images": len(x_test), "classes": classes,
        "confusion_matrix": matrix.tolist(), "samples": samples,
        "versions": {"tf_mps": tf_mps.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "platform": platform.platform(),
        "files": ["model.keras", "summary.json", "training_curves.png", "confusion_matrix.png", "samples/"],
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    rate = np.mean(throughput.per_epoch) if throughput.per_epoch else 0.0
    print(f"test accuracy {100 * test_acc:.2f}%   test loss {test_loss:.4f}   "
          f"{rate:.0f} images/s   {train_seconds:.0f} s of training")
    print(f"wrote {out}/: model.keras, summary.json, training_curves.png, confusion_matrix.png, "
          f"samples/ ({len(samples)} images)")
    return 0


def _write_samples(images, labels, pred, classes, folder, count):
    import tensorflow as tf

    os.makedirs(folder, exist_ok=True)
    out = []
    for i in range(min(count, len(images))):
        name = f"{i:03d}_{classes[labels[i]].replace('/', '-').replace(' ', '_').lower()}.png"
        png = tf.io.encode_png(tf.constant(images[i][..., None]))
        tf.io.write_file(os.path.join(folder, name), png)
        out.append({"file": f"samples/{name}", "true": classes[labels[i]], "predicted": classes[pred[i]]})
    return out


# ---------------------------------------------------------------------------- predict
def predict(args):
    if not os.path.isfile(args.model):
        raise DemoError(f"--model {args.model}: no such file (train first: it writes OUT/model.keras)")
    out_dir = os.path.dirname(os.path.abspath(args.model))
    _prepare_environment(out_dir, "cpu")
    import numpy as np

    for path in args.images:
        if not os.path.isfile(path):
            raise DemoError(f"{path}: no such file")
    import keras

    import tf_mps.keras.layers  # noqa: F401 - registers the tf-mps layers for loading

    try:
        model = keras.models.load_model(args.model)
    except Exception as e:  # noqa: BLE001 - a file that is not a model: one clear message
        raise DemoError(f"--model {args.model}: not a model this demo wrote ({type(e).__name__}: {e})") from None
    summary_path = os.path.join(out_dir, "summary.json")
    classes = CLASSES
    if os.path.isfile(summary_path):
        with open(summary_path) as f:
            classes = json.load(f).get("classes", CLASSES)
    size = tuple(model.input_shape[1:3])
    batch = _to_float(np.stack([_read_image(p, size) for p in args.images]))
    probs = keras.ops.softmax(model.predict(batch, verbose=0), axis=-1)
    probs = np.asarray(probs)
    results = []
    for path, p in zip(args.images, probs):
        order = np.argsort(-p)[:args.top]
        results.append({"file": path, "classes": [{"class": classes[k], "probability": float(p[k])} for k in order]})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['file']}: " + ", ".join(f"{c['class']} ({100 * c['probability']:.1f}%)" for c in r["classes"]))
    return 0


def main(argv=None):
    args, mode = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return train(args) if mode == "train" else predict(args)
    except DemoError as e:
        print(f"object_classification.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
