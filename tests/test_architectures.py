"""The engine on the architectures users bring, each as a tiny random pair built from its transformers config
(2 layers, hidden size 32, the tiny tokenizer, 64 positions): transformers' own greedy tokens, the same samples
however rows share the slots, rows that reach the context, and a clear refusal of what the engine cannot step."""

import re

import pytest
import torch
import transformers
from transformers import GenerationConfig

from baco import Collaboration, SamplingParams
from baco.decode.engine import Engine
from baco.errors import ModelLoadError
from baco.routers import get_router
from baco.testing import CORPUS, train_sentencepiece_tokenizer, train_tokenizer
from test_cross import PROMPTS as SHORT_PROMPTS
from test_cross import assert_within_budget

CONTEXT = 64  # the longest prompt below is 43 tokens once templated: room for ~20 new tokens
PROMPTS = ["Name a fruit.", "Tell me a story about a dragon who could not fly, and why it did not mind.", "Why?"]
WINDOW = 8  # sliding-window layers see fewer tokens than every prompt but the shortest


def configs(tokenizer, context: int = CONTEXT) -> dict:
    """A tiny config per architecture (`name-variant`: a feature switched on), with the tokenizer's ids."""
    T = transformers
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    rotary = dict(ids, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=context, initializer_range=0.5)
    gemma = dict(rotary, head_dim=8, sliding_window=WINDOW, query_pre_attn_scalar=8)
    falcon = dict(ids, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=context,
                  initializer_range=0.5)
    return {
        "llama": lambda: T.LlamaConfig(**rotary),
        "mistral-sliding": lambda: T.MistralConfig(**rotary, sliding_window=WINDOW),
        "qwen2-window-off": lambda: T.Qwen2Config(**rotary, sliding_window=WINDOW, use_sliding_window=False),
        "qwen2-sliding": lambda: T.Qwen2Config(**rotary, use_sliding_window=True, sliding_window=WINDOW,
                                               max_window_layers=1),
        "qwen3": lambda: T.Qwen3Config(**rotary, head_dim=8),
        "gemma": lambda: T.GemmaConfig(**rotary, head_dim=8),
        "gemma2-softcap-sliding": lambda: T.Gemma2Config(**gemma, attn_logit_softcapping=5.0,
                                                         final_logit_softcapping=3.0),
        "gemma3-sliding": lambda: T.Gemma3TextConfig(**gemma, layer_types=["sliding_attention", "full_attention"]),
        "olmo2": lambda: T.Olmo2Config(**rotary),
        "phi3-partial-rotary": lambda: T.Phi3Config(**rotary, partial_rotary_factor=0.5),
        "phi3-sliding": lambda: T.Phi3Config(**rotary, sliding_window=WINDOW),
        "gpt2": lambda: T.GPT2Config(**ids, n_embd=32, n_layer=2, n_head=4, n_positions=context, initializer_range=0.5),
        "gpt_neox": lambda: T.GPTNeoXConfig(**ids, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, max_position_embeddings=context, rotary_pct=0.25,
                                            use_parallel_residual=True, initializer_range=0.5),
        "opt": lambda: T.OPTConfig(**ids, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                                   max_position_embeddings=context, word_embed_proj_dim=32, init_std=0.5),
        "falcon": lambda: T.FalconConfig(**falcon),
        "falcon-new-decoder": lambda: T.FalconConfig(**falcon, num_kv_heads=2, new_decoder_architecture=True),
        "starcoder2-sliding": lambda: T.Starcoder2Config(**rotary, sliding_window=WINDOW),
        # what the engine refuses
        "falcon-alibi": lambda: T.FalconConfig(**falcon, alibi=True),
        "bloom": lambda: T.BloomConfig(**ids, hidden_size=32, n_layer=2, n_head=4, initializer_range=0.5),
        "mpt": lambda: T.MptConfig(**ids, d_model=32, n_layers=2, n_heads=4, max_seq_len=context,
                                   initializer_range=0.5),
        "gpt_neo-local": lambda: T.GPTNeoConfig(**ids, hidden_size=32, num_layers=2, num_heads=4, window_size=WINDOW,
                                                attention_types=[[["global", "local"], 1]],
                                                max_position_embeddings=context, initializer_range=0.5),
        "llama4-chunked": lambda: T.Llama4TextConfig(**rotary, head_dim=8, intermediate_size_mlp=64,
                                                     attention_chunk_size=WINDOW, num_local_experts=2),
        "mamba": lambda: T.MambaConfig(**ids, hidden_size=32, num_hidden_layers=2, state_size=4,
                                       initializer_range=0.5),
    }


