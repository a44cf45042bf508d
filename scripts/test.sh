#!/usr/bin/env bash
# The whole test suite: installs what is missing, then runs pytest (arguments pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
# The dashboard's browser tests drive Debian's chromium (never a downloaded browser); as
# root it is installed here when missing, else tests/test_dashboard.py fails saying so.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -qq chromium >/dev/null \
        || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
fi
exec .venv/bin/python -m pytest -q "$@"
