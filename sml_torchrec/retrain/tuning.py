"""Hyperparameter selection on the validation periods (``sml-retrain --tune``).

Every trained strategy, SML included, runs once per point of the same small grid around the
configured values (:data:`TUNE_GRID`: the table learning rate, the epochs per period and the L2
penalty of the tables, each the given value or a multiple of it, 2 x 2 x 2 = 8 runs). Each run
goes through all periods as an untuned run would; the one with the best validation average
(full recall@20, or sampled hit@20 when the full protocol is not run; the first grid point on a tie)
is the strategy's row, and its test periods are reported. The test periods of the other runs
are never looked at. Strategies without trained parameters (``tuned_fields = ()``) run once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from sml_torchrec.metrics import topk_metric
from sml_torchrec.retrain.config import RetrainConfig
from sml_torchrec.retrain.strategies import strategy_class

# Field -> multipliers of the configured value; the first point is the configured setting.
TUNE_GRID: dict[str, tuple[float, ...]] = {
    "table_lr": (1.0, 4.0),
    "epochs": (1, 3),
    "l2_tables": (1.0, 100.0),
}


def selection_metric(protocol: str) -> str:
    """The validation metric a setting is chosen by: recall@20 (full) or hit@20 (sampled)."""
    return f"{topk_metric(protocol)}@20"


@dataclass(frozen=True)
class Run:
    """One strategy under one setting: ``label`` keys its rows until a setting is chosen."""

    name: str
    label: str
    cfg: RetrainConfig
    setting: dict


def grid(cfg: RetrainConfig, fields: tuple[str, ...]) -> list[dict]:
    """The distinct settings of ``fields`` on :data:`TUNE_GRID`, the configured one first."""
    axes = [[_scaled(getattr(cfg, f), m) for m in TUNE_GRID[f]] for f in fields]
    points: list[dict] = []
    for values in itertools.product(*axes):
        point = dict(zip(fields, values))
        if point not in points:
            points.append(point)
    return points


def _scaled(value: float | int, factor: float) -> float | int:
    return type(value)(value * factor)


def runs(cfg: RetrainConfig) -> list[Run]:
    """What the period loop runs: each strategy once, or once per grid point with ``tune``."""
    out = []
    for name in cfg.strategies:
        fields = strategy_class(name).tuned_fields if cfg.tune else ()
        points = grid(cfg, fields) if fields else [{}]
        for point in points:
            out.append(Run(name, label(name, point), replace(cfg, **point), point))
    return out


def label(name: str, setting: dict) -> str:
    """How a strategy's run under ``setting`` is keyed: ``fine_tune[table_lr=0.2,...]``."""
    if not setting:
        return name
    return name + "[" + ",".join(f"{k}={v:g}" for k, v in setting.items()) + "]"


def choose(candidates: list[Run], val_score: dict[str, float]) -> Run:
    """The run of one strategy with the best validation score (the first on a tie)."""
    best = candidates[0]
    for run in candidates[1:]:
        if val_score[run.label] > val_score[best.label]:
            best = run
    return best
