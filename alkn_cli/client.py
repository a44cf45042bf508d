"""The client commands of `alkn`, over HTTP with alkn_client: submit, status, download, models
list, versions list, and (manage.py) revoke, alias set/delete, cancel, jobs list/show.

Server and key: `--url` / `--api-key`, else $ALKN_URL (default http://127.0.0.1:8000) and
$ALKN_API_KEY. API errors print the problem document's detail, never a traceback.
Exit codes: 0 ok; 1 an API or network error, or a request that ended failed/cancelled;
2 a usage error (bad items file, no key); 3 (`status`) a request that succeeded but whose
version did not pass the quality gate (published all the same); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import httpx

from alkn_client import DEFAULT_URL, Client
from alkn_client.errors import AlknClientError, ApiError
from alkn_client.models import ForgetRequest, JobEvent

from . import manage
from .output import dump, human_size, opt, table, when

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_QUALITY = 3


class UsageError(Exception):
    """A mistake in the command line or its files (exit 2)."""


def add_parsers(sub: Any) -> None:
    """Add the client subcommands to `alkn`'s subparsers (`ap.add_subparsers()`)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None,
                        help=f"service URL (default: $ALKN_URL or {DEFAULT_URL})")
    common.add_argument("--api-key", default=None, help="API key (default: $ALKN_API_KEY)")

    s = sub.add_parser("submit", parents=[common], help="submit a forget request")
    s.add_argument("model")
    s.add_argument("--items", required=True,
                   help="JSON Lines file of items ({question, answer} or {text}); "
                        "a JSON array works too; '-' reads stdin")
    s.add_argument("--method", default=None, help="alkn (default), task_vector, grad_ascent, "
                                                   "grad_diff, npo, npo_gd")
    s.add_argument("--params", default=None, help='method parameters as JSON, e.g. '
                                                  '\'{"epochs": 2}\'')
    s.add_argument("--base-version", type=int, default=None)
    s.add_argument("--idempotency-key", default=None,
                   help="a retry with the same key and items returns the same request")
    s.add_argument("--id-only", action="store_true", help="print only the request id")
    s.set_defaults(handler=run)

    st = sub.add_parser("status", parents=[common], help="a forget request's status")
    st.add_argument("request_id")
    st.add_argument("--watch", action="store_true",
                    help="a live progress bar until it finishes; exit 0 only if succeeded "
                         "and its version passed the quality gate (3 if it did not)")
    st.add_argument("--interval", type=float, default=2.0,
                    help="longest delay between polls with --watch (seconds)")
    st.set_defaults(handler=run)

    d = sub.add_parser("download", parents=[common],
                       help="download a version's files (resumes, checks sha256)")
    d.add_argument("model")
    d.add_argument("ref", help="version number, 'latest' or an alias")
    d.add_argument("dest", help="directory to write the files into")
    d.add_argument("--retries", type=int, default=3,
                   help="resume this many times after a dropped connection")
    d.set_defaults(handler=run)

    m = sub.add_parser("models", help="registered models")
    msub = m.add_subparsers(dest="models_command", required=True)
    ml = msub.add_parser("list", parents=[common], help="list the models")
    ml.add_argument("--json", action="store_true", help="JSON Lines instead of a table")
    ml.set_defaults(handler=run)

    v = sub.add_parser("versions", help="versions of a model")
    vsub = v.add_subparsers(dest="versions_command", required=True)
    vl = vsub.add_parser("list", parents=[common], help="list a model's versions")
    vl.add_argument("model")
    vl.add_argument("--json", action="store_true", help="JSON Lines instead of a table")
    vl.set_defaults(handler=run)
    manage.add_parsers(sub, common, run)


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run a client subcommand; problems become one readable line on stderr and an exit
    code, never a traceback."""
    out = out or sys.stdout
    err = err or sys.stderr
    handlers: dict[str, Callable[[Client, argparse.Namespace, TextIO, TextIO], int]] = {
        "submit": _submit, "status": _status, "download": _download,
        "models": _models_list, "versions": _versions_list, **manage.HANDLERS}
    url = args.url or os.environ.get("ALKN_URL") or DEFAULT_URL
    try:
        key = args.api_key or os.environ.get("ALKN_API_KEY")
        if not key:
            raise UsageError("no API key: set ALKN_API_KEY or pass --api-key "
                             "(create one with: alkn keys create --tenant NAME)")
        with Client(url, key) as client:
            return handlers[args.command](client, args, out, err)
    except (UsageError, manage.NotConfirmed) as e:
        print(f"alkn: {e}", file=err)
        return EXIT_USAGE
    except ApiError as e:
        print(f"alkn: {e}", file=err)
        for problem in e.errors:  # each validation failure, unless the detail said it all
            msg = str(problem.get("msg", ""))
            if len(e.errors) > 1 or msg not in e.detail:
                loc = ".".join(str(p) for p in problem.get("loc", []))
                print(f"  {loc}: {msg}", file=err)
        return EXIT_FAILED
    except AlknClientError as e:
        print(f"alkn: {e}", file=err)
        return EXIT_FAILED
    except httpx.TransportError as e:
        print(f"alkn: cannot talk to {url}: {type(e).__name__}: {e}", file=err)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("alkn: interrupted", file=err)
        return 130


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def read_items(path: str) -> list[dict[str, Any]]:
    """JSON Lines (one item per line, blank lines skipped) or one JSON array."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}: invalid JSON: {e}") from None
    else:
        items = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UsageError(f"{path} line {number}: invalid JSON: {e.msg}") from None
    if not items or not all(isinstance(i, dict) for i in items):
        raise UsageError(f"{path}: expected JSON objects, one item per line")
    return items


