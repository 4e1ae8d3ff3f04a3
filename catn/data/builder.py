"""Build a cross-domain corpus from two Amazon review files (or from in-memory rows).

Two streaming passes per file: ids/ratings first (:func:`catn.data.reader.scan_ratings`), then
the text of the rows that survive the filters only. Filters are those of the CATN authors,
applied once per domain: drop items with fewer than ``min_item_reviews`` reviews, then users
with fewer than ``min_user_reviews`` reviews (counted after the item filter).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catn.data.dataset import CrossDomainCorpus, DomainReviews, assign_roles
from catn.data.errors import DataError, FilterError
from catn.data.etas import ETAS
from catn.data.reader import DEFAULT_RATING_RANGE, RatingScan, iter_texts, scan_ratings
from catn.data.text import Tokenizer, load_word_vectors, remap_tokens, select_vocabulary


@dataclass
class BuildConfig:
    """Options of ``catn-data build`` (defaults are the authors')."""

    min_item_reviews: int = 30
    min_user_reviews: int = 10
    vocab_size: int = 20000
    max_df: float = 0.5
    doc_len: int = 500
    seed: int = 666
    word_vectors: str | None = None
    etas: tuple[float, ...] = ETAS
    min_overlap: int = 4
    # the ratings' scale (inclusive); a rating outside it is an error naming its line
    rating_range: tuple[float, float] = DEFAULT_RATING_RANGE

    def __post_init__(self) -> None:
        for name in ("min_item_reviews", "min_user_reviews", "min_overlap"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("vocab_size", "doc_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.max_df <= 1:
            raise ValueError(f"max_df must be in (0, 1], got {self.max_df}")
        if any(not 0 < e <= 1 for e in self.etas):
            raise ValueError(f"every eta must be in (0, 1], got {self.etas}")
        lo, hi = self.rating_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"rating_range must be two finite numbers lo < hi, got "
                             f"{self.rating_range}")


def _filter(scan: RatingScan, min_item: int, min_user: int) -> tuple[np.ndarray, dict]:
    keep = np.bincount(scan.item)[scan.item] >= min_item
    after_items = {"reviews": int(keep.sum()), "items": int(np.unique(scan.item[keep]).size),
                   "users": int(np.unique(scan.user[keep]).size)}
    ucount = np.bincount(scan.user[keep], minlength=len(scan.user_names))
    keep &= ucount[scan.user] >= min_user
    after_users = {"reviews": int(keep.sum()), "items": int(np.unique(scan.item[keep]).size),
                   "users": int(np.unique(scan.user[keep]).size)}
    raw = {"reviews": len(scan), "items": len(scan.item_names), "users": len(scan.user_names)}
    return keep, {"raw": raw, "after_item_filter": after_items, "after_user_filter": after_users}


def _overlap(s: RatingScan, t: RatingScan, ks: np.ndarray, kt: np.ndarray) -> int:
    return len(set(np.array(s.user_names)[np.unique(s.user[ks])]) &
               set(np.array(t.user_names)[np.unique(t.user[kt])]))


def _suggest(s: RatingScan, t: RatingScan, need: int) -> str:
    tried = []
    for mi in (30, 20, 10, 5, 2, 1):
        for mu in (10, 5, 3, 2, 1):
            ks, _ = _filter(s, mi, mu)
            kt, _ = _filter(t, mi, mu)
            n = _overlap(s, t, ks, kt)
            tried.append((mi, mu, n))
            if n >= need:
                return (f"--min-item-reviews {mi} --min-user-reviews {mu} keeps {n} "
                        "overlapping users")
    return "no thresholds keep enough overlapping users; " + ", ".join(
        f"(item {a}, user {b}): {n}" for a, b, n in tried[:4])


def _report(name: str, rep: dict) -> str:
    return f"{name}: " + "; ".join(
        f"{step} {v['reviews']} reviews/{v['users']} users/{v['items']} items"
        for step, v in rep.items())


def corpus_from_rows(
    source: RatingScan, target: RatingScan, texts_source: Iterable[str],
    texts_target: Iterable[str], cfg: BuildConfig, meta: dict | None = None,
) -> CrossDomainCorpus:
    """Assemble a corpus from two already-filtered scans and their texts (row order)."""
    names = {n: j for j, n in enumerate(dict.fromkeys(
        [source.user_names[u] for u in np.unique(source.user)] +
        [target.user_names[u] for u in np.unique(target.user)]))}
    tok = Tokenizer()
    doms = []
    for scan, texts in ((source, texts_source), (target, texts_target)):
        first = len(tok._lengths)
        tok.add_all(texts)
        if len(tok._lengths) - first != len(scan):
            raise ValueError("texts and rows differ in length")
        doms.append(first)
    tokens, offsets = tok.flat()
    chosen = select_vocabulary(tokens, offsets, cfg.vocab_size, cfg.max_df)
    words = tok.words
    vocab = [words[j] for j in chosen]
    tokens, offsets = remap_tokens(tokens, offsets, chosen, len(words))
    out = []
    for k, scan in enumerate((source, target)):
        lo, hi = doms[k], doms[k] + len(scan)
        item_codes, item = np.unique(scan.item, return_inverse=True)
        uname = np.asarray(scan.user_names, dtype=object)
        user = np.array([names[n] for n in uname[scan.user]], dtype=np.int64)
        off = offsets[lo:hi + 1]
        out.append((DomainReviews(
            user=user, item=item.astype(np.int64), rating=scan.rating.astype(np.float32),
            time=scan.time.astype(np.int64), tokens=tokens[off[0]:off[-1]].copy(),
            offsets=off - off[0], num_items=len(item_codes)),
            [scan.item_names[c] for c in item_codes]))
    (src, names_s), (tgt, names_t) = out
    role, rank = assign_roles(src.user, tgt.user, len(names), cfg.seed)
    wv = load_word_vectors(cfg.word_vectors, vocab) if cfg.word_vectors else None
    m = dict(meta or {})
    m.update(seed=cfg.seed, min_item_reviews=cfg.min_item_reviews,
             min_user_reviews=cfg.min_user_reviews, max_df=cfg.max_df,
             rating_range=list(cfg.rating_range))
    return CrossDomainCorpus(
        source=src, target=tgt, num_users=len(names), vocab=vocab, role=role,
        common_rank=rank, meta=m, user_names=list(names), item_names_source=names_s,
        item_names_target=names_t, word_vectors=wv)


def _take(scan: RatingScan, keep: np.ndarray) -> RatingScan:
    return RatingScan(user=scan.user[keep], item=scan.item[keep], rating=scan.rating[keep],
                      time=scan.time[keep], line=scan.line[keep], user_names=scan.user_names,
                      item_names=scan.item_names)


def build_from_files(
    source_path: str | Path, target_path: str | Path, cfg: BuildConfig, log=print
) -> CrossDomainCorpus:
    """Filter, split and tokenise two review files into a corpus.

    Raises FilterError (with the count after each filter step and suggested thresholds) when
    the filters leave fewer than ``cfg.min_overlap`` overlapping users.
    """
    if Path(source_path).resolve() == Path(target_path).resolve():
        raise DataError(source_path, "is both the source and the target domain; a cross-domain "
                                     "dataset needs two different review files")
    s = scan_ratings(source_path, cfg.rating_range)
    t = scan_ratings(target_path, cfg.rating_range)
    ks, rep_s = _filter(s, cfg.min_item_reviews, cfg.min_user_reviews)
    kt, rep_t = _filter(t, cfg.min_item_reviews, cfg.min_user_reviews)
    n_over = _overlap(s, t, ks, kt)
    report = {"source": rep_s, "target": rep_t, "overlapping_users": n_over}
    log(_report("source", rep_s))
    log(_report("target", rep_t))
    log(f"overlapping users: {n_over}")
    if n_over < cfg.min_overlap:
        raise FilterError(
            f"{source_path} + {target_path}",
            f"filters (items >= {cfg.min_item_reviews} reviews, users >= "
            f"{cfg.min_user_reviews}) leave {n_over} overlapping users, need >= "
            f"{cfg.min_overlap}. {_report('source', rep_s)}. {_report('target', rep_t)}. "
            f"Suggestion: {_suggest(s, t, max(cfg.min_overlap, 20))}.")
    s, t = _take(s, ks), _take(t, kt)
    return corpus_from_rows(
        s, t, iter_texts(source_path, s.line), iter_texts(target_path, t.line), cfg,
        meta={"scenario": f"{Path(source_path).name} -> {Path(target_path).name}",
              "filter_report": report})


def scan_from_lists(users: Sequence[str], items: Sequence[str], ratings: Sequence[float],
                    times: Sequence[int] | None = None) -> RatingScan:
    """A RatingScan from Python lists (the synthetic corpus and tests use it)."""
    un = {u: j for j, u in enumerate(dict.fromkeys(users))}
    inn = {i: j for j, i in enumerate(dict.fromkeys(items))}
    n = len(users)
    return RatingScan(
        user=np.array([un[u] for u in users], dtype=np.int64),
        item=np.array([inn[i] for i in items], dtype=np.int64),
        rating=np.asarray(ratings, dtype=np.float32),
        time=np.asarray(times if times is not None else np.arange(n), dtype=np.int64),
        line=np.arange(1, n + 1, dtype=np.int64), user_names=list(un), item_names=list(inn))
