"""`sml-retrain` with SML's successors beside it on 2 ranks, and their resume after a kill: a rank
is SIGKILLed in the middle of ASMG, the relaunch is killed again in the middle of IncCTR, and the
last relaunch must give the uninterrupted run's numbers exactly, biases on (their tables and
optimizer state are checkpointed like the embeddings)."""

import json

import pytest

from tests.faults import fault_env
from tests.sml_torchrec.test_end_to_end import FLAGS, TINY, _metrics, _run

PERIODS = TINY.periods


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from sml_torchrec.data.synthetic import build_synthetic

    d = tmp_path_factory.mktemp("data") / "tiny"
    build_synthetic(d, TINY)
    return str(d)


def _args(data, out, strategies, *extra):
    return ["--data", data, "--nproc", "2", "--out", str(out), "--checkpoint-dir",
            str(out / "ckpt"), "--strategies", ",".join(strategies), *FLAGS, *extra]


def test_successors_run_beside_sml(tiny_data, tmp_path):
    strategies = ["sml", "asmg", "incctr", "fine_tune"]
    _run(_args(tiny_data, tmp_path / "run", strategies))
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    for proto in ("full", "sampled"):
        assert list(r["protocols"][proto]) == strategies
        for name in strategies:
            row = r["protocols"][proto][name]
            assert [p["period"] for p in row["per_period"]] == [4, 5, 6]
            hit = "recall" if proto == "full" else "hit"  # sampled: one positive per case
            assert 0 <= row[f"{hit}@20"] <= 1 and row["seconds"] > 0


@pytest.mark.timeout(600)
def test_successors_resume_exactly_after_kills(tiny_data, tmp_path):
    strategies = ["asmg", "incctr"]

    def step(strategy: str, period: int) -> int:  # the loop's checkpoint after that period
        return 1 + strategies.index(strategy) * PERIODS + period

    ref = tmp_path / "ref"
    _run(_args(tiny_data, ref, strategies, "--biases"))
    out = tmp_path / "killed"
    in_asmg, in_incctr = step("asmg", 3), step("incctr", 2)
    first = _run(_args(tiny_data, out, strategies, "--biases"), fault_env(in_asmg), check=False)
    assert first.returncode != 0 and f"after checkpoint {in_asmg}" in first.stdout
    (out / "ckpt" / ".fault-fired").unlink()  # arm the fault once more, later in the run
    second = _run(_args(tiny_data, out, strategies, "--biases"), fault_env(in_incctr), check=False)
    assert second.returncode != 0 and f"after checkpoint {in_incctr}" in second.stdout
    assert f"ckpt-{in_asmg:06d}" in second.stderr
    last = _run(_args(tiny_data, out, strategies, "--biases"))
    assert f"ckpt-{in_incctr:06d}" in last.stderr
    assert _metrics(out) == _metrics(ref)
