"""Routers are pure functions of a StepView; these tests use synthetic distributions, no model."""

import math

import pytest
import torch

from baco import SamplingParams
from baco.decode.sampling import RowKnobs
from baco.decode.step import route_and_draw
from baco.errors import UnknownRouterError
from baco.routers import Route, StepView, get_router, list_routers
from baco.vocab import TokenTable

TEXTS = ["<eos>", " the", " dragon", ".", "\n", " of", "ing", " cat"]
VOCAB = TokenTable.from_texts(TEXTS, stop_ids=[0])
THE, DRAGON, DOT, NEWLINE, OF, ING, CAT = 1, 2, 3, 4, 5, 6, 7


def peaked(top: int, prob: float) -> torch.Tensor:
    """A distribution over TEXTS with `prob` on `top` and the rest spread evenly."""
    p = torch.full((len(TEXTS),), (1 - prob) / (len(TEXTS) - 1))
    p[top] = prob
    return p.log()


def view(base_rows, aligned_rows, uniform=None):
    base = torch.stack([peaked(*r) for r in base_rows])
    aligned = torch.stack([peaked(*r) for r in aligned_rows])
    u = torch.zeros(len(base_rows)) if uniform is None else torch.tensor(uniform)
    return StepView(base, aligned, VOCAB, u)


def test_p_router_routes_uncertain_steps_to_base():
    v = view([(DRAGON, 0.2), (DRAGON, 0.9)], [(CAT, 0.9), (CAT, 0.9)])
    route = get_router("p:0.5")(v)
    assert route.use_base.tolist() == [True, False]
    assert route.reason == ["base-uncertain", "base-confident"]


def test_p_router_extremes_never_and_always_use_base():
    v = view([(DRAGON, 0.2), (CAT, 0.999)], [(CAT, 0.9)] * 2)
    assert not get_router("p:0")(v).use_base.any()
    assert get_router("p:1.01")(v).use_base.all()


def test_h_router_routes_high_entropy_to_base():
    v = view([(DRAGON, 0.2), (DRAGON, 0.99)], [(CAT, 0.9)] * 2)
    entropy = v.base_entropy
    threshold = float(entropy.mean())
    assert get_router(f"h:{threshold}")(v).use_base.tolist() == [True, False]
    uniform = -math.log(1 / len(TEXTS))
    assert torch.allclose(StepView(torch.full((1, 8), -uniform), torch.full((1, 8), -uniform), VOCAB,
                                   torch.zeros(1)).base_entropy, torch.tensor([uniform]))


def test_punc_router_gives_predicted_punctuation_and_stops_to_aligned():
    v = view([(DRAGON, 0.9)] * 4, [(DOT, 0.9), (NEWLINE, 0.9), (0, 0.9), (CAT, 0.9)])
    assert get_router("punc")(v).use_base.tolist() == [False, False, False, True]


def test_fc_router_gives_function_words_to_aligned_and_content_to_base():
    v = view([(DRAGON, 0.9)] * 3, [(THE, 0.9), (OF, 0.9), (CAT, 0.9)])
    route = get_router("fc")(v)
    assert route.use_base.tolist() == [False, False, True]
    assert route.reason == ["function-word", "function-word", "content-word"]


def test_a_function_word_without_its_space_counts_where_a_word_starts():
    """"The" (no leading space) starts the answer or a line: a function word for FC, as " the" is. After a token
    that ends in a letter it would continue that word ("drag" + "The"), so it is not one; a view that does not
    know the rows' last tokens (previous=None) reads only the token's own leading space."""
    texts = ["<eos>", "The", "\n", "drag", " cat"]
    vocab = TokenTable.from_texts(texts, stop_ids=[0])
    rows = 4
    base = torch.log_softmax(torch.zeros(rows, 5), -1)
    aligned = torch.log_softmax(torch.tensor([[0.0, 5, 0, 0, 0]] * rows), -1)  # the aligned model predicts "The"
    previous = torch.tensor([-1, 2, 3, 4])  # nothing yet, "\n", "drag", " cat"
    route = get_router("fc")(StepView(base, aligned, vocab, torch.zeros(rows), previous=previous))
    assert route.use_base.tolist() == [False, False, True, True]
    assert route.reason == ["function-word", "function-word", "content-word", "content-word"]
    assert get_router("fc")(StepView(base, aligned, vocab, torch.zeros(rows))).use_base.all()


