"""`catn-data`: build a cross-domain dataset directory, or describe one.

    catn-data build --source Books_5.json.gz --target Movies_and_TV_5.json.gz --out DIR
    catn-data info DIR

Safety: `build` writes only to a new or empty directory, or over a CATN dataset when given
--overwrite; it never writes into, over or around its inputs. A mistake in the arguments or the
data is reported as one line `catn-data: error: ...` (exit code 2); --debug (or
SML_TORCHREC_DEBUG=1) adds the traceback. A bug of ours keeps its traceback (exit code 1).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from catn.data.builder import BuildConfig, build_from_files
from catn.data.dataset import (
    ROLE_COLD_TEST,
    ROLE_COLD_VAL,
    ROLE_COMMON,
    CrossDomainCorpus,
    check_corpus_output,
    documents_bytes,
    load_corpus,
    num_training_users,
    save_corpus,
)
from catn.data.errors import DataError
from catn.data.etas import ETAS, format_etas
from recsys_common.cli_args import (
    HelpFormatter,
    finite_float,
    fraction,
    nonnegative_int,
    path_arg,
    positive_int,
)
from recsys_common.errors import debug_requested, run_command
from recsys_common.files import check_text_file

PROG = "catn-data"
MAX_DOCUMENT_BYTES = 16 << 30  # per η; beyond it the build would exhaust the machine's memory


def describe(c: CrossDomainCorpus, etas: tuple[float, ...] = ETAS) -> str:
    """Users, items and reviews per domain, overlap, and the user counts of every split."""
    lines = [f"scenario: {c.meta.get('scenario', '?')}"]
    for name, d in (("source", c.source), ("target", c.target)):
        lines.append(f"{name}: {np.unique(d.user).size} users, {d.num_items} items, "
                     f"{len(d)} reviews")
    n_cold = int(((c.role == ROLE_COLD_VAL) | (c.role == ROLE_COLD_TEST)).sum())
    lines.append(f"overlapping users: {n_cold + c.num_common}")
    lines.append(f"cold-start users: {n_cold} (validation {(c.role == ROLE_COLD_VAL).sum()}, "
                 f"test {(c.role == ROLE_COLD_TEST).sum()})")
    lines.append(f"common users: {(c.role == ROLE_COMMON).sum()}; training users per eta:")
    for eta in etas:
        try:
            n = str(num_training_users(c.num_common, eta))
        except DataError as e:
            n = f"none ({e})"
        lines.append(f"  eta={eta * 100:g}%: {n}")
    lines.append(f"vocabulary: {len(c.vocab)} words; prebuilt documents: "
                 f"{[p['eta'] for p in c.meta.get('prebuilt', [])]}")
    return "\n".join(lines)


def _rating_range(text: str) -> tuple[float, float]:
    """argparse type of --rating-range: ``LO,HI`` with finite LO < HI."""
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 1,5), got {text!r}")
    lo, hi = (finite_float(x.strip()) for x in parts)
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"LO must be below HI, got {text!r}")
    return lo, hi


def _etas(text: str) -> tuple[float, ...]:
    """argparse type of --etas: comma-separated shares in (0, 1], at least one, no repeats."""
    values = [x.strip() for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give at least one share, e.g. 1,0.5")
    etas = tuple(fraction(x) for x in values)
    if len(set(etas)) != len(etas):
        raise argparse.ArgumentTypeError(f"a share is repeated in {text!r}")
    return etas


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--debug", action="store_true", dest="debug_top",
                   help="show the traceback of an error too (default: off)")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="filter, split and tokenise two review files",
                       formatter_class=HelpFormatter, allow_abbrev=False,
                       description="Filter, split and tokenise two Amazon review files "
                                   "(JSON lines or Python dict literals, optionally compressed).")
    b.add_argument("--source", required=True, type=path_arg,
                   help="source-domain review file (.json[.gz]); required, no default")
    b.add_argument("--target", type=path_arg, required=True,
                   help="target-domain review file; required, no default")
    b.add_argument("--out", type=path_arg, required=True,
                   help="output dataset directory: new, empty, or a CATN dataset to replace "
                        "with --overwrite; never an input's directory; required, no default")
    b.add_argument("--overwrite", action="store_true",
                   help="replace the CATN dataset already in --out (atomically; default: off)")
    d = BuildConfig()
    b.add_argument("--min-item-reviews", type=nonnegative_int, default=d.min_item_reviews,
                   help="drop items with fewer reviews (per domain)")
    b.add_argument("--min-user-reviews", type=nonnegative_int, default=d.min_user_reviews,
                   help="then drop users with fewer reviews (per domain)")
    b.add_argument("--vocab-size", type=positive_int, default=d.vocab_size,
                   help="words kept, most frequent first")
    b.add_argument("--max-df", type=fraction, default=d.max_df,
                   help="drop words in more than this share of reviews, in (0, 1]")
    b.add_argument("--doc-len", type=positive_int, default=d.doc_len,
                   help="words per prebuilt document")
    b.add_argument("--seed", type=nonnegative_int, default=d.seed,
                   help="seed of the cold-start split")
    b.add_argument("--etas", type=_etas, default=format_etas(d.etas),
                   help="comma-separated shares of training users, each in (0, 1], whose "
                        "documents are prebuilt")
    b.add_argument("--rating-range", type=_rating_range,
                   default=",".join(f"{r:g}" for r in d.rating_range),
                   metavar="LO,HI",
                   help="the ratings' scale, inclusive: a rating outside it is an error naming "
                        "its file and line")
    b.add_argument("--word-vectors", type=path_arg,
                   help="word2vec/GloVe text file (default: none, the vectors are trained)")
    b.add_argument("--debug", action="store_true",
                   help="show the traceback of an error too (default: off)")
    i = sub.add_parser("info", help="describe a dataset directory",
                       formatter_class=HelpFormatter, allow_abbrev=False)
    i.add_argument("dir", type=path_arg, help="CATN dataset directory")
    i.add_argument("--debug", action="store_true",
                   help="show the traceback of an error too (default: off)")
    return p


def build(a: argparse.Namespace) -> None:
    """``catn-data build``: inputs and --out are checked before anything is read."""
    inputs = [a.source, a.target, a.word_vectors]
    for flag, f in (("--source", a.source), ("--target", a.target),
                    ("--word-vectors", a.word_vectors)):
        if f is not None:
            check_text_file_flag(f, flag)
    check_corpus_output(a.out, overwrite=a.overwrite, inputs=inputs)
    cfg = BuildConfig(min_item_reviews=a.min_item_reviews,
                      min_user_reviews=a.min_user_reviews, vocab_size=a.vocab_size,
                      max_df=a.max_df, doc_len=a.doc_len, seed=a.seed,
                      word_vectors=a.word_vectors, etas=a.etas, rating_range=a.rating_range)
    corpus = build_from_files(a.source, a.target, cfg)  # filter report on stdout
    need = documents_bytes(corpus, cfg.doc_len)
    if need > MAX_DOCUMENT_BYTES:
        raise DataError(None, f"--doc-len {cfg.doc_len} would need about {need / 2**30:.0f} GiB "
                              f"for the documents of {corpus.num_users} users (at most "
                              f"{MAX_DOCUMENT_BYTES / 2**30:.0f} GiB); use a smaller --doc-len")
    save_corpus(corpus, a.out, etas=cfg.etas, doc_len=cfg.doc_len, seed=0,
                overwrite=a.overwrite, inputs=inputs)
    print(describe(corpus))
    print(f"written to {a.out}")


def check_text_file_flag(path: str, flag: str) -> None:
    """An input file that is missing, a directory, empty or not text is named with its flag."""
    try:
        check_text_file(path)
    except DataError as e:
        raise DataError(None, f"{flag} {e}") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``catn-data``; returns the exit code (0, 2 for a user error)."""
    a = _parser().parse_args(argv)
    debug = a.debug or a.debug_top or debug_requested([])

    def body() -> None:
        if a.cmd == "info":
            text = describe(load_corpus(a.dir))  # all of it, before the first line is printed
            print(text)
        else:
            build(a)

    return run_command(PROG, body, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
