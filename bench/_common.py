"""Shared by the benchmarks: timing and the memory-copy reference rate."""

from __future__ import annotations

import concurrent.futures
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


def copy_rate(nbytes: int, calls: int, repeats: int) -> tuple[float, int]:
    """Rate of a plain memory copy of `nbytes` (bytes read + written per second), timed
    like the conversions (median of `repeats` runs of `calls` copies), on 1 thread and on
    all cores (numpy's copy releases the GIL); the faster of the two is returned."""
    n = max(nbytes // 4, 1)
    src = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    dst = np.empty_like(src)
    best, best_threads = 0.0, 1
    for threads in sorted({1, cores()}):
        bounds = np.linspace(0, n, threads + 1).astype(int)
        chunks = [(dst[a:b], src[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            def copy(chunks=chunks):
                list(pool.map(lambda c: np.copyto(*c), chunks))

            rate = 2 * src.nbytes / time_call(copy, calls, repeats)
            if rate > best:
                best, best_threads = rate, threads
    return best, best_threads
