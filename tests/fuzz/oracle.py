"""What every case is judged by (runs in the worker).

Valid input: no error, and results equal to the entry's reference (`check`).
Invalid input: an InvalidArgumentError or ValueError (a few faults allow one more type,
e.g. TF's own NotFoundError for a handle to no variable) whose message names the
argument (one of `names`, as a whole token: "ms[1]", "gradient_clip"), and every piece
of `state` (variables, slots, optimizer iterations, inputs) bit-for-bit unchanged.
An error of any kind that leaves state changed is a partial update.
"""

from __future__ import annotations

import re

import numpy as np


def error_message(e: BaseException) -> str:
    return getattr(e, "message", None) or str(e)


def names_argument(message: str, names) -> bool:
    return any(re.search(r"(?<![A-Za-z0-9_])" + re.escape(n) + r"(?![A-Za-z0-9_])", message) for n in names)


def _bits(a) -> bytes:
    a = np.ascontiguousarray(np.asarray(a))
    return a.dtype.str.encode() + str(a.shape).encode() + a.tobytes()


def snapshot(state) -> list:
    """state: a list of (label, object with .numpy() or an array)."""
    return [(label, _bits(x.numpy() if hasattr(x, "numpy") else x)) for label, x in state]


def changed(state, before) -> list[str]:
    return [label for (label, b), (_, a) in zip(before, snapshot(state), strict=True) if a != b]


def judge(call, *, fault, names=(), state=(), check=None, allowed=(), boundary=None) -> dict:
    """Calls `call()` and classifies what happened (registry.KINDS).

    fault: None for valid input, else the mistake's name; names: how a correct message
    may name the argument; state: what must stay unchanged when the call is rejected;
    check(result) -> None or a description of the first difference from the reference;
    allowed: error types accepted besides InvalidArgumentError and ValueError;
    boundary: a regular expression for a message of TensorFlow's own that is accepted in
    place of one naming the argument (raw ops only: TF rejects those before any tf-mps
    code runs, docs/fuzzing.md)."""
    import tensorflow as tf

    before = snapshot(state)
    try:
        result = call()
    except Exception as e:  # noqa: BLE001 - every error is classified below
        message = error_message(e)
        # tf.function errors carry a traceback first ("in user code: ..."); the message is last.
        text = message if len(message) <= 700 else message[:150] + " [...] " + message[-550:]
        head = f"{type(e).__name__}: {text}"
        moved = changed(state, before)
        full = {"message": message[-4000:]}  # for known.py to match on
        if moved:
            return {"kind": "partial_update", "detail": f"{head} -- yet changed: {', '.join(moved)}", **full}
        if fault is None:
            return {"kind": "valid_rejected", "detail": head, **full}
        if not isinstance(e, (tf.errors.InvalidArgumentError, ValueError, *allowed)):
            return {"kind": "unnamed_rejection", "detail": f"wrong error type: {head}", **full}
        if not names_argument(message, names) and not (boundary and re.search(boundary, message)):
            return {"kind": "unnamed_rejection", "detail": f"names none of {list(names)}: {head}", **full}
        return {"kind": "rejected", "detail": head[:200]}
    if fault is not None:
        moved = changed(state, before)
        return {"kind": "accepted_invalid",
                "detail": f"fault {fault!r} raised nothing" + (f"; changed: {', '.join(moved)}" if moved else "")}
    problem = check(result) if check is not None else None
    if problem:
        return {"kind": "wrong_result", "detail": problem}
    return {"kind": "ok", "detail": ""}


def compare(what, actual, expected, *, also=(), old=None, rtol=0.0, atol=0.0, normwise=False):
    """None, or where `actual` differs from `expected` beyond rounding.

    `also`: other acceptable references; each element must match `expected` or one of
    them (they differ where an implementation may legitimately differ, e.g. whether
    denormal inputs are flushed). NaNs must match NaNs, infinities must match in sign.
    For finite elements the allowed error is rtol * scale + atol, where scale is the
    largest of |expected|, |old| and |expected - old|: an update's rounding is
    proportional to the values it combines, so a result that cancels to near zero is
    not held to its own tiny magnitude. normwise: scale is the largest finite one of
    the whole tensor (the measure of conftest.assert_rel_close). rtol=0, atol=0 means
    equal on finite values."""
    a = np.asarray(actual, np.float64)
    refs = [expected, *also]
    bad = None
    for e in refs:
        e = np.asarray(e, np.float64)
        if a.shape != e.shape:
            return f"{what}: shape {a.shape}, expected {e.shape}"
        with np.errstate(invalid="ignore", over="ignore"):
            scale = np.abs(e)
            if old is not None:
                o = np.asarray(old, np.float64)
                scale = np.maximum(scale, np.maximum(np.abs(o), np.abs(e - o)))
            scale = np.where(np.isfinite(scale), scale, 0.0)
            if normwise and scale.size:
                scale = np.full_like(scale, scale.max())
            nan_a, nan_e = np.isnan(a), np.isnan(e)
            mismatch = nan_a != nan_e
            inf = np.isinf(e) | np.isinf(a)
            mismatch |= inf & ~nan_e & ~nan_a & (a != e)
            finite = ~nan_e & ~nan_a & ~inf
            mismatch |= finite & (np.abs(a - e) > rtol * scale + atol)
        bad = mismatch if bad is None else bad & mismatch
    if not bad.any():
        return None
    i = tuple(int(k) for k in np.argwhere(bad)[0])
    e0 = np.asarray(refs[0], np.float64)
    return (f"{what}: {int(bad.sum())} of {a.size} elements differ, first at {i}: "
            f"got {a[i]!r}, expected {e0[i]!r} (rtol {rtol:g}, atol {np.broadcast_to(atol, a.shape)[i]:g})")


def first_problem(*problems):
    return next((p for p in problems if p), None)
