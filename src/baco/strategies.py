"""Multi-pass baselines: methods whose samples depend on each other or on one long answer.

- `negative:W` — negative prompting in the style of STEER: sample k of a prompt is drawn from
  softmax((1 + W) log p_aligned(. | prompt) - W log p_aligned(. | prompt + the k earlier samples as
  "answers already given")), i.e. contrastive guidance where the "amateur" is the aligned model
  itself, primed to repeat what it already said (the newest earlier samples that leave the sample's budget in
  the context; older ones are dropped first). Sample 0 has nothing to avoid and is aligned alone.
  Samples are generated in n rounds; each round runs every prompt as one lockstep batch with the
  aligned model on both sides (two contexts, two KV caches). W = 0 is aligned alone.
- `verbalized:K` — verbalized sampling (K in [1, MAX_ITEMS = 100]): the aligned model is asked for K different
  answers in one response, numbered 1..K, each with its probability (VS "prompts the model to verbalize a probability
  distribution over a set of responses"; a plain list of K answers would not be VS); the response is split
  into its items, the probabilities cut off, each item a sample (its tokens and
  provenance are the tokens that cover the item). ceil(n / K) responses per prompt, their items numbered in
  round order (whatever order the rows finish in: the samples do not depend on the batch size); a response
  that yields fewer items than asked gives fewer samples (counted, not padded); an item on the last line of a
  response cut by the length budget is left out (it may be cut short, its probability half-written), so every
  item is a whole answer: its finish_reason is "stop", whatever ended the response (an item written in more than
  `max_new_tokens` tokens is cut to them and says "length": each answer has a sample's budget). The user's stop strings
  (`SamplingParams.stop`) end each answer: the response runs without them, and each item is cut before its first
  one (its tokens those that cover the cut text; an item cut to nothing is no sample).

Both return `Sample`s like `Collaboration.generate`, so `baco eval` and `baco sweep` treat them like
any router; their `router` field reads `negative:W` / `verbalized:K`.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator

from baco.defaults import MEMORY_FRACTION
from baco.decode.loop import Request, lockstep, occurrences_of
from baco.decode.records import Sample, collect
from baco.decode.sampling import SamplingParams
from baco.errors import InvalidSamplingParams, PromptTooLongError, UnknownRouterError
from baco.models.hf import HFCausalLM
from baco.models.pair import ModelPair
from baco.prompts import Prompt, PromptFormat, encode_request, last_turn, with_last_turn
from baco.routers import get_router, list_routers
from baco.routers.cross import token_knobs_refusal, unit_of
from baco.routers.registry import bounds, reserve, split_spec
from baco.routers.neighbours import MAX_WEIGHT

# The most answers verbalized sampling asks for in one response: a round number, 20 times the VS paper's k = 5. The
# response's budget is k times max_new_tokens and one model writes all k answers, each different from the others, in
# one context: a k of thousands asks for a response no model writes (and `verbalized:1e9` was accepted).
MAX_ITEMS = 100
NEGATIVE_TEMPLATE = "{prompt}\n\nHere are answers you already gave:\n{previous}\nGive one of these answers again."
VERBALIZED_TEMPLATE = ("{prompt}\n\nGive {k} different answers, as different from each other as you can, each with "
                       "its probability (how likely it is as an answer to this request). Number them 1 to {k}, "
                       "one per line, each as: <answer> (probability: <a number between 0 and 1>)")
# a numbered line: "1. text", "2) text", "3: text", the marker followed by a space or the line's end (not "3.5 apples",
# "10:30"); the text (group 2, None for an empty item) starts on that line (an empty item "2." must not take the next
# line as its text), and spaces around it are not part of it. `split_items` keeps the lines numbered as a list (of at
# most MAX_ITEMS answers: a longer number is no marker, and int() reads every number it matches).
ITEM = re.compile(r"^[^\S\n]*(\d{1,4})[.):](?:[^\S\n]+(\S.*?))?[^\S\n]*$", re.MULTILINE)
# an item's verbalized probability at its end: "(probability: 0.3)", "[0.3]", "(30%)", "- probability: 0.3"
_P = r"(?:0?\.\d+|[01](?:\.0+)?|\d{1,3}(?:\.\d+)?\s*%)"
_NAME = r"(?:(?:probability|prob\.?)\s*[:=]?|p\s*[:=])"
PROBABILITY = re.compile(r"\s*(?:[(\[]\s*(?:" + _NAME + r"\s*)?" + _P + r"\s*[)\]]"
                         r"|[-\u2013\u2014|,;:]?\s*" + _NAME + r"\s*" + _P + r")\s*\.?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class StrategySpec:
    name: str
    param: str
    default: float
    low: float
    help: str
    fn: Callable[..., Iterator[Sample]]
    integer: bool = False
    high: float | None = None
    refuses: Callable[[SamplingParams], str | None] | None = None  # why it cannot take these knobs (None: fine)


STRATEGIES: dict[str, StrategySpec] = {}


def parse_strategy(spec: str) -> tuple[StrategySpec, float] | None:
    """`negative:0.5` -> (spec, 0.5); None when the name is not a strategy (then it is a router)."""
    entry = STRATEGIES.get(str(spec).strip().partition(":")[0].strip().lower())
    if entry is None:
        return None
    _, raw = split_spec(str(spec))
    kind = f"{'an integer' if entry.integer else 'a number'} {bounds(entry.low, entry.high)}"
    try:
        value = float(raw) + 0.0 if raw is not None else entry.default  # (+ 0.0: "-0" is 0)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UnknownRouterError(f"{entry.name} needs {kind} for {entry.param}, got {raw.strip()!r}")
    if (value < entry.low or (entry.high is not None and value > entry.high)
            or (entry.integer and value != int(value))):
        raise UnknownRouterError(f"{entry.name}: {entry.param} must be {kind}, got {value:g}")
    return entry, value


def method_names() -> list[str]:
    """What a `--router` (or `router=`) that runs multi-pass methods takes: every router and every such method."""
    return sorted([*(spec.name for spec in list_routers()), *STRATEGIES])


def _render(lm: HFCausalLM, fmt: PromptFormat, prompt: Prompt, index: int) -> list[int]:
    return encode_request(prompt, index, fmt, lm.tokenizer, lm.tokenizer, lm.context_length)[1]


def negative_prompting(lm: HFCausalLM, prompts: list[Prompt], *, n: int, weight: float, sampling: SamplingParams,
                       fmt: PromptFormat | None = None, batch_size: int | str = 256,
                       memory_fraction: float = MEMORY_FRACTION,
                       occurrences: list[int] | None = None) -> Iterator[Sample]:
    """`occurrences`: each prompt's copy number (`decode.loop.occurrences_of`; default: counted in `prompts`):
    a repeated prompt's copies have their own random streams, like `Collaboration.requests` gives them."""
    fmt = fmt or PromptFormat()
    copies = occurrences if occurrences is not None else occurrences_of(prompts)
    pair = ModelPair(lm, lm)
    guided, alone = get_router(f"contrast:{weight:g}"), get_router("aligned")
    earlier: dict[int, list[str]] = {i: [] for i in range(len(prompts))}
    seed = sampling.seed if sampling.seed is not None else 0
    for k in range(n):
        requests = []
        for i, prompt in enumerate(prompts):
            mine = _render(lm, fmt, prompt, i)
            budget = min(sampling.max_new_tokens, lm.context_length - len(mine))
            other = _primed(lm, fmt, prompt, i, earlier[i], budget) or mine
            requests.append(Request.of(prompt, i, k, other, mine, seed, budget, copies[i]))
        began = time.perf_counter()
        events = lockstep(pair, requests, guided if k else alone, sampling, sampling.stop, max_batch=batch_size,
                          memory_fraction=memory_fraction)
        for sample in collect(events, requests, lm.tokenizer, router=f"negative:{weight:g}",
                              stop_strings=sampling.stop, stop_ids=pair.vocab.stop_ids,
                              token_texts=pair.vocab.texts, started=began,
                              extra={"sampling": {**sampling.to_dict(), "seed": seed},
                                     "models": {"aligned": lm.name}}, min_tokens=sampling.min_tokens):
            earlier[sample.prompt_index].append(sample.text)
            yield sample


