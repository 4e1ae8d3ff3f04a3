"""Per-period checkpoints that survive crashes: each rank writes its own shards, atomically.

Layout of a checkpoint directory::

    CKPT/ckpt-000007/          one complete checkpoint (step 7)
        __0_0.distcp ...       torch.distributed.checkpoint shards, written by every rank
        .metadata
        extra.pt               rank 0: loop state that is not a tensor of the model
        COMPLETE               written last: the file list with sizes and CRC32s
    CKPT/.tmp-ckpt-000008-ab12cd34/   a checkpoint being written (ignored by resume)

A checkpoint is written into a temporary directory and renamed into place only after every
rank has finished and rank 0 has written ``COMPLETE``, so a crash mid-write leaves the previous
checkpoints untouched. On resume the newest checkpoint whose files match its ``COMPLETE``
manifest is used; a damaged one (a truncated file, say) is reported and skipped. The last
``keep`` checkpoints are kept.

DCP reshards on load, so a checkpoint saved on N ranks loads on M ranks.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
import zlib
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

log = logging.getLogger(__name__)

MARKER = "COMPLETE"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _broadcast(obj: Any) -> Any:
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def _crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def _manifest(d: Path) -> dict[str, list[int]]:
    return {
        str(p.relative_to(d)): [p.stat().st_size, _crc(p)]
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def verify(d: Path) -> str | None:
    """None if ``d`` is a complete, undamaged checkpoint, else what is wrong with it."""
    marker = d / MARKER
    if not marker.is_file():
        return "no COMPLETE marker (write never finished)"
    try:
        expected = json.loads(marker.read_text())["files"]
    except (json.JSONDecodeError, KeyError) as e:
        return f"unreadable COMPLETE marker: {e}"
    for name, (size, crc) in expected.items():
        p = d / name
        if not p.is_file():
            return f"missing file {name}"
        if p.stat().st_size != size:
            return f"file {name} has {p.stat().st_size} bytes, expected {size} (truncated?)"
        if _crc(p) != crc:
            return f"file {name} fails its checksum"
    return None


def _step_of(d: Path) -> int:
    return int(d.name.split("-")[1])


def list_checkpoints(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        (d for d in root.iterdir() if d.is_dir() and d.name.startswith("ckpt-")), key=_step_of
    )


def latest_valid(root: str | Path) -> Path | None:
    """Newest checkpoint that verifies; damaged newer ones are reported (and left for a look)."""
    for d in reversed(list_checkpoints(root)):
        problem = verify(d)
        if problem is None:
            return d
        msg = f"checkpoint {d} is damaged ({problem}); falling back to an older one"
        log.warning(msg)
        if _rank() == 0:
            print(msg, flush=True)
    return None


def _all_ok(ok: bool) -> bool:
    """Collective: True only if every rank passes True."""
    t = torch.tensor([int(ok)])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def save(
    root: str | Path, step: int, state: dict[str, Any], extra: dict[str, Any], keep: int = 2
) -> Path:
    """Collective: every rank passes its ``state`` (DCP-able: ShardedTensors welcome).

    ``extra`` (rank 0's) is pickled with ``torch.save``. Returns the final directory. An error
    on any rank (disk full, permission denied) raises on every rank after the temporary
    directory is removed; existing checkpoints are never touched before the new one is complete.
    """
    root = Path(root)
    final = root / f"ckpt-{step:06d}"
    tmp = root / _broadcast(f".tmp-ckpt-{step:06d}-{uuid.uuid4().hex[:8]}")
    error: BaseException | None = None
    # Every phase ends in a collective vote, so a failure on one rank never leaves the others
    # waiting in a different collective.
    try:
        if _rank() == 0:
            tmp.mkdir(parents=True)
    except OSError as e:
        error = e
    if _all_ok(error is None):
        try:
            dcp.save(state, storage_writer=dcp.FileSystemWriter(str(tmp)))
        except (Exception, CheckpointException) as e:  # raised on every rank if any failed
            error = e
    if error is None and _rank() == 0:
        try:
            torch.save(extra, tmp / "extra.pt")
            (tmp / MARKER).write_text(json.dumps({"step": step, "files": _manifest(tmp)}))
            fd = os.open(tmp, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            if final.exists():  # left by an earlier run that got further: superseded
                shutil.rmtree(final)
            os.rename(tmp, final)
        except OSError as e:
            error = e
    if not _all_ok(error is None):
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(
            f"writing checkpoint {final} failed ({error or 'on another rank'}); "
            f"the previous checkpoints in {root} are untouched"
        ) from error
    if _rank() == 0:
        for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(d: str | Path, state: dict[str, Any]) -> None:
    """Collective: fill ``state`` in place from checkpoint ``d``.

    A checkpoint that lacks one of ``state``'s tensors (written by another model, or by an
    older layout of this one) raises ``ValueError`` naming the checkpoint and the key, before
    anything in ``state`` is overwritten.
    """
    d = Path(d)
    try:
        dcp.load(state, storage_reader=dcp.FileSystemReader(str(d)))
    except (RuntimeError, CheckpointException) as e:  # DCP's "Missing key" is raised in planning
        missing = re.findall(r"Missing key in checkpoint state_dict: ([^{}\n]+)\.$", str(e), re.M)
        if not missing:
            raise
        raise ValueError(
            f"checkpoint {d} does not hold this model's tensor {missing[0]!r}: it was written by "
            "a different model or an older layout; resume from another checkpoint directory "
            "or start afresh"
        ) from e


def load(d: str | Path, state: dict[str, Any]) -> dict[str, Any]:
    """Collective: fill ``state`` in place from ``d``; returns rank 0's ``extra`` on every rank."""
    d = Path(d)
    load_state(d, state)
    return torch.load(d / "extra.pt", weights_only=False)
