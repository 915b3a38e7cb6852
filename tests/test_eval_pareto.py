"""Pareto fronts, Coverage and Dominance on hand-computed planes."""

import pytest

from baco.evaluate.pareto import dominated_area, method_family, normalise, pareto_aggregate, pareto_front

# Raw values on 0..10 scales, so normalised = raw / 10 (o:1 is the minimum of both axes, m:1 / t:1 / n:1
# the maxima). t:1 ties m:1 exactly; n:2 is dominated by m:2; o:1 is dominated by everything.
PLANE = {
    "m:1": {"div": 10, "qual": 2}, "m:2": {"div": 6, "qual": 6},
    "n:1": {"div": 2, "qual": 10}, "n:2": {"div": 5, "qual": 5},
    "o:1": {"div": 0, "qual": 0},
    "t:1": {"div": 10, "qual": 2},
}
# Union areas by hand: global staircase (1, .2) (.6, .6) (.2, 1): .4*.2 + .4*.6 + .2*1 = .52
# m: (1, .2) (.6, .6) -> .08 + .36 = .44; n: (.2, 1) (.5, .5) -> .3*.5 + .2*1 = .35; t: (1, .2) -> .2; o: 0


def report(results, **kwargs):
    return pareto_aggregate(results, diversity=["div"], quality=["qual"], **kwargs)


def test_front_keeps_undominated_points_and_ties():
    points = {k: (v["div"] / 10, v["qual"] / 10) for k, v in PLANE.items()}
    assert pareto_front(points) == ["m:1", "m:2", "n:1", "t:1"]
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
    assert plane.global_front == ["m:1", "m:2", "n:1", "t:1"]
    assert plane.fronts == {"m": ["m:1", "m:2"], "n": ["n:1", "n:2"], "o": ["o:1"], "t": ["t:1"]}
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
    results = {"task": {**PLANE, "x:1": {"div": None, "qual": 3}}}
    out = report(results)
    assert out.planes[0].coverage["x"] is None and out.per_task["task"]["x"]["planes"] == 0
    assert out.per_task["task"]["x"]["coverage"] is None


def test_averages_over_planes_then_over_tasks():
    # plane (div, qual) as above; plane (div2, qual): m alone at the top right -> m covers 1, n 0.
    results = {
        "t1": {c: {**v, "div2": {"m:1": 10, "m:2": 10}.get(c, 0)} for c, v in PLANE.items()},
        "t2": {"m:1": {"div": 1, "div2": 1, "qual": 1}, "n:1": {"div": 0, "div2": 0, "qual": 0}},
    }
    results["t1"]["m:1"]["qual"] = 2
    out = pareto_aggregate(results, diversity=["div", "div2"], quality=["qual"])
    assert len(out.planes) == 4
    # t1 plane div2: m:1 (1, .2), m:2 (1, .6), n:1 (0, 1): global front m:2, n:1; area .6, all m's
    assert out.per_task["t1"]["m"]["coverage"] == pytest.approx((0.44 / 0.52 + 1.0) / 2)
    assert out.per_task["t1"]["m"]["dominance"] == pytest.approx((0.5 + 0.5) / 2)
    assert out.per_task["t1"]["n"]["coverage"] == pytest.approx((0.35 / 0.52 + 0.0) / 2)
    assert out.per_task["t2"]["m"] == {"coverage": 1.0, "dominance": 1.0, "planes": 2}
    assert out.overall["m"]["coverage"] == pytest.approx(((0.44 / 0.52 + 1.0) / 2 + 1.0) / 2)
    assert out.overall["n"]["tasks"] == 2


def test_family_groups_configurations_by_callable_or_mapping():
    assert method_family("p-punc:0.5") == "p-punc" and method_family("aligned") == "aligned"
    assert method_family("m:a") == "m:a"  # not a knob value: a name of its own
    out = report({"task": PLANE}, family={"m:1": "big", "m:2": "big", "n:1": "big"})
    assert set(out.planes[0].coverage) == {"big", "n:2", "o:1", "t:1"}
    assert out.planes[0].dominance["big"] == pytest.approx(0.75)
    assert report({"task": PLANE}, family=lambda c: "all").overall["all"]["coverage"] == pytest.approx(1.0)


def test_a_family_is_the_name_before_a_knob_value_only():
    # baco's configurations: a router's knob (`p-punc:0.3`) or a sweep's sampling knob (`base@temperature=0.7`)
    assert method_family("p-punc:0.3") == method_family("p-punc:1e-05") == "p-punc"
    assert method_family("base@temperature=0.7") == method_family("base@temperature=1.3") == "base"
    assert method_family("prompted@top_k=40") == "prompted"
    # other tools' model names hold colons that are no knob: each is a method of its own
    for name in ("llama3.1:8b", "llama3.1:70b", "ft:gpt-4o-mini-2024-07-18:acme::9xYz", "a@b", "x@top_p=high"):
        assert method_family(name) == name


def test_nan_and_infinite_values_are_missing_points_not_poison():
    # NaN would make min/max (so every normalised point) depend on the order of the configurations
    nan = float("nan")
    for bad in (nan, float("inf")):
        configs = {"m:1": {"div": bad, "qual": 1.0}, "m:2": {"div": 4, "qual": 0.0}, "n": {"div": 2, "qual": 1.0}}
        for order in (["m:1", "m:2", "n"], ["n", "m:2", "m:1"]):
            plane = report({"task": {c: configs[c] for c in order}}).planes[0]
            # m:1 left out; m:2 (1, 0), n (0, 1): both on the front, zero global area
            assert plane.points == {"m:2": (1.0, 0.0), "n": (0.0, 1.0)}
            assert plane.coverage == {"m": None, "n": None} and plane.dominance == {"m": 0.5, "n": 0.5}
    plane = report({"task": {"a": {"div": nan, "qual": 1.0}, "b": {"div": 1.0, "qual": 2.0}}}).planes[0]
    assert plane.coverage == {"a": None, "b": 1.0} and plane.dominance == {"a": None, "b": 1.0}
