"""Evaluation: diversity and quality metrics over samples, and Pareto Coverage / Dominance.

    from baco.evaluate import evaluate_files, list_metrics, pareto_aggregate
    result = evaluate_files(["samples.jsonl"], metrics="default")   # or `baco eval samples.jsonl`

Modules: registry (metrics by name), tokens, lexical, semantic, partitions, quality (the metrics),
resources (lazily loaded models), io (reading JSONL; external: lm-eval and batch files), runner (grouping, means,
table/JSON/CSV), pareto (Coverage / Dominance), embeddings (MiniLM sentence embeddings).
"""

from baco.evaluate.pareto import ParetoReport, pareto_aggregate
from baco.evaluate.registry import MetricSpec, get_metric, list_metrics, register_metric, resolve_metrics
from baco.evaluate.resources import EvalOptions, Resources
from baco.evaluate.runner import EvalResult, evaluate_files, evaluate_records

__all__ = ["EvalOptions", "EvalResult", "MetricSpec", "ParetoReport", "Resources", "evaluate_files",
           "evaluate_records", "get_metric", "list_metrics", "pareto_aggregate", "register_metric",
           "resolve_metrics"]
