import gzip
import json
import re

import numpy as np
import pytest

from catn.data.builder import BuildConfig, build_from_files
from catn.data.dataset import (
    ROLE_COLD_TEST,
    ROLE_COLD_VAL,
    ROLE_COMMON,
    load_corpus,
    num_training_users,
    prepare_eta,
    save_corpus,
)
from catn.data.documents import build_documents, match_auxiliary_reviews
from catn.data.errors import DataError, FilterError, SplitError
from catn.data.reader import iter_reviews, scan_ratings
from catn.data.synthetic import SyntheticConfig, synthetic_corpus

ROWS = [
    {"reviewerID": "A1", "asin": "X", "overall": 5.0, "reviewText": "great pump",
     "unixReviewTime": 3},
    {"reviewerID": "A2", "asin": "X", "overall": 4.0, "reviewText": "ok pump"},
    {"reviewerID": "A1", "asin": "Y", "overall": 1.0, "reviewText": "bad", "unixReviewTime": 1},
]


def _write(path, lines, gz=False):
    data = "".join(line + "\n" for line in lines).encode()
    if gz:
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("style", ["json", "pydict"])
@pytest.mark.parametrize("gz", [False, True])
def test_reader_both_styles(tmp_path, style, gz):
    lines = [json.dumps(r) if style == "json" else repr(r) for r in ROWS]
    lines.insert(1, "")  # blank lines are skipped
    p = _write(tmp_path / ("r.json.gz" if gz else "r.json"), lines, gz)
    revs = list(iter_reviews(p))
    assert [(r.user, r.item, r.rating, r.text, r.time) for r in revs] == [
        ("A1", "X", 5.0, "great pump", 3), ("A2", "X", 4.0, "ok pump", 0),
        ("A1", "Y", 1.0, "bad", 1)]
    assert [r.line for r in revs] == [1, 3, 4]
    scan = scan_ratings(p)
    assert scan.user.tolist() == [0, 1, 0] and scan.item_names == ["X", "Y"]


def test_reader_malformed_and_missing(tmp_path):
    p = _write(tmp_path / "bad.json", [json.dumps(ROWS[0]), '{"reviewerID": "A1", oops'])
    with pytest.raises(DataError, match=r"bad.json: line 2: not a JSON"):
        list(iter_reviews(p))
    p = _write(tmp_path / "miss.json", [json.dumps({"reviewerID": "A", "overall": 3})])
    with pytest.raises(DataError, match=r"line 1: missing field\(s\) asin"):
        list(iter_reviews(p))
    p = _write(tmp_path / "num.json", [json.dumps({**ROWS[0], "overall": "five"})])
    with pytest.raises(DataError, match="line 1: field 'overall'"):
        list(iter_reviews(p))


def test_documents_order_truncation_and_padding():
    tokens = np.arange(1, 21, dtype=np.int32)
    offsets = np.array([0, 5, 10, 12, 20])
    docs = build_documents(np.array([0, 0, 1, 0]), np.array([3, 1, 0, 2]), np.arange(4),
                           tokens, offsets, 3, 9)
    assert docs[0].tolist() == [6, 7, 8, 9, 10, 13, 14, 15, 16]  # time order, cut at 9
    assert docs[1].tolist() == [11, 12] + [0] * 7
    assert not docs[2].any()


def test_auxiliary_rule_vectorised():
    rng = np.random.default_rng(1)
    # distinct (user, item) pairs, as in review data: a user reviews an item once
    pairs = rng.choice(400 * 30, size=3000, replace=False)
    user, item = pairs // 30, pairs % 30
    rating = rng.integers(1, 6, len(pairs)).astype(float)
    m = match_auxiliary_reviews(user, item, rating, seed=3)
    n = len(pairs)
    picked_exact = 0
    for j in range(n):
        others = (item == item[j]) & (np.arange(n) != j)
        rule = next((d for d in (0, 1, -1) if (others & (rating == rating[j] + d)).any()), None)
        if rule is None:
            assert m[j] == -1
            continue
        k = m[j]
        assert k != j and item[k] == item[j] and user[k] != user[j]
        assert rating[k] - rating[j] == rule
        picked_exact += rule == 0
    assert picked_exact > n // 2
    # draws are spread over the candidates, not always the first one
    j = int(np.argmax([((item == item[q]) & (rating == rating[q])).sum() for q in range(n)]))
    draws = {int(match_auxiliary_reviews(user, item, rating, seed=s)[j]) for s in range(20)}
    assert len(draws) > 3
    # rating rule precedence on a hand-made case: exact, else +1, else -1
    u = np.array([0, 1, 2, 3, 4, 5])
    it = np.array([0, 0, 0, 0, 1, 1])
    r = np.array([5, 5, 4, 2, 3, 2.0])
    got = match_auxiliary_reviews(u, it, r, seed=0)
    assert got[0] == 1 and got[1] == 0  # exact match
    assert r[got[2]] == 5  # no other 4 -> a 5
    assert got[3] == -1  # no 2, 3 or 1 for item 0
    assert got[4] == 5 and got[5] == 4  # 3 -> no 3, no 4, a 2; 2 -> no 2, a 3


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus(SyntheticConfig(overlap_users=200, source_only_users=40,
                                            target_only_users=40, items_source=30,
                                            items_target=30, seed=5))


