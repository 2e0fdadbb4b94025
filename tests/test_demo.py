"""demo/object_classification.py as a program: a tiny training run on the CPU device and
on the tf-mps device writes every file it promises (and nothing outside --out), `predict`
classifies the written test images as the model did in evaluation, and bad arguments or
missing data give one clear message and a non-zero exit."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "demo", "object_classification.py")
HAS_FASHION_MNIST = os.path.isdir("/usr/share/datasets/fashion-mnist")


def _run(args, tmp_path, env=None, timeout=900):
    home = tmp_path / "home"
    cwd = tmp_path / "cwd"
    home.mkdir(exist_ok=True)
    cwd.mkdir(exist_ok=True)
    full = dict(os.environ, HOME=str(home), **(env or {}))
    full.pop("KERAS_HOME", None)
    full.pop("MPLCONFIGDIR", None)
    out = subprocess.run([sys.executable, DEMO, *args], capture_output=True, text=True, env=full, cwd=cwd,
                         timeout=timeout)
    return out, home, cwd


def _tiny_train(tmp_path, device, extra=()):
    out_dir = tmp_path / "out"
    env = {}
    if device == "mps":
        import metal_emu

        env["TFMPS_EMULATION_DIR"] = os.path.dirname(metal_emu.binary("libtfmps_metal_plugin.so"))
    res, home, cwd = _run(["--out", str(out_dir), "--epochs", "1", "--batch-size", "32", "--train-size", "256",
                           "--test-size", "64", "--samples", "5", "--device", device, "--quiet", *extra],
                          tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return out_dir, res, home, cwd


@pytest.mark.skipif(not HAS_FASHION_MNIST, reason="Debian's dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("demo_device", ["cpu", "mps"])
def test_a_tiny_run_writes_every_file_and_predict_agrees(tmp_path, demo_device):
    device = demo_device
    out_dir, res, home, cwd = _tiny_train(tmp_path, device)
    for name in ["model.keras", "summary.json", "training_curves.png", "confusion_matrix.png"]:
        assert (out_dir / name).is_file(), name
    for png in ["training_curves.png", "confusion_matrix.png"]:
        assert (out_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["train_images"] == 256 and summary["test_images"] == 64
    assert len(summary["loss_per_epoch"]) == 1 and len(summary["images_per_second_per_epoch"]) == 1
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert np.asarray(summary["confusion_matrix"]).sum() == 64
    assert summary["versions"]["tensorflow"].startswith("2.21")
    assert summary["device"].endswith("MPS:0" if device == "mps" else "CPU:0")
    assert "test accuracy" in res.stdout
    # Nothing outside --out: the home directory and the working directory stay empty.
    assert list(home.iterdir()) == [] and list(cwd.iterdir()) == []

    samples = summary["samples"]
    assert len(samples) == 5
    files = [str(out_dir / s["file"]) for s in samples]
    pred, _, _ = _run(["predict", "--model", str(out_dir / "model.keras"), "--json", *files], tmp_path)
    assert pred.returncode == 0, pred.stderr[-3000:]
    got = json.loads(pred.stdout)
    assert [g["classes"][0]["class"] for g in got] == [s["predicted"] for s in samples]


def test_own_images_in_class_folders(tmp_path):
    """--data DIR: one sub-folder per class (here two synthetic classes: bright top half
    vs bright bottom half), a sixth held out."""
    import tensorflow as tf

    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for cls in ["top", "bottom"]:
        (data / cls).mkdir(parents=True)
        for i in range(12):
            img = rng.integers(0, 40, (20, 20, 1), dtype=np.uint8)
            if cls == "top":
                img[:10] += 200
            else:
                img[10:] += 200
            tf.io.write_file(str(data / cls / f"{i}.png"), tf.io.encode_png(img))
    out_dir = tmp_path / "out"
    res, _, _ = _run(["--out", str(out_dir), "--data", str(data), "--epochs", "2", "--batch-size", "8",
                      "--samples", "2", "--quiet"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["classes"] == ["bottom", "top"]
    assert summary["train_images"] == 20 and summary["test_images"] == 4


@pytest.mark.parametrize("args,message", [
    (["--out", "OUT", "--epochs", "0"], "--epochs: expected a positive int"),
    (["--out", "OUT", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["--epochs", "1"], "the following arguments are required: --out"),
    (["--out", "OUT", "--data", "NOWHERE"], "--data NOWHERE: no such directory"),
    (["--out", "OUT", "--data", "EMPTY"], "expected one sub-folder of images per class"),
    (["predict", "--model", "NOWHERE.keras", "x.png"], "no such file (train first"),
])
def test_bad_arguments_and_missing_data_give_one_clear_message(tmp_path, args, message):
    (tmp_path / "EMPTY").mkdir()
    args = [str(tmp_path / a) if a in ("OUT", "NOWHERE", "EMPTY", "NOWHERE.keras") else a for a in args]
    res, _, _ = _run(args, tmp_path, timeout=300)
    assert res.returncode == 2
    assert message.replace("NOWHERE", str(tmp_path / "NOWHERE")) in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def test_help_explains_every_option(tmp_path):
    res, _, _ = _run(["--help"], tmp_path, timeout=120)
    assert res.returncode == 0
    for opt in ["--epochs", "--batch-size", "--device", "--accumulation", "--optimizer", "--out", "--seed", "--data"]:
        assert opt in res.stdout
    res, _, _ = _run(["predict", "--help"], tmp_path, timeout=120)
    assert res.returncode == 0 and "--model" in res.stdout
