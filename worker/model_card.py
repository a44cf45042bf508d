"""A version's model card: README.md with YAML front matter as the Hugging Face Hub reads it,
written by the job that made the version (regenerated for every version, never edited).

The front matter holds the base card's own metadata (licence, language, ...) and
`base_model` (the repo id), `base_model_relation`, `library_name`,
`tags` and an `alkn` block: the parent version, the method and its params, the job id, the
forget requests by id with their items' keyed hashes (HMAC-SHA256, registry/hashing.py:
never the items), the evaluation before and after (numbers only, each set with how many
items it was measured on) and the quality gate's verdict. The base's own card follows under
"Original model card" (the source's README, carried from version to version), so nothing a
publisher wrote is lost.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import yaml

# Where the original card starts in a card written here (the next version carries it on).
ORIGINAL_MARK = "<!-- alkn: original model card -->"
_FRONT = re.compile(r"\A---\r?\n.*?\r?\n---\r?\n?", re.S)


def original_card(base_readme: str | None) -> str:
    """The source's card in the base version's README: the part under ORIGINAL_MARK of a
    card written here, else the whole README (its front matter dropped: this card's holds
    the metadata)."""
    if not base_readme:
        return ""
    if ORIGINAL_MARK in base_readme:
        return base_readme.split(ORIGINAL_MARK, 1)[1].strip()
    return _FRONT.sub("", base_readme, count=1).strip()


def original_metadata(base_readme: str | None) -> dict[str, Any]:
    """The base card's front matter (licence, language, ...), {} when it has none or it is
    not a YAML mapping."""
    found = _FRONT.match(base_readme or "")
    if not found:
        return {}
    try:
        data = yaml.safe_load(found.group(0).strip().strip("-"))
    except yaml.YAMLError:
        return {}
    return dict(data) if isinstance(data, dict) else {}


def _numbers(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Each set's scalar numbers (no per-item lists, no notes), and the model's utility."""
    out: dict[str, Any] = {}
    for name, value in sorted(metrics.items()):
        if isinstance(value, Mapping):
            kept = {k: v for k, v in value.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)}
            if kept:
                out[name] = kept
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = value
    return out


def render(*, repo_id: str, parent_version: int, method: str, params: Mapping[str, Any],
           job_id: str, requests: Mapping[str, list[str]], before: Mapping[str, Any],
           after: Mapping[str, Any], quality: Mapping[str, Any] | None,
           base_readme: str | None) -> str:
    """The card. `requests`: request id -> its items' keyed hashes."""
    b, a = _numbers(before), _numbers(after)
    meta = {
        **original_metadata(base_readme),  # the publisher's licence, language, ... stay
        "base_model": repo_id,
        "base_model_relation": "finetune",
        "library_name": "transformers",
        "tags": ["alkn", "machine-unlearning"],
        "alkn": {
            "parent_version": parent_version,
            "method": method,
            "params": dict(params),
            "job_id": job_id,
            "forget_requests": [{"id": rid, "item_hashes": list(hashes)}
                                for rid, hashes in requests.items()],
            "evaluation": {"before": b, "after": a},
            "quality": dict(quality) if quality is not None else None,
        },
    }
    # JSON's types only (numbers from numpy, say, as plain numbers or strings)
    meta = json.loads(json.dumps(meta, default=str))
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100)
    items = sum(len(h) for h in requests.values())
    lines = [
        f"---\n{front}---", "",
        f"# {repo_id}, unlearned from version {parent_version}", "",
        f"Made from version {parent_version} of `{repo_id}` by ALKN-as-a-service: method "
        f"`{method}`, job `{job_id}`, {len(requests)} deletion request(s) with {items} "
        "item(s) forgotten (listed above by keyed hash, never by content). Every file but "
        "the weights and this card is the parent's.", "",
        "## Evaluation", "",
        "| set | probability before | after | items |", "|---|---|---|---|",
    ]
    for name in sorted(set(b) | set(a)):
        if not isinstance(a.get(name, b.get(name)), Mapping):
            continue
        pb, pa = b.get(name, {}).get("probability"), a.get(name, {}).get("probability")
        lines.append(f"| {name} | {_fmt(pb)} | {_fmt(pa)} | "
                     f"{a.get(name, b.get(name, {})).get('probability_items', '')} |")
    lines += ["", f"Model utility: {_fmt(b.get('model_utility'))} before, "
                  f"{_fmt(a.get('model_utility'))} after."]
    if quality is not None:
        lines += ["", f"Quality gate: {'passed' if quality.get('passed') else 'not passed'}."]
    original = original_card(base_readme)
    if original:
        lines += ["", "## Original model card", "", ORIGINAL_MARK, "", original]
    return "\n".join(lines) + "\n"


def _fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, int | float) and not isinstance(x, bool) else "-"
