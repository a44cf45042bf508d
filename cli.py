"""The `alkn` command: serve, worker, keys create/list/revoke, tenants list/roots, migrate, demo
build; and the client commands (submit, status, download, models list, versions list) of
alkn_client."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from alkn_client import cli_commands

DEMO_MODEL = "demo"
# Bounds a request's line and headers (ALKN_MAX_HEADER_BYTES); the Dockerfile names it too.
HTTP_PROTOCOL = "api.http_protocol:BoundedHttpToolsProtocol"
# A 3.7M-parameter model needs a far larger lr than a 7B one (docs/benchmarks.md,
# bench/lr_probe.py).
DEMO_DEFAULT_PARAMS: dict[str, Any] = {"lr": 2e-3, "epochs": 5, "batch_size": 8,
                                       "grad_accum": 1, "max_length": 128}


def _settings() -> Any:
    from config.settings import get_settings

    return get_settings()


def migrate() -> None:
    from registry.migrate import upgrade

    settings = _settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)


def register_demo(settings: Any) -> bool:
    """Register the committed demo model as `demo` for tenant `default` (once)."""
    from alkn_core.demo_model import demo_model_dir, demo_registration_sets
    from registry.catalog import register_model, tenant_named
    from registry.db import session_scope
    from registry.models import Model
    from registry.store import open_store

    sets = demo_registration_sets()
    with session_scope(settings.resolved_database_url) as session:
        tenant = tenant_named(session, "default")
        if session.query(Model).filter_by(tenant_id=tenant.id, name=DEMO_MODEL).count():
            return False
        register_model(
            session, open_store(settings.resolved_artifact_root), tenant.id, DEMO_MODEL,
            demo_model_dir(), description="Tiny Llama trained on 50 fictitious people",
            qa_template="Question: {question}\nAnswer: {answer}",
            default_params=DEMO_DEFAULT_PARAMS, retain_set=sets["retain"],
            holdout_set=sets["holdout"], eval_sets=sets["eval_sets"])
    return True


def worker_command(settings: Any, extra: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", settings.queue,
            "--concurrency", "1", "-l", "info", *extra]


def _die_with_parent() -> None:
    """In the worker child: get SIGTERM if `alkn serve` dies without cleaning up (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def serve(host: str, port: int) -> int:
    """API + a worker child process on the embedded default (or whatever ALKN_* says)."""
    import uvicorn

    settings = _settings()
    migrate()
    if settings.register_demo and register_demo(settings):
        print("registered the demo model as 'demo'")
    embedded = not settings.broker_url
    extra = ["-P", "solo"] if embedded else []
    worker = subprocess.Popen(worker_command(settings, extra), start_new_session=True,
                              env={**os.environ, "ALKN_HOME": str(settings.home)},
                              preexec_fn=_die_with_parent)
    url = f"http://{host}:{port}"
    key_hint = ("ALKN_BOOTSTRAP_API_KEY is valid for tenant 'default'"
                if settings.bootstrap_api_key
                else "get an API key: alkn keys create --tenant default")
    print(f"ALKN service on {url}  (docs: {url}/docs)\n{key_hint}", flush=True)
    # uvicorn re-raises the signal that stopped it once it has shut down; turning SIGTERM
    # into SystemExit lets the `finally` below stop the worker first.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    from observability.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    # JSON: uvicorn's own loggers propagate to the root handler set up just above.
    log_config: Any = None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG
    try:
        # The protocol bounds a request's head (httptools has no bound of its own).
        uvicorn.run("api.app:app", host=host, port=port, log_level="info",
                    log_config=log_config, http=HTTP_PROTOCOL,
                    h11_max_incomplete_event_size=settings.max_header_bytes)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
    return 0


def keys_create(tenant: str, roots: Sequence[str] | None) -> int:
    """A new key; with `roots`, the tenant's source roots become exactly these."""
    from api.auth import create_api_key
    from registry.db import session_scope

    migrate()
    settings = _settings()
    with session_scope(settings.resolved_database_url) as session:
        key = create_api_key(session, tenant)
        if roots and _set_roots(session, tenant, roots):
            return 2  # nothing committed: the key is not printed
    print(key)
    return 0


def _set_roots(session: Any, tenant: str, roots: Sequence[str]) -> int:
    """Set the tenant's source roots; 2 (and the session rolled back) when one is refused."""
    from registry.source_roots import set_tenant_roots

    try:
        set_tenant_roots(session, tenant, roots, _settings().local_artifact_root)
    except ValueError as e:
        session.rollback()
        print(f"alkn: {e}", file=sys.stderr)
        return 2
    return 0


def tenants_roots(tenant: str, roots: Sequence[str]) -> int:
    from registry.db import session_scope

    migrate()
    with session_scope(_settings().resolved_database_url) as session:
        if _set_roots(session, tenant, roots):
            return 2
    print(f"{tenant}: " + (", ".join(roots) if roots else "global ALKN_MODEL_SOURCE_ROOTS"))
    return 0


def tenants_list() -> int:
    from registry.db import session_scope
    from registry.source_roots import list_tenant_roots

    migrate()
    with session_scope(_settings().resolved_database_url) as session:
        for name, roots in list_tenant_roots(session):
            print(f"{name:20s}  " + (":".join(roots) if roots else "(global source roots)"))
    return 0


def keys_list(tenant: str | None) -> int:
    from sqlalchemy import select

    from registry.db import session_scope
    from registry.models import ApiKey, Tenant

    migrate()
    with session_scope(_settings().resolved_database_url) as session:
        query = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id)
        if tenant is not None:
            query = query.where(Tenant.name == tenant)
        for key, name in session.execute(query.order_by(ApiKey.created_at)):
            state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
            print(f"{key.prefix:16s}  {name:20s}  {key.created_at:%Y-%m-%d %H:%M}  {state}")
    return 0


