"""The η grid: shares of the common overlapping users that train (the paper's columns).

The one list of default η values, read by ``catn-data build``, ``catn-train`` and the TorchX
component; it imports nothing, so that loading the component stays cheap.
"""

from __future__ import annotations

ETAS: tuple[float, ...] = (1.0, 0.5, 0.2, 0.1, 0.05)


def format_etas(etas: tuple[float, ...]) -> str:
    """``etas`` as a flag value: ``1,0.5,0.2``."""
    return ",".join(f"{e:g}" for e in etas)
