"""HF transformers backend: load a causal LM by hub id or local path, then prefill and step on a KV cache.

`HFCausalLM.start(prompts)` left-pads a batch, runs one prefill and returns an `HFSession` whose
`logits` are the next-token logits of every row; `session.step(tokens)` appends one token per row;
`session.keep(rows)` drops finished rows from the cache, mask and positions, so they stop costing compute.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from baco.errors import BacoError, ModelLoadError
from baco.vocab import control_token_ids

# transformers 5.2x renames forward(past_key_values=) to cache= but its `cache=` does not yet fill a
# cache passed in; keep the working keyword and silence the rename notice.
warnings.filterwarnings("ignore", message=r".*past_key_values.* is deprecated", category=FutureWarning)
# peft 0.21 reads the model's `is_gradient_checkpointing` (deprecated in transformers 5.2x) when it wraps a
# model: a notice about peft's code, not the user's, printed on every adapter load.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


class _DropCacheRenameNotice(logging.Filter):
    """transformers 5.2x also logs the rename (once per process) when a model output's `past_key_values` is
    read: the same notice about a keyword baco keeps on purpose (above), printed into users' progress bars."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`past_key_values`/`cache_params` are deprecated" not in record.getMessage()


logging.getLogger("transformers.utils.generic").addFilter(_DropCacheRenameNotice())

# Names of end-of-turn tokens used by common chat templates; added to the stops when present.
END_OF_TURN_TOKENS = ("<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end|>", "<|endoftext|>", "</s>")

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is not available is an error."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise ModelLoadError(f"device must be a string such as 'auto', 'cpu' or 'cuda:0', or a torch.device, "
                             f"got {device!r}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ModelLoadError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but this torch build sees no CUDA GPU")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but MPS is not available here")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on GPUs and float32 on CPU (exact, and what the tests compare against)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type in ("cuda", "mps") else torch.float32
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


