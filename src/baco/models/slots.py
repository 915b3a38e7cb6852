"""Static, slot-indexed KV caches for one HF causal LM: what lets the engine step a fixed-shape batch.

A `SlotLM` owns one pre-allocated key/value buffer per attention layer, shaped
(slots, kv_heads, columns, head_dim). Every slot (row) is one request. Columns form a ring: all
rows write the current decoding step into the same column `write`, which advances by one per
step and wraps around. A row's cache is the `valid` columns just before `write` (its prompt and
what it has generated); attention reads every column and a per-row mask keeps only those (and,
for sliding-window layers, only the last `window`). Keys carry their rotary position already, and
attention does not care in which column a key sits, so a ring needs no compaction, and a new
request can take a finished row's slot at any step: its prompt is prefilled into the columns just
before `write`, overwriting the previous occupant's, and the mask hides everything older.

Shapes never change between steps (the bucket of live slots aside), and nothing in `forward`
reads a tensor's value on the host, so a step can be captured as a CUDA graph.
"""

from __future__ import annotations

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


def shared_weights(lm) -> tuple[object, str | None]:
    """(the module holding `lm`'s weights, the adapter it runs or None). Sides with the same module can
    run as rows of one forward: a plain model read with two renderings, or adapter views of one PeftModel."""
    if isinstance(lm.model, AdapterView):
        return lm.model.peft, lm.model.adapter
    return lm.model, None


def compiled(module):
    """`module` compiled by `torch.compile` (inductor; no CUDA graphs of its own: the engine captures whole
    steps), once per module, so the engines sharing it share its compiled code. One compilation per bucket of
    rows (the engine steps buckets of 1, 2, 4, ... slots when compiled): on a CPU some seconds to a minute each,
    so compiling pays for long runs, not short ones."""
    if getattr(module, "_baco_compiled", None) is None:
        module._baco_compiled = torch.compile(module, dynamic=False)
    return module._baco_compiled


class SlotLM:
    """The engine's view of one set of weights: its slot cache, prefill into slots, and one decoding step.

    It serves one or more *lanes*: sides of the pair that share these weights (the base model and its
    LoRA-adapted aligned model, or one model read with two renderings). Their rows are interleaved
    (slot s, lane j is cache row s * lanes + j), so the live slots' bucket is a prefix of the rows, and
    one forward steps every lane, the adapter applied per row (peft's mixed-adapter batches).
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

    def rows(self, slots: torch.Tensor, lane: int) -> torch.Tensor:
        """Cache rows of `slots` in `lane`."""
        return slots * self.lanes + lane

    def masks(self, write: torch.Tensor, valid: torch.Tensor):
        """Additive attention masks (rows, 1, 1, columns) for one step: a key column counts for a row if
        it is one of the row's `valid` columns before `write`, or `write` itself (this step's token)."""
        behind = (write - self.ring) % self.columns  # (columns,): 0 = this step's column
        keep = behind[None, :] <= valid[:, None]
        low = torch.finfo(self.dtype).min
        full = torch.where(keep, 0.0, low).to(self.dtype)[:, None, None, :]
        if self.window is None:
            return full
        sliding = torch.where(keep & (behind[None, :] < self.window), 0.0, low).to(self.dtype)[:, None, None, :]
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
        mixed = nullcontext()
        if any(self.adapters) and self.adapters != [ALIGNED_ADAPTER]:  # (the aligned side alone: the active adapter)
            mixed = AdapterRows.of(self.model).use(self.adapters * rows)  # each row with its side's adapter
        self.cache.rows, self.cache.write = tokens.shape[0], write
        with mixed:
            out = self.run(input_ids=tokens[:, None], position_ids=positions[:, None],
                           attention_mask=self.masks(write, valid), past_key_values=self.cache, use_cache=True)
        logits = out.logits[:, -1, :]
        return list(logits.view(-1, self.lanes, logits.shape[-1]).unbind(1)) if self.lanes > 1 else [logits]

    def move(self, source: torch.Tensor, target: torch.Tensor) -> None:
        """Copy slot `source`'s rows (every lane) into slot `target` (1-element tensors)."""
        for lane in range(self.lanes):
            self.cache.move(self.rows(source, lane), self.rows(target, lane))

    def prefill(self, prompts: list[list[int]], lane: int = 0) -> "Prefill":
        """Start prefilling `prompts` for `lane` (each without its last token, which the first decoding step feeds)."""
        return Prefill(self, prompts, lane)


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
