"""`sml-data`: turn a raw interaction log into a period dataset, and describe one.

    sml-data build --source yelp --input review.json --periods 40 --cut time --out data/yelp
    sml-data build --source synthetic --periods 16 --out data/synthetic
    sml-data info data/yelp

Safety: `build` writes only to a new or empty directory, or over a period dataset when given
--overwrite; it never writes into, over or around its input. A mistake in the arguments or the
data is reported as one line `sml-data: error: ...` (exit code 2); --debug (or
SML_TORCHREC_DEBUG=1) adds the traceback. A bug of ours keeps its traceback (exit code 1).
"""

from __future__ import annotations

import argparse
import sys
import time

from recsys_common.cli_args import (
    HelpFormatter,
    command_logging,
    finite_float,
    nonnegative_int,
    one_char,
    path_arg,
    positive_int,
)
from recsys_common.errors import debug_requested, run_command
from recsys_common.files import check_input_path
from sml_torchrec.data.build import BuildConfig, build_period_dataset, collect
from sml_torchrec.data.period_dataset import PeriodDataset, check_period_output
from sml_torchrec.data.synthetic import SyntheticConfig, build_synthetic, peak_bytes

PROG = "sml-data"
MAX_SYNTHETIC_BYTES = 16 << 30  # the generator is a toy: refuse what would exhaust a machine
SOURCE_NAMES = ("csv", "movielens", "yelp", "adressa", "synthetic")
# Flags that only some sources read: giving one to another source is a mistake, not a no-op.
ONLY_FOR = {
    "user_col": ("--user-col", ("csv",)),
    "item_col": ("--item-col", ("csv",)),
    "time_col": ("--time-col", ("csv",)),
    "delimiter": ("--delimiter", ("csv",)),
    "min_rating": ("--min-rating", ("movielens", "yelp")),
    "seed": ("--seed", ("synthetic",)),
    "num_users": ("--num-users", ("synthetic",)),
    "cut": ("--cut", ("csv", "movielens", "yelp", "adressa")),
    "kcore": ("--kcore", ("csv", "movielens", "yelp", "adressa")),
}


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=HelpFormatter, allow_abbrev=False
    )
    p.add_argument("--debug", action="store_true", dest="debug_top",
                   help="show the traceback of an error too")
    sub = p.add_subparsers(dest="command", required=True, metavar="{build,info}",
                           help="build: make a period dataset from a raw log; info: describe "
                                "one")
    b = sub.add_parser(
        "build", help="build a period dataset from a raw log", formatter_class=HelpFormatter,
        allow_abbrev=False,
        description="Build a period dataset from a raw log (or the synthetic generator).",
    )
    b.add_argument("--source", choices=SOURCE_NAMES, required=True, help="format of the raw log")
    b.add_argument("--input", type=path_arg,
                   help="raw file or directory (required by every source except synthetic, "
                        "no default); compressed files (gzip, bz2, xz) are read by content")
    b.add_argument("--out", type=path_arg, required=True,
                   help="output dataset directory: new, empty, or a period dataset to replace "
                        "with --overwrite; never the input, its directory, or inside an input "
                        "directory")
    b.add_argument("--overwrite", action="store_true",
                   help="replace the period dataset already in --out (atomically)")
    b.add_argument("--periods", type=positive_int, default=10, help="number of periods")
    b.add_argument("--cut", choices=("time", "count"), default=None,
                   help="time: equal time spans, each must hold an interaction (a log with "
                        "fewer distinct timestamps than --periods is refused); count: equal "
                        "interaction counts, warning when one timestamp's interactions straddle "
                        "a period boundary (default: time)")
    b.add_argument("--kcore", type=nonnegative_int, default=None,
                   help="keep only users and items with >= K interactions, repeated until "
                        "stable; 0 or 1 keeps everything (default: 0)")
    b.add_argument("--user-col", help="csv/parquet: user id column (default: user_id)")
    b.add_argument("--item-col", help="csv/parquet: item id column (default: item_id)")
    b.add_argument("--time-col", help="csv/parquet: time column, integer unix seconds (any "
                                      "non-negative integer clock works) (default: timestamp)")
    b.add_argument("--delimiter", type=one_char,
                   help="csv: field delimiter, one character; '\\t' or 'tab' for TSV "
                        "(default: ',')")
    b.add_argument("--min-rating", type=finite_float,
                   help="movielens/yelp: keep only ratings >= this (default: keep all)")
    b.add_argument("--seed", type=nonnegative_int, help="synthetic: generator seed (default: 0)")
    b.add_argument("--num-users", type=positive_int,
                   help=f"synthetic: number of users (default: {SyntheticConfig.num_users})")
    b.add_argument("--debug", action="store_true", help="show the traceback of an error too")
    i = sub.add_parser("info", help="per-period counts of a period dataset",
                       formatter_class=HelpFormatter, allow_abbrev=False)
    i.add_argument("dir", type=path_arg, help="period dataset directory")
    i.add_argument("--debug", action="store_true", help="show the traceback of an error too")
    return p, b


