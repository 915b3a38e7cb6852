"""Quality metrics on tiny random models: reward, judge, fluency (checked against plain transformers), relevance."""

import numpy as np
import pytest
import torch

from baco.errors import BacoError, ModelLoadError
from baco.evaluate.quality import (JUDGE_GRADES, JUDGE_TEMPLATE, Fluency, Judge, RewardModel,
                                   noveltybench_reward_bin, relevance)
from baco.models.hf import HFCausalLM
from baco.prompts import DEFAULT_BASE_TEMPLATE

PROMPTS = ["Name a fruit.", "Tell me a story about a dragon.", "What should I cook tonight?"]
RESPONSES = ["An apple.", "Once upon a time there was a small dragon. She walked everywhere.",
             "Try a warm soup with lentils, carrots and fresh bread."]


@pytest.fixture(scope="module")
def long_pair(tmp_path_factory):
    """The tiny random pair with a 1024-token context (the judge's rubric alone is ~200 tiny-BPE tokens)."""
    from baco.testing import make_tiny_pair

    return make_tiny_pair(tmp_path_factory.mktemp("tiny-long"), context=1024)


@pytest.fixture(scope="module")
def tiny_reward(tmp_path_factory):
    """A random one-output sequence-classification model with the tiny tokenizer (chat template included)."""
    from baco.testing import make_tiny_classifier

    return make_tiny_classifier(tmp_path_factory.mktemp("reward"), num_labels=1, seed=1)


def test_reward_scores_each_pair_and_batching_does_not_change_them(tiny_reward):
    one = RewardModel(tiny_reward, device="cpu", batch_size=1)(PROMPTS, RESPONSES)
    many = RewardModel(tiny_reward, device="cpu", batch_size=8)(PROMPTS, RESPONSES)
    assert one == pytest.approx(many, abs=1e-4)
    assert len(one) == 3 and all(np.isfinite(one)) and len(set(round(v, 5) for v in one)) == 3


def test_reward_reads_the_chat_rendering_of_prompt_and_response(tiny_reward):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_reward)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward).eval()
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[1]},
                                          {"role": "assistant", "content": RESPONSES[1]}], tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        expected = model(**ids).logits[0, 0].item()
    assert RewardModel(tiny_reward, device="cpu")([PROMPTS[1]], [RESPONSES[1]])[0] == pytest.approx(expected, abs=1e-5)


def test_missing_reward_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="reward model"):
        RewardModel(str(tmp_path / "nope"))


def test_noveltybench_reward_bins():
    assert noveltybench_reward_bin(-9.0) == 1
    assert noveltybench_reward_bin(-7.71875) == 1  # equal to a threshold: the lower bin
    assert noveltybench_reward_bin(-7.0) == 2
    assert noveltybench_reward_bin(-2.046875) == 9
    assert noveltybench_reward_bin(0.5) == 10


