"""How closely the llama.cpp backend follows the HF backend on the embedded pair, greedy (temperature 0).

    python benchmarks/backend_agreement.py [--prompts 20] [--tokens 64] [--router aligned]

The two backends run the same weights (the Q4_K_M GGUF; transformers dequantises it to bf16, llama.cpp
multiplies the 4-bit weights with activations quantised to 8 bits), so their logits differ by a few
hundredths of a nat and greedy decoding parts ways at the first near-tie. Printed:
  free-running    both backends decode greedily on their own; share of positions (up to the longer
                  sample) where the tokens agree, and the mean length of the common prefix
  teacher-forced  the llama.cpp model read along the HF sample: share of positions where its top-1
                  equals HF's token, over all positions and over those where HF's top-1 leads its
                  runner-up by more than 0.5 nats (not a near-tie)
"""

from __future__ import annotations

import argparse

import torch

from baco import Collaboration, SamplingParams
from baco.tasks import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--router", default="aligned", help="aligned or base: the side that is compared")
    args = parser.parse_args()
    prompts = [item.prompt for item in load_task("open-ended", limit=args.prompts, seed=0)]
    hf = Collaboration.from_pretrained(backend="hf", one_forward="off")
    llama = Collaboration.from_pretrained(backend="llamacpp")
    params = SamplingParams(temperature=0, max_new_tokens=args.tokens, seed=0)
    expected = hf.generate(prompts, router=args.router, sampling=params, batch_size=8)
    got = llama.generate(prompts, router=args.router, sampling=params, batch_size=8)
    same = positions = prefix = 0
    for a, b in zip(expected, got):
        positions += max(len(a.token_ids), len(b.token_ids))
        same += sum(x == y for x, y in zip(a.token_ids, b.token_ids))
        prefix += next((i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y),
                       min(len(a.token_ids), len(b.token_ids)))
    side = getattr(llama.pair, args.router)
    unit = side.engine_unit(1, 2048)
    agree = total = clear = clear_agree = 0
    for prompt, sample in zip(prompts, expected):
        render = hf.prompt_format.render_aligned(prompt, hf.tokenizer) if args.router == "aligned" else \
            hf.prompt_format.render_base(prompt)
        ids = hf.tokenizer(render, add_special_tokens=args.router == "base")["input_ids"]
        start = len(ids) - 1
        ids += sample.token_ids
        logits = torch.from_numpy(unit.decode(ids, list(range(len(ids))), [0] * len(ids), outputs=len(ids)).copy())
        unit.release(0)
        with torch.inference_mode():
            reference = getattr(hf.pair, args.router).model(input_ids=torch.tensor([ids])).logits[0].float()
        reference, logits = reference[start:-1], logits[start:-1]  # the generated positions
        top = reference.log_softmax(-1).topk(2, dim=-1)
        hit = logits.argmax(-1) == top.indices[:, 0]
        wide = (top.values[:, 0] - top.values[:, 1]) > 0.5
        agree, total = agree + int(hit.sum()), total + len(hit)
        clear, clear_agree = clear + int(wide.sum()), clear_agree + int(hit[wide].sum())
    print(f"embedded pair, {args.router} side, {len(prompts)} prompts x {args.tokens} tokens, greedy; "
          f"HF bf16 (dequantised Q4_K_M) vs llama.cpp Q4_K_M, {torch.get_num_threads()} threads")
    print(f"free-running:   {same / positions:.1%} of positions agree; common prefix {prefix / len(prompts):.1f} "
          f"tokens on average")
    print(f"teacher-forced: top-1 agrees at {agree / total:.1%} of {total} positions; {clear_agree / max(clear, 1):.1%} "
          f"of the {clear} positions without a near-tie (margin > 0.5 nats)")


if __name__ == "__main__":
    main()
