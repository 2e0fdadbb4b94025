"""The registry of fuzzed entry points: name -> (strategy, runner), grouped by family.

A family is one module, `fuzz/families/<family>.py`, that calls `register` once per
entry point. Its module level must not import TensorFlow: the parent process imports
it for the strategies only; the runners run in the worker process (`runner.py`).

* `strategy`: a hypothesis strategy drawing a *case*, a dict of plain data (no tensors:
  it is pickled to the worker). Every case has "entry" (the entry's name), "fault"
  (None for valid input, else the name of the one mistake it makes) and "klass" (what
  the known-findings list in `known.py` matches on).
* `run(case)`: builds the inputs, calls the entry point and judges the result with
  `oracle.judge`, returning an outcome dict {"kind": one of KINDS, "detail": str}.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import traceback
from typing import Callable

from hypothesis import strategies as st

# What a case can come to. The first two are the good outcomes.
KINDS = (
    "ok",                 # valid input, results equal the reference
    "rejected",           # invalid input, the right error naming the argument, nothing changed
    "crash",              # the worker died (a signal, or exited)
    "hang",               # no answer within the timeout
    "partial_update",     # an error was raised, yet a variable or slot changed
    "accepted_invalid",   # invalid input, no error
    "unnamed_rejection",  # invalid input rejected with another error type, or not naming the argument
    "valid_rejected",     # valid input raised
    "wrong_result",       # valid input, results differ from the reference
    "harness_error",      # the harness itself failed building or judging the case
)
GOOD = ("ok", "rejected")


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    family: str
    strategy: st.SearchStrategy
    run: Callable[[dict], dict]


_ENTRIES: dict[str, Entry] = {}


def register(name: str, family: str, strategy: st.SearchStrategy, run: Callable[[dict], dict]) -> None:
    if name in _ENTRIES:
        raise ValueError(f"fuzz registry: entry {name!r} registered twice")
    _ENTRIES[name] = Entry(name, family, strategy, run)


def available_families() -> list[str]:
    from fuzz import families

    return sorted(m.name for m in pkgutil.iter_modules(families.__path__) if not m.name.startswith("_"))


def load(family_names) -> list[Entry]:
    """Imports the family modules and returns their entries."""
    out = []
    for family in family_names:
        importlib.import_module(f"fuzz.families.{family}")
        out += [e for e in _ENTRIES.values() if e.family == family]
    if not out:
        raise ValueError(f"fuzz registry: no entries in families {list(family_names)}")
    return out


def cases(family_names) -> st.SearchStrategy:
    """Cases of every entry of the families, entries drawn uniformly."""
    entries = load(family_names)
    return st.sampled_from(entries).flatmap(lambda e: e.strategy)


def execute(case: dict) -> dict:
    """Runs one case (in the worker). Never raises: a harness failure is an outcome."""
    try:
        entry = _ENTRIES[case["entry"]]
        outcome = entry.run(case)
    except Exception:  # the harness's own failure, reported, not hidden
        return {"kind": "harness_error", "detail": traceback.format_exc(limit=-6)}
    assert outcome["kind"] in KINDS, outcome
    return outcome
