"""The engine: a fixed set of slots stepped in lockstep, with requests joining and leaving at step boundaries.

    engine = Engine(pair, router, max_batch=64, max_len=1024)
    engine.add(request, sampling)            # waits for a free slot
    while engine.has_work:
        event = engine.step()                # one StepEvent (or None while only prefilling)

Each step: (1) admit waiting requests into free slots (their prompts prefilled a chunk per step, at
most `prefill_tokens` prompt positions per forward, so a long prompt or a crowd of them does not stall
the others), (2) run one lockstep step over the live slots' bucket,
(3) turn the step's tokens into an event: texts, stop tokens, stop strings, length limits; a finished
row's slot is free for the next waiting request at the next boundary (continuous batching).

The step itself (`_step_fn`: every model's forward, log-softmax over the shared vocabulary, the
router, the word rule, the sampler, the rows' state) reads and writes only fixed device buffers
and never reads a value on the host when `sync_free`. On a CUDA device it is captured as a CUDA
graph per bucket of live slots (1, 2, 4, ... max_batch) and replayed; its outputs are copied to
pinned host memory asynchronously and read one step later, while the device runs the next step.
Rows that finished at step t therefore run once more at t+1; that output is dropped. Routers that
decide on the host (JUDGE) run eagerly and synchronously, with the rows' texts in the view.

Free slots below the highest busy one run too (every row of the bucket steps; a waiting request's
prompt may take several steps to prefill), their output dropped. Their positions stop at the
models' last one: a learned position table (GPT-2, OPT) has no row beyond it, and a position past it
crashes the forward. A request's own positions never reach that limit (`add` refuses one longer
than the models' context).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

import torch

from baco.decode.loop import Request, StepEvent, row_uniforms
from baco.decode.records import stop_at
from baco.decode.sampling import (LOGIT_BIAS_MAX, STOP_TOKEN_IDS_MAX, RowKnobs, SamplingParams, check_token_ids,
                                  penalise)
from baco.decode.step import route_and_draw
from baco.defaults import AUTO_MAX_BATCH, MEMORY_FRACTION, PREFILL_TOKENS
from baco.errors import BacoError, CapacityError, TokenizerMismatchError
from baco.models.slots import BUCKETS, SlotLM, bucket, cache_row_bytes, capture_graph, shared_weights, upload
from baco.prompts import request_text
from baco.routers import StepView


def bucket_for(rows: int, max_batch: int) -> int:
    """The smallest captured batch size that holds `rows` slots."""
    return min(bucket(rows, BUCKETS), max_batch)


def _groups(lms: list) -> tuple[list[list], list[tuple[int, int]]]:
    """The sides grouped by set of weights (one engine unit each), and (group, lane) of each side: sides that
    share weights (a base model and its LoRA adapter loaded once, or one model with two renderings) step in
    one forward of a `SlotLM`; a side of another backend (`engine_unit`: llama.cpp) is a group of its own."""
    lane_of, members = [], {}
    for lm in lms:
        if hasattr(lm, "engine_unit"):
            members[id(lm), len(lane_of)] = [lm]
            lane_of.append((len(members) - 1, 0))
            continue
        key = id(shared_weights(lm)[0])
        members.setdefault(key, []).append(lm)
        lane_of.append((list(members).index(key), len(members[key]) - 1))
    return list(members.values()), lane_of


def _units(lms: list, slots: int, columns: int) -> tuple[list, list[tuple[int, int]]]:
    """One unit per set of weights (`_groups`), and (unit, lane) of each side."""
    groups, lane_of = _groups(lms)
    units = [group[0].engine_unit(slots, columns) if hasattr(group[0], "engine_unit") else SlotLM(group, slots, columns)
             for group in groups]
    return units, lane_of


def free_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on `device` (a GPU's free memory plus what torch's allocator holds unused, e.g.
    the caches of an engine that is gone; the host's available memory), or None."""
    if device.type == "cuda":
        held = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + held
    if device.type == "cpu":
        import psutil

        return psutil.virtual_memory().available
    return None


# what one row of a step holds at its peak beyond the caches, per side and per vocabulary entry: its logits and
# log-probs, the router's and the sampler's vocabulary-wide buffers (float32; a full sort's values and int64
# indices when top-p runs on a GPU). Measured 12.5-21.5 bytes with Gemma-3's 262k vocabulary, 28-34 with the tiny
# test pair's 512, on the CPU (`benchmarks/engine_memory.py`).
STEP_BYTES_PER_ENTRY = 40
# what penalties hold per slot and vocabulary entry, allocated when a request with one first joins: a float32 count,
# plus one bool per side (its prompt's tokens)
PENALTY_BYTES_PER_ENTRY = 4


def _cache_layout(pair) -> list[tuple[object, torch.dtype, int]] | None:
    """(config, dtype, lanes) of each set of weights the engine steps (`_groups`), or None when a side does not say
    (llama.cpp keeps its own cache, or a config lacks its layers and heads)."""
    layout = []
    for lanes in _groups([lm for lm, _ in pair.sides])[0]:
        lm = lanes[0]
        if hasattr(lm, "engine_unit"):
            return None
        config, dtype = lm.model.config, next(lm.model.parameters()).dtype
        if cache_row_bytes(config, dtype, 1) is None:
            return None
        layout.append((config, dtype, len(lanes)))
    return layout


