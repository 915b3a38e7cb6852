"""The reference users compare baco's sampler with: transformers' own logits warpers, in the order its `generate`
applies them (`GenerationMixin._get_logits_processor`: temperature, top-k, top-p, min-p), then an inverse-CDF
draw in vocabulary order (the order baco's sampler documents)."""

import torch
from transformers.generation.logits_process import (LogitsProcessorList, MinPLogitsWarper, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

from baco import SamplingParams


def transformers_distribution(logprobs: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The (B, V) distribution `generate(do_sample=True, temperature=..., top_k=..., top_p=..., min_p=...)` samples
    from, for scores `logprobs`; temperature 0 (greedy search, `do_sample=False`): one-hot on the argmax."""
    if params.temperature == 0:
        return torch.nn.functional.one_hot(logprobs.argmax(-1), logprobs.shape[-1]).float()
    warpers = LogitsProcessorList()
    if params.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(float(params.temperature)))
    if params.top_k > 0:
        warpers.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0:
        warpers.append(TopPLogitsWarper(params.top_p))
    warpers.append(MinPLogitsWarper(params.min_p))
    return torch.softmax(warpers(None, logprobs.float().clone()), dim=-1)


def inverse_cdf_draw(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Per row, the first token (vocabulary order) whose cumulative probability exceeds `uniform` x the total."""
    cdf = torch.cumsum(probs.double(), dim=-1)
    return torch.searchsorted(cdf, (uniform.double() * cdf[:, -1])[:, None], right=True).squeeze(-1)
