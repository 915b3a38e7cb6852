"""The lockstep loop on the tiny random pair: equivalences that pin down caches, routing and sampling."""

import warnings

import pytest
import torch

import baco
from baco import Collaboration, SamplingParams
from baco.decode.records import final_text
from baco.errors import PromptError
from baco.prompts import PromptFormat

PROMPTS = ["Name a fruit.", "Tell me a story about a dragon who could not fly.", "Why?"]


def hf_greedy(lm, prompt_ids, max_new_tokens, suppress, stops):
    """transformers' own greedy generate, with the control tokens baco never samples suppressed."""
    out = lm.model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False,
                            suppress_tokens=suppress, eos_token_id=sorted(stops), pad_token_id=lm.pad_token_id)
    return out[0, len(prompt_ids):].tolist()


@pytest.mark.parametrize("side", ["aligned", "base"])
def test_single_model_router_at_temperature_zero_reproduces_transformers_generate(collab, side):
    lm = getattr(collab.pair, side)
    fmt = collab.prompt_format
    suppress = (~collab.pair.vocab.allowed).nonzero().squeeze(-1).tolist()
    samples = collab.generate(PROMPTS, router=side, sampling=SamplingParams(temperature=0, max_new_tokens=24))
    for prompt, sample in zip(PROMPTS, samples):
        if side == "aligned":
            ids = lm.tokenizer(fmt.render_aligned(prompt, lm.tokenizer), add_special_tokens=False)["input_ids"]
        else:
            ids = lm.tokenizer(fmt.render_base(prompt))["input_ids"]
        expected = hf_greedy(lm, ids, 24, suppress, collab.pair.stop_ids)
        if len(sample.token_ids) < len(expected):  # only a stop string ends it sooner: generate does not watch them
            assert sample.finish_reason == "stop"
            assert any(stop in lm.tokenizer.decode(sample.token_ids) for stop in collab.stop_strings)
            expected = expected[: len(sample.token_ids)]
        assert sample.token_ids == expected
        stopped = len(expected) < 24 or expected[-1] in collab.pair.stop_ids  # a stop token (or string) ended it
        assert sample.finish_reason == ("stop" if stopped else "length")
        assert sample.sources == [side] * sample.num_tokens


def test_batched_rows_equal_prompts_run_one_by_one(collab):
    params = SamplingParams(temperature=1.0, max_new_tokens=20, seed=3)
    batched = collab.generate(PROMPTS, router="p-punc:0.3", n=2, sampling=params)
    for sample in batched:
        alone = collab.generate([sample.prompt], router="p-punc:0.3", n=2, sampling=params)[sample.sample_index]
        assert alone.token_ids == sample.token_ids
        assert alone.sources == sample.sources


def test_same_seed_same_samples_other_seed_other_samples(collab):
    run = lambda seed: [s.token_ids for s in collab.generate(  # noqa: E731
        PROMPTS, router="p:0.5", n=3, sampling=SamplingParams(max_new_tokens=16, seed=seed))]
    first = run(11)
    assert run(11) == first
    assert run(12) != first
    assert len({tuple(ids) for ids in first}) == len(first)  # the n samples of a prompt differ too


def test_a_repeated_prompt_gets_its_own_samples_for_each_copy(collab):
    """Users repeat a prompt to get more samples: copies must not be one sample N times. The first copy
    keeps the samples the prompt gives alone (so earlier results and seeds reproduce)."""
    params = SamplingParams(max_new_tokens=16, seed=0)
    twice = collab.generate(["Tell a story", "Tell a story"], router="p:0.5", n=1, sampling=params)
    assert [s.occurrence for s in twice] == [0, 1]
    assert twice[0].token_ids != twice[1].token_ids
    alone = collab.generate(["Tell a story"], router="p:0.5", n=1, sampling=params)
    assert alone[0].token_ids == twice[0].token_ids and alone[0].seed == twice[0].seed
    mixed = collab.generate(["Why?", "Tell a story", "Why?", "Tell a story"], router="p:0.5", n=2, sampling=params)
    tokens = {(s.prompt_index, s.sample_index): tuple(s.token_ids) for s in mixed}
    assert len(set(tokens.values())) == len(tokens)  # every (copy, sample) its own
    assert [tokens[(1, 0)], tokens[(3, 0)]] == [tuple(s.token_ids) for s in twice]  # copies: by their number


