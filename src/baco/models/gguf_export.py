"""GGUF files for the llama.cpp backend: a peft LoRA adapter as a llama.cpp LoRA, a small HF Llama as a
llama-arch F32 model, and next-token logits read back through llama.cpp's low-level API.

llama.cpp's LoRA (src/llama-adapter.cpp): next to a base tensor `blk.N.attn_q.weight` (ggml shape
[in, out]) the adapter holds `blk.N.attn_q.weight.lora_a` (ggml [in, r]) and `.lora_b` (ggml [r, out]);
ggml lists dimensions innermost first, so these are peft's lora_A [r, in] and lora_B [out, r] as they are.
llama.cpp adds  scale * B (A x)  with  scale = adapter.lora.alpha / r  (r read from lora_b), peft's rule.

llama.cpp's llama architecture rotates adjacent pairs of each head's query/key features, HF Llama rotates
the two halves; so the rows of W_q, W_k (and of a LoRA's B for them) are reordered half -> interleaved.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from baco.errors import ModelLoadError, OutputError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PEFT_LORA_TENSOR = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<side>[AB])\.weight")
# HF model_type -> llama.cpp architecture name, for the architectures whose layout this module knows
ARCHITECTURES = {"llama": "llama", "gemma3": "gemma3", "gemma3_text": "gemma3"}
LLAMA_THREADS = 2


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ModelLoadError(f"{path.parent} is not a {what}: it has no {path.name}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not read {path}: {error}") from error


def _arch(name: str):
    """The gguf package's MODEL_ARCH for a llama.cpp architecture name."""
    import gguf

    by_name = {value: arch for arch, value in gguf.MODEL_ARCH_NAMES.items()}
    if name not in ARCHITECTURES.values():
        raise ModelLoadError(f"GGUF export supports the architectures {sorted(set(ARCHITECTURES.values()))}, "
                             f"not {name!r}")
    return by_name[name]


def _interleave_rope_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder each head's rows from HF's rotate-half layout [x_0..x_{d/2-1}, y_0..] to llama.cpp's [x_0, y_0, ...]."""
    halves = weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
    return np.ascontiguousarray(halves.swapaxes(1, 2).reshape(weight.shape))


