"""Upper bounds on method parameters: a request cannot ask for a run that never ends or
cannot fit (epochs=1e30, batch_size=1e6); past a bound it is refused, naming the param."""

from __future__ import annotations

from typing import Any

import pytest

from alkn_core.methods import ALL_PARAMS, METHODS, method_params
from alkn_core.params import MAX_TEMPLATE_CHARS, param

from .apikit import ApiWorld

BOUNDS = {"epochs": 100, "batch_size": 1024, "grad_accum": 1024, "max_length": 8192,
          "lr": 1.0, "alpha": 100.0}


def test_every_number_has_an_upper_bound() -> None:
    numbers = {name for name, (_, spec) in ALL_PARAMS.items() if spec.kind in (int, float)}
    assert numbers and {name for name in numbers if ALL_PARAMS[name][1].le is None} == set()
    assert {k: ALL_PARAMS[k][1].le for k in BOUNDS} == BOUNDS
    with pytest.raises(AssertionError, match="every number has an upper bound"):
        param(3, "a new method's number, declared without a bound")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bounds_are_inclusive_and_past_them_is_refused(method: str) -> None:
    for name, (_, spec) in METHODS[method].Params.declared().items():
        if spec.le is None:
            continue
        at = int(spec.le) if spec.kind is int else spec.le
        assert method_params(method, {name: at})[name] == at
        past: Any = at + 1 if isinstance(at, int) else at * 1.5
        with pytest.raises(ValueError, match=rf"param '{name}' must be <= "):
            method_params(method, {name: past})
        # an int beyond a float's range (float() raises OverflowError, not ValueError)
        with pytest.raises(ValueError, match=rf"param '{name}' "):
            method_params(method, {name: 10**400})
    with pytest.raises(ValueError, match="param 'epochs' must be <= 100"):
        method_params(method, {"epochs": 1e30})  # a float that is an integer: still bounded
    with pytest.raises(ValueError, match="param 'qa_template' must be at most"):
        method_params(method, {"qa_template": "{question} {answer}" + "x" * MAX_TEMPLATE_CHARS})


def test_api_refuses_a_param_past_its_bound_with_422(api_world: ApiWorld) -> None:
    from .apikit import QA

    for params, name in [({"epochs": 101}, "epochs"), ({"batch_size": 10**6}, "batch_size"),
                         ({"lr": 5.0}, "lr"), ({"max_length": 100_000}, "max_length"),
                         ({"lr": 10**309}, "lr")]:
        with api_world.unchanged():
            r = api_world.client.post(f"/v1/models/{api_world.model}/forget-requests",
                                      json={"items": QA, "params": params})
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert f"'{name}' must be <=" in r.json()["detail"] or (
            f"'{name}' is out of range" in r.json()["detail"])
    # Model defaults are bounded too (they are a request's params by another route).
    r = api_world.client.post("/v1/models", json={
        "name": "too-long", "source": {"path": str(api_world.model_dir)},
        "default_params": {"epochs": 1000}})
    assert r.status_code == 422 and "'epochs' must be <=" in r.json()["detail"], r.text
    r = api_world.client.post("/v1/models", json={
        "name": "too-long", "source": {"path": str(api_world.model_dir)},
        "default_params": {"alpha": 10**400}})
    assert r.status_code == 422 and "'alpha' is out of range" in r.json()["detail"], r.text
