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
    # Nothing known fails today (tests/fuzz/FINDINGS.md): add entries here when a new finding
    # is written up, and remove them with the fix.
]


def match(case: dict, outcome: dict) -> str | None:
    """The id of the known finding this failed outcome belongs to, or None."""
    for f in KNOWN:
        if (outcome["kind"] in f.kinds and fnmatch.fnmatchcase(case["klass"], f.klass)
                and (not f.detail or re.search(f.detail, outcome["detail"] + "\n" + outcome.get("message", "")))):
            return f.id
    return None
