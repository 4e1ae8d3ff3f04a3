"""How modules are sharded and run across ranks: process groups, sharding plans, shard-local ops."""
