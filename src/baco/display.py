"""Show a sample on a terminal: base-written and aligned-written tokens (or spans of text) in two colours."""

from __future__ import annotations

import os
import re
import sys
import unicodedata

from baco.decode.records import BASE, MIX, SPAN, Sample, held, stop_at

COLOURS = {BASE: "\033[33m", "aligned": "\033[36m", MIX: "\033[35m"}  # base yellow, aligned cyan, mix magenta
RESET = "\033[0m"
LEGEND = f"{COLOURS[BASE]}base-written{RESET} / {COLOURS['aligned']}aligned-written{RESET}"


def text_width(text: str) -> int:
    """The columns a terminal gives `text`: two for East Asian wide and fullwidth characters (Unicode's East Asian
    Width, UAX #11: CJK ideographs, kana, hangul), none for combining marks and zero-width format characters, one
    for the others. Tables padded by `len` misalign a name such as `中文`."""
    return sum(0 if unicodedata.category(char) in ("Mn", "Me", "Cf") else
               2 if unicodedata.east_asian_width(char) in ("W", "F") else 1 for char in text)


def is_terminal(stream=None) -> bool:
    stream = sys.stdout if stream is None else stream  # looked up now: sys.stdout may have been replaced
    return hasattr(stream, "isatty") and stream.isatty()


def use_colour(mode: str, stream=None) -> bool:
    """`auto`: colour on a terminal unless NO_COLOR is set; `always` / `never` force it."""
    if mode == "always":
        return True
    if mode == "never" or os.environ.get("NO_COLOR"):
        return False
    return is_terminal(stream)


def segments(sample: Sample, stop_strings: tuple[str, ...] = ()) -> list[tuple[int, str, str]]:
    """(token index, text, source) per token as in `sample.text`: cut at the first stop string (that ends past the
    text of the sampling's `min_tokens` tokens), leading whitespace stripped (tokens holding only whitespace at the
    start are left out)."""
    full = "".join(sample.token_texts)
    after = held(sample.token_texts, int((sample.sampling or {}).get("min_tokens") or 0))
    cut = stop_at(full, stop_strings, after)
    cut = len(full) if cut is None else cut
    out, length = [], 0
    for index, (text, source) in enumerate(zip(sample.token_texts, sample.sources)):
        if length >= cut:
            break
        out.append((index, text[: cut - length], source))
        length += len(text)
    while out and not out[0][1].strip():
        out.pop(0)
    if out:
        out[0] = (out[0][0], out[0][1].lstrip(), out[0][2])
    return out


# C0 controls but tab and newline, DEL, C1 controls: ESC starts a terminal's escape sequences, CR overwrites a line
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Text for a terminal: control characters other than tab and newline shown as `\\xNN`, so that a sample
    holding an escape sequence (random and small models write them) cannot move the cursor, recolour or clear
    the screen. The samples themselves (`--out`) keep their text as written."""
    return _CONTROLS.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


def render(sample: Sample, *, colour: bool, stop_strings: tuple[str, ...] = (), terminal: bool = False) -> str:
    """The text, each run of one writer's tokens or spans in its colour; `terminal`: control characters shown
    (`printable`) rather than sent to the terminal."""
    shown = printable if terminal else (lambda text: text)
    if not colour:
        return shown(sample.text)
    runs: list[list[str]] = []
    for _, text, source in segments(sample, stop_strings):
        if runs and runs[-1][0] == source:
            runs[-1][1] += text
        else:
            runs.append([source, text])
    return "".join(f"{COLOURS.get(source, '')}{shown(text)}{RESET}" for source, text in runs)


def header(sample: Sample) -> str:
    size = (f"{len(sample.text)} characters in {len(sample.token_texts)} spans "
            f"({len(sample.base_token_ids)} base / {len(sample.aligned_token_ids)} aligned tokens)"
            if sample.unit == SPAN else f"{sample.num_tokens} tokens")
    return (f"[prompt {sample.prompt_index} · sample {sample.sample_index}] {size}, "
            f"{writers(sample.base_share, sample.mix_share)}, {sample.tokens_per_s:.1f} tok/s, "
            f"finish: {sample.finish_reason}")


def writers(base: float, mix: float) -> str:
    """Who wrote the text, in words: the base model's share, and a mixture's where there is one (a soft method's
    tokens are both models': 'base wrote 0%' alone would read as the aligned model's)."""
    return f"base wrote {base:.0%}" + (f", a mixture of both {mix:.0%}" if mix else "")
