"""`sml-recommend`: the top-K items of each user from a model saved by `sml-retrain`, as parquet.

    sml-recommend --model runs/x/model --out recs.parquet          # SML, every known user, top 20
    sml-recommend --model runs/x/model --strategy fine_tune --k 10 --exclude-seen --out r.parquet
    sml-recommend --model runs/x/model --users period --candidates period --out r.parquet
    sml-recommend --model runs/x/model --nproc 2 --out r.parquet   # item rows split over 2 ranks

Scores are ``user[u] @ item[i]`` of the saved snapshot (``OUT/model/manifest.json``), ties
broken by the lower item id, exactly as the full evaluation protocol ranks. With
``--users period --candidates period`` and no exclusion the lists are the ones the full
protocol scored for the period the snapshot serves. On several ranks each rank scores its
block of item rows and only each rank's top-K per user travels
(:func:`~sml_torchrec.distributed.sharded_topk.sharded_topk`).

The output has one row per (user, rank): ``user_id``, ``rank`` (1 = best), ``item_id``,
``score`` (float32), and the raw ids ``user`` and ``item`` from the dataset's id maps when the
dataset is at hand. It is written to a temporary file and renamed; an existing file is
replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from recsys_common.cli_args import HelpFormatter, path_arg, positive_int
from recsys_common.errors import (
    EXIT_CODES_HELP,
    UserError,
    check_output_dir,
    debug_requested,
    refuse_to_replace,
    run_command,
)

PROG = "sml-recommend"
USERS = ("known", "period")
CANDIDATES = ("known", "period")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0], epilog=EXIT_CODES_HELP,
        formatter_class=HelpFormatter, allow_abbrev=False,
    )
    p.add_argument("--model", type=path_arg, required=True, metavar="DIR",
                   help="a saved model: the run's OUT/model directory (required)")
    p.add_argument("--out", type=path_arg, required=True, metavar="FILE",
                   help="parquet file to write (required); an existing one is replaced only "
                        "with --overwrite")
    p.add_argument("--strategy", default=None,
                   help="which saved strategy recommends (default: sml if saved, else the "
                        "first one in the manifest)")
    p.add_argument("--serves-period", type=int, default=None, metavar="S",
                   help="the snapshot that serves period S (default: the last one saved; "
                        "earlier ones exist with sml-retrain --save-every-period)")
    p.add_argument("--k", type=positive_int, default=20, help="items per user")
    p.add_argument("--users", choices=USERS, default="known",
                   help="known: every user seen by the end of the training period; period: "
                        "the users with an interaction in the served period (the full "
                        "protocol's test users; needs the dataset)")
    p.add_argument("--candidates", choices=CANDIDATES, default="known",
                   help="known: the items seen by the end of the training period; period: "
                        "the items that exist by the end of the served period (what the full "
                        "protocol ranks)")
    p.add_argument("--exclude-seen", action="store_true",
                   help="leave out the items each user interacted with in the periods the "
                        "model was trained on (needs the dataset; default: keep them, as the "
                        "full protocol does)")
    p.add_argument("--data", type=path_arg, default=None, metavar="DIR",
                   help="the period dataset, for --users period, --exclude-seen and raw ids "
                        "(default: the dataset recorded in the manifest, if still there)")
    p.add_argument("--nproc", type=positive_int, default=1,
                   help="local ranks that split the item rows (gloo on CPU)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--debug", action="store_true",
                   help="also print the traceback of a user error (or set SML_TORCHREC_DEBUG=1)")
    return p


def load_snapshot(model_dir: str | Path, strategy: str | None = None,
                  serves_period: int | None = None) -> tuple[dict, dict]:
    """(manifest, the chosen snapshot's entry) of a saved model; UserError naming the file."""
    from sml_torchrec.retrain.export import FORMAT, MANIFEST

    path = Path(model_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--model {model_dir}: cannot read {path} ({e}); give the OUT/model "
                        "directory of an sml-retrain run") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path}: not a model saved by sml-retrain")
    saved = manifest.get("strategies", {})
    if not saved:
        raise UserError(f"{path}: holds no saved strategy")
    name = strategy or ("sml" if "sml" in saved else next(iter(saved)))
    if name not in saved:
        raise UserError(f"argument --strategy: {name!r} is not saved in {path}; saved: "
                        f"{', '.join(saved)}")
    snaps = saved[name]
    if serves_period is None:
        return manifest, snaps[-1]
    for entry in snaps:
        if entry["serves_period"] == serves_period:
            return manifest, entry
    have = ", ".join(str(e["serves_period"]) for e in snaps)
    raise UserError(f"argument --serves-period: no snapshot of {name} serves period "
                    f"{serves_period} in {path}; saved: {have}")