def test_p_threshold_zero_never_uses_base_and_above_one_always_does(collab):
    params = SamplingParams(max_new_tokens=16, seed=5)
    never = collab.generate(PROMPTS, router="p:0", n=2, sampling=params)
    always = collab.generate(PROMPTS, router="p:1.01", n=2, sampling=params)
    assert all(s.base_share == 0.0 for s in never)
    assert all(s.base_share == 1.0 for s in always)
    # per-model random streams: routing every token to one model reproduces that model alone
    aligned = collab.generate(PROMPTS, router="aligned", n=2, sampling=params)
    base = collab.generate(PROMPTS, router="base", n=2, sampling=params)
    assert [s.token_ids for s in never] == [s.token_ids for s in aligned]
    assert [s.token_ids for s in always] == [s.token_ids for s in base]


def test_provenance_counts_match_the_routes_taken(collab):
    samples = collab.generate(PROMPTS, router="p:0.25", n=2, sampling=SamplingParams(max_new_tokens=24, seed=1))
    for s in samples:
        columns = [s.token_texts, s.sources, s.reasons, s.base_top1_prob, s.base_entropy,
                   s.aligned_top1_prob, s.chosen_prob]
        assert all(len(c) == s.num_tokens for c in columns)
        assert s.base_share == pytest.approx(s.sources.count("base") / s.num_tokens)
        for source, reason, top1 in zip(s.sources, s.reasons, s.base_top1_prob):
            if reason == "word-continuation":
                continue
            assert (source == "base") == (reason == "base-uncertain") == (top1 < 0.25)
        assert all(0 < p <= 1 for p in s.chosen_prob)
    assert 0 < sum(s.base_share for s in samples) / len(samples) < 1  # both models wrote


def test_a_word_begun_by_one_model_is_finished_by_it(collab):
    vocab = collab.pair.vocab
    samples = collab.generate(PROMPTS, router="rand:0.5", n=4, sampling=SamplingParams(max_new_tokens=48, seed=2))
    switches = blocked = 0
    for s in samples:
        for i in range(1, s.num_tokens):
            prev, token = s.token_ids[i - 1], s.token_ids[i]
            if s.sources[i] != s.sources[i - 1]:
                switches += 1
                assert not (vocab.ends_word_char[prev] and vocab.continues_word[token]), s.token_texts[i - 1: i + 1]
            blocked += s.reasons[i] == "word-continuation"
    assert switches > 0 and blocked > 0  # the rule was exercised, not vacuous


def test_stop_strings_cut_the_text_and_finish_the_row(collab):
    free = collab.generate(["Name a fruit."], router="aligned", sampling=SamplingParams(max_new_tokens=30, seed=0))[0]
    word = next(t for t in free.token_texts[3:] if len(t.strip()) >= 2)
    stopped = collab.generate(["Name a fruit."], router="aligned",
                              sampling=SamplingParams(max_new_tokens=30, seed=0, stop=(word,)))[0]
    assert stopped.finish_reason == "stop"
    assert word not in stopped.text
    assert stopped.token_ids == free.token_ids[: stopped.num_tokens] and stopped.num_tokens < free.num_tokens


