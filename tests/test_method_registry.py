"""The method registry: methods are found, not listed; their typed params validate requests
(torch-free), and the API's schema and docs/methods.md come from it. Adding a method is
adding one module: shown by adding one to a copy of the core in a fresh interpreter."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from alkn_core.methods import ALL_PARAMS, METHOD_DEFAULTS, METHODS, Method, method_params
from alkn_core.params import Params

ROOT = Path(__file__).resolve().parent.parent

NEW_METHOD = '''
"""Scaled gradient ascent: a method added by a test, in one module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..lazy_import import LazyModule
from ..params import param
from .base import BaseParams, Method

if TYPE_CHECKING:
    import torch

    from .. import losses
    from .base import Batch
else:
    losses = LazyModule("alkn_core.losses")


@dataclass(frozen=True, kw_only=True)
class ScaledParams(BaseParams):
    scale: float = param(0.5, "factor of the ascent", positive=True, le=10.0)


class ScaledAscent(Method):
    """Gradient ascent times `scale`."""

    name = "scaled_ascent"
    Params = ScaledParams

    def loss(self, model: torch.nn.Module, forget: Batch, retain: Batch | None) -> torch.Tensor:
        return -self.params["scale"] * losses.nll(model, forget)
'''

CHECK = '''
import sys
from alkn_core.methods import METHODS, method_params
assert "scaled_ascent" in METHODS, list(METHODS)
assert "torch" not in sys.modules  # found and validated without torch
assert method_params("scaled_ascent", {"scale": 2})["scale"] == 2.0
try:
    method_params("scaled_ascent", {"scale": 11})
    raise SystemExit("a scale past its bound was accepted")
except ValueError as e:
    assert "param 'scale' must be <= 10.0" in str(e), e
from api.schemas import ForgetRequestCreate
schema = ForgetRequestCreate.model_json_schema()["properties"]
assert "scaled_ascent" in schema["method"]["enum"]
assert schema["params"]["properties"]["scale"]["maximum"] == 10.0

import torch
from transformers import LlamaForCausalLM
from alkn_core import unlearn
from alkn_core.demo_corpus import generate_corpus
from alkn_core.demo_model import build_tokenizer, corpus_texts, tiny_llama_config
corpus = generate_corpus(people=2, holdout_people=0, seed=1)
tok = build_tokenizer(corpus_texts(corpus), vocab_size=256)
torch.manual_seed(0)
model = LlamaForCausalLM(tiny_llama_config(len(tok), "test", tok))
items = [{"question": r["question"], "answer": r["answer"]} for r in corpus.full[:4]]
res = unlearn(model, tok, items, method="scaled_ascent",
              params={"epochs": 1, "batch_size": 4, "grad_accum": 1, "scale": 2})
assert res.stats["method"] == "scaled_ascent" and res.stats["steps"] == 1, res.stats
print("ok")
'''


def test_every_method_module_is_registered() -> None:
    found = set()
    for path in (ROOT / "alkn_core" / "methods").glob("*.py"):
        text = path.read_text()
        found |= {line.split("=")[1].strip().strip('"') for line in text.splitlines()
                  if line.startswith("    name = ")}
    assert found == set(METHODS) and list(METHODS)[0] == "alkn"
    for name, cls in METHODS.items():
        assert issubclass(cls, Method) and cls.name == name
        assert issubclass(cls.Params, Params) and dataclasses.is_dataclass(cls.Params)
        assert METHOD_DEFAULTS[name] == cls.Params().as_dict()


def test_params_are_typed_frozen_and_read_as_a_mapping() -> None:
    p = METHODS["alkn"].Params.parse({"epochs": 2.0, "alpha": 0.5})
    assert p.epochs == 2 and isinstance(p.epochs, int) and p["alpha"] == 0.5
    assert dict(p) == p.as_dict() == method_params("alkn", {"epochs": 2, "alpha": 0.5})
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.epochs = 3  # type: ignore[misc]
    assert p.replace(epochs=3).epochs == 3 and p.epochs == 2
    with pytest.raises(ValueError, match="unknown param"):
        METHODS["grad_ascent"].Params.parse({"alpha": 1})


def test_the_api_schema_comes_from_the_registry() -> None:
    from api.app import create_app

    schema = create_app().openapi()["components"]["schemas"]["ForgetRequestCreate"]
    props = schema["properties"]
    assert props["method"]["enum"] == list(METHODS)
    assert set(props["params"]["properties"]) == set(ALL_PARAMS)
    lr = props["params"]["properties"]["epochs"]
    assert lr["maximum"] == 100 and lr["exclusiveMinimum"] == 0 and lr["default"] == 5


def test_docs_methods_md_is_generated_from_the_registry() -> None:
    out = subprocess.run([sys.executable, "scripts/method_docs.py", "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = (ROOT / "docs" / "methods.md").read_text()
    for name in METHODS:
        assert f"| `{name}` |" in text
    for name in ALL_PARAMS:
        assert f"| `{name}` |" in text


def test_adding_a_method_is_adding_one_module(tmp_path: Path) -> None:
    core = tmp_path / "alkn_core"
    shutil.copytree(ROOT / "alkn_core", core,
                    ignore=shutil.ignore_patterns("demo_assets", "__pycache__"))
    (core / "methods" / "scaled_ascent.py").write_text(textwrap.dedent(NEW_METHOD))
    env: dict[str, Any] = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "OMP_NUM_THREADS": "1",
                           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
