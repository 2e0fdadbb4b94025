"""Finding and loading the tf-mps op library, with one readable error per failure.

The op library is C++ built against one TensorFlow release (its ABI is not stable across
releases), so it is loaded only into the TensorFlow it was built for. Every failure here
raises :class:`LibraryLoadError` (an ``ImportError``) whose message says what happened
and what to do; nothing here can abort the process.
"""

from __future__ import annotations

import os

import tensorflow as tf

LIBRARY_NAME = "_tf_mps_ops.so"

# Set on the tensorflow module (one per process) when an op library of tf-mps registers
# its ops, so that a second copy (another installation, a build tree) is refused with a
# message instead of loading half-registered.
_MARKER = "_tf_mps_op_library_path"

_lib = None


class LibraryLoadError(ImportError):
    """The tf-mps op library cannot be loaded into this process."""


def invalid_argument(message: str) -> tf.errors.InvalidArgumentError:
    """The error every Python-side argument check raises (TF's own class and code)."""
    return tf.errors.InvalidArgumentError(None, None, message)


def library_path() -> str:
    """Absolute path of the op library that belongs to this copy of tf_mps."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)


def _version_tuple(version: str) -> tuple[int, int]:
    parts = version.split(".")
    return int(parts[0]), int(parts[1])


def _check_tensorflow_version(built_for: str) -> None:
    running = tf.__version__
    if _version_tuple(built_for) != _version_tuple(running):
        raise LibraryLoadError(
            f"tf-mps: the op library was built for TensorFlow {built_for}, but this process "
            f"runs TensorFlow {running}. Custom ops only load into the TensorFlow release "
            "they were compiled against. Reinstall tf-mps so it is rebuilt for this "
            "TensorFlow (`pip install --force-reinstall --no-binary tf-mps tf-mps`, or "
            "`pip install .` in a source checkout), or install TensorFlow "
            f"{'.'.join(built_for.split('.')[:2])}."
        )


def load():
    """Loads the op library once per process and returns its generated op module."""
    global _lib
    if _lib is not None:
        return _lib
    path = library_path()
    if not os.path.exists(path):
        raise LibraryLoadError(
            f"tf-mps: the op library {path} is missing: this copy of tf_mps was never "
            "built, or lost its libraries. Reinstall tf-mps (in a source checkout: "
            "`scripts/setup.sh`, or `pip install .`) and import it from the installed copy."
        )
    try:
        from tf_mps import _build_info
    except ImportError as e:  # pragma: no cover - only a broken installation lacks it
        raise LibraryLoadError(
            f"tf-mps: {path} exists but its build record (_build_info.py) does not: the "
            "installation is incomplete. Reinstall tf-mps."
        ) from e
    _check_tensorflow_version(_build_info.TF_VERSION)

    loaded_from = getattr(tf, _MARKER, None)
    if loaded_from is not None and os.path.realpath(loaded_from) != os.path.realpath(path):
        raise LibraryLoadError(
            "tf-mps: another copy of the tf-mps op library is already loaded in this "
            f"process ({loaded_from}); refusing to load {path} as well, since two copies "
            "cannot register the same ops. Two installations of tf_mps are on sys.path: "
            "uninstall one, or import tf_mps from one place only."
        )
    try:
        lib = tf.load_op_library(path)
    except tf.errors.NotFoundError as e:
        raise LibraryLoadError(
            f"tf-mps: {path} could not be loaded: {e.message.strip()}. A missing shared "
            "library (libscipy_openblas.so, libtensorflow_framework.so.2) means the "
            "scipy-openblas32 or tensorflow package is missing or moved; an undefined "
            "symbol means the library was built for another TensorFlow. Reinstall tf-mps."
        ) from e
    except tf.errors.OpError as e:
        raise LibraryLoadError(f"tf-mps: loading {path} failed: {e.message.strip()}") from e
    if not hasattr(lib, "mps_build_info"):
        raise LibraryLoadError(
            f"tf-mps: {path} loaded but registered no ops: another copy of the tf-mps op "
            "library already registered them in this process. Import tf_mps from one "
            "installation only."
        )
    setattr(tf, _MARKER, path)
    _lib = lib
    return lib


def build_info() -> dict:
    """What the loaded op library was built for and with (from the MpsBuildInfo op)."""
    import json

    return json.loads(load().mps_build_info().numpy().decode())
