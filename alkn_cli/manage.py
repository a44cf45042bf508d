"""The client commands that change or inspect what the service holds: `revoke`, `alias
set/delete`, `cancel`, `jobs list/show`. They share the client commands' options, errors and
exit codes (alkn_cli/client.py runs them)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any, TextIO

from alkn_client import Client

from .output import dump, opt, table, when

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def add_parsers(sub: Any, common: argparse.ArgumentParser,
                handler: Callable[..., int]) -> None:
    r = sub.add_parser("revoke", parents=[common],
                       help="revoke a version: its files are deleted, its row stays")
    r.add_argument("model")
    r.add_argument("ref", help="version number, 'latest' or an alias")
    r.add_argument("--yes", action="store_true",
                   help="really delete the version's files (nothing is done without it)")
    r.set_defaults(handler=handler)

    a = sub.add_parser("alias", help="aliases of a model's versions")
    asub = a.add_subparsers(dest="alias_command", required=True)
    aset = asub.add_parser("set", parents=[common], help="point an alias at a ready version")
    aset.add_argument("model")
    aset.add_argument("alias")
    aset.add_argument("version", type=int)
    aset.set_defaults(handler=handler)
    adel = asub.add_parser("delete", parents=[common], help="delete an alias")
    adel.add_argument("model")
    adel.add_argument("alias")
    adel.set_defaults(handler=handler)

    c = sub.add_parser("cancel", parents=[common], help="cancel a forget request")
    c.add_argument("request_id")
    c.set_defaults(handler=handler)

    j = sub.add_parser("jobs", help="the unlearning jobs")
    jsub = j.add_subparsers(dest="jobs_command", required=True)
    jl = jsub.add_parser("list", parents=[common], help="list jobs, oldest first")
    jl.add_argument("--model", default=None)
    jl.add_argument("--status", default=None, choices=STATUSES)
    jl.add_argument("--json", action="store_true", help="JSON Lines instead of a table")
    jl.set_defaults(handler=handler)
    js = jsub.add_parser("show", parents=[common], help="one job (and its events)")
    js.add_argument("job_id")
    js.add_argument("--events", action="store_true", help="its progress events too")
    js.set_defaults(handler=handler)


class NotConfirmed(Exception):
    """A destructive command without --yes (a usage error: exit 2)."""


def _revoke(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    version = client.get_version(args.model, args.ref)
    if not args.yes:
        raise NotConfirmed(f"revoking deletes the files of {args.model} version "
                           f"{version.version} for good: pass --yes")
    dump(client.revoke_version(args.model, version.version).model_dump(mode="json"), out)
    return 0


def _alias(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.alias_command == "set":
        dump(client.set_alias(args.model, args.alias, args.version).model_dump(mode="json"),
             out)
    else:
        client.delete_alias(args.model, args.alias)
        print(f"alias {args.alias} of {args.model} deleted", file=err)
    return 0


def _cancel(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    dump(client.cancel_request(args.request_id).model_dump(mode="json"), out)
    return 0


def _jobs(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.jobs_command == "show":
        doc = client.get_job(args.job_id).model_dump(mode="json")
        if args.events:
            doc["events"] = [e.model_dump(mode="json")
                             for e in client.iter_job_events(args.job_id)]
        dump(doc, out)
        return 0
    filters = {k: v for k, v in (("model", args.model), ("status", args.status)) if v}
    rows = []
    for job in client.iter_jobs(**filters):  # type: ignore[arg-type]
        if args.json:
            print(json.dumps(job.model_dump(mode="json")), file=out)
        rows.append([job.id, job.model or "-", job.status, job.method or "-",
                     opt(job.base_version), opt(job.result_version),
                     str(len(job.forget_request_ids)), when(job.created_at)])
    if not args.json:
        table(["ID", "MODEL", "STATUS", "METHOD", "BASE", "RESULT", "REQUESTS", "CREATED"],
              rows, out)
    return 0


HANDLERS: dict[str, Callable[[Client, argparse.Namespace, TextIO, TextIO], int]] = {
    "revoke": _revoke, "alias": _alias, "cancel": _cancel, "jobs": _jobs}
