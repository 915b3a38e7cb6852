"""`baco serve` against a live uvicorn server on 127.0.0.1, through the official openai client (tiny pair, CPU)."""

import concurrent.futures
import json
import re
import threading
import time

import openai
import pytest
import requests
import torch

from baco import Collaboration, SamplingParams
from baco.prompts import PromptFormat
from baco.server import Limits, ServerConfig
from server_helpers import LiveServer, wait_for

PROMPTS = ["Name a fruit.", "Tell me a story about a dragon.", "Why do birds migrate?"]
LIMITS = Limits(max_tokens=255, default_max_tokens=24, max_prompt_tokens=200, max_n=4, max_prompts=4)


@pytest.fixture(scope="module")
def live(collab):
    config = ServerConfig(max_batch=16, max_len=256, max_queue=64, max_engines=2, limits=LIMITS)
    with LiveServer(collab, config) as server:
        yield server


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def library(collab, prompt, *, n=1, router="p-punc:0.5", fmt=None, **knobs):
    """The same request through the Python API: what the server must return."""
    sampling = SamplingParams(**{"min_p": 0.05, **knobs})
    return Collaboration(collab.pair, fmt or collab.prompt_format).generate([prompt], router=router, n=n,
                                                                            sampling=sampling)


def chat(client, prompt, **fields):
    return client.chat.completions.create(model="baco", messages=[{"role": "user", "content": prompt}], **fields)


def provenance(choice):
    return choice.model_extra["provenance"]


def assert_same_provenance(got: list[dict], expected: list[dict]) -> None:
    """Token for token the same writers and reasons; probabilities equal up to float rounding (a request's rows may
    share a batch of another shape in the server, and CPU matmul kernels round by batch shape)."""
    def discrete(tokens):
        return [{k: v for k, v in p.items() if k != "base_top1_prob"} for p in tokens]

    assert discrete(got) == discrete(expected)
    assert [p["base_top1_prob"] for p in got] == pytest.approx([p["base_top1_prob"] for p in expected], abs=1e-4)


def metric(live, name: str, **labels) -> float:
    text = requests.get(live.url + "/metrics").text
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + selector + '}') if labels else ''} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


# ---- chat, completions, n, seeds ----------------------------------------------------------------------------
def test_models_lists_the_served_model_created_when_the_server_started(client):
    cards = client.models.list().data
    assert [m.id for m in cards] == ["baco"]
    assert time.time() - 3600 < cards[0].created <= time.time()  # a Unix time, as vLLM gives (not 0)


def test_the_served_model_can_be_retrieved_by_id_and_another_is_not_found(client):
    assert client.models.retrieve("baco").id == "baco"
    with pytest.raises(openai.NotFoundError) as refused:
        client.models.retrieve("gpt-4o")
    assert refused.value.body["code"] == "model_not_found" and "'baco'" in refused.value.body["message"]


@pytest.mark.parametrize("create", [
    lambda client: client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}]),
    lambda client: client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                                  stream=True),
    lambda client: client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi"),
])
def test_a_request_for_another_model_is_not_found_as_in_openais_api_and_vllm(client, create):
    """OpenAI's API and vLLM answer 404 model_not_found (the client's NotFoundError), as GET /v1/models/{id} does."""
    with pytest.raises(openai.NotFoundError) as refused:
        create(client)
    error = refused.value.body
    assert error["code"] == "model_not_found" and error["param"] == "model" and error["type"] == "invalid_request_error"
    assert "'baco'" in error["message"] and ("'gpt-4o'" in error["message"] or "'gpt-3.5-turbo-instruct'" in
                                             error["message"])


def test_chat_completion_equals_the_python_api_for_the_same_seed(client, collab):
    response = chat(client, PROMPTS[0], max_tokens=30, seed=11, n=2, temperature=0.9)
    expected = library(collab, PROMPTS[0], n=2, max_new_tokens=30, seed=11, temperature=0.9)
    assert [c.index for c in response.choices] == [0, 1]
    for choice, sample in zip(response.choices, expected):
        assert choice.message.role == "assistant" and choice.message.content == sample.text
        assert choice.finish_reason == sample.finish_reason
        assert [p["token"] for p in provenance(choice)] == sample.token_ids
        assert [p["writer"] for p in provenance(choice)] == sample.sources
        assert [p["reason"] for p in provenance(choice)] == sample.reasons
    assert response.usage.completion_tokens == sum(s.num_tokens for s in expected)
    assert response.model_extra["baco"] == {"router": "p-punc:0.5", "seed": 11}


def test_penalties_are_taken_as_in_openais_api_and_vllms_and_give_the_librarys_tokens(client, collab):
    """presence_penalty and frequency_penalty (OpenAI's fields, in [-2, 2]) and repetition_penalty (vLLM's
    extension) sample as the library does; out of range is a 400 that names the field."""
    knobs = {"presence_penalty": 1.2, "frequency_penalty": 0.5}
    response = chat(client, PROMPTS[0], max_tokens=20, seed=4, n=2, **knobs, extra_body={"repetition_penalty": 1.4})
    expected = library(collab, PROMPTS[0], n=2, max_new_tokens=20, seed=4, repetition_penalty=1.4, **knobs)
    assert [c.message.content for c in response.choices] == [s.text for s in expected]
    assert [[p["token"] for p in provenance(c)] for c in response.choices] == [s.token_ids for s in expected]
    plain = library(collab, PROMPTS[0], n=2, max_new_tokens=20, seed=4)
    assert [s.token_ids for s in plain] != [s.token_ids for s in expected]
    for field, value in [("presence_penalty", 2.5), ("frequency_penalty", -2.1), ("repetition_penalty", 0)]:
        with pytest.raises(openai.BadRequestError) as refused:
            chat(client, PROMPTS[0], max_tokens=4, extra_body={field: value})
        assert refused.value.body["param"] == field, refused.value.body


def test_a_logit_bias_is_taken_as_in_openais_api_and_gives_the_librarys_tokens(client, collab):
    """logit_bias: {"token id": bias in [-100, 100]}; the tokens are the library's with the same bias; a bias out of
    range, a key that is no id and an id past the vocabulary are 400s that name the field."""
    bias = {"7": 4.0, "11": -100, "42": 2}
    response = chat(client, PROMPTS[0], max_tokens=16, seed=4, n=2, logit_bias=bias)
    expected = library(collab, PROMPTS[0], n=2, max_new_tokens=16, seed=4, logit_bias=bias)
    assert [[p["token"] for p in provenance(c)] for c in response.choices] == [s.token_ids for s in expected]
    plain = library(collab, PROMPTS[0], n=2, max_new_tokens=16, seed=4)
    assert [s.token_ids for s in plain] != [s.token_ids for s in expected]
    for value in [{"7": 101}, {"x": 1}, {str(collab.pair.vocab_size): 1}, {str(i): 1 for i in range(301)}]:
        with pytest.raises(openai.BadRequestError) as refused:
            chat(client, PROMPTS[0], max_tokens=4, logit_bias=value)
        assert refused.value.body["param"].startswith("logit_bias"), refused.value.body


