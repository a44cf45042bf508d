#!/usr/bin/env bash
# Creates .venv and installs torch (pinned, before the project so pip never resolves a
# plain `torch`), the client's distribution (clients/python) and the project with its test
# extras. Quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
TORCH_SPEC=${ALKN_TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX=${ALKN_TORCH_INDEX:-}  # empty: pip's configured index (PyPI's Linux torch is CUDA's)
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.installed-$(cat pyproject.toml clients/python/pyproject.toml scripts/bootstrap.sh \
    | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import torch" 2>/dev/null \
        || .venv/bin/python -m pip install -q ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} \
            "$TORCH_SPEC" 2>&1 | grep -v "^WARNING: Location" || true
    # the client's own distribution first: the project depends on it (not on an index)
    .venv/bin/python -m pip install -q -e ./clients/python 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import torch, transformers, alkn_core, alkn_client" # fail loudly if anything is missing
    rm -f .venv/.installed-*
    touch "$stamp"
fi