def _write_atomically(out_path: str | Path, fill) -> Path:
    """Call fill(path) on a temporary file next to out_path, then rename it into place."""
    out_path = Path(out_path)
    partial = out_path.with_name(f".{out_path.name}.partial")
    try:
        fill(partial)
        partial.replace(out_path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise OutputError(f"could not write {out_path}: {error}") from error
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return out_path


def _save(writer, tensors: dict[str, np.ndarray]) -> None:
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


#: GGUF metadata value types: struct format of a fixed-size value (8 = string, 9 = array)
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_field(path: str | os.PathLike, key: str):
    """A metadata value of a GGUF file (a string or a number), or None.

    Read from the file's header, up to the key: `gguf.GGUFReader` parses every field first, and a 262k-token
    vocabulary makes that ~30 s per file (Gemma 3); the general.* keys come first."""
    import struct

    path = os.path.expanduser(str(path))

    def bad(why: str) -> ModelLoadError:
        return ModelLoadError(f"could not read the GGUF file {path!r}: {why}")

    try:
        with open(path, "rb") as handle:
            head = handle.read(24)
            if len(head) < 24 or head[:4] != b"GGUF":
                raise bad("it is not a GGUF file (no GGUF magic number)")
            order = "<" if struct.unpack("<I", head[4:8])[0] < 0x10000 else ">"  # big-endian files exist

            def read(fmt: str):
                size = struct.calcsize(order + fmt)
                data = handle.read(size)
                if len(data) < size:
                    raise bad("its metadata ends early (a file cut short, or corrupt)")
                return struct.unpack(order + fmt, data)[0]

            def skip(kind: int, count: int = 1) -> None:
                if kind in _GGUF_SCALARS:
                    handle.seek(struct.calcsize(order + _GGUF_SCALARS[kind]) * count, os.SEEK_CUR)
                elif kind == 8:
                    for _ in range(count):
                        handle.seek(read("Q"), os.SEEK_CUR)
                elif kind == 9:
                    for _ in range(count):
                        inner = read("I")
                        skip(inner, read("Q"))
                else:
                    raise bad(f"unknown metadata value type {kind}")

            for _ in range(struct.unpack(order + "Q", head[16:24])[0]):
                name = handle.read(read("Q"))
                kind = read("I")
                if name.decode("utf-8", "replace") != key:
                    skip(kind)
                elif kind == 8:
                    return handle.read(read("Q")).decode("utf-8", "replace")
                elif kind in _GGUF_SCALARS:
                    return read(_GGUF_SCALARS[kind])
                else:
                    return None  # (an array: not a value this module reads)
    except ModelLoadError:  # (an OSError too)
        raise
    except OSError as error:
        raise ModelLoadError(f"could not read the GGUF file {path!r}: {error.strerror or error}") from error
    return None


def _hparams_of_gguf(path: Path) -> dict:
    hparams = {"arch": gguf_field(path, "general.architecture")}
    keys = {"layers": "block_count", "heads": "attention.head_count", "kv_heads": "attention.head_count_kv"}
    hparams |= {name: gguf_field(path, f"{hparams['arch']}.{key}") for name, key in keys.items()}
    missing = [name for name, value in hparams.items() if value is None]
    if missing:
        raise ModelLoadError(f"the base GGUF {path} lacks the metadata of its {', '.join(missing)}")
    return hparams


def _hparams_of_config(config: dict) -> dict:
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ModelLoadError(f"GGUF export supports the model types {sorted(ARCHITECTURES)}, not {model_type!r}")
    config = config.get("text_config", config)
    heads = config["num_attention_heads"]
    return {"arch": ARCHITECTURES[model_type], "layers": config["num_hidden_layers"], "heads": heads,
            "kv_heads": config.get("num_key_value_heads", heads)}


def _base_hparams(adapter_config: dict) -> dict:
    """The base model's architecture and shape, from the directory or alias the adapter names."""
    from baco.models import embedded

    base = adapter_config.get("base_model_name_or_path") or ""
    if base == embedded.BASE_ALIAS:
        return _hparams_of_gguf(embedded._gguf_path())
    if not (Path(base) / "config.json").is_file():
        raise ModelLoadError(f"the adapter's base model {base!r} is not a local model directory; "
                             f"pass base_gguf= (the base model as GGUF) to name its architecture")
    return _hparams_of_config(_read_json(Path(base) / "config.json", "model directory"))


def _lora_config(adapter_dir: Path) -> dict:
    config = _read_json(adapter_dir / "adapter_config.json", "peft adapter directory")
    if config.get("peft_type") != "LORA":
        raise ModelLoadError(f"{adapter_dir} holds a {config.get('peft_type')} adapter; only LoRA converts to GGUF")
    unsupported = [name for name in ("use_dora", "use_rslora", "alpha_pattern", "modules_to_save") if config.get(name)]
    if unsupported:
        raise ModelLoadError(f"the LoRA adapter in {adapter_dir} uses {', '.join(unsupported)}, "
                             f"which llama.cpp's LoRA format cannot express")
    return config


def write_lora_gguf(adapter_dir: str | Path, out_path: str | Path, *, base_gguf: str | Path | None = None) -> Path:
    """Write a peft LoRA adapter (adapter_config.json + adapter_model.safetensors) as a llama.cpp LoRA GGUF (F32)."""
    import gguf
    from safetensors import safe_open

    adapter_dir = Path(adapter_dir)
    config = _lora_config(adapter_dir)
    hparams = _hparams_of_gguf(Path(base_gguf)) if base_gguf is not None else _base_hparams(config)
    arch = _arch(hparams["arch"])
    names = gguf.get_tensor_name_map(arch, hparams["layers"])
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(f"{adapter_dir} has no adapter_model.safetensors")
    tensors = {}
    with safe_open(weights, framework="pt") as reader:
        for key in reader.keys():
            match = PEFT_LORA_TENSOR.fullmatch(key)
            target = names.get_name(match["module"] + ".weight", try_suffixes=(".weight",)) if match else None
            if target is None or not match["module"].endswith(LORA_TARGETS):
                raise ModelLoadError(f"{weights} holds {key}, not a LoRA matrix of a linear layer of "
                                     f"{hparams['arch']}'s attention or MLP")
            array = reader.get_tensor(key).float().numpy()
            if match["side"] == "B" and arch == gguf.MODEL_ARCH.LLAMA:
                if match["module"].endswith("q_proj"):
                    array = _interleave_rope_rows(array, hparams["heads"])
                elif match["module"].endswith("k_proj"):
                    array = _interleave_rope_rows(array, hparams["kv_heads"])
            tensors[f"{target}.lora_{match['side'].lower()}"] = array

    def fill(path: Path) -> None:
        writer = gguf.GGUFWriter(path, hparams["arch"])
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config.get("lora_alpha", config["r"])))
        _save(writer, tensors)

    return _write_atomically(out_path, fill)


