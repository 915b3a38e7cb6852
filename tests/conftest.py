"""Shared fixtures: one tiny random base/aligned pair on disk per test session, a copy taught numbered lists, and
the embedded Gemma pair loaded once per session for the `slow` tests that only use it (~10 s a load)."""

import shutil

import pytest

from baco import Collaboration
from baco.testing import make_tiny_pair, memorise

# What the `verbalizing_dirs` aligned model answers when verbalized sampling asks it (k=2) about each prompt
NUMBERED_ANSWERS = {"Name a fruit.": "1. Apple (probability: 0.4)\n2. Mango (0.6)",
                    "Tell me a story about a dragon.": "1. A red dragon (probability: 0.7)\n2) A tiny dragon [0.3]"}


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    return make_tiny_pair(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def collab(tiny_dirs):
    base, aligned = tiny_dirs
    return Collaboration.from_pretrained(base, aligned, device="cpu")


@pytest.fixture(scope="session")
def verbalizing_dirs(tiny_dirs, tmp_path_factory):
    """The tiny pair, its aligned model taught to answer verbalized sampling's request for 2 answers (the
    default prompt format) with the numbered lists of NUMBERED_ANSWERS; a random model never numbers its lines."""
    from baco.models.hf import HFCausalLM
    from baco.prompts import PromptFormat
    from baco.strategies import VERBALIZED_TEMPLATE

    directory = tmp_path_factory.mktemp("verbalizing")
    base, aligned = (shutil.copytree(path, directory / path.name) for path in tiny_dirs)
    lm = HFCausalLM.from_pretrained(aligned, device="cpu")
    tok, fmt = lm.tokenizer, PromptFormat()
    end_of_turn = tok.convert_tokens_to_ids("<end_of_turn>")
    examples = [(tok(fmt.render_aligned(VERBALIZED_TEMPLATE.format(prompt=prompt, k=2), tok),
                     add_special_tokens=False)["input_ids"],
                 tok(answer, add_special_tokens=False)["input_ids"] + [end_of_turn])
                for prompt, answer in NUMBERED_ANSWERS.items()]
    memorise(lm.model, examples).save_pretrained(aligned)
    return base, aligned


@pytest.fixture(scope="session")
def gemma():
    """The embedded pair as `Collaboration.from_pretrained()` loads it on the CPU: one forward (the adapter's rows
    stepped beside the base's on one copy of the weights). Tests use it, never change it."""
    return Collaboration.from_pretrained()


@pytest.fixture(scope="session")
def gemma_two_models():
    """The embedded pair as two models (`one_forward="off"`: the adapter merged into a copy of the base)."""
    return Collaboration.from_pretrained(one_forward="off")