def looks_like_path(name: str) -> bool:
    """A hub id is `name` or `org/name`; anything else that does not exist is a missing path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def _check_source(name: str | os.PathLike) -> str:
    name = os.fspath(name)
    if not name or not name.strip():
        raise ModelLoadError("model name is empty: pass a hub id (org/name) or a local directory")
    expanded = os.path.expanduser(name)
    if os.path.exists(expanded):
        if not os.path.isdir(expanded):
            raise ModelLoadError(f"{name!r} is a file; pass the model's directory (with config.json)")
        if not os.access(expanded, os.R_OK | os.X_OK):
            raise ModelLoadError(f"cannot read the model directory {name!r}: permission denied")
        unreadable = sorted(entry.name for entry in os.scandir(expanded) if not entry.name.startswith(".")
                            and entry.is_file() and not os.access(entry.path, os.R_OK))
        if unreadable:  # (safetensors says a file it cannot open does not exist)
            raise ModelLoadError(f"cannot read {os.path.join(name, unreadable[0])!r}: permission denied")
        if not os.path.exists(os.path.join(expanded, "config.json")):
            raise ModelLoadError(f"{name!r} has no config.json, so it is not a transformers model directory")
        return expanded
    if looks_like_path(name):
        raise ModelLoadError(f"no model directory at {name!r}")
    return _hub_source(name)


def _hub_source(name: str) -> str:
    """A hub id as it is where the hub answers; else its cached snapshot directory, or a clear error now
    (huggingface_hub retries an unreachable hub for ~25 s a file, a warning line per try)."""
    from huggingface_hub import constants, try_to_load_from_cache

    if not constants.HF_HUB_OFFLINE and _hub_reachable(constants.ENDPOINT):
        return name
    try:
        cached = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - not a valid repo id: not cached
        cached = None
    if isinstance(cached, str):
        return os.path.dirname(cached)
    why = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else
           f"this machine cannot reach the hub ({constants.ENDPOINT})")
    raise ModelLoadError(f"{name!r} is not a local directory nor in the hub cache ({constants.HF_HUB_CACHE}), and "
                         f"{why}: pass the model's local directory, or download it where the hub is reachable")


@functools.lru_cache(maxsize=None)
def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens within `timeout` seconds (True behind a proxy: not probed)."""
    import socket
    from urllib.parse import urlsplit
    from urllib.request import getproxies

    parts = urlsplit(endpoint)
    if getproxies().get(parts.scheme) or not parts.hostname:
        return True
    try:
        with socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def resolve_source(name: str | os.PathLike, dtype: str | torch.dtype = "auto") -> tuple[str, str | None]:
    """(model directory or hub id, LoRA adapter directory or None) for a name.

    Names: a hub id, a local model directory, a local peft adapter directory (its base model is
    read from adapter_config.json), or an embedded alias (`baco:gemma-3-270m`, `baco:gemma-3-270m-aligned`).
    """
    from baco.models import embedded

    name = os.fspath(name)
    if name.startswith("baco:"):
        cache_dtype = "float32" if dtype in ("float32", "fp32", torch.float32) else "bfloat16"
        if name not in embedded.ALIASES:
            raise ModelLoadError(f"unknown embedded model {name!r}; known: {', '.join(embedded.ALIASES)}")
        path, adapter = embedded.resolve(name, cache_dtype)
        return path, (str(adapter) if adapter else None)
    expanded = os.path.expanduser(name)
    adapter_config = os.path.join(expanded, "adapter_config.json")
    if os.path.isfile(adapter_config) and not os.path.exists(os.path.join(expanded, "config.json")):
        try:
            with open(adapter_config, encoding="utf-8") as handle:
                config = json.load(handle)
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
            raise ModelLoadError(f"{adapter_config!r} is not valid JSON ({error}): restore the adapter's "
                                 f"adapter_config.json") from None
        except OSError as error:
            raise ModelLoadError(f"cannot read {adapter_config!r}: {error.strerror or error}") from None
        if not isinstance(config, dict):
            raise ModelLoadError(f"{adapter_config!r} is not valid JSON for an adapter (not an object): "
                                 f"restore the adapter's adapter_config.json")
        base = config.get("base_model_name_or_path")
        if not base:
            raise ModelLoadError(f"adapter {name!r} does not name its base model (base_model_name_or_path)")
        try:
            return resolve_source(base, dtype)[0], expanded
        except ModelLoadError as error:
            raise ModelLoadError(f"adapter {name!r} names its base model {base!r} (base_model_name_or_path in its "
                                 f"adapter_config.json), which cannot be loaded: {error}; point it at the base "
                                 f"model's directory") from None
    return _check_source(name), None


def load_tokenizer(name: str | os.PathLike):
    from transformers import AutoTokenizer

    source = resolve_source(name)[0]
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as error:  # noqa: BLE001 - any failure here is a load failure for the user
        raise ModelLoadError(_load_hint(source, "tokenizer", error)) from error


def load_tokenizers(*names, loaded: dict | None = None):
    """The tokenizer of each name (None stays None), each source read once: the embedded aligned model (the base
    plus a LoRA adapter) and its base share one object, as do a model named twice (~4 s per Gemma tokenizer).
    `loaded` (source -> tokenizer): those read before, kept across calls, and this call's added to it."""
    loaded = {} if loaded is None else loaded
    tokenizers = []
    for name in names:
        if name is None:
            tokenizers.append(None)
            continue
        source = resolve_source(name)[0]
        if source not in loaded:
            loaded[source] = load_tokenizer(name)
        tokenizers.append(loaded[source])
    return tokenizers


def _load_hint(source: str, what: str, error: Exception) -> str:
    hint = ("check the directory's files" if os.path.isdir(source) else
            "if this is a hub id, this machine needs hub access or a local copy (HF_HUB_OFFLINE=1 uses the cache)")
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"could not load the {what} of {source!r}: {type(error).__name__}: {first_line} ({hint})"


