"""How close each bf16 path to the embedded pair's aligned side is to the float32 merged model, measured in one run.

    python benchmarks/adapter_rounding.py [--inputs 16] [--tokens 12] [--threads 2]

Paths (all bf16 base weights, the adapter as baco loads it): `row weights` (baco's one-forward pair: the
adapter's update weighted per row, `AdapterRows`), `peft mixed` (peft's own `adapter_names=` batches, which
baco used before), `merged` (the adapter merged into a bf16 copy: the two-model pair). Inputs are random
token ids; the aligned rows sit at odd positions of a batch with base rows, as in the engine. Prints, per
path, the mean KL(reference || path) of the next-token distributions at every position and how often its
top-1 token is the reference's.
"""

from __future__ import annotations

import argparse

import torch

from baco import Collaboration
from baco.models.hf import ALIGNED_ADAPTER, BASE_ADAPTER, AdapterRows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    one = Collaboration.from_pretrained(one_forward="on", device="cpu")
    merged = Collaboration.from_pretrained(one_forward="off", device="cpu").pair.aligned.model
    reference = Collaboration.from_pretrained(one_forward="off", device="cpu", dtype="float32").pair.aligned.model
    peft = one.pair.base.model.peft
    ids = torch.randint(0, 20000, (args.inputs, args.tokens), generator=torch.Generator().manual_seed(0))
    batch = ids.repeat_interleave(2, dim=0)  # row 2i: base, row 2i+1: aligned, as the engine interleaves lanes
    names = [BASE_ADAPTER, ALIGNED_ADAPTER] * args.inputs
    with torch.inference_mode():
        truth = torch.log_softmax(reference(input_ids=ids).logits.float(), dim=-1)
        with AdapterRows.of(peft).use((BASE_ADAPTER, ALIGNED_ADAPTER), args.inputs):
            rows = peft(input_ids=batch).logits[1::2]
        paths = {"row weights": rows, "peft mixed": peft(input_ids=batch, adapter_names=names).logits[1::2],
                 "merged": merged(input_ids=ids).logits}
        print(f"embedded aligned side, {args.inputs} random inputs x {args.tokens} positions, against float32 merged")
        print(f"{'path':>12} {'mean KL':>9} {'top-1 agrees':>13}")
        for name, logits in paths.items():
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            kl = (truth.exp() * (truth - logprobs)).sum(-1).mean().item()
            agree = (logprobs.argmax(-1) == truth.argmax(-1)).float().mean().item()
            print(f"{name:>12} {kl:>9.4f} {agree:>13.3f}")


if __name__ == "__main__":
    main()