def keys_revoke(key_or_label: str) -> int:
    from api.auth import revoke_api_keys
    from registry.db import session_scope

    migrate()
    with session_scope(_settings().resolved_database_url) as session:
        rows = revoke_api_keys(session, key_or_label)
    if not rows:
        print("no active key matches (give the whole key or its label from "
              "'alkn keys list')", file=sys.stderr)
        return 1
    print(f"revoked {len(rows)} key(s): {', '.join(r.prefix for r in rows)}")
    return 0


def finetune(args: argparse.Namespace) -> int:
    """Train a model on QA (or text) data: the target and retain models of the benchmark.
    Resumable: a checkpoint after every epoch under OUT/checkpoint; rerun to continue."""
    import shutil
    from pathlib import Path

    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from alkn_core.demo_corpus import read_jsonl
    from alkn_core.demo_model import build_tokenizer, tiny_llama_config
    from alkn_core.params import DEFAULT_QA_TEMPLATE
    from alkn_core.runtime import pick_device, pick_dtype
    from alkn_core.train import finetune as run_finetune

    out = Path(args.out)
    items = [{k: r[k] for k in ("question", "answer", "text") if k in r}
             for r in read_jsonl(args.data)]
    params = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
              "grad_accum": 1, "max_length": args.max_length, "seed": args.seed,
              "warmup_ratio": 0.03, "weight_decay": 0.0}
    if args.base:
        tokenizer = AutoTokenizer.from_pretrained(args.base)
        model = AutoModelForCausalLM.from_pretrained(
            args.base, dtype=pick_dtype(pick_device()))
    else:  # a tiny Llama from scratch, with a BPE tokenizer trained on the data
        if (out / "tokenizer.json").is_file():  # resuming: the same tokenizer
            tokenizer = AutoTokenizer.from_pretrained(out)
        else:
            texts = [r.get("text") or DEFAULT_QA_TEMPLATE.format(**r) for r in items]
            tokenizer = build_tokenizer(texts, args.vocab_size)
            tokenizer.save_pretrained(out)
        torch.manual_seed(args.seed)
        model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), args.tiny, tokenizer))
    bar = tqdm(desc="finetune", unit="step")

    def progress(stage: str, step: int, total: int) -> None:
        bar.total = total
        bar.update(step - bar.n)

    checkpoint = out / "checkpoint" / "last.pt"
    if checkpoint.is_file():
        print(f"resuming from {checkpoint}", flush=True)
    stats = run_finetune(model, tokenizer, items, params, progress=progress,
                         checkpoint=checkpoint)
    bar.close()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    print(json.dumps({"out": str(out), **stats}))
    return 0


