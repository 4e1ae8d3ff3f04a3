"""How modules are sharded across ranks: the transfer collection's sharder, sharding plans,
shard-local ops, sharded top-K.

The sharded module and its sharder are imported on first use, so that reading
:data:`~sml_torchrec.distributed.names.SHARDING_NAMES` (parsing flags) does not import TorchRec.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ShardedTransferEmbeddingBagCollection", "TransferEmbeddingBagCollectionSharder"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from sml_torchrec.distributed import transfer_embedding

        return getattr(transfer_embedding, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
