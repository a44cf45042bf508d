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
if [ $# -gt 0 ]; then  # a part of the suite, as asked, in one process
    exec .venv/bin/python -m pytest -q "$@"
fi
# The whole suite in two workers (pytest-xdist), one test file each at a time (a file's
# module fixtures stay in one process): much of it waits on the servers, workers and browser
# it starts. The schema-based API fuzzing runs after, in one process: its cases share one
# test id, which xdist's reports fold into one.
.venv/bin/python -m pytest -q -n 2 --dist loadfile --ignore tests/test_schemathesis.py
exec .venv/bin/python -m pytest -q tests/test_schemathesis.py
