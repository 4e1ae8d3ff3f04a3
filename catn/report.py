"""What ``catn-train`` leaves in its run directory, and the printed tables.

``results`` is the dict :func:`catn.train.run` returns: ``results["eta"][η][method]`` holds
that method's test ``mse`` and ``mae`` (for CATN the mean over seeds, with ``mse_std`` and
``mse_per_seed``); ``results["scenario"]`` names the corpus.

Run directory (``--out``, default ``runs/catn-<scenario>``)::

    results.json        everything: config, per-η rows, CATN's training history per seed
    results.csv         eta, method, label, mse, mse_std, mae, seeds (one row per cell)
    mse_vs_eta.png      test MSE against η, one line per method (CATN with its spread)
    models/eta_<η>/     the best CATN of that η (lowest validation MSE over seeds):
                        manifest.json and one .npy per tensor (see :func:`save_model`)
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from recsys_common.files import write_json_atomic

MODEL_FORMAT = 1


def out_dir(cfg, scenario: str) -> str:
    """``cfg.out`` (a :class:`~catn.config.TrainConfig`), or ``runs/catn-<scenario>``."""
    return cfg.out or os.path.join("runs", "catn-" + "".join(
        ch if ch.isalnum() or ch in "-_." else "_" for ch in scenario))


def _cell(results: dict, eta: str, method: str, key: str) -> float | None:
    v = results["eta"][eta].get(method, {}).get(key)
    return v if v is not None and math.isfinite(v) else None


def _methods(results: dict) -> list[str]:
    methods: list[str] = []
    for e in results["eta"]:
        methods += [m for m in results["eta"][e] if m not in methods]
    return methods


def format_table(results: dict, metric: str, labels: dict[str, str]) -> str:
    """Paper-style table: rows methods, columns η (as percentages); a method trained with
    several seeds shows ``mean±std``."""
    etas, methods = list(results["eta"]), _methods(results)
    width = max([len(labels.get(m, m)) for m in methods] + [12])
    cw = 14 if len(results.get("seeds", ())) > 1 else 10
    corner = "Method \\ eta"
    head = f"{corner:<{width}}" + "".join(f"{float(e) * 100:>{cw - 1}g}%" for e in etas)
    seeds = results.get("seeds", [])
    what = (f"; CATN: mean±std over seeds {','.join(map(str, seeds))}" if len(seeds) > 1
            else f"; seed {seeds[0]}" if seeds else "")
    lines = [f"{metric.upper()} on cold-start users ({results['scenario']}{what})", head,
             "-" * len(head)]
    for m in methods:
        cells = []
        for e in etas:
            v, sd = _cell(results, e, m, metric), _cell(results, e, m, f"{metric}_std")
            text = "-" if v is None else f"{v:.4f}" + (f"±{sd:.4f}" if sd is not None else "")
            cells.append(f"{text:>{cw}}")
        lines.append(f"{labels.get(m, m):<{width}}" + "".join(cells))
    return "\n".join(lines)


def write_results(results: dict, out_dir: str | Path) -> Path:
    """Write ``OUT/results.json`` atomically (temp file + rename); ``catn-train`` has checked
    before any work that it may (see ``refuse_to_replace``)."""
    return write_json_atomic(Path(out_dir) / "results.json", results)


def results_csv(results: dict, labels: dict[str, str]) -> str:
    """The table's cells as CSV text: eta, method, label, mse, mse_std, mae, seeds."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["eta", "method", "label", "mse", "mse_std", "mae", "seeds"])
    for e in results["eta"]:
        for m, row in results["eta"][e].items():
            w.writerow([e, m, labels.get(m, m), row["mse"], row.get("mse_std", ""),
                        row["mae"], len(row.get("mse_per_seed", [])) or ""])
    return buf.getvalue()


TRIVIAL = ("global_mean", "item_mean", "user_mean_item_bias")


def _lines(results: dict, minus: dict[str, float] | None = None
           ) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """method -> (η values, MSE (less ``minus[η]``), spread) over the η where it has one."""
    out = {}
    for m in _methods(results):
        pts = [(float(e), _cell(results, e, m, "mse") - (minus or {}).get(e, 0.0),
                _cell(results, e, m, "mse_std") or 0.0)
               for e in results["eta"] if _cell(results, e, m, "mse") is not None]
        if pts:
            out[m] = tuple(list(v) for v in zip(*pts, strict=True))
    return out


