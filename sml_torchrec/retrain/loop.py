"""The period loop: one initial model, then every strategy through the same periods and tests.

    initial MF on D_0..D_{init-1} (best epoch on D_init)
    for each strategy:   start(initial)
        for t in init .. P-2:   train_period(t);  if t+1 is online: test on D_{t+1}

Runs on every rank (same code, same order of collectives); rank 0 prints and returns results.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

import numpy as np
import torch

from sml_torchrec.data.period_dataset import PeriodDataset
from sml_torchrec.metrics import KS
from sml_torchrec.retrain.config import PeriodRoles, RetrainConfig
from sml_torchrec.retrain.evaluate import PeriodTest, evaluate, prepare_test
from sml_torchrec.retrain.model import RetrainModel, world
from sml_torchrec.retrain.strategies import STRATEGIES

log = logging.getLogger(__name__)


def train_initial(
    ds: PeriodDataset, roles: PeriodRoles, cfg: RetrainConfig, test: PeriodTest
) -> dict[str, torch.Tensor]:
    """The shared initial MF: log loss on D_0..D_{init-1}, the epoch best on D_init kept."""
    torch.manual_seed(cfg.seed)
    model = RetrainModel(ds.num_users, ds.num_items, cfg, transfer=False)
    data = ds.periods(0, roles.init)
    items = ds.meta.items_upto[roles.init - 1]
    best, best_score = None, -1.0
    for e in range(cfg.init_epochs):
        loss = model.train_epoch(data, items, cfg.seed * 7919 + e)
        score = evaluate(model, test, ["full"])["full"]["recall@20"]
        _print(f"  initial MF epoch {e + 1}/{cfg.init_epochs}: loss {loss:.4f}, "
               f"recall@20 on period {roles.init} {score:.4f}")
        if score > best_score:
            best, best_score = model.export_tables(), score
    return best


def _print(msg: str) -> None:
    if world()[0] == 0:
        print(msg, flush=True)


def _average(rows: list[dict], weight_key: str) -> dict[str, float]:
    keys = [f"{m}@{k}" for m in ("recall", "ndcg") for k in KS]
    if weight_key == "users":  # full protocol: each period's user average counts once
        return {k: float(np.mean([r[k] for r in rows])) for k in keys}
    w = np.array([r[weight_key] for r in rows], dtype=np.float64)
    return {k: float(np.dot(w, [r[k] for r in rows]) / w.sum()) for k in keys}


def run(cfg: RetrainConfig, ds: PeriodDataset, dataset_name: str) -> dict:
    roles = PeriodRoles.from_config(ds.num_periods, cfg)
    t0 = time.monotonic()
    _print(
        f"{dataset_name}: {ds.num_periods} periods, {ds.num_users:,} users, {ds.num_items:,} "
        f"items; init 0..{roles.init - 1}, offline {roles.init}..{roles.last_offline}, "
        f"val {roles.first_online}..{roles.first_test - 1}, test {roles.first_test}.."
        f"{ds.num_periods - 1}; {world()[1]} rank(s), {cfg.sharding} sharding"
    )
    tests = {
        s: prepare_test(ds, s, cfg.protocols, cfg.num_eval_negatives, cfg.seed)
        for s in range(roles.first_online, ds.num_periods)
    }
    init_test = prepare_test(ds, roles.init, ["full"], cfg.num_eval_negatives, cfg.seed)
    initial = train_initial(ds, roles, cfg, init_test)
    results: dict = {"full": {}, "sampled": {}}
    for name in cfg.strategies:
        ts = time.monotonic()
        strategy = STRATEGIES[name](ds, roles, cfg)
        strategy.start(initial)
        per_period: dict[str, list[dict]] = {p: [] for p in cfg.protocols}
        for t in range(roles.init, ds.num_periods - 1):
            strategy.train_period(t)
            s = t + 1
            if s not in tests:
                continue
            m = evaluate(strategy.model, tests[s], cfg.protocols)
            for p in cfg.protocols:
                per_period[p].append({"period": s, "role": roles.role(s), **m[p]})
            _print(
                f"  {name:>12} period {s:>3} ({roles.role(s)}): "
                + "  ".join(f"{p} R@20 {m[p]['recall@20']:.4f} N@20 {m[p]['ndcg@20']:.4f}"
                            for p in cfg.protocols)
            )
        secs = time.monotonic() - ts
        for p in cfg.protocols:
            rows = per_period[p]
            weight = "users" if p == "full" else "interactions"
            test_rows = [r for r in rows if r["role"] == "test"]
            val_rows = [r for r in rows if r["role"] == "val"]
            results[p][name] = {
                **_average(test_rows, weight),
                "val": _average(val_rows, weight) if val_rows else {},
                "per_period": rows,
                "seconds": secs,
            }
    _print(f"done in {time.monotonic() - t0:.0f}s")
    return {
        "dataset": dataset_name,
        "config": asdict(cfg),
        "protocols": {p: results[p] for p in cfg.protocols},
    }


def format_table(results: dict) -> str:
    """Paper Table 1 style: strategies x recall/NDCG@5/10/20, SML's relative improvement."""
    lines = []
    for p, rows in results["protocols"].items():
        lines.append(f"\n[{p} protocol] average over test periods")
        head = (f"{'method':>14} " + " ".join(f"{'recall@' + str(k):>10}" for k in KS)
                + f" {'RI':>8} " + " ".join(f"{'NDCG@' + str(k):>10}" for k in KS) + f" {'RI':>8}")
        lines.append(head)
        sml = rows.get("sml")
        for name, r in rows.items():
            def ri(metric: str, r=r, name=name, sml=sml) -> str:
                if sml is None or name == "sml" or r[metric] == 0:
                    return f"{'-':>8}"
                return f"{100 * (sml[metric] / r[metric] - 1):>7.1f}%"

            lines.append(
                f"{name:>14} " + " ".join(f"{r[f'recall@{k}']:>10.4f}" for k in KS)
                + f" {ri('recall@20')} " + " ".join(f"{r[f'ndcg@{k}']:>10.4f}" for k in KS)
                + f" {ri('ndcg@20')}"
            )
    return "\n".join(lines)