def _json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{option}: invalid JSON: {e.msg}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{option}: expected a JSON object")
    return value


def _submit(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    items = read_items(args.items)
    params = _json_object(args.params, "--params") if args.params else None
    # None values are left out of the body (the server's defaults apply).
    req = client.submit(args.model, items, method=args.method, params=params,
                        base_version=args.base_version, idempotency_key=args.idempotency_key)
    if args.id_only:
        print(req.id, file=out)
    else:
        dump(req.model_dump(mode="json"), out)
    return 0


def _outcome(req: ForgetRequest) -> int:
    return 0 if req.status == "succeeded" else EXIT_FAILED


def _quality_outcome(client: Client, req: ForgetRequest, err: TextIO) -> int:
    """EXIT_QUALITY, with a line saying why, when the request's version did not pass the
    quality gate (its job's `quality`); 0 otherwise (also from a server without the gate)."""
    if req.status != "succeeded" or req.job_id is None:
        return 0
    quality = client.get_job(req.job_id).quality
    if not quality or quality.get("passed") is not False:
        return 0
    message = quality.get("message") or f"reasons: {', '.join(quality.get('reasons') or [])}"
    print(f"alkn: {req.model} version {req.result_version}: {message}", file=err)
    return EXIT_QUALITY


def _duration(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s} s" if s < 90 else f"{round(s / 60)} min" if s < 5400 else f"{s / 3600:.1f} h"


def _event_label(event: JobEvent) -> str:
    phase = event.data.get("phase")
    return f"{event.stage} ({phase})" if phase else event.stage


def _status(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if not args.watch:
        req = client.get_request(args.request_id)
        dump(req.model_dump(mode="json"), out)
        return (_outcome(req) or _quality_outcome(client, req, err)) if req.finished else 0
    from tqdm import tqdm  # only the bars need it

    bar = tqdm(total=None, unit="step", file=err, dynamic_ncols=True, desc="waiting")
    seen: list[str] = []

    def show(req: ForgetRequest) -> None:
        p = req.progress
        # "evaluating (before)" / "(after)" from a server that labels them
        stage = p.label or p.stage or req.status
        total = p.total_steps or None
        step = p.step or 0
        # A new stage, or the same stage counting again (an older server's two evaluations).
        if seen[-1:] != [stage] or step < bar.n or total != bar.total:
            seen.append(stage)
            bar.set_description(stage, refresh=False)
            # reset() draws the bar at once: with the last stage's `initial` still set it showed
            # a negative rate and time ("0/150 [00:00<-00:00, -329552.46step/s]")
            bar.initial = 0
            bar.total = total  # reset() keeps the last total when given None
            bar.reset(total=total)
            # steps done before we looked do not count as a rate
            bar.initial = bar.n = bar.last_print_n = step
        if p.fraction is not None:
            eta = f", ~{_duration(p.eta_seconds)} left" if p.eta_seconds is not None else ""
            bar.set_postfix_str(f"job {p.fraction:.0%}{eta}", refresh=False)
        bar.update(step - bar.n)
        bar.refresh()

    try:
        # No deadline: watching ends when the request does (or on Ctrl-C).
        req = client.wait(args.request_id, timeout=math.inf, poll=min(0.5, args.interval),
                          max_poll=args.interval, on_update=show)
    finally:
        bar.close()
    if req.job_id is not None:
        # A fast job passes stages between two polls: its event log says what the bar missed.
        labels = [_event_label(e) for e in client.iter_job_events(req.job_id)]
        stages = [x for i, x in enumerate(labels) if i == 0 or x != labels[i - 1]]
        if stages:
            print("stages: " + " -> ".join(stages), file=err)
    summary = f"{req.status}"
    if req.result_version is not None:
        summary += f": {req.model} version {req.result_version}"
    if req.error is not None:
        summary += f": {req.error.type}: {req.error.message}"
    print(summary, file=err)
    dump(req.model_dump(mode="json"), out)
    return _outcome(req) or _quality_outcome(client, req, err)


def _download(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from tqdm import tqdm

    from alkn_client._download import DownloadProgress

    bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, file=err,
               dynamic_ncols=True, desc=f"{args.model}@{args.ref}")
    current: list[str] = []

    def progress(p: DownloadProgress) -> None:
        if bar.total != p.total_size:
            bar.total = p.total_size
        if current[-1:] != [p.path]:
            current.append(p.path)
            bar.set_postfix_str(p.path, refresh=False)
        bar.update(p.total_done - bar.n)

    try:
        result = client.download(args.model, args.ref, args.dest, progress=progress,
                                 retries=args.retries)
    finally:
        bar.close()
    resumed = [f.path for f in result.files if f.resumed_from]
    kept = [f.path for f in result.files if f.skipped]
    line = (f"{result.model} version {result.version}: {len(result.files)} files, "
            f"{human_size(result.size)} in {result.dest} (sha256 verified)")
    if resumed:
        line += f"; resumed {', '.join(resumed)}"
    if kept:
        line += f"; {len(kept)} already complete"
    print(line, file=out)
    return 0


def _models_list(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    rows = []
    for m in client.iter_models():
        if args.json:
            print(json.dumps(m.model_dump(mode="json")), file=out)
        rows.append([m.name, opt(m.latest_version),
                     ",".join(f"{a}={n}" for a, n in sorted(m.aliases.items())) or "-",
                     when(m.created_at), m.description.splitlines()[0] if m.description else ""])
    if not args.json:
        table(["NAME", "LATEST", "ALIASES", "CREATED", "DESCRIPTION"], rows, out)
    return 0


def _versions_list(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    model = client.get_model(args.model)  # aliases are on the model
    by_version: dict[int, list[str]] = {}
    for alias, number in model.aliases.items():
        by_version.setdefault(number, []).append(alias)
    rows = []
    for v in client.iter_versions(args.model):
        if args.json:
            print(json.dumps(v.model_dump(mode="json")), file=out)
        aliases = ",".join(sorted(by_version.get(v.version, []))) or "-"
        rows.append([str(v.version), v.status, opt(v.parent_version), v.method or "-",
                     human_size(v.size_bytes), aliases, when(v.created_at)])
    if not args.json:
        table(["VERSION", "STATUS", "PARENT", "METHOD", "SIZE", "ALIASES", "CREATED"], rows,
               out)
    return 0
