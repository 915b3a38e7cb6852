"""A tiny random-initialised base/aligned pair on disk, so every command runs without downloading weights.

    from baco.testing import make_tiny_pair
    base_dir, aligned_dir = make_tiny_pair("/tmp/tiny")
    # baco generate --base /tmp/tiny/base --aligned /tmp/tiny/aligned --prompt "Name a fruit"

The tokenizer is a real byte-level BPE (trained here in a fraction of a second on the text below)
with Gemma-style special tokens and chat template; the models are small Llama configurations
with different random weights. They write gibberish, but every code path is the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

from baco.prompts import GEMMA_CHAT_TEMPLATE

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<unused0>"]

CORPUS = """\
Question: Name a fruit.
Answer: An apple, a pear, a mango or a ripe banana.
Question: Tell me a story about a dragon who could not fly.
Answer: Once upon a time there was a small dragon. She walked everywhere, and she knew every road.
Question: What should I cook tonight?
Answer: Try a warm soup with lentils, carrots and fresh bread. It is quick, cheap and kind to the stomach.
Question: Give me three ideas for a birthday party.
Answer: 1. A picnic in the park.
2. A board game night with friends.
3. A short hike followed by cake.
The quick brown fox jumps over the lazy dog. Why do birds migrate? Because the seasons change,
food becomes scarce, and they travel to warmer places where they can raise their young.
Write a poem about the sea: The grey sea breathes, the tide comes in, the gulls are crying on the wind.
I think that the best answer depends on what you like, but here are some options you could consider.
- First, think about the time you have.
- Second, think about the people who will be there.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 2024. Punctuation: , . ; : ! ? ( ) " ' - * # /
"""


def train_tokenizer(vocab_size: int = 512, corpus: str = CORPUS):
    """A byte-level BPE tokenizer with a BOS post-processor and the chat template above."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus.splitlines(), trainer=trainer)
    bos = tokenizer.token_to_id("<bos>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                             special_tokens=[("<bos>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", extra_special_tokens=SPECIAL_TOKENS[3:])
    fast.chat_template = GEMMA_CHAT_TEMPLATE  # the embedded pair's turn format
    return fast


def train_sentencepiece_tokenizer(vocab_size: int = 700, corpus: str = CORPUS):
    """A SentencePiece-style BPE tokenizer like Gemma's: spaces as `▁`, byte fallback (`<0xE6>`) for
    characters it never saw, and the chat template above. Its merges differ from `train_tokenizer`'s."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 256, special_tokens=SPECIAL_TOKENS + ["<unk>"],
                                  show_progress=False)
    tokenizer.train_from_iterator(corpus.splitlines(), trainer=trainer)
    spec = json.loads(tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    for value in range(256):  # the byte-fallback pieces, as ordinary vocabulary entries
        vocab.setdefault(f"<0x{value:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>", extra_special_tokens=SPECIAL_TOKENS[3:])
    fast.chat_template = GEMMA_CHAT_TEMPLATE
    return fast


def tiny_model(tokenizer, *, seed: int, extra_rows: int = 0, context: int = 256, eos: list[int] | None = None,
               arch: str = "llama"):
    """A 2-layer Llama with hidden size 32, random weights from `seed`; `arch="gemma3"`: a 2-layer Gemma-3
    text model whose first layer attends through a sliding window of 8 tokens (as Gemma-3's local layers)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    common = dict(vocab_size=len(tokenizer) + extra_rows, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, initializer_range=0.5)
    torch.manual_seed(seed)
    if arch == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        model = Gemma3ForCausalLM(Gemma3TextConfig(**common, head_dim=8, sliding_window=8, query_pre_attn_scalar=8,
                                                   layer_types=["sliding_attention", "full_attention"]))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False))
    else:
        raise ValueError(f"arch must be llama or gemma3, got {arch!r}")
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos if eos is not None else tokenizer.eos_token_id)
    return model