def test_a_stop_string_whose_character_is_split_over_byte_tokens_finishes_the_row_where_it_is_complete(collab):
    """The tiny tokenizer spells every non-ASCII character with several byte tokens, each "\ufffd" alone."""
    def sample(seed, stop=()):
        params = SamplingParams(temperature=1.5, max_new_tokens=40, seed=seed, stop=stop)
        return collab.generate(["Why?"], params, router="base")[0]

    free, char = next((s, c) for s in map(sample, range(100)) for c in s.text if ord(c) > 127 and c != "\ufffd")
    assert len(collab.tokenizer.encode(char, add_special_tokens=False)) > 1  # split, as the test means
    stopped = sample(free.sampling["seed"], stop=(char,))
    assert stopped.finish_reason == "stop" and stopped.text == free.text[: free.text.index(char)]
    assert stopped.token_ids == free.token_ids[: stopped.num_tokens] and stopped.num_tokens < free.num_tokens
    assert collab.tokenizer.decode(stopped.token_ids).endswith(char)  # it ends at the token completing it


def test_base_template_stop_string_is_derived_from_the_template():
    assert PromptFormat().stop_strings == ("\nQuestion:",)
    assert PromptFormat(base_template="{prompt}\n").stop_strings == ()
    assert PromptFormat(base_template="Q: {prompt}\nA:", base_stop=("###",)).stop_strings == ("###",)


def test_a_base_stop_given_as_one_string_is_one_stop_string_and_an_empty_one_is_refused():
    """`base_stop="###"` was split into the stop strings "#", "#", "#" (as `SamplingParams(stop=...)` takes one
    string whole, so does this); an empty stop string matches everywhere and left every sample empty."""
    assert PromptFormat(base_stop="\nQ:").stop_strings == ("\nQ:",)
    assert PromptFormat(base_stop=["###", "\nQ:"]).stop_strings == ("###", "\nQ:")
    assert PromptFormat(base_stop=()).stop_strings == ()
    for bad in ([""], ["ok", 5], 5):
        with pytest.raises(PromptError, match="base_stop must be a string or a list of non-empty strings"):
            PromptFormat(base_stop=bad)


@pytest.mark.parametrize("fields, words", [
    ({"few_shot": ("Name a fruit.", "A pear.")}, r"few_shot is a list of \(question, answer\) pairs.*"
                                                 r"few_shot=\[\('Name a fruit.', 'A pear.'\)\]"),
    ({"few_shot": [("Name a fruit.",)]}, r"few-shot example 0 must be a \(question, answer\) pair of strings"),
    ({"few_shot": [(1, 2)]}, r"few-shot example 0 must be a \(question, answer\) pair of strings"),
    ({"few_shot": "Q: hi A: yo"}, r"few_shot is a list of \(question, answer\) pairs"),
    ({"system_prompt": 5}, "system_prompt must be a string or None, got int"),
    ({"base_template": 5}, "base_template must be a string containing {prompt}, got int"),
    ({"chat_template": 5}, "chat_template must be a template's text or None, got int"),
])
def test_a_prompt_format_of_the_wrong_shape_is_refused_when_made_naming_the_field(fields, words):
    """These failed only at generate time, with an AttributeError or ValueError from inside the rendering."""
    with pytest.raises(PromptError, match=words):
        PromptFormat(**fields)


def test_few_shot_examples_may_be_given_as_lists_and_a_conversation_still_adds_its_turns(collab):
    """A list of lists (as JSON gives them) is kept as a tuple of pairs: the format stays hashable, and a
    conversation's earlier turns append to it (a list + a tuple raised TypeError)."""
    fmt = PromptFormat(few_shot=[["Name a fruit.", "A pear."]])
    assert fmt == PromptFormat(few_shot=(("Name a fruit.", "A pear."),)) and hash(fmt)
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                    {"role": "user", "content": "Name a colour."}]
    params = SamplingParams(max_new_tokens=4, seed=0)
    samples = Collaboration(collab.pair, fmt).generate(conversation, params)
    assert samples[0].prompt == "Name a colour."


