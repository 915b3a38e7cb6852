"""Train the embedded aligned adapter: LoRA SFT of Gemma-3-270M base on the project's own answers.

    python scripts/train_aligned.py                      # the committed adapter: ~5 min on 2 cores
    python scripts/train_aligned.py --data scripts/data/sft_teacher.jsonl --epochs 3 --out /tmp/teacher

Data (default): scripts/data/sft_handwritten.jsonl, one answer written by the project for each of
the 316 training prompts of scripts/sft_prompts.py. Teacher files from scripts/make_sft_data.py
(rows with `kept`) go through `select_examples` (filtered, on-topic teacher answers) instead.
Rendered in Gemma's chat template; 10% held out for validation. Loss on the answer tokens and
<end_of_turn> (weighted --eot-weight) only; the 262k-row output layer runs only at those positions.
LoRA r=16, alpha=32, dropout 0.05 on q,k,v,o,gate,up,down; frozen bf16 base, fp32 LoRA weights,
AdamW lr 3e-4, 5 warm-up steps then cosine decay, batch 8, 5 epochs, gradient clipping 1.0, seed 0.
The adapter is saved in bf16 with training_log.json (per-step loss, per-epoch validation loss,
settings, time). The adapter's model card lists what was tried and why 5 epochs.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

from baco.models import embedded

sys.path.insert(0, str(Path(__file__).parent))
from make_sft_data import select_examples  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def encode(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """Token ids of the chat-formatted example and the positions whose next token is trained."""
    context = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                            add_generation_prompt=True)
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(response.strip(), add_special_tokens=False)["input_ids"] + [embedded.END_OF_TURN_ID]
    ids = context_ids + answer_ids
    return ids, list(range(len(context_ids) - 1, len(ids) - 1))


def batch_loss(model, batch, pad_id: int, eot_weight: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy over answer positions; the <end_of_turn> target counts eot_weight times."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    rows, cols, targets = [], [], []
    for r, (ids, positions) in enumerate(batch):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        mask[r, : len(ids)] = 1
        rows += [r] * len(positions)
        cols += positions
        targets += [ids[p + 1] for p in positions]
    hidden = model.base_model.model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    logits = model.base_model.model.lm_head(hidden[rows, cols].contiguous()).float()
    targets = torch.tensor(targets)
    weights = torch.where(targets == embedded.END_OF_TURN_ID, eot_weight, 1.0)
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    return (losses * weights).sum() / weights.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", default=[Path("scripts/data/sft_handwritten.jsonl")],
                        help="JSONL files: hand-written {prompt, response} rows, or make_sft_data.py's teacher rows")
    parser.add_argument("--out", type=Path, default=embedded.ADAPTER_DIR)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-cosine", type=float, default=0.5, help="keep answers this close to their prompt")
    parser.add_argument("--eot-weight", type=float, default=1.0, help="loss weight of the <end_of_turn> target")
    args = parser.parse_args()
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    base_dir = embedded.base_dir("bfloat16")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16)
    config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.05, target_modules=TARGETS,
                        task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    chosen, data_counts = [], {}
    for path in args.data:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if rows and "kept" in rows[0]:  # teacher answers: filter and keep the on-topic ones
            picked, counts = select_examples(rows, tokenizer, args.min_cosine)
        else:  # hand-written answers: all of them
            picked, counts = rows, {"handwritten": len(rows)}
        chosen += picked
        data_counts[str(path)] = counts
    examples = [encode(tokenizer, r["prompt"], r["response"]) for r in chosen]
    random.Random(args.seed).shuffle(examples)
    n_val = max(8, len(examples) // 10)
    val, train = examples[:n_val], examples[n_val:]
    steps_per_epoch = math.ceil(len(train) / args.batch)
    total = steps_per_epoch * args.epochs
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    warmup = 5
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    log = {"settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                        "targets": TARGETS, "alpha": 2 * args.rank, "dropout": 0.05, "warmup": warmup,
                        "train_examples": len(train), "val_examples": len(val),
                        "train_tokens_per_epoch": sum(len(ids) for ids, _ in train), "data": data_counts},
           "step_loss": [], "val_loss": []}

    def validate() -> float:
        model.eval()
        with torch.no_grad():
            losses = [batch_loss(model, val[i:i + args.batch], tokenizer.pad_token_id).item()
                      for i in range(0, len(val), args.batch)]
        model.train()
        return sum(losses) / len(losses)

    started = time.time()
    log["val_loss"].append(round(validate(), 4))
    print(f"{len(train)} train / {len(val)} val examples, {total} steps; val loss {log['val_loss'][-1]}")
    model.train()
    for epoch in range(args.epochs):
        order = list(range(len(train)))
        random.Random(args.seed + epoch).shuffle(order)
        for i in range(0, len(order), args.batch):
            loss = batch_loss(model, [train[j] for j in order[i:i + args.batch]], tokenizer.pad_token_id,
                              args.eot_weight)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            log["step_loss"].append(round(loss.item(), 4))
        log["val_loss"].append(round(validate(), 4))
        print(f"epoch {epoch + 1}: train loss {sum(log['step_loss'][-steps_per_epoch:]) / steps_per_epoch:.3f}, "
              f"val loss {log['val_loss'][-1]:.3f}, {time.time() - started:.0f} s", flush=True)
    log["seconds"] = round(time.time() - started, 1)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    adapter_config = args.out / "adapter_config.json"
    data = json.loads(adapter_config.read_text())
    data["base_model_name_or_path"] = embedded.BASE_ALIAS
    adapter_config.write_text(json.dumps(data, indent=2) + "\n")
    (args.out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"saved {args.out} ({sum(f.stat().st_size for f in args.out.iterdir()) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
