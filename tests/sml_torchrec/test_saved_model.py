"""A 2-rank run saves its model; plain numpy/pyarrow reproduce the run's evaluation from it, and
`sml-recommend` (1 and 2 ranks) returns the full protocol's top-K; results.csv and results.png
match results.json."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from sml_torchrec.data.synthetic import SyntheticConfig, build_synthetic

TINY = SyntheticConfig(num_users=160, periods=7, initial_items=40, new_items_per_period=15,
                       seed=3)
FLAGS = ["--init-periods", "2", "--val-periods", "1", "--test-periods", "2", "--dim", "8",
         "--transfer-hidden", "16", "--batch-size", "128", "--transfer-batch-size", "128",
         "--init-epochs", "1", "--epochs", "1", "--rounds", "1", "--num-eval-negatives", "50"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _cli(*args):
    p = subprocess.run(list(args), capture_output=True, text=True, env=ENV, timeout=600)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    data = tmp_path_factory.mktemp("data") / "tiny"
    build_synthetic(data, TINY)
    out = tmp_path_factory.mktemp("runs") / "saved"
    # Column-wise: each rank holds a column block of every table, so saving must gather.
    _cli("sml-retrain", "--data", str(data), "--nproc", "2", "--out", str(out),
         "--strategies", "sml,fine_tune", "--sharding", "column_wise", "--save-every-period",
         *FLAGS)
    return out


def _read_period(manifest: dict, s: int) -> tuple[np.ndarray, np.ndarray]:
    t = pq.read_table(Path(manifest["data"]) / "periods" / f"period={s:05d}.parquet")
    return t.column("user_id").to_numpy(), t.column("item_id").to_numpy()


def _top_k(user_rows: np.ndarray, item_rows: np.ndarray, k: int) -> np.ndarray:
    """Best k items per user by (score desc, id asc): the full protocol's order."""
    scores = user_rows @ item_rows.T
    ids = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    return np.lexsort((ids, -scores), axis=1)[:, :k]


def _snapshot(run_dir: Path, strategy: str, serves: int | None = None) -> tuple[dict, dict]:
    manifest = json.loads((run_dir / "model" / "manifest.json").read_text())
    snaps = manifest["strategies"][strategy]
    entry = snaps[-1] if serves is None else next(e for e in snaps
                                                  if e["serves_period"] == serves)
    return manifest, entry


