"""`baco report RUN_DIR`: one self-contained HTML page of a sweep, viewable offline.

The page holds the Coverage / Dominance table, the Pareto plot grids (PNG, base64-inlined) and,
per task, sample texts of every method with each token (or span of text, for a cross-tokenizer
pair) coloured by the model that wrote it (base yellow, aligned cyan, mixture magenta); hovering a token shows its writer, the reason, the
base model's top-1 probability and entropy. No scripts, no external files.

The samples shown are those the tables were made from, selected as the sweep's evaluation selects
them: the planned samples of the cells of the configuration in `results.json`, each once. Samples
of cells that configuration no longer lists (a method removed from the YAML) are left out, and the
page says how many. The plots shown are those results.json lists; when table.md, a plot or the samples
are not those results.json was written with (an evaluation killed midway, a plan changed since), the page
says so at the top, and so does a warning.
"""

from __future__ import annotations

import base64
import html
import json
import warnings
from pathlib import Path

from baco.display import writers
from baco.errors import BacoError, OutputError
from baco.evaluate.io import sweep_seed
from baco.storage import atomic_write, check_output_file, same_file
from baco.sweep import ledger
from baco.sweep.lock import HOLDER_NAME, LOCK_NAME
from baco.sweep.results import PLOTS, RESULTS, TABLE, evaluated_cells, listed_plots, outputs_problems, stale_line
from baco.sweep.store import SampleStore

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.sample{border:1px solid #ddd;border-radius:6px;padding:.5rem .8rem;margin:.4rem 0;white-space:pre-wrap}
.meta{color:#666;font-size:.85em}.tok-base{background:#ffe08a}.tok-aligned{background:#a8e6f0}
.tok-mix{background:#f0b8f0}.legend span{padding:0 .4rem;margin-right:.5rem}
.stale{background:#fde2e2;border:1px solid #e0a0a0;border-radius:6px;padding:.5rem .8rem}
"""


def _markdown_table(text: str, table_id: str = "results") -> str:
    rows = [r.strip().strip("|").split("|") for r in text.strip().splitlines() if r.strip()]
    rows = [r for r in rows if not set("".join(r)) <= set("-: ")]
    if not rows:
        return ""
    head, body = rows[0], rows[1:]
    out = [f"<table id='{table_id}'><tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr>"]
    for row in body:
        out.append("<tr>" + "".join(f"<td>{html.escape(_unbold(c))}</td>" for c in row) + "</tr>")
    return "\n".join(out) + "</table>"


def _unbold(cell: str) -> str:
    """A table.md cell's text without the bold markers around the averages; a method's own '*' kept."""
    text = cell.strip()
    return text[2:-2] if len(text) > 4 and text.startswith("**") and text.endswith("**") else text


def _markdown_blocks(text: str) -> str:
    """table.md: its tables (the main one gets id 'results') and the lines between them as paragraphs."""
    parts, tables = [], 0
    for block in text.strip().split("\n\n"):
        if block.lstrip().startswith("|"):
            parts.append(_markdown_table(block, "results" if tables == 0 else f"results-{tables}"))
            tables += 1
        elif block.strip():
            parts.append(f"<p>{html.escape(block.strip())}</p>")
    return "\n".join(parts)


def token_spans(row: dict) -> str:
    """The sample's visible text as <span>s, one per token, coloured by writer, with a hover title."""
    from baco.decode.records import Sample
    from baco.display import segments
    from baco.prompts import PromptFormat

    stops = PromptFormat().stop_strings + tuple((row.get("sampling") or {}).get("stop") or ())
    spans = []
    for i, visible, source in segments(Sample.from_dict(row), stops):
        title = (f"{source} ({row['reasons'][i]}{', span' if row.get('unit') == 'span' else ''}): "
                 f"base top-1 {row['base_top1_prob'][i]:.2f}, "
                 f"base entropy {row['base_entropy'][i]:.2f} nats, aligned top-1 {row['aligned_top1_prob'][i]:.2f}")
        spans.append(f"<span class='tok-{html.escape(source)}' title='{html.escape(title, quote=True)}'>"
                     f"{html.escape(visible)}</span>")
    return "".join(spans)


def pick_samples(rows: list[dict], per_method: int = 2) -> dict[str, dict[str, list[dict]]]:
    """Per task, per method: the samples of its first prompt from one configuration (the median one)."""
    out: dict[str, dict[str, list[dict]]] = {}
    configs: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        names = configs.setdefault((r["task"], r["method"]), [])
        if r["config"] not in names:
            names.append(r["config"])
    for (task, method), names in configs.items():
        config = names[len(names) // 2]
        chosen = [r for r in rows if r["task"] == task and r["config"] == config and r["prompt_index"] == 0]
        if not chosen:  # a run cut short: this configuration has no sample of the first prompt yet
            out.setdefault(task, {})[method] = []
            continue
        first = min(chosen, key=lambda r: (sweep_seed(r) is None, sweep_seed(r) or 0, r["cell"]))["cell"]  # lowest seed
        chosen = sorted((r for r in chosen if r["cell"] == first), key=lambda r: r["sample_index"])
        out.setdefault(task, {})[method] = chosen[:per_method]
    return out


def shown_rows(run: Path, summary: dict) -> tuple[list[dict], str | None, str | None, str | None]:
    """The samples the tables were made from; when some stored samples are not among them, a line saying
    how many; when lines of samples.jsonl could not be read, a line saying how many (`_skipped_line`); and what
    their cells ran with (`_numerics_line`).
    The selection is the sweep's evaluation's (`ledger.audit` of the configuration's planned cells): the
    configuration is that of results.json, else every cell planned in the run directory."""
    cells = evaluated_cells(summary)
    lister = "plan.jsonl" if cells is None else "the configuration of results.json"
    plan = ledger.read_plan(run)
    if not plan:  # a run directory written before plans were recorded: select by cell alone
        store = SampleStore(run / ledger.SAMPLES)
        scan = store.scan()  # once: the rows and the lines that hold none
        stored = store.read(scan)
        rows = [r for r in stored if cells is None or r["cell"] in cells]
        return (rows, _left_out_line(len(stored) - len(rows), 0, lister), _skipped_line(run, ledger.store_problems(scan)),
                None)
    result = ledger.audit(run, plan if cells is None else {key: ids for key, ids in plan.items() if key in cells})
    audits = result.cells.values()
    return (result.rows, _left_out_line(sum(result.strangers.values()), sum(c.unplanned for c in audits), lister,
                                        outside=sum(c.outside for c in audits)),
            _skipped_line(run, result.problems), _numerics_line(result))


def _numerics_line(result: ledger.Audit) -> str | None:
    """What the cells' rounding depended on (library versions, threads, CPU, GPU: `baco.numerics`), the same for
    all of them and where they differ, as `baco check` notes it; None for runs from before baco recorded it."""
    shared, mixed = result.shared_numerics(), result.mixed_numerics()
    parts = [f"the cells ran with {shared}"] if shared else []
    parts += [f"they differ in {mixed}, so their samples may round differently (docs/engine.md, \"Randomness\")"] \
        if mixed else []
    return "; ".join(parts) + "." if parts else None


def _skipped_line(run: Path, problems: list[str]) -> str | None:
    """The samples.jsonl lines the page could not show (torn, corrupt, not samples), counted and the first named."""
    if not problems:
        return None
    lines = "1 corrupt line" if len(problems) == 1 else f"{len(problems)} corrupt lines"
    return f"{lines} skipped (first: {problems[0]}); run `baco check {run}`"


def _left_out_line(other_cells: int, other_settings: int, lister: str, outside: int = 0) -> str | None:
    """The stored samples the tables were not made from, counted by why: another cell, other settings, or outside
    their cell's latest plan (a sweep rerun with a smaller n keeps the samples it no longer asks for)."""
    parts = [f"{other_cells} of cells {lister} does not list"] if other_cells else []
    parts += [f"{other_settings} made with other settings than their cell's plan"] if other_settings else []
    parts += [f"{outside} outside their cell's latest plan (an earlier run asked for more)"] if outside else []
    total = other_cells + other_settings + outside
    return f"{total} stored samples left out: {'; '.join(parts)}." if parts else None


def _metric_names(summary: dict, axis: str) -> str:
    """The axis's metric names as results.json lists them; a hand-edited value that is not a list of names
    shows as such rather than failing the report."""
    names = summary.get(axis, [])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return f"(unreadable in results.json: {type(names).__name__})"
    return ", ".join(names)


def read_results(run: Path) -> dict | None:
    """The run directory's results.json (None: there is none); one that cannot be read is a BacoError."""
    results = run / "results.json"
    if not results.is_file():
        return None
    try:
        summary = json.loads(results.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise BacoError(f"{results} cannot be read ({error}); rerun `baco sweep` to rewrite it") from None
    if not isinstance(summary, dict):
        raise BacoError(f"{results} is not a sweep's results (a JSON object), it holds a {type(summary).__name__}; "
                        f"rerun `baco sweep` to rewrite it")
    return summary


def stale_outputs(run: Path, summary: dict | None, rows: list[dict], results_dir: Path | None = None) -> str | None:
    """A line saying how results.json, table.md, the plots (in `results_dir`, default the run directory) and the
    samples the page shows (`rows`) disagree (an evaluation killed midway, a plan changed since it ran); None when
    they belong together."""
    problems = outputs_problems(results_dir or run, summary, rows)
    return stale_line(problems, run, results_dir) if problems else None


def build_report(run_dir: str | Path, *, results_dir: str | Path | None = None, title: str | None = None,
                 per_method: int = 2) -> str:
    """The page of a run directory: its samples, with the table, plots and results.json of `results_dir` (where
    `baco sweep --results DIR` wrote them; default the run directory)."""
    run = Path(run_dir)
    if not (run / "samples.jsonl").is_file():
        raise BacoError(f"{run} holds no samples.jsonl: run `baco sweep` first")
    where = Path(results_dir) if results_dir is not None else run
    if results_dir is not None and not (where / RESULTS).is_file():
        raise BacoError(f"--results {str(results_dir)!r} holds no {RESULTS}: give the folder `baco sweep --results` "
                        f"wrote (its {RESULTS}, {TABLE} and {PLOTS}/)")
    results = read_results(where)
    summary = results or {}
    rows, left_out, skipped, ran_with = shown_rows(run, summary)
    stale = stale_outputs(run, results, rows, Path(results_dir) if results_dir is not None else None)
    for line in (stale, skipped):
        if line:
            warnings.warn(line, stacklevel=2)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title or run.name)}</title>"
             f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title or run.name)}</h1>"]
    if stale:
        parts.append(f"<p class='stale' id='stale'>{html.escape(stale)}</p>")
    if (where / TABLE).is_file():
        parts += ["<h2>Coverage and Dominance</h2>",
                  "<p class='meta'>Coverage: area dominated by the method's Pareto front / area dominated by the "
                  "global front, averaged over (diversity, quality) planes; Dominance: share of the global front's "
                  "points that are the method's. Mean ± std over seeds.</p>",
                  _markdown_blocks((where / TABLE).read_text(encoding="utf-8"))]
    if summary:
        parts.append(f"<p class='meta'>diversity metrics: {html.escape(_metric_names(summary, 'diversity'))}; "
                     f"quality metrics: {html.escape(_metric_names(summary, 'quality'))}</p>")
    plots = listed_plots(where, results)
    if plots:
        parts.append("<h2>Pareto planes</h2>")
        for plot in plots:
            data = base64.b64encode(plot.read_bytes()).decode()
            parts.append(f"<figure><img class='plot' alt='{html.escape(plot.stem)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption class='meta'>{html.escape(plot.stem)}</figcaption></figure>")
    parts += ["<h2>Samples</h2>", "<p class='legend'><span class='tok-base'>base-written</span>"
              "<span class='tok-aligned'>aligned-written</span><span class='tok-mix'>mixture</span> "
              "(hover a token for its writer, reason, base top-1 prob and entropy)</p>"]
    if left_out:
        parts.append(f"<p class='meta' id='left-out'>{html.escape(left_out)}</p>")
    if skipped:
        parts.append(f"<p class='meta' id='skipped'>{html.escape(skipped)}</p>")
    if ran_with:
        parts.append(f"<p class='meta' id='numerics'>{html.escape(ran_with)}</p>")
    for task, methods in pick_samples(rows, per_method).items():
        first = next((samples[0] for samples in methods.values() if samples), {})
        parts.append(f"<h3>{html.escape(task)}: {html.escape(first.get('prompt', ''))}</h3>")
        if isinstance(first.get("messages"), list) and len(first["messages"]) > 1:  # the turns it continues
            turns = " · ".join(f"{m.get('role')}: {m.get('content')}" for m in first["messages"][:-1]
                               if isinstance(m, dict))
            parts.append(f"<p class='meta'>continuing: {html.escape(turns)}</p>")
        for method, samples in methods.items():
            for s in samples:
                share, mixed = (s["sources"].count(who) / max(len(s["sources"]), 1) for who in ("base", "mix"))
                parts.append(f"<div class='sample'><div class='meta'>{html.escape(s['config'])} · sample "
                             f"{s['sample_index']} · {writers(share, mixed)} · {s['finish_reason']}</div>"
                             f"{token_spans(s)}</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


# What a sweep writes in its run directory (ledger, lock, results): never written over by the page
RUN_FILES = (ledger.SAMPLES, ledger.PLAN, ledger.CELLS, ledger.REJECTED, "quality-scores.jsonl", RESULTS, TABLE,
             LOCK_NAME, HOLDER_NAME)


def check_report_out(run_dir: Path, out: str | Path) -> Path:
    """`--out` for the page: a file baco may write (`check_output_file`) that is none of the run directory's own
    files (through any link): `--out RUN/samples.jsonl` would replace hours of samples with HTML."""
    path = check_output_file(out, "--out")
    plots = run_dir / PLOTS
    own = next((name for name in RUN_FILES if same_file(path, run_dir / name)), None)
    if own is None and path.exists() and plots.is_dir() and same_file(path.resolve().parent, plots):
        own = f"{PLOTS}/{path.name}"
    if own is not None:
        raise OutputError(f"--out {str(out)!r} is {str(run_dir / own)!r}, a file of the run directory that the "
                          f"page would replace; give --out another name (default: {run_dir / 'report.html'})")
    return path


def write_report(run_dir: str | Path, out: str | Path | None = None, *, results_dir: str | Path | None = None,
                 **kwargs) -> Path:
    """Write the page (`build_report`) to `out`, by default report.html beside the results it shows."""
    if out:
        path = check_report_out(Path(run_dir), out)
        if results_dir is not None:
            check_report_out(Path(results_dir), out)
    else:
        path = Path(results_dir if results_dir is not None else run_dir) / "report.html"
    return atomic_write(path, build_report(run_dir, results_dir=results_dir, **kwargs))