def test_stop_token_ids_end_a_choice_as_in_vllm_and_give_the_librarys_tokens(client, collab):
    """vLLM's extension: a choice ends at the first of its stop token ids (finish_reason "stop"), as the library's
    sample does; an id past the vocabulary, or one the models never write, is a 400 that names the field."""
    free = library(collab, PROMPTS[0], n=2, max_new_tokens=16, seed=4)
    stop_id = free[0].token_ids[4]
    expected = library(collab, PROMPTS[0], n=2, max_new_tokens=16, seed=4, stop_token_ids=[stop_id])
    response = chat(client, PROMPTS[0], max_tokens=16, seed=4, n=2, extra_body={"stop_token_ids": [stop_id]})
    assert [[p["token"] for p in provenance(c)] for c in response.choices] == [s.token_ids for s in expected]
    assert [c.finish_reason for c in response.choices] == [s.finish_reason for s in expected]
    assert response.choices[0].finish_reason == "stop" and len(expected[0].token_ids) <= 5
    masked = int((~collab.pair.vocab.allowed).nonzero()[0])  # a control token the models never write
    for never in (collab.pair.vocab_size, masked):
        with pytest.raises(openai.BadRequestError) as refused:
            chat(client, PROMPTS[0], max_tokens=4, extra_body={"stop_token_ids": [never]})
        assert refused.value.body["param"] == "stop_token_ids", refused.value.body


def test_min_tokens_holds_the_end_back_as_the_library_does_and_at_most_max_tokens(client, collab):
    """vLLM's extension: no end token before a choice has min_tokens tokens (here the end tokens are biased up, so
    they come right after), the library's tokens; more than max_tokens (or its default) is a 400 naming it."""
    bias = {str(token): 6.0 for token in collab.pair.vocab.stop_ids}
    expected = library(collab, PROMPTS[0], n=2, max_new_tokens=16, seed=4, min_tokens=9, logit_bias=bias)
    response = chat(client, PROMPTS[0], max_tokens=16, seed=4, n=2, logit_bias=bias, extra_body={"min_tokens": 9})
    assert [[p["token"] for p in provenance(c)] for c in response.choices] == [s.token_ids for s in expected]
    assert all(9 < len(s.token_ids) < 16 and s.finish_reason == "stop" for s in expected)
    for fields in ({"max_tokens": 8, "extra_body": {"min_tokens": 9}}, {"extra_body": {"min_tokens": 25}}):
        with pytest.raises(openai.BadRequestError) as refused:
            chat(client, PROMPTS[0], **fields)
        assert refused.value.body["param"] == "min_tokens" and "at most max_tokens" in refused.value.body["message"]


def test_min_tokens_holds_stop_strings_back_as_the_library_does_plain_and_streamed(client, collab):
    """As in vLLM, a stop string counts only where it ends past the text of the first min_tokens tokens: one that ends
    inside it (the whole of it) leaves the choice as it was; one that begins inside and ends past it cuts the content
    where it begins. The server's content and tokens are the library's, plain and streamed."""
    from test_penalties import around_held_text

    seed, alone, held, inside, straddling = around_held_text(
        lambda seed: library(collab, PROMPTS[1], max_new_tokens=24, seed=seed, min_tokens=10)[0])
    raw = "".join(alone.token_texts)
    for stop, text in ((inside, alone.text), (straddling, raw[: held - 2].lstrip())):
        expected = library(collab, PROMPTS[1], max_new_tokens=24, seed=seed, min_tokens=10, stop=[stop])[0]
        assert expected.text == text
        ask = {"max_tokens": 24, "seed": seed, "stop": [stop], "extra_body": {"min_tokens": 10}}
        choice = chat(client, PROMPTS[1], **ask).choices[0]
        assert choice.message.content == text and [p["token"] for p in provenance(choice)] == expected.token_ids
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chat(client, PROMPTS[1], stream=True, **ask)
                           if chunk.choices)
        assert streamed == text


def test_completions_take_a_list_of_prompts_with_n_choices_each(client, collab):
    response = client.completions.create(model="baco", prompt=PROMPTS[:2], n=2, max_tokens=16, seed=3)
    assert [c.index for c in response.choices] == [0, 1, 2, 3]  # prompt-major, as OpenAI numbers them
    for i, prompt in enumerate(PROMPTS[:2]):
        expected = library(collab, prompt, n=2, max_new_tokens=16, seed=3)
        assert [c.text for c in response.choices[2 * i:2 * i + 2]] == [s.text for s in expected]
    assert response.usage.completion_tokens == sum(len(provenance(c)) for c in response.choices)


def test_a_prompt_repeated_in_one_request_gets_its_own_choices_for_each_copy_and_the_seed_reproduces_them(client):
    ask = lambda prompts: client.completions.create(model="baco", prompt=prompts, max_tokens=16, seed=5)  # noqa: E731
    twice = [c.text for c in ask([PROMPTS[0], PROMPTS[0]]).choices]
    assert twice[0] != twice[1]
    assert twice[0] == ask([PROMPTS[0]]).choices[0].text  # the first copy: the prompt's own completion
    assert [c.text for c in ask([PROMPTS[0], PROMPTS[0]]).choices] == twice  # same request and seed, same answer


def test_a_conversation_reads_as_few_shot_turns_under_a_system_prompt(client, collab):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."},
                {"role": "assistant", "content": "A pear."}, {"role": "user", "content": [
                    {"type": "text", "text": "Name "}, {"type": "text", "text": "another."}]}]
    response = client.chat.completions.create(model="baco", messages=messages, max_tokens=20, seed=4)
    asked = messages[:3] + [{"role": "user", "content": "Name \nanother."}]  # (its parts joined by newlines, as vLLM)
    expected = library(collab, asked, max_new_tokens=20, seed=4)[0]  # the library's conversation: the same sample
    assert response.choices[0].message.content == expected.text
    fmt = PromptFormat(system_prompt="Be brief.", few_shot=(("Name a fruit.", "A pear."),))
    request = Collaboration(collab.pair, fmt).requests(["Name \nanother."], 1, SamplingParams(), 4)[0]
    assert collab.requests([asked], 1, SamplingParams(), 4)[0].aligned_ids == request.aligned_ids


