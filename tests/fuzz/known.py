"""Known findings: outcome classes that fail today, each keyed to an entry of
FINDINGS.md. CI's fuzz test passes on these (like an xfail) and fails on anything else;
the counting run (`python -m tests.fuzz`) reports them apart, and says which findings no
case reproduced (candidates for removal once fixed). Remove an entry when its fix lands.

A finding matches a case when `klass` (fnmatch pattern over the case's klass,
"<entry>:<fault or valid>:<dtype>:<gradient kinds>[:graph]...") matches, the outcome's
kind is in `kinds`, and `detail` (a regular expression, optional) is found in the
outcome's detail or the error's whole message.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re


@dataclasses.dataclass(frozen=True)
class Finding:
    id: str
    klass: str
    kinds: tuple[str, ...]
    detail: str = ""


KNOWN: list[Finding] = [
    # float16/bfloat16 against the float64 rules: per-operation rounding in float16
    # exceeds the oracle's tolerance in ill-conditioned elements, and Keras semantics
    # rounds beta_1/beta_2 through the variable's dtype (bfloat16: 0.999 -> 1.0, so Adam
    # never moves), which tests/reference.py does not model. An oracle limitation (to do:
    # compare these with Keras's own float16 math), not a claim of a bug.
    Finding("O1", "optim/*:valid:*float16*", ("wrong_result",), r"^variable \d+ "),
    # RMSProp Keras class with NaN/Inf/huge values: results differ from keras.optimizers.RMSprop.
    Finding("F3", "optim/keras.RMSProp:valid:*special*", ("wrong_result",), r"^(variable w|optimizer variable)"),
    # Keras RMSProp with tf-mps options, sparse duplicates, 2 steps in a tf.function:
    # 10% of an update off the float64 rules in one case of 10,000 (to investigate:
    # the class or the oracle's handling of summed duplicates).
    Finding("F7", "optim/keras.RMSProp:valid:float32:sparse:graph*", ("wrong_result",), r"^variable \d+ w"),
    # Keras classes: a sparse gradient whose rows have the wrong shape fails inside Keras
    # with "Shapes (None, 5, 1) and (3, 5) are not compatible" (no argument named).
    Finding("F6", "optim/keras.*:sparse_row_shape:*", ("unnamed_rejection",), r"are not compatible"),
]


def match(case: dict, outcome: dict) -> str | None:
    """The id of the known finding this failed outcome belongs to, or None."""
    for f in KNOWN:
        if (outcome["kind"] in f.kinds and fnmatch.fnmatchcase(case["klass"], f.klass)
                and (not f.detail or re.search(f.detail, outcome["detail"] + "\n" + outcome.get("message", "")))):
            return f.id
    return None
