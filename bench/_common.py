"""Shared by the benchmarks: timing and the memory-copy reference rate."""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import statistics
import time

import numpy as np


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def time_call(fn, calls: int, repeats: int) -> float:
    """Median over `repeats` runs of the mean seconds per call over `calls` calls."""
    fn()  # trace / warm up
    fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - t0) / calls)
    return statistics.median(runs)


_POOLS: dict = {}


def _pool(threads: int) -> concurrent.futures.ThreadPoolExecutor:
    """One thread pool per size for the whole run (the copies of every case share it)."""
    if threads not in _POOLS:
        _POOLS[threads] = concurrent.futures.ThreadPoolExecutor(threads)
    return _POOLS[threads]


def copier(nbytes: int, calls: int = 5, repeats: int = 3) -> tuple[object, int]:
    """A plain memory copy of `nbytes` bytes (numpy's copy, which releases the GIL) as a
    function, on 1 thread or on all cores, whichever is faster here; and that count."""
    n = max(nbytes // 4, 1)
    src = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    dst = np.empty_like(src)
    best = None
    for threads in sorted({1, cores()}):
        bounds = np.linspace(0, n, threads + 1).astype(int)
        chunks = [(dst[a:b], src[a:b]) for a, b in itertools.pairwise(bounds)]
        if threads == 1:
            def copy(dst=dst, src=src):
                np.copyto(dst, src)
        else:
            pool = _pool(threads)

            def copy(chunks=chunks, pool=pool):
                list(pool.map(lambda c: np.copyto(*c), chunks))
        seconds = time_call(copy, calls, repeats)
        if best is None or seconds < best[0]:
            best = (seconds, copy, threads)
    return best[1], best[2]


def time_interleaved(fns: dict, calls: int, repeats: int) -> dict:
    """Seconds per call of each function, one list entry per round: every round times
    `calls` calls of each function in turn, so that all of them meet the same machine
    (on a shared VM the memory bandwidth drifts by tens of percent within a minute)."""
    for fn in fns.values():  # trace / warm up
        fn()
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - t0) / calls)
    return times


def copy_rate(nbytes: int, calls: int, repeats: int) -> tuple[float, int]:
    """Rate of a plain memory copy of `nbytes` (bytes read + written per second), timed
    like the conversions (median of `repeats` runs of `calls` copies), with copier's
    faster thread count; and that count."""
    copy, threads = copier(nbytes, calls, repeats)
    return 2 * 4 * max(nbytes // 4, 1) / time_call(copy, calls, repeats), threads