def _with_adapter(model, adapter: str, *, merge: bool, name: str = "default"):
    """Apply a peft LoRA adapter: merged into the weights (one plain model, no per-step LoRA cost), or
    kept apart as adapter `name` of a PeftModel (the base model stays reachable, row by row)."""
    try:
        from peft import PeftModel
    except ImportError:
        raise ModelLoadError(f"{adapter!r} is a LoRA adapter; loading it needs `pip install peft`") from None
    if os.path.isdir(adapter) and not any(os.path.isfile(os.path.join(adapter, f"adapter_model.{ext}"))
                                          for ext in ("safetensors", "bin")):
        raise ModelLoadError(f"adapter {adapter!r} has no adapter_model.safetensors (its weights), only its "
                             f"adapter_config.json: restore the adapter's files")
    try:
        peft = PeftModel.from_pretrained(model, adapter, adapter_name=name)
        return peft.merge_and_unload() if merge else peft.eval()
    except Exception as error:  # noqa: BLE001
        raise ModelLoadError(_load_hint(adapter, "adapter", error)) from error


def _is_embedded_cache(source: str) -> bool:
    """True for the converted embedded base (e.g. an adapter trained on `baco:gemma-3-270m`)."""
    from baco.models import embedded

    return os.path.isdir(source) and os.path.realpath(os.path.dirname(source)) == os.path.realpath(embedded.cache_dir())


def _contiguous_input(module, args):
    # Prefill keeps only the last position; that slice is not contiguous and a 262k-row output
    # layer on a strided bf16 input is ~1000x slow on CPU (notes/implementation-traps.md, trap 1).
    return (args[0].contiguous(),) + tuple(args[1:])


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def _load(name, dtype, device, tokenizer):
    """(model on its device, adapter directory or None, tokenizer) for a name (see `resolve_source`)."""
    from transformers import AutoModelForCausalLM

    source, adapter = resolve_source(name, dtype)
    target = resolve_device(device)
    if dtype == "auto" and (os.fspath(name).startswith("baco:") or _is_embedded_cache(source)):
        dtype = "bfloat16"  # the embedded pair is cached in bf16: 2.5x faster than fp32 on AVX-512 CPUs
    torch_dtype = resolve_dtype(dtype, target)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(source)
    report = logging.getLogger("transformers.modeling_utils")  # its many-line load report: said below in one line
    quiet = _ErrorsOnly()  # its warnings hidden, its errors still shown
    report.addFilter(quiet)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, output_loading_info=True,
                                                           ignore_mismatched_sizes=True)  # (refused below)
    except Exception as error:  # noqa: BLE001
        raise ModelLoadError(_load_hint(source, "model", error)) from error
    finally:
        report.removeFilter(quiet)
    mismatched = sorted(info.get("mismatched_keys") or ())
    if mismatched:
        key, stored, expected = mismatched[0]
        raise ModelLoadError(f"the weights in {source!r} do not fit its config.json: {len(mismatched)} tensors have "
                             f"other shapes (first: {key} is {tuple(stored)} in the weights file, {tuple(expected)} "
                             f"by config.json): restore the directory's files")
    missing = sorted(info.get("missing_keys") or ())
    if missing:  # transformers fills them with random values: the model would run, and write nonsense
        raise ModelLoadError(f"the weights in {source!r} lack {len(missing)} tensors that its config.json asks for "
                             f"(first: {missing[0]}): the weights file and config.json do not belong together "
                             f"(an incomplete download?): restore the directory's files")
    return model.to(target), adapter, tokenizer


BASE_ADAPTER, ALIGNED_ADAPTER = "__base__", "aligned"  # peft's name for "no adapter", and ours for the adapter


