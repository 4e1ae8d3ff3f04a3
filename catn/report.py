"""What ``catn-train`` reports: the paper-style tables and ``OUT/results.json``.

``results`` is the dict :func:`catn.train.run` returns: ``results["eta"][η][method]`` holds
that method's test ``mse`` and ``mae``; ``results["scenario"]`` names the corpus.
"""

from __future__ import annotations

import math
from pathlib import Path

from recsys_common.files import write_json_atomic


def format_table(results: dict, metric: str, labels: dict[str, str]) -> str:
    """Paper-style table: rows methods, columns η (as percentages)."""
    etas = list(results["eta"])
    methods: list[str] = []
    for e in etas:
        methods += [m for m in results["eta"][e] if m not in methods]
    width = max([len(labels.get(m, m)) for m in methods] + [12])
    corner = "Method \\ eta"
    head = f"{corner:<{width}}" + "".join(f"{float(e) * 100:>9g}%" for e in etas)
    lines = [f"{metric.upper()} on cold-start users ({results['scenario']})", head,
             "-" * len(head)]
    for m in methods:
        cells = []
        for e in etas:
            v = results["eta"][e].get(m, {}).get(metric)
            cells.append(f"{v:>10.4f}" if v is not None and math.isfinite(v) else f"{'-':>10}")
        lines.append(f"{labels.get(m, m):<{width}}" + "".join(cells))
    return "\n".join(lines)


def write_results(results: dict, out_dir: str | Path) -> Path:
    """Write ``OUT/results.json`` atomically (temp file + rename); ``catn-train`` has checked
    before any work that it may (see ``refuse_to_replace``)."""
    return write_json_atomic(Path(out_dir) / "results.json", results)
