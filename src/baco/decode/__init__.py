"""Decoding: the lockstep loop, the sampler and the sample records."""

from baco.decode.loop import Request, StepEvent, lockstep, occurrences_of, row_seed
from baco.decode.records import Sample, collect, read_jsonl, write_jsonl
from baco.decode.sampling import SamplingParams, sample

__all__ = ["Request", "Sample", "SamplingParams", "StepEvent", "collect", "lockstep", "occurrences_of",
           "read_jsonl", "row_seed", "sample", "write_jsonl"]
