"""How modules are sharded and run across ranks: process groups, sharding plans, shard-local ops."""

from sml_torchrec.distributed.transfer_embedding import (
    ShardedTransferEmbeddingBagCollection,
    TransferEmbeddingBagCollectionSharder,
)

__all__ = ["ShardedTransferEmbeddingBagCollection", "TransferEmbeddingBagCollectionSharder"]
