"""A seeded synthetic cross-domain review corpus with real aspect signal (the default data).

Generative story (``K`` latent aspects shared by both domains):

* **Users** have aspect weights ``w_u ~ Dirichlet(concentration)`` (what they care about) and
  a rating offset ``o_u ~ N(0, user_offset_sd)`` (lenient or harsh). Both carry across the two
  domains: that is what makes cold-start transfer possible.
* **Items** (per domain) have aspect qualities ``q_i ~ U(-1, 1)^K`` and a bias
  ``b_i ~ N(0, item_bias_sd)``.
* **Ratings**: ``clip(round(base + o_u + b_i + interaction * K * <w_u, q_i> / 2 + noise))``
  in 1..5, with ``noise ~ N(0, noise_sd)``. The interaction term is the part that only an
  aspect-aware model can predict: the item mean and the user mean miss it.
* **Review text** of u on i: ``mentions`` aspect mentions, each picking aspect k with
  probability ``0.7 w_uk + 0.3 / K`` and writing ``<aspect word> <polarity word>``; the aspect
  word comes from a vocabulary specific to (domain, aspect) and the polarity word is positive
  iff ``q_ik + N(0, 0.3) > 0``. Then two words of a vocabulary tied to the rating level (1..5)
  and ``noise_words`` filler words. So a user's document reveals ``w_u`` (through which
  aspects they mention) and ``o_u``; an item's document reveals ``q_i``; source and target
  aspect words differ, so the model has to learn the aspect correlation across domains.
* **Word vectors** (``word_vectors`` > 0, the default): the corpus ships "pretrained" vectors,
  the stand-in for the word2vec/GloVe vectors the CATN authors start from. A distributional
  embedding puts words used alike close together, so each word is its group's centre plus
  noise; the groups are: one per (domain, aspect) for aspect words, one for all positive and
  one for all negative polarity words, one per rating level, and each filler word alone.
  Source and target aspect groups are independent directions, so the cross-domain aspect
  correlation is still the model's to learn. The ratings and the text are the same with or
  without vectors. Why they are on by default: an item's quality on aspect k shows only in
  *which* polarity word follows an aspect-k word. From randomly initialised embeddings, the
  text CNN does not find that two-word pattern on a corpus this small before the user side
  has fitted the training users' documents, and the aspect term never generalises to
  cold-start users. (That is also why the authors do not train word vectors from scratch.)

The same seed gives the same corpus, bit for bit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from catn.data.builder import BuildConfig, corpus_from_rows, scan_from_lists
from catn.data.dataset import CrossDomainCorpus


@dataclass
class SyntheticConfig:
    overlap_users: int = 640
    source_only_users: int = 160
    target_only_users: int = 160
    items_source: int = 90
    items_target: int = 90
    aspects: int = 5
    reviews_per_user: float = 8.0  # per domain, 2 + Poisson(mean - 2)
    concentration: float = 0.4
    user_offset_sd: float = 0.5
    item_bias_sd: float = 0.4
    interaction: float = 0.8
    noise_sd: float = 0.3
    base: float = 3.6
    aspect_words: int = 8
    polarity_words: int = 6
    level_words: int = 4
    noise_vocab: int = 200
    mentions: int = 5
    noise_words: int = 6
    vocab_size: int = 2000
    word_vectors: int = 32  # > 0: ship "pretrained" word vectors of this size; 0: none
    word_vector_noise: float = 0.5
    seed: int = 0


def generate_rows(cfg: SyntheticConfig) -> dict:
    """Raw (user, item, rating, text, time) lists per domain, plus the latent truth."""
    rng = np.random.default_rng(cfg.seed)
    K = cfg.aspects
    n_users = cfg.overlap_users + cfg.source_only_users + cfg.target_only_users
    w = rng.dirichlet(np.full(K, cfg.concentration), size=n_users)
    off = rng.normal(0, cfg.user_offset_sd, size=n_users)
    in_s = np.zeros(n_users, dtype=bool)
    in_t = np.zeros(n_users, dtype=bool)
    in_s[: cfg.overlap_users + cfg.source_only_users] = True
    in_t[: cfg.overlap_users] = True
    in_t[cfg.overlap_users + cfg.source_only_users:] = True
    pos = [f"good{j}" for j in range(cfg.polarity_words)]
    neg = [f"bad{j}" for j in range(cfg.polarity_words)]
    levels = [[f"lvl{r}x{j}" for j in range(cfg.level_words)] for r in range(1, 6)]
    noise = [f"filler{j}" for j in range(cfg.noise_vocab)]
    out: dict = {"w": w, "offset": off}
    for dom, n_items, active in (("source", cfg.items_source, in_s),
                                 ("target", cfg.items_target, in_t)):
        q = rng.uniform(-1, 1, size=(n_items, K))
        b = rng.normal(0, cfg.item_bias_sd, size=n_items)
        words = [[f"{dom[0]}asp{k}w{j}" for j in range(cfg.aspect_words)] for k in range(K)]
        users, items, ratings, texts, times = [], [], [], [], []
        for u in np.flatnonzero(active):
            n = min(n_items, 2 + rng.poisson(max(cfg.reviews_per_user - 2, 0)))
            its = rng.choice(n_items, size=n, replace=False)
            mean = (cfg.base + off[u] + b[its]
                    + cfg.interaction * K * (q[its] @ w[u]) / 2)
            r = np.clip(np.rint(mean + rng.normal(0, cfg.noise_sd, size=n)), 1, 5)
            p_aspect = 0.7 * w[u] + 0.3 / K
            for i, rating in zip(its, r, strict=True):
                toks: list[str] = []
                for k in rng.choice(K, size=cfg.mentions, p=p_aspect):
                    good = q[i, k] + rng.normal(0, 0.3) > 0
                    pol = pos if good else neg
                    toks += [words[k][rng.integers(cfg.aspect_words)],
                             pol[rng.integers(cfg.polarity_words)]]
                lv = levels[int(rating) - 1]
                toks += [lv[rng.integers(cfg.level_words)] for _ in range(2)]
                toks += [noise[j] for j in rng.integers(cfg.noise_vocab, size=cfg.noise_words)]
                users.append(f"u{u}")
                items.append(f"{dom[0]}i{i}")
                ratings.append(float(rating))
                texts.append(" ".join(toks))
                times.append(int(rng.integers(1_300_000_000, 1_400_000_000)))
        out[dom] = {"users": users, "items": items, "ratings": ratings, "texts": texts,
                    "times": times, "q": q, "b": b}
    return out


def synthetic_corpus(cfg: SyntheticConfig | None = None) -> CrossDomainCorpus:
    """The synthetic corpus as a :class:`CrossDomainCorpus` (no review-count filters)."""
    cfg = cfg or SyntheticConfig()
    rows = generate_rows(cfg)
    scans = [scan_from_lists(rows[d]["users"], rows[d]["items"], rows[d]["ratings"],
                             rows[d]["times"]) for d in ("source", "target")]
    bc = BuildConfig(min_item_reviews=1, min_user_reviews=1, vocab_size=cfg.vocab_size,
                     seed=cfg.seed + 666)
    corpus = corpus_from_rows(scans[0], scans[1], rows["source"]["texts"],
                              rows["target"]["texts"], bc,
                              meta={"scenario": f"synthetic(seed={cfg.seed})",
                                    "synthetic": asdict(cfg)})
    if cfg.word_vectors > 0:
        corpus.word_vectors = synthetic_word_vectors(corpus.vocab, cfg.word_vectors,
                                                     cfg.word_vector_noise, cfg.seed + 7)
    return corpus


def _cluster(word: str) -> str:
    """The group of words a distributional embedding would put close together."""
    if word.startswith(("good", "bad")):
        return word.rstrip("0123456789")
    if word[1:4] == "asp":
        return word.split("w")[0]  # domain and aspect, e.g. "sasp2"
    if word.startswith("lvl"):
        return word.split("x")[0]
    return word  # filler words: each on its own


def synthetic_word_vectors(vocab: list[str], dim: int, noise: float, seed: int) -> np.ndarray:
    """(len(vocab) + 1, dim) vectors, row 0 padding: cluster centre + noise per word."""
    rng = np.random.default_rng(seed)
    centres: dict[str, np.ndarray] = {}
    out = np.zeros((len(vocab) + 1, dim), dtype=np.float32)
    for j, w in enumerate(vocab, start=1):
        c = _cluster(w)
        if c not in centres:
            centres[c] = rng.normal(size=dim)
        out[j] = centres[c] + noise * rng.normal(size=dim)
    return out
