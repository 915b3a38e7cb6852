"""The llama.cpp backend: GGUF models stepped by baco's engine (llama-cpp-python, `pip install -e '.[gguf]'`).

    pair = ModelPair(*load_llamacpp_models("baco:gemma-3-270m", "baco:gemma-3-270m-aligned"))

Only the forward passes move to llama.cpp. Token ids come from the models' HF tokenizers (read from
the GGUF by transformers), and the engine's step - log-softmax over the shared vocabulary, the
router, the word rule, the sampler, provenance - is the same torch code as on the HF backend.

A `LlamaCppLM` is one side: a GGUF model (weights loaded once per file, shared by every side that
uses the file) and an optional GGUF LoRA adapter. For the engine it makes a `LlamaUnit`: a llama.cpp
context whose sequences are the engine's slots (sequence s = slot s), with one unified KV cache.
A step decodes one token per live slot in one `llama_decode`; a prefill decodes a group's distinct
prompts into spare "staging" sequences, and placing them copies each into its slots' sequences
(`llama_memory_seq_cp`: the cache cells are shared, not copied) - so the n samples of a prompt share
one prefill, as on the HF backend.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import torch

from baco.errors import BacoError, ModelLoadError
from baco.models.gguf_export import gguf_field

_LOG_CALLBACK = None  # llama.cpp keeps a pointer to it: it must live as long as the process
_MODELS: dict[str, "GGUFWeights"] = {}


# llama.cpp's AMX matrix kernels (built in by -march=native on a CPU with AMX: Intel Sapphire Rapids and later) stop
# the process with SIGILL in their worker threads (measured with llama-cpp-python 0.3.36 on a Xeon with AMX under
# Linux 6.18: `tilezero` in ggml_backend_amx_mul_mat on the embedded Q4_K_M GGUF; ggml-org/llama.cpp#26954: tile
# permission and configuration are set up on the main thread only). A crash loses every sample in flight, so such a
# build is not used unless this variable says it works.
ALLOW_AMX = "BACO_LLAMACPP_AMX"
AMX_BUILD = "AMX_INT8 = 1"


def amx_refusal(system_info: str) -> str | None:
    """Why a llama.cpp build must not run here (its `llama_print_system_info()` names AMX kernels), or None."""
    if AMX_BUILD not in system_info or os.environ.get(ALLOW_AMX) == "1":
        return None
    return ("this llama-cpp-python build has llama.cpp's AMX kernels (its system info says AMX_INT8 = 1), which crash "
            "the process (SIGILL) on CPUs with AMX (ggml-org/llama.cpp#26954). Rebuild it without them: "
            "pip cache remove llama_cpp_python; CFLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' "
            "CXXFLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' pip install --force-reinstall --no-deps "
            "'llama-cpp-python>=0.3.36' (`make setup` builds it so); or run on transformers (--backend hf); "
            f"{ALLOW_AMX}=1 uses the build anyway (a llama.cpp with that fix)")


def _build_refusal(llama_cpp) -> str | None:
    """`amx_refusal` of the installed build."""
    return amx_refusal(llama_cpp.llama_print_system_info().decode(errors="replace"))


def llama():
    """The llama_cpp module (quiet), or a clear error saying how to install it (or why this build is not used)."""
    global _LOG_CALLBACK
    try:
        import llama_cpp
    except ImportError:
        raise BacoError("the llama.cpp backend needs llama-cpp-python (baco's `gguf` extra): "
                        "pip install 'llama-cpp-python>=0.3.36', built from source (`make setup` does it)") from None
    refusal = _build_refusal(llama_cpp)
    if refusal is not None:
        raise BacoError(refusal)
    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = llama_cpp.llama_log_callback(lambda level, text, data: None)
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
    return llama_cpp


def available() -> bool:
    """llama-cpp-python is installed and its build can run here (`--backend auto` takes it)."""
    try:
        import llama_cpp
    except ImportError:
        return False
    return _build_refusal(llama_cpp) is None


class GGUFWeights:
    """One GGUF file loaded by llama.cpp (weights on the CPU), shared by the sides that use it."""

    def __init__(self, path: str | os.PathLike):
        lib = llama()
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"no GGUF file at {str(path)!r}")
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0
        self.pointer = lib.llama_model_load_from_file(str(path).encode(), params)
        if not self.pointer:
            raise ModelLoadError(f"llama.cpp could not load {str(path)!r} (not a GGUF model it supports, or "
                                 f"a corrupt file: delete it and run again, or reinstall its package)")
        self.path, self.lib = path, lib
        vocab = lib.llama_model_get_vocab(self.pointer)
        self.n_vocab = lib.llama_vocab_n_tokens(vocab)
        self.context_length = lib.llama_model_n_ctx_train(self.pointer)
        self.stops = {t for t in (lib.llama_vocab_eos(vocab), lib.llama_vocab_eot(vocab)) if t >= 0}
        self.adapters: dict[str, object] = {}
        # float32 weights (small test models): keep the cache in float32 and attention unfused (the CPU's
        # flash-attention kernel rounds through float16), so the logits are those of the HF model
        self.exact = gguf_field(path, "general.file_type") == 0

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GGUFWeights":
        key = os.path.realpath(path)
        if key not in _MODELS:
            _MODELS[key] = cls(path)
        return _MODELS[key]

    def adapter(self, path: str | os.PathLike):
        """A GGUF LoRA adapter for these weights (loaded once)."""
        key = os.path.realpath(path)
        if key not in self.adapters:
            pointer = self.lib.llama_adapter_lora_init(self.pointer, str(path).encode())
            if not pointer:
                raise ModelLoadError(f"llama.cpp could not load the LoRA adapter {str(path)!r} for {str(self.path)!r}")
            self.adapters[key] = pointer
        return self.adapters[key]


class LlamaCppLM:
    """One side of a pair on llama.cpp: GGUF weights, an optional GGUF LoRA adapter, the HF tokenizer."""

    device = torch.device("cpu")
    backend = "llamacpp"
    auto_rows = 8  # max_batch "auto": rows decoded at once, its fastest batch on the CPU (see LLAMACPP_MAX_ROWS)

    def __init__(self, weights: GGUFWeights, tokenizer, name: str, lora: str | os.PathLike | None = None,
                 eos: list[int] | None = None):
        from baco.models.hf import END_OF_TURN_TOKENS
        from baco.vocab import control_token_ids

        self.weights, self.tokenizer, self.name = weights, tokenizer, name
        self.lora = str(lora) if lora else None
        if self.lora:
            weights.adapter(self.lora)  # fail now, not at the first step
        if tokenizer.vocab_size > weights.n_vocab:  # (transformers may add a special token beyond the model's rows)
            raise ModelLoadError(f"{name!r}: the tokenizer has {tokenizer.vocab_size} tokens but the GGUF model "
                                 f"{weights.n_vocab}: they do not belong together")
        stops = set(weights.stops) | set(eos or [])
        if tokenizer.eos_token_id is not None:
            stops.add(tokenizer.eos_token_id)
        vocab, controls = tokenizer.get_vocab(), control_token_ids(tokenizer)
        stops.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab and vocab[t] in controls)
        self.stop_token_ids = {t for t in stops if t < weights.n_vocab}

    @property
    def output_rows(self) -> int:
        return self.weights.n_vocab

    @property
    def context_length(self) -> int:
        return self.weights.context_length if self.weights.context_length > 0 else 1 << 30

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)

    def engine_unit(self, slots: int, columns: int) -> "LlamaUnit":
        return LlamaUnit(self, slots, columns)

    def start(self, prompts):
        raise BacoError("this method needs the HF backend (--backend hf): the llama.cpp backend runs "
                        "on the engine only")


class LlamaUnit:
    """The engine's unit for a `LlamaCppLM` (the llama.cpp counterpart of `SlotLM`): sequence s is slot s;
    sequences `slots + k` stage the k-th distinct prompt of a prefill group."""

    lanes = 1

    def __init__(self, lm: LlamaCppLM, slots: int, columns: int):
        lib = self.lib = llama()
        if 2 * slots > lib.llama_max_parallel_sequences():
            raise BacoError(f"the llama.cpp backend runs at most {lib.llama_max_parallel_sequences() // 2} "
                            f"rows at once; lower the batch size")
        self.lm, self.device, self.slots, self.columns = lm, lm.device, slots, columns
        params = lib.llama_context_default_params()
        params.n_ctx = (slots + 1) * columns
        params.n_batch = params.n_ubatch = max(512, slots)
        params.n_seq_max = 2 * slots
        params.kv_unified = True  # one pool of cache cells: copied sequences share cells
        params.n_threads = params.n_threads_batch = torch.get_num_threads()
        params.no_perf = True
        if lm.weights.exact:
            params.type_k = params.type_v = lib.GGML_TYPE_F32
            params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = lib.llama_init_from_model(lm.weights.pointer, params)
        if not self.ctx:
            raise BacoError(f"llama.cpp could not make a context of {params.n_ctx} cache cells for {lm.name!r}; "
                            f"lower the batch size or max_len")
        if lm.lora:
            adapters = (lib.llama_adapter_lora_p_ctypes * 1)(lm.weights.adapter(lm.lora))
            scales = (ctypes.c_float * 1)(1.0)
            if lib.llama_set_adapters_lora(self.ctx, adapters, 1, scales) != 0:
                raise BacoError(f"llama.cpp could not apply the LoRA adapter {lm.lora!r}")
        self.memory = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(params.n_batch, 0, 1)
        self.capacity = params.n_batch
        self.placed: set[int] = set()  # slots whose sequence holds a request (stepping others would be wrong)

    def __del__(self):
        lib = getattr(self, "lib", None)
        if lib is not None and getattr(self, "ctx", None):
            lib.llama_batch_free(self.batch)
            lib.llama_free(self.ctx)

    def rows(self, slots: torch.Tensor, lane: int) -> torch.Tensor:
        return slots

    def decode(self, tokens: list[int], positions: list[int], seqs: list[int], outputs: int = 0) -> np.ndarray | None:
        """Decode tokens (each in one sequence); the logits of the last `outputs` tokens, (outputs, V)."""
        n = len(tokens)
        if n > self.capacity:
            raise BacoError(f"internal: {n} tokens in one llama.cpp batch of {self.capacity}")
        batch = self.batch
        batch.n_tokens = n
        for i, (token, position, seq) in enumerate(zip(tokens, positions, seqs)):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = i >= n - outputs
        code = self.lib.llama_decode(self.ctx, batch)
        if code != 0:
            raise BacoError(f"llama.cpp could not decode a batch of {n} tokens (code {code}"
                            + ("; its KV cache is full: lower the batch size or max_len)" if code == 1 else ")"))
        if not outputs:
            return None
        logits = self.lib.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(logits, shape=(outputs, self.lm.weights.n_vocab))

    def forward(self, tokens: list[torch.Tensor], positions: list[torch.Tensor], valid, write,
                live: list[int] | None = None) -> list[torch.Tensor]:
        """Logits (rows, V) after one token per row; rows whose slot holds no request get zeros."""
        rows = tokens[0].shape[0]
        steps = [r for r in (live if live is not None else range(rows)) if r in self.placed]
        ids, at = tokens[0].tolist(), positions[0].tolist()
        out = torch.zeros((rows, self.lm.weights.n_vocab))
        if steps:
            logits = self.decode([ids[r] for r in steps], [at[r] for r in steps], steps, outputs=len(steps))
            if len(steps) == rows:
                out.copy_(torch.from_numpy(logits))
            else:
                out[torch.tensor(steps)] = torch.from_numpy(logits)
        return [out]

    def release(self, slot: int) -> None:
        """Drop `slot`'s sequence and its cache cells (the engine freed the slot, or it is about to be reused)."""
        self.lib.llama_memory_seq_rm(self.memory, slot, -1, -1)
        self.placed.discard(slot)

    def move(self, source: torch.Tensor, target: torch.Tensor) -> None:
        src, dst = int(source), int(target)
        self.release(dst)
        self.lib.llama_memory_seq_cp(self.memory, src, dst, -1, -1)
        self.placed.add(dst)
        self.release(src)

    def prefill(self, prompts: list[list[int]], lane: int = 0) -> "LlamaPrefill":
        return LlamaPrefill(self, prompts)


