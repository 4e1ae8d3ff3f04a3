"""The cross-domain corpus, its user roles, per-η training views, and the on-disk format.

User roles follow the CATN protocol. Overlapping users (with reviews in both domains) are
split by a seeded permutation: the first half are cold-start users (40% of them validation,
60% test); the rest are "common" users, ranked by a second seeded permutation. For a share η,
the common users of rank < floor(η · n_common) are the training users; the other common users
are removed from both domains for that η (the authors' protocol), so smaller η means less
overlap knowledge. Cold-start users keep their source reviews; their target reviews are only
ever used as validation/test labels: they never reach target documents, item means or
training pairs.

On disk (``catn-data build``)::

    meta.json                  config, counts, filter report, scenario name
    vocab.txt                  one word per line; line j is word id j (id 0 = padding)
    users.parquet              name, role, common_rank
    items_source.parquet       name           (row = item id)
    items_target.parquet       name
    reviews_source.parquet     user, item, rating, time, tokens (list of word ids)
    reviews_target.parquet     ...
    docs_eta_<η>.npz           prebuilt documents for each η given at build time
    word_vectors.npy           optional, (V + 1, d)
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from catn.data.documents import build_documents, match_auxiliary_reviews
from catn.data.errors import DataError, SplitError
from recsys_common.files import read_json_object, read_parquet, reason
from recsys_common.output import DatasetLayout, check_output_dir, write_dataset_dir

ROLE_SOURCE_ONLY = 0
ROLE_TARGET_ONLY = 1
ROLE_COLD_VAL = 2
ROLE_COLD_TEST = 3
ROLE_COMMON = 4


@dataclass
class DomainReviews:
    """All kept reviews of one domain; word ids are 1-based vocabulary ids."""

    user: np.ndarray  # (n,) int64, global user id
    item: np.ndarray  # (n,) int64, item id of this domain
    rating: np.ndarray  # (n,) float32
    time: np.ndarray  # (n,) int64
    tokens: np.ndarray  # (T,) int32
    offsets: np.ndarray  # (n + 1,) int64
    num_items: int

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def subset(self, mask: np.ndarray) -> tuple[np.ndarray, ...]:
        """(rows, user, item, rating, time) of the masked reviews."""
        rows = np.flatnonzero(mask)
        return rows, self.user[rows], self.item[rows], self.rating[rows], self.time[rows]


@dataclass
class CrossDomainCorpus:
    """Two domains sharing a user id space, a vocabulary and the user roles."""

    source: DomainReviews
    target: DomainReviews
    num_users: int
    vocab: list[str]
    role: np.ndarray  # (num_users,) int8, ROLE_*
    common_rank: np.ndarray  # (num_users,) int64, -1 unless ROLE_COMMON
    meta: dict = field(default_factory=dict)
    user_names: list[str] | None = None
    item_names_source: list[str] | None = None
    item_names_target: list[str] | None = None
    word_vectors: np.ndarray | None = None

    @property
    def num_common(self) -> int:
        return int((self.role == ROLE_COMMON).sum())


def assign_roles(
    users_source: np.ndarray, users_target: np.ndarray, num_users: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded user roles (ROLE_*) and the η ranking of common users.

    Raises SplitError when the domains share no user.
    """
    in_s = np.zeros(num_users, dtype=bool)
    in_t = np.zeros(num_users, dtype=bool)
    in_s[users_source] = True
    in_t[users_target] = True
    overlap = np.flatnonzero(in_s & in_t)
    if overlap.size < 4:
        raise SplitError(
            None,
            f"{overlap.size} overlapping users (reviewing in both domains); at least 4 are "
            "needed for cold-start validation/test and training users. Lower the user/item "
            "filters or pick categories with more shared reviewers.",
        )
    role = np.where(in_s, ROLE_SOURCE_ONLY, ROLE_TARGET_ONLY).astype(np.int8)
    rng = np.random.default_rng(seed)
    perm = overlap[rng.permutation(overlap.size)]
    n_cold = overlap.size // 2
    n_val = int(n_cold * 0.4)
    role[perm[:n_val]] = ROLE_COLD_VAL
    role[perm[n_val:n_cold]] = ROLE_COLD_TEST
    common = perm[n_cold:]
    role[common] = ROLE_COMMON
    rank = np.full(num_users, -1, dtype=np.int64)
    rank[common[np.random.default_rng(seed + 1).permutation(common.size)]] = np.arange(
        common.size
    )
    return role, rank


