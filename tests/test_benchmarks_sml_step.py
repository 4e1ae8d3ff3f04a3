"""Smoke test of benchmarks/sml_step.py: it runs on 1 and 2 ranks and its JSON line is sound."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

KEYS = (
    "step1_examples_per_s", "step2_examples_per_s", "finetune_examples_per_s",
    "materialize_rows_per_s", "transfer_efficiency", "step2_transfer_efficiency",
    "step1_transfer_gflops", "mm_gflops", "peak_rss_mb", "unique_rows_per_step",
    "transfer_alone_efficiency", "step1_efficiency_bound", "step1_efficiency_ceiling",
)


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_sml_step_benchmark_smoke():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sml_step.py"), "--smoke", "--threads", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout
    res = json.loads(lines[0])
    assert res["benchmark"] == "sml_step" and res["smoke"] is True and res["threads"] == 2
    assert res["flop_factors"]["step1"] == 2.0 and 2.9 < res["flop_factors"]["step2"] < 3.0
    assert set(res["ranks"]) == {"1", "2"}
    for n, r in res["ranks"].items():
        for key in KEYS:
            assert _positive(r[key]), (n, key, r.get(key))
        assert r["threads_per_rank"] == 2 // int(n)
        assert len(r["peak_rss_mb_per_rank"]) == int(n)
        # Each rank transfers at most its batch's users + 2 item ids per example.
        assert r["unique_rows_per_step"] <= 3 * res["batch_per_rank"]
        examples = res["steps"] * res["batch_per_rank"] * int(n)
        assert math.isclose(r["step1_examples_per_s"] * r["seconds"]["step1"], examples)
        # Efficiency = median over timed runs of (that run's rate / the mm rate beside it).
        runs = r["timed_runs"]["step1"]
        assert len(runs) == res["repeats"] and all(_positive(t) and _positive(m) for t, m in runs)
        flops = r["step1_transfer_gflops"] * r["seconds"]["step1"]
        assert math.isclose(r["transfer_efficiency"],
                            statistics.median(flops / t / m for t, m in runs))
        # The what-ifs: a fine-tune step plus the transfer as timed alone / at the mm rate.
        alone, ft = r["timed_runs"]["transfer_alone"], r["timed_runs"]["finetune"]
        assert len(alone) == len(ft) == res["repeats"]
        alone_flops = r["transfer_alone_efficiency"] / statistics.median(
            1 / (t * m) for t, m in alone)
        bound = statistics.median(
            flops / (ta * flops / alone_flops + tf) / ((ma + mf) / 2)
            for (ta, ma), (tf, mf) in zip(alone, ft))
        assert math.isclose(r["step1_efficiency_bound"], bound, rel_tol=1e-6)
        ceiling = statistics.median(1 / (1 + tf * mf / flops) for tf, mf in ft)
        assert math.isclose(r["step1_efficiency_ceiling"], ceiling, rel_tol=1e-6)
        assert 0 < r["step1_efficiency_ceiling"] < 1
        # Step 1 outside its transfer, against a fine-tune step plus one lookup, per step.
        lk, s1 = r["timed_runs"]["lookup"], r["timed_runs"]["step1"]
        per_step = 1e3 / res["steps"]
        budget = statistics.median(tf + tl for (tf, _), (tl, _) in zip(ft, lk))
        assert math.isclose(r["outside_transfer_budget_ms"], budget * per_step, rel_tol=1e-9)
        assert r["step1_outside_transfer_ms"] < r["ms_per_step"]["step1"]
        assert math.isclose(r["ms_per_step"]["lookup"], r["seconds"]["lookup"] * per_step)
        assert _positive(r["outside_over_budget"]) and len(lk) == len(s1) == res["repeats"]
    assert "step1 ex/s" in proc.stdout  # the human table is printed too
