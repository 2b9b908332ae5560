"""dtrain workers: the network's math, shard reading and the worker actor."""