def cache_bytes(pair, slots: int, columns: int) -> int | None:
    """Bytes an engine of `slots` x `columns` on `pair` allocates for its slot caches and per-slot random numbers
    (None when a side does not say: llama.cpp keeps its own cache, or a config lacks its layers and heads)."""
    layout = _cache_layout(pair)
    if layout is None:
        return None
    total = slots * 3 * columns * 4  # the uniforms buffer: float32, three streams per slot
    for config, dtype, lanes in layout:  # one unit per set of weights, its lanes as cache rows
        total += cache_row_bytes(config, dtype, columns) * slots * lanes
    return total


def penalty_bytes(pair, slots: int = 1) -> int:
    """Bytes the penalties' buffers hold for `slots` slots of an engine on `pair` (`Engine._penalty_state`):
    `PENALTY_BYTES_PER_ENTRY` plus one per side per vocabulary entry."""
    return slots * (PENALTY_BYTES_PER_ENTRY + len(pair.sides)) * pair.vocab_size


def step_bytes(pair) -> int:
    """Bytes one row of a step holds at its peak beyond the caches: `STEP_BYTES_PER_ENTRY` per side and entry, and
    what penalties keep per slot (reckoned whether or not a request uses them: a server cannot know)."""
    return STEP_BYTES_PER_ENTRY * len(pair.sides) * pair.vocab_size + penalty_bytes(pair)


def prefill_bytes(pair, prompt_columns: int, chunk: int = 512) -> int | None:
    """Bytes one prompt of up to `prompt_columns` tokens holds while it is prefilled (None where `cache_bytes` is):
    its temporary cache on every side plus, on the widest side, the activations of one prefill chunk: four
    hidden-sized and three MLP-sized tensors per token and float32 attention scores (chunk x prompt per head, as a
    math attention kernel holds them)."""
    layout = _cache_layout(pair)
    if layout is None:
        return None
    width = min(prompt_columns, chunk)

    def activations(config, dtype) -> int:  # a prefill runs one lane at a time
        config = getattr(config, "text_config", config)
        hidden, mlp = getattr(config, "hidden_size", 0) or 0, getattr(config, "intermediate_size", 0) or 0
        heads = getattr(config, "num_attention_heads", 0) or 0
        return width * ((4 * hidden + 3 * mlp) * dtype.itemsize + heads * prompt_columns * 4)

    return (sum(cache_row_bytes(config, dtype, prompt_columns) * lanes for config, dtype, lanes in layout)
            + max(activations(config, dtype) for config, dtype, _ in layout))


def slot_bytes(pair, columns: int, prompt_columns: int, chunk: int = 512) -> int | None:
    """Bytes one more slot of `columns` tokens costs an engine on `pair`, prompts of up to `prompt_columns` tokens
    (None when a side does not say, as for `cache_bytes`): its cache rows and random numbers, its row of a step
    (`step_bytes`) and its prompt's prefill (`prefill_bytes`)."""
    ring, prefill = cache_bytes(pair, 1, columns), prefill_bytes(pair, prompt_columns, chunk)
    return None if ring is None or prefill is None else ring + step_bytes(pair) + prefill


def memory_budget(device: torch.device, fraction: float) -> tuple[int, int] | None:
    """(bytes an engine may still fill so that `fraction` of `device`'s memory is in use, that total), or None when
    the device does not say. Memory in use by anything (weights, other processes) counts against the fraction."""
    free = free_bytes(device)
    if device.type == "cuda":
        total = torch.cuda.mem_get_info(device)[1]
    elif device.type == "cpu":
        import psutil

        total = psutil.virtual_memory().total
    else:
        return None
    return int(free - (1 - fraction) * total), total


def check_max_batch(value, name: str = "batch_size") -> None:
    """A slot count: an integer >= 1, or "auto" (`fit_slots`)."""
    if value != "auto" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise BacoError(f"{name} must be an integer >= 1 or 'auto', got {value!r}")