def num_training_users(num_common: int, eta: float) -> int:
    """floor(η · n_common) (a tiny epsilon keeps 0.1 · 30 at 3); SplitError if it is 0."""
    if not 0 < eta <= 1:
        raise SplitError(None, f"eta must be in (0, 1], got {eta}")
    n = int(math.floor(eta * num_common + 1e-9))
    if n == 0:
        raise SplitError(
            None,
            f"eta={eta} leaves no training users: {num_common} common overlapping users × "
            f"{eta} < 1. Use eta >= {1 / max(num_common, 1):.3g} or a larger data set.",
        )
    return n


@dataclass
class EtaData:
    """Everything one training run at share η needs (numpy; the trainer makes tensors).

    Docs are (num_users or num_items, doc_len) int32. Pairs are (user, item, rating) arrays.
    ``train_s`` pairs a training user with a *source* item (flow: user's target document vs
    source items); ``train_t`` pairs them with *target* items (user's source document).
    """

    eta: float
    user_docs_s: np.ndarray
    user_docs_t: np.ndarray
    aux_docs_s: np.ndarray
    aux_docs_t: np.ndarray
    item_docs_s: np.ndarray
    item_docs_t: np.ndarray
    train_s: tuple[np.ndarray, np.ndarray, np.ndarray]
    train_t: tuple[np.ndarray, np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray, np.ndarray]
    # every visible (user, item, rating) of each domain: training, cold-start (source only)
    # and single-domain users; rating-matrix baselines (CMF, EMCDR, ...) factorise these
    visible_s: tuple[np.ndarray, np.ndarray, np.ndarray]
    visible_t: tuple[np.ndarray, np.ndarray, np.ndarray]
    global_mean_s: float
    global_mean_t: float
    item_mean_s: np.ndarray  # (num_items_s,) float32; global mean where an item has no rating
    item_mean_t: np.ndarray
    # (num_users,) float32: a user's shrunk mean residual against item means, from their
    # visible reviews of one domain (none: 0)
    user_source_offset: np.ndarray
    user_target_offset: np.ndarray
    num_training_users: int

    def user_prior(self) -> np.ndarray:
        """(2, num_users) float32 rating prior of a user scored from their document of each
        domain: row 0 from the source reviews (all a cold-start user has), row 1 from the
        target reviews (only training users are scored from a target document)."""
        return np.stack([self.user_source_offset, self.user_target_offset])


def _item_means(item: np.ndarray, rating: np.ndarray, num_items: int) -> tuple[np.ndarray, float]:
    glob = float(rating.mean()) if rating.size else 3.0
    cnt = np.bincount(item, minlength=num_items)
    tot = np.bincount(item, weights=rating, minlength=num_items)
    # items with no visible rating get the domain's global mean, never 0
    mean = np.where(cnt > 0, tot / np.maximum(cnt, 1), glob).astype(np.float32)
    return mean, glob


def _user_offset(
    users: np.ndarray, residuals: np.ndarray, num_users: int, shrink: float
) -> np.ndarray:
    """(num_users,) float32: per user, the sum of ``residuals`` over (count + ``shrink``)."""
    cnt = np.bincount(users, minlength=num_users)
    tot = np.bincount(users, weights=residuals, minlength=num_users)
    return (tot / (cnt + shrink)).astype(np.float32)


