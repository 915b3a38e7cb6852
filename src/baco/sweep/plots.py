"""Pareto plots (matplotlib, Agg backend): one grid per task and seed, a panel per (diversity, quality) plane.

Each method's configurations are drawn in one colour, its own front joined by a line; points on the
global front get a black ring. Axes show the raw metric values; an arrow in the label says which
way is better. The same results give the same bytes (the SVGs carry no date and no random ids), so that
results.json's digests of the plots (`results.write_outputs`) are reproducible.
"""

from __future__ import annotations

import io
from pathlib import Path

from baco.storage import atomic_write

COLUMNS = 5  # panels per row; the (diversity, quality) planes of one quality metric wrap over rows


def plot_name(task: str, seed) -> str:
    """A sweep's plot files: `pareto-TASK-seedS` (+ .png / .svg)."""
    return f"pareto-{task}-seed{seed}"


def plot_planes(summary: dict, out_dir: str | Path, *, name=plot_name) -> list[Path]:
    """One PNG and one SVG per (seed, task) of `summary["planes"]` ({seed: [plane dicts]}; seed None: one
    evaluation without seeds, titled without one), named `name(task, seed)`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = summary["methods"]
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    family = summary["families"]
    arrow = lambda name: "↑" if summary["directions"].get(name, True) else "↓"  # noqa: E731
    written = []
    for seed, planes in summary["planes"].items():
        for task in summary["tasks"]:
            mine = [p for p in planes if p["task"] == task]
            if not mine:
                continue
            xs, ys = summary["diversity"], summary["quality"]
            cols = min(COLUMNS, len(xs))
            per_y = -(-len(xs) // cols)  # rows of panels per quality metric
            fig, axes = plt.subplots(per_y * len(ys), cols, figsize=(3.0 * cols, 2.6 * per_y * len(ys) + 0.8),
                                     squeeze=False)
            for ax in axes.flat:
                ax.set_visible(False)
            for plane in mine:
                i = xs.index(plane["x"])
                ax = axes[ys.index(plane["y"]) * per_y + i // cols][i % cols]
                ax.set_visible(True)
                for method in methods:
                    configs = [c for c in plane["raw"] if family.get(c, c) == method]
                    if not configs:
                        continue
                    ax.scatter([plane["raw"][c][0] for c in configs], [plane["raw"][c][1] for c in configs],
                               s=14, color=colours[method], label=method, zorder=3)
                    front = sorted(plane["fronts"].get(method, []), key=lambda c: plane["raw"][c][0])
                    if len(front) > 1:
                        ax.plot([plane["raw"][c][0] for c in front], [plane["raw"][c][1] for c in front],
                                color=colours[method], linewidth=0.8, zorder=2)
                for c in plane["global_front"]:
                    ax.scatter([plane["raw"][c][0]], [plane["raw"][c][1]], s=40, facecolors="none",
                               edgecolors="black", linewidths=0.8, zorder=4)
                ax.set_xlabel(f"{plane['x']} {arrow(plane['x'])}", fontsize=7)
                ax.set_ylabel(f"{plane['y']} {arrow(plane['y'])}", fontsize=7)
                ax.tick_params(labelsize=6)
            handles = [plt.Line2D([], [], marker="o", linestyle="", color=colours[m], label=m) for m in methods]
            which = task if seed is None else f"{task} (seed {seed})"
            fig.suptitle(f"{which}: configurations per method; ringed = global Pareto front", fontsize=10, y=0.998)
            fig.legend(handles=handles, loc="upper center", ncol=min(len(methods), 10), fontsize=8, frameon=False,
                       bbox_to_anchor=(0.5, 0.985))
            top = 1 - 0.75 / fig.get_figheight()
            fig.tight_layout(rect=(0, 0, 1, top))
            for suffix in ("png", "svg"):
                path = out / f"{name(task, seed)}.{suffix}"
                image = io.BytesIO()
                with matplotlib.rc_context({"svg.hashsalt": "baco"}):  # the same SVG ids every time, not random
                    fig.savefig(image, format=suffix, dpi=110, metadata={"Date": None} if suffix == "svg" else None)
                written.append(atomic_write(path, image.getvalue()))
            plt.close(fig)
    return written