@pytest.mark.parametrize("eta", [1.0, 0.5, 0.2, 0.1, 0.05])
def test_splits(corpus, eta):
    d = prepare_eta(corpus, eta, doc_len=40)
    n_common = corpus.num_common
    assert n_common == 100
    assert d.num_training_users == int(np.floor(eta * n_common + 1e-9))
    train_users = set(d.train_s[0]) | set(d.train_t[0])
    assert len(train_users) == d.num_training_users
    assert all(corpus.role[u] == ROLE_COMMON for u in train_users)
    cold = np.flatnonzero((corpus.role == ROLE_COLD_VAL) | (corpus.role == ROLE_COLD_TEST))
    assert len(cold) == 100 and (corpus.role == ROLE_COLD_VAL).sum() == 40
    # cold-start users never appear in target training data or target documents
    assert not set(cold) & set(d.train_t[0])
    assert not d.user_docs_t[cold].any() and not d.aux_docs_t[cold].any()
    # ... but keep their source documents, which is what they are scored from
    assert (d.user_docs_s[cold] > 0).any(1).all()
    assert set(d.test[0]) <= set(np.flatnonzero(corpus.role == ROLE_COLD_TEST))
    assert set(d.val[0]) <= set(np.flatnonzero(corpus.role == ROLE_COLD_VAL))
    # item means never see cold-start target ratings
    T = corpus.target
    vis = ~np.isin(T.user, cold) & ~(
        (corpus.role[T.user] == ROLE_COMMON) & (corpus.common_rank[T.user]
                                                >= d.num_training_users))
    it0 = T.item[vis][0]
    assert d.item_mean_t[it0] == pytest.approx(T.rating[vis][T.item[vis] == it0].mean())


def test_eta_errors():
    with pytest.raises(SplitError, match="leaves no training users"):
        num_training_users(10, 0.05)
    with pytest.raises(SplitError):
        num_training_users(10, 1.5)


def test_unseen_items_get_global_mean_not_zero(corpus):
    d = prepare_eta(corpus, 0.05, doc_len=10)
    assert (d.item_mean_t > 0).all() and (d.item_mean_s > 0).all()


def test_user_prior_is_each_domains_shrunk_mean_residual(corpus):
    """Row 0 (source) is what a cold-start user is scored with; row 1 (target) equals, for
    every training user, the shrunk mean residual of their training target ratings."""
    d = prepare_eta(corpus, 0.5, doc_len=10)
    prior = d.user_prior()
    assert prior.shape == (2, corpus.num_users) and prior.dtype == np.float32
    u, i, r = d.train_t
    res = r - d.item_mean_t[i]
    want = np.bincount(u, weights=res, minlength=corpus.num_users) / (
        np.bincount(u, minlength=corpus.num_users) + 3.0)
    train_users = np.unique(u)
    np.testing.assert_array_equal(prior[1, train_users],
                                  want.astype(np.float32)[train_users])
    cold = (corpus.role == ROLE_COLD_VAL) | (corpus.role == ROLE_COLD_TEST)
    assert (prior[1, cold] == 0).all()  # their target ratings are labels, never priors
    assert (prior[0, cold] != 0).any()


def _amazon_files(tmp_path, n_users=60, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for dom, style in (("Books", "pydict"), ("Movies", "json")):
        lines = []
        for u in range(n_users):
            for it in rng.choice(12, size=6, replace=False):
                obj = {"reviewerID": f"U{u}", "asin": f"{dom}{it}",
                       "overall": float(rng.integers(1, 6)),
                       "reviewText": f"{dom.lower()} word{rng.integers(50)} thing{it} nice",
                       "unixReviewTime": int(rng.integers(1e9))}
                lines.append(json.dumps(obj) if style == "json" else repr(obj))
        paths.append(_write(tmp_path / f"{dom}.json.gz", lines, gz=True))
    return paths


def test_build_save_load_roundtrip_and_atomic(tmp_path):
    s, t = _amazon_files(tmp_path)
    cfg = BuildConfig(min_item_reviews=5, min_user_reviews=3, vocab_size=30, doc_len=20,
                      etas=(1.0, 0.5))
    c = build_from_files(s, t, cfg, log=lambda *_: None)
    assert len(c.vocab) == 30 and c.num_users == 60
    out = tmp_path / "ds"
    save_corpus(c, out, etas=cfg.etas, doc_len=20)
    c2 = load_corpus(out)
    assert np.array_equal(c2.source.tokens, c.source.tokens)
    assert np.array_equal(c2.role, c.role) and c2.vocab == c.vocab
    before = sorted(p.name for p in out.iterdir())
    # a failing rebuild leaves the previous dataset intact and no temp dirs behind

    class Boom(RuntimeError):
        pass

    bad = c2
    bad.meta = {"x": object()}  # not JSON-serialisable: fails at the end of the write
    with pytest.raises(TypeError):
        save_corpus(bad, out, etas=(1.0,), doc_len=20, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ds")] == []


def test_filters_report_and_suggest(tmp_path):
    s, t = _amazon_files(tmp_path)
    with pytest.raises(FilterError) as e:
        build_from_files(s, t, BuildConfig(), log=lambda *_: None)
    msg = str(e.value)
    assert "leave 0 overlapping users" in msg
    assert re.search(r"after_item_filter [1-9]\d* reviews", msg)
    assert "after_user_filter 0 reviews" in msg
    assert re.search(r"Suggestion: --min-item-reviews \d+ --min-user-reviews \d+ keeps \d+", msg)


def test_empty_overlap(tmp_path):
    a = _write(tmp_path / "a.json", [json.dumps({**ROWS[0], "reviewerID": f"A{k}",
                                                  "asin": "X"}) for k in range(5)])
    b = _write(tmp_path / "b.json", [json.dumps({**ROWS[0], "reviewerID": f"B{k}",
                                                  "asin": "Y"}) for k in range(5)])
    with pytest.raises(FilterError, match="leave 0 overlapping users"):
        build_from_files(a, b, BuildConfig(min_item_reviews=1, min_user_reviews=1),
                         log=lambda *_: None)