def _dataset(args: argparse.Namespace, manifest: dict, needed: bool):
    """The period dataset (None when not needed and not found)."""
    from sml_torchrec.data.period_dataset import PeriodDataset

    where = args.data or manifest.get("data")
    if where is None or (not args.data and not Path(where).is_dir()):
        if needed:
            raise UserError("--users period and --exclude-seen need the dataset: pass --data")
        return None
    ds = PeriodDataset(where)
    if (ds.num_users, ds.num_items) != (manifest["num_users"], manifest["num_items"]):
        raise UserError(f"--data {where}: {ds.num_users} users and {ds.num_items} items, the "
                        f"model has {manifest['num_users']} and {manifest['num_items']}")
    return ds


def _exclusions(ds, users: np.ndarray, last_period: int) -> tuple[np.ndarray, np.ndarray]:
    """(query index, item) of every item a queried user had in periods 0..last_period."""
    hist = ds.periods(0, last_period + 1)
    pairs = np.unique(hist.user_id * ds.num_items + hist.item_id)
    u, i = pairs // ds.num_items, pairs % ds.num_items
    q = np.searchsorted(users, u)
    mine = (q < len(users)) & (users[np.minimum(q, len(users) - 1)] == u)
    return q[mine], i[mine]


def topk_rank(model_dir: str, entry: dict, users: np.ndarray, num_items: int, k: int,
              exclude: tuple[np.ndarray, np.ndarray] | None) -> tuple | None:
    """One rank's part: score this rank's block of the first ``num_items`` item rows for
    ``users`` and merge over the ranks; rank 0 returns (scores [U, k], item ids [U, k])."""
    import torch

    from recsys_common.process_group import rank_block, rank_world
    from sml_torchrec.distributed.sharded_topk import sharded_topk

    root = Path(model_dir)
    rows = rank_block(num_items)
    items = np.load(root / entry["item"]["file"], mmap_mode="r")
    user_rows = np.load(root / entry["user"]["file"], mmap_mode="r")
    queries = torch.from_numpy(np.array(user_rows[users]))  # copies: the files are read-only
    block = torch.from_numpy(np.array(items[rows]))
    eq = ei = None
    if exclude is not None:
        eq, ei = torch.from_numpy(exclude[0]), torch.from_numpy(exclude[1])
    vals, ids = sharded_topk(queries, block, rows.start, k, eq, ei)
    return (vals.numpy(), ids.numpy()) if rank_world()[0] == 0 else None


def _table(users: np.ndarray, vals: np.ndarray, ids: np.ndarray, ds):
    import pyarrow as pa

    k = ids.shape[1]
    keep = (ids >= 0).ravel()  # fewer than k candidates left: padded with -1
    cols = {
        "user_id": np.repeat(users, k)[keep],
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(users))[keep],
        "item_id": ids.ravel()[keep].astype(np.int64),
        "score": vals.ravel()[keep].astype(np.float32),
    }
    table = pa.table(cols)
    if ds is not None:
        table = table.append_column("user", ds.raw_ids("user").take(cols["user_id"]))
        table = table.append_column("item", ds.raw_ids("item").take(cols["item_id"]))
    return table


def _body(argv: list[str] | None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    from recsys_common.process_group import max_local_ranks

    if args.nproc > max_local_ranks():
        parser.error(f"argument --nproc: {args.nproc} local ranks on a machine with "
                     f"{os.cpu_count()} CPUs; at most {max_local_ranks()}")
    out = Path(args.out)
    check_output_dir(out.parent if str(out.parent) else ".", "--out")
    refuse_to_replace(out, args.overwrite)
    manifest, entry = load_snapshot(args.model, args.strategy, args.serves_period)
    ds = _dataset(args, manifest, needed=args.users == "period" or args.exclude_seen)
    t, s = entry["trained_through_period"], entry["serves_period"]
    if args.users == "period":
        users = np.unique(ds[s].user_id)
    else:
        users = np.arange(entry["users_known"], dtype=np.int64)
    num_items = entry["items_known"] if args.candidates == "known" else entry["items_at_serving"]
    exclude = _exclusions(ds, users, t) if args.exclude_seen else None
    job = (str(args.model), entry, users, num_items, args.k, exclude)
    if args.nproc == 1:
        vals, ids = topk_rank(*job)
    else:
        from recsys_common.process_group import run_local

        vals, ids = run_local(topk_rank, args.nproc, job, timeout_s=24 * 3600)[0]
    import pyarrow.parquet as pq

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    pq.write_table(_table(users, vals, ids, ds), tmp)
    os.replace(tmp, out)
    print(f"wrote {out}: top {args.k} of {num_items} items for {len(users):,} users "
          f"({entry['strategy']}, serving period {s})")


def main(argv: list[str] | None = None) -> int:
    """The ``sml-recommend`` command; returns its exit code."""
    return run_command(PROG, lambda: _body(argv), debug=debug_requested(argv))


if __name__ == "__main__":
    sys.exit(main())
