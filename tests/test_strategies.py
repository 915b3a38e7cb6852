"""Multi-pass baselines on the tiny pair: negative prompting and verbalized sampling."""

import math
import re

import pytest
import torch

from baco import SamplingParams
from baco.errors import InvalidSamplingParams
from baco.decode.records import Sample
from baco.models.hf import HFCausalLM
from baco.prompts import PromptFormat
from baco.strategies import (NEGATIVE_TEMPLATE, VERBALIZED_TEMPLATE, _item_sample, negative_prompting, split_items,
                             verbalized_sampling)

PROMPTS = ["Name a fruit.", "Tell me a story about a dragon."]


def test_negative_prompting_at_weight_zero_is_the_aligned_model_alone(collab):
    params = SamplingParams(max_new_tokens=10, seed=4)
    got = list(negative_prompting(collab.pair.aligned, PROMPTS, n=3, weight=0.0, sampling=params,
                                  fmt=collab.prompt_format))
    want = collab.generate(PROMPTS, router="aligned", n=3, sampling=params)
    by_key = {(s.prompt_index, s.sample_index): s.token_ids for s in want}
    assert {(s.prompt_index, s.sample_index): s.token_ids for s in got} == by_key


def test_negative_prompting_pushes_away_from_the_model_primed_with_earlier_samples(collab):
    lm, fmt = collab.pair.aligned, collab.prompt_format
    params = SamplingParams(temperature=0, max_new_tokens=6, seed=0)
    samples = sorted(negative_prompting(lm, PROMPTS[:1], n=2, weight=1.5, sampling=params, fmt=fmt),
                     key=lambda s: s.sample_index)
    first, second = samples
    assert set(first.sources) == {"aligned"}  # nothing to avoid yet
    assert set(second.sources) == {"mix"} and second.router == "negative:1.5"
    # second sample, step 0: argmax of 2.5 log p(. | prompt) - 1.5 log p(. | prompt + first sample), by hand
    tok = lm.tokenizer
    render = lambda text: tok(fmt.render_aligned(text, tok), add_special_tokens=False)["input_ids"]  # noqa: E731
    negative = NEGATIVE_TEMPLATE.format(prompt=PROMPTS[0], previous=f"- {first.text}")
    with torch.no_grad():
        lp = lambda ids: collab.pair.logprobs(  # noqa: E731
            lm.model(torch.tensor([ids], device=lm.device)).logits[:, -1]).clamp(min=-1e4)
        mixed = 2.5 * lp(render(PROMPTS[0])) - 1.5 * lp(render(negative))
    mixed[~collab.pair.vocab.allowed[None]] = -math.inf
    assert first.text.strip()  # the test needs a non-empty first sample to prime with
    assert second.token_ids[0] == int(mixed.argmax())


def test_numbered_items_are_split_with_their_own_tokens():
    text = "1. Apple, crisp.\n2) Mango\n3: Kiwi fruit"
    assert [text[a:b] for a, b in split_items(text)] == ["Apple, crisp.", "Mango", "Kiwi fruit"]
    pieces = [" 1", ".", " Apple", ",", " crisp", ".", "\n", "2", ")", " Mango", "\n", "3", ":", " Kiwi", " fruit"]
    parent = Sample(prompt="p", prompt_index=0, sample_index=0, router="aligned", seed=0,
                    text="".join(pieces).lstrip(), token_ids=list(range(len(pieces))), token_texts=pieces,
                    sources=["aligned"] * len(pieces), reasons=["aligned"] * len(pieces),
                    base_top1_prob=[0.5] * len(pieces), base_entropy=[1.0] * len(pieces),
                    aligned_top1_prob=[0.5] * len(pieces), chosen_prob=[0.5] * len(pieces))
    spans = split_items(parent.text)
    items = [_item_sample(parent, span, i) for i, span in enumerate(spans)]
    assert [i.text for i in items] == ["Apple, crisp.", "Mango", "Kiwi fruit"]
    assert [i.token_texts for i in items] == [[" Apple", ",", " crisp", "."], [" Mango"], [" Kiwi", " fruit"]]
    assert [i.sample_index for i in items] == [0, 1, 2]


