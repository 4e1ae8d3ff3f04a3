"""The README's "SML inside your own TorchRec model" example runs as written, on 2 ranks."""

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    text = README.read_text()
    m = re.search(r"<!-- example: sml-in-your-model -->\n```python\n(.*?)```", text, re.S)
    assert m, "README lost its example block"
    return m.group(1)


def test_example_is_about_forty_lines():
    assert 25 <= len(_example().splitlines()) <= 50


def test_readme_example_runs_under_torchrun(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(_example())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("served"))
    # W_t of both tables came out whole, as a plain EBC's state dict.
    assert "'embedding_bags.user.weight': (1000, 16)" in line
    assert "'embedding_bags.item.weight': (1000, 16)" in line
    loss = float(line.rsplit("loss ", 1)[1])
    assert 0 < loss < 5