def test_an_answer_sent_back_as_the_client_dumped_it_continues_the_conversation(client):
    """`message.model_dump()` holds the fields OpenAI's answers may carry (refusal, tool_calls, ...) as null; a
    conversation that appends it is the conversation with the answer's role and content, as vLLM reads it."""
    asked = [{"role": "user", "content": "Name a fruit."}]
    answer = client.chat.completions.create(model="baco", messages=asked, max_tokens=8, seed=1).choices[0].message
    dumped = answer.model_dump()
    assert {"refusal", "tool_calls"} <= {key for key, value in dumped.items() if value is None}
    follow_up = {"role": "user", "content": "Another?"}
    replayed = client.chat.completions.create(model="baco", messages=[*asked, dumped, follow_up], max_tokens=8, seed=2)
    plain = client.chat.completions.create(model="baco", max_tokens=8, seed=2, messages=[
        *asked, {"role": "assistant", "content": answer.content}, follow_up])
    assert replayed.choices[0].message.content == plain.choices[0].message.content


def test_the_router_extension_picks_the_writer(client):
    for router, writer in (("base", "base"), ("aligned", "aligned"), ("eft:0.5", "mix")):
        response = chat(client, PROMPTS[1], max_tokens=12, seed=0, extra_body={"router": router})
        writers = {p["writer"] for p in provenance(response.choices[0])}
        assert writers == {writer}
        assert response.usage.model_extra["base_share"] == (1.0 if writer == "base" else 0.0)
        assert response.model_extra["baco"]["router"] == router


def test_provenance_is_consistent_with_the_text_and_the_usage(client):
    response = chat(client, PROMPTS[2], max_tokens=40, seed=9, n=3, extra_body={"router": "p-punc:0.3"})
    base = total = 0
    for choice in response.choices:
        tokens = provenance(choice)
        assert "".join(p["text"] for p in tokens) == choice.message.content
        assert all(0 <= p["base_top1_prob"] <= 1 and p["writer"] in ("base", "aligned") for p in tokens)
        base += sum(p["writer"] == "base" for p in tokens)
        total += len(tokens)
    usage = response.usage.model_extra
    assert response.usage.completion_tokens == total and usage["base_tokens"] == base
    assert usage["base_share"] == pytest.approx(base / total, abs=1e-6)


def test_seed_reproduces_the_text_and_no_seed_reports_the_one_drawn(client):
    first = chat(client, PROMPTS[0], max_tokens=20, seed=123)
    again = chat(client, PROMPTS[0], max_tokens=20, seed=123)
    assert first.choices[0].message.content == again.choices[0].message.content
    fresh = chat(client, PROMPTS[0], max_tokens=20)
    replay = chat(client, PROMPTS[0], max_tokens=20, seed=fresh.model_extra["baco"]["seed"])
    assert replay.choices[0].message.content == fresh.choices[0].message.content


def test_same_seed_same_text_alone_and_under_concurrent_load(client, live):
    """Twenty requests at once, with different sampling settings sharing a batch, and two routers."""
    asks = [dict(prompt=PROMPTS[i % 3], seed=i, max_tokens=12 + i % 5, temperature=[1.0, 0.7, 0][i % 3],
                 top_p=[1.0, 0.9][i % 2], extra_body={"router": "p-punc:0.5" if i % 4 else "nudge:0.3",
                                                      "top_k": [0, 20][i % 2], "min_p": [0.05, 0.0][i % 2]})
            for i in range(20)]
    alone = [chat(client, a["prompt"], **{k: v for k, v in a.items() if k != "prompt"}) for a in asks]
    engine = live.worker.engines["p-punc:0.5"]
    steps, row_steps = engine.stats["steps"], engine.stats["occupied_row_steps"]
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        together = list(pool.map(lambda a: chat(client, a["prompt"], **{k: v for k, v in a.items() if k != "prompt"}),
                                 asks))
    for one, shared in zip(alone, together):
        assert shared.choices[0].message.content == one.choices[0].message.content
        assert_same_provenance(provenance(shared.choices[0]), provenance(one.choices[0]))
    assert engine.stats["occupied_row_steps"] - row_steps > engine.stats["steps"] - steps  # rows shared steps


