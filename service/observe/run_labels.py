"""Which run a series belongs to: the run id and Ray's submission id on every exported series.

One driver serves one run, so these two labels are constant per process, like ``instance``: every
series carries them, so the dashboard's run variable and every alert name the run without a join,
and the Pushgateway keeps one group per run instead of the last run replacing all others.
A label with an empty value is no label in Prometheus, so an unset one is left out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# Set by Ray's job supervisor on a submitted job's driver (ray/_private/runtime_env/constants.py);
# its "metadata" holds the submission id that `dtrain jobs` and `ray job` show.
RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def ray_job_id(environ: Mapping[str, str] | None = None) -> str:
    """The Ray Jobs submission id of this driver, or "" when it was not submitted."""
    raw = (os.environ if environ is None else environ).get(RAY_JOB_CONFIG_ENV)
    if not raw:
        return ""
    try:
        metadata = json.loads(raw).get("metadata")
    except (ValueError, AttributeError):  # not JSON, or JSON that is not an object
        return ""
    value = metadata.get("job_submission_id") if isinstance(metadata, dict) else None
    return value if isinstance(value, str) else ""


def run_labels(run_id: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """{"run_id", "ray_job_id"} without the empty ones."""
    labels = {"run_id": run_id, "ray_job_id": ray_job_id(environ)}
    return {k: v for k, v in labels.items() if v}


class _Labelled(Collector):
    """Every family of ``source`` with ``labels`` added to each sample."""

    def __init__(self, source: CollectorRegistry, labels: Mapping[str, str]) -> None:
        self.source = source
        self.labels = dict(labels)

    def collect(self) -> Iterable[Metric]:
        for family in self.source.collect():
            out = Metric(family.name, family.documentation, family.type, family.unit)
            out.samples = [s._replace(labels={**self.labels, **s.labels}) for s in family.samples]
            yield out


def labelled(source: CollectorRegistry, labels: Mapping[str, str]) -> CollectorRegistry:
    """A registry to serve or push: ``source``'s series, each with ``labels``."""
    if not labels:
        return source
    exposed = CollectorRegistry(auto_describe=False)
    exposed.register(_Labelled(source, labels))
    return exposed
