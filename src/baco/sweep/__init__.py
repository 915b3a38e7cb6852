"""`baco sweep`: methods x knob values x tasks x seeds on one engine, resumable, evaluated, plotted."""

import contextlib

from baco.sweep.config import Cell, Configuration, SweepConfig, SweepConfigError, load_config, parse_config
from baco.sweep.lock import RunLock
from baco.sweep.run import Engines, generate_missing, run_cells
from baco.sweep.store import SampleStore


def _cluster(options):
    """One connection to the Ray cluster for generation and evaluation (nothing without options)."""
    if options is None:
        return contextlib.nullcontext()
    from baco.cluster.pool import connected

    return connected(options)


def run_sweep(config: SweepConfig, out_dir, engines: Engines | None = None, *, evaluate: bool = True,
              progress: bool = True, results_dir=None, ray=None) -> dict:
    """Generate what is missing, then evaluate the config's cells; returns the summary (see results.py).

    The run directory is locked for the whole run (one writer). Evaluation outputs go to
    `results_dir` (default: `out_dir`), so that two configurations sharing one samples file (e.g.
    one seed and three seeds) keep their own tables. Quality scores are cached in
    `out_dir/quality-scores.jsonl` (delete it after changing a quality metric's code).
    `ray`: a `baco.cluster.RayOptions` to generate, score and embed on Ray workers (this process
    still writes every file); None runs here.
    """
    with RunLock(out_dir), _cluster(ray):
        if ray is None:
            counts = generate_missing(config, out_dir, engines, progress=progress)
        else:
            from baco.cluster.sweep import generate_missing_on_ray

            counts = generate_missing_on_ray(config, out_dir, ray, progress=progress)
        if not evaluate:
            return {"counts": counts}
        from baco.evaluate.resources import EvalOptions, Resources
        from baco.sweep import ledger
        from baco.sweep.results import metric_specs, summarise, sweep_records, write_outputs
        from baco.sweep.run import plan_sweep

        # quality scores (judge, fluency, reward, relevance) are kept beside the samples: evaluating
        # another seed subset or rerunning after a kill scores only what is new (the cache keys each score by
        # its model, so a config naming another judge scores afresh)
        resources = Resources(EvalOptions(score_cache=f"{out_dir}/quality-scores.jsonl", **config.evaluation))
        rows = ledger.audit(out_dir, plan_sweep(config)[1]).rows  # each planned sample once
        if ray is not None:  # quality scores into the cache, embeddings into `resources`, made on the cluster
            from baco.cluster.evaluate import prepare_on_ray

            prepare_on_ray(sweep_records(config, rows), metric_specs(config), resources, ray, progress=progress)
        summary = summarise(config, rows, progress=progress, resources=resources)
        summary["counts"] = counts
        write_outputs(summary, results_dir or out_dir)
        return summary


__all__ = ["Cell", "Configuration", "Engines", "RunLock", "SampleStore", "SweepConfig", "SweepConfigError",
           "load_config", "parse_config", "run_cells", "run_sweep"]
