"""Response bodies and server-sent-event chunks from the tokens of each choice."""

from __future__ import annotations

import json
import time
import uuid

from baco.server import schemas
from baco.server.requests import Plan
from baco.decode.choice import Token


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def provenance(tokens: list[Token]) -> list[dict]:
    return [{"token": t.token_id, "text": t.text, "writer": t.writer, "reason": t.reason,
             "base_top1_prob": round(t.base_top1_prob, 6)} for t in tokens]


def usage(plan: Plan, choices: list[list[Token]]) -> dict:
    completion = sum(len(tokens) for tokens in choices)
    base = sum(t.writer == "base" for tokens in choices for t in tokens)
    return {"prompt_tokens": plan.prompt_tokens, "completion_tokens": completion,
            "total_tokens": plan.prompt_tokens + completion, "base_tokens": base,
            "base_share": round(base / completion, 6) if completion else 0.0}


def chat_logprobs(tokens: list[Token], texts: list[str]) -> dict:
    """OpenAI's chat `logprobs.content`: each token (its vocabulary text) and its top alternatives."""
    def entry(token_id: int, logprob: float) -> dict:
        text = texts[token_id]
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(t.token_id, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in t.top or []]}
                        for t in tokens]}


def completion_logprobs(tokens: list[Token], texts: list[str], offset: int = 0) -> dict:
    """OpenAI's legacy completions `logprobs`: tokens, their log-probs, top alternatives, offsets in the text.

    The alternatives map a text to a log-prob: of those that read the same (byte tokens all read "\ufffd"), the
    best one's (they come best first); the chosen token is always among them, as in OpenAI's API (up to
    logprobs + 1 entries; `logprobs: 0` gives the chosen token's alone)."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.text)
    top = []
    for t in tokens:
        best: dict[str, float] = {}
        for i, lp in t.top or []:
            best.setdefault(texts[i], lp)
        best.setdefault(texts[t.token_id], t.logprob)
        top.append(best)
    return {"tokens": [texts[t.token_id] for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": top, "text_offset": offsets}


class Shaper:
    """Builds one request's bodies (whole responses or stream chunks), for `chat` or completions."""

    def __init__(self, plan: Plan, model: str, *, chat: bool, logprobs: bool, texts: list[str]):
        self.plan, self.model, self.chat, self.logprobs, self.texts = plan, model, chat, logprobs, texts
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = int(time.time())
        self.offsets = [0] * len(plan.requests)  # characters of each choice streamed so far

    def _logprobs(self, tokens: list[Token], offset: int = 0) -> dict | None:
        if not self.logprobs:
            return None
        return chat_logprobs(tokens, self.texts) if self.chat else completion_logprobs(tokens, self.texts, offset)

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, choices: list[list[Token]], finish: list[str]) -> dict:
        """The non-streamed response body."""
        out = []
        for index, (tokens, reason) in enumerate(zip(choices, finish)):
            text = "".join(t.text for t in tokens)
            body = {"index": index, "finish_reason": reason, "logprobs": self._logprobs(tokens),
                    "provenance": provenance(tokens)}
            body.update({"message": {"role": "assistant", "content": text}} if self.chat else {"text": text})
            out.append(body)
        kind = "chat.completion" if self.chat else "text_completion"
        body = {**self._head(kind), "choices": out, "usage": usage(self.plan, choices),
                "baco": {"router": self.plan.router, "seed": self.plan.seed}}
        model = schemas.ChatCompletion if self.chat else schemas.Completion
        return model.model_validate(body).model_dump(mode="json")  # the documented shape, checked

    def chunk(self, index: int, tokens: list[Token], finish: str | None = None, *, first: bool = False) -> str:
        """One server-sent event: the content of `tokens` for choice `index` (and its finish reason)."""
        text = "".join(t.text for t in tokens)
        choice = {"index": index, "logprobs": self._logprobs(tokens, self.offsets[index]), "finish_reason": finish,
                  "provenance": provenance(tokens)}
        self.offsets[index] += len(text)
        if self.chat:
            choice["delta"] = {"role": "assistant", "content": text} if first else {"content": text}
            if finish is not None and not tokens:
                choice["delta"] = {}
        else:
            choice["text"] = text
        return self.event({**self._head("chat.completion.chunk" if self.chat else "text_completion"),
                           "choices": [choice], "baco": {"router": self.plan.router, "seed": self.plan.seed}})

    def usage_chunk(self, choices: list[list[Token]]) -> str:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return self.event({**self._head(kind), "choices": [], "usage": usage(self.plan, choices)})

    @staticmethod
    def event(data: dict) -> str:
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
