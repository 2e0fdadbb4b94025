"""The counting run: N cases per family, each in the worker process, and a table of
what they came to. `python -m tests.fuzz --family optim --cases 10000` (docs/fuzzing.md).

Nothing here stops at a failure: every outcome is counted, failures matching a known
finding (known.py) apart from new ones, and every failure is written to a JSONL file
(--out) with its case, so that any of them can be replayed (--replay)."""

from __future__ import annotations

import argparse
import os
import collections
import json
import sys
import time

from hypothesis import HealthCheck, Phase, given, seed, settings

from fuzz import known, registry
from fuzz.runner import Worker

# The counts the issue asks for, in this order, then the rest of registry.KINDS.
HEADLINE = ("crash", "hang", "partial_update", "accepted_invalid", "unnamed_rejection")


def run_family(family: str, cases: int, *, seed_value: int, timeout: float, out, progress: int = 500):
    counts = collections.Counter()
    new = collections.Counter()
    findings = collections.Counter()
    examples = {}
    started = time.monotonic()
    with Worker([family], timeout=timeout) as worker:

        @seed(seed_value)
        @settings(max_examples=cases, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=registry.cases([family]))
        def one(case):
            outcome = worker.run(case)
            counts[outcome["kind"]] += 1
            n = sum(counts.values())
            if outcome["kind"] not in registry.GOOD:
                fid = known.match(case, outcome)
                if fid:
                    findings[fid] += 1
                else:
                    new[outcome["kind"]] += 1
                    examples.setdefault((case["klass"].split(":")[0], case["klass"].split(":")[1], outcome["kind"]),
                                        (case, outcome))
                if out is not None:
                    out.write(json.dumps({"family": family, "known": fid, "outcome": outcome, "case": case},
                                         default=repr) + "\n")
            if progress and n % progress == 0:
                print(f"  [{family}] {n} cases, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)

        one()
        starts = worker.starts
    return dict(counts=counts, new=new, findings=findings, examples=examples,
                seconds=time.monotonic() - started, starts=starts)


def report(family: str, r: dict, show: int) -> str:
    c, total = r["counts"], sum(r["counts"].values())
    lines = [f"== family {family}: {total} cases in {r['seconds']:.0f} s ({r['starts']} worker starts)"]
    lines.append(f"   {'':24}{'total':>8}{'known':>8}{'new':>8}")
    known_by_kind = {k: c[k] - r["new"][k] for k in registry.KINDS}
    for kind in ("ok", "rejected") + HEADLINE + tuple(k for k in registry.KINDS if k not in HEADLINE + registry.GOOD):
        lines.append(f"   {kind:24}{c[kind]:>8}{known_by_kind[kind] if kind not in registry.GOOD else '':>8}"
                     f"{r['new'][kind] if kind not in registry.GOOD else '':>8}")
    if r["findings"]:
        lines.append("   known findings reproduced: " + ", ".join(f"{k} x{v}" for k, v in sorted(r["findings"].items())))
    family_ids = {f.id for f in known.KNOWN if f.klass.startswith(family + "/")}
    missing = sorted(family_ids - set(r["findings"]))
    if missing:
        lines.append(f"   known findings no case reproduced (fixed?): {', '.join(missing)}")
    for (entry, fault, kind), (case, outcome) in list(r["examples"].items())[:show]:
        lines.append(f"   NEW {kind} {entry} {fault}: {outcome['detail'][:300]!r}")
        lines.append(f"       case: {json.dumps(case, default=repr)[:600]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--family", action="append", help="family to run (repeatable); default: all")
    parser.add_argument("--cases", type=int, default=10_000, help="cases per family (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a case counts as a hang")
    parser.add_argument("--out", default=os.path.join("build", "fuzz", "fuzz-failures.jsonl"),
                        help="JSONL file of every failed case ('' for none; default under build/, which git ignores)")
    parser.add_argument("--show", type=int, default=20, help="new failure classes to print per family")
    parser.add_argument("--replay", help="rerun the cases of a JSONL file written by --out, print their outcomes")
    args = parser.parse_args(argv)
    if args.replay:
        return replay(args.replay, args.timeout)
    families = args.family or registry.available_families()
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    out = open(args.out, "w") if args.out else None
    failed = False
    try:
        for family in families:
            r = run_family(family, args.cases, seed_value=args.seed, timeout=args.timeout, out=out)
            print(report(family, r, args.show), flush=True)
            failed |= sum(r["new"].values()) > 0
    finally:
        if out is not None:
            out.close()
    return 1 if failed else 0


def replay(path: str, timeout: float) -> int:
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    by_family = collections.defaultdict(list)
    for row in rows:
        by_family[row["family"]].append(row["case"])
    for family, cases in by_family.items():
        with Worker([family], timeout=timeout) as worker:
            for case in cases:
                outcome = worker.run(case)
                print(f"{outcome['kind']:18} {case['klass']}: {outcome['detail'][:200]!r}")
    return 0