def reference_grade(lm, prompt, response):
    """Expected grade from one unpadded forward pass of plain transformers."""
    tokenizer = lm.tokenizer
    text = tokenizer.apply_chat_template([{"role": "user", "content": JUDGE_TEMPLATE.format(prompt=prompt,
                                                                                           response=response)}],
                                         add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        probs = torch.softmax(lm.model(input_ids=ids).logits[0, -1].double(), dim=-1)
    digits = [tokenizer(str(k), add_special_tokens=False)["input_ids"][0] for k in JUDGE_GRADES]
    p = probs[digits]
    return float((p * torch.tensor(JUDGE_GRADES, dtype=torch.float64)).sum() / p.sum())


def test_judge_expected_grade_matches_an_unpadded_forward(long_pair):
    lm = HFCausalLM.from_pretrained(long_pair[1], device="cpu")
    judge = Judge(lm, batch_size=8)
    grades = judge(PROMPTS, RESPONSES)  # one left-padded batch of three lengths
    for prompt, response, grade in zip(PROMPTS, RESPONSES, grades):
        assert 1.0 <= grade <= 5.0
        assert grade == pytest.approx(reference_grade(lm, prompt, response), abs=1e-4)
    assert all(0.0 < m <= 1.0 for m in judge.last_grade_mass)


def test_judge_grades_come_back_in_input_order_whatever_the_batches(long_pair):
    lm = HFCausalLM.from_pretrained(long_pair[1], device="cpu")
    prompts, responses = PROMPTS * 2, RESPONSES + RESPONSES[1:] + RESPONSES[:1]  # lengths mixed, batches of 2
    judge = Judge(lm, batch_size=2)
    grades = judge(prompts, responses)
    for prompt, response, grade in zip(prompts, responses, grades):
        assert grade == pytest.approx(reference_grade(lm, prompt, response), abs=1e-4)
    assert min(abs(a - b) for i, a in enumerate(grades) for b in grades[i + 1:]) > 1e-3  # a mix-up would show


def test_judge_truncates_long_responses_and_needs_a_chat_template(tiny_dirs, long_pair):
    lm = HFCausalLM.from_pretrained(tiny_dirs[1], device="cpu")  # context 256: rubric ~200 tokens
    grades = Judge(lm)(["Name a fruit."], ["apple " * 500])
    assert grades[0] is not None and 1.0 <= grades[0] <= 5.0
    lm.tokenizer.chat_template = None
    with pytest.raises(ModelLoadError, match="chat template"):
        Judge(lm)


def reference_fluency(lm, prompt, response):
    tokenizer = lm.tokenizer
    prefix = tokenizer(DEFAULT_BASE_TEMPLATE.format(prompt=prompt))["input_ids"]
    answer = tokenizer(" " + response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prefix + answer])
    with torch.inference_mode():
        logprobs = torch.log_softmax(lm.model(input_ids=ids).logits[0].float(), dim=-1)
    return float(np.mean([logprobs[len(prefix) + i - 1, t].item() for i, t in enumerate(answer)]))


def test_fluency_is_mean_token_logprob_as_an_unpadded_forward(long_pair):
    lm = HFCausalLM.from_pretrained(long_pair[0], device="cpu")
    scores = Fluency(lm, batch_size=8)(PROMPTS + [PROMPTS[0]], RESPONSES + [""])
    for prompt, response, score in zip(PROMPTS, RESPONSES, scores):
        assert score == pytest.approx(reference_fluency(lm, prompt, response), abs=1e-4)
        assert score < 0
    assert scores[3] is None  # empty response: no tokens, undefined
    # a logits budget of one row at a time gives the same numbers
    assert Fluency(lm, max_logits=1)(PROMPTS, RESPONSES) == pytest.approx(scores[:3], abs=1e-4)


def test_relevance_is_prompt_response_cosine(tmp_path):
    from baco.evaluate.embeddings import default_embedder

    embedder = default_embedder()
    same, other, empty = relevance(["Name a fruit."] * 3, ["Name a fruit.", "Quantum computers use qubits.", ""],
                                   embedder=embedder)
    assert same == pytest.approx(1.0, abs=1e-5)
    assert other < 0.5 and empty == 0.0


def test_reward_metric_without_a_model_says_what_to_pass():
    from baco.evaluate.resources import Resources

    with pytest.raises(BacoError, match="--reward-model"):
        Resources().get("reward_model")


@pytest.mark.slow
def test_default_judge_and_fluency_run_on_the_embedded_gemma_pair():
    from baco.evaluate.resources import EvalOptions, Resources

    resources = Resources(EvalOptions(device="cpu"))
    prompts = ["Name a fruit.", "Name a fruit."]
    responses = ["An apple is a crisp, sweet fruit.", "zx qv !! ,, ;; blorp"]
    grades = resources.get("judge")(prompts, responses)
    fluency = resources.get("fluency_lm")(prompts, responses)
    assert all(1.0 <= g <= 5.0 for g in grades)
    assert fluency[0] > fluency[1]  # the base model finds a plain sentence likelier than junk
    # the judge (base + adapter) and the fluency model (the base) read one tokenizer once
    assert resources.get("judge").lm.tokenizer is resources.get("fluency_lm").lm.tokenizer


# ---- conversations: each scorer reads the turns the answer follows --------------------------------------------
TALK = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "I love dragons."},
        {"role": "assistant", "content": "Me too."}, {"role": "user", "content": "Name a fruit."}]


