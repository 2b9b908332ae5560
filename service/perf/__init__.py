"""How fast dtrain is, and what limits it: measurement code, not part of training.

- ``bench``: ``dtrain bench``'s run (orchestration only), over ``config`` (what one run measures),
  ``variants`` (the sgemm floor, the NumPy and torch loops), ``dtrain_run`` (``Trainer`` on Ray,
  recorded per step, and the zero-compute probe), ``memory`` (peak RSS from /proc),
  ``results`` (rows and the per-step breakdown), ``targets`` (the thresholds and their status)
  and ``report`` (the JSON and the tables);
- ``simulate``: the aggregation simulation, fake workers against the parameter server.

``dtrain.service.ps.sharded`` (the sharded parameter server) is reached only from ``simulate``
and from the tests: training itself never uses it.
"""
