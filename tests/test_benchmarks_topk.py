import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_topk_eval_benchmark_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "topk_eval.py"), "--smoke"],
                         capture_output=True, text=True, timeout=240, check=True, cwd=ROOT)
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    assert rec["benchmark"] == "topk_eval" and rec["smoke"] is True and rec["threads"] == 1
    assert set(rec["ranks"]) == {"1", "2"}
    for n, r in rec["ranks"].items():
        for key in ("sharded_users_per_s", "gather_users_per_s", "metrics_users_per_s"):
            assert r[key] > 0, (n, key)
        assert abs(r["speedup"] - r["sharded_users_per_s"] / r["gather_users_per_s"]) < 1e-6
    # With 2 ranks the merge moves the top-k candidates, not the table.
    assert rec["ranks"]["2"]["sharded_bytes_in"] > 0
    assert rec["ranks"]["1"]["sharded_bytes_in"] == 0
    assert "speedup" in out.stdout  # the human table is printed too