def _documents(
    d: DomainReviews, rows: np.ndarray, u: np.ndarray, i: np.ndarray, r: np.ndarray,
    t: np.ndarray, num_users: int, doc_len: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, auxiliary) documents of one domain from its visible reviews ``rows``."""
    user_docs = build_documents(u, t, rows, d.tokens, d.offsets, num_users, doc_len)
    item_docs = build_documents(i, t, rows, d.tokens, d.offsets, d.num_items, doc_len)
    m = match_auxiliary_reviews(u, i, r, seed)
    ok = m >= 0
    aux_docs = build_documents(u[ok], t[ok], rows[m[ok]], d.tokens, d.offsets, num_users,
                               doc_len)
    return user_docs, item_docs, aux_docs


def prepare_eta(
    corpus: CrossDomainCorpus, eta: float, doc_len: int, seed: int = 0, shrink: float = 3.0
) -> EtaData:
    """The η view: visible reviews, documents, auxiliary documents, pairs and rating priors."""
    n_train = num_training_users(corpus.num_common, eta)
    role = corpus.role
    selected = (role == ROLE_COMMON) & (corpus.common_rank < n_train)
    dropped = (role == ROLE_COMMON) & ~selected
    cold = (role == ROLE_COLD_VAL) | (role == ROLE_COLD_TEST)
    S, T = corpus.source, corpus.target
    vis_s = ~dropped[S.user]
    vis_t = ~dropped[T.user] & ~cold[T.user]

    rows_s, us, is_, rs, ts = S.subset(vis_s)
    rows_t, ut, it, rt, tt = T.subset(vis_t)
    nu = corpus.num_users
    user_docs_s, item_docs_s, aux_docs_s = _documents(S, rows_s, us, is_, rs, ts, nu, doc_len,
                                                      seed)
    user_docs_t, item_docs_t, aux_docs_t = _documents(T, rows_t, ut, it, rt, tt, nu, doc_len,
                                                      seed + 1)

    item_mean_s, glob_s = _item_means(is_, rs, S.num_items)
    item_mean_t, glob_t = _item_means(it, rt, T.num_items)
    res_s = rs - item_mean_s[is_]
    res_t = rt - item_mean_t[it]
    user_source_offset = _user_offset(us, res_s, nu, shrink)
    user_target_offset = _user_offset(ut, res_t, nu, shrink)

    def pairs(u, i, r, mask):
        return u[mask].astype(np.int64), i[mask].astype(np.int64), r[mask].astype(np.float32)

    val_mask = role[T.user] == ROLE_COLD_VAL
    test_mask = role[T.user] == ROLE_COLD_TEST
    return EtaData(
        eta=eta,
        user_docs_s=user_docs_s,
        user_docs_t=user_docs_t,
        aux_docs_s=aux_docs_s,
        aux_docs_t=aux_docs_t,
        item_docs_s=item_docs_s,
        item_docs_t=item_docs_t,
        train_s=pairs(us, is_, rs, selected[us]),
        train_t=pairs(ut, it, rt, selected[ut]),
        val=pairs(T.user, T.item, T.rating, val_mask),
        test=pairs(T.user, T.item, T.rating, test_mask),
        visible_s=pairs(us, is_, rs, np.ones(len(us), dtype=bool)),
        visible_t=pairs(ut, it, rt, np.ones(len(ut), dtype=bool)),
        global_mean_s=glob_s,
        global_mean_t=glob_t,
        item_mean_s=item_mean_s,
        item_mean_t=item_mean_t,
        user_source_offset=user_source_offset,
        user_target_offset=user_target_offset,
        num_training_users=n_train,
    )


# --------------------------------------------------------------------------- on-disk format

# the EtaData fields that hold documents, (N, doc_len) int32 each
DOC_KEYS = ("user_docs_s", "user_docs_t", "aux_docs_s", "aux_docs_t", "item_docs_s",
             "item_docs_t")


def _eta_file(eta: float) -> str:
    return f"docs_eta_{eta:g}_len{{}}.npz"


def _reviews_table(d: DomainReviews) -> pa.Table:
    tokens = pa.LargeListArray.from_arrays(pa.array(d.offsets, pa.int64()), pa.array(d.tokens))
    return pa.table(
        {"user": d.user, "item": d.item, "rating": d.rating, "time": d.time, "tokens": tokens}
    )


def _read_reviews(path: Path, num_items: int) -> DomainReviews:
    t = _read_parquet(path, ("user", "item", "rating", "time", "tokens"))
    tok = t.column("tokens").combine_chunks()
    if not (pa.types.is_list(tok.type) or pa.types.is_large_list(tok.type)) or not \
            pa.types.is_integer(tok.type.value_type):
        raise DataError(path, f"column 'tokens' has type {tok.type}, expected lists of word ids")
    for col in ("user", "item", "time"):
        if not pa.types.is_integer(t.schema.field(col).type):
            raise DataError(path, f"column {col!r} has type {t.schema.field(col).type}, "
                                  "expected integers")
    if not (pa.types.is_floating(t.schema.field("rating").type)
            or pa.types.is_integer(t.schema.field("rating").type)):
        raise DataError(path, f"column 'rating' has type {t.schema.field('rating').type}, "
                              "expected numbers")
    if t.column("tokens").null_count or t.column("rating").null_count:
        raise DataError(path, "missing values in column 'tokens' or 'rating'")
    if isinstance(tok, pa.ListArray):
        tok = tok.cast(pa.large_list(pa.int32()))
    offsets = tok.offsets.to_numpy().astype(np.int64)
    values = tok.values.to_numpy().astype(np.int32)
    offsets = offsets - offsets[0]
    return DomainReviews(
        user=t.column("user").to_numpy().astype(np.int64),
        item=t.column("item").to_numpy().astype(np.int64),
        rating=t.column("rating").to_numpy().astype(np.float32),
        time=t.column("time").to_numpy().astype(np.int64),
        tokens=values,
        offsets=offsets,
        num_items=num_items,
    )


LAYOUT = DatasetLayout(
    kind="CATN dataset",
    marker="meta.json",
    marker_keys=("format", "num_users", "vocab_size"),
    entries=("meta.json", "vocab.txt", "users.parquet", "items_source.parquet",
             "items_target.parquet", "reviews_source.parquet", "reviews_target.parquet",
             "docs_eta_*_len*.npz", "word_vectors.npy"),
)


def check_corpus_output(
    out: str | Path, *, overwrite: bool, inputs: Sequence[str | Path | None] = ()
) -> None:
    """Refuse (:class:`~recsys_common.output.OutputError`) an ``out`` a build must not
    write to; ``catn-data build`` calls this before reading its inputs."""
    check_output_dir(out, LAYOUT, overwrite=overwrite, inputs=inputs)


def documents_bytes(corpus: CrossDomainCorpus, doc_len: int) -> int:
    """Memory the documents of one η take (int32): four per-user and two per-item matrices."""
    rows = 4 * corpus.num_users + corpus.source.num_items + corpus.target.num_items
    return 4 * doc_len * rows


def save_corpus(
    corpus: CrossDomainCorpus, out: str | Path, etas: tuple[float, ...] = (), doc_len: int = 500,
    seed: int = 0, *, overwrite: bool = False, inputs: Sequence[str | Path | None] = (),
) -> Path:
    """Write ``corpus`` (and documents for each η in ``etas``) to ``out`` atomically.

    ``out`` must be new, empty, or (with ``overwrite``) a CATN dataset, and must not be or hold
    any of ``inputs`` (see :mod:`recsys_common.output`). Everything is written to a
    temporary directory first and swapped in only once complete, so a failed build leaves any
    previous dataset untouched.
    """

    def fill(tmp: Path) -> None:
        meta = dict(corpus.meta)
        meta.update(num_users=corpus.num_users, num_items_source=corpus.source.num_items,
                    num_items_target=corpus.target.num_items, vocab_size=len(corpus.vocab),
                    prebuilt=[], format=1)
        (tmp / "vocab.txt").write_text("".join(w + "\n" for w in corpus.vocab), encoding="utf-8")
        names = corpus.user_names or [str(u) for u in range(corpus.num_users)]
        pq.write_table(pa.table({"name": names, "role": corpus.role,
                                 "common_rank": corpus.common_rank}), tmp / "users.parquet")
        for dom, d, nm in (("source", corpus.source, corpus.item_names_source),
                           ("target", corpus.target, corpus.item_names_target)):
            nm = nm or [str(i) for i in range(d.num_items)]
            pq.write_table(pa.table({"name": nm}), tmp / f"items_{dom}.parquet")
            pq.write_table(_reviews_table(d), tmp / f"reviews_{dom}.parquet")
        if corpus.word_vectors is not None:
            np.save(tmp / "word_vectors.npy", corpus.word_vectors)
        for eta in etas:
            try:
                data = prepare_eta(corpus, eta, doc_len, seed)
            except SplitError as e:
                meta.setdefault("skipped_etas", {})[f"{eta:g}"] = str(e)
                continue
            np.savez_compressed(tmp / _eta_file(eta).format(doc_len),
                                **{k: getattr(data, k) for k in DOC_KEYS})
            meta["prebuilt"].append({"eta": eta, "doc_len": doc_len, "seed": seed})
        # meta.json last: a directory without it is never a dataset.
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    write_dataset_dir(out, LAYOUT, fill, overwrite=overwrite, inputs=inputs)
    return Path(out)


def _read_parquet(path: Path, columns: Sequence[str]) -> pa.Table:
    """A table of the dataset, or a DataError naming the file (missing, corrupt, no column)."""
    if not path.is_file():
        raise DataError(path, "missing: the dataset is incomplete; rebuild it with "
                              "`catn-data build`")
    t = read_parquet(path)
    for col in columns:
        if col not in t.column_names:
            raise DataError(path, f"missing column {col!r} (has {', '.join(t.column_names)})")
    return t


def _check_meta(meta_path: Path, meta: dict) -> None:
    """The fields of ``meta.json`` that loading relies on have the types the build writes."""

    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_number(v: object) -> bool:
        return (is_int(v) or isinstance(v, float)) and math.isfinite(v)

    for key in ("num_users", "num_items_source", "num_items_target", "vocab_size"):
        if key in meta and not (is_int(meta[key]) and meta[key] >= 0):
            raise DataError(meta_path, f"{key} is {meta[key]!r}, expected an integer >= 0")
    if "rating_range" in meta:
        r = meta["rating_range"]
        if not (isinstance(r, list) and len(r) == 2 and all(map(is_number, r)) and r[0] < r[1]):
            raise DataError(meta_path, f"rating_range is {r!r}, expected [lo, hi] with lo < hi")
    prebuilt = meta.get("prebuilt", [])
    if not isinstance(prebuilt, list) or not all(
        isinstance(p, dict) and is_number(p.get("eta")) and is_int(p.get("doc_len"))
        and is_int(p.get("seed")) for p in prebuilt
    ):
        raise DataError(meta_path, f"prebuilt is {prebuilt!r}, expected a list of "
                                   "{eta, doc_len, seed} objects")


def _read_meta(path: Path) -> dict:
    """The dataset's checked ``meta.json`` (DataError when ``path`` is no CATN dataset)."""
    if not path.is_dir():
        raise DataError(path, "not a directory (build a CATN dataset with `catn-data build`)")
    meta_path = path / "meta.json"
    if not meta_path.exists():
        raise DataError(path, "not a CATN dataset directory (no meta.json); build one with "
                              "`catn-data build`")
    meta = read_json_object(meta_path)
    _check_meta(meta_path, meta)
    return meta


