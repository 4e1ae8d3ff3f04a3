"""`sml-data`: turn a raw interaction log into a period dataset, and describe one.

    sml-data build --source yelp --input review.json --periods 40 --cut time --out data/yelp
    sml-data build --source synthetic --periods 16 --out data/synthetic
    sml-data info data/yelp
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from sml_torchrec.data.build import BuildConfig, build_period_dataset, collect
from sml_torchrec.data.errors import DataError
from sml_torchrec.data.period_dataset import PeriodDataset
from sml_torchrec.data.synthetic import SyntheticConfig, build_synthetic

SOURCE_NAMES = ("csv", "movielens", "yelp", "adressa", "synthetic")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sml-data", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a period dataset from a raw log")
    b.add_argument("--source", choices=SOURCE_NAMES, required=True)
    b.add_argument("--input", help="raw file or directory (not used by --source synthetic)")
    b.add_argument("--out", required=True, help="output dataset directory (replaced atomically)")
    b.add_argument("--periods", type=int, default=10)
    b.add_argument("--cut", choices=("time", "count"), default="time")
    b.add_argument("--kcore", type=int, default=0, help="keep users/items with >= k interactions")
    b.add_argument("--user-col", default="user_id", help="csv/parquet: user column")
    b.add_argument("--item-col", default="item_id", help="csv/parquet: item column")
    b.add_argument("--time-col", default="timestamp", help="csv/parquet: unix-seconds column")
    b.add_argument("--delimiter", default=",", help="csv: field delimiter")
    b.add_argument("--min-rating", type=float, help="movielens/yelp: keep ratings >= this")
    b.add_argument("--seed", type=int, default=0, help="synthetic: generator seed")
    b.add_argument("--num-users", type=int, help="synthetic: number of users")
    i = sub.add_parser("info", help="per-period counts of a period dataset")
    i.add_argument("dir")
    return p


def _source_options(args: argparse.Namespace) -> dict:
    if args.source == "csv":
        return {
            "user_col": args.user_col,
            "item_col": args.item_col,
            "time_col": args.time_col,
            "delimiter": args.delimiter,
        }
    if args.source == "movielens" and args.min_rating is not None:
        return {"min_rating": args.min_rating}
    if args.source == "yelp" and args.min_rating is not None:
        return {"min_stars": args.min_rating}
    return {}


def build(args: argparse.Namespace) -> None:
    t0 = time.monotonic()
    if args.source == "synthetic":
        cfg = SyntheticConfig(periods=args.periods, seed=args.seed)
        if args.num_users:
            cfg.num_users = args.num_users
        meta = build_synthetic(args.out, cfg)
    else:
        if not args.input:
            raise SystemExit(f"sml-data build: --input is required for --source {args.source}")
        from sml_torchrec.data.sources import read_source

        table = collect(
            read_source(args.source, args.input, **_source_options(args)), source=args.input
        )
        config = BuildConfig(periods=args.periods, cut=args.cut, kcore=args.kcore)
        meta = build_period_dataset(table, args.out, config, source=f"{args.source}:{args.input}")
    print(
        f"wrote {args.out}: {sum(meta.period_counts):,} interactions, {meta.num_users:,} users, "
        f"{meta.num_items:,} items, {meta.num_periods} periods ({time.monotonic() - t0:.1f}s)"
    )


def info(path: str) -> None:
    ds = PeriodDataset(path)
    m = ds.meta
    print(f"{path}: source {m.source or '?'}, cut {m.cut}")
    print(f"{m.num_users:,} users, {m.num_items:,} items, {m.num_periods} periods")
    cols = ("period", "interactions", "users", "items", "new_users", "new_items")
    print(" ".join(f"{c:>12}" for c in cols))
    for row in ds.summary():
        print(" ".join(f"{row[c]:>12,}" for c in cols))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            build(args)
        else:
            info(args.dir)
    except DataError as e:
        print(f"sml-data: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