def _primed(lm: HFCausalLM, fmt: PromptFormat, prompt: Prompt, index: int, earlier: list[str],
            budget: int) -> list[int] | None:
    """The negative context: the prompt with its earlier samples as answers already given, the newest ones that
    leave `budget` new tokens in the model's context (the oldest are dropped first, so that every sample has the
    budget of the first and a long run does not outgrow the context); None when no earlier sample has text or
    not even the newest fits (then the sample is the aligned model's own)."""
    answers = [t for t in earlier if t.strip()]
    while answers:
        previous = "\n".join(f"- {t}" for t in answers)
        try:
            asked = NEGATIVE_TEMPLATE.format(prompt=last_turn(prompt), previous=previous)
            ids = _render(lm, fmt, with_last_turn(prompt, asked), index)
        except PromptTooLongError:
            ids = None
        if ids is not None and len(ids) + budget <= lm.context_length:
            return ids
        answers = answers[1:]
    return None


def split_items(text: str, limit: int | None = None) -> list[tuple[int, int]]:
    """(start, end) character spans of the numbered items of a response ("1. ...", "2) ...", "3: ..."), each without
    its verbalized probability ("... (probability: 0.3)"); an item that is empty or only a probability is dropped.

    The items are the list the request asks for, numbered 1 to k (`limit`: k, when given): a line is an item when
    its number is the list's next (1 for the first, then one more than the item before, an empty item counted, at
    most `limit`) and it is indented as item 1 is. Any other numbered line is text of no item ("2020: a good year",
    an indented sub-list's "1." and "2.", a number out of turn, an item k + 1), so a list that skips a number
    ends there."""
    spans, expected, indent = [], 1, None
    for m in ITEM.finditer(text):
        margin = m.start(1) - m.start()  # (the match begins at its line's start)
        if int(m.group(1)) != expected or (indent is not None and margin != indent):
            continue
        if limit is not None and expected > limit:
            break
        expected, indent = expected + 1, margin
        if m.group(2) is None:
            continue
        start, end = m.start(2), m.end(2)
        p = PROBABILITY.search(text, start, end)
        end = p.start() if p else end
        if end > start:
            spans.append((start, end))
    return spans


