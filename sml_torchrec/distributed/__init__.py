"""How modules are sharded across ranks: the transfer collection's sharder, sharding plans,
shard-local ops, sharded top-K."""

from sml_torchrec.distributed.transfer_embedding import (
    ShardedTransferEmbeddingBagCollection,
    TransferEmbeddingBagCollectionSharder,
)

__all__ = ["ShardedTransferEmbeddingBagCollection", "TransferEmbeddingBagCollectionSharder"]
