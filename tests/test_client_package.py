"""The client is a distribution of its own (clients/python, `alkn-client`): it installs into
an empty virtual environment with httpx and pydantic only (no torch, nothing of the
service), is typed, and reads its URL and key from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .services import ROOT

CHECK = """
import importlib.util, os, pathlib
import alkn_client
from alkn_client import Client, RequestFailed
here = pathlib.Path(alkn_client.__file__).parent
assert here.joinpath("py.typed").is_file(), "py.typed missing"
assert "clients" not in here.parts, here  # installed, not the checkout
for heavy in ("torch", "transformers", "api", "registry", "alkn_core"):
    assert importlib.util.find_spec(heavy) is None, heavy + " is installed"
with Client() as c:  # $ALKN_URL and $ALKN_API_KEY
    assert c.base_url == "http://alkn.invalid:9", c.base_url
    assert c._http.headers["Authorization"] == "Bearer from-env"
print("ok")
"""


def test_client_installs_into_an_empty_venv_without_torch(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    r = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        str(ROOT / "clients" / "python")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    env = {"PATH": os.environ.get("PATH", ""), "ALKN_URL": "http://alkn.invalid:9",
           "ALKN_API_KEY": "from-env"}
    r = subprocess.run([python, "-c", CHECK], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