REFUSED = {"falcon-alibi": "ALiBi", "bloom": "ALiBi", "mpt": "ALiBi", "gpt_neo-local": "local attention",
           "llama4-chunked": "chunked_attention layers", "mamba": "recurrent state"}
SUPPORTED = [arch for arch in configs(train_tokenizer()) if arch not in REFUSED]


def write_model(path, arch: str, tokenizer, *, seed: int, eos, context: int = CONTEXT):
    """Save a random `arch` model (weights from `seed`, stopping at `eos`) and `tokenizer` to `path`."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(configs(tokenizer, context)[arch]())
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                                               eos_token_id=eos)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_pair(directory, arch: str):
    """Save a base (seed 0) and an aligned model (seed 1, end of turn as a stop too) of `arch`; their paths."""
    tokenizer = train_tokenizer()
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    return (write_model(directory / "base", arch, tokenizer, seed=0, eos=tokenizer.eos_token_id),
            write_model(directory / "aligned", arch, tokenizer, seed=1, eos=[tokenizer.eos_token_id, end_of_turn]))


def transformers_greedy(lm, prompt_ids, max_new_tokens, suppress, stops) -> tuple[list[int], list[float]]:
    """transformers' own greedy `generate` (control tokens suppressed, as baco never samples them): the tokens
    and each one's probability (which a sliding window or soft-capping moves even where the token stays)."""
    out = lm.model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False,
                            suppress_tokens=suppress, eos_token_id=sorted(stops), pad_token_id=lm.pad_token_id,
                            output_scores=True, return_dict_in_generate=True)
    tokens = out.sequences[0, len(prompt_ids):].tolist()
    return tokens, [float(torch.softmax(scores[0], -1)[token]) for scores, token in zip(out.scores, tokens)]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """One loaded pair per architecture, made when a test first asks for it."""
    loaded = {}

    def get(arch: str) -> Collaboration:
        if arch not in loaded:
            loaded[arch] = Collaboration.from_pretrained(*write_pair(tmp_path_factory.mktemp(arch), arch), device="cpu")
        return loaded[arch]
    return get


@pytest.mark.parametrize("arch", SUPPORTED)
def test_single_model_routers_at_temperature_zero_reproduce_transformers_generate(pairs, arch):
    """Prompts of different lengths decode as rows of one batch; sliding-window layers see fewer tokens than the
    longer prompts, so their masks are checked too."""
    collab = pairs(arch)
    suppress = (~collab.pair.vocab.allowed).nonzero().squeeze(-1).tolist()
    for side in ("aligned", "base"):
        lm, fmt = getattr(collab.pair, side), collab.prompt_format
        samples = collab.generate(PROMPTS, router=side, sampling=SamplingParams(temperature=0, max_new_tokens=12))
        for prompt, sample in zip(PROMPTS, samples):
            ids = (lm.tokenizer(fmt.render_aligned(prompt, lm.tokenizer), add_special_tokens=False)["input_ids"]
                   if side == "aligned" else lm.tokenizer(fmt.render_base(prompt))["input_ids"])
            tokens, probs = transformers_greedy(lm, ids, 12, suppress, collab.pair.stop_ids)
            assert sample.token_ids == tokens
            assert sample.chosen_prob == pytest.approx(probs, rel=1e-4, abs=1e-6)
    assert max(len(r.aligned_ids) for r in collab.requests(PROMPTS, 1, SamplingParams(), 0)) > 4 * WINDOW


@pytest.mark.parametrize("arch", SUPPORTED)
def test_sampled_rows_are_the_same_in_one_batch_one_at_a_time_and_through_fewer_slots(pairs, arch):
    collab = pairs(arch)
    params = SamplingParams(temperature=1.0, max_new_tokens=16, seed=3)
    runs = [collab.generate(PROMPTS, router="p-punc:0.5", n=2, sampling=params, batch_size=size)
            for size in (6, 1, 4)]  # all at once; one slot, reused by each row in turn; rows joining freed slots
    tokens = [[(s.token_ids, s.sources) for s in samples] for samples in runs]
    assert tokens[1] == tokens[0] and tokens[2] == tokens[0]
    assert len({tuple(ids) for ids, _ in tokens[0]}) > 1  # rows of their own, not one row copied


