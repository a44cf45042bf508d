"""ALKN at real model scale on one accelerator: a random-initialised Llama of a real size
(`--size 1b`: Llama-3.2-1B's shape; `8b`: Llama-3.1-8B's), bf16 on a GPU, synthetic token
batches. Side by side in one run, the variants alternating round by round:

- plain fine-tuning: NLL, clip, AdamW;
- ALKN's first task: weighted NLL, clip, score + threshold + mask, AdamW (after its probing:
  soft labels and the mean retain gradient);

each step's median time, tokens/s and model FLOP utilisation (6 x parameters x tokens per
step over the device's peak, `--peak-tflops`), and the peak memory of each variant (CUDA's
max_memory_allocated, reset between variants). `--size tiny` runs on CPU as the suite's
smoke test (tests/test_bench_gpu.py).

    python bench/gpu.py --size 1b [--batch 8] [--seq 512] [--rounds 10]

Prints one JSON line per variant and the ratios:
`RATIO step alkn/plain = X`, `RATIO memory alkn/plain = Y`.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: alkn_core importable from the checkout

# Model shapes (Llama-3.x): hidden, intermediate, layers, heads, kv heads, vocab.
SIZES: dict[str, tuple[int, int, int, int, int, int]] = {
    "tiny": (64, 128, 2, 4, 2, 512),
    "1b": (2048, 8192, 16, 32, 8, 128256),
    "8b": (4096, 14336, 32, 32, 8, 128256),
}


def _model(size: str, device: Any, dtype: Any) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, layers, heads, kv, vocab = SIZES[size]
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                         max_position_embeddings=4096, tie_word_embeddings=size != "8b")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.to(dtype=dtype)


def _examples(n: int, seq: int, vocab: int, seed: int) -> list[Any]:
    """Synthetic items: random tokens, the second half of each one its answer."""
    import torch

    from alkn_core.data import IGNORE, Example

    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (seq,), generator=gen).tolist()
        out.append(Example(ids, [IGNORE] * (seq // 2) + ids[seq // 2:]))
    return out


def _peak(device: Any) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if device.type == "cuda" else None


def _variant(kind: str, args: argparse.Namespace, device: Any, dtype: Any) -> dict[str, Any]:
    """One variant from a fresh model: its step times and peak memory."""
    import torch

    from alkn_core.data import collate
    from alkn_core.methods import TaskContext, get_method
    from alkn_core.train import build_optimizer
    from bench.core_overhead import timed_step

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = _model(args.size, device, dtype)
    vocab = model.config.vocab_size
    forget = _examples(args.batch, args.seq, vocab, 1)
    impl = None
    if kind == "alkn":
        params = get_method("alkn").Params.parse({"batch_size": args.batch, "grad_accum": 1,
                                                  "max_length": args.seq})
        ctx = TaskContext(model=model, tokenizer=None, params=params, pad=0, device=device,
                          forget=forget, retain=_examples(args.batch, args.seq, vocab, 2),
                          general=None, state=None)
        impl = get_method("alkn")(ctx)
        impl.prepare()  # soft labels, the mean retain gradient, the score buffers
        forget = ctx.forget  # with their soft-label weights
    opt = build_optimizer(model, 1e-5, 0.01, impl.lr_scale() if impl else None)
    batch = collate(forget, 0, device)
    times = [timed_step(model, impl, opt, batch, r, args.rounds + 2)
             for r in range(args.rounds + 2)][2:]  # warm-up steps are not timed
    n_params = sum(p.numel() for p in model.parameters())
    step = statistics.median(times)
    tokens = args.batch * args.seq
    out = {"variant": kind, "size": args.size, "params": n_params, "device": str(device),
           "dtype": str(dtype).replace("torch.", ""), "batch": args.batch, "seq": args.seq,
           "step_s": step, "tokens_per_s": tokens / step,
           "mfu": 6 * n_params * tokens / step / (args.peak_tflops * 1e12)
           if args.peak_tflops else None,
           "peak_memory_bytes": _peak(device)}
    del model, opt, impl, batch
    gc.collect()
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    from alkn_core.runtime import pick_device, pick_dtype

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="1b")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's dense bf16 peak (H100/H200 SXM: 989); default: "
                         "989 on CUDA, none on CPU")
    args = ap.parse_args(argv)
    device = pick_device()
    dtype = pick_dtype(device)
    if args.peak_tflops is None and device.type == "cuda":
        args.peak_tflops = 989.0
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name()}", flush=True)
    rows = {kind: _variant(kind, args, device, dtype) for kind in ("plain", "alkn")}
    for row in rows.values():
        print(json.dumps(row), flush=True)
    print(f"RATIO step alkn/plain = {rows['alkn']['step_s'] / rows['plain']['step_s']:.2f}")
    plain_mem, alkn_mem = (rows[k]["peak_memory_bytes"] for k in ("plain", "alkn"))
    if plain_mem and alkn_mem:
        print(f"RATIO memory alkn/plain = {alkn_mem / plain_mem:.2f}")
    else:
        print("RATIO memory alkn/plain = n/a (CUDA only; bench/core_overhead.py measures "
              "CPU memory)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
