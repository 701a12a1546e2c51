"""The one result type every check returns, and `require`, the one place a failed check becomes an error.

After Polygraphy's comparator: a check measures, states the bound it was held to and whether it passed;
printing, metrics.json and the exit code all read the same object, so they cannot disagree.
"""

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

from ..errors import PipelineError


@dataclass(frozen=True)
class Check:
    """One measured check.

    name: what was checked ("equivalence", "agreement", "accuracy", "lint.<rule>", ...);
    value: the measured figure (None where the check counts findings or has no single number);
    bound: the bound as a reader would write it ("<= 1e-05", ">= 0.8728");
    passed: whether `value` is within `bound`;
    detail: what was measured on what, in words (samples, references);
    fix: what to do when it fails, said as an instruction (the second half of the error sentence);
    figures: every other number the check measured, for metrics.json.
    """

    name: str
    value: Optional[float]
    bound: str
    passed: bool
    detail: str = ""
    fix: str = ""
    figures: dict = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.passed

    def line(self) -> str:
        """One line for the console: status, name, value, bound and detail."""
        value = "" if self.value is None else f" {_fmt(self.value)}"
        detail = f" ({self.detail})" if self.detail else ""
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}:{value} (bound {self.bound}){detail}"

    def sentence(self) -> str:
        """The error sentence: what was measured against which bound, then the fix."""
        value = "" if self.value is None else f" measured {_fmt(self.value)}"
        detail = f" ({self.detail})" if self.detail else ""
        fix = f"; {self.fix}" if self.fix else ""
        return f"check {self.name} failed:{value}, bound {self.bound}{detail}{fix}"

    def as_dict(self) -> dict:
        return asdict(self)


class CheckFailed(PipelineError):
    """A check that did not pass; `check` holds the measurement."""

    def __init__(self, check: Check):
        super().__init__(check.sentence())
        self.check = check


def require(check: Check) -> Check:
    """Return `check` if it passed, else raise CheckFailed with its one sentence."""
    if not check.passed:
        raise CheckFailed(check)
    return check


def require_all(checks: Iterable[Check]) -> list[Check]:
    """Require every check in order (the first failure raises); return them."""
    return [require(c) for c in checks]


def as_record(checks: Iterable[Check]) -> dict[str, Any]:
    """Checks keyed by name, for metrics.json."""
    return {c.name: c.as_dict() for c in checks}


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
