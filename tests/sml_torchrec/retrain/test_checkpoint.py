import os

import pytest
import torch
import torch.distributed as dist

from recsys_common.process_group import run_local
from sml_torchrec.retrain import checkpoint


def _state(v: float) -> dict:
    return {"w": torch.full((4, 3), v), "nested": {"b": torch.arange(5) * v}}


def test_save_load_keep_last_k(tmp_path):
    for step in range(4):
        checkpoint.save(tmp_path, step, _state(step), {"step": step}, keep=2)
    assert [d.name for d in checkpoint.list_checkpoints(tmp_path)] == [
        "ckpt-000002", "ckpt-000003"]
    latest = checkpoint.latest_valid(tmp_path)
    target = _state(0.0)
    checkpoint.load_state(latest, target)
    assert checkpoint.load_extra(latest) == {"step": 3}
    assert torch.equal(target["w"], torch.full((4, 3), 3.0))
    assert not list(tmp_path.glob(".tmp-*"))


def test_checkpoint_of_another_layout_is_refused_by_name(tmp_path):
    checkpoint.save(tmp_path, 0, _state(1.0), {})
    target = {"w": torch.zeros(4, 3), "nested": {"renamed": torch.zeros(5)}}
    with pytest.raises(ValueError, match=r"ckpt-000000 does not hold .*'nested\.renamed'"):
        checkpoint.load_state(checkpoint.latest_valid(tmp_path), target)
    assert torch.equal(target["w"], torch.zeros(4, 3))  # nothing half-loaded


def test_truncated_newest_falls_back_and_says_so(tmp_path, caplog):
    for step in range(2):
        checkpoint.save(tmp_path, step, _state(step), {"step": step})
    newest = tmp_path / "ckpt-000001"
    victim = next(p for p in newest.iterdir() if p.suffix == ".distcp")
    victim.write_bytes(victim.read_bytes()[:-7])
    assert "truncated" in checkpoint.verify(newest)
    assert checkpoint.latest_valid(tmp_path) == tmp_path / "ckpt-000000"
    assert "ckpt-000001 is damaged" in caplog.text


def test_unfinished_checkpoint_is_ignored(tmp_path):
    checkpoint.save(tmp_path, 0, _state(0), {})
    checkpoint.save(tmp_path, 1, _state(1), {})
    (tmp_path / "ckpt-000001" / checkpoint.MARKER).unlink()
    assert checkpoint.latest_valid(tmp_path) == tmp_path / "ckpt-000000"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_permission_error_keeps_previous(tmp_path):
    checkpoint.save(tmp_path, 0, _state(0), {})
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(RuntimeError, match="previous checkpoints .* are untouched"):
            checkpoint.save(tmp_path, 1, _state(1), {})
    finally:
        tmp_path.chmod(0o700)
    assert checkpoint.latest_valid(tmp_path) == tmp_path / "ckpt-000000"


def test_write_error_keeps_previous(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, 0, _state(0), {"step": 0})

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(RuntimeError, match="No space left on device"):
        checkpoint.save(tmp_path, 1, _state(1), {"step": 1})
    monkeypatch.undo()
    assert [d.name for d in checkpoint.list_checkpoints(tmp_path)] == ["ckpt-000000"]
    assert not list(tmp_path.glob(".tmp-*"))
    assert checkpoint.verify(tmp_path / "ckpt-000000") is None


def _two_rank_failure(root: str) -> str:
    checkpoint.save(root, 0, _state(0), {})
    if dist.get_rank() == 1:
        # rank 1's disk is full: its shard cannot be written
        import torch.distributed.checkpoint as dcp

        orig = dcp.FileSystemWriter.write_data

        def fail(self, *a, **k):
            raise OSError(28, "No space left on device")

        dcp.FileSystemWriter.write_data = fail
    try:
        checkpoint.save(root, 1, _state(1), {})
    except RuntimeError as e:
        return str(e)
    finally:
        if dist.get_rank() == 1:
            dcp.FileSystemWriter.write_data = orig
    return "no error"


def test_failure_on_one_rank_fails_every_rank(tmp_path):
    msgs = run_local(_two_rank_failure, 2, (str(tmp_path),), timeout_s=120)
    assert all("previous checkpoints" in m for m in msgs), msgs
    assert [d.name for d in checkpoint.list_checkpoints(tmp_path)] == ["ckpt-000000"]
