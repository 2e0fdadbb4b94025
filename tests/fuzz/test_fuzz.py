"""CI's share of the fuzz run (a few hundred cases across the families, each in the
worker process) and the tests of the harness itself: the child-process runner catches
and attributes crashes and hangs, and the oracles catch what they are meant to."""

import os
import signal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from fuzz import known, oracle, registry
from fuzz.runner import Worker

# Cases per family in CI (override: TFMPS_FUZZ_CASES).
CASES = int(os.environ.get("TFMPS_FUZZ_CASES", "200"))
FAMILIES = registry.available_families()


@pytest.fixture(scope="module")
def workers():
    pool = {}
    yield pool
    for w in pool.values():
        w.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_family(family, workers):
    """Every case is judged by its oracle; outcomes of a known finding (known.py,
    FINDINGS.md) are tolerated, anything else fails with the (shrunk) case."""
    worker = workers.setdefault(family, Worker([family], timeout=120))

    @settings(max_examples=CASES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=registry.cases([family]))
    def one(case):
        outcome = worker.run(case)
        if outcome["kind"] in registry.GOOD:
            return
        assert known.match(case, outcome), f"{outcome['kind']}: {outcome['detail']}\ncase: {case}"

    one()


# ------------------------------------------------------------------ the runner
def _case(what):
    return {"entry": "_selftest/run", "what": what}


def test_runner_attributes_crashes_and_restarts():
    with Worker(["_selftest"], timeout=30) as w:
        first = w.run(_case("ok"))
        assert first["kind"] == "ok"
        crash = w.run(_case("segfault"))
        assert crash["kind"] == "crash" and signal.Signals.SIGSEGV.name in crash["detail"]
        assert w.run(_case("abort"))["kind"] == "crash"
        exited = w.run(_case("exit"))
        assert exited["kind"] == "crash" and "exit code 3" in exited["detail"]
        again = w.run(_case("ok"))
        assert again["kind"] == "ok" and again["detail"] != first["detail"]  # a new process
        assert w.starts == 4


def test_runner_kills_a_hang_and_goes_on():
    with Worker(["_selftest"], timeout=2) as w:
        hang = w.run(_case("hang"))
        assert hang["kind"] == "hang" and "no answer within 2" in hang["detail"]
        assert w.run(_case("ok"))["kind"] == "ok"


def test_runner_reports_harness_errors_and_reuses_the_process():
    with Worker(["_selftest"], timeout=30, restart_every=3) as w:
        bug = w.run(_case("raise"))
        assert bug["kind"] == "harness_error" and "a bug in the harness" in bug["detail"]
        pids = {w.run(_case("ok"))["detail"] for _ in range(5)}
        assert len(pids) == 2 and w.starts == 2  # 6 cases, a fresh process every 3


# ------------------------------------------------------------------ the oracles
def test_judge_classifies_outcomes():
    import tensorflow as tf

    v = tf.Variable([1.0, 2.0])

    def reject(message, write=False):
        def call():
            if write:
                v.assign_add([1.0, 0.0])
            raise tf.errors.InvalidArgumentError(None, None, message)
        return call

    state = [("v", v)]
    j = lambda call, **kw: oracle.judge(call, state=state, **kw)["kind"]  # noqa: E731
    assert j(reject("MpsX: ms[1] has shape [2]"), fault="shape", names=["ms[1]"]) == "rejected"
    assert j(reject("MpsX: ms[0] has shape [2]"), fault="shape", names=["ms[1]"]) == "unnamed_rejection"
    assert j(reject("MpsX: mss[1] is bad"), fault="shape", names=["ms"]) == "unnamed_rejection"  # whole tokens
    assert j(reject("MpsX: ms[1] bad", write=True), fault="shape", names=["ms[1]"]) == "partial_update"
    assert j(lambda: None, fault="shape", names=["ms[1]"]) == "accepted_invalid"

    def type_error():
        raise TypeError("ms[1] is bad")

    assert j(type_error, fault="shape", names=["ms[1]"]) == "unnamed_rejection"
    assert j(type_error, fault="shape", names=["ms[1]"], allowed=(TypeError,)) == "rejected"
    assert j(lambda: None, fault=None, check=lambda r: None) == "ok"
    assert j(lambda: None, fault=None, check=lambda r: "differs") == "wrong_result"
    assert j(reject("x"), fault=None) == "valid_rejected"
    # TF's own eager type check (raw ops only): accepted as the `boundary` message alone.
    tf_msg = "cannot compute MpsApplySgd as input #2(zero-based) was expected to be a float tensor but is a double"
    boundary = r"^cannot compute MpsApplySgd as input #(1|2)\(zero-based\)"
    assert j(reject(tf_msg), fault="grad_dtype", names=["grad"]) == "unnamed_rejection"
    assert j(reject(tf_msg), fault="grad_dtype", names=["grad"], boundary=boundary) == "rejected"
    assert j(reject(tf_msg.replace("#2", "#0")), fault="grad_dtype", names=["grad"],
             boundary=boundary) == "unnamed_rejection"


def test_compare_tolerances():
    e = np.array([1.0, np.nan, np.inf, 1e-3])
    assert oracle.compare("x", e, e) is None
    assert oracle.compare("x", [1.0, np.nan, -np.inf, 1e-3], e) is not None  # an infinity's sign
    assert oracle.compare("x", [1.0, 0.0, np.inf, 1e-3], e) is not None  # NaN lost
    # The tolerance scales with what the update combined: from old = 1e6 to 1e-3.
    assert oracle.compare("x", [1.0 + 1e-6], [1.0], rtol=2e-6) is None
    assert oracle.compare("x", [1e-3 + 1e-2], [1e-3], old=[1e6], rtol=2e-5) is None
    assert oracle.compare("x", [1e-3 + 1e-2], [1e-3], rtol=2e-5) is not None
    # Either of two references, element by element.
    assert oracle.compare("x", [1.0, 0.0], [1.0, 5.0], also=[[7.0, 0.0]]) is None
    assert oracle.compare("x", [1.0, 0.0], [1.0, 5.0], also=[[7.0, 1.0]]) is not None


def test_known_findings_match_their_class_only():
    finding = known.Finding("TEST", "optim/ops.apply_sgd:valid:float16:*", ("valid_rejected",), "float16")
    known.KNOWN.append(finding)
    try:
        case = {"klass": "optim/ops.apply_sgd:valid:float16:dense"}
        assert known.match(case, {"kind": "valid_rejected", "detail": "got float16"}) == "TEST"
        assert known.match(case, {"kind": "wrong_result", "detail": "got float16"}) is None
        assert known.match({"klass": "optim/ops.apply_sgd:valid:float32:dense"},
                           {"kind": "valid_rejected", "detail": "float16"}) is None
    finally:
        known.KNOWN.remove(finding)
