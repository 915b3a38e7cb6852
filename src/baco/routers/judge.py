"""JUDGE (an ablation of the paper): an instruction model decides, at word starts, whose next word is better.

At a step where the two models' top-1 tokens differ and both start a new word, the judge reads the
prompt, the answer so far and the two candidate words, and is asked "A or B?", in both orders (LLM
judges favour a position; asking twice and adding the margins cancels that); the model whose word it
prefers writes (drawing from its own distribution, so the token may differ from the candidate shown).
Everywhere else the aligned model writes. One batched forward of the judge per step answers every row
that needs a decision; answers are cached by (prompt, text, candidates).

Cost, reported honestly in `JudgeRouter.stats`: judge calls (forwards), questions asked, cache hits,
prompt tokens read and seconds spent. The judge reads a fresh prompt at every decision (no KV
cache across steps), so JUDGE costs far more than the two decoding models; that is the point of
the ablation (BACo's routers decide from the two distributions alone, for free).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from baco.routers.registry import register
from baco.routers.view import Route, StepView

QUESTION = ("Question: {prompt}\nAnswer so far: {text}\n\nWhich word should come next to give the better answer?\n"
            "A: {a}\nB: {b}\nReply with A or B.")


@dataclass
class JudgeStats:
    calls: int = 0
    questions: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"calls": self.calls, "questions": self.questions, "cache_hits": self.cache_hits,
                "prompt_tokens": self.prompt_tokens, "seconds": round(self.seconds, 3)}


@dataclass
class JudgeRouter:
    """A router backed by an instruction model (`HFCausalLM` with a chat template)."""

    lm: object
    name: str = "judge"
    host: bool = True  # reads the rows' texts: the engine runs it on its eager, synchronous path
    batch_size: int = 32
    stats: JudgeStats = field(default_factory=JudgeStats)
    cache: dict = field(default_factory=dict)

    def __post_init__(self):
        tok = self.lm.tokenizer
        self._a = tok("A", add_special_tokens=False)["input_ids"][0]
        self._b = tok("B", add_special_tokens=False)["input_ids"][0]

    def prefers_first(self, questions: list[tuple[str, str, str, str]]) -> list[bool]:
        """For each (prompt, text so far, word A, word B): does the judge prefer A (logit of A >= logit of B)?"""
        return [margin >= 0 for margin in self.margins(questions)]

    def prefers_base(self, questions: list[tuple[str, str, str, str]]) -> list[bool]:
        """For each (prompt, text so far, base word, aligned word): is the base word better, asked in both orders
        (the logit margin of A over B with the base word as A, minus that with the aligned word as A, > 0), so
        that the answer depends on the words, not on which is shown first."""
        swapped = [(prompt, text, aligned, base) for prompt, text, base, aligned in questions]
        margins = self.margins(questions + swapped)
        return [first - second > 0 for first, second in zip(margins[:len(questions)], margins[len(questions):])]

    def margins(self, questions: list[tuple[str, str, str, str]]) -> list[float]:
        """For each (prompt, text so far, word A, word B): the judge's logit of "A" minus its logit of "B"."""
        answers: list[float | None] = [self.cache.get(q) for q in questions]
        self.stats.questions += len(questions)
        self.stats.cache_hits += sum(a is not None for a in answers)
        todo = [i for i, a in enumerate(answers) if a is None]
        began = time.perf_counter()
        tok = self.lm.tokenizer
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            texts = [tok.apply_chat_template([{"role": "user", "content": QUESTION.format(
                prompt=questions[i][0], text=questions[i][1].strip() or "(nothing yet)",
                a=questions[i][2].strip(), b=questions[i][3].strip())}], tokenize=False, add_generation_prompt=True)
                for i in chunk]
            ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
            session = self.lm.start(ids)
            logits = session.logits
            self.stats.calls += 1
            self.stats.prompt_tokens += sum(len(x) for x in ids)
            for i, row in zip(chunk, logits):
                answers[i] = float(row[self._a]) - float(row[self._b])
                self.cache[questions[i]] = answers[i]
        self.stats.seconds += time.perf_counter() - began
        return [float(a) for a in answers]

    def __call__(self, view: StepView) -> Route:
        if view.prompts is None or view.texts is None:
            raise ValueError("the judge router needs the rows' prompts and texts (the lockstep loop passes them)")
        vocab = view.vocab
        base_top, aligned_top = view.base_top1_token, view.aligned_top1_token
        starts_word = ~vocab.continues_word[base_top] & ~vocab.continues_word[aligned_top]
        if view.previous is not None:  # after a line break, punctuation or nothing, "The" starts a word too
            starts_word = starts_word | ~vocab.mid_word(view.previous)
        ask = (base_top != aligned_top) & starts_word & ~vocab.is_punct[aligned_top]
        use_base = torch.zeros(view.batch_size, dtype=torch.bool, device=view.base_logprobs.device)
        reasons = ["aligned-default"] * view.batch_size
        rows = ask.nonzero().squeeze(-1).tolist()
        if rows:
            questions = [(view.prompts[r], view.texts[r], vocab.texts[int(base_top[r])], vocab.texts[int(aligned_top[r])])
                         for r in rows]
            for r, base_wins in zip(rows, self.prefers_base(questions)):
                use_base[r] = base_wins
                reasons[r] = "judge-base" if base_wins else "judge-aligned"
        return Route.from_reasons(use_base, reasons)


_DEFAULT: dict[str, JudgeRouter] = {}


def default_judge() -> JudgeRouter:
    """The embedded aligned model as judge, loaded once per process."""
    if "judge" not in _DEFAULT:
        from baco.models.embedded import ALIGNED_ALIAS
        from baco.models.hf import HFCausalLM

        _DEFAULT["judge"] = JudgeRouter(HFCausalLM.from_pretrained(ALIGNED_ALIAS))
    return _DEFAULT["judge"]


@register("judge", help="JUDGE ablation: an instruction model (default: the embedded aligned model) picks "
          "whose next word is better, at word starts where the two models disagree",
          factory=lambda _: default_judge(), host=True)
def judge_router(view: StepView) -> Route:
    return default_judge()(view)
