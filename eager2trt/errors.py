"""The one exception the command-line tools turn into a sentence and a non-zero exit."""

import sys
from typing import Callable


class PipelineError(Exception):
    """A problem with the user's input or environment, phrased as one sentence with the fix."""


def require_choice(flag: str, value: str, choices) -> str:
    """Return `value` if it is one of `choices`, else raise naming the flag and the valid choices."""
    if value not in choices:
        raise PipelineError(f"unknown {flag} {value!r}; choose one of {', '.join(choices)}")
    return value


def run_cli(main: Callable[[], object]) -> None:
    """Run a CLI entry point: a PipelineError becomes one line on stderr and exit code 2."""
    try:
        main()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted; artifacts already written are complete, nothing half-written is left.",
              file=sys.stderr)
        sys.exit(130)
