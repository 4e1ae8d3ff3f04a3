"""``catn-data``: build a cross-domain dataset directory, or describe one.

    catn-data build --source Books_5.json.gz --target Movies_and_TV_5.json.gz --out DIR
    catn-data info DIR
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from catn.data.builder import BuildConfig, build_from_files
from catn.data.dataset import (
    ETAS,
    ROLE_COLD_TEST,
    ROLE_COLD_VAL,
    ROLE_COMMON,
    CrossDomainCorpus,
    load_corpus,
    num_training_users,
    save_corpus,
)
from catn.data.errors import DataError


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="catn-data", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="filter, split and tokenise two review files")
    b.add_argument("--source", required=True, help="source-domain review file (.json[.gz])")
    b.add_argument("--target", required=True, help="target-domain review file")
    b.add_argument("--out", required=True, help="output dataset directory (replaced atomically)")
    d = BuildConfig()
    b.add_argument("--min-item-reviews", type=int, default=d.min_item_reviews)
    b.add_argument("--min-user-reviews", type=int, default=d.min_user_reviews)
    b.add_argument("--vocab-size", type=int, default=d.vocab_size)
    b.add_argument("--max-df", type=float, default=d.max_df)
    b.add_argument("--doc-len", type=int, default=d.doc_len)
    b.add_argument("--seed", type=int, default=d.seed, help="seed of the cold-start split")
    b.add_argument("--etas", default=",".join(f"{e:g}" for e in d.etas),
                   help="shares whose documents are prebuilt")
    b.add_argument("--word-vectors", help="word2vec/GloVe text file (optional)")
    i = sub.add_parser("info", help="describe a dataset directory")
    i.add_argument("dir")
    a = p.parse_args(argv)
    try:
        if a.cmd == "info":
            print(describe(load_corpus(a.dir)))
            return 0
        cfg = BuildConfig(min_item_reviews=a.min_item_reviews,
                          min_user_reviews=a.min_user_reviews, vocab_size=a.vocab_size,
                          max_df=a.max_df, doc_len=a.doc_len, seed=a.seed,
                          word_vectors=a.word_vectors,
                          etas=tuple(float(x) for x in a.etas.split(",") if x.strip()))
        corpus = build_from_files(a.source, a.target, cfg)
        save_corpus(corpus, a.out, etas=cfg.etas, doc_len=cfg.doc_len, seed=0)
        print(describe(corpus))
        print(f"written to {a.out}")
        return 0
    except DataError as e:
        print(f"catn-data: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