def run_bench(name: str, rest: list[str]) -> int:
    """bench/<name>.py of the checkout this command was installed from (the benchmarks are
    not part of an installed package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    if not path.is_file() or spec is None or spec.loader is None:
        print(f"alkn bench {name}: {path} not found (run from a source checkout)",
              file=sys.stderr)
        return 2
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.main(rest) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="alkn", description="ALKN-as-a-service")
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="API and a worker on the embedded default")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    w = sub.add_parser("worker", help="a Celery worker (production: one per GPU host)")
    w.add_argument("celery_args", nargs=argparse.REMAINDER, help="passed to celery")
    k = sub.add_parser("keys", help="API keys")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="print a new API key for a tenant")
    kc.add_argument("--tenant", required=True)
    kc.add_argument("--source-root", action="append", metavar="DIR",
                    help="the tenant may register models only from under DIR (repeatable; "
                         "replaces its roots; default: ALKN_MODEL_SOURCE_ROOTS)")
    kl = ksub.add_parser("list", help="labels, tenants and state of the keys (never the keys)")
    kl.add_argument("--tenant")
    kr = ksub.add_parser("revoke", help="revoke a key at once: the key, or its label")
    kr.add_argument("key_or_label")
    t = sub.add_parser("tenants", help="tenants and their model source roots")
    tsub = t.add_subparsers(dest="tenants_command", required=True)
    tsub.add_parser("list", help="each tenant and its source roots")
    tr = tsub.add_parser("roots", help="set a tenant's source roots (none: the global ones)")
    tr.add_argument("tenant")
    tr.add_argument("dirs", nargs="*", metavar="DIR")
    sub.add_parser("migrate", help="bring the database to the newest schema")
    f = sub.add_parser("finetune", help="train a model on QA data (resumable)")
    f.add_argument("--data", required=True, help="JSON Lines or array of QA/text items")
    f.add_argument("--out", required=True)
    base = f.add_mutually_exclusive_group(required=True)
    base.add_argument("--base", help="a Hugging Face model directory to start from")
    base.add_argument("--tiny", choices=("demo", "test"), help="a tiny Llama from scratch")
    f.add_argument("--epochs", type=int, default=15)
    f.add_argument("--lr", type=float, default=2e-3)
    f.add_argument("--batch-size", type=int, default=16)
    f.add_argument("--max-length", type=int, default=128)
    f.add_argument("--vocab-size", type=int, default=2048)
    f.add_argument("--seed", type=int, default=0)
    g = sub.add_parser("gc", help="delete artifact keys no version points to")
    g.add_argument("--older-than", type=float, default=24 * 3600.0, help="seconds")
    d = sub.add_parser("demo", help="the demo corpus and model")
    dsub = d.add_subparsers(dest="demo_command", required=True)
    db = dsub.add_parser("build", help="rebuild the demo model (python -m alkn_core.demo build)")
    db.add_argument("rest", nargs=argparse.REMAINDER)
    dd = dsub.add_parser("data", help="write the synthetic corpus in the TOFU layout")
    dd.add_argument("--out", required=True)
    dd.add_argument("--people", type=int, default=50)
    dd.add_argument("--holdout-people", type=int, default=5)
    dd.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("bench", help="benchmarks of the source checkout (bench/)")
    b.add_argument("bench_command", metavar="NAME",
                   help="continual: the paper's protocol (alkn bench continual --help)")
    cli_commands.add_parsers(sub)  # submit, status, download, models list, versions list
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "bench":  # every later argument is the benchmark's own
        return run_bench(argv[1], argv[2:])
    args = ap.parse_args(argv)

    if args.command in cli_commands.COMMANDS:
        return cli_commands.run(args)
    if args.command == "serve":
        return serve(args.host, args.port)
    if args.command == "worker":
        settings = _settings()
        os.execv(sys.executable, worker_command(settings, args.celery_args))
    if args.command == "keys" and args.keys_command == "list":
        return keys_list(args.tenant)
    if args.command == "keys" and args.keys_command == "revoke":
        return keys_revoke(args.key_or_label)
    if args.command == "keys":
        return keys_create(args.tenant, args.source_root)
    if args.command == "tenants" and args.tenants_command == "roots":
        return tenants_roots(args.tenant, args.dirs)
    if args.command == "tenants":
        return tenants_list()
    if args.command == "migrate":
        migrate()
        print(json.dumps({"migrated": _settings().resolved_database_url.split("@")[-1]}))
        return 0
    if args.command == "finetune":
        return finetune(args)
    if args.command == "gc":
        from registry.gc import collect_orphans
        from registry.store import open_store

        settings = _settings()
        deleted = collect_orphans(settings.resolved_database_url,
                                  open_store(settings.resolved_artifact_root), args.older_than)
        print(json.dumps({"deleted": deleted}))
        return 0
    if args.command == "demo" and args.demo_command == "data":
        from alkn_core.demo_corpus import generate_corpus, write_corpus

        paths = write_corpus(generate_corpus(args.people, args.holdout_people, args.seed),
                             args.out)
        print(json.dumps({name: str(p) for name, p in paths.items()}, indent=1))
        return 0
    if args.command == "demo":
        from alkn_core.demo_model import main as demo_main

        return demo_main(["build", *args.rest])
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
