"""Pareto fronts, Coverage and Dominance on hand-computed planes."""

import pytest

from baco.evaluate.pareto import dominated_area, method_family, normalise, pareto_aggregate, pareto_front

# Raw values on 0..10 scales, so normalised = raw / 10 (o:a is the minimum of both axes, m:a / t:a / n:a
# the maxima). t:a ties m:a exactly; n:b is dominated by m:b; o:a is dominated by everything.
PLANE = {
    "m:a": {"div": 10, "qual": 2}, "m:b": {"div": 6, "qual": 6},
    "n:a": {"div": 2, "qual": 10}, "n:b": {"div": 5, "qual": 5},
    "o:a": {"div": 0, "qual": 0},
    "t:a": {"div": 10, "qual": 2},
}
# Union areas by hand: global staircase (1, .2) (.6, .6) (.2, 1): .4*.2 + .4*.6 + .2*1 = .52
# m: (1, .2) (.6, .6) -> .08 + .36 = .44; n: (.2, 1) (.5, .5) -> .3*.5 + .2*1 = .35; t: (1, .2) -> .2; o: 0


def report(results, **kwargs):
    return pareto_aggregate(results, diversity=["div"], quality=["qual"], **kwargs)


def test_front_keeps_undominated_points_and_ties():
    points = {k: (v["div"] / 10, v["qual"] / 10) for k, v in PLANE.items()}
    assert pareto_front(points) == ["m:a", "m:b", "n:a", "t:a"]
    assert pareto_front({"a": (1.0, 1.0), "b": (1.0, 1.0)}) == ["a", "b"]
    assert pareto_front({"a": (1.0, 0.5), "b": (1.0, 1.0)}) == ["b"]  # equal x, higher y dominates


def test_dominated_area_is_the_exact_union_of_rectangles():
    assert dominated_area([(1.0, 0.2), (0.6, 0.6), (0.2, 1.0)]) == pytest.approx(0.52)
    assert dominated_area([(1.0, 0.2), (0.6, 0.6), (0.5, 0.5), (1.0, 0.2), (0.0, 0.0)]) == pytest.approx(0.44)
    assert dominated_area([(0.5, 0.5)]) == pytest.approx(0.25)
    assert dominated_area([]) == 0.0


def test_normalise_flips_lower_is_better_and_fixes_constant_axes():
    assert normalise({"a": 2.0, "b": 4.0, "c": 3.0}) == {"a": 0.0, "b": 1.0, "c": 0.5}
    assert normalise({"a": 2.0, "b": 4.0, "c": 3.0}, higher_is_better=False) == {"a": 1.0, "b": 0.0, "c": 0.5}
    assert normalise({"a": 7.0, "b": 7.0}) == {"a": 1.0, "b": 1.0}


def test_coverage_and_dominance_by_hand():
    out = report({"task": PLANE})
    plane = out.planes[0]
    assert plane.global_front == ["m:a", "m:b", "n:a", "t:a"]
    assert plane.fronts == {"m": ["m:a", "m:b"], "n": ["n:a", "n:b"], "o": ["o:a"], "t": ["t:a"]}
    assert plane.coverage == pytest.approx({"m": 0.44 / 0.52, "n": 0.35 / 0.52, "o": 0.0, "t": 0.2 / 0.52})
    assert plane.dominance == pytest.approx({"m": 0.5, "n": 0.25, "o": 0.0, "t": 0.25})  # tie counted for both
    assert out.per_task["task"]["o"] == {"coverage": 0.0, "dominance": 0.0, "planes": 1}  # no front point


def test_lower_is_better_metric_is_flipped_before_the_front():
    mirrored = {c: {"div": 10 - v["div"], "qual": v["qual"]} for c, v in PLANE.items()}
    out = report({"task": mirrored}, higher_is_better={"div": False})
    assert out.planes[0].coverage == pytest.approx({"m": 0.44 / 0.52, "n": 0.35 / 0.52, "o": 0.0, "t": 0.2 / 0.52})


def test_a_single_point_covers_everything():
    out = report({"task": {"aligned": {"div": 0.3, "qual": 4.0}}})
    assert out.planes[0].points == {"aligned": (1.0, 1.0)}
    assert out.overall["aligned"] == {"coverage": 1.0, "dominance": 1.0, "tasks": 1}


def test_zero_global_area_leaves_coverage_undefined_not_zero():
    out = report({"task": {"a": {"div": 10, "qual": 0}, "b": {"div": 0, "qual": 10}}})
    assert out.planes[0].coverage == {"a": None, "b": None}
    assert out.planes[0].dominance == {"a": 0.5, "b": 0.5}


def test_methods_without_values_are_left_out_of_a_plane_and_its_averages():
    results = {"task": {**PLANE, "x:a": {"div": None, "qual": 3}}}
    out = report(results)
    assert out.planes[0].coverage["x"] is None and out.per_task["task"]["x"]["planes"] == 0
    assert out.per_task["task"]["x"]["coverage"] is None


def test_averages_over_planes_then_over_tasks():
    # plane (div, qual) as above; plane (div2, qual): m alone at the top right -> m covers 1, n 0.
    results = {
        "t1": {c: {**v, "div2": {"m:a": 10, "m:b": 10}.get(c, 0)} for c, v in PLANE.items()},
        "t2": {"m:a": {"div": 1, "div2": 1, "qual": 1}, "n:a": {"div": 0, "div2": 0, "qual": 0}},
    }
    results["t1"]["m:a"]["qual"] = 2
    out = pareto_aggregate(results, diversity=["div", "div2"], quality=["qual"])
    assert len(out.planes) == 4
    # t1 plane div2: m:a (1, .2), m:b (1, .6), n:a (0, 1): global front m:b, n:a; area .6, all m's
    assert out.per_task["t1"]["m"]["coverage"] == pytest.approx((0.44 / 0.52 + 1.0) / 2)
    assert out.per_task["t1"]["m"]["dominance"] == pytest.approx((0.5 + 0.5) / 2)
    assert out.per_task["t1"]["n"]["coverage"] == pytest.approx((0.35 / 0.52 + 0.0) / 2)
    assert out.per_task["t2"]["m"] == {"coverage": 1.0, "dominance": 1.0, "planes": 2}
    assert out.overall["m"]["coverage"] == pytest.approx(((0.44 / 0.52 + 1.0) / 2 + 1.0) / 2)
    assert out.overall["n"]["tasks"] == 2


def test_family_groups_configurations_by_callable_or_mapping():
    assert method_family("p-punc:0.5") == "p-punc" and method_family("aligned") == "aligned"
    out = report({"task": PLANE}, family={"m:a": "big", "m:b": "big", "n:a": "big"})
    assert set(out.planes[0].coverage) == {"big", "n:b", "o:a", "t:a"}
    assert out.planes[0].dominance["big"] == pytest.approx(0.75)
    assert report({"task": PLANE}, family=lambda c: "all").overall["all"]["coverage"] == pytest.approx(1.0)
