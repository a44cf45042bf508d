"""Issue 13: negation forgets the person, not everyone else (repair), and its params.

The tiny fixture model (tests/conftest.py) knows 8 people: person 0 is forgotten, persons
4-7 are the retain set given to unlearning, persons 1-3 are "people not requested" that
unlearning never sees. Relative numbers only: fractions of the model's own before the task.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from alkn_core import unlearn
from alkn_core.data import encode_items, pad_id
from alkn_core.losses import mean_answer_probability
from alkn_core.methods import method_params

from .conftest import TinyWorld

LOOP = {"lr": 3e-3, "epochs": 5, "batch_size": 8, "grad_accum": 1}
# People not requested keep at least this fraction of their answer probability with the
# defaults (measured 0.98, 0.93 without repair_shrink; plain negation at the same alpha keeps
# 0.19).
KEPT = 0.6


def _prob(model: torch.nn.Module, world: TinyWorld, items: list[dict[str, Any]]) -> float:
    p = method_params("alkn", {})
    return mean_answer_probability(model, encode_items(items, world.tokenizer, p),
                                   pad_id(world.tokenizer), 8)


def _forget_person_0(trained: torch.nn.Module, world: TinyWorld, **params: Any
                     ) -> tuple[dict[str, Any], float, float]:
    """stats, forget probability / before, people not requested / before."""
    ppl = world.people
    forget, retain, others = world.of(ppl[0]), world.of(*ppl[4:]), world.of(*ppl[1:4])
    model = copy.deepcopy(trained)
    f0, o0 = _prob(model, world, forget), _prob(model, world, others)
    r = unlearn(model, world.tokenizer, forget, retain, params={**LOOP, **params})
    return r.stats, _prob(model, world, forget) / f0, _prob(model, world, others) / o0


def _at_target(stats: dict[str, Any], forget: float) -> bool:
    """The forget items (`forget`: their probability / before) at or under the target."""
    c = stats["calibration"]
    return forget * c["forget_prob_before"] <= c["target"] * (1 + 1e-6)


def test_defaults_forget_the_person_and_keep_the_others(trained: torch.nn.Module,
                                                        tiny_world: TinyWorld) -> None:
    stats, forget, others = _forget_person_0(trained, tiny_world)
    c = stats["calibration"]
    assert stats["target_met"] is True and c["target_met"] is True
    assert _at_target(stats, forget)  # still forgotten
    assert others >= KEPT, f"people not requested kept only {others:.3f}"
    assert stats["repair"]["rounds"] and stats["floor"]["retain_ratio"] is not None
    # the repair started from a quarter of the calibrated negation; its hinge (and guard)
    # took the forget items to the target, asserted above
    assert stats["alpha_applied"] == pytest.approx(0.25 * stats["alpha"])
    # The same alpha without the repair: what the issue saw (the guard above is meaningful).
    plain, plain_forget, plain_others = _forget_person_0(trained, tiny_world, repair_steps=0)
    assert plain["alpha"] == pytest.approx(stats["alpha"]) and "repair" not in plain
    assert plain["alpha_applied"] == plain["alpha"]  # no repair: the whole negation
    assert plain_others < KEPT and plain_others < others


def test_repair_params_are_validated() -> None:
    p = method_params("alkn", None)
    assert (p["repair_steps"], p["repair_lr"], p["repair_forget_weight"], p["repair_sets"],
            p["escalations"], p["utility_floor"], p["repair_relax"]) == (
        30, None, 1.0, "retain", 2, 0.85, True)
    assert method_params("task_vector", {"repair_lr": 1e-4})["repair_lr"] == 1e-4
    assert method_params("alkn", {"repair_lr": None})["repair_lr"] is None
    assert method_params("alkn", {"repair_steps": 0})["repair_steps"] == 0
    assert (p["repair_items"], p["repair_rounds"], p["repair_aim"]) == (512, 5, 0.95)
    assert method_params("task_vector", {"repair_items": 128.0})["repair_items"] == 128
    bad = [
        ({"repair_steps": -1}, "'repair_steps' must be >= 0"),
        ({"repair_steps": 2.5}, "'repair_steps' must be an integer"),
        ({"repair_steps": 10_001}, "'repair_steps' must be <= 10000"),
        ({"repair_lr": 0.0}, "'repair_lr' must be > 0"),
        ({"repair_lr": "fast"}, "'repair_lr' must be a number"),
        ({"repair_forget_weight": -1.0}, "'repair_forget_weight' must be >= 0"),
        ({"repair_sets": "all"}, "'repair_sets' must be one of"),
        ({"escalations": 11}, "'escalations' must be <= 10"),
        ({"repair_relax": 1}, "'repair_relax' must be a boolean"),
        ({"repair_items": 0}, "'repair_items' must be > 0"),
        ({"repair_items": 100_001}, "'repair_items' must be <= 100000"),
        ({"repair_rounds": 1.5}, "'repair_rounds' must be an integer"),
        ({"repair_rounds": 101}, "'repair_rounds' must be <= 100"),
        ({"repair_aim": 1.5}, "'repair_aim' must be <= 1"),
        ({"repair_start": 0}, "'repair_start' must be > 0"),
        ({"repair_start": 1.5}, "'repair_start' must be <= 1"),
    ]
    for params, message in bad:
        with pytest.raises(ValueError, match=message):
            method_params("alkn", params)
    with pytest.raises(ValueError, match="unknown param.*'repair_steps'"):
        method_params("npo", {"repair_steps": 3})


def test_second_task_repairs_towards_the_first_model_and_guards_the_first_person(
        trained: torch.nn.Module, tiny_world: TinyWorld, tmp_path: Any) -> None:
    """Task 2 (person 1) with the state saved and loaded: its repair's target is the first
    model's distributions carried in the state, and person 0 (task 1, `earlier_forget`)
    stays at or under the forget target (the hinge holds it too)."""
    from alkn_core.state import UnlearnState

    ppl, world = tiny_world.people, tiny_world
    first, second, retain = world.of(ppl[0]), world.of(ppl[1]), world.of(*ppl[4:])
    model = copy.deepcopy(trained)
    r1 = unlearn(model, world.tokenizer, first, retain, params=LOOP)
    assert r1.state is not None and r1.state.teacher
    assert r1.stats["repair"]["teacher_carried"] is False
    r1.state.save(tmp_path)
    state = UnlearnState.load(tmp_path)
    assert state.teacher is not None and set(state.teacher) == set(r1.state.teacher)
    assert all(torch.equal(state.teacher[k], r1.state.teacher[k].cpu()) for k in state.teacher)
    r2 = unlearn(model, world.tokenizer, second, retain, params=LOOP, state=state,
                 earlier_forget=first)
    rep = r2.stats["repair"]
    assert rep["teacher_carried"] is True and rep["earlier_forget_items"] == len(first)
    assert rep["earlier_forget_prob"] <= r2.stats["calibration"]["target"] * 1.05
    assert r2.state is not None and r2.state.teacher is not None  # carried on
    pre = method_params("alkn", {"repair_reference": "pre_task"})
    assert pre["repair_reference"] == "pre_task"
    with pytest.raises(ValueError, match="'repair_reference' must be one of"):
        method_params("alkn", {"repair_reference": "last"})


def test_earlier_forget_sets_are_each_held_on_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """One person coming back must not hide behind the others forgotten deeper: the earlier
    tasks' sets are measured and hinged one by one (a pooled mean let task 2's person come
    back to 1.12x the never-seen level on the held-out split while the pool stayed at 0.48x)."""
    from alkn_core import negation
    from alkn_core.repair import HINGE_EARLIER_SETS, _hinge_sets
    from alkn_core.unlearning import _sets

    a, b = [{"question": "q1", "answer": "a1"}], [{"question": "q2", "answer": "a2"}]
    assert _sets(None) == [] and _sets(a) == [a] and _sets([a, b]) == [a, b]
    with pytest.raises(ValueError, match="earlier_forget must be a list of items"):
        _sets(["not an item"])  # type: ignore[list-item]
    # The probe reports the worst set, not the pool's mean.
    s1: list[Any] = [{}]
    s2: list[Any] = [{}]
    levels = {id(s1): 0.01, id(s2): 0.04}
    monkeypatch.setattr(negation, "mean_batch_probability",
                        lambda _m, batches: levels[id(batches)])
    probe = object.__new__(negation.NegationProbe)
    probe.earlier = [s1, s2]
    assert probe.measure_earlier(None) == 0.04  # type: ignore[arg-type]
    # Every earlier set gets its turn in the hinge; this task's set is in every step.
    this, earlier = ["t"], [[f"e{i}"] for i in range(HINGE_EARLIER_SETS * 2 + 1)]
    seen: set[str] = set()
    forget = [this, *earlier]
    for step in range(3):
        sets = [forget[i] for i in _hinge_sets(forget, step)]
        assert sets[0] is this and len(sets) == 1 + HINGE_EARLIER_SETS
        seen.update(s[0] for s in sets[1:])
    assert seen == {e[0] for e in earlier}


def test_repair_rounds_aim_at_general_knowledge_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """With general sets given (eval_sets), a round that brought the people back but not
    general knowledge is not the last: both probes must be back to the aim."""
    from alkn_core import negation

    probe = object.__new__(negation.NegationProbe)
    probe.retain_reference, probe.general_reference = 0.8, 0.5
    levels = {"retain": 0.79, "general": 0.30}
    monkeypatch.setattr(probe, "measure", lambda _m: (0.01, levels["retain"]))
    monkeypatch.setattr(probe, "measure_general", lambda _m: levels["general"])
    assert not probe.back_to(None, 0.95)  # type: ignore[arg-type]
    levels["general"] = 0.49
    assert probe.back_to(None, 0.95)  # type: ignore[arg-type]
    levels["retain"] = 0.70
    assert not probe.back_to(None, 0.95)  # type: ignore[arg-type]
    monkeypatch.setattr(probe, "measure_general", lambda _m: None)  # no general sets given
    levels["retain"] = 0.78
    assert probe.back_to(None, 0.95)  # type: ignore[arg-type]


def test_general_probe_is_measured_and_carried(trained: torch.nn.Module,
                                               tiny_world: TinyWorld) -> None:
    from alkn_core.negation import GENERAL_REFERENCE

    ppl, world = tiny_world.people, tiny_world
    general = world.of(ppl[3])  # stands for a general set: never forgotten, never retain
    model = copy.deepcopy(trained)
    r = unlearn(model, world.tokenizer, world.of(ppl[0]), world.of(*ppl[4:]),
                params={**LOOP, "repair_rounds": 1}, eval_sets={"general": general})
    rep = r.stats["repair"]
    assert 0 < rep["general_probe_reference"] <= 1 and rep["general_probe"] is not None
    assert rep["rounds"][0]["general_probe"] is not None
    assert r.state is not None
    assert r.state.info[GENERAL_REFERENCE] == pytest.approx(rep["general_probe_reference"])


def test_a_hinge_far_under_its_aim_is_not_measured_every_step(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An inactive hinge under HINGE_IDLE_BELOW x its aim waits HINGE_IDLE_STEPS steps before
    that batch is measured again; a batch near its aim (or active) is measured at each of its
    turns, whatever the other batches of its set measured."""
    import math

    from alkn_core import repair

    log_target = math.log(0.1)
    levels = {"far": math.log(0.01), "near": math.log(0.08), "earlier": math.log(0.01)}
    calls: dict[str, list[int]] = {name: [] for name in levels}
    step_now = [0]

    def fake_step(_model: Any, batch: str, target: float, _w: float) -> tuple[float, float]:
        calls[batch].append(step_now[0])
        return max(0.0, levels[batch] - target), levels[batch]

    monkeypatch.setattr(repair, "hinge_step", fake_step)
    # this task's set of two batches (one far under the aim, one near it), an earlier set
    hinges = repair._Hinges([["far", "near"], ["earlier"]], log_target, 1.0, before=0,
                            steps=12)  # one round of 12 steps
    for step in range(12):
        step_now[0] = step
        assert hinges.backward(None, step) == 0.0  # type: ignore[arg-type]
    wait = repair.HINGE_IDLE_STEPS + 1
    assert calls["near"] == list(range(1, 12, 2))  # every one of its turns (odd steps)
    far, free_at = [], 0  # its turns are the even steps; measured, it idles `wait` steps
    for turn in range(0, 12, 2):
        if turn >= free_at:
            far, free_at = [*far, turn], turn + wait
    assert calls["far"] == far and len(far) < 6
    assert calls["earlier"] == list(range(0, 12, wait))
    assert hinges.measured == sum(len(c) for c in calls.values())