def test_combined_routers_apply_the_content_rule_before_the_threshold():
    # row 0: punctuation predicted -> aligned although base is uncertain; row 1: P decides
    v = view([(DRAGON, 0.1), (DRAGON, 0.1)], [(DOT, 0.9), (CAT, 0.9)])
    route = get_router("p-punc:0.5")(v)
    assert route.use_base.tolist() == [False, True]
    assert route.reason == ["punct", "base-uncertain"]
    assert get_router("h-punc:0.0")(v).use_base.tolist() == [False, True]
    v = view([(DRAGON, 0.1), (DRAGON, 0.1)], [(THE, 0.9), (CAT, 0.9)])
    assert get_router("p-fc:0.5")(v).use_base.tolist() == [False, True]


def test_rand_router_uses_the_row_uniforms():
    v = view([(DRAGON, 0.5)] * 4, [(CAT, 0.5)] * 4, uniform=[0.1, 0.4, 0.6, 0.9])
    assert get_router("rand:0.5")(v).use_base.tolist() == [True, True, False, False]


def test_fixed_routers():
    v = view([(DRAGON, 0.5)] * 2, [(CAT, 0.5)] * 2)
    assert get_router("base")(v).use_base.all()
    assert not get_router("aligned")(v).use_base.any()


def test_registry_parses_names_defaults_and_values():
    assert get_router("P-PUNC:0.3").name == "p-punc:0.3"
    assert get_router("p-punc").value == 0.5
    names = {spec.name for spec in list_routers()}
    assert {"base", "aligned", "p", "h", "punc", "fc", "p-punc", "h-punc", "p-fc", "rand"} <= names


@pytest.mark.parametrize("spec, words", [
    ("nope", "unknown router 'nope'"),
    ("p:abc", "needs a number"),
    ("rand:1.5", "must be in"),
    ("punc:0.3", "takes no parameter"),
    ("", "router must be"),
])
def test_bad_router_names_are_clear_errors(spec, words):
    with pytest.raises(UnknownRouterError, match=words):
        get_router(spec)


def test_routers_read_the_models_temperature_one_distributions_whatever_the_sampling_knobs():
    """P, H and PUNC route on the base model's own top-1 probability and entropy and the aligned model's own top-1
    token (the paper's statistics, docs/engine.md): temperature, top-k, top-p and min-p shape only the draw. At
    temperature 0.3 the base model's 0.45 would read as a confident 0.8 and go to the aligned model."""
    v = view([(DRAGON, 0.3), (DRAGON, 0.6), (CAT, 0.45), (CAT, 0.3)], [(CAT, 0.9), (CAT, 0.9), (CAT, 0.9), (DOT, 0.5)])
    knobs = [SamplingParams(), SamplingParams(temperature=0.3), SamplingParams(temperature=0),
             SamplingParams(temperature=1.7, top_k=1, top_p=0.1, min_p=0.3)]
    for router, expected in (("p:0.5", [True, False, True, True]), ("h:1.5", [True, False, True, True]),
                             ("p-punc:0.5", [True, False, True, False])):
        for params in knobs:
            drawn = route_and_draw(v, get_router(router), torch.zeros(4, 3), torch.full((4,), -1),
                                   torch.zeros(4, dtype=torch.bool), RowKnobs.of(params, 4), sync_free=False)
            assert drawn.use_base.tolist() == expected, (router, params)
            assert torch.allclose(drawn.stats[0], torch.tensor([0.3, 0.6, 0.45, 0.3]))  # base top-1 prob, as routed on