# ---- streaming, stop strings, logprobs -----------------------------------------------------------------------
def test_a_streamed_chat_equals_the_whole_response(client):
    whole = chat(client, PROMPTS[1], max_tokens=40, seed=5, n=2)
    stream = chat(client, PROMPTS[1], max_tokens=40, seed=5, n=2, stream=True, stream_options={"include_usage": True})
    texts, tokens, finish, usage = ["", ""], [[], []], [None, None], None
    for chunk in stream:
        if not chunk.choices:
            usage = chunk.usage
            continue
        choice = chunk.choices[0]
        assert finish[choice.index] is None  # nothing after a choice's finish
        piece = choice.delta.content or ""
        assert piece == "".join(p["text"] for p in provenance(choice))  # each chunk: its tokens' content
        texts[choice.index] += piece
        tokens[choice.index] += provenance(choice)
        finish[choice.index] = choice.finish_reason
    for i, choice in enumerate(whole.choices):
        assert texts[i] == choice.message.content
        assert_same_provenance(tokens[i], provenance(choice))
        assert finish[i] == choice.finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_a_streamed_completion_ends_with_done(live):
    body = {"model": "baco", "prompt": PROMPTS[0], "max_tokens": 8, "seed": 1, "stream": True}
    with requests.post(live.url + "/v1/completions", json=body, timeout=60, stream=True) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line.decode() for line in response.iter_lines()]
    events = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks) and chunks[-1]["choices"][0]["finish_reason"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_string_cuts_the_text_and_ends_the_row(client, stream):
    free = chat(client, PROMPTS[1], max_tokens=60, seed=21).choices[0]
    text = free.message.content
    start = next(i for i in range(4, len(text) - 3) if text[i:i + 3].strip() == text[i:i + 3])
    stop = text[start:start + 3]
    response = chat(client, PROMPTS[1], max_tokens=60, seed=21, stop=[stop, "never-seen"], stream=stream)
    if stream:
        chunks = [c.choices[0] for c in response if c.choices]
        content, finish = "".join(c.delta.content or "" for c in chunks), chunks[-1].finish_reason
        generated = sum(len(provenance(c)) for c in chunks)
    else:
        content, finish = response.choices[0].message.content, response.choices[0].finish_reason
        generated = len(provenance(response.choices[0]))
    assert content == text[:text.find(stop)] and finish == "stop"
    assert generated < len(provenance(free))  # the row stopped there, not at max_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_string_written_by_the_last_allowed_token_finishes_with_stop_as_in_the_library(client, collab, stream):
    """The token that completes a stop string is also the max_tokens-th: the text is cut there and the reason is
    "stop", as `Collaboration.generate` says (before: "length", the engine's reason for that row)."""
    for seed in range(40):  # a seed whose last token's text first appears at the end of the text
        free = chat(client, PROMPTS[1], max_tokens=12, seed=seed).choices[0]
        stop = provenance(free)[-1]["text"]
        if free.finish_reason == "length" and stop.strip() and free.message.content.find(stop) == len(
                free.message.content) - len(stop):
            break
    else:
        pytest.fail("no seed gave a last token with a text seen only at the end")
    response = chat(client, PROMPTS[1], max_tokens=12, seed=seed, stop=stop, stream=stream)
    if stream:
        chunks = [c.choices[0] for c in response if c.choices]
        content, finish = "".join(c.delta.content or "" for c in chunks), chunks[-1].finish_reason
    else:
        content, finish = response.choices[0].message.content, response.choices[0].finish_reason
    expected = library(collab, PROMPTS[1], max_new_tokens=12, seed=seed, stop=(stop,))[0]
    assert (content, finish) == (expected.text, expected.finish_reason) == (free.message.content[:-len(stop)], "stop")


def test_logprobs_report_each_token_and_its_alternatives(client):
    response = chat(client, PROMPTS[0], max_tokens=10, seed=2, logprobs=True, top_logprobs=3, temperature=0)
    choice = response.choices[0]
    assert len(choice.logprobs.content) == len(provenance(choice))
    for entry in choice.logprobs.content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob == entry.top_logprobs[0].logprob  # greedy: the best token, the same number
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob >= entry.top_logprobs[2].logprob
    sampled = chat(client, PROMPTS[0], max_tokens=10, seed=2, logprobs=True, top_logprobs=20, temperature=1.5)
    listed = [(entry.logprob, [top.logprob for top in entry.top_logprobs])
              for entry in sampled.choices[0].logprobs.content]
    among = [(logprob, tops) for logprob, tops in listed if logprob >= tops[-1]]  # the chosen token is in its top 20
    assert among and all(logprob in tops for logprob, tops in among)  # its entry there: the same number, as in OpenAI's
    legacy = client.completions.create(model="baco", prompt=PROMPTS[0], max_tokens=10, seed=2, logprobs=2,
                                       temperature=0)
    lp = legacy.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == len(provenance(legacy.choices[0]))
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    assert legacy.choices[0].text == choice.message.content  # the same prompt, seed and settings


def test_legacy_top_logprobs_keep_the_best_of_alternatives_that_share_a_text(client):
    """Completions' top_logprobs map a text to a log-prob: where several alternatives read the same (the byte tokens
    all read "\ufffd"), it is the best one's, as in the chat form's list (before: the last, the worst)."""
    shared = 0
    for seed in range(3):
        legacy = client.completions.create(model="baco", prompt=PROMPTS[0], max_tokens=20, seed=seed, logprobs=5)
        listed = chat(client, PROMPTS[0], max_tokens=20, seed=seed, logprobs=True, top_logprobs=5)
        for top, entry in zip(legacy.choices[0].logprobs.top_logprobs, listed.choices[0].logprobs.content,
                              strict=True):
            best = {}
            for alternative in entry.top_logprobs:
                best.setdefault(alternative.token, alternative.logprob)
            shared += len(best) < len(entry.top_logprobs)
            best.setdefault(entry.token, entry.logprob)  # the chosen token is always listed (OpenAI: up to k + 1)
            assert top == pytest.approx(best, abs=1e-4)  # (the two requests' batches may differ in the last digits)
    assert shared  # the case in question arose
    alone = client.completions.create(model="baco", prompt=PROMPTS[0], max_tokens=20, seed=1, logprobs=0).choices[0]
    assert alone.logprobs.top_logprobs == [{token: logprob} for token, logprob in  # (was [{}, {}, ...])
                                           zip(alone.logprobs.tokens, alone.logprobs.token_logprobs, strict=True)]


# ---- cancellation ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_frees_its_row(client, live, collab, stream):
    prompt = PROMPTS[1]
    greedy = library(collab, prompt, max_new_tokens=200, seed=0, temperature=0, router="base")[0]
    assert greedy.finish_reason == "length"  # left alone, this request runs 200 steps
    cancelled = metric(live, "baco_rows_total", outcome="cancelled")
    ask = dict(max_tokens=200, seed=0, temperature=0, extra_body={"router": "base"})
    if stream:
        chunks = chat(client, prompt, stream=True, **ask)
        for _, _ in zip(range(3), chunks):
            pass
        chunks.close()
    else:  # a non-streamed request whose client gives up waiting (and closes the connection)
        body = {"model": "baco", "messages": [{"role": "user", "content": prompt}], "max_tokens": 200, "seed": 0,
                "temperature": 0, "router": "base"}
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.post(live.url + "/v1/chat/completions", json=body, timeout=(5, 0.05))
    assert wait_for(lambda: not live.worker.rows)
    assert metric(live, "baco_rows_total", outcome="cancelled") == cancelled + 1
    assert not live.worker.engines["base"].live


# ---- bad input: 4xx with OpenAI-shaped errors --------------------------------------------------------------
@pytest.mark.parametrize("body, status, param", [
    ({"model": "baco", "messages": [{"role": "user", "content": "hi"}], "n": 5}, 400, "n"),
    ({"model": "baco", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 256}, 400, "max_tokens"),
    ({"model": "baco", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature"),
    ({"model": "baco", "messages": [{"role": "user", "content": "hi"}], "n": True}, 400, "n"),
    ({"model": 4, "messages": [{"role": "user", "content": "hi"}]}, 400, "model"),  # not a model id at all
    ({"model": "baco", "messages": []}, 400, "messages"),
    ({"model": "baco", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1": 500}}, 400, "logit_bias"),
    ({"model": "baco", "messages": [{"role": "user", "content": "hi"}], "best_of": 2}, 400, "best_of"),  # unknown
    ({"model": "baco", "messages": [{"role": "user", "content": "hi"}], "stop_token_ids": [-1]}, 400, "stop_token_ids"),
    ({"model": "baco", "messages": [{"role": "user", "content": "hi"}], "router": "nope"}, 400, "router"),
    ({"model": "baco", "messages": [{"role": "user", "content": "hi"}], "router": "negative:0.5"}, 400, "router"),
    # cross-tokenizer methods run per character or word in `baco generate`; the engine would run them per token
    ({"model": "baco", "messages": [{"role": "user", "content": "hi"}], "router": "chared:0.5"}, 400, "router"),
    ({"model": "baco", "messages": [{"role": "user", "content": "hi"}], "router": "p-punc-words:0.3"}, 400, "router"),
    ({"model": "baco", "messages": [{"role": "user", "content": "  "}]}, 400, "messages"),
    ({"model": "baco", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, 400, "top_logprobs"),
    ({"model": "baco", "messages": [{"role": "user", "content": "hi " * 300}]}, 400, "messages"),
    ({"model": "baco", "messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages"),  # turns out of order
    ({"model": "baco", "messages": [{"role": "user", "content": "hi"}], "stop": [""]}, 400, "stop"),
])
def test_bad_requests_get_an_openai_shaped_400(live, body, status, param):
    response = requests.post(live.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"].split(".")[0] == param  # the field, also where baco's own checks refuse its value


def test_an_unknown_router_is_told_the_routers_this_server_runs(live):
    """Not the multi-pass methods nor the cross-tokenizer ones (`baco generate` runs those; the server refuses them)."""
    from baco import list_routers
    from baco.routers.cross import unit_of
    from baco.strategies import STRATEGIES

    body = {"model": "baco", "messages": [{"role": "user", "content": "hi"}], "router": "nope"}
    response = requests.post(live.url + "/v1/chat/completions", json=body, timeout=60)
    message = response.json()["error"]["message"]
    listed = set(message.split("known routers: ")[1].split(" (see")[0].split(", "))
    assert listed == {spec.name for spec in list_routers() if unit_of(spec.name) is None}
    assert "p-punc" in listed and not listed & set(STRATEGIES) and "chared" not in listed


def test_null_sampling_knobs_mean_their_defaults_as_in_openais_api(live):
    """OpenAI's API and vLLM's take null for temperature and top_p (clients send it for "not set"); so does top_k."""
    body = {"model": "baco", "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 12, "seed": 3}
    unset = requests.post(live.url + "/v1/chat/completions", json=body, timeout=60)
    null = requests.post(live.url + "/v1/chat/completions", timeout=60,
                         json={**body, "temperature": None, "top_p": None, "top_k": None, "min_p": None})
    assert null.status_code == unset.status_code == 200, null.text
    assert null.json()["choices"][0]["message"] == unset.json()["choices"][0]["message"]


NULLABLE = ("n", "stream", "stop", "max_tokens", "logprobs", "seed", "presence_penalty", "frequency_penalty", "user",
            "stream_options", "logit_bias")  # OpenAI documents these request fields as nullable; chat also the two below


@pytest.mark.parametrize("route, field", [("chat/completions", f) for f in NULLABLE + ("max_completion_tokens",
                                                                                          "top_logprobs")]
                         + [("completions", f) for f in NULLABLE])
def test_a_null_request_field_means_its_default_as_in_openais_api(live, route, field):
    prompt = {"messages": [{"role": "user", "content": PROMPTS[0]}]} if route == "chat/completions" else {
        "prompt": PROMPTS[0]}
    body = {"model": "baco", **prompt, "max_tokens": 12, "seed": 3}
    unset = requests.post(f"{live.url}/v1/{route}", json={k: v for k, v in body.items() if k != field}, timeout=60)
    null = requests.post(f"{live.url}/v1/{route}", json={**body, field: None}, timeout=60)
    assert null.status_code == unset.status_code == 200, null.text
    answers = [[(c.get("message"), c.get("text"), c["finish_reason"], c.get("logprobs")) for c in r.json()["choices"]]
               for r in (null, unset)]  # (not the provenance: its probabilities vary in the last digit)
    if field == "seed":  # without one the server draws a seed, and returns it
        assert isinstance(null.json()["baco"]["seed"], int)
    else:
        assert answers[0] == answers[1]


def test_malformed_json_and_a_large_body_are_refused(live):
    url = live.url + "/v1/completions"
    broken = requests.post(url, data=b'{"model": "baco", "prompt": ', headers={"content-type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "json_invalid"
    huge = requests.post(url, json={"model": "baco", "prompt": "x" * (LIMITS.max_body_bytes + 1)})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    chunked = requests.post(url, data=iter([b"x" * 65536] * 20))  # no Content-Length: counted as it arrives
    assert chunked.status_code == 413
    assert requests.get(live.url + "/v1/nowhere").json()["error"]["code"] == "not_found"


def test_malformed_json_names_no_field_as_its_param(live):
    """The position of a JSON syntax error is not a request field: `param` is null, the message says where."""
    broken = requests.post(live.url + "/v1/completions", data=b'{"model": "baco", "prompt": ',
                           headers={"content-type": "application/json"})
    error = broken.json()["error"]
    assert broken.status_code == 400 and error["code"] == "json_invalid"
    assert error["param"] is None and "JSON" in error["message"] and not error["message"][0].isdigit()


CHAT = {"model": "baco", "messages": [{"role": "user", "content": "hi"}]}
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}


@pytest.mark.parametrize("route, body, param, says", [
    ("chat/completions", {**CHAT, "stop": ["s"] * 9}, "stop", "stop: a list of at most 8 items is accepted, got 9"),
    ("completions", {"model": "baco", "prompt": ["Why?"] * (LIMITS.max_prompts + 1)}, "prompt",
     f"prompt: a list of at most {LIMITS.max_prompts} items is accepted, got {LIMITS.max_prompts + 1}"),
    ("completions", {"model": "baco", "prompt": []}, "prompt", "prompt: a list of at least 1 item is accepted, got 0"),
    ("completions", {"model": "baco", "prompt": [1, 2, 3]}, "prompt", "prompt: token-id prompts are not supported"),
    ("completions", {"model": "baco", "prompt": [[1, 2], [3]]}, "prompt", "prompt: token-id prompts are not supported"),
    ("completions", {"model": "baco", "prompt": 7}, "prompt", "prompt: Input should be a string or a list"),
    ("chat/completions", {"model": "baco", "messages": [{"role": "user", "content": [IMAGE]}]}, "messages.0.content.0",
     "messages.0.content.0: only text content parts are supported (type 'text'), got a part of type 'image_url'"),
    ("chat/completions", {"model": "baco", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "user", "content": "and?"}]}, "messages.1.tool_calls", "messages.1.tool_calls: Extra inputs"),
    ("chat/completions", {"model": "baco", "messages": [{"role": "user", "content": "hi", "refusal": None}]},
     "messages.0.refusal", "messages.0.refusal: Extra inputs"),
    ("chat/completions", {**CHAT, "stream_options": {"include_usage": True}}, "stream_options",
     "stream_options is only allowed with stream: true"),
    ("completions", {"model": "baco", "prompt": "Why?", "stream": False, "stream_options": {"include_usage": False}},
     "stream_options", "stream_options is only allowed with stream: true"),
])
def test_a_refused_field_is_named_with_what_is_wrong_with_it(live, route, body, param, says):
    """A one-or-a-list field reports the branch its value took (pydantic reported the string branch: "prompt.str:
    Input should be a valid string" for a list too long), with the server's real limit."""
    response = requests.post(f"{live.url}/v1/{route}", json=body, timeout=60)
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == param
    assert error["message"].startswith(says), error["message"]


@pytest.mark.parametrize("knob", ["temperature", "top_p", "min_p"])
@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_a_sampling_knob_that_is_not_a_finite_number_says_so(live, knob, value):
    raw = json.dumps(CHAT)[:-1] + f', "{knob}": {value}}}'  # Python's JSON reader takes NaN and Infinity
    response = requests.post(live.url + "/v1/chat/completions", data=raw, timeout=60,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == f"{knob}: Input should be a finite number"


@pytest.mark.parametrize("sent, says", [
    ({"data": CHAT}, "the body was sent as application/x-www-form-urlencoded: send it as a JSON object with the "
                     "header Content-Type: application/json"),  # curl -d's default
    ({"data": json.dumps(CHAT), "headers": {"Content-Type": "text/plain"}}, "the body was sent as text/plain: "),
    ({"data": json.dumps(CHAT)}, "the body was sent without a Content-Type header: "),
    ({"data": b""}, "the request body is empty: send a JSON object"),
    ({"json": [CHAT]}, "the body must be a JSON object, got an array"),
])
def test_a_body_that_is_not_a_json_object_is_told_how_to_send_one(live, sent, says):
    response = requests.post(live.url + "/v1/chat/completions", timeout=60, **sent)
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] is None
    assert error["message"].startswith(says), error["message"]


def test_a_prompt_too_long_for_a_slot_says_so(client):
    with pytest.raises(openai.BadRequestError) as refused:
        chat(client, "Name a fruit.", max_tokens=250)
    assert refused.value.code == "context_length_exceeded"


@pytest.mark.parametrize("route, field", [("/v1/chat/completions", "messages"), ("/v1/completions", "prompt")])
def test_a_prompt_longer_than_the_models_context_is_a_context_length_error(live, route, field):
    """Not only a prompt that leaves too little room in a slot: one the models cannot read at all (before:
    code invalid_value, from the library's check of the context, for the same mistake)."""
    text = "x " * 300  # over 256 tokens: the tiny models' context
    body = {"model": "baco", "max_tokens": 1,
            **({"messages": [{"role": "user", "content": text}]} if field == "messages" else {"prompt": text})}
    response = requests.post(live.url + route, json=body, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == field
    assert "context" in error["message"]
    # one prompt is not "prompt 0" (a chat has no prompt at all)
    assert error["message"].startswith("the conversation is " if field == "messages" else "the prompt is ")


def test_metrics_count_requests_tokens_and_steps(client, live):
    before = metric(live, "baco_completion_tokens_total", writer="base") + metric(
        live, "baco_completion_tokens_total", writer="aligned")
    response = chat(client, PROMPTS[0], max_tokens=10, seed=1)
    after = metric(live, "baco_completion_tokens_total", writer="base") + metric(
        live, "baco_completion_tokens_total", writer="aligned")
    assert after - before == response.usage.completion_tokens
    text = requests.get(live.url + "/metrics").text
    for name in ("baco_requests_total", "baco_queued_rows", "baco_running_rows", "baco_batch_occupancy",
                 "baco_step_seconds_count", "baco_time_to_first_token_seconds_count"):
        assert re.search(rf"^{name}", text, re.M), name


def test_a_failing_engine_fails_its_requests_with_500_and_the_server_keeps_serving(client, live):
    from baco.routers import register
    from baco.routers.registry import _REGISTRY

    def explodes(view):
        raise RuntimeError("a router bug")

    register("test-explodes", help="raises (a test of the server's failure path)")(explodes)
    try:
        with pytest.raises(openai.InternalServerError, match="a router bug"):
            chat(client, PROMPTS[0], max_tokens=8, extra_body={"router": "test-explodes"})
        stream = chat(client, PROMPTS[0], max_tokens=8, stream=True, extra_body={"router": "test-explodes"})
        with pytest.raises(openai.APIError, match="a router bug"):
            list(stream)
    finally:
        del _REGISTRY["test-explodes"]
    assert "test-explodes" not in live.worker.engines and not live.worker.rows and live.worker.outstanding == 0
    assert chat(client, PROMPTS[0], max_tokens=8, seed=1).choices[0].finish_reason in ("stop", "length")


def test_a_request_the_device_has_no_room_for_gets_503_and_the_server_keeps_serving(live, monkeypatch):
    """A request whose memory cannot be had now (a penalised request's buffers, or one more router's KV caches) is
    answered 503 `out_of_memory` with Retry-After, naming what it needs; the engine and the server go on, and the
    same requests are served once there is room (before: a 500, as for a bug)."""
    import baco.decode.engine as engine_module

    url = live.url + "/v1/chat/completions"
    plain = {"model": "baco", "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 6, "seed": 1,
             "router": "rand:0.41"}
    assert requests.post(url, json=plain).status_code == 200  # its engine exists, without penalty buffers
    refused = metric(live, "baco_rows_total", outcome="capacity")
    monkeypatch.setattr(engine_module, "free_bytes", lambda device: 1)
    asks = [({**plain, "presence_penalty": 1.0}, r"penalties .* need [\d.]+ [KM]iB .* 1 byte is free"),
            ({**plain, "router": "rand:0.59"}, r"the KV caches for 16 slots of 256 tokens need")]
    for body, message in asks:
        for stream in (False, True):
            response = requests.post(url, json={**body, "stream": stream})
            if stream:  # a stream has begun (200): its last event is the error, then [DONE]
                events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
                assert events[-1] == "[DONE]"
                error = json.loads(events[-2])["error"]
            else:
                assert response.status_code == 503 and response.headers["retry-after"] == "1", response.text
                error = response.json()["error"]
            assert error["code"] == "out_of_memory" and error["type"] == "server_error"
            assert re.search(message, error["message"]), error["message"]
    assert requests.post(url, json=plain).status_code == 200  # the engine went on
    assert metric(live, "baco_rows_total", outcome="capacity") == refused + 4  # operators tell them from bugs
    monkeypatch.undo()
    for body, _ in asks:
        served = requests.post(url, json=body)
        assert served.status_code == 200 and served.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert not live.worker.rows and live.worker.outstanding == 0


def test_an_engine_out_of_memory_mid_step_fails_its_requests_with_503_and_the_server_keeps_serving(client, live):
    """torch's out-of-memory error inside a step is no bug: its requests get 503 out_of_memory (Retry-After), the
    engine is dropped (its memory freed), and the server goes on."""
    from baco.routers import register
    from baco.routers.registry import _REGISTRY

    def full(view):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    register("test-full", help="runs out of device memory (a test of the server's capacity path)")(full)
    try:
        with pytest.raises(openai.InternalServerError) as refused:
            chat(client, PROMPTS[0], max_tokens=8, extra_body={"router": "test-full"})
        assert refused.value.status_code == 503 and refused.value.response.headers["retry-after"] == "1"
        assert refused.value.body["code"] == "out_of_memory" and "Tried to allocate" in refused.value.body["message"]
    finally:
        del _REGISTRY["test-full"]
    assert "test-full" not in live.worker.engines and not live.worker.rows and live.worker.outstanding == 0
    assert chat(client, PROMPTS[0], max_tokens=8, seed=1).choices[0].finish_reason in ("stop", "length")


class Listener:
    """A job's consumer on the stepping thread's side: gathers each choice's text, its finish and any error.
    `hangs_up`: "once" (its first delivery raises) or "for good" (every one does), as a consumer whose client has
    gone away."""

    def __init__(self, choices: int, *, hangs_up: str | None = None):
        self.texts, self.finish, self.errors = [""] * choices, [None] * choices, []
        self.hangs_up, self.done = hangs_up, threading.Event()

    def __call__(self, messages):
        if self.hangs_up:
            self.hangs_up = None if self.hangs_up == "once" else self.hangs_up
            self.done.set()
            raise ConnectionResetError("the client went away")
        for kind, index, value in messages:
            if kind == "tokens":
                self.texts[index] += "".join(token.text for token in value)
            elif kind == "finish":
                self.finish[index] = value
            else:
                self.errors.append(value)
        if self.errors or None not in self.finish:
            self.done.set()


@pytest.mark.parametrize("hangs_up", ["once", "for good"])
def test_a_request_that_fails_in_its_step_fails_alone(collab, hangs_up):
    """A failure while a step is handed out (here: a request whose consumer raises, its client gone) fails that
    request only: it is told so if it still listens, the others of the same step finish with the text they have
    alone, its slot is freed, and the stepping thread serves the next request (before, every request of the engine
    failed with it, and a consumer gone for good killed the thread when it was told)."""
    from baco.server.metrics import Metrics
    from baco.server.worker import Job, Worker

    sampling = SamplingParams(max_new_tokens=24, temperature=0.9, min_p=0.05, seed=7)
    fmt = Collaboration(collab.pair, collab.prompt_format)
    metrics = Metrics()
    worker = Worker(collab.pair, stop_strings=collab.stop_strings, max_batch=4, max_len=256, max_queue=8,
                    max_engines=1, metrics=metrics, prefill_tokens=16)

    def job(prompt, listener):
        return Job(fmt.requests([prompt], 1, sampling, seed=7), sampling, "p-punc:0.5", collab.stop_strings, listener)

    def alone(prompt):
        listener = Listener(1)
        worker.submit(job(prompt, listener))
        assert listener.done.wait(60)
        return listener

    failing, others = Listener(1, hangs_up=hangs_up), [Listener(1), Listener(1)]
    for prompt, listener in zip(PROMPTS, [failing, *others]):  # all queued before the thread starts: one batch
        worker.submit(job(prompt, listener))
    worker.start()
    try:
        assert all(listener.done.wait(60) for listener in (failing, *others))
        told = ["ConnectionResetError: the client went away"] if hangs_up == "once" else []
        assert failing.errors == told and failing.texts == [""]
        for prompt, listener in zip(PROMPTS[1:], others):
            assert not listener.errors and listener.finish[0] in ("stop", "length")
            assert listener.texts == alone(prompt).texts
        assert all(engine.prefill_tokens == 16 for engine in worker.engines.values())  # prompts prefilled in parts
        assert wait_for(lambda: worker.outstanding == 0 and not worker.rows)
        assert not worker.engines["p-punc:0.5"].live  # its slot is free
        assert metrics.registry.get_sample_value("baco_rows_total", {"outcome": "error"}) == 1
        again = alone(PROMPTS[0])
        assert worker.is_alive() and not again.errors and again.finish[0] in ("stop", "length")
    finally:
        worker.close()


@pytest.fixture
def held():
    """Router "test-held": the base model's tokens, but each step waits until the event is set, so that requests
    are running for as long as a test needs."""
    from baco.routers import register
    from baco.routers.builtin import base_only
    from baco.routers.registry import _REGISTRY

    gate = threading.Event()

    def waits(view):
        gate.wait()
        return base_only(view)

    register("test-held", help="base, once released (a test of the server's shutdown)", host=True)(waits)
    try:
        yield gate
    finally:
        gate.set()
        del _REGISTRY["test-held"]


HELD = {"model": "baco", "messages": [{"role": "user", "content": PROMPTS[1]}], "max_tokens": 8, "temperature": 0,
        "router": "test-held"}


def read_events(url: str, body: dict, events: list) -> None:
    """POST a streamed request and append the data of each server-sent event to `events` as it arrives."""
    with requests.post(url, json={**body, "stream": True}, stream=True, timeout=120) as response:
        for line in response.iter_lines(chunk_size=1):
            if line.startswith(b"data: "):
                events.append(line[len(b"data: "):].decode())


def test_a_shutdown_refuses_new_requests_and_lets_running_ones_finish(collab, held):
    """While the server shuts down (SIGTERM, Ctrl-C), a new request gets a 503 with an OpenAI error object, and
    the requests already running get the grace period to finish as usual."""
    config = ServerConfig(max_batch=4, max_len=256, max_queue=12, max_engines=1, limits=LIMITS)
    with LiveServer(collab, config, grace=120) as server:
        url, events = server.url + "/v1/chat/completions", []
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            whole = pool.submit(requests.post, url, json=HELD, timeout=120)
            streamed = pool.submit(read_events, url, HELD, events)
            assert wait_for(lambda: server.worker.outstanding == 2 and events)
            server.shut_down()
            assert wait_for(lambda: server.app.drain.closing)
            for refused in (requests.post(url, json={**HELD, "router": "base"}, timeout=60),
                            requests.get(server.url + "/health", timeout=60)):
                assert refused.status_code == 503
                assert refused.json()["error"] == {"message": refused.json()["error"]["message"],
                                                   "type": "server_error", "param": None,
                                                   "code": "server_shutting_down"}
            held.set()
            answer, _ = whole.result(), streamed.result()
    expected = library(collab, PROMPTS[1], router="test-held", max_new_tokens=8, temperature=0)[0]
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == expected.text
    chunks = [json.loads(event) for event in events[:-1]]
    assert events[-1] == "[DONE]" and not any("error" in chunk for chunk in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected.text


def test_a_shutdown_ends_requests_still_running_after_the_grace_with_an_openai_error(collab, held):
    """Requests still running when the grace period ends are answered, not dropped: a 503 with an OpenAI error
    object, or (streamed) a last event with the error object and then `data: [DONE]`, as on an engine failure.
    Their rows leave the batch."""
    config = ServerConfig(max_batch=4, max_len=256, max_queue=12, max_engines=1, limits=LIMITS)
    with LiveServer(collab, config, grace=1) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        events = []
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            whole = pool.submit(chat, client, PROMPTS[1], max_tokens=8, temperature=0,
                                extra_body={"router": "test-held"})
            streamed = pool.submit(read_events, server.url + "/v1/chat/completions", HELD, events)
            assert wait_for(lambda: server.worker.outstanding == 2 and events)
            server.shut_down()
            with pytest.raises(openai.InternalServerError) as cut:
                whole.result()
            streamed.result()
        held.set()
    assert cut.value.status_code == 503 and cut.value.code == "server_shutting_down" and "shutting down" in \
        cut.value.message
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "server_error" and error["code"] == "server_shutting_down"
    assert [json.loads(event)["choices"][0]["delta"] for event in events[:-2]] == [{"role": "assistant",
                                                                                    "content": ""}]
    rows = server.app.app.state.metrics.registry.get_sample_value
    assert rows("baco_rows_total", {"outcome": "cancelled"}) == 2 and server.worker.outstanding == 0


def test_a_router_waiting_for_an_engine_is_served_under_steady_load_on_the_others(collab):
    """One engine (max_engines=1) busy with one router, a request for another router waiting for it, and more
    requests for the first router arriving meanwhile: they must not keep that engine busy forever (before, they
    joined it and the other router waited for all of them; under steady load, for ever)."""
    import time

    from baco.routers import register
    from baco.routers.builtin import base_only
    from baco.routers.registry import _REGISTRY

    def slow(view):
        time.sleep(0.01)
        return base_only(view)

    register("test-slow", help="base, slowly (a test of engine sharing between routers)")(slow)
    config = ServerConfig(max_batch=1, max_len=256, max_queue=16, max_engines=1, limits=LIMITS)
    try:
        with LiveServer(collab, config) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
            done = {}

            def ask(name, router, tokens):
                chat(client, PROMPTS[1], max_tokens=tokens, temperature=0, extra_body={"router": router})
                done[name] = time.monotonic()

            first = chat(client, PROMPTS[1], max_tokens=100, temperature=0, stream=True,
                         extra_body={"router": "test-slow"})
            next(iter(first))  # the slow router's engine is running
            threads = [threading.Thread(target=ask, args=("other", "base", 4))]
            threads[0].start()
            assert wait_for(lambda: [job.router for job in server.worker.pending] == ["base"])
            threads += [threading.Thread(target=ask, args=(f"more {i}", "test-slow", 100)) for i in range(3)]
            for thread in threads[1:]:
                thread.start()
            assert wait_for(lambda: server.worker.outstanding == 5)  # all submitted, the first still running
            list(first)
            for thread in threads:
                thread.join(timeout=120)
            assert len(done) == 4
            assert done["other"] < min(done[f"more {i}"] for i in range(3))  # it waited for the first request only
            assert wait_for(lambda: server.worker.outstanding == 0 and not server.worker.pending)
    finally:
        del _REGISTRY["test-slow"]


def test_max_tokens_beyond_the_models_context_is_refused_even_when_the_slot_is_longer(collab):
    """A --max-len longer than the models' context: a request whose prompt plus max_tokens fits the slot but not the
    context is refused (400), not cut short at the context with finish_reason "length" (before: 200, 230 tokens)."""
    assert collab.pair.context_length == 256
    with LiveServer(collab, ServerConfig(max_batch=2, max_len=512, max_queue=14, max_engines=1, limits=LIMITS)) as long:
        client = openai.OpenAI(base_url=long.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        with pytest.raises(openai.BadRequestError) as refused:
            chat(client, PROMPTS[1], max_tokens=250, temperature=0, extra_body={"router": "base"})
        assert refused.value.code == "context_length_exceeded" and "context" in refused.value.message
        fits = chat(client, PROMPTS[1], max_tokens=200, temperature=0, extra_body={"router": "base"})
        assert fits.choices[0].finish_reason == "length" and fits.usage.completion_tokens == 200


def test_a_request_that_gives_no_max_tokens_gets_no_more_than_the_servers_max_tokens(collab):
    """--max-tokens bounds every choice: leaving max_tokens out must not get a client the default (here 24) where
    asking for 7 is refused (before: 24 tokens)."""
    capped = Limits(max_tokens=6, default_max_tokens=24, max_prompt_tokens=200, max_n=4, max_prompts=4)
    config = ServerConfig(max_batch=2, max_len=256, max_queue=14, max_engines=1, limits=capped)
    with LiveServer(collab, config) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        with pytest.raises(openai.BadRequestError):
            chat(client, PROMPTS[1], max_tokens=7)
        unasked = chat(client, PROMPTS[1], temperature=0, extra_body={"router": "base"})
        assert unasked.choices[0].finish_reason == "length" and unasked.usage.completion_tokens == 6
        schema = requests.get(server.url + "/openapi.json").json()["components"]["schemas"]
        assert "default 6," in schema["ChatCompletionRequest"]["properties"]["max_tokens"]["description"]


def test_tokenize_and_detokenize_as_vllm_offers_them(live, collab):
    """vLLM's /tokenize: a prompt's text as given (the ids logit_bias and stop_token_ids name; special tokens as the
    tokenizer adds them unless add_special_tokens is false), or messages as a chat request renders them for each
    model (the usage a chat reports counts the aligned rendering); /detokenize gives the text back."""
    tokenizer = collab.pair.aligned.tokenizer
    text = "Name a fruit, please."
    got = requests.post(live.url + "/tokenize", json={"model": "baco", "prompt": text,
                                                      "return_token_strs": True}).json()
    assert got["tokens"] == tokenizer(text)["input_ids"] and got["count"] == len(got["tokens"])
    assert "".join(got["token_strs"]) == tokenizer.decode(got["tokens"]) and got["max_model_len"] == 256
    bare = requests.post(live.url + "/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
    assert bare["tokens"] == tokenizer(text, add_special_tokens=False)["input_ids"] != got["tokens"]
    assert bare["token_strs"] is None and bare["base_tokens"] is None
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
    rendered = requests.post(live.url + "/tokenize", json={"messages": messages}).json()
    request = Collaboration(collab.pair, collab.prompt_format).requests([messages], 1, SamplingParams(), 0)[0]
    assert rendered["tokens"] == request.aligned_ids and rendered["base_tokens"] == request.base_ids
    usage = requests.post(live.url + "/v1/chat/completions", json={"model": "baco", "messages": messages,
                                                                   "max_tokens": 2}).json()["usage"]
    assert usage["prompt_tokens"] == rendered["count"]
    back = requests.post(live.url + "/detokenize", json={"model": "baco", "tokens": bare["tokens"]}).json()
    assert back == {"prompt": text}
    refusals = [("/tokenize", {}, "prompt"),
                ("/tokenize", {"prompt": "a", "messages": messages}, "prompt"),
                ("/tokenize", {"messages": messages, "add_special_tokens": True}, "prompt"),
                ("/tokenize", {"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
                ("/detokenize", {"tokens": [collab.pair.vocab_size]}, "tokens.0"),
                ("/detokenize", {"tokens": "1 2"}, "tokens")]
    for route, body, param in refusals:
        refused = requests.post(live.url + route, json=body)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param, (route, refused.text)
    other = requests.post(live.url + "/tokenize", json={"model": "gpt-4", "prompt": "a"})
    assert other.status_code == 404 and other.json()["error"]["code"] == "model_not_found"
