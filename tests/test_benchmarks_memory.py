import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_memory_benchmark_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--smoke"],
                         capture_output=True, text=True, timeout=600, check=True, cwd=ROOT)
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    assert rec["benchmark"] == "memory" and rec["smoke"] is True and rec["threads"] == 1
    assert rec["repeats"] == 2 and rec["nproc"] == 2
    assert len(rec["run"]["per_rank"]) == 2
    rows = [*rec["run"]["per_rank"], rec["run"]["all"], rec["eval"]["all"]]
    if "added" in rec["eval"]:
        rows.append(rec["eval"]["added"])
    for s in rows:
        assert 0 < s["min_mb"] <= s["median_mb"] <= s["max_mb"], s
        assert abs(s["spread"] - (s["max_mb"] - s["min_mb"]) / s["median_mb"]) < 1e-9
    assert rec["run"]["all"]["n"] == 4 and rec["eval"]["all"]["n"] == 4
    # A rank's peak includes the evaluation it ran, so it is at least what evaluation added.
    if "added" in rec["eval"]:
        assert rec["eval"]["added"]["max_mb"] < rec["eval"]["all"]["min_mb"]
    assert rec["eval"]["interactions"] > 0
    assert "spread" in out.stdout  # the human table is printed too