def make_tiny_classifier(directory, *, num_labels: int, seed: int = 0) -> str:
    """A random tiny Llama sequence-classification model with the tiny tokenizer (a stand-in reward model
    or sequence-pair classifier for tests); returns its directory."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = train_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=num_labels,
                         pad_token_id=tokenizer.pad_token_id, initializer_range=0.5)
    torch.manual_seed(seed)
    LlamaForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def make_tiny_pair(directory: str | Path, *, seed: int = 0, aligned_extra_rows: int = 0,
                   context: int = 256, mismatched: bool = False, arch: str = "llama") -> tuple[Path, Path]:
    """Write `directory/base` and `directory/aligned` (models + tokenizers); return both paths.

    aligned_extra_rows pads the aligned model's embedding (as instruct models often are);
    mismatched=True gives the aligned model a tokenizer trained on other text (for error tests);
    arch="gemma3": tiny Gemma-3 text models with a sliding-window layer (see `tiny_model`).
    """
    directory = Path(directory)
    tokenizer = train_tokenizer()
    aligned_tokenizer = train_tokenizer(corpus=CORPUS.upper()[::-1]) if mismatched else tokenizer
    end_of_turn = aligned_tokenizer.convert_tokens_to_ids("<end_of_turn>")
    base_model = tiny_model(tokenizer, seed=seed, context=context, arch=arch)
    aligned_model = tiny_model(aligned_tokenizer, seed=seed + 1, extra_rows=aligned_extra_rows, context=context,
                               eos=[aligned_tokenizer.eos_token_id, end_of_turn], arch=arch)
    paths = []
    for name, model, tok in (("base", base_model, tokenizer), ("aligned", aligned_model, aligned_tokenizer)):
        path = directory / name
        model.save_pretrained(path)
        tok.save_pretrained(path)
        (path / "README.md").write_text(
            f"# tiny random {name} model\n\nMade by `baco.testing.make_tiny_pair` for tests; "
            f"it writes gibberish.\n\n```json\n{json.dumps({'seed': seed}, indent=1)}\n```\n")
        paths.append(path)
    return paths[0], paths[1]


def make_tiny_adapter(directory: str | Path, base: str | Path, *, seed: int = 0, rank: int = 4, **lora) -> Path:
    """A random LoRA adapter (peft) on the tiny base model at `base`, written to `directory`: the aligned
    side of a tiny *adapter pair* (`--base BASE --aligned DIRECTORY`). Its B matrices are random, not
    zero, so it changes the base model's logits. `lora`: more `peft.LoraConfig` settings (use_dora=True ...)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(**{"r": rank, "lora_alpha": 2 * rank, "init_lora_weights": False, "target_modules": targets,
                           **lora})
    peft = get_peft_model(model, config)
    peft.peft_config["default"].base_model_name_or_path = str(Path(base).resolve())
    peft.save_pretrained(directory)
    return Path(directory)


def memorise(model, examples: list[tuple[list[int], list[int]]], *, steps: int = 150, lr: float = 3e-2):
    """Train a tiny causal LM (in place) until its greedy answer to each prompt is the given answer; return it
    in eval mode. `examples`: (prompt ids, answer ids ending with a stop id). A random tiny model writes
    gibberish; a test that needs a particular text from it (a numbered list, emoji and CJK) teaches it that
    text first. The loss is on the answer tokens only; a few seconds on one CPU thread."""
    import torch

    batches = []
    for prompt, answer in examples:
        ids = torch.tensor([list(prompt) + list(answer)], device=model.device)
        labels = ids.clone()
        labels[0, : len(prompt)] = -100  # the prompt is given, not learnt
        batches.append((ids, labels))
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    torch.manual_seed(0)
    for _ in range(steps):
        optimiser.zero_grad()
        sum(model(input_ids=ids, labels=labels).loss for ids, labels in batches).backward()
        optimiser.step()
    return model.eval()


def make_tiny_cross_pair(directory: str | Path, *, seed: int = 0, context: int = 256) -> tuple[Path, Path]:
    """A tiny random pair whose tokenizers differ: a byte-level BPE base (vocab 400, GPT-2 / SmolLM style)
    and a SentencePiece-style aligned model with byte fallback (vocab 700, Gemma style, trained on other
    text). Returns (base directory, aligned directory)."""
    directory = Path(directory)
    written = []
    for name, tokenizer, offset in (("base", train_tokenizer(400), 0),
                                    ("aligned", train_sentencepiece_tokenizer(700, CORPUS.lower() + CORPUS), 1)):
        end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
        model = tiny_model(tokenizer, seed=seed + offset, context=context, eos=[tokenizer.eos_token_id, end_of_turn])
        path = directory / name
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        written.append(path)
    return written[0], written[1]


if __name__ == "__main__":
    import sys

    from transformers.utils import logging as hf_logging

    if len(sys.argv) != 2:
        sys.exit("usage: python -m baco.testing DIR   (writes DIR/base and DIR/aligned)")
    hf_logging.disable_progress_bar()
    for written in make_tiny_pair(sys.argv[1]):
        print(written)


def peak_bytes(fn, device=None) -> int:
    """The most memory `fn()` held at once beyond what was allocated before it: on a GPU the caching allocator's
    peak; on the CPU the largest running sum of allocations minus frees, as `torch.profiler` records them."""
    import torch

    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    held = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):  # frees are "[memory]" events
        held += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, held)
    return peak