def test_the_base_rendering_trims_each_text_as_the_template_frames_it():
    # a chat client's "How are you?\n" or " Hello! " must not put a blank line before "Answer:" or two spaces
    # after it (the system prompt was already trimmed; Gemma's chat template trims every turn on the aligned side)
    fmt = PromptFormat(system_prompt=" Be kind.\n", few_shot=(("  Hi  ", " Hello! \n"),))
    assert fmt.render_base("How are you?\n") == (
        "Be kind.\n\nQuestion: Hi\nAnswer: Hello!\n\nQuestion: How are you?\nAnswer:")


def test_stop_tokens_end_a_sample_and_stay_out_of_its_text(collab):
    samples = collab.generate(PROMPTS, router="aligned", n=8, sampling=SamplingParams(max_new_tokens=60, seed=4))
    stopped = [s for s in samples if s.finish_reason == "stop"]
    assert stopped, "the tiny aligned model should hit <eos>/<end_of_turn> in 24 samples of 60 tokens"
    for s in stopped:
        assert s.token_ids[-1] in collab.pair.vocab.stop_ids
        assert "<end_of_turn>" not in s.text and "<eos>" not in s.text


def test_stop_token_ids_end_a_sample_where_drawn_keeping_the_token_and_its_text(collab):
    """vLLM's stop_token_ids: a row ends at the first of its stop ids it draws (finish reason "stop"); the token and
    its text stay, as in vLLM for tokens that are not special. Other rows of the batch and the stream agree."""
    free = collab.generate(PROMPTS, router="p-punc:0.5", n=2, sampling=SamplingParams(max_new_tokens=16, seed=5))
    first = free[0].token_ids
    assert len(first) > 6, "the tiny pair should write 16 tokens here"
    stop_id = next(t for t in first[3:] if t not in first[:3])  # one that row 0 draws after a few tokens
    params = SamplingParams(max_new_tokens=16, seed=5, stop_token_ids=[stop_id])
    cut = collab.generate(PROMPTS, router="p-punc:0.5", n=2, sampling=params)
    for before, after in zip(free, cut):
        end = before.token_ids.index(stop_id) + 1 if stop_id in before.token_ids else len(before.token_ids)
        assert after.token_ids == before.token_ids[:end] and after.sources == before.sources[:end]
        assert after.finish_reason == ("stop" if stop_id in before.token_ids else before.finish_reason)
    whole = final_text(cut[0].token_ids, collab.pair.aligned.tokenizer, (), frozenset())  # every token's text
    assert cut[0].text == whole and cut[0].finish_reason == "stop"  # the stop token's text is kept
    assert streamed(collab, params)[0] == (cut[0].token_ids, cut[0].text, ["stop"])
    assert cut[0].to_dict()["sampling"]["stop_token_ids"] == [stop_id]
    assert "stop_token_ids" not in free[0].to_dict()["sampling"]


@pytest.mark.parametrize("router", ["p-punc:0.5", "aligned", "eft:0.5"])
def test_a_larger_max_new_tokens_continues_the_same_samples(collab, router):
    """As with transformers' `generate` and vLLM, a seed's sample does not depend on how long it may grow: the
    first 8 tokens of 24 are the 8 tokens asked for alone (row numbers are drawn step by step)."""
    short = collab.generate(PROMPTS, router=router, n=3, sampling=SamplingParams(max_new_tokens=8, seed=12))
    long = collab.generate(PROMPTS, router=router, n=3, sampling=SamplingParams(max_new_tokens=24, seed=12))
    for a, b in zip(short, long):
        assert b.token_ids[:8] == a.token_ids and b.sources[:8] == a.sources
    assert any(s.finish_reason == "length" for s in short) and any(b.num_tokens > 8 for b in long)


def streamed(collab, params, n=2):
    """{sample index: (token ids, joined text, finish reasons)} of a stream of "Name a fruit."."""
    out = {k: ([], "", []) for k in range(n)}
    for event in collab.stream("Name a fruit.", router="p-punc:0.5", n=n, sampling=params):
        ids, text, finishes = out[event.sample_index]
        ids.append(event.token_id)
        out[event.sample_index] = (ids, text + event.text, finishes + [event.finish_reason] * bool(event.finish_reason))
    return out


