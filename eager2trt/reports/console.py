"""What the commands print: every check on one line, the rewrite counts, accuracies and latencies."""

from typing import Iterable

from ..checks.result import Check
from ..graph.lint import print_performance


def print_checks(checks: Iterable[Check]) -> None:
    """One line per check: PASS/FAIL, name, measured value, bound, detail."""
    for c in checks:
        print(f"  {c.line()}")


def print_rewrites(report: dict) -> None:
    """Rewrite counts and the op counts before and after."""
    print("rewrites applied:")
    for name, count in report["rewrites"].items():
        print(f"  {name}: {count}")
    if "kept_fp32" in report:
        print(f"  kept FP32 (would overflow FP16): {'; '.join(report['kept_fp32']) or 'nothing'}")
    ops = sorted(set(report["ops_before"]) | set(report["ops_after"]))
    print(f"  {'op':<20}{'before':>8}{'after':>8}")
    for op in ops:
        print(f"  {op:<20}{report['ops_before'].get(op, 0):>8}{report['ops_after'].get(op, 0):>8}")


def print_graph(graph) -> None:
    """A pipeline.Graph: written or refused, its rewrites, performance prediction and checks."""
    title = f"{graph.mode} graph" + (f" ({graph.high_precision} high precision)" if graph.mode == "fast" else "")
    if graph.refused:
        print(f"{title}: not made ({graph.refused})")
        return
    print(f"{title}: {graph.path or 'not written'}")
    if "fallback" in graph.report:
        fb = graph.report["fallback"]
        e = fb["extra_layers"]
        print(f"  kept in float ({len(fb['kept'])}): {', '.join(fb['kept']) or 'nothing'}")
        print(f"  predicted extra TensorRT layers: {e['reformat_layers']} reformat (unfused Q/DQ), "
              f"{e['float_compute_layers']} Conv/Gemm in float instead of INT8")
    else:
        print_rewrites(graph.report)
    if graph.performance:
        print_performance(graph.performance)
    print_checks(graph.checks)


def print_latencies(latency: dict) -> None:
    for name, ms in latency.items():
        print(f"{name} inference latency: {ms:.2f} ms")