def _llama_config(model_dir: Path) -> dict:
    config = _read_json(model_dir / "config.json", "model directory")
    problems = []
    if config.get("model_type") != "llama":
        problems.append(f"model_type {config.get('model_type')!r} (only 'llama')")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope scaling {rope.get('rope_type')!r}")
    if config.get("attention_bias") or config.get("mlp_bias"):
        problems.append("biases")
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"activation {config.get('hidden_act')!r}")
    if problems:
        raise ModelLoadError(f"cannot write {model_dir} as a llama GGUF: it has {', '.join(problems)}")
    return config


def _vocabulary(model_dir: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens in id order and their llama.cpp types (special added tokens CONTROL), padded to vocab_size."""
    import gguf

    spec = _read_json(model_dir / "tokenizer.json", "model directory with a fast tokenizer")
    model = spec.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback") or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise ModelLoadError(f"the tokenizer in {model_dir} is not a byte-level BPE (GPT-2 style), the only kind "
                             f"this GGUF export writes")
    tokens = {index: text for text, index in model["vocab"].items()}
    kinds = {}
    for added in spec.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        kinds[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    if max(tokens) >= vocab_size:
        raise ModelLoadError(f"the tokenizer in {model_dir} has ids up to {max(tokens)}, beyond the model's "
                             f"vocabulary of {vocab_size}")
    texts = [tokens.get(index, f"[PAD{index}]") for index in range(vocab_size)]
    types = [kinds.get(index, gguf.TokenType.NORMAL if index in tokens else gguf.TokenType.UNUSED)
             for index in range(vocab_size)]
    return texts, types


def write_llama_gguf(model_dir: str | Path, out_path: str | Path) -> Path:
    """Write a small HF Llama directory (LlamaForCausalLM, byte-level BPE tokenizer) as a llama-arch GGUF in F32."""
    import gguf
    from safetensors import safe_open

    model_dir = Path(model_dir)
    config = _llama_config(model_dir)
    layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = config.get("rope_parameters") or {}
    texts, types = _vocabulary(model_dir, config["vocab_size"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    tensors = {}
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{model_dir} has no .safetensors weights")
    for file in files:
        with safe_open(file, framework="pt") as reader:
            for key in reader.keys():
                target = names.get_name(key, try_suffixes=(".weight",))
                if target is None:
                    raise ModelLoadError(f"{file} holds {key}, which has no place in a llama GGUF")
                array = reader.get_tensor(key).float().numpy()
                if key.endswith("q_proj.weight"):
                    array = _interleave_rope_rows(array, heads)
                elif key.endswith("k_proj.weight"):
                    array = _interleave_rope_rows(array, kv_heads)
                tensors[target] = array

    def fill(path: Path) -> None:
        writer = gguf.GGUFWriter(path, "llama")
        writer.add_name(model_dir.name)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_context_length(config["max_position_embeddings"])
        writer.add_embedding_length(config["hidden_size"])
        writer.add_block_count(layers)
        writer.add_feed_forward_length(config["intermediate_size"])
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
        writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
        writer.add_vocab_size(config["vocab_size"])
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(texts)
        writer.add_token_types(types)
        gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=config["vocab_size"]).add_to_gguf(writer, quiet=True)
        _save(writer, tensors)

    return _write_atomically(out_path, fill)


def aligned_lora_gguf() -> Path:
    """The embedded aligned adapter as a llama.cpp LoRA GGUF in the cache, written once (named by its content)."""
    from baco.models import embedded

    weights = embedded.ADAPTER_DIR / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(f"the embedded adapter is missing from {embedded.ADAPTER_DIR}; reinstall baco")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    target = embedded.cache_dir() / f"gemma-3-270m-aligned-lora-{digest}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_lora_gguf(embedded.ADAPTER_DIR, target, base_gguf=embedded._gguf_path())


def llama_logits(model_path: str | Path, ids: list[int], lora: str | Path | None = None) -> np.ndarray:
    """Next-token logits [len(ids), n_vocab] of a token-id sequence in llama.cpp, with an optional LoRA GGUF
    applied at scale 1. One batch, F32 KV cache and no flash attention: on CPU its kernel rounds through F16
    (differences ~2e-2 instead of ~2e-5 against HF float32 on the tiny models)."""
    from baco.models.llamacpp import llama as llama_module

    llama = llama_module()  # installed, and a build that can run here
    if not ids:
        raise ValueError("llama_logits needs at least one token id")
    llama.llama_backend_init()
    model_params = llama.llama_model_default_params()
    model = llama.llama_model_load_from_file(str(model_path).encode(), model_params)
    if not model:
        raise ModelLoadError(f"llama.cpp could not load the GGUF {model_path}")
    context = batch = None
    try:
        params = llama.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = max(len(ids), 8)
        params.n_threads = params.n_threads_batch = LLAMA_THREADS
        params.type_k = params.type_v = llama.GGML_TYPE_F32
        params.flash_attn_type = llama.LLAMA_FLASH_ATTN_TYPE_DISABLED
        context = llama.llama_init_from_model(model, params)
        if not context:
            raise ModelLoadError(f"llama.cpp could not make a context for {model_path}")
        if lora is not None:
            adapter = llama.llama_adapter_lora_init(model, str(lora).encode())
            if not adapter:
                raise ModelLoadError(f"llama.cpp could not load the LoRA GGUF {lora} onto {model_path}")
            adapters = (llama.llama_adapter_lora_p_ctypes * 1)(adapter)
            llama.llama_set_adapters_lora(context, adapters, 1, (ctypes.c_float * 1)(1.0))
        batch = llama.llama_batch_init(len(ids), 0, 1)
        for position, token in enumerate(ids):
            batch.token[position], batch.pos[position] = token, position
            batch.n_seq_id[position], batch.seq_id[position][0] = 1, 0
            batch.logits[position] = True
        batch.n_tokens = len(ids)
        if llama.llama_decode(context, batch) != 0:
            raise ModelLoadError(f"llama.cpp could not decode {len(ids)} tokens with {model_path}")
        n_vocab = llama.llama_vocab_n_tokens(llama.llama_model_get_vocab(model))
        return np.stack([np.ctypeslib.as_array(llama.llama_get_logits_ith(context, position), shape=(n_vocab,))
                         for position in range(len(ids))]).copy()
    finally:
        if batch is not None:
            llama.llama_batch_free(batch)
        if context:
            llama.llama_free(context)
        llama.llama_model_free(model)  # frees its LoRA adapters too
