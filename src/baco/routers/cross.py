"""Methods for pairs whose tokenizers differ: they decide on pieces of text, not token ids.

Each is registered like a router (`--router chared:0.5`, `unite:5`, `p-punc-words:0.3`), swept and
evaluated like one, and run by `decode/crossloop.py` on the models' byte-level views (`models/chars.py`).
The unit a method commits:

- `chared:W` (CharED, Gu et al. 2024) — every character: draw from W * P_base + (1 - W) * P_aligned,
  the two models' next-character distributions (a character's probability under a model is the
  product of its bytes'); at temperature 0 take the mixture's most likely byte, one at a time. W is the
  base model's weight: `chared:0` = aligned alone, `chared:1` = base alone.
- `unite:K` (UniTE, "union top-k ensembling") — every piece: the union of both models' K most likely
  next pieces of text (each model's next tokens, minus the bytes it already holds), each scored by
  both models, drawn from the average of the two scores.
- `<router>-words` — BACo on words: at every word boundary (the text is empty or ends in a complete
  character that is not a letter, digit or combining mark) the token-level router's rule, applied to each model's
  distribution over its next piece of text given the text (`CharRows.piece_stats`), picks who writes the next
  word; the writer then draws bytes until the next boundary. `p-punc-words:G`, `nudge-words:G`, `rand-words:P` ...
  Each CJK character is a word of its own, so a boundary follows it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from types import SimpleNamespace

import torch

from baco.routers.registry import Router, list_routers, register
from baco.routers.view import Route

CHAR, WORD, PIECE = "char", "word", "piece"
UNITS: dict[str, str] = {}  # registered cross-tokenizer method -> the unit it decides on
WORD_RULES = ("p", "h", "punc", "fc", "p-punc", "h-punc", "p-fc", "rand", "nudge")
# those that read the base model's top-1 probability or entropy, and those that read the aligned model's predicted
# piece of text (is it punctuation, a function word?)
READS_BASE = frozenset(f"{rule}-words" for rule in ("p", "h", "p-punc", "h-punc", "p-fc", "nudge"))
READS_ALIGNED = frozenset(f"{rule}-words" for rule in ("punc", "fc", "p-punc", "h-punc", "p-fc"))


def unit_of(router: str | Router) -> str | None:
    """"char", "word" or "piece" for a cross-tokenizer method, None for a token-level router."""
    name = router if isinstance(router, str) else getattr(getattr(router, "spec", None), "name", "")
    return UNITS.get(str(name).split(":", 1)[0].strip().lower())


@dataclass
class CharView:
    """What CharED sees. Sampling: a coin for the characters starting now, one uniform number per row.
    Greedy (temperature 0): also each model's next-byte distribution (B, 257: the 256 byte values, then the end
    of the text; temperature 1) and its probability of the bytes the character has so far (1 at its start)."""

    uniform: torch.Tensor
    base_next: torch.Tensor | None = None
    aligned_next: torch.Tensor | None = None
    base_so_far: torch.Tensor | None = None
    aligned_so_far: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.uniform.shape[0]


@dataclass
class WordView:
    """What a word-level router sees at a word boundary: each model's distribution over its next
    piece of text given the text (temperature 1), reduced to the statistics the token-level rules read.

    It answers the same names as `StepView`, so the token-level router functions run on it unchanged
    (`aligned_top1_token` indexes this view's own per-row `vocab` flags).
    """

    base_top1_prob: torch.Tensor
    base_entropy: torch.Tensor
    aligned_top1_prob: torch.Tensor
    aligned_entropy: torch.Tensor
    aligned_predicts_punct: torch.Tensor  # (B,) bool: the aligned top-1 piece is punctuation, formatting or a stop
    aligned_predicts_function_word: torch.Tensor
    uniform: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.base_top1_prob.shape[0]

    @property
    def aligned_top1_token(self) -> torch.Tensor:
        return torch.arange(self.batch_size)

    @cached_property
    def vocab(self) -> SimpleNamespace:
        return SimpleNamespace(is_punct=self.aligned_predicts_punct, is_function_word=self.aligned_predicts_function_word)


@dataclass
class PieceView:
    """UniTE's candidates for one row: pieces of text (None = end of text), their scores under each model."""

    candidates: list[bytes | None]
    base_scores: torch.Tensor  # (C,)
    aligned_scores: torch.Tensor
    from_base: list[bool]  # the candidate is among the base model's top-k
    from_aligned: list[bool]


def _register(name: str, unit: str, **kwargs):
    def add(fn):
        register(name, **kwargs)(fn)
        UNITS[name] = unit
        return fn
    return add


@_register("chared", CHAR, param="weight", default=0.5, low=0.0, high=1.0,
           help="CharED (cross-tokenizer): each character from W*P_base + (1-W)*P_aligned (0 = aligned, 1 = base)")
def chared(view: CharView, weight: float) -> Route:
    """Drawing a character from the mixture W P_base + (1 - W) P_aligned is drawing which model writes it
    (probability W for the base model) and then the character from that model: exact, and it says who
    wrote each character.

    Greedy (the view carries the next-byte distributions): the mixture itself, one byte at a time. The
    next byte of a character is distributed as the mixture of character distributions says, each model
    weighted by W (1 - W) times its probability of the bytes so far: so a one-byte character is the
    mixture's most likely one, and the bytes of a longer one follow the mixture's chain rule."""
    if view.base_next is None:
        return Route.where(view.uniform < weight, "chared-base", "chared-aligned")
    base, aligned = weight * view.base_so_far, (1 - weight) * view.aligned_so_far
    mix = (base[:, None] * view.base_next + aligned[:, None] * view.aligned_next) / (base + aligned)[:, None]
    return Route.mixed(mix.log(), "chared-mix")


@_register("unite", PIECE, param="k", default=5, low=1, integer=True,
           help="UniTE (cross-tokenizer): union of both models' top-k next pieces, scored by both, averaged")
def unite(view: PieceView, k: float) -> Route:
    mean = 0.5 * (view.base_scores + view.aligned_scores)
    total = float(mean.sum())
    logprobs = (mean / total).log() if total > 0 else torch.full_like(mean, -math.log(len(mean)))
    return Route.mixed(logprobs[None, :], f"unite:{k:g}")


def _word_rule(spec):
    def rule(view: WordView, *value):
        return spec.fn(view, *value)
    rule.__doc__ = f"{spec.help} — decided per word, on each model's distribution over its next piece of text"
    return rule


for _spec in [s for s in list_routers() if s.name in WORD_RULES]:
    _register(f"{_spec.name}-words", WORD, param=_spec.param, default=_spec.default, low=_spec.low,
              high=_spec.high, help=f"{_spec.help} (per word; cross-tokenizer)")(_word_rule(_spec))


def models_read(router: Router) -> tuple[int, ...]:
    """The models (0 base, 1 aligned) whose distribution over the next piece of text a router per word reads: the
    base's top-1 probability or entropy (P, H, Nudging and their mixes), the aligned's most likely piece (PUNC, FC
    and theirs). Past pending bytes that may be a whole token, each needs a lookahead forward to know it."""
    name = str(getattr(getattr(router, "spec", None), "name", ""))
    return tuple(m for m, reads in enumerate((READS_BASE, READS_ALIGNED)) if name in reads)


def token_alternatives() -> str:
    """The sentence an error for a token-level router on a mismatched pair ends with."""
    return ("use a cross-tokenizer method: chared:W (CharED), unite:K (UniTE) or a router per word such as "
            "p-punc-words:G or nudge-words:G (`baco routers` lists them), base / aligned alone, or a multi-pass "
            "method (negative:W, verbalized:K: the aligned model alone)")


def token_knobs_refusal(router: str) -> str:
    """Why a cross-tokenizer method refuses the sampling knobs that name one model's token ids or count its tokens
    (`SamplingParams.names_token_ids`): the library's error when it runs, a sweep configuration's when it is read."""
    return (f"router {router} is a cross-tokenizer method: it runs the cross-tokenizer loop, which draws pieces of "
            f"text mixed from two vocabularies, and takes no logit bias, no stop token ids and no min_tokens (they "
            f"name or count one model's tokens): leave them off (docs/cross-tokenizer.md; stop strings and the "
            f"penalties work there, each model penalised over its own tokens)")


def is_single_model(router: str | Router) -> bool:
    """`base` and `aligned` run one model: they need no shared vocabulary."""
    name = router if isinstance(router, str) else getattr(router, "name", "")
    return name.split(":", 1)[0].strip().lower() in ("base", "aligned")
