#!/usr/bin/env bash
# The whole test suite: installs what is missing, then runs pytest (arguments pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q "$@"