def _read_vocab(path: Path) -> list[str]:
    vocab_path = path / "vocab.txt"
    try:
        return vocab_path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(vocab_path, "missing: the dataset is incomplete; rebuild it") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(vocab_path, f"unreadable: {reason(e)}") from None


def _user_roles(path: Path, users: pa.Table) -> np.ndarray:
    """The checked ``role`` column of users.parquet (and a check of ``common_rank``)."""
    for col in ("role", "common_rank"):
        col_type = users.schema.field(col).type
        if not pa.types.is_integer(col_type) or users.column(col).null_count:
            raise DataError(path / "users.parquet", f"column {col!r} has type {col_type} or "
                                                     "missing values, expected integers")
    role = users.column("role").to_numpy()
    known_roles = (ROLE_SOURCE_ONLY, ROLE_TARGET_ONLY, ROLE_COLD_VAL, ROLE_COLD_TEST,
                   ROLE_COMMON)
    if role.size and not np.isin(role, known_roles).all():
        k = int(np.argmax(~np.isin(role, known_roles)))
        raise DataError(path / "users.parquet", f"row {k + 1}: column 'role' holds "
                                                 f"{int(role[k])}, not a user role (0..4)")
    return role


def _check_reviews(file: Path, d: DomainReviews, num_users: int, vocab_size: int,
                   rating_range: tuple[float, float]) -> None:
    """Ids within the users, items and vocabulary; ratings within the range of meta.json."""
    if len(d) and (d.user.min() < 0 or d.user.max() >= num_users):
        raise DataError(file, f"user id {int(d.user.max())} out of range of users.parquet "
                              f"({num_users} users)")
    if len(d) and (d.item.min() < 0 or d.item.max() >= d.num_items):
        raise DataError(file, f"item id {int(d.item.max())} out of range of the items table "
                              f"({d.num_items} items)")
    if d.tokens.size and (d.tokens.min() < 0 or d.tokens.max() > vocab_size):
        raise DataError(file, f"word id {int(d.tokens.max())} beyond vocab.txt "
                              f"({vocab_size} words)")
    lo, hi = rating_range
    bad = ~((d.rating >= lo) & (d.rating <= hi))
    if bad.any():
        k = int(np.argmax(bad))
        raise DataError(file, f"row {k + 1}: rating {d.rating[k]:g} outside the rating range "
                              f"{lo:g}..{hi:g} of meta.json")


