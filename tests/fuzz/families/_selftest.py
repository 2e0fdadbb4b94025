"""Entries that crash, hang or fail on purpose: the runner's own tests (test_fuzz.py).
The leading underscore keeps it out of the families a counting run picks by default."""

import os
import signal
import time

from hypothesis import strategies as st

from fuzz.registry import register


def _run(case):
    what = case["what"]
    if what == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if what == "abort":
        os.abort()
    if what == "exit":
        os._exit(3)
    if what == "hang":
        time.sleep(3600)
    if what == "raise":
        raise RuntimeError("a bug in the harness")
    return {"kind": "ok", "detail": f"pid {os.getpid()}"}


register("_selftest/run", "_selftest", st.fixed_dictionaries({"entry": st.just("_selftest/run"),
                                                               "what": st.just("ok")}), _run)
