"""`python -m tf_mps`: an environment report and a one-op self-check.

Prints versions, the op library's path and build record, the backends built, the
devices TensorFlow sees, BLAS and thread counts, then runs the fused Adam op on a small
problem and compares it with Keras's Adam. Exit status 0 when the self-check passes.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys


def _self_check() -> tuple[bool, str]:
    import keras
    import numpy as np
    import tensorflow as tf

    import tf_mps

    rng = np.random.default_rng(0)
    init = rng.standard_normal((64, 33)).astype(np.float32)
    ours, ref = tf.Variable(init), keras.Variable(init)
    m, v = tf.Variable(tf.zeros_like(init)), tf.Variable(tf.zeros_like(init))
    opt = keras.optimizers.Adam(learning_rate=0.01)
    for step in range(1, 11):
        g = rng.standard_normal(init.shape).astype(np.float32)
        tf_mps.ops.apply_adam(ours, m, v, tf.constant(g), 0.01, step)
        opt.apply([tf.constant(g)], [ref])
    err = float(np.max(np.abs(ours.numpy() - np.asarray(ref.numpy()))))
    ok = err <= 1e-6
    return ok, f"MpsApplyAdam vs keras.optimizers.Adam, 10 steps on 64x33: max |diff| = {err:.3g}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tf_mps",
        description="Print the tf-mps environment report and run a one-op self-check.",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the self-check")
    args = parser.parse_args(argv)

    import tensorflow as tf

    rows = [("python", sys.version.split()[0]), ("platform", platform.platform())]
    rows.append(("tensorflow", tf.__version__))
    try:
        import keras

        rows.append(("keras", keras.__version__))
    except ImportError:
        rows.append(("keras", "not installed"))
    try:
        import tf_mps
    except ImportError as e:  # LibraryLoadError included: print it, do not crash
        for k, v in rows:
            print(f"{k:>22}: {v}")
        print(f"\n{e}", file=sys.stderr)
        return 1
    info = tf_mps.build_info()
    rows += [
        ("tf_mps", tf_mps.__version__),
        ("op library", tf_mps.library_path()),
        ("built for tensorflow", info["tf_version_built"]),
        ("compiler", info["compiler"]),
        ("backends built", ", ".join(info["backends"])),
        ("devices", ", ".join(f"{d.name} ({d.device_type})" for d in tf.config.list_physical_devices())),
        ("blas", info["blas"]),
        ("blas threads", str(info["blas_threads"])),
        ("converter kernels", info["convert_isa"]),
        ("cpu cores usable", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())),
        ("tf intra-op threads", str(tf.config.threading.get_intra_op_parallelism_threads() or "default (all cores)")),
        ("tf inter-op threads", str(tf.config.threading.get_inter_op_parallelism_threads() or "default")),
    ]
    for k, v in rows:
        print(f"{k:>22}: {v}")
    if args.no_check:
        return 0
    ok, message = _self_check()
    print(f"\n{'self-check':>22}: {'PASS' if ok else 'FAIL'} ({message})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
