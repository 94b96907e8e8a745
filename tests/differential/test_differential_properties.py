"""The property, one test per attack class: whatever Hypothesis sends, keyscope refuses it or every reader reads
exactly what keyscope approved (harness.World.check). Examples are derandomized so CI runs the same requests
every time; `KEYSCOPE_DIFFERENTIAL_EXAMPLES` scales their number for a longer local hunt."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from . import strategies, strategies_body
from .harness import World

pytestmark = pytest.mark.differential

SCALE = float(os.environ.get("KEYSCOPE_DIFFERENTIAL_EXAMPLES", "1"))


def examples(count: int) -> settings:
    return settings(max_examples=max(1, int(count * SCALE)), deadline=None, derandomize=True, database=None,
                    print_blob=False, suppress_health_check=list(HealthCheck),
                    phases=[Phase.explicit, Phase.generate, Phase.shrink])  # no "explain": it reruns under a tracer


@examples(150)
@given(case=strategies.id_names())
def test_id_names_varied(world: World, case: strategies.Case) -> None:
    world.check(case.attack, case.key, case.endpoint)


@examples(150)
@given(case=strategies.json_twins())
def test_json_containers_duplicated(world: World, case: strategies.Case) -> None:
    world.check(case.attack, case.key, case.endpoint)


@examples(100)
@given(case=strategies.param_counts())
def test_parameter_counts(world: World, case: strategies.Case) -> None:
    world.check(case.attack, case.key, case.endpoint)


@examples(120)
@given(case=strategies.method_overrides())
def test_method_overrides(world: World, case: strategies.Case) -> None:
    world.check(case.attack, case.key, case.endpoint)


@examples(150)
@given(case=strategies_body.multipart_bodies())
def test_multipart_bodies(world: World, case: strategies.Case) -> None:
    world.check(case.attack, case.key, case.endpoint)


@examples(150)
@given(case=strategies_body.fill_force())
def test_fill_and_force(world: World, case: strategies.Case) -> None:
    world.check(case.attack, case.key, case.endpoint)
