"""The cross-tokenizer path with and without penalties: characters per second on the embedded cross-family pair
(Gemma-3-270M base + SmolLM2-135M-Instruct), 4 open-ended prompts x 2 as one batch of 8, at most 48 tokens,
temperature 1, min-p 0.05, seed 0; penalised: repetition 1.3, presence 0.5. Two rounds, alternating.

    python benchmarks/cross_penalties.py
"""
import time
from dataclasses import replace

import torch

torch.set_num_threads(2)
from baco import Collaboration, SamplingParams
from baco.models.embedded import BASE_ALIAS, SMOLLM2_ALIAS
from baco.tasks import load_task
prompts = [item.prompt for item in load_task("open-ended", limit=4, seed=0)]
cross = Collaboration.from_pretrained(BASE_ALIAS, SMOLLM2_ALIAS)
plain = SamplingParams(temperature=1.0, min_p=0.05, max_new_tokens=48, seed=0)
pen = replace(plain, repetition_penalty=1.3, presence_penalty=0.5)
for rep in range(2):
    for router in ("chared:0.5", "p-punc-words:0.3"):
        for name, params in (("plain", plain), ("penalised", pen)):
            t = time.perf_counter(); s = cross.generate(prompts, router=router, n=2, sampling=params, batch_size=8)
            dt = time.perf_counter() - t; chars = sum(len(x.text) for x in s)
            print(f"{router} {name}: {chars / dt:.1f} chars/s ({chars} chars, {dt:.1f} s)", flush=True)