def plot_mse_vs_eta(results: dict, labels: dict[str, str], path: str | Path) -> Path:
    """PNG of test MSE against η (log axis, 100% on the left as in the table), one line per
    method, CATN's spread over seeds as error bars; the right panel shows each method's MSE
    minus the best trivial row's at that η (below 0: better than every trivial row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    etas = [float(e) for e in results["eta"]]
    best_trivial = {e: min((v for m in TRIVIAL if (v := _cell(results, e, m, "mse"))
                            is not None), default=0.0) for e in results["eta"]}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    panels = ((axes[0], _lines(results), "test MSE, cold-start users (lower is better)"),
              (axes[1], {m: v for m, v in _lines(results, best_trivial).items()
                         if m not in TRIVIAL[:2]},
               "MSE minus the best trivial row's (below 0: CATN wins)"))
    colour = {m: f"C{k % 10}" for k, m in enumerate(_methods(results))}  # same in both panels
    for ax, lines, ylabel in panels:
        for m, (x, y, s) in lines.items():
            style = {"lw": 2.5, "marker": "o", "zorder": 3} if m == "catn" else \
                {"lw": 1.2, "marker": ".", "ls": "--"}
            ax.errorbar(x, y, yerr=s if any(s) else None, capsize=3, label=labels.get(m, m),
                        color=colour[m], **style)
        ax.set_xscale("log")
        ax.set_xticks(etas, [f"{e * 100:g}%" for e in etas])
        ax.minorticks_off()
        ax.set_xlim(max(etas) * 1.3, min(etas) / 1.3)
        ax.set_xlabel("η: share of overlapping users that train")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].axhline(0.0, color="grey", lw=1)
    seeds = results.get("seeds", [])
    fig.suptitle(f"CATN vs baselines on {results['scenario']}"
                 + (f" (CATN: mean ± std over seeds {seeds})" if len(seeds) > 1 else ""),
                 fontsize=10)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def finish_outputs(results: dict, out: str | Path, labels: dict[str, str]) -> Path:
    """results.json, results.csv and mse_vs_eta.png into ``out``; returns the JSON's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".results.csv.tmp-{os.getpid()}"
    tmp.write_text(results_csv(results, labels))
    os.replace(tmp, out / "results.csv")
    plot_mse_vs_eta(results, labels, out / "mse_vs_eta.png")
    return write_results(results, out)


def save_model(model: torch.nn.Module, out: str | Path, eta_key: str, info: dict) -> Path:
    """Write ``model`` (a :class:`~catn.modules.model.CATN`) to ``OUT/models/eta_<η>/``.

    One ``<tensor name>.npy`` per entry of its ``state_dict`` (parameters and buffers:
    ``user_bias`` (2, users), ``item_mean_<d>`` and ``item_residual.<d>`` (items of domain
    d, 0 source, 1 target), ``aspect_gain``, ``W``, the extractors' weights, ...) and
    ``manifest.json``: the format version, ``info`` (η, seed, validation and test MSE), the
    model config and each tensor's file, shape and dtype. ``np.load`` reads any of them
    without this library; the bias-only prior of a cold-start user u for target item i is
    ``user_bias[0, u] + item_mean_1[i] + item_residual.1[i]``. Written into a temporary
    directory and renamed into place, so a reader never sees half a model.
    """
    root = Path(out) / "models"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"eta_{eta_key}"
    tmp = Path(tempfile.mkdtemp(prefix=f".eta_{eta_key}.tmp-", dir=root))
    tensors = {}
    for name, t in model.state_dict().items():
        arr = t.detach().cpu().numpy()
        np.save(tmp / f"{name}.npy", arr)
        tensors[name] = {"file": f"{name}.npy", "shape": list(arr.shape),
                         "dtype": str(arr.dtype)}
    manifest = {"format": MODEL_FORMAT, **info, "model_config": asdict(model.cfg),
                "tensors": tensors}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if target.exists():  # an earlier run's, replaced under --overwrite (checked before)
        old = root / f".eta_{eta_key}.old-{os.getpid()}"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target
