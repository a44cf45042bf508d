"""Where a tenant may register a model from (`POST /v1/models` `source.path`): its own
source roots (set with `alkn keys create --source-root`), else ALKN_MODEL_SOURCE_ROOTS;
never the artifact store; and every refusal is one and the same answer.

The API runs on the embedded default (SQLite file, local store) in process; the keys and
roots are made by the real `alkn` command in a child process on the same database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from config.settings import Settings
from registry.migrate import upgrade

from .apikit import write_model_dir
from .services import ROOT

KEY = "alkn_roots_bootstrap_key_0000000"
REFUSAL = "source.path is not an allowed model directory"


def alkn(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ALKN_HOME": str(home), "ALKN_DATABASE_URL": "",
           "ALKN_ARTIFACT_ROOT": "", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "alkn_cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    upgrade(Settings(home=home).resolved_database_url)
    return home


def app_client(home: Path, global_roots: str, key: str = KEY) -> TestClient:
    settings = Settings(home=home, database_url=None, artifact_root=None, broker_url=None,
                        model_source_roots=global_roots, bootstrap_api_key=KEY)
    client = TestClient(create_app(settings))
    client.headers["Authorization"] = f"Bearer {key}"
    return client


def register(client: TestClient, name: str, path: Path | str) -> Any:
    return client.post("/v1/models", json={"name": name, "source": {"path": str(path)}})


def test_a_tenant_with_own_roots_registers_only_under_them(home: Path, tmp_path: Path) -> None:
    shared = write_model_dir(tmp_path / "shared" / "m").parent
    own = write_model_dir(tmp_path / "acme-models" / "m").parent
    made = alkn(home, "keys", "create", "--tenant", "acme", "--source-root", str(own))
    assert made.returncode == 0, made.stderr
    acme_key = made.stdout.strip()
    with app_client(home, str(shared)) as default, \
            app_client(home, str(shared), acme_key) as acme:
        assert register(acme, "mine", own / "m").status_code == 201
        refused = register(acme, "global", shared / "m")  # the global root is not acme's
        assert refused.status_code == 422 and refused.json()["detail"] == REFUSAL
        # A tenant without roots of its own keeps the global ones, and only those.
        assert register(default, "global", shared / "m").status_code == 201
        assert register(default, "acmes", own / "m").status_code == 422
    listed = alkn(home, "tenants", "list").stdout
    assert "acme" in listed and str(own.resolve()) in listed
    assert "(global source roots)" in [ln for ln in listed.splitlines()
                                       if ln.startswith("default")][0]
    # Roots are replaced by the next `--source-root` list, and `tenants roots` with none
    # gives the tenant the global ones back.
    assert alkn(home, "tenants", "roots", "acme").returncode == 0
    with app_client(home, str(shared), acme_key) as acme:
        assert register(acme, "global", shared / "m").status_code == 201


def test_a_tenants_root_inside_the_global_roots_stays_its_own(home: Path,
                                                              tmp_path: Path) -> None:
    """tenant-b's root lies inside the global roots: the tenants on the global roots may
    not copy its models; tenant-b may, and everything else under the global roots stays
    open to the others."""
    models = tmp_path / "models"
    private = write_model_dir(models / "tenant-b" / "private").parent
    public = write_model_dir(models / "public")
    made = alkn(home, "keys", "create", "--tenant", "tenant-b", "--source-root", str(private))
    assert made.returncode == 0, made.stderr
    with app_client(home, str(models)) as default, \
            app_client(home, str(models), made.stdout.strip()) as b:
        refused = register(default, "copy", private / "private")
        assert refused.status_code == 422 and refused.json()["detail"] == REFUSAL
        assert register(default, "public", public).status_code == 201
        assert register(b, "mine", private / "private").status_code == 201


def test_the_artifact_store_is_refused_even_under_a_root(home: Path, tmp_path: Path) -> None:
    # The default roots are the working directory and ALKN_HOME, which holds the store.
    assert home.resolve() in Settings(home=home).source_roots
    src = write_model_dir(home / "sources" / "m")
    with app_client(home, str(home)) as client:
        assert register(client, "victim", src).status_code == 201
        store = home / "artifacts"
        version_dirs = [p.parent for p in store.rglob("config.json")]
        assert version_dirs, "the registration published a version under the store"
        for d in [*version_dirs, store]:
            r = register(client, "copy", d)
            assert r.status_code == 422 and r.json()["detail"] == REFUSAL, d
    # A tenant's own root does not open the store either, and none can be set inside it.
    made = alkn(home, "keys", "create", "--tenant", "t2", "--source-root", str(home))
    assert made.returncode == 0, made.stderr
    with app_client(home, str(tmp_path), made.stdout.strip()) as t2:
        assert register(t2, "copy", version_dirs[0]).json()["detail"] == REFUSAL
        assert register(t2, "own", src).status_code == 201
    inside = alkn(home, "keys", "create", "--tenant", "t3", "--source-root", str(store))
    assert inside.returncode != 0 and "artifact store" in inside.stderr
    assert "alkn_" not in inside.stdout  # no key was made


def test_every_refusal_is_the_same_answer(home: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_model_dir(root / "good")
    (root / "a-file").write_text("{}")
    (root / "no-config").mkdir()
    (root / "no-config" / "model.safetensors").write_bytes(b"x")
    linked = write_model_dir(root / "linked")
    (linked / "extra.bin").symlink_to("/etc/hostname")
    outside = write_model_dir(tmp_path / "outside" / "m")
    cases = {"missing": root / "nothing-here", "file": root / "a-file",
             "no config.json": root / "no-config", "outside the roots": outside,
             "a link inside": linked, "the store": home / "artifacts", "relative": "good"}
    with app_client(home, str(root)) as client:
        answers = {}
        for what, path in cases.items():
            r = register(client, "m", path)
            assert r.status_code == 422, (what, r.text)
            answers[what] = json.dumps(r.json(), sort_keys=True)
        assert len(set(answers.values())) == 1, answers
        assert json.loads(answers["missing"])["detail"] == REFUSAL
        assert register(client, "m", root / "good").status_code == 201
