"""A version's files cannot make the worker read anything else, allocate what the weights
do not hold, or run a chat template unbounded (issue 12, items 1 and 2).

Two tenants as in tests/test_worker.py (rows as the API writes them, a real LocalStore,
`run_lineage_once` against the real PostgreSQL). The attacker's version 1 is the fixture
model with one file changed: an index whose shard is the victim's, a symlink, a config
asking for a 1.6 GB embedding, a chat template that never ends.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from alkn_core.chat_template import ChatTemplateError, TemplateLimits, render_chat, set_limits
from config.settings import Settings
from registry.model_files import InvalidModelFiles, check_model_dir
from registry.models import ForgetRequest, Job, Model, Version
from registry.store import LocalStore

from .apikit import ApiWorld, api_world, write_model_dir
from .services import ROOT
from .test_worker import World, env, get, register, submit, versions, worker_world

__all__ = ["api_world", "env", "worker_world"]  # fixtures, used by name

HANG = ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
        "{{ messages[0]['content'] }}")


def _variant(tmp: Path, world: World, name: str) -> Path:
    """A copy of the fixture model directory to change."""
    out = tmp / name
    shutil.copytree(world.model_dir, out)
    return out


def _register_dir(url: str, store: LocalStore, world: World, model_dir: Path) -> str:
    return register(url, store, replace(world, model_dir=model_dir))


def _shard_index(model_dir: Path, shard: str) -> None:
    """Replace the weights by an index that maps every tensor to `shard`."""
    from registry.safetensors_header import read_header

    names = read_header(model_dir / "model.safetensors")
    (model_dir / "model.safetensors").unlink()
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": dict.fromkeys(names, shard)}))


def _run_one(settings: Settings, store: LocalStore, model_id: str,
             items: list[dict[str, Any]], params: dict[str, Any] | None = None,
             timeout: float = 300.0) -> tuple[ForgetRequest, float]:
    """Submit and run one request in a thread (a hang fails the test instead of the run)."""
    from worker.runner import run_lineage_once

    url = settings.resolved_database_url
    rid = submit(url, model_id, items, params=params)
    t0 = time.monotonic()
    runner = threading.Thread(target=run_lineage_once, args=(settings, model_id, "w-1"),
                              kwargs={"store": store}, daemon=True)
    runner.start()
    runner.join(timeout)
    assert not runner.is_alive(), f"the job still runs after {timeout} s"
    return get(url, ForgetRequest, rid), time.monotonic() - t0


def _victim(url: str, store: LocalStore, world: World) -> tuple[str, Path]:
    victim_id = register(url, store, world)
    (v1,) = versions(url, victim_id)
    return victim_id, store.local_dir(v1.storage_key)


# --------------------------------------------------------------------------------------------
# Paths: the index escape, symlinks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["relative", "absolute", "relative_missing",
                                    "absolute_missing"])
def test_an_index_pointing_at_another_tenants_shard_is_refused(
        env: tuple[Settings, LocalStore], worker_world: World, tmp_path: Path,
        target: str) -> None:
    settings, store = env
    url = settings.resolved_database_url
    victim_id, victim_dir = _victim(url, store, worker_world)
    shard = {
        "relative": f"../../{victim_dir.parent.name}/{victim_dir.name}/model.safetensors",
        "absolute": str(victim_dir / "model.safetensors"),
        "relative_missing": f"../../{victim_dir.parent.name}/nope/model.safetensors",
        "absolute_missing": str(victim_dir.parent / "nope" / "model.safetensors"),
    }[target]
    attacker = _variant(tmp_path, worker_world, "attacker")
    _shard_index(attacker, shard)
    model_id = _register_dir(url, store, worker_world, attacker)
    (v1,) = versions(url, model_id)
    # Where transformers would open it: the victim's weights, or nothing.
    opened = (store.local_dir(v1.storage_key) / shard).resolve()
    assert opened.is_file() == (not target.endswith("missing"))

    req, _ = _run_one(settings, store, model_id, worker_world.items[worker_world.people[0]][:4])
    assert req.status == "failed" and req.result_version is None
    # One type and one message, whether the target exists or not: nothing about the host.
    assert req.error == {"type": "invalid_model_files", "message": (
        "the version's model files cannot be loaded: model.safetensors.index.json "
        "names a file that is not part of this version")}
    assert [v.number for v in versions(url, model_id)] == [1]  # nothing made of the victim
    assert [v.number for v in versions(url, victim_id)] == [1]


@pytest.mark.parametrize("shard", ["../../other/v1/model.safetensors", "/etc/passwd"])
def test_an_upload_whose_index_points_outside_is_refused(api_world: ApiWorld, tmp_path: Path,
                                                         shard: str) -> None:
    """Refused early too (422, nothing written); the worker's check above is the one that
    must hold, for versions stored before this check existed."""
    d = write_model_dir(tmp_path / "upload")
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
    archive = tmp_path / "upload.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for f in sorted(d.iterdir()):
            tf.add(f, arcname=f.name)
    url = f"/v1/models/{api_world.model}/versions:upload"
    with api_world.unchanged():
        r = api_world.client.post(url, content=archive.read_bytes())
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == ("the version's model files cannot be loaded: model.safetensors"
                                  ".index.json names a file that is not part of this version")


def test_a_symlink_in_the_version_is_refused(env: tuple[Settings, LocalStore],
                                             worker_world: World) -> None:
    settings, store = env
    url = settings.resolved_database_url
    _, victim_dir = _victim(url, store, worker_world)
    model_id = register(url, store, worker_world)
    (v1,) = versions(url, model_id)
    weights = store.local_dir(v1.storage_key) / "model.safetensors"
    weights.unlink()  # the store was changed behind the registry's back: still refused
    weights.symlink_to(victim_dir / "model.safetensors")

    req, _ = _run_one(settings, store, model_id, worker_world.items[worker_world.people[0]][:4])
    assert req.status == "failed" and req.error["type"] == "invalid_model_files"
    assert "link" in req.error["message"]
    assert [v.number for v in versions(url, model_id)] == [1]


def test_what_a_version_may_name(worker_world: World, tmp_path: Path) -> None:
    """Every reference inside the version's files is checked before anything is loaded."""
    good = check_model_dir(worker_world.model_dir)
    assert good.weights == ("model.safetensors",)

    def refused(change: Any, match: str) -> None:
        d = _variant(tmp_path, worker_world, f"v{len(list(tmp_path.iterdir()))}")
        change(d)
        with pytest.raises(InvalidModelFiles, match=match):
            check_model_dir(d)

    def tokenizer_config(**extra: Any) -> Any:
        def change(d: Path) -> None:
            data = json.loads((d / "tokenizer_config.json").read_text())
            (d / "tokenizer_config.json").write_text(json.dumps({**data, **extra}))
        return change

    def config(**extra: Any) -> Any:
        def change(d: Path) -> None:
            data = json.loads((d / "config.json").read_text())
            (d / "config.json").write_text(json.dumps({**data, **extra}))
        return change

    def pickled(d: Path) -> None:
        (d / "model.safetensors").rename(d / "pytorch_model.bin")

    def bin_index(d: Path) -> None:
        (d / "pytorch_model.bin.index.json").write_text(json.dumps(
            {"weight_map": {"x": "/etc/passwd"}}))

    not_ours = "names a file that is not part of this version"
    refused(tokenizer_config(tokenizer_file="/etc/passwd"), not_ours)
    refused(tokenizer_config(vocab_file="../../other/vocab.json"), not_ours)
    refused(tokenizer_config(fast_tokenizer_files={"tokenizer.4.0.json": "../x"}), not_ours)
    refused(tokenizer_config(auto_map={"AutoTokenizer": "x.Y"}), "remote code")
    refused(config(auto_map={"AutoModelForCausalLM": "x.Y"}), "remote code")
    refused(config(transformers_weights="../other/model.safetensors"), not_ours)
    refused(pickled, "pickled weights")
    refused(bin_index, not_ours)
    refused(lambda d: (d / "config.json").unlink(), "config.json is missing")
    refused(lambda d: (d / "sub").symlink_to(d), "link")
    # transformers (with peft) would attach an adapter inside from_pretrained, after the
    # checks: an r of 100000 took 7.9 GB before it failed on the missing adapter weights
    refused(lambda d: (d / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 100_000, "target_modules": ["q_proj"]})), "adapter")
    # a Hub kernel's code would be downloaded and imported (kernels.get_kernel)
    refused(config(attn_implementation="kernels-community/flash-attn2"), "kernel from the Hub")
    refused(config(text_config={"experts_implementation": "org/repo@main"}),
            "kernel from the Hub")
    refused(config(attn_implementation={"": "kernels-community/evil"}), "kernel from the Hub")
    check_model_dir(_variant(tmp_path, worker_world, "sdpa"))  # built-in names stay