def _check_args(b: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject combinations argparse cannot see (exit 2 with the usage line), before any work."""
    for dest, (flag, sources) in ONLY_FOR.items():
        if getattr(args, dest) is not None and args.source not in sources:
            b.error(f"{flag} applies only to --source {'/'.join(sources)}, not {args.source}")
    if args.source == "synthetic" and args.input:
        b.error("--input is not used by --source synthetic (it generates its log)")
    if args.source != "synthetic" and not args.input:
        b.error(f"--input is required for --source {args.source}")
    if args.source == "synthetic":
        cfg = SyntheticConfig(periods=args.periods)
        cfg.num_users = args.num_users or cfg.num_users
        need = peak_bytes(cfg)
        if need > MAX_SYNTHETIC_BYTES:
            b.error(f"--periods {cfg.periods} with --num-users {cfg.num_users} would need about "
                    f"{need / 2**30:.0f} GiB of memory for the synthetic generator (at most "
                    f"{MAX_SYNTHETIC_BYTES / 2**30:.0f} GiB); use fewer periods or users")
    if args.source == "csv":
        cols = [args.user_col or "user_id", args.item_col or "item_id",
                args.time_col or "timestamp"]
        if len(set(cols)) != 3:
            b.error(f"--user-col, --item-col and --time-col must name different columns, "
                    f"got {', '.join(cols)}")
        if any(not c.strip() for c in cols):
            b.error("--user-col, --item-col and --time-col must not be empty")


def _source_options(args: argparse.Namespace) -> dict:
    if args.source == "csv":
        return {
            "user_col": args.user_col or "user_id",
            "item_col": args.item_col or "item_id",
            "time_col": args.time_col or "timestamp",
            "delimiter": args.delimiter or ",",
        }
    if args.source == "movielens" and args.min_rating is not None:
        return {"min_rating": args.min_rating}
    if args.source == "yelp" and args.min_rating is not None:
        return {"min_stars": args.min_rating}
    return {}


def build(args: argparse.Namespace) -> None:
    """``sml-data build``: inputs and --out are checked before anything is read."""
    t0 = time.monotonic()
    if args.input:
        check_input_path(args.input, "--input")
    check_period_output(args.out, overwrite=args.overwrite, inputs=[args.input])
    read_note = ""
    if args.source == "synthetic":
        cfg = SyntheticConfig(periods=args.periods, seed=args.seed or 0)
        if args.num_users:
            cfg.num_users = args.num_users
        meta = build_synthetic(args.out, cfg, overwrite=args.overwrite)
    else:
        from sml_torchrec.data.sources import read_source

        batches = read_source(args.source, args.input, **_source_options(args))
        table = collect(batches, source=args.input)
        config = BuildConfig(periods=args.periods, cut=args.cut or "time", kcore=args.kcore or 0)
        meta = build_period_dataset(
            table, args.out, config, source=f"{args.source}:{args.input}",
            overwrite=args.overwrite, inputs=[args.input], culprit=args.input,
        )
        dropped = {k: v for k, v in batches.stats.items() if k in ("filtered", "skipped") and v}
        notes = [f"{v:,} {k}" for k, v in dropped.items()]
        if config.kcore > 1:
            notes.append(f"{meta.build['raw_interactions'] - meta.build['kept_interactions']:,} "
                         f"removed by --kcore {config.kcore}")
        read_note = f" (read {batches.stats['rows']:,} records" + "".join(
            f", {n}" for n in notes) + ")"
    print(
        f"wrote {args.out}: {sum(meta.period_counts):,} interactions, {meta.num_users:,} users, "
        f"{meta.num_items:,} items, {meta.num_periods} periods{read_note} "
        f"({time.monotonic() - t0:.1f}s)"
    )


def info(path: str) -> None:
    """``sml-data info``: the dataset is checked against its metadata.json before printing."""
    ds = PeriodDataset(path)
    m = ds.meta
    rows = ds.summary()  # reads (and so checks) every period before the first line is printed
    print(f"{path}: source {m.source or '?'}, cut {m.cut}")
    print(f"{m.num_users:,} users, {m.num_items:,} items, {m.num_periods} periods")
    cols = ("period", "interactions", "users", "items", "new_users", "new_items")
    print(" ".join(f"{c:>12}" for c in cols))
    for row in rows:
        print(" ".join(f"{row[c]:>12,}" for c in cols))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sml-data``; returns the exit code (0, 2 for a user error)."""
    parser, build_parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "build":
        _check_args(build_parser, args)
    debug = args.debug or args.debug_top or debug_requested([])

    def body() -> None:
        if args.command == "build":
            build(args)
        else:
            info(args.dir)

    with command_logging(PROG, "sml_torchrec"):
        return run_command(PROG, body, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
