"""A seeded synthetic interaction log with the temporal dynamics periodic retraining faces.

The generative story, one period at a time (period length ``period_seconds``):

* **Items arrive and fade.** ``initial_items`` exist at period 0 and ``new_items_per_period``
  are born every later period. An item's appeal decays with age: ``-age / item_lifetime``
  is added to its logit, so most interactions go to recent items (as in news).
* **Popularity shifts.** Every item carries a log-popularity that takes a Gaussian random-walk
  step of size ``popularity_walk`` each period.
* **Tastes drift.** Users and items have unit latent vectors of size ``latent_dim``; a user's
  vector moves each period: ``p <- normalize(sqrt(1 - drift^2) p + drift * noise)``.
* **Who interacts.** Each user is active in a period with probability ``active_prob`` and then
  picks ``1 + Poisson(interactions_per_active_user - 1)`` distinct items, sampled without
  replacement (Gumbel top-k) from the softmax over living items of
  ``affinity * <p_u, q_i> + log_popularity_i - age_i / item_lifetime``.

Timestamps are uniform within the period. Ids are numbered by first appearance as in every
period dataset. The same ``seed`` gives the same log, bit for bit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from recsys_common.errors import DataError
from sml_torchrec.data.build import renumber_by_first_appearance
from sml_torchrec.data.period_dataset import PeriodMetadata, write_period_dataset


@dataclass
class SyntheticConfig:
    num_users: int = 2000
    periods: int = 16
    initial_items: int = 300
    new_items_per_period: int = 100
    latent_dim: int = 16
    affinity: float = 6.0
    drift: float = 0.35
    item_lifetime: float = 3.0
    popularity_walk: float = 0.3
    active_prob: float = 0.6
    interactions_per_active_user: float = 6.0
    period_seconds: int = 86_400
    start_timestamp: int = 1_600_000_000
    seed: int = 0


def peak_bytes(config: SyntheticConfig) -> int:
    """Rough peak memory of :func:`generate`: the last period's logits, Gumbel noise and their
    sum over active users x living items, in float64."""
    c = config
    items = c.initial_items + c.new_items_per_period * max(c.periods - 1, 0)
    return int(4 * 8 * max(c.active_prob, 0.01) * c.num_users * items)


@dataclass
class SyntheticLog:
    """Raw generated log (ids not yet renumbered); arrays of equal length, sorted by time."""

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    period: np.ndarray
    item_birth: np.ndarray  # birth period of each raw item id


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def generate(config: SyntheticConfig) -> SyntheticLog:
    c = config
    rng = np.random.default_rng(c.seed)
    num_items = c.initial_items + c.new_items_per_period * (c.periods - 1)
    item_birth = np.concatenate(
        [
            np.zeros(c.initial_items, dtype=np.int64),
            np.repeat(np.arange(1, c.periods), c.new_items_per_period),
        ]
    )
    q = _unit(rng.standard_normal((num_items, c.latent_dim)))
    p = _unit(rng.standard_normal((c.num_users, c.latent_dim)))
    log_pop = rng.standard_normal(num_items) * 0.5
    parts = []
    for t in range(c.periods):
        if t > 0:
            p = _unit(
                np.sqrt(1 - c.drift**2) * p + c.drift * rng.standard_normal(p.shape) / np.sqrt(
                    c.latent_dim
                )
            )
            log_pop = log_pop + c.popularity_walk * rng.standard_normal(num_items)
        alive = np.flatnonzero(item_birth <= t)
        active = np.flatnonzero(rng.random(c.num_users) < c.active_prob)
        if len(active) == 0:
            continue
        k = 1 + rng.poisson(c.interactions_per_active_user - 1, size=len(active))
        k = np.minimum(k, len(alive))
        logits = (
            c.affinity * (p[active] @ q[alive].T)
            + log_pop[alive]
            - (t - item_birth[alive]) / c.item_lifetime
        )
        gumbel = -np.log(-np.log(rng.random(logits.shape)))
        kmax = int(k.max())
        top = np.argpartition(-(logits + gumbel), kmax - 1, axis=1)[:, :kmax]
        keep = np.arange(kmax)[None, :] < k[:, None]
        users = np.broadcast_to(active[:, None], top.shape)[keep]
        items = alive[top[keep]]
        offset = rng.integers(0, c.period_seconds, len(users))
        ts = c.start_timestamp + t * c.period_seconds + offset
        parts.append((users, items, ts, np.full(len(users), t, dtype=np.int32)))
    if not parts:
        raise DataError(None, f"synthetic log: no interactions with {c.num_users} users; use "
                              "more users (--num-users)")
    user, item, ts, period = (np.concatenate(x) for x in zip(*parts))
    order = np.argsort(ts, kind="stable")
    return SyntheticLog(user[order], item[order], ts[order], period[order], item_birth)


def build_synthetic(
    out_dir: str | Path, config: SyntheticConfig | None = None, *, overwrite: bool = False
) -> PeriodMetadata:
    """Generate the synthetic log and write it as a period dataset (periods as generated).

    ``out_dir`` must be new, empty or (with ``overwrite``) a period dataset. A configuration
    under which some period gets no interaction (too few users) is a DataError saying so.
    """
    config = config or SyntheticConfig()
    g = generate(config)
    empty = sorted(set(range(config.periods)) - set(np.unique(g.period).tolist()))
    if empty:
        raise DataError(
            None,
            f"synthetic log: period(s) {', '.join(map(str, empty[:8]))} of {config.periods} got "
            f"no interactions with {config.num_users} users; use more users (--num-users)",
        )
    user, user_old = renumber_by_first_appearance(g.user, config.num_users)
    item, item_old = renumber_by_first_appearance(g.item, len(g.item_birth))
    return write_period_dataset(
        out_dir,
        user,
        item,
        g.timestamp,
        g.period,
        cut="given",
        user_raw_ids=pa.array(user_old),
        item_raw_ids=pa.array(item_old),
        source="synthetic",
        build={"synthetic": asdict(config)},
        overwrite=overwrite,
    )
