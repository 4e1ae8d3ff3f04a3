"""Period-by-period recommender retraining on TorchRec, with SML (SIGIR 2020) and baselines.

The Python API (see README "Python API")::

    from sml_torchrec import RetrainConfig, run

    result = run(RetrainConfig(out="runs/demo", strategies=["sml", "fine_tune"]))
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["RetrainConfig", "RunResult", "run"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import sml_torchrec.modules` need not load the run machinery.
    if name in ("run", "RunResult"):
        from sml_torchrec import api

        return getattr(api, name)
    if name == "RetrainConfig":
        from sml_torchrec.retrain.config import RetrainConfig

        return RetrainConfig
    raise AttributeError(f"module 'sml_torchrec' has no attribute {name!r}")
