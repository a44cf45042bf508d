#!/usr/bin/env bash
# The service on its embedded default (SQLite, a serverless Celery transport, artifacts under
# $ALKN_HOME, the demo model registered as `demo`): installs what is missing, then
# `alkn serve` (API on 127.0.0.1:8000 and a worker child process; Ctrl-C stops both).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/alkn serve "$@"