def _read_word_vectors(path: Path, vocab_size: int) -> np.ndarray | None:
    wv = path / "word_vectors.npy"
    try:
        vectors = np.load(wv) if wv.exists() else None
    except (OSError, ValueError) as e:
        raise DataError(wv, f"unreadable: {reason(e)}") from None
    if vectors is not None and (vectors.ndim != 2 or vectors.shape[0] != vocab_size + 1):
        raise DataError(wv, f"shape {vectors.shape}, expected ({vocab_size + 1}, d): one row "
                            "per word of vocab.txt plus padding")
    return vectors


def load_corpus(path: str | Path) -> CrossDomainCorpus:
    """Read a directory written by :func:`save_corpus`.

    Every file is checked against ``meta.json`` and the others (counts, id ranges, word ids,
    roles, the rating range), so a damaged or hand-edited dataset is a DataError naming the
    file at fault instead of a traceback or wrong numbers.
    """
    path = Path(path)
    meta = _read_meta(path)
    meta_path = path / "meta.json"
    vocab = _read_vocab(path)
    users = _read_parquet(path / "users.parquet", ("name", "role", "common_rank"))
    names_s = _read_parquet(path / "items_source.parquet", ("name",)).column("name").to_pylist()
    names_t = _read_parquet(path / "items_target.parquet", ("name",)).column("name").to_pylist()
    src = _read_reviews(path / "reviews_source.parquet", len(names_s))
    tgt = _read_reviews(path / "reviews_target.parquet", len(names_t))
    nu = users.num_rows
    for key, have, what in (("num_users", nu, "users.parquet rows"),
                            ("num_items_source", len(names_s), "items_source.parquet rows"),
                            ("num_items_target", len(names_t), "items_target.parquet rows"),
                            ("vocab_size", len(vocab), "vocab.txt lines")):
        if key in meta and meta[key] != have:
            raise DataError(meta_path, f"{key} is {meta[key]!r} but there are {have} {what}")
    role = _user_roles(path, users)
    rating_range = meta.get("rating_range", (-math.inf, math.inf))
    for fname, d in (("reviews_source.parquet", src), ("reviews_target.parquet", tgt)):
        _check_reviews(path / fname, d, nu, len(vocab), rating_range)
    vectors = _read_word_vectors(path, len(vocab))
    for p in meta.get("prebuilt", []):
        f = path / _eta_file(p["eta"]).format(p["doc_len"])
        if not f.is_file():
            raise DataError(meta_path, f"lists prebuilt documents {f.name}, which is missing")
    return CrossDomainCorpus(
        source=src, target=tgt, num_users=nu, vocab=vocab,
        role=role.astype(np.int8),
        common_rank=users.column("common_rank").to_numpy().astype(np.int64),
        meta=meta, user_names=users.column("name").to_pylist(),
        item_names_source=names_s, item_names_target=names_t,
        word_vectors=vectors,
    )


