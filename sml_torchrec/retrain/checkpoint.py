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
``keep`` checkpoints of the run are kept.

Which run a checkpoint belongs to: ``COMPLETE`` also records a :class:`RunIdentity`, a run id
plus what decides the run's numbers (a fingerprint of the dataset's files and the decisive
config). :func:`prepare` (called once, before any rank starts) resumes only a checkpoint whose
dataset and config match; anything else in the directory is refused, or deleted when the user
passes ``--overwrite``, so one directory never mixes two runs' checkpoints, and rotation only
ever deletes checkpoints of its own run.

DCP reshards on load, so a checkpoint saved on N ranks loads on M ranks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from recsys_common.errors import RunFailed, UserError
from recsys_common.process_group import rank_world

log = logging.getLogger(__name__)

MARKER = "COMPLETE"


class CheckpointWriteError(RunFailed, RuntimeError):
    """Writing a checkpoint failed (disk full, permission denied) on some rank: one line, the
    previous checkpoints are untouched."""


class CheckpointMismatch(UserError, ValueError):
    """A checkpoint does not fit this model (another model or an older layout)."""



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


def latest_valid(root: str | Path, report: bool = True) -> Path | None:
    """Newest checkpoint that verifies; damaged newer ones are reported (and left for a look)."""
    for d in reversed(list_checkpoints(root)):
        problem = verify(d)
        if problem is None:
            return d
        if report:
            if rank_world()[0] == 0:
                log.warning("checkpoint %s is damaged (%s); falling back to an older one", d,
                            problem)
    return None


@dataclass
class RunIdentity:
    """What a checkpoint must match to be resumed, and the run it belongs to."""

    run_id: str
    dataset: dict[str, str]  # dataset file -> "size:blake2b" (see dataset_fingerprint)
    config: dict[str, Any]  # RetrainConfig.decisive()


def _file_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"{path.stat().st_size}:{h.hexdigest()}"


def dataset_fingerprint(root: str | Path) -> dict[str, str]:
    """Size and content hash of ``metadata.json`` and every period file of a period dataset.

    Read once per run, before any rank starts (about 1 s per GB): a dataset rebuilt in place,
    even with the same shape, gets a different fingerprint.
    """
    root = Path(root)
    files = [root / "metadata.json", *sorted((root / "periods").glob("*.parquet"))]
    return {str(p.relative_to(root)): _file_hash(p) for p in files if p.is_file()}


def identity_of(d: str | Path) -> dict | None:
    """The :class:`RunIdentity` (as a dict) recorded in checkpoint ``d``, or None."""
    try:
        run = json.loads((Path(d) / MARKER).read_text()).get("run")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return run if isinstance(run, dict) else None


def differences(saved: dict | None, now: RunIdentity, limit: int = 3) -> list[str]:
    """What differs between a checkpoint's recorded identity and this run's (empty: none)."""
    if saved is None:
        return ["it records no dataset fingerprint"]

    def names(files: list[str]) -> str:
        more = f" and {len(files) - limit} more" if len(files) > limit else ""
        return ", ".join(files[:limit]) + more

    old_files, new_files = saved.get("dataset", {}), now.dataset
    out = []
    for what, files in (
        ("changed", [f for f in new_files if f in old_files and old_files[f] != new_files[f]]),
        ("missing now", [f for f in old_files if f not in new_files]),
        ("new", [f for f in new_files if f not in old_files]),
    ):
        if files:
            out.append(f"dataset files {what}: {names(sorted(files))}")
    old_cfg = saved.get("config", {})
    changes = [f"{k}: {old_cfg.get(k)!r} -> {v!r}" for k, v in now.config.items()
               if old_cfg.get(k) != v]
    out += changes[:limit] + ([f"{len(changes) - limit} more settings"]
                              if len(changes) > limit else [])
    return out


def clear(root: str | Path) -> None:
    """Delete the checkpoints (complete or not) in ``root``, and nothing else in it.

    They are first renamed into one hidden directory, so no half-deleted checkpoint is ever
    visible to a resume.
    """
    root = Path(root)
    trash = root / f".discarded-{uuid.uuid4().hex[:8]}"
    entries = [d for d in root.iterdir()
               if d.is_dir() and (d.name.startswith("ckpt-") or d.name.startswith(".tmp-ckpt-"))]
    if not entries:
        return
    trash.mkdir()
    for d in entries:
        os.rename(d, trash / d.name)
    shutil.rmtree(trash)


