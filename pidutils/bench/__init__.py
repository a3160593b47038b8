"""Timing that can be trusted (chapter 1, "Measuring").

Warm-up runs, device synchronisation, repeated runs reported as median and spread, and A/B
comparisons interleaved in one run and reported as ratios. These timers sit below everything that
uses them; the benchmark command line, ``python -m pidutils.bench <experiment>``, lives in
``pidutils/bench/__main__.py`` and runs the experiments of :mod:`pidutils.experiments`.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ..checks import check_device, check_int
from ..cost import Device

@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median, the interquartile spread, and every sample."""

    median: float
    q1: float
    q3: float
    samples: list[float]

    @classmethod
    def of(cls, samples: list[float]) -> "Timing":
        s = sorted(samples)
        if len(s) == 1:
            return cls(s[0], s[0], s[0], list(samples))
        q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive")
        return cls(statistics.median(s), q1, q3, list(samples))

    def __str__(self) -> str:
        return f"{self.median * 1e3:.1f} ms (IQR {self.q1 * 1e3:.1f}-{self.q3 * 1e3:.1f})"


Where = torch.device | str | None  # a device; None: the CUDA device when there is one, else the CPU


def resolve(device: Where) -> torch.device:
    """The device a timer synchronises: ``device`` (checked), or with None the CUDA device when
    there is one, else the CPU, so that a call that names no device is still timed right."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device("device", device)


def synchronize(device: Where = None) -> None:
    """Wait for queued device work, so a timer measures the work and not its launch."""
    device = resolve(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_fn(fn: Callable[[], object], device: Where = None, warmup: int = 1, repeats: int = 5) -> Timing:
    """Time ``fn()`` after ``warmup`` untimed calls, ``repeats`` times, synchronising the device."""
    return compare({"fn": fn}, device, warmup, repeats)["fn"]


Work = Callable[[], object] | Sequence[Callable[[], object]]  # one call, or one call per part (batch)


def compare(fns: dict[str, Work], device: Where = None, warmup: int = 1, repeats: int = 5) -> dict[str, Timing]:
    """Time several functions interleaved: each round runs every one once, in a rotating order.

    Interleaving spreads drifts of the machine (other load, clock changes) over all of them, so
    their ratio is fair even on a shared machine. A function may come in parts, a list of calls
    (one batch of dialogues each): a round then interleaves them part by part, every function's
    first part, then every second part, each in a rotating order, and a function's sample is the
    sum of its parts' times. A drift then lands on every function within one batch, not one
    function for a whole round. ``device`` is the one synchronised around every call
    (:func:`resolve`).
    """
    check_int("warmup", warmup, 0)
    check_int("repeats", repeats, 1)
    parts = {name: [fn] if callable(fn) else list(fn) if isinstance(fn, (list, tuple)) else []
             for name, fn in fns.items()} if isinstance(fns, dict) else {}
    if not parts or not all(p and all(callable(f) for f in p) for p in parts.values()):
        raise ValueError("fns must name at least one function to time: a dict of name -> function "
                         "(or -> a non-empty list of functions, its parts)")
    device = resolve(device)
    names = list(parts)
    for _ in range(warmup):
        for name in names:
            for part in parts[name]:
                part()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        total = dict.fromkeys(names, 0.0)
        for i in range(max(len(p) for p in parts.values())):
            k = (r + i) % len(names)
            for name in names[k:] + names[:k]:
                if i < len(parts[name]):
                    total[name] += _timed(parts[name][i], device)
        for name in names:
            samples[name].append(total[name])
    return {name: Timing.of(s) for name, s in samples.items()}


def speedup(slow: Timing, fast: Timing) -> float:
    """The ratio of median times: how many times faster ``fast`` is than ``slow``."""
    return slow.median / fast.median


def describe(device: torch.device | str, dtype: torch.dtype, **shapes: object) -> str:
    """One line naming the device, dtype and shapes of a measurement."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU {platform.machine()} ({torch.get_num_threads()} threads)"
    dims = ", ".join(f"{k}={v}" for k, v in shapes.items())
    return " | ".join(filter(None, [name, str(dtype).removeprefix("torch."), f"torch {torch.__version__}", dims]))


MATMUL_SIZE = {"cpu": 1024, "cuda": 8192}  # large enough to reach the peak, small enough to be quick
MATMULS_PER_SAMPLE = {"cpu": 1, "cuda": 10}  # back-to-back launches per timed sample on a GPU


def measure_device(device: Where = None, dtype: torch.dtype = torch.float32, size: int | None = None,
                   megabytes: int = 256, *, repeats: int = 7) -> Device:
    """Measure this device's matmul FLOP/s and copy bandwidth, for a roofline of your own machine (chapter 1).

    A ``size``³ matmul (by default 1024 on the CPU, 8192 on a GPU), warmed up, then ``repeats``
    synchronised samples; on a GPU each sample runs several matmuls back to back, so that the
    launch and the synchronisation do not count against the peak. ``device`` None: :func:`resolve`.
    """
    device = resolve(device)
    size = MATMUL_SIZE[device.type] if size is None else check_int("size", size, 16)
    check_int("megabytes", megabytes, 1)
    check_int("repeats", repeats, 1)
    calls = MATMULS_PER_SAMPLE[device.type]
    a = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty_like(a)

    def matmuls() -> None:
        for _ in range(calls):
            torch.matmul(a, a, out=out)

    matmul = time_fn(matmuls, device, warmup=2, repeats=repeats)
    src = torch.empty(megabytes * 2**20 // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    copy = time_fn(lambda: dst.copy_(src), device, warmup=2, repeats=repeats)
    return Device(name=describe(device, dtype).split(" | ")[0] + " (measured)",
                  peak_flops=calls * 2 * size**3 / matmul.median,
                  bandwidth=2 * src.numel() * 4 / copy.median,  # read + write
                  dtype=str(dtype).removeprefix("torch."))


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Send what C++ code writes to the process's stderr (file descriptor 2) to /dev/null in the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(fn: Callable[[], object], device: Where = None) -> int:
    """Peak bytes allocated on ``device`` while ``fn()`` runs, above what was allocated before it.

    On CUDA, the caching allocator's peak counter. On the CPU, torch's profiler records every
    allocation and free in order; the peak of their running sum is the same quantity.
    ``device`` None: :func:`resolve`, the CUDA device when there is one.
    """
    device = resolve(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _stderr_silenced():  # the profiler's C++ side prints "profiler_start" and "_stop" lines there
        prof.start()
    try:
        fn()
    finally:
        with _stderr_silenced():
            prof.stop()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    changes = (e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage for e in events)
    return max(itertools.accumulate(changes, initial=0))
