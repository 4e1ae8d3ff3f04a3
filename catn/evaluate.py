"""Metrics, (distributed) evaluation of CATN on cold-start pairs, tables and results.json."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from catn.data.dataset import EtaData
from catn.modules.model import CATN, SOURCE, FlowBatch
from sml_torchrec.errors import write_json_atomic


def mse_mae(pred: np.ndarray, rating: np.ndarray) -> dict[str, float]:
    err = np.asarray(pred, dtype=np.float64) - np.asarray(rating, dtype=np.float64)
    return {"mse": float(np.mean(err**2)), "mae": float(np.mean(np.abs(err)))}


def make_flow_batch(data: EtaData, tensors: dict, user_domain: int, users: torch.Tensor,
                    items: torch.Tensor, ratings: torch.Tensor | None, use_aux: bool
                    ) -> FlowBatch:
    """Gather the unique documents of a set of pairs into a :class:`FlowBatch`."""
    uq, uidx = torch.unique(users, return_inverse=True)
    iq, iidx = torch.unique(items, return_inverse=True)
    d = "s" if user_domain == SOURCE else "t"
    o = "t" if user_domain == SOURCE else "s"
    return FlowBatch(
        user_domain=user_domain,
        user_docs=tensors[f"user_docs_{d}"][uq].long(),
        aux_docs=tensors[f"aux_docs_{d}"][uq].long() if use_aux else None,
        item_docs=tensors[f"item_docs_{o}"][iq].long(),
        user_index=uidx, item_index=iidx, users=users, items=items, ratings=ratings)


@torch.no_grad()
def predict_cold_start(model: CATN, data: EtaData, tensors: dict, users: np.ndarray,
                       items: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Scores of (user, target item) pairs from the users' source documents."""
    was_training = model.training
    model.eval()
    out = []
    for lo in range(0, len(users), batch_size):
        u = torch.as_tensor(users[lo:lo + batch_size])
        i = torch.as_tensor(items[lo:lo + batch_size])
        b = make_flow_batch(data, tensors, SOURCE, u, i, None, model.cfg.use_aux)
        out.append(model.score(b).numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def evaluate_distributed(model: CATN, data: EtaData, tensors: dict,
                         pairs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, float]:
    """MSE/MAE over ``pairs``; each rank scores a disjoint shard, sums are all-reduced."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    u, i, r = (p[rank::world] for p in pairs)
    pred = predict_cold_start(model, data, tensors, u, i)
    err = pred.astype(np.float64) - r
    sums = torch.tensor([float((err**2).sum()), float(np.abs(err).sum()), float(len(r))],
                        dtype=torch.float64)
    if world > 1:
        dist.all_reduce(sums)
    n = max(sums[2].item(), 1.0)
    return {"mse": sums[0].item() / n, "mae": sums[1].item() / n}


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