@pytest.mark.parametrize("arch", SUPPORTED)
def test_rows_asked_for_more_than_the_context_holds_stop_at_it_while_free_slots_keep_stepping(pairs, arch):
    """Each row's budget is cut to the room its prompt leaves and it ends with `length` there. With 2 slots and
    prompts prefilled 4 tokens a step, a row that reached the context leaves its slot stepping (its output
    dropped) below a busy one while the next prompt is prefilled: a learned position table must not be read
    past its end."""
    collab = pairs(arch)
    params = SamplingParams(temperature=0, max_new_tokens=500, seed=0)  # greedy: a tiny model soon repeats itself
    requests = collab.requests(PROMPTS * 2, 1, params, seed=0)
    engine = Engine(collab.pair, get_router("p-punc:0.5"), max_batch=2, max_len=CONTEXT, prefill_chunk=4)
    for request in requests:
        engine.add(request, params)
    counts, finished = [0] * len(requests), {}
    for event in engine.run():
        for rid in event.rows:
            counts[rid] += 1
        finished.update(event.finished)
    for rid, request in enumerate(requests):
        assert request.prompt_length + request.max_new_tokens == CONTEXT
        assert finished[rid] == ("length" if counts[rid] == request.max_new_tokens else "stop")
    assert list(finished.values()).count("length") >= 2


@pytest.mark.parametrize("arch", sorted(REFUSED))
def test_an_architecture_the_engine_cannot_step_is_refused_when_the_pair_loads(tmp_path, arch):
    base, aligned = write_pair(tmp_path, arch)
    expected = rf"^'{re.escape(str(base))}' cannot run on baco's decoding engine: .*{REFUSED[arch]}"
    with pytest.raises(ModelLoadError, match=expected):
        Collaboration.from_pretrained(base, aligned, device="cpu")
    # from config.json, before any weights load: without them the refusal is still what the user reads
    for weights in [*base.glob("*.safetensors"), *aligned.glob("*.safetensors")]:
        weights.unlink()
    with pytest.raises(ModelLoadError, match=expected):
        Collaboration.from_pretrained(base, aligned, device="cpu")


@pytest.fixture(scope="module")
def learned_cross(tmp_path_factory):
    """A cross-tokenizer pair of learned-position models with 48 positions: a GPT-2 base (byte-level BPE, 400
    entries) and an OPT aligned model (SentencePiece style with byte fallback, 700 entries)."""
    directory, context = tmp_path_factory.mktemp("cross"), 48
    base_tokenizer = train_tokenizer(400)
    aligned_tokenizer = train_sentencepiece_tokenizer(700, CORPUS.lower() + CORPUS)
    end_of_turn = aligned_tokenizer.convert_tokens_to_ids("<end_of_turn>")
    base = write_model(directory / "base", "gpt2", base_tokenizer, seed=0, eos=base_tokenizer.eos_token_id,
                       context=context)
    aligned = write_model(directory / "aligned", "opt", aligned_tokenizer, seed=1, context=context,
                          eos=[aligned_tokenizer.eos_token_id, end_of_turn])
    return Collaboration.from_pretrained(base, aligned, device="cpu")


@pytest.mark.parametrize("router", ["chared:0.5", "unite:3", "p-punc-words:0.5"])
def test_the_cross_tokenizer_loop_keeps_learned_positions_within_their_table(learned_cross, router):
    """Asked for more tokens than fit, rows end at the context, and the loop's masked no-op columns (rows a
    forward does not advance) never read a position past the tables either."""
    collab, context = learned_cross, learned_cross.pair.context_length
    requests = {r.prompt_index: r for r in collab.requests(SHORT_PROMPTS, 1, SamplingParams(max_new_tokens=64), 0)}
    finishes = []
    for seed in range(4):
        params = SamplingParams(temperature=1.5, max_new_tokens=64, seed=seed)
        for sample in collab.generate(SHORT_PROMPTS, router=router, n=2, sampling=params):
            request = requests[sample.prompt_index]
            assert request.prompt_length + request.max_new_tokens == context
            assert_within_budget(sample, request.max_new_tokens, collab.pair.tables)
            finishes.append(sample.finish_reason)
    assert finishes.count("length") >= len(finishes) // 2
