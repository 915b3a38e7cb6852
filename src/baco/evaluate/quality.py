"""Quality of (prompt, response) pairs, batched: reward model, LLM judge, fluency, relevance.

- `reward`: any HF sequence-classification reward model (`--reward-model`, no default);
  logit 0 on the chat [user: prompt, assistant: response].
- `judge`: any instruction model through baco's backend (default: the embedded aligned Gemma);
  the expected 1-5 rubric grade from the next-token probabilities of "1".."5".
- `fluency`: any causal LM (default: the embedded base Gemma); mean log-prob per response token
  after "Question: {prompt}\\nAnswer: ".
- `relevance`: sentence embeddings (all-MiniLM-L6-v2); cosine(prompt, response), 0 for an empty response.

A prompt may be a conversation (a list of {"role", "content"} messages ending in a user turn, `baco.prompts`):
the reward model reads it as chat turns before the response, the judge reads its turns as the request, the
fluency LM reads its earlier turns as earlier questions and answers (as the base model reads them when it
decodes), and relevance compares the response with its last user turn.

Models are passed in by the runner (see resources.py) and loaded only when their metric is asked for.
Each metric also declares a `gain`: its score mapped to a non-negative value for NoveltyBench utility.
"""

from __future__ import annotations

import bisect
import math

import numpy as np
import torch

from baco.errors import ModelLoadError
from baco.evaluate.registry import register_metric
from baco.prompts import (DEFAULT_BASE_TEMPLATE, Prompt, PromptFormat, last_turn, request_text,
                          split_conversation, turns)

MAX_RESPONSE_TOKENS = 512

JUDGE_TEMPLATE = """Grade the answer to the request.

Request: {prompt}

Answer: {response}

Grade from 1 to 5: 1 = off-topic, empty or incoherent; 2 = on topic but unhelpful or badly written; \
3 = acceptable, with flaws; 4 = good: helpful, correct and clear; 5 = excellent: helpful, correct, clear and engaging.
Reply with the grade only."""
JUDGE_GRADES = (1, 2, 3, 4, 5)

# NoveltyBench's bins for Skywork-Reward-Gemma-2-27B-v0.2 raw rewards -> 1..10 (bisect_left + 1).
NOVELTYBENCH_REWARD_BINS = (-7.71875, -6.28125, -6.0, -5.71875, -5.5, -5.0, -4.375, -3.4375, -2.046875)


def noveltybench_reward_bin(reward: float) -> int:
    """1..10; a reward equal to a threshold falls into the lower bin (as NoveltyBench's bisect_left)."""
    return bisect.bisect_left(NOVELTYBENCH_REWARD_BINS, reward) + 1


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield start, items[start:start + size]


def _truncate(tokenizer, text: str, limit: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= limit else tokenizer.decode(ids[:limit])


class RewardModel:
    """An HF sequence-classification reward model with one output (Skywork, ArmoRM-style heads use logit 0)."""

    def __init__(self, model: str, *, batch_size: int = 8, device: str = "auto", max_length: int = 2048):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from baco.models.hf import resolve_device, resolve_dtype

        device_ = resolve_device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                model, dtype=resolve_dtype("auto", device_)).eval().to(device_)
        except Exception as error:  # noqa: BLE001
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ModelLoadError(f"could not load the reward model {model!r}: "
                                 f"{type(error).__name__}: {first}") from error
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.name, self.device, self.batch_size, self.max_length = model, device_, batch_size, max_length

    def render(self, prompt: Prompt, response: str) -> str:
        messages = turns(prompt) + [{"role": "assistant", "content": response}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return "\n\n".join(m["content"] for m in messages)

    @torch.inference_mode()
    def __call__(self, prompts: list[Prompt], responses: list[str]) -> list[float]:
        texts = [self.render(p, r) for p, r in zip(prompts, responses)]
        scores: list[float] = []
        for _, chunk in _batches(texts, self.batch_size):
            has_template = bool(getattr(self.tokenizer, "chat_template", None))
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                 add_special_tokens=not has_template, return_tensors="pt").to(self.device)
            scores += self.model(**enc).logits[:, 0].float().cpu().tolist()
        return scores


