"""The Python API: `run(config)` in a plain process, no process group and no launcher."""

import json
import os
import subprocess
import sys

from sml_torchrec.data.synthetic import SyntheticConfig, build_synthetic

TINY = SyntheticConfig(num_users=120, periods=6, initial_items=30, new_items_per_period=10,
                       seed=5)

SCRIPT = """
import json, sys
import torch.distributed as dist
from sml_torchrec import RetrainConfig, run

cfg = RetrainConfig(data=sys.argv[1], out=sys.argv[2], strategies=["fine_tune"],
                    init_periods=2, val_periods=1, test_periods=1, dim=8, init_epochs=1,
                    epochs=1, num_eval_negatives=20, batch_size=128)
result = run(cfg)
print(json.dumps({"full": result.results["protocols"]["full"]["fine_tune"]["recall@20"],
                  "sampled": result.results["protocols"]["sampled"]["fine_tune"]["hit@20"],
                  "model": str(result.model_dir), "png": str(result.plot_path),
                  "group_left": dist.is_initialized()}))
"""


def test_run_in_one_process_without_a_process_group(tmp_path):
    data, out = tmp_path / "tiny", tmp_path / "run"
    build_synthetic(data, TINY)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")}
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(data), str(out)], capture_output=True,
                       text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    saved = json.loads((out / "results.json").read_text())["protocols"]
    assert got["full"] == saved["full"]["fine_tune"]["recall@20"]
    assert got["sampled"] == saved["sampled"]["fine_tune"]["hit@20"]
    assert got["model"] == str(out / "model") and (out / "model" / "manifest.json").is_file()
    assert got["png"] == str(out / "results.png") and not got["group_left"]
    assert "fine_tune period   5 (test)" in p.stderr  # the progress lines, on stderr


def test_only_the_known_warnings_are_silenced():
    import warnings

    from sml_torchrec import api

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        api._narrow_warnings()
        warnings.warn_explicit("Please use DTensor instead and we are deprecating ShardedTensor.",
                               FutureWarning, "shard_ops.py", 1,
                               module="sml_torchrec.distributed.shard_ops")
        warnings.warn_explicit("`torch.distributed.all_gather_into_tensor` is deprecated.",
                               FutureWarning, "c10d_logger.py", 83,
                               module="torch.distributed.c10d_logger")
        warnings.warn_explicit("`broadcast_buffers` is deprecated", FutureWarning, "mine.py", 1,
                               module="mine")  # the same words from elsewhere still show
        warnings.warn("anything else", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["`broadcast_buffers` is deprecated",
                                              "anything else"]
