#!/usr/bin/env bash
# The test suite, as CI runs it: sets up the environment on first use (scripts/env.sh), then pytest.
#   scripts/test.sh [pytest args...]      real CIFAR-10 from $CIFAR10_DIR (default ../shared/cifar10)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
exec "$PYTHON" -m pytest -q "$@"
