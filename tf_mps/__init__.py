"""tf-mps: TensorFlow and Keras on Apple GPUs through Metal Performance Shaders.

On every platform tf-mps provides fused ops with a fast CPU backend (BLAS and
TensorFlow's thread pool); on macOS the same ops run on the GPU through MPS.

    import tf_mps
    model.compile(optimizer=tf_mps.keras.optimizers.Adam(1e-3), loss=...)

Submodules: ``tf_mps.ops`` (the ops), ``tf_mps.keras`` (Keras optimizers),
``tf_mps.convert`` and ``tf_mps.data`` (layout converters, tf.data helpers), and
``python -m tf_mps`` prints an environment report with a self-check.
"""

# Run from a source checkout (the repository root on sys.path), this file is found before
# the installed package: use the installed build, or say what to run (tf_mps/_checkout.py).
from tf_mps._checkout import use_build as _use_build

_use_build(globals())

from tf_mps._lib import LibraryLoadError, build_info, library_path  # noqa: E402
from tf_mps._lib import load as _load  # noqa: E402

__version__ = "0.1.0"

_load()

from tf_mps import convert, data, ops  # noqa: E402


def _load_device_on_macos():
    # On a Mac the plugin comes with `import tensorflow` (tensorflow-plugins) and the
    # device's kernels with `import tf_mps`, so GPU placement works without a call.
    import sys

    if sys.platform != "darwin":
        return
    from tf_mps import device

    try:
        device.load()
    except RuntimeError as e:  # no Metal build or no GPU: the CPU backend still works
        import warnings

        warnings.warn(str(e), RuntimeWarning, stacklevel=2)


_load_device_on_macos()


def __getattr__(name):
    # Keras is imported on first use: `import tf_mps` stays as cheap as TensorFlow.
    if name == "keras":
        import importlib

        module = importlib.import_module("tf_mps.keras")
        globals()["keras"] = module
        return module
    raise AttributeError(f"module 'tf_mps' has no attribute {name!r}")


__all__ = ["LibraryLoadError", "build_info", "library_path", "convert", "data", "ops", "keras", "__version__"]
