"""Static, slot-indexed KV caches for one HF causal LM: what lets the engine step a fixed-shape batch.

A `SlotLM` owns one pre-allocated key/value buffer per attention layer, shaped
(slots, kv_heads, columns, head_dim). Every slot (row) is one request. Columns form a ring: all
rows write the current decoding step into the same column `write`, which advances by one per
step and wraps around. A row's cache is the `valid` columns just before `write` (its prompt and
what it has generated); attention reads every column and a per-row mask keeps only those (and,
for sliding-window layers, only the last `window`). Keys carry their position already (rotary, or
learned and added to the input), and attention does not care in which column a key sits, so a
ring needs no compaction, and a new request can take a finished row's slot at any step: its
prompt is prefilled into the columns just before `write`, overwriting the previous occupant's, and
the mask hides everything older. Attention that reads anything else is refused (`slot_refusal`).

Shapes never change between steps (the bucket of live slots aside), and nothing in `forward`
reads a tensor's value on the host, so a step can be captured as a CUDA graph.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import torch

from baco.errors import BacoError
from baco.models.hf import ALIGNED_ADAPTER, AdapterRows, AdapterView

try:  # the model's attention layers call cache.update(); a transformers Cache passes its type checks
    from transformers.cache_utils import Cache as _CacheBase
except ImportError:  # pragma: no cover - transformers is a dependency
    _CacheBase = object


def upload(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device without making the host wait for the device's queue (pinned, asynchronous copy)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class SlotCache(_CacheBase):
    """The per-layer ring buffers. `update` writes this step's keys/values of the first `rows` slots."""

    def __init__(self, slots: int, columns: int):
        if _CacheBase is not object:
            super().__init__(layers=[])
        self.slots, self.columns = slots, columns
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.write: torch.Tensor | None = None  # 1-element long tensor: the column this step writes
        self.rows = slots  # the bucket being stepped: slots [0, rows)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if layer_idx not in self.keys:  # sized by the first step (heads, head_dim and dtype of this layer)
            _, heads, _, dim = key_states.shape
            shape = (self.slots, heads, self.columns, dim)
            self.keys[layer_idx] = torch.zeros(shape, dtype=key_states.dtype, device=key_states.device)
            self.values[layer_idx] = torch.zeros(shape, dtype=value_states.dtype, device=value_states.device)
        keys, values = self.keys[layer_idx][: self.rows], self.values[layer_idx][: self.rows]
        keys.index_copy_(2, self.write, key_states)
        values.index_copy_(2, self.write, value_states)
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # positions are always passed explicitly; never read a length from the cache

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.columns

    @property
    def is_compileable(self) -> bool:
        return True

    def move(self, source: torch.Tensor, target: torch.Tensor) -> None:
        """Copy slot `source`'s keys and values (every column) into slot `target` (1-element tensors)."""
        for buffers in (self.keys, self.values):
            for buffer in buffers.values():
                buffer.index_copy_(0, target, buffer.index_select(0, source))

    def place(self, layer_idx: int, slots: torch.Tensor, columns: torch.Tensor,
              keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write prefilled keys/values (g, heads, n, dim) into `slots` (g,) at ring `columns` (n,)."""
        if layer_idx not in self.keys:
            shape = (self.slots, keys.shape[1], self.columns, keys.shape[3])
            self.keys[layer_idx] = torch.zeros(shape, dtype=keys.dtype, device=keys.device)
            self.values[layer_idx] = torch.zeros(shape, dtype=values.dtype, device=values.device)
        heads = torch.arange(keys.shape[1], device=keys.device)
        index = (slots[:, None, None], heads[None, :, None], columns[None, None, :])
        self.keys[layer_idx].index_put_(index, keys.to(self.keys[layer_idx].dtype))
        self.values[layer_idx].index_put_(index, values.to(self.values[layer_idx].dtype))


def _layer_kinds(config) -> tuple[list[str] | None, int | None]:
    """(layer types if the model mixes full and sliding attention, sliding window)."""
    config = getattr(config, "text_config", config)
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types and "sliding_attention" in types and window:
        return list(types), int(window)
    return None, (int(window) if window and getattr(config, "use_sliding_window", True) else None)


STEPPED_LAYERS = ("full_attention", "sliding_attention")  # the layer kinds `SlotLM.layer_masks` masks


def slot_refusal(model) -> str | None:
    """Why the slot engine cannot step `model` as transformers would (None: it can). The engine hands every
    layer explicit positions, key/value caches in ring columns (any column order) and an additive mask per
    row; attention that reads anything else would write other tokens, silently or with a crash."""
    return config_refusal(model.config, stateful=getattr(model, "_is_stateful", False), kind=type(model).__name__)


def config_refusal(config, *, stateful: bool, kind: str = "") -> str | None:
    """`slot_refusal` from a model's config and its class's `_is_stateful` flag (transformers' mark of recurrent /
    state-space layers), so that a pair is refused before its weights load."""
    config = getattr(config, "text_config", config)
    kind = getattr(config, "model_type", "") or kind
    if stateful:
        return f"{kind} keeps a recurrent state beside (or instead of) attention caches, which slots cannot hold"
    if kind in ("bloom", "mpt") or getattr(config, "alibi", False):
        return (f"{kind} uses ALiBi attention biases, built from a padding mask or from cache columns rather than "
                f"from token positions")
    others = [layer for layer in getattr(config, "layer_types", None) or () if layer not in STEPPED_LAYERS]
    if others:
        return f"{kind} has {others[0]} layers, which the engine's masks do not reproduce"
    if "local" in (getattr(config, "attention_layers", None) or ()):  # GPT-Neo: a window by cache column
        return f"{kind} has local attention layers that mask keys by cache column"
    return None


def cache_row_bytes(config, dtype: torch.dtype, columns: int) -> int | None:
    """Bytes of one slot cache row (one request of one lane) of `columns` over every attention layer, as
    `SlotCache` allocates it (a key and a value buffer per layer; sliding-window layers too, since the ring
    is shared); None when the configuration does not name its layers and heads."""
    config = getattr(config, "text_config", config)
    layers, heads = getattr(config, "num_hidden_layers", None), getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", None)
    dim = getattr(config, "head_dim", None) or (hidden // heads if hidden and heads else None)
    if not (layers and kv_heads and dim):
        return None
    return 2 * layers * kv_heads * dim * columns * dtype.itemsize


def shared_weights(lm) -> tuple[object, str | None]:
    """(the module holding `lm`'s weights, the adapter it runs or None). Sides with the same module can
    run as rows of one forward: a plain model read with two renderings, or adapter views of one PeftModel."""
    if isinstance(lm.model, AdapterView):
        return lm.model.peft, lm.model.adapter
    return lm.model, None


def capture_graph(fn, device: torch.device, pool) -> tuple["torch.cuda.CUDAGraph | None", object]:
    """Record `fn()` as a CUDA graph in memory `pool` (the caller has run it eagerly to warm up): (graph,
    what `fn` returned), or (None, the error as text) when it cannot be captured."""
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, pool=pool):
            out = fn()
    except Exception as error:  # noqa: BLE001 - what cannot be captured still runs eagerly
        torch.cuda.synchronize(device)
        return None, f"{type(error).__name__}: {error}"
    return graph, out


def compiled(module):
    """`module` compiled by `torch.compile` (inductor; no CUDA graphs of its own: the engine captures whole
    steps), once per module, so the engines sharing it share its compiled code. One compilation per bucket of
    rows (the engine steps buckets of 1, 2, 4, ... slots when compiled): on a CPU some seconds to a minute each,
    so compiling pays for long runs, not short ones."""
    if module.__dict__.get("_baco_compiled") is None:  # kept out of the module tree (it wraps the module itself)
        module.__dict__["_baco_compiled"] = torch.compile(module, dynamic=False)
    return module.__dict__["_baco_compiled"]


RECOMPILES = 64  # compiled variants dynamo keeps per forward: buckets x models of different shapes


def room_to_compile():
    """A context in which dynamo keeps up to RECOMPILES compiled variants of a forward (its default, 8, is
    reached by the 9th bucket, or sooner with models of several shapes, and it then runs that forward eagerly)."""
    config = torch._dynamo.config
    key = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # (torch < 2.7)
    return config.patch(**{key: max(getattr(config, key), RECOMPILES)})


class SlotLM:
    """The engine's view of one set of weights: its slot cache, prefill into slots, and one decoding step.

    It serves one or more *lanes*: sides of the pair that share these weights (the base model and its
    LoRA-adapted aligned model, or one model read with two renderings). Their rows are interleaved
    (slot s, lane j is cache row s * lanes + j), so the live slots' bucket is a prefix of the rows, and
    one forward steps every lane, the adapter applied per row (`AdapterRows`).
    """

    def __init__(self, lms: list, slots: int, columns: int):
        first = lms[0]
        self.lm, self.views = first, [lm.model for lm in lms]
        self.model, _ = shared_weights(first)
        self.adapters = [shared_weights(lm)[1] for lm in lms]
        self.lanes = len(lms)
        self.compiled = any(getattr(lm, "compiled", False) for lm in lms)
        self.run = compiled(self.model) if self.compiled else self.model
        self.device = first.device
        self.cache = SlotCache(slots * self.lanes, columns)
        self.columns = columns
        self.layer_types, self.window = _layer_kinds(first.model.config)
        self.dtype = next(first.model.parameters()).dtype
        self.ring = torch.arange(columns, device=self.device)
        self._staging: dict[tuple[int, int, int], Staging] = {}  # static prefills' buffers, per bucket
        self._pool = None
        self.mixed = any(self.adapters) and self.adapters != [ALIGNED_ADAPTER]  # (the aligned side alone: active)
        for rows in range(1, slots + 1) if self.mixed else ():  # every step's row weights, made before any step
            AdapterRows.of(self.model).prepare(tuple(self.adapters), rows)

    def rows(self, slots: torch.Tensor, lane: int) -> torch.Tensor:
        """Cache rows of `slots` in `lane`."""
        return slots * self.lanes + lane

    def masks(self, write: torch.Tensor, valid: torch.Tensor):
        """Additive attention masks (rows, 1, 1, columns) for one step: a key column counts for a row if
        it is one of the row's `valid` columns before `write`, or `write` itself (this step's token)."""
        behind = (write - self.ring) % self.columns  # (columns,): 0 = this step's column
        keep = behind[None, :] <= valid[:, None]
        return self.layer_masks(keep[:, None, None, :], behind[None, None, None, :])

    def layer_masks(self, keep: torch.Tensor, behind: torch.Tensor):
        """Additive attention masks from `keep` (bool, (rows, 1, queries, keys)): one for full-attention
        layers and, where the model has them, one for sliding-window layers, which also drop the keys
        `behind` their query by `window` positions or more (a dict when the model mixes both kinds)."""
        low = torch.finfo(self.dtype).min
        full = torch.where(keep, 0.0, low).to(self.dtype)
        if self.window is None:
            return full
        sliding = torch.where(keep & (behind < self.window), 0.0, low).to(self.dtype)
        if self.layer_types is None:
            return sliding  # every layer slides
        return {"full_attention": full, "sliding_attention": sliding}

    @torch.inference_mode()
    def forward(self, tokens: list[torch.Tensor], positions: list[torch.Tensor], valid: list[torch.Tensor],
                write: torch.Tensor, live: list[int] | None = None) -> list[torch.Tensor]:
        """Each lane's logits (rows, V) after feeding one token per row at `positions`; writes column `write`.
        Every row of the bucket runs (fixed shapes); `live` is not needed here."""
        if self.lanes > 1:
            tokens, positions, valid = (torch.stack(x, dim=1).reshape(-1) for x in (tokens, positions, valid))
        else:
            tokens, positions, valid = tokens[0], positions[0], valid[0]
        rows = tokens.shape[0] // self.lanes
        mixed = AdapterRows.of(self.model).use(tuple(self.adapters), rows) if self.mixed else nullcontext()
        self.cache.rows, self.cache.write = tokens.shape[0], write
        with mixed, room_to_compile() if self.compiled else nullcontext():
            out = self.run(input_ids=tokens[:, None], position_ids=positions[:, None],
                           attention_mask=self.masks(write, valid), past_key_values=self.cache, use_cache=True)
        logits = out.logits[:, -1, :]
        return list(logits.view(-1, self.lanes, logits.shape[-1]).unbind(1)) if self.lanes > 1 else [logits]

    def move(self, source: torch.Tensor, target: torch.Tensor) -> None:
        """Copy slot `source`'s rows (every lane) into slot `target` (1-element tensors)."""
        for lane in range(self.lanes):
            self.cache.move(self.rows(source, lane), self.rows(target, lane))

    def prefill(self, prompts: list[list[int]], lane: int = 0, *, static: bool = False,
                graphs: bool = False) -> "Prefill | StaticPrefill":
        """Start prefilling `prompts` for `lane` (each without its last token, which the first decoding step
        feeds): through a temporary transformers cache, a chunk at a time, or (`static`, for prompts that fit
        one chunk) at once through fixed buffers, captured as a CUDA graph per bucket when `graphs`."""
        if static and any(prompts):
            return StaticPrefill(self, prompts, lane, graphs)
        return Prefill(self, prompts, lane)

    def staging(self, lane: int, group: int, width: int) -> "Staging":
        key = (lane, group, width)
        if key not in self._staging:
            self._staging[key] = Staging(self, lane, group, width)
        return self._staging[key]

    def graph_pool(self):
        """One CUDA graph memory pool for this unit's captured prefills."""
        self._pool = self._pool or torch.cuda.graph_pool_handle()
        return self._pool


class Prefill:
    """Prefill of a group of prompts, run `chunk` columns at a time through a temporary transformers
    cache (so a long prompt does not stall the other rows' steps), then placed into slots."""

    def __init__(self, side: SlotLM, prompts: list[list[int]], lane: int = 0):
        from transformers import DynamicCache

        self.side, self.lane, self.model = side, lane, side.views[lane]
        width = max((len(p) for p in prompts), default=0)
        if width >= side.columns:
            raise BacoError(f"a prompt of {width + 1} tokens does not fit the engine's {side.columns} columns")
        ids = torch.full((len(prompts), width), side.lm.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            if prompt:
                ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
                mask[row, width - len(prompt):] = 1
        self.ids, self.mask = upload(ids, side.device), upload(mask, side.device)
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = DynamicCache(config=side.lm.model.config)
        self.width, self.done_columns = width, 0

    @property
    def finished(self) -> bool:
        return self.done_columns >= self.width

    @torch.inference_mode()
    def advance(self, chunk: int) -> None:
        """Run the next `chunk` columns of every prompt."""
        start, end = self.done_columns, min(self.done_columns + chunk, self.width)
        self.model(input_ids=self.ids[:, start:end], attention_mask=self.mask[:, :end],
                        position_ids=self.positions[:, start:end], past_key_values=self.cache, use_cache=True,
                        logits_to_keep=1)
        self.done_columns = end

    @torch.inference_mode()
    def place(self, slots: torch.Tensor, rows_of: torch.Tensor, write: int) -> None:
        """Copy the prefilled keys/values into the ring just before column `write`: slot `slots[i]`
        receives prompt `rows_of[i]` (the n samples of a prompt share one prefill)."""
        side = self.side
        rows = side.rows(slots, self.lane)
        for layer_idx, layer in enumerate(self.cache.layers if self.width else []):
            keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
            if keys is None or keys.numel() == 0:
                continue
            kept = keys.shape[2]  # a sliding-window layer keeps only its window
            columns = (write - kept + torch.arange(kept, device=side.device)) % side.columns
            side.cache.place(layer_idx, rows, columns, keys[rows_of], values[rows_of])


BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # rows of a captured step or a static prefill group
PREFILL_WIDTHS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)  # columns of a static prefill


def bucket(value: int, sizes: tuple[int, ...]) -> int:
    """The smallest of `sizes` that holds `value` (`value` itself beyond the largest)."""
    return next((size for size in sizes if size >= value), value)


class StagingCache(_CacheBase):
    """Fixed key/value buffers for one whole prefill of (group, width): `update` stores a layer's keys and
    values and returns them as they are (a prompt attends only to itself), so the forward has fixed shapes
    and reads no value on the host: it can be captured as a CUDA graph."""

    def __init__(self):
        if _CacheBase is not object:
            super().__init__(layers=[])
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if layer_idx not in self.keys:
            self.keys[layer_idx] = torch.empty_like(key_states)
            self.values[layer_idx] = torch.empty_like(value_states)
        self.keys[layer_idx].copy_(key_states)
        self.values[layer_idx].copy_(value_states)
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    @property
    def is_compileable(self) -> bool:
        return True


class Staging:
    """The fixed buffers of one (lane, group bucket, width bucket) of static prefills, and its CUDA graph."""

    def __init__(self, side: "SlotLM", lane: int, group: int, width: int):
        dev = side.device
        self.side, self.lane, self.group, self.width = side, lane, group, width
        self.ids = torch.zeros((group, width), dtype=torch.long, device=dev)
        self.positions = torch.zeros((group, width), dtype=torch.long, device=dev)
        self.valid = torch.zeros((group, width), dtype=torch.bool, device=dev)
        self.cache = StagingCache()
        self.runs, self.graph, self.capturable = 0, None, True

    def masks(self):
        """Additive masks (group, 1, width, width): causal, without the left padding (and, for sliding-window
        layers, only the last `window` positions)."""
        positions = torch.arange(self.width, device=self.side.device)
        behind = positions[:, None] - positions[None, :]  # (queries, keys)
        causal = (behind >= 0)[None] & self.valid[:, None, :]
        return self.side.layer_masks(causal[:, None], behind[None, None])

    def forward(self) -> None:
        self.side.views[self.lane](input_ids=self.ids, position_ids=self.positions, attention_mask=self.masks(),
                                   past_key_values=self.cache, use_cache=True, logits_to_keep=1)

    @torch.inference_mode()
    def run(self, capture: bool) -> None:
        """One prefill: replayed from its CUDA graph once captured (after two eager runs, when `capture`)."""
        if self.graph is not None:
            self.graph.replay()
            return
        self.forward()
        self.runs += 1
        if capture and self.capturable and self.runs >= 2:
            graph, outcome = capture_graph(self.forward, self.side.device, self.side.graph_pool())
            if graph is None:
                warnings.warn(f"prefill capture failed, prefilling eagerly: {outcome}", RuntimeWarning, stacklevel=2)
                self.capturable = False
            self.graph = graph


class StaticPrefill:
    """A group's prefill with fixed shapes: prompts left-padded to a width bucket (16, 32, 64, ...), the group
    to a size bucket (1, 2, 4, ...), run at once through fixed buffers (captured as a CUDA graph per bucket on
    GPUs, `graphs=True`), then placed into the ring like `Prefill`. For prompts no wider than the chunk."""

    def __init__(self, side: "SlotLM", prompts: list[list[int]], lane: int = 0, graphs: bool = False):
        self.side, self.lane, self.graphs = side, lane, graphs
        self.width = max(len(p) for p in prompts)
        if self.width >= side.columns:
            raise BacoError(f"a prompt of {self.width + 1} tokens does not fit the engine's {side.columns} columns")
        group, width = bucket(len(prompts), BUCKETS), bucket(self.width, PREFILL_WIDTHS)
        self.staging = side.staging(lane, group, width)
        ids = torch.full((group, width), side.lm.pad_token_id, dtype=torch.long)
        valid = torch.zeros((group, width), dtype=torch.bool)
        for row, prompt in enumerate(prompts):
            if prompt:
                ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
                valid[row, width - len(prompt):] = True
        self._host = (ids, valid)
        self.finished = False

    def advance(self, chunk: int) -> None:
        ids, valid = self._host
        staging = self.staging
        staging.ids.copy_(upload(ids, self.side.device))
        staging.valid.copy_(upload(valid, self.side.device))
        staging.positions.copy_((staging.valid.long().cumsum(-1) - 1).clamp(min=0))
        staging.run(capture=self.graphs)
        self.finished = True

    @torch.inference_mode()
    def place(self, slots: torch.Tensor, rows_of: torch.Tensor, write: int) -> None:
        """Copy the prompts' keys/values (their last `width` columns: the rest is padding) into the ring just
        before column `write`: slot `slots[i]` receives prompt `rows_of[i]`."""
        side, staging = self.side, self.staging
        rows = side.rows(slots, self.lane)
        columns = (write - self.width + torch.arange(self.width, device=side.device)) % side.columns
        for layer_idx, keys in staging.cache.keys.items():
            values = staging.cache.values[layer_idx]
            side.cache.place(layer_idx, rows, columns, keys[rows_of, :, -self.width:], values[rows_of, :, -self.width:])