class LlamaPrefill:
    """A group's distinct prompts decoded into staging sequences, `chunk` tokens of each per engine step."""

    def __init__(self, unit: LlamaUnit, prompts: list[list[int]]):
        width = max((len(p) for p in prompts), default=0)
        if width >= unit.columns:
            raise BacoError(f"a prompt of {width + 1} tokens does not fit the engine's {unit.columns} columns")
        self.side, self.prompts, self.done_columns, self.width = unit, prompts, 0, width
        self.staging = [unit.slots + k for k in range(len(prompts))]
        for seq in self.staging:
            unit.lib.llama_memory_seq_rm(unit.memory, seq, -1, -1)

    @property
    def finished(self) -> bool:
        return self.done_columns >= self.width

    def advance(self, chunk: int) -> None:
        unit = self.side
        start, end = self.done_columns, min(self.done_columns + max(1, chunk), self.width)
        per_call = max(1, unit.capacity // max(1, len(self.prompts)))
        for lo in range(start, end, per_call):  # as many columns of every prompt as one llama.cpp batch holds
            hi = min(lo + per_call, end)
            tokens, positions, seqs = [], [], []
            for seq, prompt in zip(self.staging, self.prompts):
                part = prompt[lo:hi]
                tokens += part
                positions += range(lo, lo + len(part))
                seqs += [seq] * len(part)
            if tokens:
                unit.decode(tokens, positions, seqs)
        self.done_columns = end

    def place(self, slots: torch.Tensor, rows_of: torch.Tensor, write: int) -> None:
        unit = self.side
        for slot, row in zip(slots.tolist(), rows_of.tolist()):
            unit.release(slot)
            unit.lib.llama_memory_seq_cp(unit.memory, self.staging[row], slot, -1, -1)
            unit.placed.add(slot)
        for seq in self.staging:
            unit.lib.llama_memory_seq_rm(unit.memory, seq, -1, -1)


# ---- loading --------------------------------------------------------------------------------------------

def _is_gguf(name) -> bool:
    return str(name).lower().endswith(".gguf") and os.path.isfile(os.path.expanduser(str(name)))


def gguf_kind(path: str | os.PathLike) -> str:
    """`general.type` of a GGUF file: "model" or "adapter"."""
    return gguf_field(path, "general.type") or "model"


def supports(base, aligned) -> bool:
    """Whether the llama.cpp backend can run this pair: the embedded pair, or GGUF files."""
    from baco.models.embedded import ALIGNED_ALIAS, BASE_ALIAS

    return all(str(n) in (BASE_ALIAS, ALIGNED_ALIAS) or _is_gguf(n) for n in (base, aligned))


def _side(name, base_weights: GGUFWeights | None = None, tokenizer=None) -> tuple[GGUFWeights, object, str | None, list[int]]:
    """(weights, HF tokenizer, LoRA GGUF or None, extra stop ids) of one name."""
    from baco.models import embedded

    name = str(name)
    if name in (embedded.BASE_ALIAS, embedded.ALIGNED_ALIAS):
        from transformers import AutoTokenizer

        weights = GGUFWeights.load(embedded._gguf_path())
        if tokenizer is None:  # the converted model's tokenizer: the turn template is set there
            tokenizer = AutoTokenizer.from_pretrained(embedded.base_dir("bfloat16"))
        lora = None
        if name == embedded.ALIGNED_ALIAS:
            from baco.models.gguf_export import aligned_lora_gguf

            lora = str(aligned_lora_gguf())
        return weights, tokenizer, lora, [embedded.EOS_ID, embedded.END_OF_TURN_ID]
    path = Path(os.path.expanduser(name))
    if not path.is_file():
        raise ModelLoadError(f"the llama.cpp backend takes GGUF files or the embedded pair; no file at {name!r}")
    if gguf_kind(path) == "adapter":
        if base_weights is None:
            raise ModelLoadError(f"{name!r} is a GGUF LoRA adapter: pass it as --aligned, with its base model as --base")
        return base_weights, tokenizer, str(path), []
    weights = GGUFWeights.load(path)
    if tokenizer is None:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except Exception as error:  # noqa: BLE001
            raise ModelLoadError(f"could not read the tokenizer of {name!r}: {type(error).__name__}: {error}") from error
    return weights, tokenizer, None, []


BACKENDS = ("auto", "hf", "llamacpp")

# `auto` with a known number of rows decoded together: llama.cpp up to this many, transformers beyond. Where
# both can run the pair (the embedded pair on the CPU), llama.cpp's BACo tokens/s against the one-forward
# transformers pair's: 2.5x at 1 row, 1.08x at 8, 0.79x at 12, 0.89x at 16, 0.77x at a sweep's 72 (2 cores;
# docs/benchmarks.md, "The CPU paths"; docs/results.md, "Wall time"). GGUF files run on llama.cpp whatever the rows.
LLAMACPP_MAX_ROWS = LlamaCppLM.auto_rows  # auto backend: llama.cpp up to this many rows (embedded pair)


def choose_backend(backend: str, base, aligned, *, anchor=None, device="auto", one_forward="auto",
                   router=None, rows: int | None = None, compile: bool = False) -> str:
    """`hf` or `llamacpp` for a pair; clear errors where the asked-for backend cannot run it.
    `auto` takes llama.cpp where it is installed, the device is the CPU, the pair is GGUF (or embedded) and
    the router is not a cross-tokenizer method (those run on transformers' sessions); for the embedded pair,
    which both backends run, only when at most `LLAMACPP_MAX_ROWS` rows decode together (if known): at
    more rows the one-forward transformers path is faster. `compile` (torch.compile) implies transformers."""
    from baco.routers.cross import unit_of

    if backend not in BACKENDS:
        raise BacoError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    for name in (base, aligned, anchor):
        if str(name).lower().endswith(".gguf") and not _is_gguf(name):
            raise ModelLoadError(f"no GGUF file at {str(name)!r}")
    gguf_files = any(_is_gguf(n) for n in (base, aligned))
    fits = (supports(base, aligned) and anchor is None and str(device) in ("auto", "cpu") and one_forward != "on"
            and (router is None or unit_of(router) is None) and not compile)
    if backend == "auto":
        many = rows is not None and rows > LLAMACPP_MAX_ROWS and not gguf_files
        backend = "llamacpp" if fits and (available() or gguf_files) and not many else "hf"
    if backend == "llamacpp":
        if not supports(base, aligned):
            raise BacoError("the llama.cpp backend runs GGUF files (--base MODEL.gguf --aligned MODEL.gguf or "
                            "a GGUF LoRA adapter) or the embedded pair; use --backend hf for other models")
        if anchor is not None or str(device) not in ("auto", "cpu") or one_forward == "on":
            raise BacoError("the llama.cpp backend runs two models on the CPU: no --anchor, --device or "
                            "--one-forward on (use --backend hf)")
        if compile:
            raise BacoError("compile (torch.compile) runs transformers models: use --backend hf "
                            "(llama.cpp's steps are compiled code already)")
        llama()  # installed, or a clear error
    elif gguf_files:
        raise BacoError("GGUF files run on the llama.cpp backend (--backend llamacpp or auto); the HF backend "
                        "takes model directories, hub ids or the embedded aliases")
    return backend


def load_llamacpp_models(base, aligned, *, base_tokenizer=None, aligned_tokenizer=None) -> tuple[LlamaCppLM, LlamaCppLM]:
    """(base, aligned) on llama.cpp. `aligned` may be a GGUF LoRA adapter on the base GGUF; with the embedded
    aliases, the base is the shipped Q4_K_M GGUF and the aligned side that GGUF plus baco's adapter, written
    once as a GGUF LoRA (both sides share one copy of the weights). Tokenizers: read from the GGUF by
    transformers unless given (an HF tokenizer of the same vocabulary, e.g. with a chat template the GGUF lacks)."""
    from baco.models.embedded import ALIGNED_ALIAS, BASE_ALIAS

    base_weights, base_tok, base_lora, base_eos = _side(base, tokenizer=base_tokenizer)
    embedded = (BASE_ALIAS, ALIGNED_ALIAS)
    if aligned_tokenizer is None and str(base) in embedded and str(aligned) in embedded:
        aligned_tokenizer = base_tok  # one Gemma tokenizer, read once (~5 s a read)
    aligned_weights, aligned_tok, lora, aligned_eos = _side(aligned, base_weights, aligned_tokenizer)
    aligned_tok = aligned_tok if aligned_tok is not None else base_tok
    return (LlamaCppLM(base_weights, base_tok, str(base), base_lora, base_eos),
            LlamaCppLM(aligned_weights, aligned_tok, str(aligned), lora, aligned_eos))
