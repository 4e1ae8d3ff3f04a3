import os
import time

import pytest
import torch
import torch.distributed as dist

from recsys_common.process_group import RankFailed, run_local


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


def _user_error_on_rank1() -> None:
    from recsys_common.errors import DataError

    if dist.get_rank() == 1:
        raise DataError("data/x/periods/period=00003.parquet", "row 7: bad id")
    dist.barrier()


def test_user_error_in_a_rank_is_its_one_line_and_rank():
    from recsys_common.errors import UserError

    with pytest.raises(UserError) as info:
        run_local(_user_error_on_rank1, 2, timeout_s=60)
    msg = str(info.value)
    assert msg == "data/x/periods/period=00003.parquet: row 7: bad id (on rank 1)"
    assert "\n" not in msg
    assert "DataError" in info.value.remote_traceback  # kept for --debug


def _same_user_error_everywhere() -> None:
    from recsys_common.errors import UserError

    raise UserError(f"same mistake {dist.get_world_size()}")


def test_the_same_user_error_on_every_rank_is_reported_once():
    with pytest.raises(RankFailed, match=r"^same mistake 2 \(on ranks 0, 1\)$"):
        run_local(_same_user_error_everywhere, 2, timeout_s=60)


def _killed_rank1() -> None:
    import signal

    if dist.get_rank() == 1:
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    dist.barrier()  # rank 0 fails here because rank 1 is gone ("connection reset")
    time.sleep(60)


def test_killed_rank_is_blamed_not_the_rank_that_lost_its_peer():
    from recsys_common.process_group import RankLost

    with pytest.raises(RankLost) as info:
        run_local(_killed_rank1, 2, timeout_s=60)
    assert str(info.value) == "rank 1 was killed by signal 9 (SIGKILL)"
    assert info.value.rank == 1


def _checkpoint_write_fails_on_rank1() -> None:
    from sml_torchrec.retrain.checkpoint import CheckpointWriteError

    if dist.get_rank() == 1:
        raise CheckpointWriteError("writing checkpoint c/ckpt-000003 failed (disk full)")
    dist.barrier()


def test_a_run_failure_in_a_rank_is_one_line_not_a_traceback():
    from recsys_common.errors import RunFailed

    with pytest.raises(RunFailed, match=r"^writing checkpoint .* \(disk full\) \(on rank 1\)$"):
        run_local(_checkpoint_write_fails_on_rank1, 2, timeout_s=60)
