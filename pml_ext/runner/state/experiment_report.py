"""The end-of-run outputs: a metrics-per-epoch table and PNG plots in the experiment folder."""
from __future__ import annotations

import os
from typing import Sequence

__all__ = ["ExperimentReport"]

ITERATION = "~iteration~"  # record-keeper's column for the x value of every record
# record-keeper column -> table header, in display order
_SHORT_NAMES = {
    "precision_at_1": "P@1",
    "recall_at_4": "R@4",
    "mean_average_precision_at_r": "MAP@R",
    "r_precision": "R-prec",
    "NMI": "NMI",
    "AMI": "AMI",
}


def _strip_level(column: str) -> str:
    """``precision_at_1_level0`` -> ``precision_at_1`` (PML's tester suffixes every metric)."""
    base, sep, level = column.rpartition("_level")
    return base if sep and level.isdigit() else column


def setting_label(name: str) -> str:
    """A controlled setting's axis label: ``"<controller>_<attribute>"`` -> ``"<attribute> (controller
    <controller>)"``, or just the attribute when the controller is named after it (``kappa_kappa``)."""
    for cut in range(1, len(name)):
        controller, attribute = name[:cut], name[cut + 1:]
        if name[cut] == "_" and controller == attribute:
            return attribute
    controller, _, attribute = name.partition("_")
    return f"{attribute} (controller {controller})" if attribute else name


class ExperimentReport:
    """Collects per-split-scheme histories and writes the table and plots.

    Each scheme adds ``accuracies`` (``{column: [values per row]}`` as read back from
    record-keeper's SQLite file, including ``epoch``), ``losses`` (``{"total_loss": [...],
    "iteration": [...]}``) and ``settings`` (``[{"epoch": e, "<controller>_<attr>": v}]``).
    """

    def __init__(self, primary_metric: str):
        self.primary_metric = primary_metric
        self.schemes: dict[str, dict] = {}

    def add(self, scheme: str, accuracies: dict, losses: dict, settings: Sequence[dict]) -> None:
        self.schemes[scheme] = {"accuracies": accuracies, "losses": losses, "settings": list(settings)}

    def rows(self) -> list[dict]:
        """One dict per (scheme, epoch): ``{"scheme", "epoch", "P@1", "MAP@R", ...}``."""
        out = []
        for scheme, data in self.schemes.items():
            acc = data["accuracies"]
            if not acc or "epoch" not in acc:
                continue
            columns = {_strip_level(c): c for c in acc if c not in ("epoch", "id", ITERATION) and not c.startswith("AVERAGE_")}
            names = [n for n in _SHORT_NAMES if n in columns] + sorted(
                n for n in columns if n not in _SHORT_NAMES and not n.startswith("best_"))
            latest: dict[int, dict] = {}
            for i, epoch in enumerate(acc["epoch"]):
                row = {"scheme": scheme, "epoch": int(epoch)}
                for n in names:
                    value = acc[columns[n]][i]
                    row[_SHORT_NAMES.get(n, n)] = float(value) if isinstance(value, (int, float)) else value
                latest[int(epoch)] = row  # a re-evaluated epoch keeps its most recent record, as in PB
            out.extend(latest[e] for e in sorted(latest))
        return out

    def table(self) -> str:
        """The metrics per epoch as aligned text (empty string when nothing was evaluated)."""
        import pandas as pd

        rows = self.rows()
        if not rows:
            return ""
        frame = pd.DataFrame(rows)
        if frame["scheme"].nunique() == 1:
            frame = frame.drop(columns="scheme")
        return frame.to_string(index=False, float_format=lambda v: f"{v:.4f}")

    def write(self, folder: str) -> list[str]:
        """Write ``metrics_per_epoch.csv`` and the PNG plots to ``folder``; returns the paths."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import pandas as pd

        from matplotlib.ticker import MaxNLocator

        from .checkpoint_store import atomic_write

        os.makedirs(folder, exist_ok=True)
        written = []
        rows = self.rows()
        if rows:
            path = os.path.join(folder, "metrics_per_epoch.csv")
            atomic_write(path, lambda f: pd.DataFrame(rows).to_csv(f, index=False), mode="w")
            written.append(path)

        primary = _SHORT_NAMES.get(self.primary_metric, self.primary_metric)
        plots = [
            ("primary_metric.png", "epoch", primary,
             {s: ([r["epoch"] for r in rows if r["scheme"] == s], [r.get(primary) for r in rows if r["scheme"] == s])
              for s in self.schemes}),
            ("loss.png", "iteration", "total loss",
             {s: (d["losses"].get(ITERATION, []), d["losses"].get("total_loss", []))
              for s, d in self.schemes.items()}),
        ]
        setting_names = sorted({k for d in self.schemes.values() for row in d["settings"] for k in row if k != "epoch"})
        for name in setting_names:
            plots.append((f"controller_{name}.png", "epoch", setting_label(name),
                          {s: ([r["epoch"] for r in d["settings"] if name in r],
                               [r[name] for r in d["settings"] if name in r]) for s, d in self.schemes.items()}))
        for filename, xlabel, ylabel, series in plots:
            series = {s: (x, y) for s, (x, y) in series.items() if len(x) and all(v is not None for v in y)}
            if not series:
                continue
            fig, ax = plt.subplots(figsize=(6, 4))
            for label, (x, y) in series.items():
                ax.plot(x, y, marker="o" if len(x) < 50 else None, label=label)
            ax.set_title(f"{os.path.basename(os.path.normpath(folder))}: {ylabel} per {xlabel}", fontsize=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and iterations are whole numbers
            ax.grid(True, alpha=0.3)
            if len(series) > 1:
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
            path = os.path.join(folder, filename)
            atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))
            plt.close(fig)
            written.append(path)
        return written
