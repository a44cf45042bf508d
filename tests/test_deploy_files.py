"""The deployment files against the code, read as an operator's Docker would read them (Docker
does not run here): every setting they pass is one the service reads, the GPU workers get the
same settings as the base file's, no key is known in advance, the API is published on this
host only, and the artifact volume's mount point exists in the image, owned by its user."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from config.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _compose(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


def _settings_names() -> set[str]:
    return {f"ALKN_{name.upper()}" for name in Settings.model_fields}


def test_every_setting_the_compose_files_pass_is_read() -> None:
    base, gpu = _compose("docker-compose.yml"), _compose("docker-compose.gpu.yml")
    envs = [base["x-alkn-env"], gpu["x-alkn-gpu-env"],
            *(s.get("environment") or {} for s in [*base["services"].values(),
                                                  *gpu["services"].values()])]
    passed = {k for env in envs if isinstance(env, dict) for k in env if k.startswith("ALKN_")}
    assert passed and passed <= _settings_names(), passed - _settings_names()


def test_gpu_workers_get_the_base_files_settings() -> None:
    # anchors do not cross files: the GPU file repeats them, and must not fall behind
    base = _compose("docker-compose.yml")["x-alkn-env"]
    worker_only = set(base) - {"ALKN_BOOTSTRAP_API_KEY"}  # the API's, at its start
    workers = {name: s for name, s in _compose("docker-compose.gpu.yml")["services"].items()
               if name.startswith("worker-")}
    assert workers
    for name, service in workers.items():
        env = service["environment"]
        assert {k: env.get(k) for k in worker_only} == {k: base[k] for k in worker_only}, name


def test_no_known_key_and_the_api_on_this_host_only() -> None:
    base = _compose("docker-compose.yml")
    key = base["x-alkn-env"]["ALKN_BOOTSTRAP_API_KEY"]
    assert re.fullmatch(r"\$\{ALKN_BOOTSTRAP_API_KEY:\?[^}]+\}", key), key
    for port in base["services"]["api"]["ports"]:
        assert str(port).startswith("127.0.0.1:"), port


def test_the_artifact_volume_is_mounted_where_the_image_made_it_its_users() -> None:
    lines = [x for x in (ROOT / "Dockerfile").read_text().splitlines()
             if not x.lstrip().startswith("#")]
    commands = " ".join(x.rstrip("\\") for x in lines[: lines.index("USER alkn")])
    assert re.search(r"\bRUN\b.*mkdir -p /data/artifacts\b.*&& chown -R alkn /data\b", commands)
    root = _compose("docker-compose.yml")["x-alkn-env"]["ALKN_ARTIFACT_ROOT"]
    mounts = [volume.split(":")[1] for name in ("docker-compose.yml", "docker-compose.gpu.yml")
              for service in _compose(name)["services"].values()
              for volume in service.get("volumes") or [] if volume.startswith("artifacts:")]
    assert len(mounts) >= 4 and set(mounts) == {root} == {"/data/artifacts"}


def test_postgresql_takes_every_processes_pool() -> None:
    """registry/db.py's pool (10 + 20 overflow per process) times the processes that may
    connect fits max_connections: the API's uvicorn workers, and per worker service its
    main process (the dispatcher), its pool child and a job process; plus the one-shot
    migration."""
    from registry.db import get_engine

    pool = get_engine("postgresql+psycopg://u@127.0.0.1:1/none").pool
    per_process = pool.size() + pool._max_overflow  # type: ignore[attr-defined]
    base, gpu = _compose("docker-compose.yml"), _compose("docker-compose.gpu.yml")
    command = base["services"]["postgres"]["command"]
    limit = int(next(c.split("=")[1] for c in command if c.startswith("max_connections=")))
    api = base["services"]["api"]["command"]
    uvicorn_workers = int(api[api.index("--workers") + 1])
    workers = len([n for n in gpu["services"] if n.startswith("worker-")])
    assert limit >= per_process * (uvicorn_workers + 3 * workers + 1)