class Judge:
    """LLM-as-judge: E[grade] = sum_k k p(k) / sum_k p(k) over the judge's next-token probabilities of the
    grade digits, after the rubric in JUDGE_TEMPLATE rendered with the judge's chat template."""

    def __init__(self, lm, *, template: str = JUDGE_TEMPLATE, batch_size: int = 8):
        self.lm, self.template, self.batch_size = lm, template, batch_size
        tokenizer = lm.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ModelLoadError(f"the judge {lm.name!r} has no chat template; use an instruction model")
        self.grade_ids = [tokenizer(str(k), add_special_tokens=False)["input_ids"][0] for k in JUDGE_GRADES]
        if len(set(self.grade_ids)) != len(JUDGE_GRADES):
            raise ModelLoadError("the judge's tokenizer does not give the grades 1..5 distinct first tokens")
        self.last_grade_mass: list[float] = []

    def _ids(self, prompt: Prompt, response: str) -> list[int] | None:
        tokenizer = self.lm.tokenizer
        request = request_text(prompt)

        def render(answer: str) -> list[int]:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": self.template.format(prompt=request, response=answer)}],
                add_generation_prompt=True, tokenize=False)
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        room = self.lm.context_length - len(render(""))
        if room < 1:
            return None
        return render(_truncate(tokenizer, response, min(MAX_RESPONSE_TOKENS, room)))

    def __call__(self, prompts: list[Prompt], responses: list[str]) -> list[float | None]:
        rows = [self._ids(p, r) for p, r in zip(prompts, responses)]
        # batched by length: less left padding to compute (about a fifth less time on the embedded judge)
        ready = sorted((i for i, ids in enumerate(rows) if ids is not None), key=lambda i: len(rows[i]))
        scores: list[float | None] = [None] * len(rows)
        self.last_grade_mass = [0.0] * len(rows)
        grades = torch.tensor(JUDGE_GRADES, dtype=torch.float64)
        for _, chunk in _batches(ready, self.batch_size):
            logits = self.lm.start([rows[i] for i in chunk]).logits
            probs = torch.softmax(logits.double(), dim=-1)[:, self.grade_ids].cpu()
            mass = probs.sum(-1)
            expected = (probs * grades).sum(-1) / mass.clamp(min=1e-300)
            for i, value, m in zip(chunk, expected.tolist(), mass.tolist()):
                scores[i], self.last_grade_mass[i] = value, m
        return scores