def test_the_reward_model_reads_a_conversation_as_chat_turns_before_the_response(tiny_reward):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_reward)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward).eval()
    text = tokenizer.apply_chat_template(TALK + [{"role": "assistant", "content": "Fig."}], tokenize=False)
    with torch.inference_mode():
        expected = model(**tokenizer(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0].item()
    talk, alone = RewardModel(tiny_reward, device="cpu")([TALK, "Name a fruit."], ["Fig.", "Fig."])
    assert talk == pytest.approx(expected, abs=1e-5) and talk != pytest.approx(alone, abs=1e-6)


def test_the_reward_model_and_judge_read_system_and_developer_messages_as_one_system_prompt(tiny_reward):
    """As the decoding models read them (`prompts.split_conversation`): a developer message is a system message,
    and several are one system prompt, joined by a blank line (a chat template may know neither a developer role
    nor a second system message)."""
    from baco.evaluate.quality import request_text

    as_developer = [{"role": "developer", "content": "Answer in one word."}, *TALK[1:]]
    split = [{"role": "system", "content": "Answer"}, {"role": "system", "content": "in one word."}, *TALK[1:]]
    joined = [{"role": "system", "content": "Answer\n\nin one word."}, *TALK[1:]]
    scores = RewardModel(tiny_reward, device="cpu")([TALK, as_developer, split, joined], ["Fig."] * 4)
    assert scores[1] == pytest.approx(scores[0], abs=1e-6) and scores[2] == pytest.approx(scores[3], abs=1e-6)
    assert request_text(as_developer) == request_text(TALK) and request_text(split) == request_text(joined)


def test_the_judge_is_shown_the_conversation_as_the_request(long_pair):
    from baco.evaluate.quality import request_text

    lm = HFCausalLM.from_pretrained(long_pair[1], device="cpu")
    shown = "System: Answer in one word.\nUser: I love dragons.\nAssistant: Me too.\nUser: Name a fruit."
    assert request_text(TALK) == shown
    (grade,) = Judge(lm)([TALK], ["Fig."])
    assert grade == pytest.approx(reference_grade(lm, shown, "Fig."), abs=1e-4)


def test_fluency_follows_the_conversation_as_the_base_model_reads_it(long_pair):
    from baco.prompts import PromptFormat

    lm = HFCausalLM.from_pretrained(long_pair[0], device="cpu")
    fmt = PromptFormat(system_prompt="Answer in one word.", few_shot=(("I love dragons.", "Me too."),))
    tokenizer = lm.tokenizer
    prefix = tokenizer(fmt.render_base("Name a fruit."))["input_ids"]
    answer = tokenizer(" Fig.", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logprobs = torch.log_softmax(lm.model(input_ids=torch.tensor([prefix + answer])).logits[0].float(), dim=-1)
    expected = float(np.mean([logprobs[len(prefix) + i - 1, t].item() for i, t in enumerate(answer)]))
    assert Fluency(lm)([TALK], ["Fig."])[0] == pytest.approx(expected, abs=1e-4)


def test_relevance_compares_the_response_with_the_last_user_turn():
    from baco.evaluate.embeddings import default_embedder

    embedder = default_embedder()
    assert relevance([TALK], ["Name a fruit."], embedder=embedder)[0] == pytest.approx(1.0, abs=1e-5)


def test_the_evaluation_scores_two_conversations_ending_in_one_turn_apart(long_pair, tmp_path):
    import json

    from baco.evaluate.registry import resolve_metrics
    from baco.evaluate.resources import EvalOptions, Resources
    from baco.evaluate.runner import evaluate_records
    from baco.evaluate.io import read_records

    path = tmp_path / "chats.jsonl"
    reply = {"role": "assistant", "content": "Fig."}
    path.write_text("".join(json.dumps({"messages": m + [reply]}) + "\n" for m in (TALK, TALK[1:])))
    records, _ = read_records([path])
    options = EvalOptions(fluency_model=str(long_pair[0]), device="cpu", score_cache=str(tmp_path / "scores.jsonl"))
    result = evaluate_records(records, resolve_metrics("fluency"), Resources(options))
    first, second = (row["fluency"] for row in result.per_prompt)
    assert first != pytest.approx(second, abs=1e-6)  # other turns before the same question: other scores
    assert len((tmp_path / "scores.jsonl").read_text().splitlines()) == 2