def prepare(
    root: str | Path, dataset: dict[str, str], config: dict[str, Any], resume: bool,
    overwrite: bool,
) -> tuple[RunIdentity, Path | None]:
    """Decide, before any rank starts, what this run does with the checkpoints in ``root``.

    Returns this run's identity and the checkpoint to resume from (None: start afresh).
    ``root`` holding checkpoints that this run cannot resume (another dataset or config,
    damaged, or ``resume`` off) is a :class:`UserError` naming the difference, unless
    ``overwrite``: they are deleted and the run starts afresh.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"--checkpoint-dir {root} is not a directory")
    fresh = RunIdentity(uuid.uuid4().hex, dataset, config)
    found = list_checkpoints(root)
    if not found:
        return fresh, None
    newest = latest_valid(root, report=False) if resume else None
    if newest is not None:
        saved = identity_of(newest)
        diffs = differences(saved, fresh)
        if not diffs:
            return RunIdentity(saved["run_id"], dataset, config), newest
        why = f"{root} holds checkpoints of another run ({'; '.join(diffs)})"
    elif resume:
        why = f"{root} holds only damaged checkpoints ({found[-1].name}: {verify(found[-1])})"
    else:
        why = f"--no-resume: {root} holds checkpoints of an earlier run (newest {found[-1].name})"
    if not overwrite:
        raise UserError(f"{why}; pass --overwrite to delete them and start afresh, or choose "
                        "another --checkpoint-dir")
    clear(root)
    return fresh, None


def resume_hint(root: str | Path | None) -> str:
    """'rerunning the same command resumes from checkpoint N (DIR)', or '' when none."""
    newest = latest_valid(root, report=False) if root else None
    if newest is None:
        return ""
    return f"rerunning the same command resumes from checkpoint {_step_of(newest)} ({newest})"


def _all_ok(ok: bool) -> bool:
    """Collective: True only if every rank passes True."""
    t = torch.tensor([int(ok)])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def save(
    root: str | Path, step: int, state: dict[str, Any], extra: dict[str, Any], keep: int = 2,
    identity: RunIdentity | None = None,
) -> Path:
    """Collective: every rank passes its ``state`` (DCP-able: ShardedTensors welcome).

    ``extra`` (rank 0's) is pickled with ``torch.save``; ``identity`` is recorded in
    ``COMPLETE`` and limits rotation to this run's checkpoints. Returns the final directory. An
    error on any rank (disk full, permission denied) raises on every rank after the temporary
    directory is removed; existing checkpoints are never touched before the new one is complete.
    """
    root = Path(root)
    final = root / f"ckpt-{step:06d}"
    tmp = root / _broadcast(f".tmp-ckpt-{step:06d}-{uuid.uuid4().hex[:8]}")
    error: BaseException | None = None
    # Every phase ends in a collective vote, so a failure on one rank never leaves the others
    # waiting in a different collective.
    try:
        if rank_world()[0] == 0:
            tmp.mkdir(parents=True)
    except OSError as e:
        error = e
    if _all_ok(error is None):
        try:
            dcp.save(state, storage_writer=dcp.FileSystemWriter(str(tmp)))
        except (Exception, CheckpointException) as e:  # raised on every rank if any failed
            error = e
    if error is None and rank_world()[0] == 0:
        try:
            _seal(tmp, final, step, extra, identity)
        except OSError as e:
            error = e
    if not _all_ok(error is None):
        if rank_world()[0] == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(
            f"writing checkpoint {final} failed ({error or 'on another rank'}); "
            f"the previous checkpoints in {root} are untouched"
        ) from error
    if rank_world()[0] == 0 and keep > 0:
        _rotate(root, keep, identity)
    return final


def _seal(
    tmp: Path, final: Path, step: int, extra: dict[str, Any], identity: RunIdentity | None
) -> None:
    """Rank 0: add ``extra.pt`` and the ``COMPLETE`` marker to ``tmp``, then rename it ``final``."""
    torch.save(extra, tmp / "extra.pt")
    marker = {"step": step, "files": _manifest(tmp)}
    if identity is not None:
        marker["run"] = asdict(identity)
    (tmp / MARKER).write_text(json.dumps(marker))
    fd = os.open(tmp, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    if final.exists():
        # This run's own, damaged or superseded (it resumed from an older one). Another
        # run's is never replaced: prepare() keeps runs apart, so this is a race.
        owner = identity_of(final)
        if identity is not None and owner and owner.get("run_id") != identity.run_id:
            raise FileExistsError(f"{final} belongs to another run")
        shutil.rmtree(final)
    os.rename(tmp, final)


def _rotate(root: Path, keep: int, identity: RunIdentity | None) -> None:
    """Rank 0: delete this run's checkpoints older than its newest ``keep``."""
    mine = [d for d in list_checkpoints(root) if identity is None
            or (identity_of(d) or {}).get("run_id") == identity.run_id]
    for old in mine[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


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
        raise CheckpointMismatch(
            f"checkpoint {d} does not hold this model's tensor {missing[0]!r}: it was written by "
            "a different model or an older layout; resume from another checkpoint directory "
            "or start afresh"
        ) from e


def load_extra(d: str | Path) -> dict[str, Any]:
    """Rank 0's ``extra`` of checkpoint ``d`` (the loop state that is not a model tensor)."""
    return torch.load(Path(d) / "extra.pt", weights_only=False)
