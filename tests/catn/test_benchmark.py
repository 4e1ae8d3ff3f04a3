import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_throughput_benchmark_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "catn_throughput.py"),
                          "--smoke"], capture_output=True, text=True, timeout=120, check=True,
                         cwd=ROOT)
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    assert rec["threads"] == 1 and rec["smoke"] is True
    for k in ("train_examples_per_s", "inference_users_per_s"):
        assert rec["batched"][k] > 0 and rec["aspect_loop"][k] > 0
    assert "speedup" in out.stdout
