"""Does config.json describe the weights that are there? Checked before anything is allocated.

`check_config_against_weights(files)` builds the architecture from config.json on the
`meta` device (shapes only, no memory) and compares it with the tensor tables of the
safetensors headers (no tensor data read):
- a tensor both name must have the same shape (vocab_size x hidden_size against the
  embedding, and every other one);
- every tensor the model needs must be in the files, except a tied one whose partner is;
  for architectures whose checkpoints transformers renames or fuses on load (a conversion
  mapping, e.g. MoE experts), names cannot be compared and the next check stands alone;
- the model may not need more elements than the files hold.
Building on meta is itself bounded: it stops once the config asks for more parameters or
modules than the files could fill. Every refusal is `InvalidModelFiles`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from registry.model_files import InvalidModelFiles, ModelFiles
from registry.safetensors_header import TensorInfo, read_header

# The attention the worker builds and loads every model with, never config.json's: a name
# there (even per sub-config) can make transformers download and import a kernel from the
# Hub ("org/repo", or flash_attention_2's fallback to one); the explicit argument overrides
# it. sdpa, else eager where the architecture has no sdpa.
ATTENTION = ("sdpa", "eager")

# Slack over the files' tensor count for what a model registers but a checkpoint omits
# (tied weights); modules per tensor for containers, activations and norms without weights.
EXTRA_PARAMETERS = 64
MODULES_PER_TENSOR = 8
EXTRA_MODULES = 256
# Buffer bytes a model may hold beyond its weights' fp32 size: a small model's tables and
# causal masks (GPT-Neo's: max_position_embeddings^2 a layer).
EXTRA_BUFFER_BYTES = 1 << 28


def check_config_against_weights(files: ModelFiles) -> str:
    """The checks above; returns the attention the model was built with (ATTENTION), for
    loading it the same way."""
    tensors = _tensor_table(files)
    model = _meta_model(files, len(tensors))
    expected = model.state_dict(keep_vars=True)
    prefix = getattr(model, "base_model_prefix", "") or ""
    owners: dict[int, list[str]] = {}  # tensor identity -> names (tied weights share one)
    for name, tensor in expected.items():
        owners.setdefault(id(tensor), []).append(name)
    renamed = _has_conversions(model)
    for names in owners.values():
        shape = tuple(expected[names[0]].shape)
        found = [(n, tensors[k]) for n in names if (k := _stored(n, prefix, tensors))]
        for name, info in found:
            if info.shape != shape:
                raise InvalidModelFiles(
                    f"config.json does not match the weights: {name} has shape "
                    f"{list(info.shape)} in the weights, the config needs {list(shape)}")
        if not found and not renamed:
            raise InvalidModelFiles(f"the weights lack {names[0]}, which config.json needs")
    needed = sum(expected[names[0]].numel() for names in owners.values())
    held = sum(info.numel for info in tensors.values())
    if needed > held:
        raise InvalidModelFiles(f"config.json needs {needed} parameters, the weights hold "
                                f"{held}")
    # Buffers no checkpoint stores (position tables, causal masks) are sized by the config
    # alone: n_positions 2e7 made a 1.3 MB GPT-J allocate 3.5 GB at load.
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    if buffers > 4 * held + EXTRA_BUFFER_BYTES:  # as much as the weights in fp32, + slack
        raise InvalidModelFiles(f"config.json asks for {buffers} bytes of buffers (position "
                                f"tables, masks), more than the weights' {held} parameters "
                                "take")
    return str(model.config._attn_implementation)


def _tensor_table(files: ModelFiles) -> dict[str, TensorInfo]:
    table: dict[str, TensorInfo] = {}
    for name in files.weights:
        try:
            table.update(read_header(files.root / name))
        except ValueError as exc:
            raise InvalidModelFiles(f"{name}: {exc}") from None
    if not table:
        raise InvalidModelFiles("the weights hold no tensors")
    return table


def _stored(name: str, prefix: str, tensors: dict[str, TensorInfo]) -> str | None:
    """The checkpoint's name for a model tensor: as is, or without/with the base model's
    prefix (checkpoints of a base model load into a model with a head, and back)."""
    candidates = [name]
    if prefix:
        candidates += [name.removeprefix(prefix + "."), f"{prefix}.{name}"]
    return next((c for c in candidates if c in tensors), None)


def _has_conversions(model: torch.nn.Module) -> bool:
    try:
        from transformers.conversion_mapping import extract_weight_conversions_for_model
    except ImportError:  # an older transformers renames nothing beyond prefixes
        return False
    return bool(extract_weight_conversions_for_model(model))


def _meta_model(files: ModelFiles, tensor_count: int) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(files.root, trust_remote_code=False)
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise InvalidModelFiles(f"config.json cannot be read ({type(exc).__name__})") from None
    max_parameters = tensor_count + EXTRA_PARAMETERS
    max_modules = MODULES_PER_TENSOR * tensor_count + EXTRA_MODULES

    def build(attention: str) -> torch.nn.Module:
        # Each attempt with the whole budget: a failed one may have registered modules.
        with _bounded_construction(max_parameters, max_modules), torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=False,
                                                    attn_implementation=attention)

    try:
        try:
            return build(ATTENTION[0])
        except ValueError:  # e.g. "BloomForCausalLM does not support ... scaled_dot_product"
            return build(ATTENTION[1])  # on meta: a second try costs nothing
    except InvalidModelFiles:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as exc:
        raise InvalidModelFiles(f"config.json does not describe a model that can be built "
                                f"({type(exc).__name__})") from None


_counting = threading.local()


def _count(kind: str) -> None:
    limits: dict[str, int] | None = getattr(_counting, "limits", None)
    if limits is None:  # another thread building a module: not ours to count
        return
    limits[kind] -= 1
    if limits[kind] < 0:
        raise InvalidModelFiles(f"config.json asks for more {kind} than the weights hold")


def _on_parameter(module: torch.nn.Module, name: str, param: Any) -> None:
    _count("parameters")


def _on_module(module: torch.nn.Module, name: str, submodule: Any) -> None:
    _count("modules")


@contextmanager
def _bounded_construction(max_parameters: int, max_modules: int) -> Iterator[None]:
    """While building the model in this thread, count parameter and module registrations
    (torch's global registration hooks) and stop past the bounds: a config asking for
    10**6 layers is refused after a few hundred, without building them."""
    from torch.nn.modules import module as nn_module

    _counting.limits = {"parameters": max_parameters, "modules": max_modules}
    handles = [nn_module.register_module_parameter_registration_hook(_on_parameter),
               nn_module.register_module_module_registration_hook(_on_module)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        _counting.limits = None
