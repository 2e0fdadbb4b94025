"""The tf-mps device: TensorFlow's PluggableDevice on Metal, and its kernels.

On Linux the device is the project's Metal code running on its CPU emulation of Metal
(docs/metal-emulation.md), for testing: it is off unless ``TFMPS_METAL_EMULATION`` is
``1`` (device type ``MPS``) or ``gpu`` (type ``GPU``) before TensorFlow starts, and its
libraries come from the emulation build (``tools/build_emulation.sh``)::

    TFMPS_METAL_EMULATION=1 python -c "import tf_mps.device as d; d.load(); ..."

``load()`` loads the plugin (memory, streams, events) and then the device kernels
(standard ops of a Keras training step, variable updates and the tf_mps ops), which
are registered for the device type the plugin registered. On macOS the plugin is meant
to load from ``site-packages/tensorflow-plugins`` (``pip install .`` puts it there) and
``import tf_mps`` loads the kernels; no Mac has run it yet.
"""

from __future__ import annotations

import os
import pathlib
import sys

import tensorflow as tf
from tensorflow.python.framework import load_library

import tf_mps  # noqa: F401  (the ops must exist before their device kernels)

PLUGIN = "libtfmps_metal_plugin.so"
KERNELS = "_tf_mps_device_kernels.so"
_loaded: str | None = None


def loaded() -> str | None:
    """The device name once :func:`load` succeeded in this process, else None."""
    return _loaded


def device_type() -> str | None:
    """``"GPU"`` on macOS; on Linux ``"MPS"`` or ``"GPU"`` as configured by
    ``TFMPS_METAL_EMULATION``; None when off."""
    if sys.platform == "darwin":
        return "GPU"
    value = os.environ.get("TFMPS_METAL_EMULATION", "")
    if value in ("1", "mps", "MPS"):
        return "MPS"
    if value in ("gpu", "GPU"):
        return "GPU"
    return None


def emulation_dir() -> pathlib.Path:
    """Where the emulation build is: ``TFMPS_EMULATION_DIR``, else ``build/emulation`` of
    the checkout (the current directory or the one this package was built from)."""
    env = os.environ.get("TFMPS_EMULATION_DIR")
    if env:
        return pathlib.Path(env)
    candidates = [pathlib.Path.cwd() / "build" / "emulation"]
    here = pathlib.Path(__file__).resolve()
    candidates += [p / "build" / "emulation" for p in here.parents]
    for c in candidates:
        if (c / PLUGIN).exists():
            return c
    return candidates[0]


def load(directory: str | os.PathLike | None = None) -> str:
    """Loads the tf-mps device into this process once; returns the device name
    (``"/MPS:0"`` or ``"/GPU:0"``). Raises RuntimeError saying what is missing."""
    global _loaded
    if _loaded is not None:
        return _loaded
    kind = device_type()
    if kind is None:
        raise RuntimeError(
            "tf-mps device: set TFMPS_METAL_EMULATION=1 (device type MPS) or =gpu (type GPU) "
            "before TensorFlow starts, to run the Metal code on the emulation")
    if sys.platform == "darwin" and directory is None:
        # `import tensorflow` loaded the plugin from site-packages/tensorflow-plugins;
        # the kernels sit next to this file.
        kernels = pathlib.Path(__file__).resolve().parent / KERNELS
        if not kernels.exists():
            raise RuntimeError(f"tf-mps device: {kernels} is missing (this build has no Metal device)")
        if not tf.config.list_physical_devices("GPU"):
            raise RuntimeError("tf-mps device: TensorFlow lists no GPU (is the plugin in tensorflow-plugins?)")
        load_library.load_op_library(str(kernels))
        _loaded = "/GPU:0"
        return _loaded
    d = pathlib.Path(directory) if directory is not None else emulation_dir()
    for name in (PLUGIN, KERNELS):
        if not (d / name).exists():
            raise RuntimeError(
                f"tf-mps device: {d / name} is missing; build it with tools/build_emulation.sh "
                "(or point TFMPS_EMULATION_DIR at the build)")
    load_library.load_pluggable_device_library(str(d / PLUGIN))
    load_library.load_op_library(str(d / KERNELS))
    if not tf.config.list_physical_devices(kind):
        raise RuntimeError(f"tf-mps device: the plugin loaded but TensorFlow lists no {kind} device")
    _loaded = f"/{kind}:0"
    _eager_ops_not_as_functions()
    _keras_without_xla()
    return _loaded


def _eager_ops_not_as_functions() -> None:
    """TensorFlow 2.21 runs every eager op as a one-op function; on a GPU-like device an op
    with a host-memory (int32) input becomes a CPU and a device part joined by a
    Send/Recv pair over ONE rendezvous shared by all such runs, so two threads running the
    same op at once can receive each other's tensors (measured here: 2-34 swapped int32
    tensors per 4,800 ops from 8 threads; the same bug on CUDA: tensorflow/tensorflow#123980).
    Running eager ops directly (TFE_ContextSetRunEagerOpAsFunction, c_api_experimental.h)
    removes it (0 in 6 runs). Process-wide; tf.function is unaffected."""
    try:
        from tensorflow.python import pywrap_tfe
        from tensorflow.python.eager import context

        context.ensure_initialized()
        pywrap_tfe.TFE_ContextSetRunEagerOpAsFunction(context.context()._handle, False)
    except (ImportError, AttributeError) as e:  # another TensorFlow layout: warn, run on
        import warnings

        warnings.warn(f"tf-mps device: could not turn off eager ops as functions ({e}); "
                      "threads running eager int32 ops at once may see each other's tensors",
                      RuntimeWarning, stacklevel=3)


def _keras_without_xla() -> None:
    """XLA cannot target the tf-mps device ("No JIT device registered for MPS"), so
    Keras's ``jit_compile="auto"`` must resolve to False once the device is loaded. Keras
    does this itself on macOS arm64 when TensorFlow lists a GPU; for the emulation's
    device this wraps the same decision (``keras.src.trainers.trainer.model_supports_jit``)."""
    try:
        from keras.src.trainers import trainer
    except ImportError:  # no Keras, or another layout of it: nothing to resolve
        return
    original = trainer.model_supports_jit
    if getattr(original, "_tfmps_wrapped", False):
        return

    def model_supports_jit(model):
        return False if _loaded is not None else original(model)

    model_supports_jit._tfmps_wrapped = True
    trainer.model_supports_jit = model_supports_jit