class Fluency:
    """Mean log-prob (nats) per response token under a causal LM, the response following the base
    model's plain-text prompt `template.format(prompt=...)` and a space. Empty response -> None."""

    def __init__(self, lm, *, template: str = DEFAULT_BASE_TEMPLATE, batch_size: int = 8,
                 max_logits: int = 64_000_000):
        self.lm, self.template, self.batch_size, self.max_logits = lm, template, batch_size, max_logits

    def _ids(self, prompt: Prompt, response: str) -> tuple[list[int], list[int]]:
        tokenizer = self.lm.tokenizer
        if isinstance(prompt, str):
            text = self.template.format(prompt=prompt)
        else:  # its earlier turns as earlier questions and answers, under its system message
            fmt, question = split_conversation(prompt, PromptFormat(base_template=self.template))
            text = fmt.render_base(question)
        prefix = tokenizer(text)["input_ids"]
        answer = tokenizer(" " + response, add_special_tokens=False)["input_ids"] if response.strip() else []
        room = max(0, min(MAX_RESPONSE_TOKENS, self.lm.context_length - len(prefix)))
        return prefix, answer[:room]

    @torch.inference_mode()
    def _score_rows(self, rows: list[tuple[list[int], list[int]]]) -> list[float]:
        """Left-pad prefix + answer; keep logits only for the answer positions (a 262k vocabulary is large)."""
        lm = self.lm
        width = max(len(p) + len(a) for p, a in rows)
        keep = max(len(a) for _, a in rows) + 1
        ids = torch.full((len(rows), width), lm.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, (prefix, answer) in enumerate(rows):
            seq = prefix + answer
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device),
                          position_ids=positions.to(lm.device), logits_to_keep=keep).logits
        out = []
        for row, (_, answer) in enumerate(rows):
            # kept index k is position width - keep + k; the logits at position p predict token p + 1
            start = keep - 1 - len(answer)
            logprobs = torch.log_softmax(logits[row, start:keep - 1].float(), dim=-1)
            target = torch.tensor(answer, device=logprobs.device).view(-1, 1)
            out.append(float(logprobs.gather(1, target).mean()))
        return out

    def __call__(self, prompts: list[Prompt], responses: list[str]) -> list[float | None]:
        rows = [self._ids(p, r) for p, r in zip(prompts, responses)]
        ready = sorted((i for i, (_, a) in enumerate(rows) if a), key=lambda i: len(rows[i][1]))
        scores: list[float | None] = [None] * len(rows)
        vocab = self.lm.output_rows
        start = 0
        while start < len(ready):
            # as many rows as the batch size and the logits budget (rows x answer length x vocabulary) allow
            end = start + 1
            while (end < len(ready) and end - start < self.batch_size
                   and (end + 1 - start) * (len(rows[ready[end]][1]) + 1) * vocab <= self.max_logits):
                end += 1
            chunk = ready[start:end]
            for i, value in zip(chunk, self._score_rows([rows[i] for i in chunk])):
                scores[i] = value
            start = end
        return scores


@register_metric("reward", kind="quality", higher_is_better=True, needs=("reward_model",), group="model",
                 default=False, library="transformers (AutoModelForSequenceClassification)", gain=_sigmoid,
                 help="reward model score (needs --reward-model: any HF sequence-classification reward model)")
def reward(prompts: list[Prompt], responses: list[str], *, reward_model) -> list[float]:
    return reward_model(prompts, responses)


@register_metric("judge", kind="quality", higher_is_better=True, needs=("judge",), group="model", default=False,
                 library="baco backend (HFCausalLM), default judge: embedded aligned Gemma-3-270M",
                 gain=lambda grade: grade,
                 help="LLM-as-judge expected grade 1-5 on a helpfulness/correctness/clarity rubric")
def judge(prompts: list[Prompt], responses: list[str], *, judge) -> list[float | None]:
    return judge(prompts, responses)


@register_metric("fluency", kind="quality", higher_is_better=True, needs=("fluency_lm",), group="model",
                 default=False, library="transformers via baco backend, default LM: embedded base Gemma-3-270M",
                 gain=math.exp, help="mean token log-prob (nats) of the response under a reference LM")
def fluency(prompts: list[Prompt], responses: list[str], *, fluency_lm) -> list[float | None]:
    return fluency_lm(prompts, responses)


@register_metric("relevance", kind="quality", higher_is_better=True, needs=("embedder",), group="semantic",
                 library="transformers (all-MiniLM-L6-v2) + numpy", gain=lambda cos: max(0.0, cos),
                 help="cosine similarity of prompt and response embeddings (0 for an empty response)")
def relevance(prompts: list[Prompt], responses: list[str], *, embedder) -> list[float]:
    vectors_p = np.asarray(embedder([last_turn(p) for p in prompts]), dtype=np.float64)
    vectors_r = np.asarray(embedder(list(responses)), dtype=np.float64)
    cos = (vectors_p * vectors_r).sum(-1)
    return [0.0 if not r.strip() else float(np.clip(c, -1.0, 1.0)) for r, c in zip(responses, cos)]