def check_max_len(value, name: str = "max_len") -> None:
    """Tokens per slot: an integer >= 2 (a prompt token and a new one), or None (the engine's default)."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 2):
        raise BacoError(f"{name} must be an integer >= 2, got {value!r}")


def check_fraction(fraction, name: str = "memory_fraction") -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise BacoError(f"{name} must be in (0, 1], got {fraction!r}")


def fit_slots(pair, columns: int, *, prompt_columns: int | None = None, fraction: float = MEMORY_FRACTION,
              chunk: int = 512, cap: int = AUTO_MAX_BATCH, engines: int = 1) -> int:
    """`max_batch="auto"`: the most slots (at most `cap`) of `columns` tokens, prompts of up to `prompt_columns`
    (default: columns - 1), that each of `engines` engines on `pair` can hold within `fraction` of its device's
    memory. A pair on llama.cpp, which sizes its own caches: its fastest batch on the CPU (`auto_rows`)."""
    check_fraction(fraction)
    check_lockstep_pair(pair)
    own = [lm.auto_rows for lm, _ in pair.sides if hasattr(lm, "engine_unit")]
    if own:  # a backend that sizes its own caches (llama.cpp, which says if they cannot fit): its best batch
        return min(cap, *own)
    prompt_columns = columns - 1 if prompt_columns is None else min(prompt_columns, columns - 1)
    per_slot, budget = slot_bytes(pair, columns, prompt_columns, chunk), memory_budget(pair.device, fraction)
    if per_slot is None or budget is None:
        why = "its device does not report memory" if budget is None else "a model's configuration lacks its layers"
        raise BacoError(f"max batch 'auto' sizes the slots from memory, but {why}: give a number (--max-batch N)")
    room, total = budget
    slots = min(cap, max(0, room) // (per_slot * engines))
    if slots < 1:
        gib = 2**30
        each = f" for each of {engines} engines" if engines > 1 else ""
        raise BacoError(f"not one slot of {columns} tokens fits{each}: it needs {per_slot / gib:.2f} GiB, and "
                        f"{fraction:.0%} of {pair.device}'s {total / gib:.1f} GiB leaves {max(0, room) / gib:.2f} GiB "
                        f"beside what is in use; lower --max-len or raise --memory-fraction")
    return int(slots)


def lockstep_refusal(detail: str | None = None) -> TokenizerMismatchError:
    """The error for a pair whose tokenizers differ given to the engine (`baco serve`), naming what runs it."""
    from baco.routers.cross import token_alternatives

    return TokenizerMismatchError(
        f"baco serve steps both models through one shared vocabulary (the lockstep engine), but "
        f"{detail or 'the base and aligned tokenizers differ'}: it cannot serve this pair. Run it with "
        f"`baco generate` (or Collaboration.generate) and {token_alternatives()}")


def check_lockstep_pair(pair) -> None:
    """Refuse a cross-tokenizer pair (`CrossPair`, which has no shared ids to step) before the engine touches it."""
    from baco.models.chars import CrossPair

    if isinstance(pair, CrossPair):
        raise lockstep_refusal()


def size_text(count: int) -> str:
    """A byte count as people read it: "1 byte", "512 bytes", "3.5 KiB", "12.0 MiB", "1.2 GiB"."""
    if count < 1024:
        return f"{count} byte{'' if count == 1 else 's'}"
    for unit in ("KiB", "MiB", "GiB"):
        count /= 1024
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}"


def check_memory(pair, slots: int, columns: int, engines: int = 1) -> None:
    """Refuse (`CapacityError`), before anything is allocated, `engines` engines whose slot caches would not fit the
    memory free on the pair's device, and say how many slots would."""
    check_lockstep_pair(pair)
    need, free = cache_bytes(pair, slots, columns), free_bytes(pair.device)
    if need is None or free is None or need * engines <= free:
        return
    per_slot, gib = need * engines / slots, 2**30
    count = f"{engines} engines with " if engines > 1 else ""
    raise CapacityError(f"the KV caches for {count}{slots} slots of {columns} tokens need {need * engines / gib:.1f} "
                        f"GiB on {pair.device}, but {free / gib:.1f} GiB is free: at most {int(free // per_slot)} "
                        f"slots of {columns} tokens fit ({per_slot / 2**20:.1f} MiB each); lower --max-batch or "
                        f"--max-len")


@dataclass
class _Live:
    """Host-side record of a request in a slot."""

    rid: int
    request: Request
    params: SamplingParams
    collected: int = 0  # tokens turned into events so far
    text: str = ""  # what its tokens decode to so far: stop strings are looked for here, host routers read it
    top_logprobs: bool = False  # report the writer's most likely tokens at each step
    pending: list[int] = field(default_factory=list)  # tokens of a multi-byte character not yet complete


@dataclass
class _Launched:
    step: int
    rows: list[tuple[int, int]]  # (slot, rid) stepped
    names: tuple[str, ...]
    mixed: bool
    host: tuple  # ints (3, b), floats (4, b), and the top log-probs and ids (k, b) or None, on the host
    ready: object = None  # a CUDA event marking the end of the asynchronous copy


def _done_columns(prefill) -> int:
    """How many of a prefill's columns have run (a static prefill runs them all at once)."""
    return getattr(prefill, "done_columns", prefill.width if prefill.finished else 0)


@dataclass
class _Group:
    """Requests being prefilled together (one chunk per engine step)."""

    slots: list[int]
    members: list[_Live]
    prefills: list = field(default_factory=list)  # one Prefill per model side
    rows_of: list[torch.Tensor] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # distinct prompts each side prefills