class AdapterRows:
    """Which rows of the next forward of a PeftModel get its LoRA adapter: each LoRA layer's update (the output
    of its `lora_B`) is multiplied by a 0/1 weight per row, so `__base__` rows get exactly the base layer's
    output and adapter rows base + update. Fixed shapes, no value read on the host and no tensor made from host
    data inside a forward: a step can be captured as a CUDA graph and compiled without graph breaks. (peft's own
    mixed-adapter batches, `adapter_names=[...]`, gather each adapter's rows by a Python list at every layer: a
    host-to-device copy per layer that a CUDA graph cannot hold, and ~8 ms of Python per Gemma-3-270M forward.)

        with AdapterRows.of(peft).use(("__base__", "aligned"), b):   # rows: base, aligned, base, aligned ...
            peft(input_ids=...)

    The update of an adapter row is computed on all rows then zeroed on the others: LoRA's rank-r products are
    small next to the layer's own. Plain LoRA on linear layers only (see `row_weighting_refusal`).
    """

    def __init__(self, peft, adapter: str = ALIGNED_ADAPTER):
        from peft.tuners.lora import LoraLayer

        self.adapter, self.device = adapter, next(peft.parameters()).device
        self.weights: dict | None = None  # the forward under way's (rows,) weights per dtype; None: all rows adapted
        self._made: dict[tuple, dict] = {}  # per row pattern, made once (not during a capture)
        self._dtypes = set()  # the LoRA layers' dtypes: weights in each, so no layer casts them at every step
        for module in peft.modules():
            if isinstance(module, LoraLayer) and adapter in module.lora_B:
                module.lora_B[adapter].register_forward_hook(self._hook)
                self._dtypes.add(module.lora_B[adapter].weight.dtype)

    @classmethod
    def of(cls, peft) -> "AdapterRows":
        if getattr(peft, "_baco_rows", None) is None:
            peft._baco_rows = cls(peft)
        return peft._baco_rows

    def _hook(self, module, args, output):
        if self.weights is None:
            return output
        weights = self.weights.get(output.dtype)
        if weights is None:  # an output in another dtype than the layer's (autocast)
            weights = next(iter(self.weights.values())).to(output.dtype)
        return output * weights.view(-1, *[1] * (output.dim() - 1))

    def prepare(self, lanes: tuple[str, ...], rows: int) -> dict:
        """The row weights of `lanes` (one adapter name per lane) repeated `rows` times, made now if new (a
        host-to-device copy: made before the steps that use them, never inside one)."""
        key = (tuple(lanes), rows)
        if key not in self._made:
            weights = torch.tensor([name == self.adapter for name in lanes] * rows, device=self.device)
            self._made[key] = {dtype: weights.to(dtype) for dtype in self._dtypes or {torch.float32}}
        return self._made[key]

    @contextmanager
    def use(self, lanes: tuple[str, ...], rows: int):
        """Rows named the adapter get it; `__base__` rows do not. The batch is `lanes` repeated `rows` times."""
        self.weights = self.prepare(lanes, rows)
        try:
            yield
        finally:
            self.weights = None


def row_weighting_refusal(peft, adapter: str = ALIGNED_ADAPTER) -> str | None:
    """Why `AdapterRows` cannot apply this PeftModel's adapter per row (None: it can). It needs plain LoRA on
    linear layers: DoRA and other variants, LoRA on embeddings and `modules_to_save` change more than a
    `lora_B` output."""
    from peft.tuners.lora import LoraLayer

    for name, module in peft.named_modules():
        if isinstance(module, LoraLayer):
            if adapter in getattr(module, "lora_variant", {}):
                return f"layer {name} uses a LoRA variant ({type(module.lora_variant[adapter]).__name__})"
            if adapter in module.lora_A and adapter not in module.lora_B:
                return f"layer {name} is not a linear LoRA layer"
            if adapter in getattr(module, "lora_embedding_A", {}):
                return f"layer {name} puts LoRA on an embedding"
        elif isinstance(saved := getattr(module, "modules_to_save", None), torch.nn.ModuleDict) and adapter in saved:
            return f"layer {name} is trained in full (modules_to_save)"
    return None


