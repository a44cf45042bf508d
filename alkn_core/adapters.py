"""LoRA: a fine-tune that trains low-rank factors instead of the weights (PEFT), merged back.

`attach(model, params)` (adapter "lora") gives every targeted layer trainable factors A
(r x in, seeded random) and B (out x r, zeros) and freezes everything else; the model stays
the same object and its forward uses W + (lora_alpha / r) B A. `Adapter.merge()` folds that
update into each W and restores the layers, so the model is again a plain `transformers`
model (same parameter names, same requires_grad) whose weights moved only by the low-rank
update: negation, the task vector and saving work on it as on a full fine-tune.
`Adapter.discard()` restores the layers without merging. With adapter "none" `attach`
returns None and `attached` does nothing.

Targets "all-linear": every linear layer (nn.Linear and GPT-2's Conv1D) except the output
head; or comma-separated module names (e.g. "q_proj,v_proj"). Functions touch nothing but the
model (the factors' initialisation uses a forked RNG).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

NONE, LORA = "none", "lora"


class Adapter:
    """LoRA factors attached to a model for one fine-tune."""

    def __init__(self, model: torch.nn.Module, params: Mapping[str, Any]) -> None:
        try:
            from peft import LoraConfig
            from peft.tuners.lora import LoraModel
        except ImportError as e:  # a dependency of the package: only a broken install
            raise RuntimeError("adapter 'lora' needs the peft package") from e
        targets = str(params["lora_targets"])
        config = LoraConfig(
            r=int(params["lora_rank"]), lora_alpha=float(params["lora_alpha"]),
            lora_dropout=0.0, bias="none",
            target_modules=(targets if targets == "all-linear"
                            else [t.strip() for t in targets.split(",") if t.strip()]))
        self.model = model
        self.requires_grad = {n: q.requires_grad for n, q in model.named_parameters()}
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # peft sets fan_in_fan_out for GPT-2's Conv1D itself, and warns that it does
            warnings.filterwarnings("ignore", message="fan_in_fan_out")
            torch.manual_seed(int(params["seed"]))
            try:
                self._tuner = LoraModel(model, config, "default")
            except ValueError as e:  # no module matched the targets
                raise ValueError(f"lora_targets {targets!r}: {e}") from None
        self._done = False

    def merge(self) -> None:
        """W += (lora_alpha / r) B A in every targeted layer; the layers restored."""
        self._finish(merge=True)

    def discard(self) -> None:
        """The layers restored, their weights as they were before `attach`."""
        self._finish(merge=False)

    def _finish(self, merge: bool) -> None:
        if self._done:
            return
        self._done = True
        with torch.no_grad():
            if merge:
                self._tuner.merge_and_unload()
            else:
                self._tuner.unload()
        if hasattr(self.model, "peft_config"):  # left by peft: not the model's own
            del self.model.peft_config
        for name, q in self.model.named_parameters():
            q.requires_grad_(self.requires_grad.get(name, q.requires_grad))


def attach(model: torch.nn.Module, params: Mapping[str, Any]) -> Adapter | None:
    """LoRA factors on `model` for adapter "lora"; None for adapter "none"."""
    return Adapter(model, params) if params.get("adapter", NONE) == LORA else None


@contextmanager
def attached(model: torch.nn.Module, params: Mapping[str, Any]) -> Iterator[Adapter | None]:
    """`attach` for a block: merged at its end, discarded if it raises."""
    adapter = attach(model, params)
    try:
        yield adapter
    except BaseException:
        if adapter is not None:
            adapter.discard()
        raise
    if adapter is not None:
        adapter.merge()