def test_stream_yields_the_same_tokens_and_text_as_generate(collab):
    params = SamplingParams(max_new_tokens=20, seed=9)
    batch = collab.generate("Name a fruit.", router="p-punc:0.5", n=2, sampling=params)
    stream = streamed(collab, params)
    for s in batch:
        assert stream[s.sample_index] == (s.token_ids, s.text, [s.finish_reason])


def test_a_streamed_text_stops_where_generates_does_without_showing_the_stop_string(collab):
    """Text that may begin a stop string is held back until settled: the events' texts join to the sample's
    text, cut before the stop string (taken from the middle of each sample's own text without stops)."""
    free = collab.generate("Name a fruit.", router="p-punc:0.5", n=2, sampling=SamplingParams(max_new_tokens=20, seed=9))
    for s in free:
        assert len(s.text) > 8, "the tiny pair should write a few words in 20 tokens"
        start = next(i for i in range(5, len(s.text)) if not s.text[i].isspace())  # (not in leading whitespace)
        stop = s.text[start:start + 3]
        params = SamplingParams(max_new_tokens=20, seed=9, stop=[stop, "\x00never"])
        cut = collab.generate("Name a fruit.", router="p-punc:0.5", n=2, sampling=params)[s.sample_index]
        assert cut.finish_reason == "stop" and cut.text == s.text[:s.text.find(stop)].lstrip()
        assert streamed(collab, params)[s.sample_index] == (cut.token_ids, cut.text, ["stop"])


def test_a_stream_without_a_seed_reports_the_seed_that_repeats_it(collab):
    """As generate records its drawn seed in each Sample, stream reports it on every event."""
    unseeded = SamplingParams(temperature=1.0, max_new_tokens=16)
    events = list(collab.stream("Name a fruit.", router="p-punc:0.5", n=2, sampling=unseeded))
    seeds = {event.seed for event in events}
    assert len(seeds) == 1 and isinstance(next(iter(seeds)), int)
    again = collab.stream("Name a fruit.", router="p-punc:0.5", n=2,
                          sampling=SamplingParams(temperature=1.0, max_new_tokens=16, seed=seeds.pop()))
    assert [(e.sample_index, e.token_id) for e in again] == [(e.sample_index, e.token_id) for e in events]


def test_generation_stops_at_the_context_limit_and_says_so_once(collab):
    """Asked for more tokens than the context holds, a row ends ("length") where the context is full: both models
    read the row, so the limit counts the longer of its two renderings. A row may stop sooner. As transformers'
    generate, the call warns (once, from the caller's line) rather than refuses (the server refuses, as vLLM)."""
    import warnings

    from baco import PromptWarning

    context = collab.pair.context_length
    tok, fmt = collab.tokenizer, collab.prompt_format
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = collab.generate(PROMPTS, router="base", sampling=SamplingParams(max_new_tokens=10 * context,
                                                                                   temperature=0))
        collab.generate(PROMPTS, router="base", sampling=SamplingParams(max_new_tokens=1, temperature=0))
    rooms = [context - max(len(tok(fmt.render_base(prompt))["input_ids"]),
                           len(tok(fmt.render_aligned(prompt, tok), add_special_tokens=False)["input_ids"]))
             for prompt in PROMPTS]
    assert [(w.category, str(w.message), w.filename) for w in caught if w.category is PromptWarning] == [
        (PromptWarning, f"max_new_tokens={10 * context} is more than the models' context of {context} tokens leaves "
                        f"after each of the {len(PROMPTS)} prompts: their samples get at most {min(rooms)}-{max(rooms)} "
                        f"new tokens (then finish_reason 'length')", __file__)]
    full = []
    for prompt, sample in zip(PROMPTS, samples):
        longest = max(len(tok(fmt.render_base(prompt))["input_ids"]),
                      len(tok(fmt.render_aligned(prompt, tok), add_special_tokens=False)["input_ids"]))
        if sample.finish_reason == "length":
            assert sample.num_tokens == context - longest
            full.append(prompt)
        else:  # a stop token or string, before the end
            assert sample.finish_reason == "stop" and sample.num_tokens < context - longest
    assert full  # the greedy tiny base model writes past the context's end for some of these prompts