class AdapterView(torch.nn.Module):
    """One side of a PeftModel whose LoRA adapter is not merged: the base model (`__base__`) or the
    adapted one (`aligned`). Two views share one set of weights; the engine steps both sides' rows in
    one forward (`AdapterRows`: the adapter's update weighted per row). Attributes it lacks (config,
    generation_config, get_output_embeddings ...) are the wrapped model's."""

    def __init__(self, peft, adapter: str):
        super().__init__()
        self.peft, self.adapter = peft, adapter

    def forward(self, input_ids=None, **kwargs):
        if self.adapter != BASE_ADAPTER:
            return self.peft(input_ids=input_ids, **kwargs)  # the loaded adapter is the active one
        rows = (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[0]
        with AdapterRows.of(self.peft).use((BASE_ADAPTER,), rows):
            return self.peft(input_ids=input_ids, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.peft, name)


ONE_FORWARD = ("auto", "on", "off")


def load_pair_models(base: str | os.PathLike, aligned: str | os.PathLike, *, dtype: str | torch.dtype = "auto",
                     device: str | torch.device = "auto", base_tokenizer=None, aligned_tokenizer=None,
                     one_forward: str = "auto") -> tuple["HFCausalLM", "HFCausalLM"]:
    """(base, aligned) models. When the aligned model is a LoRA adapter on the base model itself (the
    embedded pair; `--aligned ADAPTER_DIR` with `--base` its base), `one_forward` decides how it loads:
    `on`: the base weights once and the adapter unmerged, both sides stepping as rows of one forward
    (half the weight memory; on a CPU the step costs little more than one model's); `off`: two models,
    the adapter merged into a copy (twice the weight memory, no per-step LoRA cost); `auto`: `on` on the
    CPU, `off` elsewhere (on GPUs the faster of the two is still to be measured, docs/benchmarks.md). Rows
    get the adapter through `AdapterRows` (plain LoRA on linear layers; others load as two models, and
    `on` says why it cannot)."""
    if one_forward not in ONE_FORWARD:
        raise BacoError(f"one_forward must be one of {', '.join(ONE_FORWARD)}, got {one_forward!r}")
    base_source, base_adapter = resolve_source(base, dtype)
    aligned_source, adapter = resolve_source(aligned, dtype)
    shareable = (adapter is not None and base_adapter is None
                 and os.path.realpath(base_source) == os.path.realpath(aligned_source))
    if one_forward == "on" and not shareable:
        raise BacoError(f"one_forward='on' needs the aligned model to be a LoRA adapter on the base model "
                        f"itself; {os.fspath(aligned)!r} is not one on {os.fspath(base)!r}")
    if not shareable or (one_forward == "auto" and resolve_device(device).type != "cpu") or one_forward == "off":
        return (HFCausalLM.from_pretrained(base, dtype=dtype, device=device, tokenizer=base_tokenizer),
                HFCausalLM.from_pretrained(aligned, dtype=dtype, device=device, tokenizer=aligned_tokenizer))
    model, _, base_tokenizer = _load(base, dtype, device, base_tokenizer)
    peft = _with_adapter(model, adapter, merge=False, name=ALIGNED_ADAPTER)
    refusal = row_weighting_refusal(peft)
    if refusal is not None and one_forward == "on":
        raise BacoError(f"one_forward='on' cannot step {os.fspath(aligned)!r} as rows of one forward: {refusal}; "
                        f"use one_forward='off' (two models, the adapter merged into a copy)")
    aligned_tokenizer = aligned_tokenizer if aligned_tokenizer is not None else load_tokenizer(aligned)
    if refusal is not None:  # rare (DoRA, LoRA on embeddings, modules_to_save): the loaded copy takes the adapter
        return (HFCausalLM.from_pretrained(base, dtype=dtype, device=device, tokenizer=base_tokenizer),
                HFCausalLM(peft.merge_and_unload(), aligned_tokenizer, name=os.fspath(aligned)))
    return (HFCausalLM(AdapterView(peft, BASE_ADAPTER), base_tokenizer, name=os.fspath(base)),
            HFCausalLM(AdapterView(peft, ALIGNED_ADAPTER), aligned_tokenizer, name=os.fspath(aligned)))


class HFCausalLM:
    """A transformers causal LM with its tokenizer, ready for batched prefill and KV-cache steps."""

    def __init__(self, model, tokenizer, name: str = "model"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.device = next(model.parameters()).device
        self.compiled = False  # True: the engine's decoding steps run the model compiled (`torch.compile`)
        inputs = model.get_input_embeddings()
        rows = inputs.weight.shape[0] if inputs is not None else None
        if rows is not None and tokenizer.vocab_size > rows:  # its ids past the rows would fail in the forward
            raise ModelLoadError(f"{name!r}: the tokenizer has {tokenizer.vocab_size} tokens but the model "
                                 f"{rows} embedding rows: the tokenizer files and the weights do not belong together")
        output = model.get_output_embeddings()
        if output is not None and not getattr(output, "_baco_contiguous", False):  # views share one layer
            output.register_forward_pre_hook(_contiguous_input)
            output._baco_contiguous = True

    @classmethod
    def from_pretrained(cls, name: str | os.PathLike, *, dtype: str | torch.dtype = "auto",
                        device: str | torch.device = "auto", tokenizer=None) -> "HFCausalLM":
        """Load by hub id or local path. Errors (missing path, corrupt weights) are `ModelLoadError`.
        A LoRA adapter (a peft directory, `baco:gemma-3-270m-aligned`) is merged into its base's weights."""
        model, adapter, tokenizer = _load(name, dtype, device, tokenizer)
        if adapter is not None:
            model = _with_adapter(model, adapter, merge=True)
        return cls(model, tokenizer, name=os.fspath(name))

    @property
    def output_rows(self) -> int:
        """Width of the logits (may exceed len(tokenizer): padded embedding rows)."""
        return self.model.get_output_embeddings().weight.shape[0]

    @property
    def context_length(self) -> int:
        config = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(getattr(config, "text_config", config), key, None) or getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return 1 << 30

    @property
    def pad_token_id(self) -> int:
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0):
            if candidate is not None:
                return int(candidate)
        return 0

    @property
    def stop_token_ids(self) -> set[int]:
        """EOS of the tokenizer and generation config, plus a chat template's end-of-turn token."""
        stops: set[int] = set()
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        stops.update([eos] if isinstance(eos, int) else list(eos or []))
        if self.tokenizer.eos_token_id is not None:
            stops.add(self.tokenizer.eos_token_id)
        vocab = self.tokenizer.get_vocab()
        controls = control_token_ids(self.tokenizer)  # "</s>" is plain text in some vocabularies
        stops.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab and vocab[t] in controls)
        return stops

    def start(self, prompts: list[list[int]]) -> "HFSession":
        """Prefill a batch of token-id lists (left-padded) and return the decoding session."""
        return HFSession.prefill(self, prompts)