def test_an_answer_longer_than_a_samples_budget_is_cut_to_it():
    """The response has K x max_new_tokens, but each answer is a sample: at most max_new_tokens of its tokens."""
    from baco.strategies import _within_budget

    pieces = [" 1", ".", " A", " very", " long", " answer", "\n", "2", ".", " Short"]
    parent = Sample(prompt="p", prompt_index=0, sample_index=0, router="aligned", seed=0,
                    text="".join(pieces).lstrip(), token_ids=list(range(len(pieces))), token_texts=pieces,
                    sources=["aligned"] * len(pieces), reasons=["aligned"] * len(pieces),
                    base_top1_prob=[0.5] * len(pieces), base_entropy=[1.0] * len(pieces),
                    aligned_top1_prob=[0.5] * len(pieces), chosen_prob=[0.5] * len(pieces))
    long, short = split_items(parent.text)
    span, cut = _within_budget(parent, long, 2)
    item = _item_sample(parent, span, 0)
    assert cut and item.text == "A very" and item.token_texts == [" A", " very"]
    assert _within_budget(parent, short, 2) == (short, False)
    assert _within_budget(parent, long, 4) == (long, False)


def test_verbalized_sampling_asks_for_probabilities_and_keeps_them_out_of_the_samples():
    # Verbalized sampling "prompts the model to verbalize a probability distribution over a set of
    # responses (e.g., 'Generate 5 jokes about coffee and their corresponding probabilities')"
    # (shared/seeds/002; PAPER.md section 4: "ask the aligned model for several answers with probabilities").
    ask = VERBALIZED_TEMPLATE.format(prompt="Name a fruit.", k=3)
    assert "probabilit" in ask.lower() and "3" in ask
    # the samples are the answers; their verbalized probabilities are not part of the text
    text = ("1. Apple (probability: 0.4)\n2) Mango [0.35]\n3: Kiwi fruit - probability: 25%\n"
            "4. Orwell's novel (1984)\n5. Catch-22 (p=.05)\n6. (0.1)")
    assert [text[a:b] for a, b in split_items(text)] == ["Apple", "Mango", "Kiwi fruit", "Orwell's novel (1984)",
                                                         "Catch-22"]


def test_verbalized_sampling_yields_only_parsed_items(verbalizing_dirs):
    """The aligned model answers the request with a numbered list (NUMBERED_ANSWERS in conftest): each item,
    its probability cut off, is one sample with the tokens that write it; n=3 from k=2 takes two responses."""
    lm = HFCausalLM.from_pretrained(verbalizing_dirs[1], device="cpu")
    greedy = SamplingParams(temperature=0, max_new_tokens=24)  # 2 x 24 tokens: room for either whole list
    samples = list(verbalized_sampling(lm, PROMPTS, n=3, k=2, sampling=greedy, fmt=PromptFormat()))
    items = [["Apple", "Mango", "Apple"], ["A red dragon", "A tiny dragon", "A red dragon"]]
    assert [(s.prompt_index, s.sample_index, s.text) for s in samples] == [
        (i, j, text) for i in range(2) for j, text in enumerate(items[i])]
    assert [s.prompt for s in samples] == [p for p in PROMPTS for _ in range(3)]  # the prompt, not the request
    assert {s.router for s in samples} == {"verbalized:2"} and {s.finish_reason for s in samples} == {"stop"}
    for s in samples:
        assert "".join(s.token_texts).lstrip() == s.text  # the first token may carry the space before the item
        assert lm.tokenizer.decode(s.token_ids).lstrip() == s.text
        assert len(s.sources) == len(s.chosen_prob) == len(s.token_ids)


def test_strategies_run_through_the_api_like_routers(collab):
    params = SamplingParams(max_new_tokens=8, seed=2)
    samples = collab.generate(PROMPTS, router="negative:0.5", n=2, sampling=params)
    assert [(s.prompt_index, s.sample_index) for s in samples] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert {s.router for s in samples} == {"negative:0.5"}


