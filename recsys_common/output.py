"""Where dataset builds write: the one output guard and the swap every build command uses.

A build never loses a user's files. Its output directory (``--out``) must be one of

* missing (it is created), or an empty directory;
* a dataset of the same kind, every entry of which is one of that kind's files: replacing it
  needs ``overwrite`` (``--overwrite``), and it is replaced only after the new one is complete.

Anything else is refused before any work starts, with or without ``overwrite``: a file, a
non-empty directory that is not a dataset of this kind (another kind of dataset included), a
dataset directory that also holds other files (they would be deleted with it), any
directory that is an input, contains an input, or lies inside an input directory (an input is
never deleted, rewritten or mixed with outputs), and any directory inside a dataset of the same
kind (it would become part of that dataset's directory).

Writing: the new dataset is written to a hidden temporary directory *inside* ``out``; then the
old dataset's entries are moved into a hidden backup directory (the marker file first, so the
directory never looks complete half-way), the new entries are moved in (the marker last), and
the backup is deleted. All moves are renames within one directory; if one fails, the moves are
undone and the old dataset is left as it was. The directory itself is never renamed or
removed, so ``--out .`` keeps the shell's working directory, its permissions and any symlink
pointing at it. A build killed half-way leaves a hidden ``.build-tmp-*`` directory (the
incomplete new dataset), which the next build clears, or, if killed during the swap, a hidden
``.build-old-*`` directory holding (part of) the previous dataset, which counts as this kind's
files: the next build replaces it only with ``--overwrite``.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from recsys_common.errors import UserError

T = TypeVar("T")

TMP_PREFIX = ".build-tmp-"
OLD_PREFIX = ".build-old-"
_LEFTOVERS = (TMP_PREFIX + "*", OLD_PREFIX + "*")
_USER_FIXABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class OutputError(UserError):
    """An output directory a build must not write to; the message names the directory."""

    def __init__(self, path: str | Path, message: str, flag: str | None = "--out") -> None:
        self.path = str(path)
        super().__init__(f"{flag} {path}: {message}" if flag else f"{path}: {message}")


@dataclass(frozen=True)
class DatasetLayout:
    """What a dataset directory of one kind holds, so that it can be recognised as such.

    ``entries`` are the top-level names (fnmatch patterns) a dataset of this kind may hold;
    ``subdirs`` maps a directory among them to the pattern of its own entries. ``marker`` is the
    file written last; it must be a JSON object holding every key of ``marker_keys``.
    """

    kind: str
    marker: str
    marker_keys: tuple[str, ...]
    entries: tuple[str, ...]
    subdirs: Mapping[str, str] = field(default_factory=dict)

    def own(self, d: Path, name: str) -> bool:
        """Whether the entry ``name`` of ``d`` is one this kind of dataset writes."""
        if any(fnmatch.fnmatchcase(name, p) for p in _LEFTOVERS):
            return (d / name).is_dir() and not (d / name).is_symlink()
        if not any(fnmatch.fnmatchcase(name, p) for p in self.entries):
            return False
        p = d / name
        if p.is_symlink():
            return False
        if name in self.subdirs:
            return p.is_dir() and all(
                fnmatch.fnmatchcase(c.name, self.subdirs[name]) and c.is_file()
                for c in p.iterdir()
            )
        return p.is_file()

    def marker_ok(self, d: Path) -> bool:
        """Whether ``d`` holds this kind's marker file with the keys this kind writes."""
        try:
            meta = json.loads((d / self.marker).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(meta, dict) and all(k in meta for k in self.marker_keys)


def _resolve(p: str | Path) -> Path:
    return Path(os.path.abspath(p)).resolve()


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_output_dir(
    out: str | Path,
    layout: DatasetLayout,
    *,
    overwrite: bool,
    inputs: Iterable[str | Path | None] = (),
    flag: str | None = "--out",
) -> None:
    """Raise :class:`OutputError` unless a build of ``layout``'s kind may write to ``out``.

    See the module docstring for the rules. ``flag`` is how the command's user named ``out``
    (None: not by a flag, e.g. a library call). Cheap (one directory listing), so commands call it
    before reading any input, and the writer calls it again just before writing.
    """
    target = _resolve(out)
    _refuse_inputs(out, target, inputs, flag)
    for parent in target.parents:
        if (parent / layout.marker).is_file() and layout.marker_ok(parent):
            raise OutputError(out, f"is inside the {layout.kind} {parent}; choose a directory "
                                   "outside it", flag)
    if not target.exists():
        if Path(out).is_symlink():
            raise OutputError(out, "is a dangling symbolic link; remove it or choose another "
                                   "directory", flag)
        ancestor = next(p for p in target.parents if p.exists())
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise OutputError(out, f"cannot be created: {ancestor} is not a writable directory",
                              flag)
        return
    if not target.is_dir():
        raise OutputError(out, "exists and is not a directory; choose another directory", flag)
    _refuse_contents(out, target, layout, overwrite, flag)
    if not os.access(target, os.W_OK | os.X_OK):
        raise OutputError(out, "is not writable", flag)


def _refuse_inputs(
    out: str | Path, target: Path, inputs: Iterable[str | Path | None], flag: str | None
) -> None:
    """Refuse an ``out`` that is, holds, or lies inside one of ``inputs``."""
    # Paths are compared both as written and with symbolic links resolved: a link to the input
    # inside --out, or a --out that is a link to the input's directory, are both caught.
    targets = {target, Path(os.path.abspath(out))}
    for inp in inputs:
        if inp is None:
            continue
        for src in {_resolve(inp), Path(os.path.abspath(inp))}:
            for t in targets:
                if t == src:
                    raise OutputError(out, f"is the input {inp} itself; choose another "
                                           "directory", flag)
                if _within(src, t):
                    raise OutputError(
                        out,
                        f"contains the input {inp}, which a build never deletes or rewrites; "
                        "choose another directory",
                        flag,
                    )
                if src.is_dir() and _within(t, src):
                    raise OutputError(
                        out,
                        f"is inside the input directory {inp}; outputs are never mixed with "
                        "inputs, choose a directory outside it",
                        flag,
                    )


def _refuse_contents(
    out: str | Path, target: Path, layout: DatasetLayout, overwrite: bool, flag: str | None
) -> None:
    """Refuse an existing directory ``target`` holding anything a build of ``layout`` would lose."""
    # A temporary directory left by a killed build holds an incomplete new dataset, never
    # anything of the user's nor the previous dataset: it does not count, and is cleared.
    names = sorted(n for n in os.listdir(target)
                   if not (n.startswith(TMP_PREFIX) and layout.own(target, n)))
    if not names:
        return
    marker = layout.marker in names and layout.marker_ok(target)
    foreign = [n for n in names if not layout.own(target, n) or
               (n == layout.marker and not marker)]
    if foreign and marker:
        raise OutputError(
            out,
            f"holds a {layout.kind} and also {_listing(foreign)}, which replacing it "
            "would delete; move them away or choose another directory",
            flag,
        )
    if foreign:
        raise OutputError(
            out,
            f"is not empty and is not a {layout.kind} (it holds {_listing(foreign)}); "
            "choose a new or empty directory",
            flag,
        )
    if not overwrite:
        what = (f"a {layout.kind}" if marker
                else f"the remains of an interrupted {layout.kind} build")
        raise OutputError(out, f"already holds {what}; pass --overwrite to replace it", flag)


def write_dataset_dir(
    out: str | Path,
    layout: DatasetLayout,
    fill: Callable[[Path], T],
    *,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
) -> T:
    """Check ``out`` (:func:`check_output_dir`), let ``fill(tmp)`` write the dataset into an
    empty temporary directory, then swap it into ``out``; returns what ``fill`` returned.

    If ``fill`` or the swap fails, ``out`` is left exactly as it was (a directory this call
    created is removed again) and the error propagates.
    """
    inputs = list(inputs)
    # Commands check with their flag's name before reading anything; this check is for calls
    # from code, and for anything that appeared in the directory since.
    check_output_dir(out, layout, overwrite=overwrite, inputs=inputs, flag=None)
    target = Path(os.path.abspath(out))
    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=target))
    except OSError as e:
        raise OutputError(out, f"cannot be written: {e.strerror or e}", None) from e
    try:
        result = fill(tmp)
        if layout.marker not in os.listdir(tmp):
            raise RuntimeError(f"the {layout.kind} writer did not write {layout.marker}")
        _swap_in(tmp, target, layout)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            try:
                target.rmdir()
            except OSError:
                pass
        if isinstance(e, OSError) and e.errno in _USER_FIXABLE:
            # A full disk or a read-only mount is the user's to fix, not a bug of ours.
            raise OutputError(
                out, f"cannot be written: {e.strerror}; nothing was changed", None
            ) from e
        raise
    return result


def _swap_in(tmp: Path, target: Path, layout: DatasetLayout) -> None:
    """Replace ``target``'s entries (all of them this kind's) by those of ``tmp``, undoably."""
    old = target / f"{OLD_PREFIX}{uuid.uuid4().hex[:8]}"
    old.mkdir()
    # The marker leaves first and arrives last: a reader never sees a marker beside a mix.
    previous = sorted(
        (n for n in os.listdir(target) if n not in (tmp.name, old.name)),
        key=lambda n: n != layout.marker,
    )
    new = sorted(os.listdir(tmp), key=lambda n: n == layout.marker)
    moved_old: list[str] = []
    moved_new: list[str] = []
    try:
        for n in previous:
            os.rename(target / n, old / n)
            moved_old.append(n)
        for n in new:
            os.rename(tmp / n, target / n)
            moved_new.append(n)
    except BaseException:
        for n in reversed(moved_new):
            os.rename(target / n, tmp / n)
        for n in reversed(moved_old):
            os.rename(old / n, target / n)
        old.rmdir()
        raise
    tmp.rmdir()
    shutil.rmtree(old, ignore_errors=True)