@dataclass
class HFSession:
    """KV cache, attention mask and positions of the rows still decoding."""

    lm: HFCausalLM
    cache: object
    attention_mask: torch.Tensor  # (B, T) over prompt + continuation
    positions: torch.Tensor  # (B,) position id of the last token of each row
    logits: torch.Tensor  # (B, V) next-token logits, float32

    @classmethod
    @torch.inference_mode()
    def prefill(cls, lm: HFCausalLM, prompts: list[list[int]]) -> "HFSession":
        from transformers import DynamicCache

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), lm.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt):] = 1
        ids, mask = ids.to(lm.device), mask.to(lm.device)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=lm.model.config)
        out = lm.model(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                       past_key_values=cache, use_cache=True, logits_to_keep=1)
        return cls(lm, out.past_key_values, mask, position_ids[:, -1], out.logits[:, -1, :].float())

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row; return the new next-token logits (B, V)."""
        tokens = tokens.to(self.lm.device).view(-1, 1)
        ones = torch.ones_like(tokens)
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=-1)
        self.positions = self.positions + 1
        out = self.lm.model(input_ids=tokens, attention_mask=self.attention_mask,
                            position_ids=self.positions.view(-1, 1), past_key_values=self.cache,
                            use_cache=True)
        self.cache = out.past_key_values
        self.logits = out.logits[:, -1, :].float()
        return self.logits

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (indices into the current batch) in the cache, mask, positions and logits."""
        rows = rows.to(self.lm.device)
        self.cache.batch_select_indices(rows)
        self.attention_mask = self.attention_mask[rows]
        self.positions = self.positions[rows]
        self.logits = self.logits[rows]
