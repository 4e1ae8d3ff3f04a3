"""Saving what a run serves: every strategy's user vectors and item rows as ``.npy`` files.

Layout of ``OUT/model`` (``sml-retrain``'s default; ``--no-save-model`` skips it)::

    manifest.json                        format, dataset, config, and every snapshot below
    <strategy>/serves-<s>/user.npy       [num_users, d] float32: served user vectors
    <strategy>/serves-<s>/item.npy       [num_items, d] float32: served item rows
    <strategy>/serves-<s>/theta/<table>/<param>.npy   SML only: Θ of each table's transfer
    <strategy>/serves-<s>/snapshot.json  this snapshot's entry of the manifest

A snapshot ``serves-<s>`` is the model trained through period ``s - 1`` that serves (and was
tested on) period ``s``; without ``--save-every-period`` there is one per strategy, the last
(s = P - 1). The score of item i for user u is ``user[u] @ item[i]``, higher is better, for
every strategy: for MF strategies (and SML's W_t) the user vectors are the user table's rows,
for GRU4Rec/Caser the encoder's output over the user's last items of D_0..D_{s-1}; ids first
seen in period s hold what the never-trained rule serves them (``--never-trained``). The full
protocol ranked items ``0 .. items_at_serving - 1``; items ``0 .. items_known - 1`` had
appeared by the end of the training period. Reading a model needs only numpy and json
(``docs/results.md`` has a ten-line example).

Writing is atomic: snapshots go to ``OUT/.model-partial`` as the run reaches them (so a run
resumed from a checkpoint keeps the snapshots of the strategies it finished earlier), and
the directory becomes ``OUT/model`` by a rename only when the run is done. An earlier run's
``OUT/model`` is replaced only with ``--overwrite``, and a directory there that is not a saved
model is never replaced (see :func:`check_model_output`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recsys_common.errors import UserError
from recsys_common.files import write_json_atomic
from sml_torchrec.data.period_dataset import PeriodDataset
from sml_torchrec.retrain.config import RetrainConfig

if TYPE_CHECKING:  # checking an output directory before a run needs no torch
    from sml_torchrec.retrain.serving import ServedModel

log = logging.getLogger(__name__)

MODEL_DIR = "model"
STAGING_DIR = ".model-partial"
MANIFEST = "manifest.json"
FORMAT = "sml-torchrec-model"
FORMAT_VERSION = 1
_STAGING_MARKER = ".sml-torchrec-partial-model"


def is_saved_model(path: Path) -> bool:
    """Whether ``path`` holds a model written by :class:`ModelWriter`."""
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_model_output(out: str | Path, overwrite: bool) -> None:
    """Before any work: ``OUT/model`` may be written (UserError naming the path if not)."""
    out = Path(out)
    model, staging = out / MODEL_DIR, out / STAGING_DIR
    if os.path.lexists(model):
        if not is_saved_model(model):
            raise UserError(f"{model} exists and is not a saved model; move it away, choose "
                            "another --out, or pass --no-save-model")
        if not overwrite:
            raise UserError(f"{model} exists (an earlier run's model); pass --overwrite to "
                            "replace it, --no-save-model, or choose another --out")
    if os.path.lexists(staging) and not (staging / _STAGING_MARKER).is_file():
        raise UserError(f"{staging} exists and was not made by sml-retrain; move it away or "
                        "choose another --out")


def _write_npy(path: Path, array: np.ndarray) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(array, dtype=np.float32))
    return {"shape": list(array.shape), "dtype": "float32"}


def served_arrays(
    model: ServedModel, num_users: int, known_users: int, known_items: int, rule: str,
) -> tuple[np.ndarray, np.ndarray]:
    """(user vectors [num_users, d], item rows [num_items, d]) of a served model, on every
    rank (a collective: every rank calls it), ids at or above ``known_users`` /
    ``known_items`` served by the never-trained ``rule``. The same call evaluation makes
    (:func:`~sml_torchrec.retrain.serving.serve`), so a saved model scores exactly as the run's
    evaluation did."""
    import torch

    from sml_torchrec.retrain.serving import serve

    with torch.no_grad():
        served = serve(model, np.arange(num_users, dtype=np.int64), known_users, known_items,
                       rule)
        return served.user_vectors.float().numpy(), served.item_table().float().numpy()


class ModelWriter:
    """Writes snapshots of served models into ``OUT/.model-partial`` and, at the end, swaps
    it in as ``OUT/model`` with its manifest. :meth:`save` is a collective; only rank 0
    writes."""

    def __init__(self, cfg: RetrainConfig, ds: PeriodDataset, dataset_name: str) -> None:
        self.cfg, self.ds, self.dataset_name = cfg, ds, dataset_name
        self.out = Path(cfg.out)
        self.staging = self.out / STAGING_DIR
        from recsys_common.process_group import rank_world

        self.rank = rank_world()[0]

    def begin(self, resumed: bool) -> None:
        """A fresh run starts an empty staging directory; a resumed one keeps the snapshots
        of the strategies finished before the checkpoint."""
        if self.rank != 0:
            return
        if not resumed and self.staging.exists():
            shutil.rmtree(self.staging)  # ours: check_model_output saw the marker
        self.staging.mkdir(parents=True, exist_ok=True)
        (self.staging / _STAGING_MARKER).touch()

    def save(self, strategy: str, model: ServedModel, t: int) -> None:
        """Snapshot of ``model`` trained through period ``t`` (serves period t + 1)."""
        meta = self.ds.meta
        user, item = served_arrays(model, self.ds.num_users, meta.users_upto[t],
                                   meta.items_upto[t], self.cfg.never_trained)
        theta = None
        if getattr(model, "transfer", False):
            theta = {name: {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
                     for name, net in model.embedding.transfers.items()}
        if self.rank == 0:
            self._write(strategy, t, user, item, theta)

    def _write(self, strategy: str, t: int, user: np.ndarray, item: np.ndarray,
               theta: dict | None) -> None:
        s = t + 1
        rel = f"{strategy}/serves-{s}"
        final, tmp = self.staging / rel, self.staging / f"{rel}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        meta = self.ds.meta
        entry = {
            "strategy": strategy,
            "trained_through_period": t,
            "serves_period": s,
            "items_known": int(meta.items_upto[t]),
            "items_at_serving": int(meta.items_upto[s]),
            "users_known": int(meta.users_upto[t]),
            "user": {"file": f"{rel}/user.npy", **_write_npy(tmp / "user.npy", user)},
            "item": {"file": f"{rel}/item.npy", **_write_npy(tmp / "item.npy", item)},
        }
        if theta is not None:
            entry["theta"] = {
                "config": self._transfer_config(),
                "tables": {
                    table: {k: {"file": f"{rel}/theta/{table}/{k}.npy",
                                **_write_npy(tmp / "theta" / table / f"{k}.npy", v)}
                            for k, v in params.items()}
                    for table, params in theta.items()
                },
            }
        write_json_atomic(tmp / "snapshot.json", entry)
        shutil.rmtree(final, ignore_errors=True)  # a period redone after a resume
        os.replace(tmp, final)

    def _transfer_config(self) -> dict:
        """f_Θ's hyper-parameters: what a reader needs to apply Θ (``modules/transfer.py``
        states the function)."""
        c = self.cfg.transfer_config()
        return {"n1": c.n1, "n2": c.n2, "hidden": c.hidden, "eps": c.eps, "gelu": c.gelu}

    def _snapshots(self, strategy: str) -> list[dict]:
        found = []
        for p in (self.staging / strategy).glob("serves-*/snapshot.json"):
            found.append(json.loads(p.read_text()))
        return sorted(found, key=lambda e: e["serves_period"])

    def finish(self, chosen: dict[str, str] | None = None) -> Path | None:
        """Rank 0: write the manifest and move the model into place; returns its path.

        ``chosen`` maps a strategy to the run that stands for it (with ``--tune``, the grid
        point chosen on the validation periods, whose snapshots were saved under its label);
        the other grid points' snapshots are deleted."""
        if self.rank != 0:
            return None
        from sml_torchrec.retrain.tuning import runs

        chosen = chosen or {}
        for label in {r.label for r in runs(self.cfg)} - set(chosen.values()):
            if label not in self.cfg.strategies:  # a grid point that was not chosen
                shutil.rmtree(self.staging / label, ignore_errors=True)
        strategies = {}
        for name in self.cfg.strategies:
            snaps = self._snapshots(chosen.get(name, name))
            if snaps:
                strategies[name] = snaps
            else:  # e.g. finished before a resume by a run that saved no model
                log.warning("no saved model of strategy %s (it finished before this run "
                            "resumed, in a run that did not save it)", name)
        write_json_atomic(self.staging / MANIFEST, {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dataset": self.dataset_name,
            "data": str(Path(self.ds.root).resolve()),
            "num_users": self.ds.num_users,
            "num_items": self.ds.num_items,
            "score": "user[u] @ item[i], higher is better",
            "config": asdict(self.cfg),
            "strategies": strategies,
        })
        (self.staging / _STAGING_MARKER).unlink()
        target = self.out / MODEL_DIR
        old = self.out / f".model-old-{os.getpid()}"
        if target.exists():  # an earlier run's model: check_model_output allowed replacing it
            os.replace(target, old)
        os.replace(self.staging, target)
        shutil.rmtree(old, ignore_errors=True)
        return target
