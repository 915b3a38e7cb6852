"""The JUDGE ablation on the tiny pair: decisions follow the judge's own A/B logits, are cached, and are costed."""

import pytest
import torch

from baco import SamplingParams
from baco.routers.judge import QUESTION, JudgeRouter

PROMPTS = ["Name a fruit.", "Tell me a story about a dragon."]


def forward_margin(collab, prompt, text, a, b) -> float:
    """The judge's question rendered by hand and read by a plain forward of the aligned model: logit("A") -
    logit("B") at its last position (no batching, padding or cache, unlike `JudgeRouter.margins`)."""
    tok = collab.pair.aligned.tokenizer
    chat = tok.apply_chat_template([{"role": "user", "content": QUESTION.format(
        prompt=prompt, text=text.strip() or "(nothing yet)", a=a.strip(), b=b.strip())}],
        tokenize=False, add_generation_prompt=True)
    ids = tok(chat, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = collab.pair.aligned.model(torch.tensor([ids])).logits[0, -1]
    a_id, b_id = tok("A", add_special_tokens=False)["input_ids"][0], tok("B", add_special_tokens=False)["input_ids"][0]
    return float(logits[a_id] - logits[b_id])


def test_the_judge_prefers_the_option_its_logits_favour(collab):
    judge = JudgeRouter(collab.pair.aligned)
    questions = [("Name a fruit.", " I like", " apples", " rocks"), ("Why?", "", " Because", " No"),
                 ("Name a fruit.", " I like", " rocks", " apples")]
    got = judge.prefers_first(questions)
    assert got == [forward_margin(collab, *question) >= 0 for question in questions]
    assert judge.stats.calls == 1 and judge.stats.questions == 3 and judge.stats.prompt_tokens > 0


def test_the_judge_asks_both_orders_so_its_choice_does_not_depend_on_which_word_comes_first(collab):
    """LLM judges favour a position: the base word wins when its logit margin as option A, minus the aligned
    word's margin as option A, is positive; swapping the two words swaps the winner."""
    judge = JudgeRouter(collab.pair.aligned)
    questions = [("Name a fruit.", " I like", " apples", " rocks"), ("Why?", "", " Because", " No"),
                 ("Tell me a story.", " Once", " upon", " there")]
    swapped = [(p, t, b, a) for p, t, a, b in questions]
    base_first = [forward_margin(collab, *q) for q in questions]
    aligned_first = [forward_margin(collab, *q) for q in swapped]
    # the tiny judge favours one position: asked in one order only, it would pick by position, not by word
    assert any((m > 0) == (n > 0) for m, n in zip(base_first, aligned_first))
    assert judge.margins(questions + swapped) == pytest.approx(base_first + aligned_first, abs=1e-4)
    base_wins = judge.prefers_base(questions)
    assert base_wins == [m - n > 0 for m, n in zip(base_first, aligned_first)]
    assert set(base_wins) == {True, False}  # both outcomes occur
    assert judge.prefers_base(swapped) == [not wins for wins in base_wins]
    assert judge.stats.questions == 6 + 6 + 6 and judge.stats.calls == 1  # both orders asked once, then cached


def test_judge_routes_are_cached_costed_and_recorded(collab):
    judge = JudgeRouter(collab.pair.aligned)
    params = SamplingParams(max_new_tokens=16, seed=3)
    first = collab.generate(PROMPTS, router=judge, n=2, sampling=params)
    calls, asked = judge.stats.calls, judge.stats.questions
    assert asked > 0 and calls > 0
    reasons = {r for s in first for r in s.reasons}
    assert reasons <= {"judge-base", "judge-aligned", "aligned-default", "word-continuation"}
    assert {"judge-base", "judge-aligned"} & reasons
    for s in first:
        for source, reason in zip(s.sources, s.reasons):
            if reason.startswith("judge-"):
                assert source == reason.removeprefix("judge-")
    again = collab.generate(PROMPTS, router=judge, n=2, sampling=params)
    assert [s.token_ids for s in again] == [s.token_ids for s in first]
    assert judge.stats.calls == calls  # every question of the rerun came from the cache
    assert judge.stats.cache_hits == asked


def test_the_judge_is_asked_at_a_lines_first_word_too(collab):
    """Two first words without a leading space ("The" / "A") start a word at the start of the answer or after a
    line break, so the judge decides there; after a letter they would continue a word, so it does not."""
    from baco.routers import StepView

    vocab = collab.pair.vocab
    words = [i for i, text in enumerate(vocab.texts) if text.isalpha() and text[0].isupper()][:2]
    letter = next(i for i, text in enumerate(vocab.texts) if text.isalpha() and len(text) > 2 and i not in words)
    newline = vocab.texts.index("\n")
    size = vocab.size
    base, aligned = torch.full((3, size), -30.0), torch.full((3, size), -30.0)
    base[:, words[0]], aligned[:, words[1]] = 0.0, 0.0
    judge = JudgeRouter(collab.pair.aligned)
    view = StepView(torch.log_softmax(base, -1), torch.log_softmax(aligned, -1), vocab, torch.zeros(3),
                    prompts=["Name a fruit."] * 3, texts=["", "Apples.", "Apples"],
                    previous=torch.tensor([-1, newline, letter]))
    route = judge(view)
    assert route.reason[:2] != ["aligned-default"] * 2 and all(r.startswith("judge-") for r in route.reason[:2])
    assert route.reason[2] == "aligned-default" and judge.stats.questions == 2 * 2  # two rows, both orders


def test_the_judge_is_shown_a_conversations_turns_as_the_request(collab):
    """The answer follows the whole conversation, so the judge deciding its words reads all of it."""
    from baco.prompts import request_text

    class Recording(JudgeRouter):
        def prefers_base(self, questions):
            self.asked = getattr(self, "asked", []) + [question[0] for question in questions]
            return super().prefers_base(questions)

    talk = [{"role": "user", "content": "I love dragons."}, {"role": "assistant", "content": "Me too."},
            {"role": "user", "content": "Tell me a story about a dragon."}]
    judge = Recording(collab.pair.aligned)
    collab.generate([talk], router=judge, n=2, sampling=SamplingParams(max_new_tokens=16, seed=3))
    assert set(judge.asked) == {"User: I love dragons.\nAssistant: Me too.\nUser: Tell me a story about a dragon."}
    assert request_text(talk) == judge.asked[0]
