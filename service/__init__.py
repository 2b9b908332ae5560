"""dtrain's service side, by responsibility (installed as ``dtrain.service``):

- ``train/``: one training run on the driver: ``trainer`` (build, train, close), ``config``,
  ``session`` (Ray and the cluster's capacity), ``plan`` (rows and batch slices per worker),
  ``actors`` (the server and workers' lifecycle), ``loop`` (the steps), ``recovery``
  (snapshots, restarts, resume) and ``checkpoint`` (the on-disk format).
- ``ps/``: the parameter server (``server``), the optimizers (``optim``) and a sharded server
  (``sharded``) that only the aggregation simulation and its tests use.
- ``data/``: Arrow datasets: reading MNIST sources (``sources``), writing the shards
  (``prepare``, replacing only what dtrain wrote: ``outdir``), the manifest and its checks
  (``manifest``), all re-exported by ``dataset``; moving shards to workers (``transport``),
  reading images for ``predict`` (``images``; PNG and JPEG pictures in ``pictures``) and
  untrusted ``.npz`` files (``npzsafe``).
- ``observe/``: what a run reports: stats records, observers (history, console), Prometheus
  metrics and the PNG report.
- ``perf/``: ``dtrain bench`` and the aggregation simulation; not on the training path.
- ``jobs/``: ``dtrain submit`` and ``dtrain jobs`` over Ray's Jobs API (``fetch`` brings a
  job's run directory back).
- ``export``: a checkpoint's network as ONNX or safetensors (the optional ``export`` extra).
- ``train/runinfo``: the run a checkpoint came from, so evaluate and predict use its data.
- ``paths``: why an output file cannot be written (a file where its folder should be).

The worker side (``dtrain.workers``: the model's math, the worker actor, shard reading, the
shared-memory exchange) depends on nothing here; ``dtrain.cli`` is the command line over both.
"""

__version__ = "0.1.0"