def test_the_hinge_takes_a_large_request_several_times_a_round(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A task's forget set of more batches than repair_steps / repair_hinge_passes is taken
    several batches a step, each batch repair_hinge_passes times a round at least (one a
    step, a 640-item request's hinge saw each item 0.375 times a round); a smaller set, the
    earlier tasks' sets, and every set with passes 0 keep one batch a step, in turn."""
    from collections import Counter

    from alkn_core import repair
    from alkn_core.params import hinge_batches

    steps, passes = 30, method_params("alkn", {})["repair_hinge_passes"]
    assert passes == 3
    assert [hinge_batches(n, steps, 3) for n in (1, 5, 10, 11, 32, 80)] == [1, 1, 1, 2, 4, 8]
    assert {hinge_batches(n, steps, 0) for n in (1, 80)} == {1}
    seen: list[tuple[int, str]] = []

    def fake_step(_model: Any, batch: str, target: float, _w: float) -> tuple[float, float]:
        seen.append((step_now[0], batch))
        return 0.0, target  # at the aim: never idle, measured at every turn

    monkeypatch.setattr(repair, "hinge_step", fake_step)
    step_now = [0]
    for n, rounds, p in ((10, 2, passes), (32, 2, passes), (80, 1, passes), (80, 1, 0)):
        this = [f"b{i}" for i in range(n)]
        for r in range(rounds):
            seen.clear()
            hinges = repair._Hinges([this, ["earlier"]], 0.0, 1.0, before=r * steps,
                                    steps=steps, passes=p)
            for step in range(steps):
                step_now[0] = step
                hinges.backward(None, step)  # type: ignore[arg-type]
            taken = Counter(b for _, b in seen if b != "earlier")
            per_step = Counter(st for st, b in seen if b != "earlier")
            assert sum(b == "earlier" for _, b in seen) == steps  # one a step
            assert set(per_step.values()) == {hinge_batches(n, steps, p)}
            if p == 0 or n <= steps // p:  # batch_turn's, one a step, as before
                assert [b for _, b in seen if b != "earlier"] == [
                    this[repair.batch_turn(st, n, r * steps, steps)] for st in range(steps)]
            if p:
                assert set(taken) == set(this)  # every batch, every round
                assert min(taken.values()) >= min(p, steps // n)


def test_repair_rounds_stop_at_a_plateau_only_above_the_floor() -> None:
    """A round that gained less than repair_min_gain on every probe ends the rounds, unless a
    probe is still under the utility floor (the flat rounds there were followed by gains, and
    stopping let the people no probe stands for fall to half their level)."""
    from alkn_core.repair import plateau

    best = (0.90, 0.88)
    assert plateau((0.901, 0.88), best, 0.002, 0.85)  # flat, above the floor
    assert not plateau((0.91, 0.88), best, 0.002, 0.85)  # the retain probe gained
    assert not plateau((0.90, 0.80), (0.90, 0.80), 0.002, 0.85)  # flat, general under floor
    assert plateau((0.90, None), (0.90, None), 0.002, 0.85)  # no general sets given
    assert not plateau((0.90, 0.88), None, 0.002, 0.85)  # the first round
    assert not plateau((0.90, 0.88), best, 0.0, 0.85)  # 0: every round runs


def test_relax_stops_once_the_negation_is_given_back(trained: torch.nn.Module,
                                                     tiny_world: TinyWorld) -> None:
    """A round relaxes only while at least RELAX_LEFT of the negation the repair started
    from is left in the model: its search costs forward passes and would give back ~0."""
    from alkn_core.give_back import RELAX_LEFT

    stats, forget, _ = _forget_person_0(trained, tiny_world, repair_min_gain=0,
                                        repair_aim=1.0)
    start = stats["alpha_applied"]
    left, skipped = start, 0
    for r in stats["repair"]["rounds"]:
        if left <= RELAX_LEFT * start:
            assert r["relaxed_alpha"] is None
            skipped += 1
        elif r["relaxed_alpha"] is not None:
            left = r["relaxed_alpha"]
        left += r["extra_alpha"]
    assert skipped, [r["relaxed_alpha"] for r in stats["repair"]["rounds"]]
    assert _at_target(stats, forget)


def test_nothing_negated_nothing_repaired(trained: torch.nn.Module,
                                          tiny_world: TinyWorld) -> None:
    """Forget items already at the target (here: a target above their probability): the
    search's alpha is 0, the model is the one the task found, and no repair round runs."""
    ppl = tiny_world.people
    model = copy.deepcopy(trained)
    r = unlearn(model, tiny_world.tokenizer, tiny_world.of(ppl[0]), tiny_world.of(*ppl[4:]),
                params={**LOOP, "target_forget_prob": 0.999})
    assert r.stats["alpha"] == 0 and r.stats["target_met"] is True
    assert r.stats["repair"]["rounds"] == [] and r.stats["repair"]["skipped"]
    before = dict(trained.named_parameters())
    for name, q in model.named_parameters():
        assert torch.equal(q, before[name]), name
    assert r.stats["repair"]["retain_probe"] == pytest.approx(
        r.stats["calibration"]["retain_probe_before"])


def test_repair_beta1_reaches_the_repair_optimiser(trained: torch.nn.Module,
                                                   tiny_world: TinyWorld,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from alkn_core import repair

    seen: list[tuple[float, float]] = []

    class Recording(torch.optim.AdamW):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            seen.append(tuple(self.defaults["betas"]))  # type: ignore[arg-type]

    monkeypatch.setattr(repair.torch.optim, "AdamW", Recording)  # training's records too
    _forget_person_0(trained, tiny_world, repair_rounds=1)
    assert seen and set(seen) == {(0.9, 0.999)}  # the default: Adam's
    seen.clear()
    _forget_person_0(trained, tiny_world, repair_rounds=1, repair_beta1=0.0)
    assert (0.0, 0.999) in seen


def test_shrink_gives_back_what_the_hinge_took_too_far(trained: torch.nn.Module,
                                                       tiny_world: TinyWorld) -> None:
    """Without repair_shrink the repair's hinge leaves person 0 far under the target; the
    task's whole change scaled back leaves them at it, and the people not requested higher."""
    stats, forget, others = _forget_person_0(trained, tiny_world)
    plain, plain_forget, plain_others = _forget_person_0(trained, tiny_world,
                                                         repair_shrink=False)
    c = stats["calibration"]
    assert "shrink" not in plain["repair"]
    assert plain_forget * c["forget_prob_before"] < 0.5 * c["target"]  # far under it
    assert 0 < stats["repair"]["shrink"] < 1
    assert _at_target(stats, forget)
    assert forget * c["forget_prob_before"] >= 0.5 * c["target"]
    assert others > plain_others


def test_rounds_take_the_repair_batches_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """With more repair batches than a round's steps, the rounds go on where the last one
    stopped: every batch, the longest items' too, is trained on (each round used to start
    at the first, shortest batch, and the last ones were never seen); with fewer, every
    round covers them all from the first."""
    from alkn_core import repair

    assert [repair.batch_turn(s, 4, 6, 6) for s in range(6)] == [0, 1, 2, 3, 0, 1]
    assert [repair.batch_turn(s, 8, 6, 6) for s in range(3)] == [6, 7, 0]
    seen: list[int] = []
    monkeypatch.setattr(repair.Teacher, "kl_backward",
                        lambda _self, _m, i, weight=1.0: seen.append(i) or 0.0)
    model = torch.nn.Linear(2, 2)
    params = {**method_params("alkn", {}), "repair_steps": 6}
    batch = {"input_ids": torch.zeros(1, 1)}
    teacher = repair.Teacher([batch] * 15, [], [])
    for r in range(3):
        repair.repair(model, teacher, [], 0.1, params, 1e-3, r)
    assert seen == [*range(15), *range(3)]  # 18 steps over 15 batches: each one once at least
    seen.clear()
    small = repair.Teacher([batch] * 4, [], [])
    for r in range(2):
        repair.repair(model, small, [], 0.1, params, 1e-3, r)
    assert seen == [0, 1, 2, 3, 0, 1] * 2  # every round from the first


def test_a_round_the_guard_cannot_take_back_is_undone(trained: torch.nn.Module,
                                                      tiny_world: TinyWorld,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A round that brought the forget items back above the target, where negating further
    cannot reach it again, is undone: the model is the negated one the repair started from,
    and no more rounds or shrink run (forgetting wins)."""
    from alkn_core import negation
    from alkn_core.calibration import CalibrationError

    real_search = negation.NegationProbe.search
    seen: dict[str, Any] = {}

    def round_that_unlearns_nothing(model: torch.nn.Module, *args: Any, **kw: Any
                                    ) -> dict[str, Any]:
        seen["negated"] = {n: q.detach().clone() for n, q in model.named_parameters()}
        model.load_state_dict(trained.state_dict())  # the forget items fully back
        seen["guarding"] = True
        return {"steps": 0}

    def search(self: Any, *args: Any, **kw: Any) -> Any:
        if seen.get("guarding"):
            raise CalibrationError(0.0, [], 1.0, 1)
        return real_search(self, *args, **kw)

    monkeypatch.setattr(negation, "repair", round_that_unlearns_nothing)
    monkeypatch.setattr(negation.NegationProbe, "search", search)
    stats, forget, _ = _forget_person_0(trained, tiny_world)
    rep = stats["repair"]
    assert rep["undone"] is True and len(rep["rounds"]) == 1 and "shrink" not in rep
    assert forget < 1.0  # what the negation forgot is kept
    # the model is the negated one, to the bit (_forget_person_0 unlearnt a copy: read it
    # back through the stats' forget probability, measured on it after the undo)
    model = copy.deepcopy(trained)
    model.load_state_dict(seen["negated"], strict=False)  # the head is tied
    ppl = tiny_world.people
    assert _prob(model, tiny_world, tiny_world.of(ppl[0])) == pytest.approx(
        forget * _prob(trained, tiny_world, tiny_world.of(ppl[0])), rel=1e-6)
