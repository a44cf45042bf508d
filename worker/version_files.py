"""A job's model files: the base version loaded from the artifact store (checked before
anything in it is read), the new version written under a fresh key nothing points to yet,
and files of a job that published nothing deleted again."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.exc import SQLAlchemyError

from alkn_core import UnlearnState
from alkn_core.chat_template import TemplateLimits
from alkn_core.chat_template import set_limits as set_template_limits
from alkn_core.runtime import pick_device, pick_dtype, place
from config.settings import Settings
from registry import jobs
from registry.jobs import JobSpec
from registry.model_files import INDEX_FILES, check_model_dir
from registry.safetensors_header import read_header
from registry.store import LocalStore, S3Store, regular_files

from .weights_check import check_config_against_weights

log = logging.getLogger(__name__)

Store = LocalStore | S3Store


def staging_dir(store: Store) -> Path:
    maker: Callable[[], Path] | None = getattr(store, "staging_dir", None)
    return maker() if maker is not None else Path(tempfile.mkdtemp(prefix="alkn-stage-"))


@dataclass
class BaseVersion:
    model: torch.nn.Module
    tokenizer: Any
    state: UnlearnState | None
    root: Path  # its model directory (the new version copies what unlearning did not change)


def load_base(store: Store, spec: JobSpec, workdir: Path, settings: Settings | None = None
              ) -> BaseVersion:
    """The base version's model, tokenizer and state. Before anything in the version is
    loaded, every file it names must be one of its own files and its config must match
    its weights (InvalidModelFiles otherwise); only safetensors are read, never remote
    code. The tokenizer's chat template renders within the settings' limits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress bars per load/save only clutter the log

    if settings is not None:
        set_template_limits(TemplateLimits(settings.template_time_limit,
                                           settings.template_output_limit,
                                           settings.template_memory_limit))
    files = check_model_dir(store.fetch_dir(spec.base_storage_key, workdir / "model"))
    attention = check_config_against_weights(files)
    src = files.root
    device = pick_device()
    # On a GPU the source's own dtype: a bf16 model stays bf16 end to end, an fp32 one is
    # trained under bf16 autocast (alkn_core.runtime.autocast_for) and keeps its fp32
    # weights; on CPU fp32. The version is written in the source's dtype either way.
    source_dtype = source_layout(src).dtype if device.type == "cuda" else None
    dtype = source_dtype or pick_dtype(device)
    # A worker that owns several GPUs (CUDA_VISIBLE_DEVICES) spreads a model over them;
    # ALKN's per-parameter tensors follow their parameter. Untested: no multi-GPU machine.
    spread = device.type == "cuda" and torch.cuda.device_count() > 1
    model = AutoModelForCausalLM.from_pretrained(
        src, dtype=dtype, use_safetensors=True, trust_remote_code=False,
        attn_implementation=attention, **({"device_map": "auto"} if spread else {}))
    tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=False)
    if not spread:
        place(model)
    state = None
    if spec.base_state:
        state = UnlearnState.load(store.fetch_dir(spec.base_storage_key + "-state",
                                                  workdir / "state"))
        if state.method != spec.method:  # the base row said otherwise: trust the file
            log.warning("base state of job %s is %s, not %s; starting without it",
                        spec.job_id, state.method, spec.method)
            state = None
    return BaseVersion(model, tokenizer, state, src)


# safetensors dtype names -> torch dtypes of the floating weights a version may hold
FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16,
                "F16": torch.float16}


@dataclass(frozen=True)
class SourceLayout:
    """How the base version stores its weights: the new version is written alike."""

    weights: frozenset[str]  # the weight files (and their index), relative to the root
    dtype: torch.dtype | None  # of the floating weights (the one holding most elements)
    max_shard_bytes: int | None  # the largest shard; None: one file


def source_layout(root: Path) -> SourceLayout:
    files = check_model_dir(root)
    counts: dict[str, int] = {}
    for name in files.weights:
        for info in read_header(files.root / name).values():
            if info.dtype in FLOAT_DTYPES:
                counts[info.dtype] = counts.get(info.dtype, 0) + info.numel
    dtype = FLOAT_DTYPES[max(counts, key=lambda d: counts[d])] if counts else None
    sizes = [(files.root / name).stat().st_size for name in files.weights]
    return SourceLayout(frozenset(files.weights) | frozenset(INDEX_FILES), dtype,
                        max(sizes) if len(sizes) > 1 else None)


def write_model_dir(model: torch.nn.Module, base_root: Path, out: Path,
                    card: str | None = None) -> None:
    """The new version's directory: the weights in the base's dtype and sharding, and every
    other file of the base (config, tokenizer, licence, anything else) byte for byte:
    unlearning changed the weights only. `card`: the version's README.md (its model card,
    which carries the base's own card on)."""
    layout = source_layout(base_root)
    if layout.dtype is not None:
        model.to(dtype=layout.dtype)  # a bf16 compute copy of an fp32 source goes back
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(out, max_shard_size=layout.max_shard_bytes or 2 * total + 1)
    for path in regular_files(base_root):
        rel = path.relative_to(base_root).as_posix()
        if rel not in layout.weights:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out / rel)
    if card is not None:
        (out / "README.md").write_text(card, encoding="utf-8")


def save_version(store: Store, settings: Settings, spec: JobSpec, model: torch.nn.Module,
                 state: UnlearnState | None, base_root: Path, card: str | None = None
                 ) -> tuple[str, list[dict[str, Any]]]:
    """Write the new version's files (`write_model_dir`) and state under a fresh key
    nothing points to yet; on failure nothing of it is left (a state already published is
    deleted again)."""
    try:
        number = jobs.next_version_number(settings.resolved_database_url, spec.model_id)
    except SQLAlchemyError:  # it only names the key: a guess will do while the database is away
        number = spec.base_version + 1
    key = f"{spec.model_id}/v{number}-{uuid.uuid4().hex[:8]}"
    staged: list[Path] = []
    try:
        model_dir = staging_dir(store)
        staged.append(model_dir)
        write_model_dir(model, base_root, model_dir, card)
        if state is not None:
            state_dir = staging_dir(store)
            staged.append(state_dir)
            state.save(state_dir)
            store.publish_dir(state_dir, key + "-state")
        files = [f.as_dict() for f in store.publish_dir(model_dir, key)]
    except BaseException:
        with contextlib.suppress(Exception):  # the original error is the one to report
            drop_files(store, key)
        raise
    finally:
        for d in staged:  # LocalStore moved them away; anything left is a temp copy
            shutil.rmtree(d, ignore_errors=True)
    return key, files


def drop_files(store: Store, key: str | None) -> None:
    if key is not None:
        store.delete(key)
        store.delete(key + "-state")


def drop_unreferenced(url: str, store: Store, spec: JobSpec, key: str | None) -> None:
    """Delete files we published only when we know no committed version points to them."""
    if key is None:
        return
    try:
        if jobs.version_of_job(url, spec.model_id, spec.job_id) is None:
            drop_files(store, key)
    except SQLAlchemyError:
        log.warning("could not check job %s; its files under %s stay", spec.job_id, key)
