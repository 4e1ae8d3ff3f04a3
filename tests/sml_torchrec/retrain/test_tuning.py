"""--tune: the grid, the choice by validation score, and a 2-rank run that keeps the best
validation setting and reports exactly what an untuned run with that setting reports."""

import dataclasses
import json

import numpy as np
import pytest

from recsys_common.errors import ConfigError
from recsys_common.process_group import run_local
from sml_torchrec.data.period_dataset import PeriodDataset, write_period_dataset
from sml_torchrec.retrain.config import RetrainConfig
from sml_torchrec.retrain.tuning import Run, choose, grid, runs

FIELDS = ("table_lr", "epochs", "l2_tables")


def test_grid_starts_at_the_configured_setting_and_has_no_repeats():
    cfg = RetrainConfig(table_lr=0.05, epochs=2, l2_tables=1e-6)
    points = grid(cfg, FIELDS)
    assert points[0] == {"table_lr": 0.05, "epochs": 2, "l2_tables": 1e-6}
    assert len(points) == 8 and len({tuple(p.values()) for p in points}) == 8
    assert all(isinstance(p["epochs"], int) for p in points)
    # An L2 of 0 has no multiples: those points would be repeats.
    assert len(grid(dataclasses.replace(cfg, l2_tables=0.0), FIELDS)) == 4


def test_runs_cover_the_grid_of_trained_strategies_only():
    cfg = RetrainConfig(strategies=["fine_tune", "pop"], tune=True)
    by_name = {}
    for r in runs(cfg):
        by_name.setdefault(r.name, []).append(r)
        assert {k: getattr(r.cfg, k) for k in r.setting} == r.setting
    assert len(by_name["fine_tune"]) == 8 and len(by_name["pop"]) == 1
    assert [r.label for r in runs(dataclasses.replace(cfg, tune=False))] == ["fine_tune", "pop"]
    with pytest.raises(ConfigError, match="--val-periods"):
        RetrainConfig(tune=True, val_periods=0)


def test_choose_takes_the_best_validation_score_and_the_first_on_a_tie():
    cands = [Run("x", f"x{i}", RetrainConfig(), {"epochs": i}) for i in range(4)]
    assert choose(cands, {"x0": 0.1, "x1": 0.3, "x2": 0.2, "x3": 0.3}).label == "x1"
    assert choose(cands, {"x0": 0.5, "x1": 0.5, "x2": 0.5, "x3": 0.5}).label == "x0"


def _dataset(path, periods=5, users=40, items=30, per=150):
    rng = np.random.default_rng(0)
    user = rng.integers(0, users, periods * per)
    # A popularity skew the model can learn, with some user-item affinity.
    item = (rng.zipf(1.6, periods * per) + user % 3) % items
    _, uf = np.unique(user, return_index=True)
    _, itf = np.unique(item, return_index=True)
    umap = np.empty(users, dtype=np.int64)
    umap[np.unique(user)[np.argsort(uf)]] = np.arange(len(uf))
    imap = np.empty(items, dtype=np.int64)
    imap[np.unique(item)[np.argsort(itf)]] = np.arange(len(itf))
    period = np.repeat(np.arange(periods), per).astype(np.int32)
    write_period_dataset(path, umap[user], imap[item], np.arange(len(user)), period, cut="given")


def _run(path, cfg, one_point=None):
    from sml_torchrec.retrain import tuning
    from sml_torchrec.retrain.loop import run

    if one_point is not None:  # a grid of the one setting given (multipliers of cfg's values)
        tuning.TUNE_GRID = {k: (v,) for k, v in one_point.items()}
    return run(cfg, PeriodDataset(path), "tiny")


def test_tuning_keeps_the_best_validation_setting(tmp_path):
    _dataset(tmp_path / "ds")
    cfg = RetrainConfig(strategies=["fine_tune", "pop"], init_periods=1, val_periods=2,
                        test_periods=1, dim=4, epochs=1, init_epochs=1, table_lr=0.02,
                        num_eval_negatives=5, tune=True, out=str(tmp_path / "out"))
    tuned, _ = run_local(_run, 2, (str(tmp_path / "ds"), cfg), threads=1, backend="gloo",
                         timeout_s=300)
    entry = tuned["protocols"]["full"]["fine_tune"]
    chosen, scores = entry["tuned"]["setting"], entry["tuned"]["grid"]
    assert len(scores) == 8 and set(chosen) == set(FIELDS)
    best = max(s["val_recall@20"] for s in scores)
    assert len({s["val_recall@20"] for s in scores}) > 1  # the grid points do differ on validation
    first_best = next(s for s in scores if s["val_recall@20"] == best)
    assert chosen == {k: first_best[k] for k in FIELDS}
    assert entry["val"]["recall@20"] == pytest.approx(best)
    assert tuned["protocols"]["full"]["pop"]["tuned"]["setting"] == {}
    # The saved model of a tuned strategy is its chosen run's; the other grid points' are gone.
    from sml_torchrec.retrain.tuning import label

    model = tmp_path / "out" / "model"
    snaps = json.loads((model / "manifest.json").read_text())["strategies"]["fine_tune"]
    assert {e["user"]["file"].split("/")[0] for e in snaps} == {label("fine_tune", chosen)}
    assert [d.name for d in model.glob("fine_tune*")] == [label("fine_tune", chosen)]
    # The chosen row is that setting's own run: a grid of that one point (from the same shared
    # initial model, which is trained with the configured values) reports the same rows.
    point = {k: chosen[k] / getattr(cfg, k) for k in FIELDS}
    plain, _ = run_local(_run, 2, (str(tmp_path / "ds"),
                                   dataclasses.replace(cfg, strategies=["fine_tune"]), point),
                         threads=1, backend="gloo", timeout_s=300)
    for p in ("full", "sampled"):
        want = plain["protocols"][p]["fine_tune"]
        assert tuned["protocols"][p]["fine_tune"]["per_period"] == want["per_period"], p


def _scores(best, pending=()):
    """Validation scores by label, higher the closer (in log scale) a setting is to ``best``."""
    def score(lbl):
        if lbl in pending:
            return None
        setting = dict(kv.split("=") for kv in lbl[lbl.index("[") + 1 : -1].split(","))
        return -sum(abs(np.log(float(v)) - np.log(best[k])) for k, v in setting.items())
    return score


def test_a_next_stage_is_centred_on_the_best_and_only_after_every_score_is_in():
    cfg = RetrainConfig(strategies=["fine_tune"], tune=True, tune_stages=3,
                        table_lr=0.05, epochs=1, l2_tables=1e-6)
    first = runs(cfg)
    assert len(first) == 8  # stage 1, waiting for its scores
    edge = {"table_lr": 0.2, "epochs": 3.0, "l2_tables": 1e-6}
    both = runs(cfg, _scores(edge))
    assert both[:8] == first
    stage2 = both[8:]
    # around lr 0.2, epochs 3: lr {0.2, 0.8} x epochs {3, 9} x l2 {1e-6, 1e-4}, minus the two
    # settings stage 1 ran already; the best stays at its centre, so there is no stage 3
    assert len(stage2) == 6
    assert all(r.setting["table_lr"] in (0.2, 0.8) and r.setting["epochs"] in (3, 9)
               for r in stage2)
    assert all(isinstance(r.setting["epochs"], int) for r in stage2)
    # a stage-2 point wins: stage 3 around it
    far = {"table_lr": 0.8, "epochs": 9.0, "l2_tables": 1e-6}
    assert len(runs(cfg, _scores(far))) > 14
    # but never more than tune_stages grids
    assert len(runs(dataclasses.replace(cfg, tune_stages=2), _scores(far))) == 14
    # one score missing: nothing beyond the stage it belongs to
    assert runs(cfg, _scores(edge, pending={first[3].label})) == first
    # the configured setting is best, or one stage is asked for: one stage only
    assert runs(cfg, _scores({"table_lr": 0.05, "epochs": 1.0, "l2_tables": 1e-6})) == first
    assert len(runs(dataclasses.replace(cfg, tune_stages=1), _scores(edge))) == 8


def test_staged_tuning_runs_a_second_grid_around_an_edge_best(tmp_path):
    _dataset(tmp_path / "ds")
    cfg = RetrainConfig(strategies=["fine_tune"], init_periods=1, val_periods=2,
                        test_periods=1, dim=4, epochs=1, init_epochs=1, table_lr=0.005,
                        num_eval_negatives=5, tune=True, tune_stages=2,
                        protocols=["full"], out=str(tmp_path / "out"))
    tuned, _ = run_local(_run, 2, (str(tmp_path / "ds"), cfg), threads=1, backend="gloo",
                         timeout_s=300)
    entry = tuned["protocols"]["full"]["fine_tune"]
    grid_scores = entry["tuned"]["grid"]
    centre = {k: getattr(cfg, k) for k in FIELDS}
    stage1 = grid_scores[:8]
    best1 = max(stage1, key=lambda s: s["val_recall@20"])
    # a learning rate this small leaves the first grid's best on its edge
    assert {k: best1[k] for k in FIELDS} != centre
    stage2 = grid_scores[8:]
    assert 0 < len(stage2) < 8
    assert all(s["table_lr"] in (best1["table_lr"], 4 * best1["table_lr"]) for s in stage2)
    best = max(s["val_recall@20"] for s in grid_scores)
    assert entry["val"]["recall@20"] == pytest.approx(best)
    first_best = next(s for s in grid_scores if s["val_recall@20"] == best)
    assert entry["tuned"]["setting"] == {k: first_best[k] for k in FIELDS}
