"""Which files loading a version's model directory may open: all of them lie inside it.

`check_model_dir(root)` runs before anything in the directory is loaded (the worker calls
it on every base version it fetches; the upload route, on what it extracted). It refuses,
with `InvalidModelFiles`:
- anything under the directory that is not a regular file or a real directory (a symlink,
  wherever it points, a FIFO, a device);
- a file name in `model.safetensors.index.json` / `pytorch_model.bin.index.json`
  (`weight_map`), in config.json's `transformers_weights`, or in tokenizer_config.json
  (`*_file`, `*_files`, `fast_tokenizer_files`) that is not a plain relative path to a
  regular file of this version: absolute, with `..`, a backslash or NUL, or missing;
- weights that are not safetensors (a pickle is never loaded) and `auto_map` (remote code).
Path names are judged lexically and against the version's own file list: nothing outside
the directory is ever looked at, so a refusal says nothing about the host's filesystem, and
its message depends only on the version's files.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
INDEX_FILES = (SAFE_INDEX, "pytorch_model.bin.index.json")
ADAPTER_CONFIG = "adapter_config.json"
# Bigger JSON than this is not a config: refused before it is parsed.
MAX_JSON_BYTES = 64 * 2**20


class InvalidModelFiles(ValueError):
    """The version's files cannot be loaded safely; the message names what, never a path
    outside the version."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the version's model files cannot be loaded: {reason}")


@dataclass(frozen=True)
class ModelFiles:
    root: Path  # resolved
    config: dict[str, Any]
    weights: tuple[str, ...]  # the .safetensors files a load reads, relative to root


def check_model_dir(root: Path, *, loadable: bool = True) -> ModelFiles:
    """The checked directory: its config and the weight files loading it reads. With
    `loadable=False` (an upload: it may hold a model no job can load, but nothing that
    points out of itself), only the file names are checked and `weights` is empty."""
    root = Path(os.path.realpath(root))
    files = _regular_files(root)
    config = _json_file(root, files, "config.json")
    if config is None:
        raise InvalidModelFiles("config.json is missing")
    tokenizer_config = _json_file(root, files, "tokenizer_config.json") or {}
    for key, value in tokenizer_config.items():
        if key.endswith(("_file", "_files")) and value is not None:
            for name in _names(value):
                _member(files, name, "tokenizer_config.json")
    for index in INDEX_FILES:
        if index in files:
            _index_shards(root, files, index)
    if not loadable:
        if config.get("transformers_weights") is not None:
            _member(files, config["transformers_weights"], "config.json (transformers_weights)")
        return ModelFiles(root, config, ())
    for name, data in (("config.json", config), ("tokenizer_config.json", tokenizer_config)):
        if "auto_map" in data:
            raise InvalidModelFiles(f"{name} asks for remote code (auto_map), which is "
                                    "never run")
    if ADAPTER_CONFIG in files:
        # transformers (with peft) would attach and load the adapter inside from_pretrained,
        # after every check here: its layers (sized by its `r`) were never checked.
        raise InvalidModelFiles(f"the version holds {ADAPTER_CONFIG} (a PEFT adapter); merge "
                                "the adapter into the weights and register the merged model")
    _no_hub_kernels(config, "config.json")
    return ModelFiles(root, config, _weights(root, files, config))


def _no_hub_kernels(config: Any, where: str, key: str = "") -> None:
    """An `attn_implementation` / `experts_implementation` (in any sub-config, or as a
    per-sub-config dict) naming a Hub repository ("org/repo[@rev]"): transformers would
    download and import that kernel's code, which is never run; the built-in names
    ("eager", "sdpa", ...) have no "/". (The worker also passes its own attention when it
    builds and loads a model, worker.weights_check.ATTENTION.)"""
    if isinstance(config, dict):
        for k, value in config.items():
            _no_hub_kernels(value, where, k if not key.endswith("_implementation") else key)
    elif isinstance(config, list):
        for value in config:
            _no_hub_kernels(value, where, key)
    elif key.endswith("_implementation") and isinstance(config, str) and "/" in config:
        raise InvalidModelFiles(f"{where} asks for a kernel from the Hub ({key}), whose "
                                "code is never run")


def _regular_files(root: Path) -> set[str]:
    """Relative POSIX paths of every file under root; refuses anything else."""
    if not root.is_dir():
        raise InvalidModelFiles("the version has no model directory")
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            full = Path(dirpath) / name
            mode = full.lstat().st_mode  # lstat: a symlink is refused, never followed
            is_dir = name in dirnames
            if not (stat.S_ISDIR(mode) if is_dir else stat.S_ISREG(mode)):
                raise InvalidModelFiles("the version holds a link or another non-regular file")
            if not is_dir:
                out.add(full.relative_to(root).as_posix())
    return out


def _names(value: Any) -> list[Any]:
    """Every file name a config value holds (a string, or strings in a list or dict)."""
    if isinstance(value, dict):
        return [v for v in value.values() if v is not None]
    if isinstance(value, list):
        return [v for v in value if v is not None]
    return [value]


def _member(files: set[str], name: Any, where: str) -> str:
    """`name` if it is a plain relative path of one of the version's files."""
    if not isinstance(name, str) or not _plain(name) or str(PurePosixPath(name)) not in files:
        raise InvalidModelFiles(f"{where} names a file that is not part of this version")
    return str(PurePosixPath(name))


def _plain(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and "\\" not in name and "\x00" not in name \
        and not any(part in ("", ".", "..") for part in p.parts)


def _json_file(root: Path, files: set[str], name: str) -> dict[str, Any] | None:
    if name not in files:
        return None
    path = root / name
    if path.stat().st_size > MAX_JSON_BYTES:
        raise InvalidModelFiles(f"{name} is larger than {MAX_JSON_BYTES} bytes")
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InvalidModelFiles(f"{name} is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidModelFiles(f"{name} is not a JSON object")
    return data


def _index_shards(root: Path, files: set[str], index: str) -> list[str]:
    data = _json_file(root, files, index) or {}
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise InvalidModelFiles(f"{index} has no weight_map")
    return sorted({_member(files, shard, index) for shard in weight_map.values()})


def _weights(root: Path, files: set[str], config: dict[str, Any]) -> tuple[str, ...]:
    """The safetensors files transformers reads, chosen in its order."""
    explicit = config.get("transformers_weights")
    if explicit is not None:
        name = _member(files, explicit, "config.json (transformers_weights)")
        if name.endswith(".safetensors"):
            return (name,)
        if name.endswith(".safetensors.index.json"):
            shards = _index_shards(root, files, name)
        else:
            raise InvalidModelFiles("config.json's transformers_weights is not safetensors")
    elif SAFE_WEIGHTS in files:
        return (SAFE_WEIGHTS,)
    elif SAFE_INDEX in files:
        shards = _index_shards(root, files, SAFE_INDEX)
    else:
        raise InvalidModelFiles(f"no safetensors weights ({SAFE_WEIGHTS} or {SAFE_INDEX}); "
                                "pickled weights (.bin) are never loaded")
    if not all(s.endswith(".safetensors") for s in shards):
        raise InvalidModelFiles("a weight shard is not a .safetensors file")
    return tuple(shards)