def _cut_at_stop(text: str, span: tuple[int, int], stops: tuple[str, ...]) -> tuple[int, int]:
    """An item's span cut before the first of the user's stop strings in its text, and before the spaces that lead
    up to it (an item's spaces are not part of it); the span as it is when its text holds none."""
    start, end = span
    cuts = [at for at in (text.find(stop, start, end) for stop in stops) if at >= 0]
    if not cuts:
        return span
    end = min(cuts)
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _covering(parent: Sample, span: tuple[int, int]) -> list[tuple[int, int]]:
    """(index, end) of each of the parent's tokens that write part of an item's span of its `text`, `end` being where
    the token's piece ends in `text` (the joined pieces, leading space stripped)."""
    joined = "".join(parent.token_texts)
    offset = len(joined) - len(joined.lstrip())
    start, end = span[0] + offset, span[1] + offset
    covering, position = [], 0
    for k, piece in enumerate(parent.token_texts):
        if position < end and position + len(piece) > start:
            covering.append((k, position + len(piece) - offset))
        position += len(piece)
    return covering


def _item_sample(parent: Sample, span: tuple[int, int], index: int) -> Sample:
    """A sample for one item: its text, and the parent's per-token columns for the tokens covering it."""
    keep = [k for k, _ in _covering(parent, span)]
    columns = ("token_ids", "token_texts", "sources", "reasons", "base_top1_prob", "base_entropy",
               "aligned_top1_prob", "chosen_prob")
    picked = {c: [getattr(parent, c)[k] for k in keep] for c in columns}
    return replace(parent, sample_index=index, text=parent.text[span[0]:span[1]], **picked)


def _within_budget(parent: Sample, span: tuple[int, int], limit: int) -> tuple[tuple[int, int], bool]:
    """An item's span cut after the first `limit` of the tokens that write it (each answer gets the budget a
    sample of any router gets: `max_new_tokens`, the response having K times it), and whether it was cut."""
    covering = _covering(parent, span)
    if len(covering) <= limit:
        return span, False
    cut = min(span[1], covering[limit - 1][1])
    while cut > span[0] and parent.text[cut - 1].isspace():
        cut -= 1
    return (span[0], cut), True


def _in_round_order(responses: Iterator[Sample], count: int) -> Iterator[Sample]:
    """Each prompt's responses in round order (sample index 0, 1, ...). Rows finish in an order the batch sets (a short
    response first); numbered by it, the items' sample indexes, and which are kept when n is not a multiple of k,
    would depend on the batch size."""
    held: dict[tuple[int, int], Sample] = {}
    due = [0] * count
    for response in responses:
        held[(response.prompt_index, response.sample_index)] = response
        i = response.prompt_index
        while (i, due[i]) in held:
            yield held.pop((i, due[i]))
            due[i] += 1


