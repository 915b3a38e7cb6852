"""baco: collaborative decoding between a base LLM and its aligned counterpart (BACo).

    from baco import Collaboration, SamplingParams
    collab = Collaboration.from_pretrained(base="meta-llama/Meta-Llama-3-8B",
                                           aligned="meta-llama/Meta-Llama-3-8B-Instruct")
    samples = collab.generate(["Name a fruit."], router="p-punc:0.5", n=4,
                              sampling=SamplingParams(temperature=1.0, min_p=0.05, seed=0))
"""

from baco.api import Collaboration, TokenEvent
from baco.decode import Sample, SamplingParams
from baco.errors import (BacoError, InvalidSamplingParams, ModelLoadError, PromptError, TokenizerMismatchError,
                         UnknownRouterError)
from baco.numerics import warm_vector_math
from baco.prompts import PromptFormat, PromptWarning
from baco.routers import get_router, list_routers, register

warm_vector_math()  # before any torch call that runs on several threads: see baco.numerics

__version__ = "0.1.0"
__all__ = ["BacoError", "Collaboration", "InvalidSamplingParams", "ModelLoadError", "PromptError", "PromptFormat",
           "PromptWarning", "Sample", "SamplingParams", "TokenEvent", "TokenizerMismatchError", "UnknownRouterError",
           "get_router", "list_routers", "register"]