def test_negative_prompting_gives_each_copy_of_a_repeated_prompt_its_own_samples(collab):
    params = SamplingParams(max_new_tokens=8, seed=2)
    twice = collab.generate([PROMPTS[0], PROMPTS[0]], router="negative:0.5", n=2, sampling=params)
    alone = collab.generate(PROMPTS[:1], router="negative:0.5", n=2, sampling=params)
    first, second = twice[:2], twice[2:]
    assert [s.token_ids for s in first] == [s.token_ids for s in alone]
    assert [s.occurrence for s in second] == [1, 1]
    assert {tuple(s.token_ids) for s in second}.isdisjoint(tuple(s.token_ids) for s in first)


def test_a_multi_pass_method_without_a_seed_draws_one_and_records_it(collab):
    def seed_used():
        sample = collab.generate("Why?", sampling=SamplingParams(max_new_tokens=4), router="negative:0.5")[0]
        return sample.sampling["seed"]

    assert seed_used() != seed_used()


def test_negative_prompting_primes_with_the_newest_earlier_samples_that_fit_the_context(tmp_path):
    """Many samples' worth of earlier answers outgrow a short context: the oldest are left out of the negative
    context (not an error naming the user's short prompt as too long), and every sample keeps the first's budget."""
    from baco import Collaboration
    from baco.strategies import _primed
    from baco.testing import make_tiny_pair

    short = Collaboration.from_pretrained(*make_tiny_pair(tmp_path, context=96), device="cpu")
    lm, fmt = short.pair.aligned, short.prompt_format
    params = SamplingParams(max_new_tokens=16, seed=3)
    samples = list(negative_prompting(lm, PROMPTS[:1], n=6, weight=0.5, sampling=params, fmt=fmt))
    assert [s.sample_index for s in samples] == list(range(6))
    assert all(set(s.sources) == {"mix"} for s in samples[1:])
    answers = ["apple pie " * 3, "mango juice " * 3, "kiwi tart " * 3, "plum jam " * 3]
    primed = lm.tokenizer.decode(_primed(lm, fmt, PROMPTS[0], 0, answers, budget=16))
    assert answers[-1].strip() in primed and answers[0].strip() not in primed
    assert len(_primed(lm, fmt, PROMPTS[0], 0, answers, budget=16)) + 16 <= lm.context_length


def test_an_empty_numbered_item_is_no_sample_and_does_not_take_the_next_line():
    for text in ("1. Apple\n2.\n3. Kiwi", "1. Apple\r\n2.   \r\n3. Kiwi\r\n",
                 "1. Apple (probability: 0.4)\n2. Kiwi\n3. "):
        assert [text[a:b] for a, b in split_items(text)] == ["Apple", "Kiwi"]


def test_only_the_list_numbering_makes_items():
    """The request asks for answers numbered 1 to k: an item is a line that starts with the list's next number (1 for
    the first, then one more than the item before, an empty item counted) and ".", ")" or ":" and a space. Any other
    numbered line is text of no item: a year, a time, a decimal, a sub-list, a number out of turn."""
    text = ("Here are my answers.\n2020: a good year\n1. Apple (0.4)\n   1. Granny Smith\n2) Mango\n10:30 is late\n"
            "3.5 apples\n3: Kiwi fruit\n5. Plum\n4.\n5. Fig (0.1)\n6.Pear")
    assert [text[a:b] for a, b in split_items(text)] == ["Apple", "Mango", "Kiwi fruit", "Fig"]
    assert split_items("2020: a year\n1999. another") == []


def test_a_sub_list_and_items_past_k_are_not_answers():
    nested = "1. Apple\n   1. Granny Smith\n   2. Fuji\n2. Pear"
    assert [nested[a:b] for a, b in split_items(nested)] == ["Apple", "Pear"]  # "Fuji" is no second answer
    empty = "1. A\n2.\n3. C"  # asked for 2: answer 2 is empty, and 3 is past what was asked
    assert [empty[a:b] for a, b in split_items(empty, limit=2)] == ["A"]
    assert [empty[a:b] for a, b in split_items(empty)] == ["A", "C"]


