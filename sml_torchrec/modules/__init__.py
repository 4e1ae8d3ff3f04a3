"""Plain torch and TorchRec modules: they run in one process, with no process group.

``TransferEmbeddingBagCollection`` (TorchRec) is imported on first use, so that the plain-torch
modules (``transfer``, ``transfer_triton``) import where only torch is installed.
"""

from __future__ import annotations

from typing import Any

from sml_torchrec.modules.transfer import TransferConfig, TransferNet

__all__ = [
    "TransferConfig",
    "TransferEmbeddingBagCollection",
    "TransferNet",
    "set_transfer_mode",
]


def __getattr__(name: str) -> Any:
    if name in ("TransferEmbeddingBagCollection", "set_transfer_mode"):
        from sml_torchrec.modules import transfer_embedding

        return getattr(transfer_embedding, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
