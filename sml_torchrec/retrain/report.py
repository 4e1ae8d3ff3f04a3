"""The per-period numbers of results.json as a CSV and a picture, next to results.json.

``results.csv``: one row per (protocol, strategy, tested period, metric), columns
``protocol, strategy, period, role, metric, value, size``: ``role`` is ``val`` or ``test``,
``metric`` every metric of the period's row in results.json (recall@K or hit@K, ndcg@K, and
any others), ``size`` the period's ``users`` (full protocol) or ``interactions``
(sampled); the same numbers as ``protocols.<p>.<strategy>.per_period`` in results.json. The
period's cold/warm groups follow as metrics ``<group>/<metric>`` (``cold_users/recall@20``),
``size`` being the group's.

``results.png``: recall@20 (full) or hit@20 (sampled) and NDCG@20 against the period, one
line per strategy, one row of panels per protocol; validation periods are shaded.
Drawn with matplotlib's Agg canvas, so no display is needed.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sml_torchrec.metrics import topk_metric

CSV_NAME = "results.csv"
PLOT_NAME = "results.png"
PLOT_K = 20
_SIZE = {"full": "users", "sampled": "interactions"}


def _metrics(row: dict) -> list[str]:
    """The metric keys of a per-period row: all but its period, role, size and groups."""
    return [k for k in row if k not in ("period", "role", "cold_warm", *_SIZE.values())]


def _csv_rows(protocol: str, name: str, row: dict) -> list[list]:
    """The CSV rows of one per-period row: its metrics, then each cold/warm group's."""
    size = _SIZE.get(protocol, "")
    out = [[protocol, name, row["period"], row["role"], k, repr(float(row[k])), row.get(size, "")]
           for k in _metrics(row)]
    for group, g in row.get("cold_warm", {}).items():
        out += [[protocol, name, row["period"], row["role"], f"{group}/{k}", repr(float(g[k])),
                 g.get(size, "")] for k in _metrics(g)]
    return out


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_csv(results: dict, path: str | Path) -> Path:
    """``results.csv`` (written atomically): see the module docstring."""
    path = Path(path)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["protocol", "strategy", "period", "role", "metric", "value", "size"])
    for protocol, strategies in results["protocols"].items():
        for name, r in strategies.items():
            for row in r["per_period"]:
                w.writerows(_csv_rows(protocol, name, row))
    _replace(path, buf.getvalue().encode())
    return path


def _panel(ax, strategies: dict, key: str, title: str) -> None:
    vals = set()
    for name, r in strategies.items():
        rows = r["per_period"]
        ax.plot([x["period"] for x in rows], [x[key] for x in rows], marker="o", ms=3,
                label=name)
        vals.update(x["period"] for x in rows if x["role"] == "val")
    if vals:
        ax.axvspan(min(vals) - 0.5, max(vals) + 0.5, color="0.9", zorder=0, label="validation")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("period")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)


def write_plot(results: dict, path: str | Path) -> Path:
    """``results.png`` (written atomically): see the module docstring."""
    path = Path(path)
    protocols = list(results["protocols"])
    fig = Figure(figsize=(10, 3.4 * len(protocols)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(protocols), 2, squeeze=False)
    for row, protocol in zip(axes, protocols):
        strategies = results["protocols"][protocol]
        what = "all items ranked" if protocol == "full" else "sampled negatives"
        for ax, metric in zip(row, (topk_metric(protocol), "ndcg")):
            _panel(ax, strategies, f"{metric}@{PLOT_K}", f"{protocol} protocol ({what})")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 7))
    fig.suptitle(f"{results.get('dataset', '')}: per tested period")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _replace(path, buf.getvalue())
    return path


def write_reports(results: dict, out: str | Path) -> tuple[Path, Path]:
    """``OUT/results.csv`` and ``OUT/results.png``."""
    out = Path(out)
    return write_csv(results, out / CSV_NAME), write_plot(results, out / PLOT_NAME)