@pytest.fixture
def registry_restored():
    """Routers registered by a test are gone after it."""
    from baco.routers.registry import _REGISTRY

    saved = dict(_REGISTRY)
    yield
    _REGISTRY.clear()
    _REGISTRY.update(saved)


def test_a_router_of_ones_own_registers_and_runs_like_a_builtin(collab, registry_restored):
    import baco
    from baco.routers import Route

    def notebook_cell():  # the README's example; a notebook runs its cell again
        @baco.register("Aligned-Unsure", param="threshold", default=0.3, low=0.0, high=1.0,
                       help="base when the aligned model's top-1 probability < threshold")
        def aligned_unsure(view, threshold):
            return Route.where(view.aligned_top1_prob < threshold, "aligned-unsure", "aligned-sure")

    notebook_cell()
    notebook_cell()
    assert get_router("ALIGNED-UNSURE").name == "aligned-unsure:0.3"
    params = baco.SamplingParams(max_new_tokens=12, seed=1)
    never = collab.generate("Name a fruit.", sampling=params, router="aligned-unsure:0")[0]
    always = collab.generate("Name a fruit.", sampling=params, router=get_router("aligned-unsure:1"))[0]
    assert never.token_ids == collab.generate("Name a fruit.", sampling=params, router="aligned")[0].token_ids
    assert set(never.reasons) == {"aligned-sure"} and set(always.reasons) == {"aligned-unsure"}
    assert always.token_ids == collab.generate("Name a fruit.", sampling=params, router="base")[0].token_ids
    with pytest.raises(baco.BacoError, match="'p' is already registered .*baco.routers.builtin.p_router"):
        baco.register("p", help="another p")(lambda view: None)
    with pytest.raises(baco.BacoError, match="without spaces or ':'"):
        baco.register("mine:0.5", help="a knob in the name")


def test_a_router_cannot_take_a_multi_pass_methods_name(registry_restored):
    """`negative` / `verbalized` run their method wherever a router is named: a router of that name is unreachable."""
    import baco

    for name in ("negative", "Verbalized"):
        with pytest.raises(baco.BacoError, match=f"'{name.lower()}' already names a multi-pass method"):
            baco.register(name, help="never reached")(lambda view: None)
    assert "negative" not in {spec.name for spec in baco.list_routers()}


def test_a_router_that_answers_no_route_is_named():
    from baco.errors import BacoError
    from baco.routers import Router, RouterSpec

    mask_only = Router(RouterSpec("mask-only", lambda view: view.base_top1_prob < 0.5, "a mask, not a Route"), None)
    with pytest.raises(BacoError, match="router 'mask-only' returned Tensor, not a Route"):
        mask_only(view([(DRAGON, 0.5)], [(CAT, 0.5)]))


def test_a_mixture_weight_that_would_overflow_float32_is_refused_and_the_largest_allowed_still_writes(collab):
    """contrast:1e300 multiplied log-probs into inf - inf: NaN, and every sample came out empty ("length")."""
    from baco.routers.neighbours import MAX_WEIGHT
    from baco.strategies import parse_strategy

    for spec in ("contrast:1e300", "eft:1e7", "proxy:1e30"):
        with pytest.raises(UnknownRouterError, match=r"must be in \[0, 1e\+06\]"):
            get_router(spec)
    with pytest.raises(UnknownRouterError, match=r"negative: weight must be a number in \[0, 1e\+06\], got 1e\+300"):
        parse_strategy("negative:1e300")
    samples = collab.generate(["Name a fruit."], router=f"contrast:{MAX_WEIGHT:g}", n=2,
                              sampling=SamplingParams(max_new_tokens=6, seed=0))
    assert all(s.num_tokens == 6 and s.text for s in samples)


