"""Hyperparameter selection on the validation periods (``sml-retrain --tune``).

Every trained strategy, SML included, runs once per point of the same small grid around the
configured values (:data:`TUNE_GRID`: the table learning rate, the epochs per period and the L2
penalty of the tables, each the given value or a multiple of it, 2 x 2 x 2 = 8 runs). Each run
goes through all periods as an untuned run would; the one with the best validation average
(full recall@20, or sampled hit@20 when the full protocol is not run; the first grid point on a tie)
is the strategy's row, and its test periods are reported. The test periods of the other runs
are never looked at. Strategies without trained parameters (``tuned_fields = ()``) run once.

With ``tune_stages`` > 1, a strategy whose best setting so far is not the centre of its last grid
gets another grid around that setting (points already run are not run again), until the best
stays put or ``tune_stages`` grids were run: a best on the grid's edge means the search stopped
too early. Which runs come next depends only on the validation scores of runs already done, so
a resumed run rebuilds the same list.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
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


def runs(cfg: RetrainConfig,
         val_score: Callable[[str], float | None] = lambda label: None) -> list[Run]:
    """What the period loop runs, in order: each strategy once, or with ``tune`` once per grid
    point, stage after stage; ``val_score(label)`` is a finished run's validation score (None
    while it has none), which decides whether a strategy's next stage exists."""
    out = []
    for name in cfg.strategies:
        fields = strategy_class(name).tuned_fields if cfg.tune else ()
        out += _stages(name, cfg, fields, val_score) if fields else [Run(name, name, cfg, {})]
    return out


def _stages(name: str, cfg: RetrainConfig, fields: tuple[str, ...],
            val_score: Callable[[str], float | None]) -> list[Run]:
    done: list[Run] = []
    centre = {f: getattr(cfg, f) for f in fields}
    for _ in range(cfg.tune_stages):
        ran = [r.setting for r in done]
        done += [Run(name, label(name, p), replace(cfg, **p), p)
                 for p in grid(replace(cfg, **centre), fields) if p not in ran]
        scores = {r.label: val_score(r.label) for r in done}
        if any(v is None for v in scores.values()):
            break  # the next stage waits for this one's scores
        best = choose(done, scores)  # type: ignore[arg-type]
        if best.setting == centre:
            break
        centre = best.setting
    return done


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
