"""bench/job_cost.py's variants: `--variant NAME=JSON` parsed and checked, and the table that
sets every variant's ratios beside the model utility its jobs kept."""

from __future__ import annotations

import argparse
import json
from typing import Any


def cell(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def variant(text: str) -> tuple[str, dict[str, Any]]:
    """`NAME=JSON` -> (name, params), the params checked as ALKN's (argparse's type: a bad
    variant stops the bench before any job runs)."""
    from alkn_core.methods import method_params

    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=JSON, got {text!r}")
    try:
        params = json.loads(raw)
        if not isinstance(params, dict):
            raise ValueError(f"params must be a mapping, got {type(params).__name__}")
        method_params("alkn", params)
    except (json.JSONDecodeError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"variant {name!r}: {e}") from None
    return name.strip(), params


SUMMARY = (  # column, where in a variant's results
    ("eval share", ("lineage", "later_eval_share_median")),
    ("job N/1", ("lineage", "last_over_first")),
    ("last3/first3", ("lineage", "last_k_over_first_k")),
    ("utility job N", ("lineage", "last_utility_kept")),
    ("retain 10k/200", ("retain", "ratio")),
    ("slope", ("growth", "slope")),
    ("overhead", ("growth", "overhead")),
    ("utility 16x", ("growth", "utility_kept", -1)),
)


def _dig(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def summary_rows(results: dict[str, dict[str, Any]]) -> list[str]:
    """One row per variant: its ratios and the model utility its jobs kept."""
    rows = [f"{'variant':<16} " + " ".join(f"{c:>14}" for c, _ in SUMMARY)]
    for name, out in results.items():
        rows.append(f"{name:<16} " + " ".join(f"{cell(_dig(out, path), '.2f'):>14}"
                                              for _, path in SUMMARY))
    return rows
