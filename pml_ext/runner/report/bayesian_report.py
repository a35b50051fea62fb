"""The Bayesian search's summary: a table of trials (CSV + Markdown) and a plot."""
from __future__ import annotations

import csv
import itertools
import os
import statistics

__all__ = ["write_report"]


def _replace(path: str, write) -> None:
    """Write through a temporary name, then rename: a reader never sees half a file."""
    with open(path + ".tmp", "w", newline="") as f:
        write(f)
    os.replace(path + ".tmp", path)


def write_report(folder: str, trials: list[dict], best: dict, reproduced: list[dict], space) -> tuple[str, str]:
    """Write ``bayes_opt_summary.csv``, ``.md`` and ``bayes_opt_plot.png`` under ``folder``.

    Args:
        trials: ``[{"number", "folder", "params", "value"}]`` of the finished trials.
        best: the trial with the highest validation accuracy.
        reproduced: ``[{"folder", "seed", "value"}]`` of the best trial's reproductions.
        space: the search parameters (their names order the columns).

    Returns:
        ``(markdown table, plot path)``.
    """
    names = [p.name for p in space]
    header = ["trial", "folder"] + names + ["validation accuracy", "best"]
    rows = [[t["number"], t["folder"]] + [f"{t['params'][n]:.6g}" for n in names]
            + [f"{t['value']:.4f}", "*" if t is best else ""] for t in trials]
    _replace(os.path.join(folder, "bayes_opt_summary.csv"),
             lambda f: csv.writer(f).writerows([header] + rows))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    if reproduced:
        values = [r["value"] for r in reproduced]
        spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
        lines.append(f"\nReproductions of {best['folder']} ({len(values)} seeds): validation accuracy "
                     f"{statistics.mean(values):.4f}{spread}")
    table = "\n".join(lines)
    _replace(os.path.join(folder, "bayes_opt_summary.md"), lambda f: f.write(table + "\n"))
    return table, _plot(folder, trials, space)


def _plot(folder: str, trials: list[dict], space) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 + len(space)
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.5), squeeze=False)
    numbers = [t["number"] for t in trials]
    values = [t["value"] for t in trials]
    best_so_far = list(itertools.accumulate(values, max))
    ax = axes[0][0]
    ax.plot(numbers, values, "o", label="trial")
    ax.step(numbers, best_so_far, where="post", label="best so far")
    ax.set(xlabel="trial", ylabel="validation accuracy", title="Bayesian search")
    ax.legend()
    for ax, p in zip(axes[0][1:], space):
        ax.plot([t["params"][p.name] for t in trials], values, "o")
        ax.set(xlabel=p.name.rsplit(".", 1)[-1], ylabel="validation accuracy", title=p.name)
        if p.flag == "LOG_BAYESIAN":
            ax.set_xscale("log")
    fig.tight_layout()
    path = os.path.join(folder, "bayes_opt_plot.png")
    fig.savefig(path + ".tmp.png")
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
    return path
