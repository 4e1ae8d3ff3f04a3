"""Typed configuration of a ``catn-train`` run (what its flags fill in).

Each field with ``metadata["help"]`` is a flag named after it (``num_aspects`` is
``--num-aspects``); ``metadata`` also holds its ``metavar``, ``choices`` and older spellings
(``aliases``). :func:`catn.cli.parse_args` builds the parser from these fields alone, so the
flags cannot drift from the config. Fields without help (``synthetic``) are not flags.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from typing import Any

from catn.baselines import DEFAULT_METHODS, METHOD_NAMES
from catn.data.etas import ETAS
from recsys_common.errors import ConfigError


def _opt(default: Any, help: str, **extra: Any) -> Any:
    """A field whose ``help`` (and argparse ``metavar``, ``choices``, ``aliases``) live next
    to it."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """Options of ``catn-train``. ``None`` sizes take the data-dependent defaults."""

    data: str | None = _opt(None, "dataset directory from `catn-data build` (default: the "
                                  "built-in synthetic corpus)", metavar="DIR")
    synthetic_seed: int = _opt(0, "seed of the synthetic corpus")
    etas: tuple[float, ...] = _opt(ETAS, "comma-separated shares of overlapping users used for "
                                         "training, each in (0, 1]", aliases=("--eta",))
    seeds: tuple[int, ...] = _opt((0,), "comma-separated training seeds (averaged)")
    methods: tuple[str, ...] = _opt(DEFAULT_METHODS, "comma-separated table rows",
                                    choices=METHOD_NAMES)
    epochs: int | None = _opt(None, "max epochs (default 10 synthetic, 50 data)")
    patience: int = _opt(4, "stop after this many epochs without a better validation MSE")
    batch_size: int | None = _opt(None, "global batch, split across ranks (default 64 "
                                        "synthetic, 256 data)")
    lr: float | None = _opt(None, "Adam learning rate (default 3e-3 synthetic, 1e-3 data: "
                                  "the authors')")
    l2: float = _opt(1e-5, "L2 penalty on the weights")
    residual_l2: float = _opt(0.1, "penalty on the mean square of the aspect term and of the "
                                   "item residuals: pulls the prediction toward the bias-only "
                                   "prior (item mean + the user's source-domain offset)")
    pretrain_epochs: int = _opt(2, "epochs over every review of both domains (in-domain "
                                   "pairs: no overlapping user needed) that train the text CNN "
                                   "and aspect extractors before the cross-domain epochs; 0: "
                                   "none")
    doc_len: int | None = _opt(None, "words per document (default 80 synthetic, 500 data)")
    word_dim: int | None = _opt(None, "word vector size (default 32 synthetic, 300 data; the "
                                      "size of --word-vectors when given)")
    num_filters: int = _opt(50, "CNN filters per aspect")
    window: int = _opt(3, "CNN window in words, odd")
    num_aspects: int = _opt(5, "number of aspects", aliases=("--aspects",))
    latent_dim: int = _opt(32, "aspect representation size")
    dropout: float = _opt(0.2, "dropout rate, in [0, 1)")
    use_aux: bool = _opt(True, "use auxiliary reviews (--no-aux: the ablation without them)",
                         aliases=("--aux",))
    use_global_correlation: bool = _opt(True, "use the global aspect correlation S "
                                              "(--no-global-correlation: the ablation without)",
                                        aliases=("--global-correlation",))
    centre_aspects: bool = _opt(True, "centre aspect matrices by their running mean "
                                      "(--no-centre-aspects: the ablation without)")
    word_vectors: str | None = _opt(None, "word2vec/GloVe text file for the vocabulary "
                                          "(default: trained from scratch)", metavar="FILE")
    out: str | None = _opt(None, "run directory for results.json, results.csv, "
                                 "mse_vs_eta.png and models/ (default: "
                                 "runs/catn-<scenario>); an earlier run's are replaced only "
                                 "with --overwrite", metavar="DIR")
    nproc: int = _opt(1, "local data-parallel ranks (gloo on CPU); under torchrun ranks come "
                         "from the environment")
    timeout_s: float = _opt(3600.0, "seconds before local ranks are stopped as hung",
                            aliases=("--timeout",))
    progress: bool = _opt(True, "progress bars")
    synthetic: dict = field(default_factory=dict)  # SyntheticConfig overrides (tests, smoke)
    overwrite: bool = _opt(False, "replace an earlier run's results and models in OUT")

    def __post_init__(self) -> None:
        # Messages name the flag: catn-train shows them as usage errors.
        self._check_lists()
        for name in ("nproc", "patience", "num_filters", "window", "num_aspects", "latent_dim",
                     "epochs", "batch_size", "doc_len", "word_dim"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{flag_label(name)}: must be >= 1, got {v}")
        if self.window % 2 != 1:
            raise ConfigError(f"{flag_label('window')}: must be odd (the convolution keeps the "
                              f"document's length), got {self.window}")
        if self.doc_len is not None and self.window > self.doc_len:
            raise ConfigError(f"{flag_label('window')}: {self.window} words do not fit in "
                              f"--doc-len {self.doc_len}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"{flag_label('lr')}: must be a positive number, got {self.lr}")
        for name in ("l2", "residual_l2"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{flag_label(name)}: must be a number >= 0, got {v}")
        if self.pretrain_epochs < 0:
            raise ConfigError(f"{flag_label('pretrain_epochs')}: must be >= 0, got "
                              f"{self.pretrain_epochs}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{flag_label('dropout')}: must be in [0, 1), got "
                              f"{self.dropout}")
        if not (self.timeout_s > 0):
            raise ConfigError(f"{flag_label('timeout_s')}: must be > 0 seconds, got "
                              f"{self.timeout_s}")
        if self.synthetic_seed < 0:
            raise ConfigError(f"{flag_label('synthetic_seed')}: must be >= 0, got "
                              f"{self.synthetic_seed}")
        for name in ("data", "out", "word_vectors"):
            if getattr(self, name) == "":
                raise ConfigError(f"{flag_label(name)}: empty path")

    def _check_lists(self) -> None:
        """The comma-list fields: η shares, seeds and methods."""
        if not self.etas:
            raise ConfigError(f"{flag_label('etas')}: empty; give shares in (0, 1], e.g. 1,0.5")
        bad = [e for e in self.etas if not (0 < e <= 1)]
        if bad:
            raise ConfigError(f"{flag_label('etas')}: {bad[0]:g} is outside (0, 1]")
        if len(set(self.etas)) != len(self.etas):
            raise ConfigError(f"{flag_label('etas')}: a share is listed more than once")
        if not self.seeds or any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(
                self.seeds):
            raise ConfigError(f"{flag_label('seeds')}: want distinct integers >= 0, got "
                              f"{list(self.seeds)}")
        unknown = [m for m in self.methods if m not in METHOD_NAMES]
        if unknown or not self.methods:
            what = f"unknown {unknown}" if unknown else "empty"
            raise ConfigError(f"{flag_label('methods')}: {what}; choose from "
                              f"{','.join(METHOD_NAMES)}")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"{flag_label('methods')}: a method is listed more than once")

    def resolved(self) -> TrainConfig:
        """Fill the size defaults: small for the synthetic corpus, the authors' otherwise."""
        c = copy.deepcopy(self)
        synth = c.data is None
        c.epochs = c.epochs if c.epochs is not None else (10 if synth else 50)
        c.doc_len = c.doc_len if c.doc_len is not None else (80 if synth else 500)
        c.word_dim = c.word_dim if c.word_dim is not None else (32 if synth else 300)
        c.batch_size = c.batch_size if c.batch_size is not None else (64 if synth else 256)
        c.lr = c.lr if c.lr is not None else (3e-3 if synth else 1e-3)
        return c


_FIELDS = {f.name: f for f in fields(TrainConfig)}


def flag_names(name: str) -> list[str]:
    """The option strings of field ``name``: ``--field-name``, then its older spellings."""
    return ["--" + name.replace("_", "-"), *_FIELDS[name].metadata.get("aliases", ())]


def flag_label(name: str) -> str:
    """How argparse names the flag of field ``name`` in errors: ``argument --etas/--eta``."""
    return "argument " + "/".join(flag_names(name))
