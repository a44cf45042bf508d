"""The method registry: every `Method` subclass defined in a module of this package, by
name. Adding a method is adding a module (and its test); the API's schema and
docs/methods.md are generated from here (scripts/method_docs.py).

Torch-free: importing the registry imports the method modules, which load torch only when a
job runs them (methods/base.py).
"""

from __future__ import annotations

import pkgutil
from collections.abc import Mapping
from importlib import import_module
from typing import Any

from ..params import Declared, Spec, json_schema
from ..quoting import quoted
from .base import BaseParams, Method, TaskContext


def _discover() -> dict[str, type[Method]]:
    found: dict[str, type[Method]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base" or info.name.startswith("_"):
            continue
        module = import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, Method) and obj.__module__ ==
                    module.__name__ and "name" in obj.__dict__):
                assert obj.name not in found, f"two methods named {obj.name!r}"
                found[obj.name] = obj
    # alkn first: the default, and the order the docs and the API list them in
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != "alkn", kv[0])))


METHODS: dict[str, type[Method]] = _discover()
# Every method's defaults (a model's default_params may hold keys of several methods).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    name: cls.Params().as_dict() for name, cls in METHODS.items()}
NEEDS_RETAIN = frozenset(name for name, cls in METHODS.items() if cls.needs_retain)


def _all_declared() -> dict[str, tuple[Any, Spec]]:
    out: dict[str, tuple[Any, Spec]] = {}
    for cls in METHODS.values():
        for name, (default, spec) in cls.Params.declared().items():
            # Only the default differs between methods (alpha: "auto" for alkn, 1 else).
            assert name not in out or out[name][1] == spec, f"param {name!r} declared twice"
            out.setdefault(name, (default, spec))
    return out


ALL_PARAMS: Declared = _all_declared()


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {quoted(name)}; one of {', '.join(METHODS)}") from None


def method_params(method: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The full, validated parameter set of a method as stored (ValueError names a bad key)."""
    return get_method(method).Params.parse(dict(params or {})).as_dict()


def params_json_schema() -> dict[str, Any]:
    """Every method's parameters as JSON Schema (the union; a request takes its method's).
    A default that differs between methods is stated per method in the description."""
    schema = json_schema(ALL_PARAMS)
    for name, prop in schema["properties"].items():
        defaults = {m: d[name] for m, d in METHOD_DEFAULTS.items() if name in d}
        if len({repr(v) for v in defaults.values()}) > 1:
            del prop["default"]
            prop["description"] += " (default: " + ", ".join(
                f"{m} {v!r}" for m, v in defaults.items()) + ")"
    return schema


__all__ = ["ALL_PARAMS", "METHODS", "METHOD_DEFAULTS", "NEEDS_RETAIN", "BaseParams", "Method",
           "TaskContext", "get_method", "method_params", "params_json_schema"]