def test_an_item_on_a_line_the_length_budget_cut_is_no_sample(verbalizing_dirs):
    """Asked for 2 answers in 2 x 9 tokens, the model stops inside its first line ("1. Apple (probability: 0."):
    no sample, rather than "Apple (probability: 0." as an answer; in 2 x 11 tokens its first line ends, the
    second is cut: one sample."""
    lm = HFCausalLM.from_pretrained(verbalizing_dirs[1], device="cpu")
    texts = {budget: [s.text for s in verbalized_sampling(lm, PROMPTS[:1], n=2, k=2, fmt=PromptFormat(),
                                                         sampling=SamplingParams(temperature=0, max_new_tokens=budget))]
             for budget in (9, 11, 24)}
    assert texts == {9: [], 11: ["Apple"], 24: ["Apple", "Mango"]}


def test_a_whole_item_of_a_response_the_length_budget_cut_says_stop(verbalizing_dirs):
    """In 2 x 11 tokens the response is cut in its second line ("length"); its first item is a whole answer: its
    finish_reason is "stop" (only an item that was itself cut short could say "length", and such a one is left out)."""
    lm = HFCausalLM.from_pretrained(verbalizing_dirs[1], device="cpu")
    cut = SamplingParams(temperature=0, max_new_tokens=11)
    samples = list(verbalized_sampling(lm, PROMPTS[:1], n=2, k=2, sampling=cut, fmt=PromptFormat()))
    assert [(s.text, s.finish_reason) for s in samples] == [("Apple", "stop")]


def test_stop_strings_end_each_answer_not_the_response(verbalizing_dirs):
    """A user's stop strings are meant for each answer: with stop "\\n" the response stopped after its first line
    (one sample per response). The response runs without them and each item is cut at its first one ("A red
    dragon" at " dragon": "A red", finish "stop"), its tokens those that write the cut text."""
    lm = HFCausalLM.from_pretrained(verbalizing_dirs[1], device="cpu")
    stops = SamplingParams(temperature=0, max_new_tokens=24, stop=["\n", " dragon"])
    samples = sorted(verbalized_sampling(lm, PROMPTS, n=2, k=2, sampling=stops, fmt=PromptFormat()),
                     key=lambda s: (s.prompt_index, s.sample_index))
    assert [(s.prompt_index, s.text, s.finish_reason) for s in samples] == [
        (0, "Apple", "stop"), (0, "Mango", "stop"), (1, "A red", "stop"), (1, "A tiny", "stop")]
    for s in samples:
        assert "".join(s.token_texts).lstrip() == s.text and lm.tokenizer.decode(s.token_ids).lstrip() == s.text
        assert len(s.sources) == len(s.reasons) == len(s.chosen_prob) == len(s.token_ids)
        assert s.sampling["stop"] == ["\n", " dragon"]  # recorded as asked, as the max_new_tokens


def test_an_item_a_stop_string_cuts_to_nothing_is_no_sample_and_the_next_item_still_is(verbalizing_dirs):
    """Stop "App" ended the response at "1. ": no sample at all; now "Apple" is cut to nothing and "Mango" is one."""
    lm = HFCausalLM.from_pretrained(verbalizing_dirs[1], device="cpu")
    stops = SamplingParams(temperature=0, max_new_tokens=24, stop=["App"])
    samples = list(verbalized_sampling(lm, PROMPTS[:1], n=2, k=2, sampling=stops, fmt=PromptFormat()))
    assert [(s.sample_index, s.text) for s in samples] == [(0, "Mango")]


