"""`sml-retrain` end to end on a tiny synthetic dataset, 2 ranks, with checkpoints and faults."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sml_torchrec.data.synthetic import SyntheticConfig, build_synthetic
from sml_torchrec.retrain.strategies import DEFAULT_STRATEGIES
from tests.faults import fault_env

TINY = SyntheticConfig(num_users=160, periods=7, initial_items=40, new_items_per_period=15,
                       seed=3)
FLAGS = ["--init-periods", "2", "--val-periods", "1", "--test-periods", "2", "--dim", "8",
         "--transfer-hidden", "16", "--batch-size", "128", "--transfer-batch-size", "128",
         "--init-epochs", "2", "--epochs", "1", "--rounds", "1", "--num-eval-negatives", "50"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data") / "tiny"
    build_synthetic(d, TINY)
    return str(d)


def _run(args, env_extra=None, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    p = subprocess.run([sys.executable, "-m", "sml_torchrec", *args], capture_output=True,
                       text=True, env=env, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def _metrics(out):
    r = json.loads((out / "results.json").read_text())
    for proto in r["protocols"].values():
        for s in proto.values():
            s.pop("seconds")
    return r["protocols"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "a"
    p = _run(["--data", tiny_data, "--nproc", "2", "--out", str(out),
              "--checkpoint-dir", str(out / "ckpt"), *FLAGS])
    return out, p.stdout


def test_results_json_and_table(uninterrupted):
    out, stdout = uninterrupted
    r = json.loads((out / "results.json").read_text())
    assert r["dataset"] == "tiny" and r["config"]["nproc"] == 2
    for proto in ("full", "sampled"):
        rows = r["protocols"][proto]
        assert set(rows) == set(DEFAULT_STRATEGIES)
        for s in rows.values():
            hit = "recall" if proto == "full" else "hit"  # sampled: one positive per case
            assert {f"{hit}@5", f"{hit}@10", f"{hit}@20", "ndcg@5", "ndcg@10", "ndcg@20",
                    "per_period", "seconds", "cold_warm"} <= set(s)
            assert set(s["cold_warm"]) == {"cold_users", "warm_users", "cold_items",
                                           "warm_items"}
            assert [p["period"] for p in s["per_period"]] == [4, 5, 6]
            assert 0 <= s[f"{hit}@5"] <= s[f"{hit}@10"] <= s[f"{hit}@20"] <= 1
    assert "[full protocol]" in stdout and "[sampled protocol]" in stdout


def test_kill_a_rank_then_relaunch_gives_identical_results(uninterrupted, tiny_data, tmp_path):
    ref, _ = uninterrupted
    out = tmp_path / "b"
    args = ["--data", tiny_data, "--nproc", "2", "--out", str(out),
            "--checkpoint-dir", str(out / "ckpt"), *FLAGS]
    # Step 10 = sml done and fine_tune's first period checkpointed: rank 1 is SIGKILLed then.
    killed = _run(args, fault_env(10), check=False)
    assert killed.returncode != 0
    assert "kills itself after checkpoint 10" in killed.stdout
    assert not (out / "results.json").exists()
    resumed = _run(args)
    assert "resuming from" in resumed.stderr and "ckpt-000010" in resumed.stderr
    assert _metrics(out) == _metrics(ref)
    # sml finished before the kill: its saved model comes from the first launch's staging.
    for run in (out, ref):
        manifest = json.loads((run / "model" / "manifest.json").read_text())
        assert list(manifest["strategies"]) == list(DEFAULT_STRATEGIES)
    for strategy in ("sml", "fine_tune", "recent_pop"):
        for table in ("user", "item"):
            f = f"model/{strategy}/serves-6/{table}.npy"
            assert np.array_equal(np.load(out / f), np.load(ref / f)), f


def test_corrupt_newest_checkpoint_falls_back(uninterrupted, tiny_data, tmp_path):
    ref, _ = uninterrupted
    out = tmp_path / "c"
    args = ["--data", tiny_data, "--nproc", "2", "--out", str(out),
            "--checkpoint-dir", str(out / "ckpt"), *FLAGS]
    _run(args, fault_env(10), check=False)
    newest = out / "ckpt" / "ckpt-000010"
    victim = max((p for p in newest.iterdir() if p.suffix == ".distcp"),
                 key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    resumed = _run(args)
    assert "ckpt-000010 is damaged" in resumed.stderr
    assert "resuming from" in resumed.stderr and "ckpt-000006" in resumed.stderr
    assert _metrics(out) == _metrics(ref)


def test_resume_on_a_different_world_size(uninterrupted, tiny_data, tmp_path):
    out = tmp_path / "d"
    args = ["--data", tiny_data, "--out", str(out), "--checkpoint-dir", str(out / "ckpt"),
            *FLAGS]
    _run([*args, "--nproc", "2"], fault_env(10), check=False)
    resumed = _run([*args, "--nproc", "1"])
    assert "resuming from" in resumed.stderr
    r = json.loads((out / "results.json").read_text())
    assert [p["period"] for p in r["protocols"]["full"]["sample_based"]["per_period"]] == [4, 5, 6]


@pytest.mark.timeout(600)
def test_staged_tuning_resumes_inside_its_second_stage(tiny_data, tmp_path):
    def args(out):
        return ["--data", tiny_data, "--nproc", "2", "--out", str(out), "--checkpoint-dir",
                str(out / "ckpt"), *FLAGS, "--strategies", "fine_tune", "--protocols", "full",
                "--tune", "--tune-stages", "2", "--table-lr", "0.002", "--no-save-model"]

    ref = tmp_path / "ref"
    _run(args(ref))
    grid = json.loads((ref / "results.json").read_text())[
        "protocols"]["full"]["fine_tune"]["tuned"]["grid"]
    assert len(grid) > 8  # the first grid's best was on its edge: a second grid ran
    # Checkpoint after the first trained period (t = 2) of run 8, the second grid's first.
    step = 1 + 8 * TINY.periods + 2
    out = tmp_path / "killed"
    killed = _run(args(out), fault_env(step), check=False)
    assert killed.returncode != 0 and f"after checkpoint {step}" in killed.stdout
    resumed = _run(args(out))
    assert f"ckpt-{step:06d}" in resumed.stderr
    assert _metrics(out) == _metrics(ref)
