"""The layering rules of docs/architecture.md, checked on the source (no servers).

Each layer imports only downward: `api` and `worker` use `registry` and `alkn_core`;
`registry` uses only the torch-free part of `alkn_core` (and archive safety); settings,
observability and archive safety sit beside it; `alkn_core` imports nothing of ours;
nothing imports `api` or `worker` but the process that starts them; the client imports
nothing of the service; the web tier never loads torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"api", "worker", "registry", "alkn_core", "alkn_client", "alkn_cli", "bench", "config",
        "observability", "archive_safety"}
# What the web tier is made of (none of it may load torch).
WEB_TIER = ("api", "registry", "config", "observability", "archive_safety")
# The modules of alkn_core the web tier may import: pure Python, no torch.
# The method registry and its method modules reach torch through alkn_core.lazy_import only.
TORCH_FREE_CORE = {"alkn_core.params", "alkn_core.items", "alkn_core.quoting",
                   "alkn_core.methods", "alkn_core.lazy_import"}
# package -> the packages of ours it may import
SERVICE_BASE = {"config", "observability", "archive_safety"}
ALLOWED = {
    "alkn_core": set(),
    "alkn_client": set(),
    "config": set(),
    "archive_safety": {"alkn_core"},
    "registry": {"alkn_core", "archive_safety"},
    "observability": {"registry"},
    "api": {"registry", "alkn_core"} | SERVICE_BASE,
    "worker": {"registry", "alkn_core"} | SERVICE_BASE,
}


# Packages that live elsewhere than at the root (the client is its own distribution).
PACKAGE_DIRS = {"alkn_client": ROOT / "clients" / "python" / "alkn_client"}


def _modules(package: str) -> list[Path]:
    return sorted(PACKAGE_DIRS.get(package, ROOT / package).rglob("*.py"))


def _imports(path: Path, *, runtime: bool = False) -> list[str]:
    """Absolute module names imported by the file (relative imports stay inside it);
    `runtime`: not those under `if TYPE_CHECKING:` (for annotations only)."""
    out: list[str] = []
    tree = ast.parse(path.read_text(), str(path))
    if runtime:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
                node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return out


def _ours(name: str) -> str | None:
    top = name.split(".")[0]
    return top if top in OURS else None


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_only_downward(package: str) -> None:
    bad = []
    for path in _modules(package):
        for name in _imports(path):
            top = _ours(name)
            if top is not None and top != package and top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_web_tier_uses_only_the_torch_free_core() -> None:
    bad = [f"{p.relative_to(ROOT)} imports {n}" for pkg in WEB_TIER
           for p in _modules(pkg) for n in _imports(p)
           if n.startswith("alkn_core.") and n.count(".") == 1 and n not in TORCH_FREE_CORE]
    assert not bad, "\n".join(bad)


def _files(name: str) -> list[Path]:
    path = ROOT / name.replace(".", "/")
    return _modules(str(path.relative_to(ROOT))) if path.is_dir() else [path.with_suffix(".py")]


def test_torch_free_core_imports_no_torch_module() -> None:
    for name in TORCH_FREE_CORE:
        for path in _files(name):
            heavy = [n for n in _imports(path, runtime=True)
                     if n.split(".")[0] in {"torch", "transformers", "numpy", "safetensors"}]
            assert not heavy, f"{path.relative_to(ROOT)} imports {heavy}"



def test_torch_free_core_loads_no_torch() -> None:
    """Every module of the torch-free core (all method modules included) imported in one
    fresh interpreter: neither torch nor transformers is loaded."""
    names = [".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
             for name in sorted(TORCH_FREE_CORE) for p in _files(name)]
    assert "alkn_core.methods.alkn" in names
    _assert_no_torch_after_importing(names)


def test_web_tier_never_loads_torch() -> None:
    """Every module of the web tier imported in one fresh interpreter: no torch."""
    names = [".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
             for pkg in WEB_TIER for p in _modules(pkg)]
    _assert_no_torch_after_importing(names)


def _assert_no_torch_after_importing(names: list[str]) -> None:
    code = ("import importlib, sys\n"
            f"for n in {names!r}: importlib.import_module(n)\n"
            "assert 'torch' not in sys.modules, 'torch loaded'\n"
            "assert 'transformers' not in sys.modules, 'transformers loaded'\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_client_imports_nothing_of_the_service() -> None:
    bad = [f"{p.relative_to(ROOT)} imports {n}" for p in _modules("alkn_client")
           for n in _imports(p) if _ours(n) not in (None, "alkn_client")]
    assert not bad, "\n".join(bad)


def test_module_and_function_sizes() -> None:
    """No module over 400 lines and no function over 80 without a stated reason
    (scripts/code_sizes.py prints them)."""
    out = subprocess.run([sys.executable, "scripts/code_sizes.py", "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout
