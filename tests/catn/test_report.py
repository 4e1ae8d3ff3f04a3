"""The tables and results.json of catn-train."""

import json

from catn.baselines import LABELS
from catn.report import format_table, write_results

RESULTS = {"scenario": "toy", "eta": {
    "1.0": {"catn": {"mse": 0.81, "mae": 0.7}, "item_mean": {"mse": 1.0, "mae": 0.8}},
    "0.2": {"item_mean": {"mse": 1.25, "mae": float("nan")}}}}


def test_table_rows_are_methods_and_columns_eta_percentages():
    lines = format_table(RESULTS, "mse", LABELS).splitlines()
    assert lines[0] == "MSE on cold-start users (toy)"
    assert lines[1].split()[-2:] == ["100%", "20%"]
    assert lines[3].split() == ["CATN", "0.8100", "-"]  # no CATN run at 20%
    assert lines[4].split() == ["Item", "mean", "1.0000", "1.2500"]
    mae = format_table(RESULTS, "mae", LABELS).splitlines()
    assert mae[4].split()[-1] == "-"  # a non-finite value is shown as missing


def test_several_seeds_show_mean_and_spread():
    res = {"scenario": "toy", "seeds": [0, 1, 2], "eta": {
        "1.0": {"catn": {"mse": 0.81, "mae": 0.7, "mse_std": 0.012, "mae_std": 0.01},
                "item_mean": {"mse": 1.0, "mae": 0.8}}}}
    lines = format_table(res, "mse", LABELS).splitlines()
    assert lines[0] == "MSE on cold-start users (toy; CATN: mean±std over seeds 0,1,2)"
    assert lines[3].split() == ["CATN", "0.8100±0.0120"]
    assert lines[4].split() == ["Item", "mean", "1.0000"]


def test_results_json_is_written_whole(tmp_path):
    path = write_results(RESULTS, tmp_path / "run")
    assert path == tmp_path / "run" / "results.json"
    assert json.loads(path.read_text())["eta"]["1.0"]["catn"]["mse"] == 0.81
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]
