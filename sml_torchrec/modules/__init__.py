"""Plain torch and TorchRec modules: they run in one process, with no process group."""

from sml_torchrec.modules.transfer import TransferConfig, TransferNet
from sml_torchrec.modules.transfer_embedding import (
    TransferEmbeddingBagCollection,
    set_transfer_mode,
)

__all__ = [
    "TransferConfig",
    "TransferEmbeddingBagCollection",
    "TransferNet",
    "set_transfer_mode",
]