def test_a_solo_pair_reproduces_its_model_inside_the_pair(collab):
    from baco import Collaboration
    from baco.models import SoloPair

    params = SamplingParams(max_new_tokens=16, seed=8)
    for side in ("aligned", "base"):
        solo = Collaboration(SoloPair(getattr(collab.pair, side), reads=side), collab.prompt_format)
        alone = solo.generate(PROMPTS, router=side, n=2, sampling=params)
        inside = collab.generate(PROMPTS, router=side, n=2, sampling=params)
        assert [s.token_ids for s in alone] == [s.token_ids for s in inside]


@pytest.mark.parametrize("template", [
    # drops the system turn without a word (the aligned model would never read the system prompt)
    "{% for m in messages %}{% if m['role'] != 'system' %}<{{ m['role'] }}>{{ m['content'] }}{% endif %}"
    "{% endfor %}<assistant>",
    # refuses it, as some chat templates do
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>",
])
def test_a_template_without_a_system_role_gets_the_system_prompt_in_the_first_user_turn(collab, template):
    fmt = PromptFormat(system_prompt="Be kind.", few_shot=(("Hi", "Hello!"),), chat_template=template)
    with pytest.warns(baco.PromptWarning, match="no system role"):  # (exported: users filter it by name)
        rendered = fmt.render_aligned("How are you?", collab.tokenizer)
    assert rendered == "<user>Be kind.\n\nHi<assistant>Hello!<user>How are you?<assistant>"


def test_a_template_with_a_system_role_renders_it_as_it_says(collab):
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    fmt = PromptFormat(system_prompt="Be kind.", chat_template=template)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fmt.render_aligned("Hi", collab.tokenizer) == "<system>Be kind.<user>Hi<assistant>"


def test_the_token_texts_join_to_the_text_before_it_is_stripped_and_cut(collab):
    from baco.decode.records import cut_text

    for stop in ((), ("e",), ("the",)):
        for s in collab.generate(PROMPTS, sampling=SamplingParams(max_new_tokens=30, seed=2, stop=stop), n=3):
            assert cut_text("".join(s.token_texts), collab.stop_strings + stop) == s.text
            columns = (s.token_ids, s.token_texts, s.sources, s.reasons, s.base_top1_prob, s.base_entropy,
                       s.aligned_top1_prob, s.chosen_prob)
            assert len({len(column) for column in columns}) == 1


def test_a_call_that_raised_leaves_the_collaboration_as_it_was(collab):
    from baco.errors import BacoError, UnknownRouterError
    from baco.routers import Router, RouterSpec

    params = SamplingParams(max_new_tokens=16, seed=4)
    first = [(s.token_ids, s.sources, s.reasons, s.text) for s in collab.generate(PROMPTS, sampling=params, n=2)]
    with pytest.raises(UnknownRouterError):
        collab.generate(PROMPTS, sampling=params, router="nope")
    mask_only = Router(RouterSpec("mask-only", lambda view: view.base_top1_prob < 0.5, "a mask, not a Route"), None)
    with pytest.raises(BacoError, match="not a Route"):  # raised in the middle of the engine's first step
        collab.generate(PROMPTS, sampling=params, router=mask_only)
    half_read = collab.stream(PROMPTS[1], sampling=params, n=2)
    next(half_read)
    next(collab.iter_generate(PROMPTS, sampling=params, n=2))
    again = collab.generate(PROMPTS, sampling=params, n=2)
    assert [(s.token_ids, s.sources, s.reasons, s.text) for s in again] == first
    half_read.close()
