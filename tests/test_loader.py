"""Loading the op library: each failure gives one readable LibraryLoadError, never a
crash; the environment report runs and passes its self-check."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import tf_mps

# The built package (tf_mps.__file__ is the checkout's when pytest runs from the repository root).
PKG = tf_mps.__path__[0]


def _run(code, env_extra=None, cwd=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def _copy_package(tmp_path, with_library=True):
    dest = tmp_path / "tf_mps"
    ignore = shutil.ignore_patterns("__pycache__", *(() if with_library else ("*.so",)))
    shutil.copytree(PKG, dest, ignore=ignore)
    return dest


def test_missing_library_is_a_clear_error(tmp_path):
    _copy_package(tmp_path, with_library=False)
    r = _run("import tf_mps", {"PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "LibraryLoadError" in r.stderr and "is missing" in r.stderr and "scripts/setup.sh" in r.stderr


def test_tensorflow_version_mismatch_is_a_clear_error(tmp_path):
    dest = _copy_package(tmp_path)
    (dest / "_build_info.py").write_text('TF_VERSION = "2.19.0"\nBLAS = "test"\n')
    r = _run("import tf_mps", {"PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "built for TensorFlow 2.19.0" in r.stderr and "Reinstall tf-mps" in r.stderr


def test_second_copy_is_refused_and_same_copy_reloads(tmp_path):
    dest = _copy_package(tmp_path)
    r = _run(f"""
        import tf_mps
        from tf_mps import _lib
        first = _lib.load()
        _lib._lib = None
        assert _lib.load() is not None  # the same library again: fine
        _lib._lib = None
        _lib.library_path = lambda: {str(dest / "_tf_mps_ops.so")!r}
        try:
            _lib.load()
        except tf_mps.LibraryLoadError as e:
            print("REFUSED:", e)
        else:
            print("LOADED TWICE")
    """)
    assert r.returncode == 0, r.stderr
    assert "REFUSED: tf-mps: another copy of the tf-mps op library is already loaded" in r.stdout


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_checkout_on_sys_path_uses_the_installed_build():
    # `python` started in the repository root finds the unbuilt tf_mps/ first.
    assert not os.path.exists(os.path.join(ROOT, "tf_mps", "_build_info.py"))
    r = _run("""
        import tf_mps, tf_mps.ops, tf_mps.keras
        print(tf_mps.__file__); print(tf_mps.__path__[0]); print(tf_mps.ops.__file__); print(tf_mps.library_path())
    """, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    init, path, ops, lib = r.stdout.split()[-4:]
    assert init == os.path.join(ROOT, "tf_mps", "__init__.py")
    assert os.path.samefile(path, PKG)
    assert ops.startswith(PKG) and lib.startswith(PKG)


def test_unbuilt_checkout_without_a_build_says_what_to_run():
    r = _run("""
        import importlib.metadata as md
        def missing(name):
            raise md.PackageNotFoundError(name)
        md.distribution = missing  # as in a Python where tf-mps was never installed
        import tf_mps
    """, cwd=ROOT)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: tf_mps: this is the source checkout"), r.stderr
    assert "scripts/setup.sh" in last and "pip install" in last


def test_module_main_runs_from_the_checkout():
    r = subprocess.run([sys.executable, "-m", "tf_mps", "--help"], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "usage" in r.stdout.lower()


def test_environment_report_and_self_check():
    r = _run("import runpy, sys; sys.argv = ['tf_mps']; runpy.run_module('tf_mps', run_name='__main__')")
    assert r.returncode == 0, r.stdout + r.stderr
    for needle in ("tensorflow: 2.21", "op library:", "backends built: cpu", "blas: ", "self-check: PASS"):
        assert needle in r.stdout, r.stdout


def test_environment_report_help():
    r = subprocess.run([sys.executable, "-m", "tf_mps", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "self-check" in r.stdout


def test_build_info():
    info = tf_mps.build_info()
    assert info["tf_version_built"].startswith("2.21.")
    assert "cpu" in info["backends"]
    assert info["blas"]


@pytest.mark.skipif(sys.platform != "linux", reason="RPATH check is for the Linux ELF build")
def test_library_uses_relative_rpath():
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) not installed")
    out = subprocess.run(["readelf", "-d", os.path.join(PKG, "_tf_mps_ops.so")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "$ORIGIN/../tensorflow" in out.stdout and "$ORIGIN/../scipy_openblas32/lib" in out.stdout