def test_a_verbalized_sample_records_the_settings_it_was_asked_with(verbalizing_dirs):
    """The response runs with k times the budget (room for k answers); the samples record the call's max_new_tokens,
    so that the settings a sample records repeat it."""
    from baco import Collaboration

    collab = Collaboration.from_pretrained(*verbalizing_dirs, device="cpu")
    params = SamplingParams(temperature=0, max_new_tokens=24, seed=0)
    samples = collab.generate(PROMPTS[:1], router="verbalized:2", n=2, sampling=params)
    assert [s.text for s in samples] == ["Apple", "Mango"]
    assert all(s.sampling == {**params.to_dict(), "seed": 0} for s in samples)
    again = collab.generate(PROMPTS[:1], router="verbalized:2", n=2,
                            sampling=SamplingParams(**{k: v for k, v in samples[0].sampling.items()}))
    assert [s.text for s in again] == ["Apple", "Mango"]
    with pytest.raises(InvalidSamplingParams, match="verbalized: min_tokens .3. would hold back the end of the whole"):
        collab.generate(PROMPTS[:1], router="verbalized:2", n=2, sampling=SamplingParams(min_tokens=3, seed=0))
    with pytest.raises(InvalidSamplingParams, match="verbalized: stop_token_ids would end the whole response"):
        collab.generate(PROMPTS[:1], router="verbalized:2", n=2, sampling=SamplingParams(stop_token_ids=[7]))
    held = collab.generate(PROMPTS[:1], router="negative:0.5", n=2, sampling=SamplingParams(min_tokens=3, seed=0,
                                                                                             max_new_tokens=6))
    assert all(len(s.token_ids) > 3 and s.sampling["min_tokens"] == 3 for s in held)  # negative prompting takes it


def test_verbalized_asks_for_at_most_a_hundred_answers_in_one_response():
    """`verbalized:1e9` was accepted: one response of 1e9 x max_new_tokens tokens, asked to hold 1e9 answers."""
    from baco.errors import UnknownRouterError
    from baco.strategies import parse_strategy

    assert parse_strategy("verbalized:100")[1] == 100
    for spec, shown in (("verbalized:1e9", "1e+09"), ("verbalized:101", "101"), ("verbalized:0", "0"),
                        ("verbalized:2.5", "2.5")):
        range_error = rf"verbalized: k must be an integer in \[1, 100\], got {re.escape(shown)}$"
        with pytest.raises(UnknownRouterError, match=range_error):
            parse_strategy(spec)


def test_streaming_a_multi_pass_method_says_it_makes_whole_samples(collab):
    """`stream` called negative prompting an unknown router while listing it among the known ones."""
    from baco.errors import UnknownRouterError

    for method in ("negative:0.5", "verbalized:2"):
        with pytest.raises(UnknownRouterError, match=f"{method.split(':')[0]} is a multi-pass method: it makes whole "
                                                     f"samples .* use generate or iter_generate"):
            next(collab.stream("Why?", SamplingParams(max_new_tokens=4, seed=0), router=method))


TWO_LISTS = ["1. Apple (probability: 0.5)\n2. Mango (probability: 0.5)", "1. Fig (0.5)\n2. Kiwi (0.5)"]


@pytest.fixture(scope="module")
def two_list_model(tmp_path_factory):
    """An aligned model taught two answers of different lengths to the request for 2 answers: sampled, its
    responses finish at different steps."""
    from baco.testing import make_tiny_pair, memorise

    aligned = make_tiny_pair(tmp_path_factory.mktemp("two-lists"))[1]
    lm = HFCausalLM.from_pretrained(aligned, device="cpu")
    tok, fmt = lm.tokenizer, PromptFormat()
    ask = tok(fmt.render_aligned(VERBALIZED_TEMPLATE.format(prompt=PROMPTS[0], k=2), tok),
              add_special_tokens=False)["input_ids"]
    end = tok.convert_tokens_to_ids("<end_of_turn>")
    memorise(lm.model, [(ask, tok(answer, add_special_tokens=False)["input_ids"] + [end]) for answer in TWO_LISTS])
    return lm


def test_verbalized_samples_do_not_depend_on_the_batch_size(two_list_model):
    """n=3 from k=2 takes two responses; their items are numbered in round order, not in the order the rows
    finish (which the batch sets), so the samples and the one item left out are the same at any batch size."""
    for seed in range(6):
        params = SamplingParams(temperature=1.0, max_new_tokens=24, seed=seed)
        runs = [[(s.sample_index, s.text, s.seed) for s in verbalized_sampling(
            two_list_model, PROMPTS[:1], n=3, k=2, sampling=params, fmt=PromptFormat(), batch_size=size)]
            for size in (1, 2)]
        assert runs[0] == runs[1]
