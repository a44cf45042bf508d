"""What each method holds in memory, per parameter and by component, and what that means at
1B, 8B and 70B parameters; with the peak measured on a model of at least 29M parameters.

1. The memory model: bytes per parameter of each component a task holds on the device in
   its two peak phases, for fp32 weights (CPU) and bf16 weights (GPU). Training: weights,
   gradients, AdamW's two moments (torch keeps them in the parameter's dtype), and beyond
   plain fine-tuning ALKN's score and mean retain gradient (bf16 by default, `score_dtype`)
   and the previous tasks' mask (a bool per parameter, later tasks); with adapter "lora"
   (alkn+lora) the weights stay frozen and all of that is held for the LoRA factors only.
   The repair after
   negation: weights, gradients, its own AdamW. Parked off the device (offload.py, `offload:
   auto`) and listed apart: the base snapshot (theta_t), the task vector and the repair's two
   snapshots (the negated model, the forget guard's undo; the repaired one, where the guard
   and relax start from); with `offload: memory` they count on the device again.
2. Measured: the peak of a whole task of plain fine-tuning, ALKN, task_vector and ALKN
   with adapter "lora" (r=8) on the same model (each in a fresh process:
   bench/core_overhead.py's measurement, malloc's bytes on CPU with the weights copied out
   of the mapped safetensors file so that they count as on a GPU, CUDA's max_memory_allocated
   on a GPU), by default a random-initialised Llama of 30M parameters built here with the
   demo tokenizer.
3. Projections: the model's bytes at 1B, 8B and 70B parameters in bf16, activations left
   out (they depend on batch and length, and are the same for every method).

    python bench/memory.py [--model DIR] [--forget 64] [--batch-size 16]

Last line: `RATIO memory alkn/plain = X` (measured).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: bench.* importable

TARGET = 1.3
FP32, BF16 = 4, 2
# Component -> (methods that hold it, bytes per parameter by weight width w). Two phases
# peak: training (the forget fine-tune) and, for the negating methods, the repair after
# negation (its own AdamW, the task vector and the snapshots its guard, relax and shrink need).
# adapter "lora" (alkn+lora): the weights are frozen; the factors (r (in + out) per r x in
# and out x r pair: 0.3-0.4% of a 1B-70B Llama's parameters at r=8) hold their fp32 copy,
# gradient, AdamW moments, score, retain gradient and mask, ~21 B each: under 0.1 B per
# model parameter.
LORA_BYTES = "0.1"
TRAINING: list[tuple[str, tuple[str, ...], str]] = [
    ("weights", ("plain", "task_vector", "alkn", "alkn+lora"), "w"),
    ("gradients", ("plain", "task_vector", "alkn"), "w"),
    ("AdamW moments (2)", ("plain", "task_vector", "alkn"), "2w"),
    ("ALKN score (bf16)", ("alkn",), "2"),
    ("ALKN mean retain gradient (bf16)", ("alkn",), "2"),
    ("ALKN previous mask (bool, later tasks)", ("alkn",), "1"),
    ("LoRA factors with all of the above (r=8)", ("alkn+lora",), LORA_BYTES),
]
REPAIR: list[tuple[str, tuple[str, ...], str]] = [
    ("weights", ("task_vector", "alkn", "alkn+lora"), "w"),
    ("gradients", ("task_vector", "alkn"), "w"),
    ("repair AdamW moments (2)", ("task_vector", "alkn"), "2w"),
    ("LoRA factors, gradients, AdamW (r=8)", ("alkn+lora",), LORA_BYTES),
]
# Read a few times per task, never per step: parked off the device (`offload: auto`: CPU
# memory beside a GPU, a memory-mapped file on the CPU; on the device with offload=memory).
# At most three at once: the base and tau while calibrating (and an escalation's retry), tau
# and the two snapshots while repairing.
PARKED_AT_ONCE = 3
PARKED: list[tuple[str, tuple[str, ...], str]] = [
    ("base snapshot (theta_t; until negation)", ("task_vector", "alkn", "alkn+lora"), "w"),
    ("task vector tau", ("task_vector", "alkn", "alkn+lora"), "w"),
    ("negated snapshot (the guard's undo)", ("task_vector", "alkn", "alkn+lora"), "w"),
    ("repaired snapshot (guard, relax, shrink)", ("task_vector", "alkn", "alkn+lora"), "w"),
]
PHASES = {"training": TRAINING, "repair": REPAIR}
METHODS = ("plain", "task_vector", "alkn", "alkn+lora")
SIZES = {"1B": 1e9, "8B": 8e9, "70B": 70e9}
GPUS = {"24 GB": 24, "80 GB": 80, "141 GB (H200)": 141}


def _bytes(spec: str, w: int) -> float:
    return {"w": w, "2w": 2 * w}.get(spec) or float(spec)


def phase_bytes(phase: list[tuple[str, tuple[str, ...], str]], w: int) -> dict[str, float]:
    return {m: sum(_bytes(spec, w) for _, holders, spec in phase if m in holders)
            for m in METHODS}


def per_param(w: int) -> dict[str, float]:
    """Bytes per parameter of each method at its peak (the larger phase), width `w`."""
    phases = [phase_bytes(p, w) for p in PHASES.values()]
    return {m: max(p[m] for p in phases) for m in METHODS}


def table(w: int) -> list[str]:
    lines = []
    for phase, components in PHASES.items():
        lines.append(f"{phase + ': component':42s}" + "".join(f"{m:>13s}" for m in METHODS))
        for name, holders, spec in components:
            b = _bytes(spec, w)
            lines.append(f"  {name:40s}" + "".join(f"{(b if m in holders else 0):>13.1f}"
                                                   for m in METHODS))
        totals = phase_bytes(components, w)
        lines.append(f"  {'total bytes per parameter':40s}" + "".join(
            f"{totals[m]:>13.1f}" for m in METHODS))
    lines.append(f"{'parked off the device: component':42s}" + "".join(f"{m:>13s}"
                                                                      for m in METHODS))
    for name, holders, spec in PARKED:
        b = _bytes(spec, w)
        lines.append(f"  {name:40s}" + "".join(f"{(b if m in holders else 0):>13.1f}"
                                               for m in METHODS))
    peak = per_param(w)
    lines.append(f"{'peak bytes per parameter':42s}" + "".join(f"{peak[m]:>13.1f}"
                                                                for m in METHODS))
    lines.append(f"{'x plain':42s}" + "".join(f"{peak[m] / peak['plain']:>13.2f}"
                                               for m in METHODS))
    return lines


def projections() -> list[str]:
    totals = per_param(BF16)
    lines = [f"{'bf16 weights':14s}" + "".join(f"{m:>13s}" for m in METHODS)
             + "   fits on one GPU: ALKN / ALKN+LoRA"]
    for size, n in SIZES.items():
        gb = {m: totals[m] * n / 1e9 for m in METHODS}
        fits = [next((g for g, cap in GPUS.items() if gb[m] <= cap), "none (shard it)")
                for m in ("alkn", "alkn+lora")]
        lines.append(f"{size:14s}" + "".join(f"{gb[m]:>10.0f} GB" for m in METHODS)
                     + f"   {fits[0]} / {fits[1]}")
    parked = PARKED_AT_ONCE * BF16
    lines.append(f"host memory (or disk) for the parked tensors (at most {PARKED_AT_ONCE} at "
                 f"once): {parked} B/param = "
                 + ", ".join(f"{size} {parked * n / 1e9:.0f} GB" for size, n in SIZES.items()))
    return lines


def random_llama(out: Path, hidden: int, inter: int, layers: int) -> Path:
    """A random-initialised Llama with the demo tokenizer, saved as a model directory."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from alkn_core.demo_model import demo_model_dir

    tok = AutoTokenizer.from_pretrained(demo_model_dir())
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=8,
                         num_key_value_heads=8, max_position_embeddings=512,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    from alkn_core.demo_model import demo_data_dir
    from bench import core_overhead

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: a random 30M-parameter Llama")
    ap.add_argument("--data", default=str(demo_data_dir()))
    ap.add_argument("--forget", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--measure", default="plain,alkn,task_vector,alkn+lora",
                    help="what to measure (plain and alkn at least: the RATIO line)")
    ap.add_argument("--size", choices=["30m", "tiny"], default="30m",
                    help="the random model's size (tiny: the suite's smoke test)")
    args = ap.parse_args(argv)
    kinds = args.measure.split(",")
    if not {"plain", "alkn"} <= set(kinds) <= set(core_overhead.MEMORY_KINDS):
        ap.error(f"--measure: plain and alkn, and any of {sorted(core_overhead.MEMORY_KINDS)}")

    print("memory model: bytes per parameter in a task's two peak phases, fp32 weights (CPU)")
    print("\n".join(table(FP32)))
    print("\nbf16 weights (GPU)")
    print("\n".join(table(BF16)))
    print("\nprojections, bf16, without activations")
    print("\n".join(projections()))

    with tempfile.TemporaryDirectory(prefix="alkn-memory-") as tmp:
        if args.model is None:
            shape = (640, 1792, 6) if args.size == "30m" else (64, 128, 2)
            args.model = str(random_llama(Path(tmp) / "model", *shape))
        n_params = sum(p.numel() for p in
                       core_overhead._load(args.model, args.data, 1)[0].parameters())
        measured = core_overhead.memory(args, tuple(kinds))
    plain = measured["plain"]
    print(f"\nmeasured peak of one task ({args.forget} forget items, 1 epoch), model of "
          f"{n_params / 1e6:.1f}M parameters")
    for name, b in measured.items():
        print(f"  {name:12s} {b / 2**20:9.1f} MiB   {b / n_params:6.1f} B/param   "
              f"{b / plain:.2f}x plain")
    model_ratio = per_param(FP32)["alkn"] / per_param(FP32)["plain"]
    ratio = measured["alkn"] / plain
    print(f"\nmemory model alkn/plain (fp32, no activations) = {model_ratio:.2f}")
    print(f"RATIO memory alkn/plain = {ratio:.2f} (target <= {TARGET})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