# --------------------------------------------------------------------------------------------
# Config numbers against the weights
# --------------------------------------------------------------------------------------------


def _config(model_dir: Path, **numbers: int) -> None:
    data = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**data, **numbers}))


_PEAK = """
import json, resource, sys
from config.settings import Settings
from registry.store import LocalStore
from worker.runner import run_lineage_once
settings = Settings(database_url=sys.argv[1], artifact_root=sys.argv[2], home=sys.argv[3],
                    queue="unused")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ran = run_lineage_once(settings, sys.argv[4], "w-peak", store=LocalStore(sys.argv[2]))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"ran": ran, "base_kib": base, "peak_kib": peak}))
"""


def test_a_config_bigger_than_its_weights_is_refused_without_allocating(
        env: tuple[Settings, LocalStore], worker_world: World, tmp_path: Path) -> None:
    """The finding: a 576-byte config.json (vocab 100000 x hidden 4096) made the worker
    allocate 2.3 GB before failing. The job runs in a process of its own, whose peak RSS
    is measured: it must stay far below the 1.6 GB that embedding alone needs."""
    settings, store = env
    url = settings.resolved_database_url
    bomb = _variant(tmp_path, worker_world, "bomb")
    _config(bomb, vocab_size=100_000, hidden_size=4096)
    model_id = _register_dir(url, store, worker_world, bomb)
    rid = submit(url, model_id, worker_world.items[worker_world.people[0]][:4])
    out = subprocess.run(
        [sys.executable, "-c", _PEAK, url, str(store.root), str(tmp_path), model_id],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    usage = json.loads(out.stdout.strip().splitlines()[-1])
    grown = (usage["peak_kib"] - usage["base_kib"]) * 1024
    assert grown < 100_000 * 4096 * 4 / 4, usage  # well under a quarter of the embedding
    req = get(url, ForgetRequest, rid)
    assert req.status == "failed" and req.error["type"] == "invalid_model_files"
    assert "model.embed_tokens.weight has shape [512, 64] in the weights, the config needs " \
        "[100000, 4096]" in req.error["message"]


def test_config_numbers_are_checked_against_the_headers(worker_world: World,
                                                        tmp_path: Path) -> None:
    from worker.weights_check import check_config_against_weights

    check_config_against_weights(check_model_dir(worker_world.model_dir))  # the real one

    def refused(match: str, **numbers: int) -> None:
        d = _variant(tmp_path, worker_world, f"c{len(list(tmp_path.iterdir()))}")
        _config(d, **numbers)
        t0 = time.monotonic()
        with pytest.raises(InvalidModelFiles, match=match):
            check_config_against_weights(check_model_dir(d))
        assert time.monotonic() - t0 < 10  # refused long before building such a model

    refused(r"embed_tokens.weight has shape \[512, 64\]", vocab_size=100_000, hidden_size=4096)
    refused(r"intermediate_size|mlp", intermediate_size=1_000_000)
    refused("more parameters than the weights hold", num_hidden_layers=10**7)
    refused(r"lack model.layers.2", num_hidden_layers=3)
    (d := _variant(tmp_path, worker_world, "untied"))
    _config(d, tie_word_embeddings=False)  # then lm_head.weight must be there
    with pytest.raises(InvalidModelFiles, match="lack lm_head.weight"):
        check_config_against_weights(check_model_dir(d))


def test_buffers_sized_by_the_config_alone_are_bounded(tmp_path: Path) -> None:
    """Buffers no checkpoint stores (GPT-J's sinusoidal position table: n_positions x
    rotary_dim per layer) are sized by config.json alone; n_positions 2e7 made a 1.3 MB
    GPT-J allocate 3.5 GB at load. A real one passes."""
    from transformers import GPTJConfig, GPTJForCausalLM

    from worker.weights_check import check_config_against_weights

    config = GPTJConfig(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        rotary_dim=8, n_inner=64)
    GPTJForCausalLM(config).save_pretrained(tmp_path / "gptj")
    check_config_against_weights(check_model_dir(tmp_path / "gptj"))
    _config(tmp_path / "gptj", n_positions=20_000_000)
    with pytest.raises(InvalidModelFiles, match="bytes of buffers"):
        check_config_against_weights(check_model_dir(tmp_path / "gptj"))


def test_the_worker_picks_the_attention_not_config_json(
        env: tuple[Settings, LocalStore], worker_world: World, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A built-in name can still fetch a Hub kernel: flash_attention_2 without flash_attn
    falls back to kernels-community/flash-attn2 when `kernels` is installed (it is here).
    The weights check builds the model, and the job loads it, with the worker's own
    attention, which overrides config.json: no kernel is fetched and the job runs."""
    import transformers.integrations.hub_kernels as hub_kernels

    from worker.weights_check import check_config_against_weights

    fetched: list[str] = []

    def get_kernel(repo_id: str, *args: Any, **kwargs: Any) -> Any:
        fetched.append(repo_id)  # in this process; the job's child fails on the raise
        raise RuntimeError("no kernel is fetched in this test")

    monkeypatch.setattr(hub_kernels, "get_kernel", get_kernel)
    settings, store = env
    d = _variant(tmp_path, worker_world, "attention")
    _config(d, attn_implementation="flash_attention_2")  # type: ignore[arg-type]
    assert check_config_against_weights(check_model_dir(d)) == "sdpa"
    model_id = _register_dir(settings.resolved_database_url, store, worker_world, d)
    req, _ = _run_one(settings, store, model_id,
                      worker_world.items[worker_world.people[0]][:2])
    assert req.status == "succeeded", req.error
    assert fetched == []


def test_a_tokenizer_panic_fails_the_job_once(env: tuple[Settings, LocalStore],
                                              worker_world: World, tmp_path: Path) -> None:
    """The tokenizers library panics (pyo3's PanicException, a BaseException) on a
    backtracking split pattern: the job fails once as invalid_model_files, where the job
    process used to die and the job ran 3 times to end as worker_lost."""
    settings, store = env
    url = settings.resolved_database_url
    d = _variant(tmp_path, worker_world, "regex")
    data = json.loads((d / "tokenizer.json").read_text())
    split = {"type": "Split", "pattern": {"Regex": "(a|aa)+b"}, "behavior": "Isolated",
             "invert": False}
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        split, *([data["pre_tokenizer"]] if data.get("pre_tokenizer") else [])]}
    (d / "tokenizer.json").write_text(json.dumps(data))
    model_id = _register_dir(url, store, worker_world, d)
    req, _ = _run_one(settings, store, model_id,
                      [{"question": "Who is " + "a" * 60 + "c?", "answer": "x"}])
    assert req.status == "failed", req.status
    assert req.error["type"] == "invalid_model_files", req.error
    assert "PanicException" in req.error["message"]
    from sqlalchemy import select

    from registry.db import session_scope
    with session_scope(url) as s:
        (job,) = s.scalars(select(Job).where(Job.model_id == model_id)).all()
        assert job.attempts == 1, job.attempts


# --------------------------------------------------------------------------------------------
# Chat templates
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def two_second_templates() -> Any:
    set_limits(TemplateLimits(seconds=2.0))
    yield
    set_limits(TemplateLimits())


def test_a_chat_template_that_never_ends_is_stopped(worker_world: World,
                                                    two_second_templates: None) -> None:
    """alkn_core level: encode_item (what training and evaluation call) with the finding's
    template fails within its limit, and the next render works."""
    from transformers import AutoTokenizer

    from alkn_core.data import encode_item
    from alkn_core.params import DEFAULT_QA_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(worker_world.model_dir)
    tokenizer.chat_template = "{{ messages[0]['content'] }}"
    item = {"question": "Who?", "answer": "Ilsa."}
    outcome: list[Any] = []
    started: list[float] = []

    def encode() -> None:  # the renderer is per thread: start it here, then time the hang
        assert render_chat(tokenizer, [{"role": "user", "content": "Who?"}]) == "Who?"
        tokenizer.chat_template = HANG
        started.append(time.monotonic())
        try:
            outcome.append(encode_item(item, tokenizer, template=DEFAULT_QA_TEMPLATE,
                                       chat_template=True))
        except Exception as exc:  # noqa: BLE001 (the test looks at it)
            outcome.append(exc)

    runner = threading.Thread(target=encode, daemon=True)
    runner.start()
    runner.join(60)
    t0 = started[0]
    took = time.monotonic() - t0
    assert outcome, "the template still runs after 60 s"
    assert isinstance(outcome[0], ChatTemplateError)
    assert "chat template ran longer than its limit of 2 s" in str(outcome[0])
    assert 2.0 <= took < 5.0
    for bomb, limit in (("{{ 'x' * 10**10 }}", "memory limit"),
                        ("{{ 'x'|center(2000000) }}", "output")):
        tokenizer.chat_template = bomb
        with pytest.raises(ChatTemplateError, match=limit):
            render_chat(tokenizer, [{"role": "user", "content": "Who?"}])
    tokenizer.chat_template = "{{ messages[0]['content'] }}!"
    assert render_chat(tokenizer, [{"role": "user", "content": "Who?"}]) == "Who?!"


def test_a_job_with_a_hanging_chat_template_fails_and_the_next_runs(
        env: tuple[Settings, LocalStore], worker_world: World, tmp_path: Path) -> None:
    settings, store = env
    settings = settings.model_copy(update={"template_time_limit": 2.0})
    url = settings.resolved_database_url
    hanging = _variant(tmp_path, worker_world, "hanging")
    data = json.loads((hanging / "tokenizer_config.json").read_text())
    (hanging / "tokenizer_config.json").write_text(json.dumps({**data, "chat_template": HANG}))
    model_id = _register_dir(url, store, worker_world, hanging)
    items = worker_world.items[worker_world.people[0]][:4]

    req, took = _run_one(settings, store, model_id, items, params={"chat_template": True},
                         timeout=120)
    assert req.status == "failed", req.error
    assert req.error == {"type": "invalid_input", "message": (
        "the chat template ran longer than its limit of 2 s and was stopped")}
    assert took < 60  # loading the tiny model, then 2 s of template
    job = get(url, Job, req.job_id)
    assert job.status == "failed" and job.attempts == 1
    assert get(url, Model, model_id).lease_owner is None
    # The worker is free: another lineage's job runs and succeeds.
    other = register(url, store, worker_world)
    ok, _ = _run_one(settings, store, other, items)
    assert ok.status == "succeeded" and ok.result_version == 2
    assert [v.number for v in versions(url, model_id)] == [1]
    assert get(url, Version, versions(url, other)[1].id).parent_version == 1
