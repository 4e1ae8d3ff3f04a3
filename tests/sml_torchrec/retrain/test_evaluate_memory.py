"""Evaluation's peak memory is bounded by its chunk sizes, not by the size of the period.

Each case runs in a fresh process (one torch thread) and measures that process's peak resident
memory (VmHWM, reset through /proc/self/clear_refs after a small warm-up evaluation) above its
resident memory just before the evaluation. The period is large enough that scoring it whole,
as the evaluation once did (a [n, 999] copy of the candidate ids, [n, 999] scores twice over,
[n, 999] masks), needs several times the limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

_CHILD = r"""
import json, os, sys
import numpy as np
import torch

torch.set_num_threads(1)
from sml_torchrec.data.period_dataset import Interactions
from recsys_common.process_group import init_process_group
from sml_torchrec.data.eval_candidates import SampledCandidates
from sml_torchrec.retrain.config import RetrainConfig
from sml_torchrec.retrain.evaluate import PeriodTest, evaluate
from sml_torchrec.retrain.model import RetrainModel

protocol, n, num_users, num_items, M = sys.argv[1], *map(int, sys.argv[2:6])
init_process_group()  # a single-process group
torch.manual_seed(0)
model = RetrainModel(num_users, num_items, RetrainConfig(), transfer=False)


def period(n):
    rng = np.random.default_rng(n)
    users = rng.integers(0, num_users, n)
    items = rng.integers(0, num_items, n)
    data = Interactions(users, items, np.arange(n), np.zeros(n, dtype=np.int32))
    pairs = np.unique(users * num_items + items)
    uniq, counts = np.unique(pairs // num_items, return_counts=True)
    indptr = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]))
    cand = None
    if protocol == "sampled":
        ids = torch.from_numpy(rng.integers(0, num_items, (n, M)))
        ids[: n // 10, M - 5 :] = -1  # some short pools, padded
        cand = SampledCandidates(ids, ids >= 0, n // 10)
    return PeriodTest(1, num_items, uniq, indptr, torch.from_numpy(pairs % num_items), data,
                      cand)


def status():
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f)
                if k in ("VmHWM", "VmRSS")}


evaluate(model, period(300), [protocol])  # warm-up: lazy initialisation is not per-period
big = period(n)
base = status()["VmRSS"]
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
out = evaluate(model, big, [protocol])
print(json.dumps({"peak": status()["VmHWM"] - base, "metrics": out[protocol]}))
"""


def _peak(protocol: str, n: int, num_users: int, num_items: int, m: int = 999) -> dict:
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs /proc/self/clear_refs to reset the peak resident memory")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, protocol, str(n), str(num_users), str(num_items), str(m)],
        capture_output=True, text=True, timeout=300, check=True, cwd=ROOT, env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_sampled_protocol_peak_is_bounded_by_the_chunk():
    from sml_torchrec.retrain.evaluate import SAMPLED_EVAL_CHUNK

    m, d = 999, 32
    n = 16 * 1024
    working = SAMPLED_EVAL_CHUNK * m * (4 * d + 17)  # the documented per-call buffers
    limit = 2 * working + 16 * 2**20  # allocator slack, per-interaction scalars (~70 B each)
    whole = n * m * (8 + 4 + 4 + 1)  # ids copy + scores + concatenated scores + a mask
    assert whole > 2 * limit  # the period is large enough to tell the two apart
    rec = _peak("sampled", n, num_users=4000, num_items=3000, m=m)
    assert rec["metrics"]["interactions"] == n
    assert 0.0 <= rec["metrics"]["hit@20"] <= 1.0
    assert rec["peak"] < limit, (rec["peak"] / 2**20, limit / 2**20)


def test_full_protocol_peak_is_bounded_by_the_score_budget():
    from sml_torchrec.retrain.evaluate import FULL_EVAL_SCORES

    num_items, users = 120_000, 2000
    limit = 4 * 4 * FULL_EVAL_SCORES + 16 * 2**20  # scores, top-k scratch, slack
    whole = 1024 * num_items * 4  # one chunk of 1024 queries' scores against every item
    assert whole > 2 * limit
    rec = _peak("full", 4 * users, num_users=users, num_items=num_items)
    assert rec["metrics"]["users"] > 0.9 * users
    assert rec["peak"] < limit, (rec["peak"] / 2**20, limit / 2**20)
