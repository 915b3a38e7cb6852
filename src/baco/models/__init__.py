"""Model backends. `HFCausalLM` (transformers) and `ModelPair`, the base/aligned pair the loop steps."""

from baco.models.hf import HFCausalLM, HFSession, load_tokenizer, resolve_device, resolve_dtype
from baco.models.pair import ModelPair, PairSession, SoloPair

__all__ = ["HFCausalLM", "HFSession", "ModelPair", "PairSession", "SoloPair", "load_tokenizer", "resolve_device",
           "resolve_dtype"]
