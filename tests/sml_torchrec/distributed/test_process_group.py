import os
import time

import pytest
import torch
import torch.distributed as dist

from sml_torchrec.distributed.process_group import RankFailed, run_local


def _allreduce_rank() -> float:
    t = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(t)
    return t.item()


def _fail_on_rank1() -> None:
    if dist.get_rank() == 1:
        raise ValueError("boom on purpose")
    dist.barrier()


def _hang() -> None:
    time.sleep(60)


def _exit_hard() -> None:
    if dist.get_rank() == 1:
        os._exit(3)
    time.sleep(60)


def test_run_local_returns_per_rank_results():
    assert run_local(_allreduce_rank, 2, timeout_s=60) == [3.0, 3.0]


def test_failing_rank_reports_its_traceback():
    with pytest.raises(RankFailed, match="boom on purpose"):
        run_local(_fail_on_rank1, 2, timeout_s=60)


def test_hung_ranks_time_out():
    t0 = time.monotonic()
    with pytest.raises(RankFailed, match="timed out"):
        run_local(_hang, 2, timeout_s=3)
    assert time.monotonic() - t0 < 30


def test_dead_rank_is_detected():
    with pytest.raises(RankFailed, match="exit code 3"):
        run_local(_exit_hard, 2, timeout_s=50)


def _return_tensor() -> torch.Tensor:
    return torch.full((1000, 10), float(dist.get_rank()))


def test_tensors_come_back_intact():
    out = run_local(_return_tensor, 2, timeout_s=60)
    assert [float(t.mean()) for t in out] == [0.0, 1.0]
