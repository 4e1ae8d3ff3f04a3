"""`sml-retrain --nproc 2` as a user runs it: killing the launcher kills its ranks and writes no
results; a rank's user error is one line with its rank; a killed rank is named."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sml_torchrec.data.synthetic import SyntheticConfig, build_synthetic
from tests.faults import fault_env

TINY = SyntheticConfig(num_users=160, periods=7, initial_items=40, new_items_per_period=15,
                       seed=3)
FLAGS = ["--init-periods", "2", "--val-periods", "1", "--test-periods", "2", "--dim", "8",
         "--transfer-hidden", "16", "--batch-size", "128", "--transfer-batch-size", "128",
         "--epochs", "1", "--rounds", "1", "--num-eval-negatives", "50"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("data") / "tiny"
    build_synthetic(d, TINY)
    return d


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    s = _stat(pid)
    return s is not None and s[0] != "Z"  # a zombie has stopped running


def ranks_of(launcher: int) -> list[int]:
    """The launcher's rank processes (multiprocessing's spawned children)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (s := _stat(int(d.name))) and s[1] == launcher:
            try:
                if b"spawn_main" in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def wait_until(cond, timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def _cleanup(proc: subprocess.Popen, ranks: list[int]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)
    for pid in ranks:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killing_the_launcher_leaves_no_rank_and_no_results(tiny, tmp_path, sig):
    out = tmp_path / "out"
    log, err = tmp_path / "stdout", tmp_path / "stderr"
    # Enough initial epochs that the run is still training when the signal arrives.
    cmd = [sys.executable, "-m", "sml_torchrec", "--data", str(tiny), *FLAGS,
           "--init-epochs", "400", "--nproc", "2", "--out", str(out)]
    with open(log, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=ENV)
    ranks: list[int] = []
    try:
        assert wait_until(lambda: "initial MF epoch 1/" in err.read_text(), 240), (
            log.read_text()[-2000:] + err.read_text()[-2000:])
        ranks = ranks_of(proc.pid)
        assert len(ranks) == 2 and all(alive(r) for r in ranks)
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
        assert wait_until(lambda: not any(alive(r) for r in ranks), 20), "a rank survived"
        time.sleep(3)  # nothing is left that could still write it
        assert not (out / "results.json").exists()
        if sig == signal.SIGTERM:
            assert rc == 143
            lines = err.read_text().splitlines()
            assert lines[-1] == ("sml-retrain: terminated by SIGTERM; ranks stopped, "
                                 "no results written"), lines
            assert "Traceback" not in err.read_text()
        else:
            assert rc == -signal.SIGKILL
    finally:
        _cleanup(proc, ranks)


def _run(args, env_extra=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "sml_torchrec", *args], capture_output=True,
                          text=True, env={**ENV, **(env_extra or {})}, timeout=timeout)


def test_a_corrupt_period_file_is_the_same_one_line_on_one_and_two_ranks(tiny, tmp_path):
    # Opening the dataset checks every period file, before any rank starts, so the line is
    # the same whatever the rank count (a user error raised inside a rank gets "(on rank R)":
    # tests/sml_torchrec/distributed/test_process_group.py).
    data = tmp_path / "broken"
    shutil.copytree(tiny, data)
    victim = data / "periods" / "period=00005.parquet"
    victim.write_bytes(victim.read_bytes()[:100])
    args = ["--data", str(data), *FLAGS, "--init-epochs", "1", "--out", str(tmp_path / "o")]
    one = _run([*args, "--nproc", "1"])
    two = _run([*args, "--nproc", "2"])
    for p in (one, two):
        assert p.returncode == 2, p.stderr[-3000:]
        assert "Traceback" not in p.stderr
        assert p.stderr.count("sml-retrain: error:") == 1
    line1 = one.stderr.splitlines()[-1]
    assert "period=00005.parquet: unreadable parquet file" in line1
    assert two.stderr.splitlines()[-1] == line1
    assert not (tmp_path / "o" / "results.json").exists()


def test_a_killed_rank_is_named_with_its_signal_and_the_resume_point(tiny, tmp_path):
    out = tmp_path / "o"
    args = ["--data", str(tiny), *FLAGS, "--init-epochs", "1", "--nproc", "2", "--out", str(out),
            "--checkpoint-dir", str(out / "ckpt")]
    # the test hook SIGKILLs rank 1 right after checkpoint 0 is complete
    p = _run(args, fault_env(0))
    assert p.returncode == 1, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    assert p.stderr.splitlines()[-1] == (
        "sml-retrain: error: rank 1 was killed by signal 9 (SIGKILL); rerunning the same "
        f"command resumes from checkpoint 0 ({out / 'ckpt' / 'ckpt-000000'})")
    assert not (out / "results.json").exists()
