"""docs/methods.md, generated from the method registry (alkn_core.methods): the methods and
every parameter with its default, bound and meaning. `python scripts/method_docs.py` writes
it; `--check` exits 1 when the committed file differs (tests/test_method_registry.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alkn_core.methods import METHODS  # noqa: E402
from alkn_core.params import AUTO, Spec  # noqa: E402

OUT = ROOT / "docs" / "methods.md"


def _value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return "`" + v.replace("\n", "\\n") + "`"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _bound(spec: Spec) -> str:
    if spec.kind in (int, float):
        low = "> 0" if spec.positive else ">= 0"
        le = spec.le
        bound = str(int(le)) if spec.kind is int and le is not None else f"{le:g}"
        text = low if le is None else f"{low}, <= {bound}"
    elif spec.choices:
        text = ", ".join(f"`{c}`" for c in spec.choices)
    elif spec.kind is str:
        text = "a string"
    else:
        text = "true or false"
    if spec.auto:
        text += f', or `"{AUTO}"`'
    if spec.nullable:
        text += ", or null"
    return text


def render() -> str:
    lines = ["# Methods and their parameters", "",
             "Generated from the method registry (`alkn_core/methods/`) by "
             "`python scripts/method_docs.py`; do not edit by hand. A method is one module "
             "there: its name, its parameters (a frozen dataclass, each field with its default, "
             "bound and meaning) and its loss and hooks. What the methods do: "
             "[algorithm.md](algorithm.md).", "",
             "| method | what it does | needs a retain set | negates a task vector | "
             "carries state across tasks |", "|---|---|---|---|---|"]
    yes = {True: "yes", False: "no"}
    for name, cls in METHODS.items():
        lines.append(f"| `{name}` | {cls.summary()} | {yes[cls.needs_retain]} | "
                     f"{yes[cls.negates]} | {yes[cls.stateful]} |")
    # Parameters grouped by the methods that have them, in declaration order.
    owners: dict[str, list[str]] = {}
    specs: dict[str, Spec] = {}
    defaults: dict[str, dict[str, Any]] = {}
    for name, cls in METHODS.items():
        for pname, (default, spec) in cls.Params.declared().items():
            owners.setdefault(pname, []).append(name)
            specs[pname] = spec
            defaults.setdefault(pname, {})[name] = default
    groups: dict[tuple[str, ...], list[str]] = {}
    for pname, methods in owners.items():
        groups.setdefault(tuple(methods), []).append(pname)
    lines += ["", "## Parameters", "",
              "Unknown keys, wrong types and out-of-range values are refused naming the param "
              "(`alkn_core.method_params(method, params)`; the API answers 422). Strings are "
              "at most 4096 characters."]
    for methods, pnames in sorted(groups.items(), key=lambda g: -len(g[0])):
        title = ("Every method" if len(methods) == len(METHODS)
                 else ", ".join(f"`{m}`" for m in methods))
        lines += ["", f"### {title}", "", "| param | default | bound | meaning |",
                  "|---|---|---|---|"]
        for pname in pnames:
            ds = defaults[pname]
            if len({repr(v) for v in ds.values()}) == 1:
                default = _value(next(iter(ds.values())))
            else:
                default = ", ".join(f"{_value(v)} (`{m}`)" for m, v in ds.items())
            lines.append(f"| `{pname}` | {default} | {_bound(specs[pname])} | "
                         f"{specs[pname].doc} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/methods.md is stale")
    args = ap.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run python scripts/method_docs.py",
                  file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