def verbalized_sampling(lm: HFCausalLM, prompts: list[Prompt], *, n: int, k: int, sampling: SamplingParams,
                        fmt: PromptFormat | None = None, batch_size: int | str = 256,
                        memory_fraction: float = MEMORY_FRACTION,
                        occurrences: list[int] | None = None) -> Iterator[Sample]:
    """`occurrences`: as for `negative_prompting`; each copy's responses (and so its items) are its own."""
    from baco.api import Collaboration
    from baco.models.pair import SoloPair

    k = int(k)
    collab = Collaboration(SoloPair(lm, "aligned"), fmt)
    collab._clamp_warnings = False  # its responses are k times as long as asked: the caller warned with its numbers
    asks = [with_last_turn(p, VERBALIZED_TEMPLATE.format(prompt=last_turn(p), k=k)) for p in prompts]
    rounds = -(-n // k)
    # the user's stop strings end each answer, not the response (stop "\n" would end it after its first answer): the
    # response runs without them (the model's stop tokens and the format's stop strings still end it), and each
    # item is cut at its first one
    longer = replace(sampling, max_new_tokens=sampling.max_new_tokens * k, stop=())
    made = {i: 0 for i in range(len(prompts))}
    copies = occurrences if occurrences is not None else occurrences_of(prompts)  # the asks repeat as the prompts do
    responses = collab.iter_generate(asks, router="aligned", n=rounds, sampling=longer, batch_size=batch_size,
                                     memory_fraction=memory_fraction, occurrences=copies)
    for response in _in_round_order(responses, len(prompts)):
        i = response.prompt_index
        items = split_items(response.text, limit=k)
        if response.finish_reason == "length" and items and "\n" not in response.text[items[-1][1]:]:
            items = items[:-1]  # the length budget cut the last line, so its item may be cut short: not an answer
        items = [span for span in (_cut_at_stop(response.text, span, sampling.stop) for span in items)
                 if span[1] > span[0]]  # an item cut to nothing is no answer, as an empty one
        for span in items:  # (at most k: split_items stops at item k)
            if made[i] >= n:
                break
            span, long = _within_budget(response, span, sampling.max_new_tokens)
            item = _item_sample(response, span, made[i])
            made[i] += 1
            # recorded as asked: the response's longer budget is how the method runs, not a setting to repeat it with
            asked = {**item.sampling, "max_new_tokens": sampling.max_new_tokens, "stop": list(sampling.stop)}
            messages = prompts[i] if isinstance(prompts[i], list) else None  # the conversation asked, not the ask
            # a whole answer ("stop"), whatever ended the response (a last item the length budget may have cut is
            # left out above), unless it ran past its own budget and was cut to it ("length")
            yield replace(item, prompt=last_turn(prompts[i]), messages=messages, router=f"verbalized:{k}",
                          sampling=asked, finish_reason="length" if long else "stop")


def _register(name, param, default, low, help, integer=False, high=None, refuses=None):
    reserve(name, "a multi-pass method (baco.strategies)")

    def add(fn):
        STRATEGIES[name] = StrategySpec(name, param, default, low, help, fn, integer, high, refuses)
        return fn
    return add


def check_method_knobs(method, sampling: SamplingParams) -> None:
    """Refuse (`InvalidSamplingParams`) the sampling knobs a method cannot take: those that act on one model's
    tokens for a cross-tokenizer method, and what a multi-pass method refuses. `method`: a name or a Router. The one
    check behind the library, sweep configurations and `baco generate` (which runs it before any model loads)."""
    name = getattr(method, "name", method)
    if sampling.names_token_ids and unit_of(name) is not None:
        raise InvalidSamplingParams(token_knobs_refusal(name))
    strategy = parse_strategy(name) if isinstance(name, str) else None
    if strategy is not None and strategy[0].refuses is not None:
        problem = strategy[0].refuses(sampling)
        if problem:
            raise InvalidSamplingParams(f"{strategy[0].name}: {problem}")


def _whole_response_knobs(sampling: SamplingParams) -> str | None:
    """Verbalized sampling cuts its answers out of one response: a knob that counts one sample's tokens would count
    the response's."""
    if sampling.min_tokens:
        return (f"min_tokens ({sampling.min_tokens}) would hold back the end of the whole response its k answers "
                f"are cut from, not of each answer; leave it off")
    if sampling.stop_token_ids:
        return ("stop_token_ids would end the whole response its k answers are cut from, not one answer; leave them "
                "off (stop strings end each answer)")
    return None


@_register("negative", "weight", 0.5, 0.0, "negative prompting (STEER-style): push away from the aligned "
           "model primed with the prompt's earlier samples; sample k depends on samples < k", high=MAX_WEIGHT)
def _negative(lm, prompts, *, n, value, **options):
    return negative_prompting(lm, prompts, n=n, weight=value, **options)


@_register("verbalized", "k", 5, 1, "verbalized sampling: ask the aligned model for k numbered answers with "
           "probabilities in one response and split them", integer=True, high=MAX_ITEMS,
           refuses=_whole_response_knobs)
def _verbalized(lm, prompts, *, n, value, **options):
    return verbalized_sampling(lm, prompts, n=n, k=int(value), **options)
