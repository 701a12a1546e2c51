"""The one exception the command-line tools turn into a sentence and a non-zero exit, and the checks
every command runs on its options before any long work starts."""

import math
import os
import sys
from typing import Callable, Iterable, Optional


class PipelineError(Exception):
    """A problem with the user's input or environment, phrased as one sentence with the fix."""


def require_choice(flag: str, value: str, choices) -> str:
    """Return `value` if it is one of `choices`, else raise naming the flag and the valid choices."""
    if value not in choices:
        raise PipelineError(f"unknown {flag} {value!r}; choose one of {', '.join(choices)}")
    return value


def require_int(flag: str, value: Optional[int], minimum: int = 1, maximum: Optional[int] = None) -> Optional[int]:
    """Return `value` (None passes: the flag is unset) if minimum <= value <= maximum, else raise naming the flag."""
    if value is None:
        return value
    if value < minimum or (maximum is not None and value > maximum):
        bound = ("positive" if minimum == 1 else f"{minimum} or more") if maximum is None \
            else f"between {minimum} and {maximum}"
        raise PipelineError(f"{flag} must be {bound}, got {value}")
    return value


def require_ints(flag: str, values: Iterable[int], minimum: int = 1) -> list:
    """Check each of a multi-valued integer flag (e.g. --batch-sizes 1 128) with require_int."""
    values = list(values)
    for v in values:
        require_int(flag, v, minimum)
    return values


def require_float(flag: str, value: Optional[float], minimum: float = 0.0, inclusive: bool = True) -> Optional[float]:
    """Return `value` if it is finite and >= `minimum` (> when not inclusive), else raise naming the flag."""
    if value is None:
        return value
    if not math.isfinite(value) or value < minimum or (not inclusive and value == minimum):
        bound = ("positive" if minimum == 0 else f"greater than {minimum:g}") if not inclusive \
            else ("0 or more" if minimum == 0 else f"{minimum:g} or more")
        raise PipelineError(f"{flag} must be a finite number, {bound}, got {value}")
    return value


def run_cli(main: Callable[[], object]) -> None:
    """Run a CLI entry point: a PipelineError becomes one line on stderr and exit code 2."""
    try:
        main()
    except PipelineError as exc:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank raises the same sentence: print it once
            print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted; artifacts already written are complete, nothing half-written is left.",
              file=sys.stderr)
        sys.exit(130)
