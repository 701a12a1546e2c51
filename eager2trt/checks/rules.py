"""Lint findings (graph/lint.py, Polygraphy-style data) as checks: one Check per rule."""

from .result import Check

LINT_FIX = "the surgery does not handle this graph yet; please report it with the ONNX file"


def lint_checks(findings: dict, fix: str = LINT_FIX) -> list[Check]:
    """One Check per lint rule: the number of error-level findings, held to zero; warnings are reported only."""
    checks = []
    for rule, found in findings.items():
        errors = [f for f in found if f.level == "error"]
        shown = errors or found
        detail = "; ".join(f"{f.node} ({f.op}): {f.message}" for f in shown[:3])
        if len(shown) > 3:
            detail += f"; and {len(shown) - 3} more"
        if found and not errors:
            detail = f"{len(found)} warnings: {detail}"
        checks.append(Check(f"lint.{rule}", float(len(errors)), "0 errors", not errors, detail=detail,
                            fix=f"TensorRT's rule {rule} is broken; {fix}",
                            figures={"findings": [vars(f) for f in found]}))
    return checks
