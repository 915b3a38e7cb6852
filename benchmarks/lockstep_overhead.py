"""Lockstep cost vs. running the two models alone, per decoding step, measured in one run.

    python benchmarks/lockstep_overhead.py [--base DIR --aligned DIR] [--batch 1 8] [--dtype float32] [--penalties]
                                           [--logit-bias]
    python benchmarks/lockstep_overhead.py --shape DIR [--set num_hidden_layers=26 ...] --device cuda

Without --base/--aligned it times the tiny random pair (`baco.testing.make_tiny_pair`). With --shape
it times two random-initialised models with the configuration and tokenizer in DIR (e.g. the
embedded Gemma's cache folder), optionally changed by --set: costs depend on shapes, not weights,
so a GPU machine without the weights can still time a real architecture. With --shape and
--one-forward on: one random model and a random rank-16 LoRA adapter on it, both sides stepping as rows
of one forward.
baco's per-step time: three engines with `batch` rows each (the pair, base alone, aligned alone) are
warmed up (prefill done, CUDA graphs captured), then take turns of (T2 - T1) / 4 steps, 4 x --repeats
turns each, timed to the end of the device's work; medians. Taking turns keeps a busy machine's
load from landing on one of them only. transformers'
generate: (time for T2 new tokens - time for T1) / (T2 - T1), so its prefill cancels out.
Stop tokens are disabled so every row runs the full length. Prints, per batch size:
  lockstep      the full BACo step on the engine (router p-punc:0.5: both models forward, router, word
                rule, sampler, provenance), CUDA-graph captured on a GPU
  base, aligned one model alone on the same engine (`SoloPair`: one forward + the sampler per step,
                graph captured on a GPU): each model's compiled single-model step
  ratio         lockstep / (base + aligned)             target <= 1.15
  tok/s         BACo tokens per second (batch / lockstep step)
  hf eager      transformers `generate` of one model with its dynamic cache, per step (--hf eager|static)
  hf static     transformers `generate` with a StaticCache, which transformers compiles (torch.compile)
  penalised     (--penalties) the lockstep step with repetition, presence and frequency penalties on every row
  biased        (--logit-bias) the lockstep step with a 300-token logit bias (OpenAI's most) on every row
  x plain       each of those two / the plain lockstep step
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from baco import Collaboration, SamplingParams
from baco.decode.engine import Engine
from baco.decode.sampling import LOGIT_BIAS_MAX
from baco.decode.loop import lockstep
from baco.models import SoloPair
from baco.routers import get_router

PROMPT = "Tell me a story about a dragon who could not fly."
WARM = 6  # engine steps before timing (prefill, warm-up and graph capture)
STATIC_ROOM = 128  # new tokens a static cache leaves room for (the longest timed run must fit)


def without_stops(collab: Collaboration) -> None:
    """Benchmark only: no row may finish early, so every step runs at the full batch size."""
    vocab = collab.pair.vocab
    for token in vocab.stop_ids:
        vocab.allowed[token] = False
    vocab.stop_ids = frozenset()
    collab.pair._mask = torch.where(vocab.allowed, 0.0, float("-inf"))


# --penalties: what the penalised lockstep engine's rows sample with (every penalty on)
PENALTIES = {"repetition_penalty": 1.2, "presence_penalty": 0.5, "frequency_penalty": 0.5}


def biases(vocab_size: int) -> dict[int, float]:
    """--logit-bias: the most tokens a bias may name (300), spread over the vocabulary, biases in [-5, 5]."""
    count = min(LOGIT_BIAS_MAX, vocab_size)
    return {i * vocab_size // count: round(10 * (i / count) - 5, 2) for i in range(count)}


def running_engine(collab: Collaboration, pair, router: str, batch: int, budget: int, **knobs) -> Engine:
    """An engine with `batch` rows, warmed up: prefill done, graphs captured (on a GPU). `knobs`: more sampling
    knobs (penalties)."""
    params = SamplingParams(max_new_tokens=WARM + budget + 2, seed=0, min_p=0.05, **knobs)
    requests = collab.requests([PROMPT], batch, params, seed=0)
    engine = Engine(pair, get_router(router), max_batch=batch, max_len=max(r.length for r in requests))
    for request in requests:
        engine.add(request, params)
    for _ in range(WARM):
        engine.step()
    return engine


def steady_steps(engines: dict[str, Engine], steps: int, repeats: int) -> dict[str, float]:
    """Seconds per step of each running engine: `steps` steps timed to the end of the device's work,
    the engines taking turns `repeats` times (so a busy machine slows them alike); medians."""
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(repeats):
        for name, engine in engines.items():
            synced(lambda: None)()
            start = time.perf_counter()
            for _ in range(steps):
                engine.step()
            synced(lambda: None)()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(values) for name, values in times.items()}


def solo(collab: Collaboration, side: str) -> SoloPair:
    """One model alone on the same engine (its own rendering, the same vocabulary with stops disabled)."""
    pair = SoloPair(getattr(collab.pair, side), reads=side)
    pair.vocab, pair._mask = collab.pair.vocab, collab.pair._mask
    return pair


def time_hf_generate(collab: Collaboration, side: str, batch: int, steps: int, static: bool = False) -> float:
    lm = getattr(collab.pair, side)
    requests = collab.requests([PROMPT], batch, SamplingParams(), seed=0)
    ids = torch.tensor([r.base_ids if side == "base" else r.aligned_ids for r in requests]).to(lm.device)
    extra = {}
    if static:  # a StaticCache of one fixed length: transformers compiles its decode step once per batch size
        from transformers import StaticCache

        extra["past_key_values"] = StaticCache(config=lm.model.config, max_cache_len=ids.shape[1] + STATIC_ROOM)
    start = time.perf_counter()
    lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, min_new_tokens=steps,
                      do_sample=True, top_k=0, min_p=0.05, pad_token_id=lm.pad_token_id, **extra)
    return time.perf_counter() - start


def synced(fn):
    """Time to the end of the device's work, not to the end of the kernel launches."""
    def timed(*args) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - start
    return timed