def test_plain_numpy_reproduces_the_run_evaluation(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    assert results["model"] == "model"
    checked = 0
    for strategy in ("sml", "fine_tune"):
        for row in results["protocols"]["full"][strategy]["per_period"]:
            manifest, e = _snapshot(run_dir, strategy, row["period"])
            assert e["trained_through_period"] == row["period"] - 1
            user = np.load(run_dir / "model" / e["user"]["file"])
            item = np.load(run_dir / "model" / e["item"]["file"])
            assert user.shape == (manifest["num_users"], 8) and item.dtype == np.float32
            u, i = _read_period(manifest, row["period"])
            users = np.unique(u)
            top = _top_k(user[users], item[: e["items_at_serving"]], 20)
            recall = [len(set(i[u == x]) & set(top[n])) / len(set(i[u == x]))
                      for n, x in enumerate(users)]
            assert np.mean(recall) == pytest.approx(row["recall@20"], abs=1e-12)
            checked += 1
    assert checked == 6  # 3 online periods x 2 strategies


def test_sml_snapshot_holds_theta(run_dir):
    manifest, e = _snapshot(run_dir, "sml")
    theta = e["theta"]
    assert theta["config"]["hidden"] == 16
    for table in ("user", "item"):
        fc1 = np.load(run_dir / "model" / theta["tables"][table]["fc1.weight"]["file"])
        assert fc1.shape == (16, theta["config"]["n2"] * 8)
    assert "theta" not in _snapshot(run_dir, "fine_tune")[1]
    assert not (run_dir / ".model-partial").exists()


@pytest.mark.parametrize("nproc", ["1", "2"])
def test_sml_recommend_agrees_with_the_full_protocol(run_dir, tmp_path, nproc):
    out = tmp_path / "recs.parquet"
    _cli("sml-recommend", "--model", str(run_dir / "model"), "--out", str(out),
         "--users", "period", "--candidates", "period", "--nproc", nproc)
    recs = pq.read_table(out)
    manifest, e = _snapshot(run_dir, "sml")
    u, _ = _read_period(manifest, e["serves_period"])
    users = np.unique(u)
    user = np.load(run_dir / "model" / e["user"]["file"])
    item = np.load(run_dir / "model" / e["item"]["file"])
    want = _top_k(user[users], item[: e["items_at_serving"]], 20)
    got_users = recs.column("user_id").to_numpy()
    assert np.array_equal(got_users, np.repeat(users, 20))
    assert np.array_equal(recs.column("rank").to_numpy(), np.tile(np.arange(1, 21), len(users)))
    assert np.array_equal(recs.column("item_id").to_numpy().reshape(len(users), 20), want)
    assert {"user", "item"} <= set(recs.column_names)  # raw ids from the dataset's maps


def test_sml_recommend_excludes_seen_items(run_dir, tmp_path):
    out = tmp_path / "recs.parquet"
    _cli("sml-recommend", "--model", str(run_dir / "model"), "--out", str(out),
         "--strategy", "fine_tune", "--k", "5", "--exclude-seen")
    recs = pq.read_table(out)
    manifest, e = _snapshot(run_dir, "fine_tune")
    seen = set()
    for s in range(e["trained_through_period"] + 1):
        u, i = _read_period(manifest, s)
        seen |= set(zip(u.tolist(), i.tolist()))
    pairs = set(zip(recs.column("user_id").to_numpy().tolist(),
                    recs.column("item_id").to_numpy().tolist()))
    assert len(pairs) == recs.num_rows > 0 and not pairs & seen
    assert recs.column("item_id").to_numpy().max() < e["items_known"]


def test_a_second_recommend_does_not_replace_the_file(run_dir, tmp_path):
    out = tmp_path / "recs.parquet"
    out.write_text("mine")
    p = subprocess.run(["sml-recommend", "--model", str(run_dir / "model"), "--out", str(out)],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 2 and "--overwrite" in p.stderr and out.read_text() == "mine"


def test_csv_matches_results_json(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    with open(run_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    want = {
        (p, s, row["period"], k): row[k]
        for p, strategies in results["protocols"].items()
        for s, r in strategies.items()
        for row in r["per_period"]
        for k in row if k not in ("period", "role", "users", "interactions", "cold_warm")
    }
    want.update({  # each cold/warm group of the period, as <group>/<metric>
        (p, s, row["period"], f"{group}/{k}"): g[k]
        for p, strategies in results["protocols"].items()
        for s, r in strategies.items()
        for row in r["per_period"]
        for group, g in row["cold_warm"].items()
        for k in g if k not in ("users", "interactions")
    })
    got = {(r["protocol"], r["strategy"], int(r["period"]), r["metric"]): float(r["value"])
           for r in rows}
    assert got == want
    assert {k[3] for k in got if k[0] == "sampled" and "/" not in k[3]} == {
        "hit@5", "hit@10", "hit@20", "ndcg@5", "ndcg@10", "ndcg@20"}
    assert ("full", "sml", results["protocols"]["full"]["sml"]["per_period"][0]["period"],
            "cold_users/recall@20") in got
    png = (run_dir / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_recommend_mistakes_are_one_line(run_dir, tmp_path, capsys):
    from sml_torchrec.recommend import main

    model = str(run_dir / "model")
    out = str(tmp_path / "r.parquet")
    for args, fragment in [
        (["--model", str(tmp_path)], "manifest.json"),
        (["--model", model, "--strategy", "caser"], "'caser' is not saved"),
        (["--model", model, "--serves-period", "99"], "no snapshot of sml serves period 99"),
        (["--model", model, "--nproc", "100000"], "--nproc: 100000 local ranks"),
    ]:
        try:
            rc = main([*args, "--out", out])
        except SystemExit as e:
            rc = e.code
        err = [x for x in capsys.readouterr().err.splitlines()  # but argparse's usage lines
               if not x.startswith(("usage:", " "))]
        assert rc == 2 and len(err) == 1 and fragment in err[0], err
        assert err[0].startswith("sml-recommend: error: ")
    assert not (tmp_path / "r.parquet").exists()