class Engine:
    """Slots, a scheduler and the lockstep step. See the module docstring."""

    def __init__(self, pair, router, *, max_batch: int | str = 32, max_len: int | None = None,
                 graphs: str | bool = "auto", prefill_chunk: int = 512, stop_strings: tuple[str, ...] = (),
                 sync_free: bool | None = None, admit_at: int | None = None, top_logprobs: int = 0,
                 static_prefill: bool = False, memory_fraction: float = MEMORY_FRACTION,
                 prefill_tokens: int = PREFILL_TOKENS):
        """`max_batch` slots of `max_len` tokens (prompt + continuation) each. `graphs`: capture steps as
        CUDA graphs (auto: on CUDA devices, unless the router decides on the host). `sync_free`: never
        read a device value on the host inside a step (default: on CUDA devices; on the CPU the
        host-side shortcuts are cheaper and give the same tokens). `admit_at`: start a prefill only when
        this many slots are free (or nothing else runs): an eager prefill forward costs a GPU about what
        several captured steps do, whatever its size, so prefills are batched (default: max_batch // 8
        on CUDA, 1 elsewhere). `top_logprobs`: how many of the writer's most likely tokens a step reports
        (`StepEvent.top_ids` / `top_logprobs`), at the steps where a request added with `top_logprobs=True`
        is live; 0: never. `static_prefill`: prefill a group whose prompts fit one chunk at once through
        fixed buffers (bucketed by group size and prompt width), captured as a CUDA graph per bucket when
        steps are (an eager prefill costs a GPU several captured steps); same tokens as the chunked prefill.
        `max_batch="auto"`: as many slots as keep the device within `memory_fraction` of its memory (`fit_slots`,
        for prompts of up to max_len - 1 tokens). `prefill_tokens`: the most prompt positions (rows x columns,
        left padding included) one prefill forward holds; waiting requests join a prefill group, in queue order,
        while its first forward fits (the first always joins; a prompt longer than that is prefilled alone, at
        most `prefill_tokens` columns at a time), so a step that also prefills stalls the live rows for a bounded
        time and short prompts are not padded to a long one's width without bound."""
        check_max_batch(max_batch, "max_batch")
        if not isinstance(prefill_tokens, int) or isinstance(prefill_tokens, bool) or prefill_tokens < 1:
            raise BacoError(f"prefill_tokens must be an integer >= 1, got {prefill_tokens!r}")
        check_max_len(max_len)
        columns = max_len if max_len is not None else min(pair.context_length, 2048)
        if max_batch == "auto":
            max_batch = fit_slots(pair, columns, fraction=memory_fraction, chunk=max(1, int(prefill_chunk)))
        self.pair, self.router = pair, router
        self.device = pair.device
        self.slots, self.columns, self.chunk = max_batch, columns, max(1, int(prefill_chunk))
        self.prefill_tokens = prefill_tokens
        self.context = pair.context_length
        self.last_position = min(columns, self.context) - 1  # where a row whose output is dropped stops
        if (not isinstance(top_logprobs, int) or isinstance(top_logprobs, bool)
                or not 0 <= top_logprobs <= pair.vocab_size):
            raise BacoError(f"top_logprobs must be an integer in [0, {pair.vocab_size}], got {top_logprobs!r}")
        self.top_k_logprobs = top_logprobs
        self.stop_strings = tuple(stop_strings)
        host_router = bool(getattr(router, "host", False))
        cuda = self.device.type == "cuda"
        self.sync_free = (cuda if sync_free is None else bool(sync_free)) and not host_router
        self.graphs = self.sync_free and cuda and (graphs is True or graphs == "auto")
        self.pipelined = self.sync_free and cuda  # read step t while the device runs step t+1
        self.host_router = host_router
        self.static_prefill = bool(static_prefill)
        self.admit_at = max(1, admit_at if admit_at is not None else (max_batch // 8 if cuda else 1))
        self.reads = [reads for _, reads in pair.sides]
        check_memory(pair, max_batch, columns)
        self.units, self.lane_of = _units([lm for lm, _ in pair.sides], max_batch, columns)
        self.compiled = any(getattr(unit, "compiled", False) for unit in self.units)  # `lm.compiled`: torch.compile
        self._state(max_batch, columns)
        self.waiting: list[_Live] = []
        self.live: dict[int, _Live] = {}  # slot -> request in it
        self.by_rid: dict[int, _Live] = {}  # requests in a slot, by id
        self.group: _Group | None = None
        self.pending: _Launched | None = None
        self.finished_rids: set[int] = set()
        self.steps = 0
        self.write_host = 0
        self._next_rid = 0
        self._graphs: dict[tuple, tuple] = {}
        self._warm: dict[tuple, int] = {}
        self._pool = None
        self.capture_error: str | None = None
        self.stats = {"steps": 0, "graph_steps": 0, "prefill_chunks": 0, "prefill_positions": 0,
                      "largest_prefill": 0, "occupied_row_steps": 0,
                      "bucket_row_steps": 0, "moves": 0}

    # ---- device state -------------------------------------------------------------------------------
    def _row_knobs(self, params: list[SamplingParams], device=None) -> RowKnobs:
        """Rows of knobs as the slots keep them: logit-bias rows `LOGIT_BIAS_MAX` wide, and rows of the end tokens
        min_tokens holds back (the pair's own and the request's stop ids) as wide as the most there can be."""
        return RowKnobs.of(params, device=device or "cpu", bias_width=LOGIT_BIAS_MAX, ends=self.pair.vocab.stop_ids,
                           end_width=len(self.pair.vocab.stop_ids) + STOP_TOKEN_IDS_MAX)

    def _state(self, slots: int, columns: int) -> None:
        dev = self.device
        longs = lambda fill=0: torch.full((slots,), fill, dtype=torch.long, device=dev)  # noqa: E731
        self.previous, self.t = longs(-1), longs()
        self.inputs = [longs() for _ in self.reads]  # the token each side reads next
        self.previous_base = torch.zeros(slots, dtype=torch.bool, device=dev)
        self.positions = [longs() for _ in self.reads]
        self.valid = [longs() for _ in self.reads]
        self.uniforms = torch.zeros((slots, 3, columns), device=dev)
        self.knobs = self._row_knobs([SamplingParams()] * slots, dev)
        self.write = torch.zeros(1, dtype=torch.long, device=dev)
        self.out_ints = torch.zeros((3, slots), dtype=torch.long, device=dev)
        self.out_floats = torch.zeros((4, slots), device=dev)
        top = self.top_k_logprobs
        self.out_top = (torch.zeros((top, slots), device=dev), torch.zeros((top, slots), dtype=torch.long, device=dev))
        pin = self.pipelined and torch.cuda.is_available()
        outputs = (self.out_ints, self.out_floats) + self.out_top
        self._pinned = [tuple(t.cpu().pin_memory() if pin else None for t in outputs) for _ in range(2)]
        # penalties' state, allocated when the first request with a penalty joins (`_penalty_state`)
        self.counts: torch.Tensor | None = None  # (slots, V) float: how often each token is in the row's text
        self.seen: list[torch.Tensor] = []  # per side, (slots, V) bool: the tokens of the row's prompt on that side

    def _penalty_state(self) -> None:
        """The buffers penalties read: token counts per slot, and each side's prompt tokens per slot (the
        repetition penalty's, which counts the prompt too): `PENALTY_BYTES_PER_ENTRY` + 1 per side bytes per slot
        and vocabulary entry (`penalty_bytes`), which `step_bytes` reckons. Allocated when the first request with a
        penalty is added: a device without room for them refuses that request (a `CapacityError` naming the need),
        not a step."""
        if self.counts is not None:
            return
        need, free = penalty_bytes(self.pair, self.slots), free_bytes(self.device)
        refusal = (f"sampling penalties (repetition, presence, frequency) need {size_text(need)} on {self.device} "
                   f"for this engine's {self.slots} slots (a token count and a prompt mask per vocabulary entry of "
                   f"{self.pair.vocab_size}), but {{}}; lower --max-batch, or sample without penalties")
        if free is not None and need > free:
            raise CapacityError(refusal.format(f"{size_text(free)} is free"))
        shape = (self.slots, self.pair.vocab_size)
        try:
            counts = torch.zeros(shape, device=self.device)
            seen = [torch.zeros(shape, dtype=torch.bool, device=self.device) for _ in self.reads]
        except torch.OutOfMemoryError:
            raise CapacityError(refusal.format("the device ran out of memory allocating them")) from None
        self.counts, self.seen = counts, seen

    # ---- requests -----------------------------------------------------------------------------------
    def add(self, request: Request, params: SamplingParams, *, top_logprobs: bool = False) -> int:
        """Queue a request; returns its id. A request that can never fit is an error now, not later.
        `top_logprobs`: its steps report the writer's `Engine(top_logprobs=k)` most likely tokens."""
        if min(len(request.base_ids), len(request.aligned_ids)) < 1:
            raise BacoError("a request needs at least one prompt token for each model")
        if request.length > self.columns:
            raise BacoError(f"request needs {request.prompt_length} prompt + {request.max_new_tokens} new tokens, more "
                            f"than the engine's max_len of {self.columns}; raise max_len or lower max_new_tokens")
        if request.length > self.context:
            raise BacoError(f"request needs {request.prompt_length} prompt + {request.max_new_tokens} new tokens, more "
                            f"than the models' context of {self.context}; lower max_new_tokens")
        check_token_ids(params, self.pair.vocab)
        if params.penalised:
            self._penalty_state()
        rid = self._next_rid
        self._next_rid += 1
        self.waiting.append(_Live(rid, request, params, top_logprobs=bool(top_logprobs and self.top_k_logprobs)))
        return rid

    def abort(self, rid: int) -> None:
        """Drop a request: from the queue, or from its slot (the slot is free at the next boundary)."""
        self.waiting = [w for w in self.waiting if w.rid != rid]
        self._free(rid)
        self.finished_rids.add(rid)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.live or self.group or self.pending)

    @property
    def occupied(self) -> int:
        return len(self.live) + (len(self.group.slots) if self.group else 0)

    # ---- one engine step ----------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> StepEvent | None:
        self._admit()
        launched = self._launch() if self.live else None
        if not self.pipelined:
            return self._collect(launched) if launched else None
        ready, self.pending = self.pending, launched
        return self._collect(ready) if ready else None

    def run(self):
        """Step until every queued request has finished; yield each step's event."""
        while self.has_work:
            event = self.step()
            if event is not None:
                yield event

    # ---- admission: prefill into free slots ---------------------------------------------------------
    def _admit(self) -> None:
        if self.group is None and not self.waiting:
            self._compact()
        if self.group is None and self.waiting:
            taken = set(self.live)
            free = [s for s in range(self.slots) if s not in taken]
            if not free or (self.live and len(free) < min(self.admit_at, len(self.waiting))):
                return
            members = self._joining(len(free))
            self.waiting = self.waiting[len(members):]
            group = _Group(free[: len(members)], members)
            for (unit, lane), reads in zip(self.lane_of, self.reads):
                side = self.units[unit]
                prompts, rows_of = [], []
                for live in members:
                    prompt = self._prefilled(live, reads)
                    if prompt not in prompts:
                        prompts.append(prompt)
                    rows_of.append(prompts.index(prompt))
                width = max(len(p) for p in prompts)
                if (isinstance(side, SlotLM) and self.static_prefill and width <= self.chunk
                        and len(prompts) * width <= self.prefill_tokens):  # the whole group in one forward
                    group.prefills.append(side.prefill([list(p) for p in prompts], lane, static=True,
                                                       graphs=self.graphs))
                else:
                    group.prefills.append(side.prefill([list(p) for p in prompts], lane))
                group.rows_of.append(upload(torch.tensor(rows_of), side.device))
                group.rows.append(len(prompts))
            self.group = group
        if self.group is None:
            return
        for prefill, rows in zip(self.group.prefills, self.group.rows):
            if not prefill.finished:
                done = _done_columns(prefill)
                prefill.advance(min(self.chunk, max(1, self.prefill_tokens // rows)))
                positions = rows * (_done_columns(prefill) - done)
                self.stats["prefill_chunks"] += 1
                self.stats["prefill_positions"] += positions
                self.stats["largest_prefill"] = max(self.stats["largest_prefill"], positions)
        if all(p.finished for p in self.group.prefills):
            self._activate(self.group)
            self.group = None

    @staticmethod
    def _prefilled(live: _Live, reads: str) -> tuple[int, ...]:
        """The prompt tokens a side prefills for a request: all but the last, which its first step reads."""
        return tuple(live.request.base_ids if reads == "base" else live.request.aligned_ids)[:-1]

    def _joining(self, free: int) -> list[_Live]:
        """The waiting requests that form the next prefill group, in queue order: at most `free`, while the group's
        first forward on every side (its distinct prompts x the longest one's first chunk) holds at most
        `prefill_tokens` positions. The first always joins."""
        prompts = [set() for _ in self.reads]
        widest = [0 for _ in self.reads]
        joining = []
        for live in self.waiting[:free]:
            mine = [self._prefilled(live, reads) for reads in self.reads]
            first = max(min(max(widest[i], len(prompt)), self.chunk) * len(prompts[i] | {prompt})
                        for i, prompt in enumerate(mine))
            if joining and first > self.prefill_tokens:
                break
            for i, prompt in enumerate(mine):
                prompts[i].add(prompt)
                widest[i] = max(widest[i], len(prompt))
            joining.append(live)
        return joining

    def _activate(self, group: _Group) -> None:
        """Place the group's prefilled caches into its slots and reset those rows' state."""
        slots = upload(torch.tensor(group.slots), self.device)
        for prefill, rows_of in zip(group.prefills, group.rows_of):
            prefill.place(slots.to(prefill.side.device), rows_of, self.write_host)
        requests = [m.request for m in group.members]
        last = {"base": [r.base_ids[-1] for r in requests], "aligned": [r.aligned_ids[-1] for r in requests]}
        lengths = {"base": [len(r.base_ids) - 1 for r in requests], "aligned": [len(r.aligned_ids) - 1 for r in requests]}
        long = lambda values: upload(torch.tensor(values, dtype=torch.long), self.device)  # noqa: E731
        for i, reads in enumerate(self.reads):  # each side first reads its own prompt's last token
            self.inputs[i][slots] = long(last[reads])
            self.positions[i][slots] = long(lengths[reads])
            self.valid[i][slots] = long(lengths[reads])
        self.previous.index_fill_(0, slots, -1)
        self.previous_base.index_fill_(0, slots, False)
        self.t.index_fill_(0, slots, 0)
        uniforms = torch.zeros((len(requests), 3, self.columns))
        for i, request in enumerate(requests):
            uniforms[i, :, : request.max_new_tokens] = row_uniforms(request.seed, request.max_new_tokens)
        self.uniforms[slots] = upload(uniforms, self.device)
        fresh = self._row_knobs([m.params for m in group.members])
        for mine, theirs in zip(self.knobs.rows(), fresh.rows()):
            mine[slots] = upload(theirs, self.device)
        if self.counts is not None:  # a slot's counts and prompt tokens are its new request's alone
            self.counts.index_fill_(0, slots, 0)
            for seen, reads in zip(self.seen, self.reads):
                seen[slots] = self._prompt_mask([r.base_ids if reads == "base" else r.aligned_ids for r in requests])
        for slot, member in zip(group.slots, group.members):
            if member.rid not in self.finished_rids:  # not aborted while its prompt was prefilled
                self.live[slot] = member
                self.by_rid[member.rid] = member
            else:
                self._release(slot)

    def _compact(self) -> None:
        """With nobody waiting, move rows from the highest slots into free lower ones, so the step's
        bucket shrinks with the number of live rows (finished rows are not carried along)."""
        while self.live and max(self.live) >= len(self.live):
            source = max(self.live)
            target = min(s for s in range(self.slots) if s not in self.live)
            src, dst = torch.tensor([source], device=self.device), torch.tensor([target], device=self.device)
            for unit in self.units:
                unit.move(src.to(unit.device), dst.to(unit.device))
            state = [self.previous, self.previous_base, self.t, self.uniforms, *self.inputs, *self.positions,
                     *self.valid, *self.knobs.rows(), *([self.counts, *self.seen] if self.counts is not None else [])]
            for tensor in state:
                tensor.index_copy_(0, dst, tensor.index_select(0, src))
            self.live[target] = self.live.pop(source)
            self.stats["moves"] += 1

    # ---- the step -----------------------------------------------------------------------------------
    def _launch(self) -> _Launched:
        rows = sorted(self.live)
        # captured graphs and compiled forwards exist per bucket; eager steps run exactly the busy slots
        bucket = bucket_for(rows[-1] + 1, self.slots) if self.graphs or self.compiled else rows[-1] + 1
        flags = self._flags()
        top = any(live.top_logprobs for live in self.live.values())
        key = (bucket, flags, top)
        if key in self._graphs:
            graph, names, mixed = self._graphs[key]
            graph.replay()
            self.stats["graph_steps"] += 1
        else:
            names, mixed = self._step_fn(bucket, flags, top)
            if self.graphs:
                self._warm[key] = self._warm.get(key, 0) + 1
                if self._warm[key] >= 2:  # two eager runs warm the kernels and allocator up; then capture
                    self._capture(key)
        self.write_host = (self.write_host + 1) % self.columns
        self.steps += 1
        self.stats["steps"] += 1
        self.stats["occupied_row_steps"] += len(rows)
        self.stats["bucket_row_steps"] += bucket
        host, ready = self._to_host(bucket, top)
        return _Launched(self.steps - 1, [(s, self.live[s].rid) for s in rows], names, mixed, host, ready)

    def _flags(self) -> tuple[bool, ...]:
        return RowKnobs.flags([live.params for live in self.live.values()])

    def _step_fn(self, bucket: int, flags: tuple, top: bool = False) -> tuple[tuple[str, ...], bool]:
        """One lockstep step over slots [0, bucket): fixed buffers in, fixed buffers out."""
        b = bucket
        live = None if self.sync_free else sorted(self.live)  # the busy slots, for units that skip the others
        logits: list = [None] * len(self.reads)
        for u, unit in enumerate(self.units):  # one forward per set of weights, every lane it serves at once
            mine = [i for i, (of, _) in enumerate(self.lane_of) if of == u]
            outs = unit.forward([self.inputs[i][:b] for i in mine], [self.positions[i][:b] for i in mine],
                                [self.valid[i][:b] for i in mine], self.write, live=live)
            for i, out in zip(mine, outs):
                logits[i] = out
        base_lp, aligned_lp, anchor_lp = self.pair.split([self.pair.logprobs(x) for x in logits])
        steps = self.t[:b].clamp(max=self.columns - 1)
        uniforms = self.uniforms[:b].gather(2, steps[:, None, None].expand(b, 3, 1)).squeeze(-1)
        knobs = RowKnobs(*(tensor[:b] for tensor in self.knobs.rows()), *flags)
        prompts = texts = None
        if self.host_router:
            order = [self.live.get(s) for s in range(b)]
            # a conversation as its turns: a router that reads the request (JUDGE) sees what the answer follows
            prompts = [request_text(m.request.messages or m.request.prompt) if m else "" for m in order]
            texts = [m.text if m else "" for m in order]
        view = StepView(base_lp, aligned_lp, self.pair.vocab, uniforms[:, 2], self.steps, prompts=prompts,
                        texts=texts, anchor_logprobs=anchor_lp, previous=self.previous[:b])
        draw = self._reshaped(view, logits, knobs) if knobs.reshaped else None
        drawn = route_and_draw(view, self.router, uniforms, self.previous[:b], self.previous_base[:b], knobs,
                               sync_free=self.sync_free, top=self.top_k_logprobs if top else 0, draw=draw)
        if knobs.penalised:  # the drawn token is in the row's text from now on
            self.counts[:b].scatter_add_(1, drawn.tokens[:, None], torch.ones_like(self.counts[:b, :1]))
        for inputs in self.inputs:  # from now on every side reads the shared continuation
            inputs[:b] = drawn.tokens
        self.previous[:b] = drawn.tokens
        self.previous_base[:b] = drawn.use_base
        self.t[:b] += 1
        for i in range(len(self.reads)):
            self.positions[i][:b] = (self.positions[i][:b] + 1).clamp(max=self.last_position)
            self.valid[i][:b] = (self.valid[i][:b] + 1).clamp(max=self.columns - 1)
        self.write.add_(1).remainder_(self.columns)
        self.out_ints[0, :b] = drawn.tokens
        self.out_ints[1, :b] = drawn.use_base.long()
        self.out_ints[2, :b] = drawn.codes
        self.out_floats[:, :b] = drawn.stats.float()
        if drawn.top is not None:
            self.out_top[0][:, :b] = drawn.top[0].T
            self.out_top[1][:, :b] = drawn.top[1].T
        return drawn.names, drawn.mixed

    def _prompt_mask(self, prompts: list[list[int]]) -> torch.Tensor:
        """(len(prompts), V) bool on the device: which vocabulary entries each prompt holds (ids past the
        vocabulary, a tokenizer's padding rows, are not entries). Only the ids travel to the device, padded with V
        into a spare column; the mask is scattered where it lives."""
        vocab = self.pair.vocab_size
        width = max(map(len, prompts))
        rows = [list(prompt) + [vocab] * (width - len(prompt)) for prompt in prompts]
        padded = torch.tensor(rows).clamp_(max=vocab)
        mask = torch.zeros((len(prompts), vocab + 1), dtype=torch.bool, device=self.device)
        mask.scatter_(1, upload(padded, self.device), True)
        return mask[:, :vocab]

    def _reshaped(self, view: StepView, logits: list, knobs: RowKnobs) -> StepView:
        """The view the rows draw from: each side's own logits biased, held back (min_tokens) and penalised
        (`sampling.penalise`) with the rows' token counts and that side's prompt tokens, then log-softmaxed;
        everything else is `view`'s."""
        b = view.batch_size
        if knobs.penalised:
            self._penalty_state()  # (allocated already when a penalised request was added)
        counts = self.counts[:b] if knobs.penalised else None
        prompts = [seen[:b] for seen in self.seen] if knobs.penalised else [None] * len(logits)
        base, aligned, anchor = self.pair.split([
            self.pair.logprobs(penalise(x.to(self.device), knobs, counts, prompt, self.t[:b]))
            for x, prompt in zip(logits, prompts)])
        return replace(view, base_logprobs=base, aligned_logprobs=aligned, anchor_logprobs=anchor)

    def _capture(self, key: tuple) -> None:
        """Record the step for this bucket as a CUDA graph (state is not advanced by recording)."""
        bucket, flags, top = key
        self._pool = self._pool or torch.cuda.graph_pool_handle()  # every bucket's graph shares one pool
        graph, out = capture_graph(lambda: self._step_fn(bucket, flags, top), self.device, self._pool)
        if graph is None:  # a model whose forward cannot be captured still runs
            self.graphs = False
            self.capture_error = out
            warnings.warn(f"CUDA graph capture failed, stepping eagerly (still without host syncs): "
                          f"{self.capture_error}", RuntimeWarning, stacklevel=2)
            return
        self._graphs[key] = (graph, *out)

    def _to_host(self, bucket: int, top: bool):
        """The step's outputs on the host: copied now (synchronous), or into pinned memory, asynchronously."""
        outputs = (self.out_ints, self.out_floats) + (self.out_top if top else (None, None))
        if not self.pipelined:
            return tuple(t[:, :bucket].cpu() if t is not None else None for t in outputs), None
        host = []
        for out, pinned in zip(outputs, self._pinned[self.steps % 2]):
            host.append(pinned[:, :bucket].copy_(out[:, :bucket], non_blocking=True) if out is not None else None)
        ready = torch.cuda.Event()
        ready.record()
        return tuple(host), ready

    # ---- turning a step into an event ---------------------------------------------------------------
    def _collect(self, launched: _Launched) -> StepEvent | None:
        if launched.ready is not None:
            launched.ready.synchronize()  # the copy of step t; the device already runs step t+1
        ints, floats, top_lp, top_ids = launched.host
        texts, stop_ids = self.pair.vocab.texts, self.pair.vocab.stop_ids
        kept, rids, finished = [], [], {}
        for slot, rid in launched.rows:
            if rid in self.finished_rids:
                continue  # finished (or aborted) at an earlier step: this row's output is a leftover
            live = self.by_rid[rid]
            token = int(ints[0, slot])
            live.collected += 1
            piece = self._piece(live, token, texts)
            live.text += piece
            if token in stop_ids or token in live.params.stop_token_ids:
                finished[rid] = "stop"
            elif (self.stop_strings and live.collected > live.params.min_tokens  # (vLLM's: stop strings held too)
                  and stop_at(live.text, self.stop_strings, len(live.text) - len(piece)) is not None):
                finished[rid] = "stop"
            elif live.collected >= live.request.max_new_tokens:
                finished[rid] = "length"
            kept.append(slot)
            rids.append(rid)
        for rid in finished:
            self.finished_rids.add(rid)
            self._free(rid)
        if len(self.finished_rids) > 4 * self.slots:  # a long-running server: forget ids no step can return
            keep = {rid for _, rid in self.pending.rows} if self.pending is not None else set()  # launched, not read
            if self.group is not None:  # aborted while their prompts are prefilled
                keep |= {member.rid for member in self.group.members}
            self.finished_rids &= keep
        if not kept:
            return None
        index = torch.tensor(kept)
        ints, floats = ints[:, index], floats[:, index]
        return StepEvent(step=launched.step, rows=rids, tokens=ints[0], use_base=ints[1].bool(),
                         reasons=[launched.names[c] for c in ints[2].tolist()], base_top1_prob=floats[0],
                         base_entropy=floats[1], aligned_top1_prob=floats[2], chosen_prob=floats[3],
                         finished=finished, mixed=launched.mixed,
                         top_logprobs=top_lp[:, index].T if top_lp is not None else None,
                         top_ids=top_ids[:, index].T if top_ids is not None else None)

    def _piece(self, live: _Live, token: int, texts: list[str]) -> str:
        """The text `token` adds to its row: its vocabulary text, except that the tokens of a character split over
        several (byte tokens, each "\ufffd" alone) add nothing until the one that completes it adds it whole, so
        that a stop string holding such a character is found."""
        if not live.pending and "\ufffd" not in texts[token]:
            return texts[token]
        live.pending.append(token)
        text = self.pair.aligned.tokenizer.decode(live.pending, skip_special_tokens=True)
        if text.endswith("\ufffd") and len(live.pending) < 4:  # a UTF-8 character has at most 4 bytes
            return ""
        live.pending = []
        return text

    def _free(self, rid: int) -> None:
        live = self.by_rid.pop(rid, None)
        if live is not None:
            for slot in [slot for slot, other in self.live.items() if other.rid == rid]:
                del self.live[slot]
                self._release(slot)

    def _release(self, slot: int) -> None:
        """Units whose cache memory is allocated per request (llama.cpp's cells) free the slot's now."""
        for unit in self.units:
            if hasattr(unit, "release"):
                unit.release(slot)