@pytest.mark.parametrize("answer, words", [
    (lambda v: Route.where(torch.ones(v.batch_size + 1, dtype=torch.bool), "a", "b"), r"use_base of shape \(3,\)"),
    (lambda v: Route.where((v.base_top1_prob < 0.5).float(), "a", "b"), "bool tensor.*got a torch.float32 tensor"),
    (lambda v: Route.where((v.base_top1_prob < 0.5).long(), "a", "b"), "bool tensor.*got a torch.int64 tensor"),
    (lambda v: Route.where([True] * v.batch_size, "a", "b"), "bool tensor.*got list"),
    (lambda v: Route.where(torch.tensor(True), "a", "b"), r"use_base of shape \(\)"),
    (lambda v: Route(v.base_top1_prob < 0.5, torch.zeros(v.batch_size), ("a",)), "codes.*integer tensor"),
    (lambda v: Route.mixed(v.base_logprobs[:, :3], "half a vocabulary"), r"mix of shape \(2, 3\)"),
])
def test_a_router_that_answers_a_malformed_route_is_named_before_the_step_uses_it(answer, words):
    """A router of one's own that returns a mask of the wrong shape or dtype failed deep in the step
    (`torch.where`, `gather`) with a message naming neither the router nor the mask."""
    from baco.errors import BacoError
    from baco.routers import Router, RouterSpec

    mine = Router(RouterSpec("mine", answer, "returns a malformed Route"), None)
    with pytest.raises(BacoError, match=words) as error:
        mine(view([(DRAGON, 0.5)] * 2, [(CAT, 0.5)] * 2))
    assert "router 'mine'" in str(error.value) or "Route.where" in str(error.value)


def test_an_error_raised_in_a_router_of_ones_own_reaches_the_caller_as_it_is_with_a_note_naming_the_router():
    """The user's own traceback and exception type stay (their bug, their line); a note says which router raised
    it, at a decoding step, since the call comes from inside the engine."""
    from baco.routers import Router, RouterSpec

    def buggy(view, g):
        return 1 / 0

    mine = Router(RouterSpec("buggy", buggy, "divides by zero", param="g", default=0.5), 0.25)
    with pytest.raises(ZeroDivisionError) as error:
        mine(view([(DRAGON, 0.5)] * 2, [(CAT, 0.5)] * 2))
    assert error.value.__notes__ == ["(raised by router 'buggy:0.25', called at a decoding step with a StepView of "
                                     "2 rows)"]


def test_a_registered_knob_without_a_default_must_be_given_and_a_default_must_lie_in_its_bounds(registry_restored):
    """`register(param=..., default=None)` let `router="name"` through and the step then called the function
    without its knob (TypeError); a default outside [low, high] was taken although the same value typed is refused."""
    import baco

    baco.register("needs-knob", param="g", help="no default")(lambda view, g: Route.where(view.base_top1_prob < g,
                                                                                           "a", "b"))
    with pytest.raises(UnknownRouterError, match="router 'needs-knob' needs a value for g: 'needs-knob:VALUE'"):
        get_router("needs-knob")
    assert get_router("needs-knob:0.2").value == 0.2
    with pytest.raises(baco.BacoError, match=r"default 5 .* outside its bounds \(in \[0, 1\]\)"):
        baco.register("bad-default", param="g", default=5, low=0, high=1, help="x")(lambda view, g: None)
    with pytest.raises(baco.BacoError, match="default .* but no param"):
        baco.register("default-no-knob", default=0.5, help="x")(lambda view: None)


def test_get_router_on_a_multi_pass_method_says_what_it_is_and_where_it_runs():
    """`baco.get_router("negative:0.5")` said "unknown router 'negative'" and listed routers without it, although the
    README lists negative among the methods a router= takes."""
    with pytest.raises(UnknownRouterError, match=r"'negative' names a multi-pass method.*not a Router object: "
                                                 r"pass the name, router='negative:0.5'"):
        get_router("negative:0.5")
