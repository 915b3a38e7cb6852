"""The HF backend: left-padded prefill, KV-cache steps and row pruning agree with plain forwards."""

import logging

import torch
import transformers.utils.logging  # noqa: F401 - adds Logger.warning_once

from baco.models.hf import HFCausalLM


def full_forward_last_logits(lm: HFCausalLM, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(input_ids=torch.tensor([ids])).logits[0, -1].float()


def test_cached_steps_equal_full_forward_logits(collab):
    lm = collab.pair.aligned
    prompt, continuation = [2, 40, 41, 42, 43], [50, 60, 70, 80]
    session = lm.start([prompt])
    for i, token in enumerate(continuation):
        session.step(torch.tensor([token]))
        expected = full_forward_last_logits(lm, prompt + continuation[: i + 1])
        assert torch.allclose(session.logits[0], expected, atol=1e-4)


def test_left_padded_batch_equals_rows_run_alone(collab):
    lm = collab.pair.base
    prompts = [[2, 30, 31], [2, 40, 41, 42, 43, 44, 45], [2, 50]]
    batch = lm.start(prompts)
    alone = [lm.start([p]) for p in prompts]
    for row, single in enumerate(alone):
        assert torch.allclose(batch.logits[row], single.logits[0], atol=1e-4)
    tokens = torch.tensor([90, 91, 92])
    batch.step(tokens)
    for row, single in enumerate(alone):
        single.step(tokens[row:row + 1])
        assert torch.allclose(batch.logits[row], single.logits[0], atol=1e-4)


def test_pruned_rows_leave_the_others_unchanged(collab):
    lm = collab.pair.base
    prompts = [[2, 30, 31], [2, 40, 41, 42, 43], [2, 50, 51, 52]]
    batch = lm.start(prompts)
    reference = lm.start([prompts[2]])
    batch.keep(torch.tensor([2]))
    assert batch.attention_mask.shape[0] == 1
    for token in (7, 8, 9):
        batch.step(torch.tensor([token]))
        reference.step(torch.tensor([token]))
        assert torch.allclose(batch.logits[0], reference.logits[0], atol=1e-4)


def test_a_session_logs_no_notice_about_the_cache_keyword(collab):
    """baco keeps `past_key_values` on purpose (see hf.py); transformers 5.2x logs a rename notice once per
    process when it is read, which landed in the middle of users' progress bars (the JUDGE router's sessions)."""
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("transformers.utils.generic")
    logging.Logger.warning_once.cache_clear()  # transformers' once-per-process memo: an earlier test may have logged it
    logger.addHandler(handler)
    try:
        session = collab.pair.aligned.start([[2, 40, 41]])
        session.step(torch.tensor([50]))
    finally:
        logger.removeHandler(handler)
    assert not [m for m in seen if "deprecated" in m], seen
