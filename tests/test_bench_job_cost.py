"""bench/job_cost.py's variants: parsed and checked before any job runs; the side-by-side
table puts each number in its column and leaves what a variant did not run blank."""

from __future__ import annotations

import argparse

import pytest

from bench.job_cost_variants import SUMMARY, summary_rows, variant


def test_a_variant_is_a_name_and_alkn_params() -> None:
    assert variant('one_round={"repair_rounds": 1}') == ("one_round", {"repair_rounds": 1})
    for bad, says in (('x={"nope": 1}', "unknown param"), ("x={", "variant 'x'"),
                      ('{"repair_rounds": 1}', "NAME=JSON"),
                      ('x={"repair_rounds": 0}', "repair_rounds"), ("x=[1]", "mapping")):
        with pytest.raises(argparse.ArgumentTypeError, match=says):
            variant(bad)


def test_the_table_sets_variants_side_by_side() -> None:
    results = {
        "defaults": {"lineage": {"last_over_first": 1.53, "last_utility_kept": 0.971},
                     "growth": {"overhead": 0.94, "utility_kept": [0.99, 0.95, 0.694]}},
        "no_repair": {"growth": {"utility_kept": []}},
    }
    header, defaults, no_repair = summary_rows(results)
    columns = [c for c, _ in SUMMARY]
    assert header.split()[0] == "variant"
    cells = dict(zip(columns, defaults.split()[1:], strict=True))
    assert (cells["job N/1"], cells["utility job N"], cells["overhead"],
            cells["utility 16x"]) == ("1.53", "0.97", "0.94", "0.69")
    assert cells["eval share"] == "-"
    assert no_repair.split()[1:] == ["-"] * len(columns)
