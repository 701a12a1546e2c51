"""Latency measurement (warm-up, synchronize, median and p99) and the machine facts beside it."""

import os
import platform
import statistics
import time
from typing import Callable, Optional

import torch


def summarize(samples_ms: list[float], batch_size: int = 1) -> dict:
    """trtexec-style summary of per-call latencies in milliseconds."""
    s = sorted(samples_ms)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]

    return {"runs": len(s), "batch_size": batch_size, "min_ms": s[0], "mean_ms": statistics.fmean(s),
            "median_ms": statistics.median(s), "p90_ms": pct(90), "p95_ms": pct(95), "p99_ms": pct(99),
            "max_ms": s[-1], "throughput_per_s": 1000.0 * batch_size / statistics.median(s)}


def measure(fn: Callable[[], object], runs: int = 100, warmup: int = 10, batch_size: int = 1,
            sync: Optional[Callable[[], None]] = None) -> dict:
    """Call `fn` `warmup` times untimed, then `runs` times timed; `sync` waits for async devices."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return summarize(samples, batch_size)


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Versions and hardware, recorded beside every figure."""
    env = {"torch": torch.__version__, "quantized_engine": torch.backends.quantized.engine,
           "cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
           "python": platform.python_version(),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import onnxruntime
        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return env


def thread_sweep(make_fns: Callable[[int], list], runs: int, batch_size: int = 1,
                 sync: Optional[Callable[[], None]] = None) -> list[dict]:
    """Time each (label, fn) that `make_fns(threads)` returns at 1 thread and at the default thread count.

    `make_fns` is called once per thread count because some runtimes (onnxruntime) fix theirs at creation.
    The default thread count is restored afterwards, also on error.
    """
    default = torch.get_num_threads()
    out = []
    try:
        for threads in sorted({1, default}):
            torch.set_num_threads(threads)
            for label, fn in make_fns(threads):
                out.append({"label": label, "threads": threads,
                            **measure(fn, runs=runs, batch_size=batch_size, sync=sync)})
    finally:
        torch.set_num_threads(default)
    return out


def cpu_latencies(models: dict, example: torch.Tensor, runs: int, sync: Optional[Callable[[], None]] = None,
                  threads: bool = True) -> dict:
    """Median batch-1 latency in ms of each named module on `example`: keyed name_cpu_{threads}t at 1 and the
    default thread count (`threads`), else by name alone (a GPU model, timed with `sync`)."""
    def fns(_threads: int) -> list:
        return [(name, lambda m=m: m(example)) for name, m in models.items()]

    with torch.no_grad():
        if not threads:
            return {name: measure(fn, runs=runs, sync=sync)["median_ms"] for name, fn in fns(0)}
        return {f"{r['label']}_cpu_{r['threads']}t": r["median_ms"] for r in thread_sweep(fns, runs, sync=sync)}
