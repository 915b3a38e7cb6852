"""baco on a Ray cluster: `baco generate --ray`, `baco sweep --ray` and the sweep's evaluation.

Work goes out in units (a sweep's cells, or shards of `baco generate`'s prompts) to Ray actors
that each hold one model pair, loaded once; results come back to this process, which alone
writes the output files, exactly as a local run writes them. Ray restarts a worker that dies and
reruns its unit; a sample that arrives twice is written once. Ray is an optional extra
(`pip install -e '.[ray]'`): nothing outside this package imports it. See docs/cluster.md.

    from baco.cluster import RayOptions, generate
    for sample in generate(prompts, base=..., aligned=..., router="p-punc:0.5", n=10,
                           sampling=SamplingParams(seed=0), options=RayOptions(address="auto")):
        ...
    run_sweep(load_config("configs/x.yaml"), "runs/x", ray=RayOptions(address="auto"))
"""

from baco.cluster.options import ClusterError, RayOptions


def generate(*args, **kwargs):
    """Collaboration.iter_generate on Ray workers: see baco.cluster.shards.generate."""
    from baco.cluster.shards import generate as on_ray

    return on_ray(*args, **kwargs)


__all__ = ["ClusterError", "RayOptions", "generate"]
