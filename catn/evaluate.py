"""Evaluation of CATN on cold-start pairs: predictions, and MSE/MAE over ranks."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from catn.batch import SOURCE
from catn.data.batches import make_flow_batch
from catn.modules.model import CATN
from recsys_common.process_group import rank_world


def mse_mae(pred: np.ndarray, rating: np.ndarray) -> dict[str, float]:
    err = np.asarray(pred, dtype=np.float64) - np.asarray(rating, dtype=np.float64)
    return {"mse": float(np.mean(err**2)), "mae": float(np.mean(np.abs(err)))}


@torch.no_grad()
def predict_cold_start(model: CATN, tensors: dict[str, torch.Tensor], users: np.ndarray,
                       items: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Scores of (user, target item) pairs from the users' source documents."""
    was_training = model.training
    model.eval()
    out = []
    for lo in range(0, len(users), batch_size):
        u = torch.as_tensor(users[lo:lo + batch_size])
        i = torch.as_tensor(items[lo:lo + batch_size])
        b = make_flow_batch(tensors, SOURCE, u, i, None, model.cfg.use_aux)
        out.append(model.score(b).numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def evaluate_distributed(model: CATN, tensors: dict[str, torch.Tensor],
                         pairs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, float]:
    """MSE/MAE over ``pairs``; each rank scores a disjoint shard, sums are all-reduced."""
    rank = rank_world()[0]
    world = dist.get_world_size() if dist.is_initialized() else 1
    u, i, r = (p[rank::world] for p in pairs)
    pred = predict_cold_start(model, tensors, u, i)
    err = pred.astype(np.float64) - r
    sums = torch.tensor([float((err**2).sum()), float(np.abs(err).sum()), float(len(r))],
                        dtype=torch.float64)
    if world > 1:
        dist.all_reduce(sums)
    n = max(sums[2].item(), 1.0)
    return {"mse": sums[0].item() / n, "mae": sums[1].item() / n}
