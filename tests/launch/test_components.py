"""TorchX components: validation before launch, and a real `torchx run -s local_cwd`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.components import catn_train, sml_retrain
from sml_torchrec.data.synthetic import SyntheticConfig, build_synthetic
from tests.faults import fault_env

ROOT = Path(__file__).resolve().parents[2]
TINY_FLAGS = ["--init-periods", "2", "--val-periods", "1", "--test-periods", "2", "--dim", "8",
              "--transfer-hidden", "16", "--batch-size", "128", "--init-epochs", "1",
              "--epochs", "1", "--rounds", "1", "--num-eval-negatives", "50",
              "--strategies", "sml,fine_tune"]


def test_component_builds_torchrun_with_restarts():
    app = sml_retrain("--dim", "16", data="d", nproc_per_node=2, max_restarts=2)
    role = app.roles[0]
    cmd = role.args[-1]
    assert "torchrun --max-restarts 2 " in cmd
    assert "-m sml_torchrec" in cmd and "--dim 16" in cmd and "--data d" in cmd
    assert "--checkpoint-dir runs/torchx/checkpoints" in cmd
    assert "--nproc_per_node 2" in cmd


def test_bad_parameters_fail_before_launch():
    with pytest.raises(ValueError, match="invalid sml-retrain arguments"):
        sml_retrain("--no-such-flag", "1")
    with pytest.raises(ValueError, match="unknown strategies"):
        sml_retrain(strategies="sml,bogus")
    with pytest.raises(ValueError, match="nproc_per_node"):
        sml_retrain(nproc_per_node=0)
    with pytest.raises(ValueError, match="invalid catn-train arguments.*--epochs: invalid int"):
        catn_train("--epochs", "x")
    with pytest.raises(ValueError, match="--eta: 2 is outside"):
        catn_train(eta="2")
    with pytest.raises(ValueError, match="--sharding: invalid choice: 'diagonal'"):
        sml_retrain("--sharding", "diagonal")


def test_overwrite_is_passed_through():
    assert "--overwrite" not in sml_retrain().roles[0].args[-1]
    assert "--overwrite" in sml_retrain(overwrite=True).roles[0].args[-1]
    assert "--overwrite" in catn_train(overwrite=True).roles[0].args[-1]


def _torchx(args, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return subprocess.run(
        [str(Path(sys.executable).parent / "torchx"), "run", "-s", "local_cwd", *args],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=900,
    )


def test_torchx_help_lists_parameters():
    p = _torchx(["launch/components.py:sml_retrain", "--help"])
    assert "--checkpoint_dir" in p.stdout and "--max_restarts" in p.stdout


def test_torchx_local_run_survives_a_killed_rank(tmp_path):
    data = tmp_path / "tiny"
    build_synthetic(data, SyntheticConfig(num_users=160, periods=7, initial_items=40,
                                          new_items_per_period=15, seed=3))
    out = tmp_path / "out"
    p = _torchx(
        ["launch/components.py:sml_retrain", "--data", str(data), "--out", str(out),
         "--nproc_per_node", "2", "--max_restarts", "1", "--", *TINY_FLAGS],
        fault_env(3),
    )
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-4000:]
    assert (out / "checkpoints" / ".fault-fired").exists()
    assert "kills itself after checkpoint 3" in log
    assert "resuming from" in log
    r = json.loads((out / "results.json").read_text())
    assert set(r["protocols"]["full"]) == {"sml", "fine_tune"}


def test_catn_component_reads_the_default_lists_without_torch():
    code = ("import sys, inspect; from launch.components import catn_train; "
            "p = inspect.signature(catn_train).parameters; "
            "print(p['methods'].default, p['eta'].default, 'torch' in sys.modules); "
            "print(catn_train.__doc__)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       check=True)
    first, doc = p.stdout.split("\n", 1)
    assert first == "catn,global_mean,item_mean,user_mean_item_bias 1,0.5,0.2,0.1,0.05 False"
    from catn.baselines import METHOD_NAMES

    assert ", ".join(METHOD_NAMES) in doc
    assert "--etas 1,0.5 " in catn_train(eta="1,0.5").roles[0].args[-1]