def mean_top1(collab: Collaboration, steps: int = 16) -> float:
    """Mean top-1 prob of the base model over a short greedy continuation: how peaked its distributions are."""
    params = SamplingParams(max_new_tokens=steps, temperature=0, seed=0)
    events = list(lockstep(collab.pair, collab.requests([PROMPT], 1, params, seed=0), get_router("base"), params))
    return float(torch.cat([e.base_top1_prob for e in events]).mean())


def per_step(fn, short: int, long: int, repeats: int) -> float:
    """Median over repeats of the marginal cost of one step, in seconds."""
    fn = synced(fn)
    fn(short)  # warm-up
    return statistics.median((fn(long) - fn(short)) / (long - short) for _ in range(repeats))


def random_pair_like(shape_dir: str, settings: list[str], out_dir: str, peak: float,
                     adapter: bool = False) -> tuple[str, str]:
    """Save two random-initialised models (seeds 0 and 1) with shape_dir's configuration and tokenizer, or
    (`adapter`) one and a random rank-16 LoRA adapter on it (the embedded adapter's rank and layers).

    The (tied) embeddings are multiplied by `peak`: at the default initialisation every next-token
    distribution is nearly flat over the vocabulary, which no trained model produces and which sends
    top-p / min-p sampling down its slow full-sort path. The label prints the resulting mean top-1 prob."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(shape_dir)
    for setting in settings:
        key, _, value = setting.partition("=")
        setattr(config, key, json.loads(value))
        if key == "num_hidden_layers" and hasattr(config, "layer_types"):
            pattern = getattr(config, "_sliding_window_pattern", 6)  # Gemma 3: every 6th layer is global
            config.layer_types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                                  for i in range(config.num_hidden_layers)]
    tokenizer = AutoTokenizer.from_pretrained(shape_dir)
    paths = []
    for seed in (0,) if adapter else (0, 1):
        torch.manual_seed(seed)
        path = f"{out_dir}/random-{seed}"
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(peak)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(path)
    if adapter:
        from baco.testing import make_tiny_adapter

        paths.append(str(make_tiny_adapter(f"{out_dir}/adapter", paths[0], seed=1, rank=16)))
    return paths[0], paths[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base")
    parser.add_argument("--aligned")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, nargs=2, default=[8, 72], metavar=("T1", "T2"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", help="time random-initialised models with this folder's config and tokenizer")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON", help="config changes for --shape")
    parser.add_argument("--peak", type=float, default=4.0, help="--shape: embedding scale (peaked distributions)")
    parser.add_argument("--hf", nargs="*", default=["eager"], choices=["eager", "static"],
                        help="also time transformers generate of the base model (static: compiled, ~1 min per batch)")
    parser.add_argument("--one-forward", default="off", choices=["auto", "on", "off"],
                        help="an adapter pair as two models (off, the default here) or as rows of one forward "
                        "(on; benchmarks/cpu_backends.py compares the CPU paths)")
    parser.add_argument("--compile", action="store_true",
                        help="run every engine's forwards through torch.compile (`--compile`; compiling is not timed)")
    parser.add_argument("--penalties", action="store_true",
                        help="also time the lockstep step with repetition, presence and frequency penalties on "
                        "(column 'penalised ms', and its ratio to the plain step)")
    parser.add_argument("--logit-bias", action="store_true",
                        help="also time the lockstep step with a logit bias on 300 tokens on every row (column "
                        "'biased ms', and its ratio to the plain step)")
    parser.add_argument("--profile", action="store_true",
                        help="then print where lockstep steps at the largest batch spend their time: operators "
                        "(torch.profiler) and, on the CPU, the Python between them (cProfile)")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.shape:
        base, aligned = random_pair_like(args.shape, args.set, tempfile.mkdtemp(prefix="baco-bench-"), args.peak,
                                         adapter=args.one_forward == "on")
        label = f"random weights shaped like {args.shape} {' '.join(args.set)}".strip()
        label += " + a random rank-16 LoRA adapter, one forward" if args.one_forward == "on" else ""
    elif args.base and args.aligned:
        base, aligned, label = args.base, args.aligned, f"{args.base} + {args.aligned}"
    else:
        from baco.testing import make_tiny_pair

        base, aligned = make_tiny_pair(tempfile.mkdtemp(prefix="baco-bench-"))
        label = "tiny random pair (Llama, hidden 32, 2 layers, vocab 512)"
    collab = Collaboration.from_pretrained(base, aligned, dtype=args.dtype, device=args.device,
                                           one_forward=args.one_forward, compile=args.compile)
    without_stops(collab)
    t1, t2 = args.steps
    weights = list(collab.pair.base.model.parameters())
    print(f"pair: {label} ({sum(w.numel() for w in weights) / 1e6:.0f}M parameters each; "
          f"{mean_top1(collab):.2f} mean base top-1 prob); device {collab.pair.base.device}, dtype {weights[0].dtype}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    engine = Engine(collab.pair, get_router("p-punc:0.5"), max_batch=2, max_len=64)
    for request in collab.requests([PROMPT], 2, SamplingParams(max_new_tokens=12, seed=0), seed=0):
        engine.add(request, SamplingParams(max_new_tokens=12, seed=0))
    for _ in engine.run():
        pass
    print(f"engine: graphs={engine.graphs} compiled={engine.compiled} sync_free={engine.sync_free} pipelined={engine.pipelined} "
          f"stats={engine.stats}" + (f" capture failed: {engine.capture_error}" if engine.capture_error else ""))
    hf_columns = "".join(f" {'hf ' + kind + ' ms':>14}" for kind in args.hf)
    extras = {name: knobs for name, knobs, on in [("penalised", PENALTIES, args.penalties),
                                                   ("biased", {"logit_bias": biases(collab.pair.vocab_size)},
                                                    args.logit_bias)] if on}
    extra_columns = "".join(f" {name + ' ms':>12} {'x plain':>7}" for name in extras)
    print(f"{'batch':>5} {'lockstep ms':>12} {'base ms':>8} {'aligned ms':>10} {'ratio':>6} {'tok/s':>8}{hf_columns}"
          f"{extra_columns}")
    for batch in args.batch:
        chunk, turns = max(1, (t2 - t1) // 4), 4 * args.repeats  # short turns, interleaved
        engines = {"lockstep": running_engine(collab, collab.pair, "p-punc:0.5", batch, chunk * turns),
                   "base": running_engine(collab, solo(collab, "base"), "base", batch, chunk * turns),
                   "aligned": running_engine(collab, solo(collab, "aligned"), "aligned", batch, chunk * turns)}
        for name, knobs in extras.items():
            engines[name] = running_engine(collab, collab.pair, "p-punc:0.5", batch, chunk * turns, **knobs)
        timed = steady_steps(engines, chunk, turns)
        lock, base_t, aligned_t = timed["lockstep"], timed["base"], timed["aligned"]
        hf = [per_step(lambda n: time_hf_generate(collab, "base", batch, n, kind == "static"), t1, t2, args.repeats)
              for kind in args.hf]
        print(f"{batch:>5} {lock * 1e3:>12.2f} {base_t * 1e3:>8.2f} {aligned_t * 1e3:>10.2f} "
              f"{lock / (base_t + aligned_t):>6.2f} {batch / lock:>8.0f}" + "".join(f" {t * 1e3:>14.2f}" for t in hf)
              + "".join(f" {timed[name] * 1e3:>12.2f} {timed[name] / lock:>7.2f}" for name in extras),
              flush=True)
    if args.profile:
        profile(collab, max(args.batch), t2)


def profile(collab: Collaboration, batch: int, steps: int) -> None:
    """Where a lockstep step's time goes: operators by self time on the device (or CPU), then on the CPU
    the Python around them (cProfile: own time per function), each over `steps` steps of one engine."""
    import cProfile
    import pstats

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    engine = running_engine(collab, collab.pair, "p-punc:0.5", batch, 3 * steps)
    wall = steady_steps({"lockstep": engine}, steps, 1)["lockstep"]
    with torch_profile(activities=activities) as prof:
        steady_steps({"lockstep": engine}, steps, 1)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(f"profile: {steps} lockstep steps at batch {batch}, sorted by {key}")
    print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60))
    if cuda:
        return
    print(f"unprofiled: {wall * 1e3:.1f} ms/step. The Python between the operators (cProfile, functions by own "
          f"time over {steps} steps; C operators called from Python count as their own lines):")
    python = cProfile.Profile()
    python.runcall(steady_steps, {"lockstep": engine}, steps, 1)
    pstats.Stats(python).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
