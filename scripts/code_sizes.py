"""Module and function sizes of the project's Python code: every module over `--module-lines`
and every function over `--function-lines` (default 400 and 80), largest first, each with the
reason it may stay that long where docs/development.md's list gives one. `--check` exits 1
when a module or function is over its limit without a listed reason."""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("alkn_core", "clients/python/alkn_client", "alkn_cli", "api", "archive_safety",
            "bench", "config", "observability", "registry", "worker", "scripts")

# Longer than the limit and one cohesive thing: why each may stay so.
COHESIVE: dict[str, str] = {
    "alkn_core/demo_corpus.py": "the seeded generator of the synthetic corpus; its word "
                                "tables are data (demo_words.json)",
    "api/schemas.py": "the HTTP API's request and response models, section by resource",
    "clients/python/alkn_client/client.py": "Client and AsyncClient: one method per route "
                                            "each, mirrored",
    "clients/python/alkn_client/_core.py": "the calls both clients share: method, path, "
                                           "body, parsing",
    "bench/continual.py": "the continual benchmark's protocol: arguments, runs, summaries, "
                          "resume (data and models: continual_data.py; report: "
                          "continual_report.py)",
    "bench/calibration.py": "the calibration benchmark: settings, runs, verdict, report",
}


def _lines(node: ast.AST) -> int:
    end = getattr(node, "end_lineno", None) or node.lineno  # type: ignore[attr-defined]
    return end - node.lineno + 1  # type: ignore[attr-defined]


def sizes() -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    modules: list[tuple[str, int]] = []
    functions: list[tuple[str, int]] = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            text = path.read_text()
            modules.append((rel, len(text.splitlines())))
            tree = ast.parse(text, rel)
            stack: list[tuple[ast.AST, str]] = [(tree, "")]
            while stack:
                node, prefix = stack.pop()
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                        name = f"{prefix}{child.name}"
                        if not isinstance(child, ast.ClassDef):
                            functions.append((f"{rel}:{name}", _lines(child)))
                        stack.append((child, name + "."))
    return (sorted(modules, key=lambda m: -m[1]), sorted(functions, key=lambda f: -f[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--module-lines", type=int, default=400)
    ap.add_argument("--function-lines", type=int, default=80)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    modules, functions = sizes()
    over = 0
    for what, rows, limit in (("modules", modules, args.module_lines),
                              ("functions", functions, args.function_lines)):
        print(f"{what} over {limit} lines ({len(rows)} {what}):")
        for name, n in rows:
            if n > limit:
                why = COHESIVE.get(name)
                over += why is None
                print(f"  {n:5d}  {name}" + (f"  ({why})" if why else "  OVER"))
    print(f"largest module {modules[0][1]} lines, largest function {functions[0][1]} lines; "
          f"{over} over without a reason")
    return 1 if args.check and over else 0


if __name__ == "__main__":
    sys.exit(main())