def load_eta(
    corpus: CrossDomainCorpus, path: str | Path | None, eta: float, doc_len: int, seed: int = 0
) -> EtaData:
    """The η view, taking the documents from a prebuilt npz when the build made one."""
    data = prepare_eta(corpus, eta, doc_len, seed) if path is None else None
    if data is not None:
        return data
    f = Path(path) / _eta_file(eta).format(doc_len)
    prebuilt = any(p.get("eta") == eta and p.get("doc_len") == doc_len and p.get("seed") == seed
                   for p in corpus.meta.get("prebuilt", []))
    if not (prebuilt and f.exists()):
        return prepare_eta(corpus, eta, doc_len, seed)
    # documents are the expensive part; pairs and priors are cheap to recompute
    data = prepare_eta(CrossDomainCorpus(
        source=corpus.source, target=corpus.target, num_users=corpus.num_users,
        vocab=corpus.vocab, role=corpus.role, common_rank=corpus.common_rank), eta, 1, seed)
    unreadable = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
    try:
        z = np.load(f)
    except unreadable as e:
        raise DataError(
            f, f"unreadable prebuilt documents (truncated or corrupt?): {reason(e)}"
        ) from None
    with z:
        for k in DOC_KEYS:
            if k not in z.files:
                raise DataError(f, f"missing array {k!r}; rebuild the dataset")
            try:
                docs = z[k]
            except unreadable as e:
                raise DataError(
                    f, f"array {k!r} is unreadable (truncated or corrupt?): {reason(e)}"
                ) from None
            rows = corpus.num_users if k.startswith(("user", "aux")) else (
                corpus.source.num_items if k.endswith("_s") else corpus.target.num_items)
            if docs.shape != (rows, doc_len):
                raise DataError(f, f"array {k!r} has shape {docs.shape}, expected "
                                   f"({rows}, {doc_len})")
            setattr(data, k, docs)
    return data
