"""What ALKN costs over plain fine-tuning, measured side by side in one run.

1. Time of one optimiser step on the same batch: plain fine-tuning (NLL, clip, AdamW) vs
   ALKN (weighted NLL, clip, score + threshold + mask, AdamW) in its first task (thresholds
   recomputed every step) and in a later task (previous-mask penalty, reused thresholds).
   The variants alternate round by round so machine noise hits them alike; medians.
2. Peak memory of a whole task (plain fine-tuning vs ALKN vs task_vector), each in a fresh
   child process, from before the model is loaded to the end of the task: on CUDA
   torch.cuda.max_memory_allocated, on CPU the peak of malloc's bytes in use.

    python bench/core_overhead.py [--model DIR] [--data DIR] [--rounds 20]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TARGET_STEP = 1.3
TARGET_MEMORY = 2.0


def _load(model_dir: str, data_dir: str, n_forget: int) -> tuple[Any, Any, list, list]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alkn_core.demo_corpus import read_jsonl
    from alkn_core.runtime import pick_device, pick_dtype

    device = pick_device()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=pick_dtype(device)).to(device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    forget = read_jsonl(Path(data_dir) / "forget10.json")[:n_forget]
    retain = read_jsonl(Path(data_dir) / "retain90.json")[: 4 * n_forget]
    return model, tokenizer, forget, retain


def _params(batch_size: int) -> dict[str, Any]:
    return {"lr": 1e-3, "epochs": 1, "batch_size": batch_size, "grad_accum": 1,
            "max_length": 128}


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def step_times(args: argparse.Namespace) -> dict[str, float]:
    import torch

    from alkn_core.data import collate, encode_items, pad_id
    from alkn_core.methods import TaskContext, get_method
    from alkn_core.state import UnlearnState
    from alkn_core.train import build_optimizer

    model, tok, forget, retain = _load(args.model, args.data, args.forget)
    device = next(model.parameters()).device
    pad = pad_id(tok)
    p = get_method("alkn").Params.parse(_params(args.batch_size))
    f_ex = encode_items(forget, tok, p)
    r_ex = encode_items(retain, tok, p)

    def alkn_impl(m: torch.nn.Module, state: UnlearnState | None, score_dtype: str | None = None
                  ) -> Any:
        params = p.replace(score_dtype=score_dtype) if score_dtype else p
        ctx = TaskContext(model=m, tokenizer=tok, params=params, pad=pad, device=device,
                          forget=copy.deepcopy(f_ex), retain=r_ex, general=None, state=state)
        impl = get_method("alkn")(ctx)
        impl.prepare()
        return impl

    # A later-task state: the first task's mask and thresholds, from a real first task.
    first = alkn_impl(copy.deepcopy(model), None)
    first.grad_hook(0, 2)
    later_state = first.finish()
    del first

    variants: dict[str, dict[str, Any]] = {}
    # Other score dtypes (--score-dtypes) alternate in the same rounds, named by their dtype.
    names = [("plain", None), ("alkn_first_task", None), ("alkn_later_task", None)] + [
        (f"{task}[{dt}]", dt) for dt in args.score_dtypes
        for task in ("alkn_first_task", "alkn_later_task")]
    for name, dtype in names:
        m = copy.deepcopy(model)
        impl = None
        if name != "plain":
            impl = alkn_impl(m, None if name.startswith("alkn_first_task") else later_state,
                             dtype)
            batch_examples = impl.ctx.forget[: args.batch_size]  # carry the soft-label weights
        else:
            batch_examples = f_ex[: args.batch_size]
        scale = impl.lr_scale() if impl else None
        variants[name] = {"model": m, "impl": impl, "opt": build_optimizer(m, 1e-5, 0.01, scale),
                          "batch": collate(batch_examples, pad, device), "times": []}
    for r in range(args.rounds + 2):
        for v in variants.values():
            seconds = timed_step(v["model"], v["impl"], v["opt"], v["batch"], r,
                                 args.rounds + 2)
            if r >= 2:  # warm-up rounds are not timed
                v["times"].append(seconds)
    return {n: statistics.median(v["times"]) for n, v in variants.items()}


def timed_step(model: Any, impl: Any, opt: Any, batch: dict[str, Any], step: int,
               total: int) -> float:
    """One optimiser step, plain (`impl` None: NLL) or a method's (its loss and gradient
    hook), synchronised on CUDA; its seconds."""
    import torch

    from alkn_core.losses import nll

    _sync()
    t = time.perf_counter()
    loss = impl.loss(model, batch, None) if impl else nll(model, batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
    if impl:
        impl.grad_hook(step, total)
    opt.step()
    opt.zero_grad(set_to_none=True)
    _sync()
    return time.perf_counter() - t


class HeapPeak:
    """Peak of the bytes malloc has handed out (glibc mallinfo2: heap + mmapped), polled
    every 0.5 ms by a thread (torch's kernels release the GIL). Unlike the resident set size
    it is not hidden by what the imports already touched."""

    def __init__(self) -> None:
        import ctypes
        import threading

        class MallInfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                "uordblks", "fordblks", "keepcost")]

        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        self._info = libc.mallinfo2
        self._stop = threading.Event()
        self.base = self.now()
        self.peak = self.base
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def now(self) -> int:
        info = self._info()
        return int(info.uordblks + info.hblkhd)

    def _poll(self) -> None:
        while not self._stop.wait(0.0005):
            self.peak = max(self.peak, self.now())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.now()) - self.base


# What a memory child runs: plain fine-tuning, or a method with extra params.
MEMORY_KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("plain", {}), "alkn": ("alkn", {}), "task_vector": ("task_vector", {}),
    "alkn+lora": ("alkn", {"adapter": "lora"})}


def memory_child(kind: str, args: argparse.Namespace) -> None:
    """Run one whole task and print its peak memory in bytes (JSON on stdout)."""
    import torch
    import transformers  # noqa: F401  (imports are not part of a task's memory)

    heap = None if torch.cuda.is_available() else HeapPeak()
    model, tok, forget, retain = _load(args.model, args.data, args.forget)
    if heap is not None:
        # from_pretrained maps the safetensors file: the weights' pages (copied on write by the
        # first optimiser step) are not malloc's, so the heap missed 4 B/param of every method.
        # Owned copies count them, as a GPU's allocator does.
        with torch.no_grad():
            for q in model.parameters():
                q.data = q.data.clone()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    method, extra = MEMORY_KINDS[kind]
    params = {**_params(args.batch_size), **extra}
    if method == "plain":
        from alkn_core.train import finetune

        finetune(model, tok, forget, params)
    else:
        from alkn_core import unlearn

        # A fixed alpha: alpha "auto" adds forward passes only, no memory held beyond them.
        unlearn(model, tok, forget, retain, method=method, params={**params, "alpha": 1.0})
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated()
    else:
        assert heap is not None
        peak = heap.stop()
    print(json.dumps({"kind": kind, "peak_bytes": peak}))


def memory(args: argparse.Namespace, kinds: tuple[str, ...] = ("plain", "alkn", "task_vector")
           ) -> dict[str, int]:
    out = {}
    for kind in kinds:
        cmd = [sys.executable, __file__, "--memory-child", kind, "--model", args.model,
               "--data", args.data, "--forget", str(args.forget),
               "--batch-size", str(args.batch_size)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[kind] = json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"]
    return out


def main() -> int:
    from alkn_core.demo_model import demo_data_dir, demo_model_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(demo_model_dir()))
    ap.add_argument("--data", default=str(demo_data_dir()))
    ap.add_argument("--forget", type=int, default=64, help="forget items of the task")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--memory-child", choices=list(MEMORY_KINDS))
    ap.add_argument("--score-dtypes", default="",
                    help="also time ALKN's step with these score_dtype values (comma list)")
    args = ap.parse_args()
    args.score_dtypes = [d for d in args.score_dtypes.split(",") if d]
    if args.memory_child:
        memory_child(args.memory_child, args)
        return 0

    import torch

    n_params = sum(p.numel() for p in _load(args.model, args.data, 1)[0].parameters())
    print(f"model {args.model}: {n_params / 1e6:.2f}M parameters, device "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}, batch {args.batch_size}")
    times = step_times(args)
    print(f"\noptimiser step (median of {args.rounds} rounds, same batch)")
    for name, t in times.items():
        print(f"  {name:26s} {t * 1000:8.1f} ms   {t / times['plain']:.2f}x plain")
    mem = memory(args)
    print(f"\npeak memory of one task ({args.forget} forget items, 1 epoch)")
    for name, b in mem.items():
        print(f"  {name:16s} {b / 2**20:8.1f} MiB   {b / mem['plain']:.2f}x plain")
    step_ratio = max(times["alkn_first_task"], times["alkn_later_task"]) / times["plain"]
    mem_ratio = mem["alkn"] / mem["plain"]
    print(f"\nRATIO step alkn/plain = {step_ratio:.2f} (target <= {TARGET_STEP})")
    print(f"RATIO memory alkn/plain = {mem_ratio:.2f} (target <= {TARGET_MEMORY})")
    ok = step_ratio <= TARGET_STEP and mem_ratio <= TARGET_MEMORY
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
