"""deploy/: every file parsed and checked as far as this machine allows (no Docker daemon, no
Kubernetes API): the ray up config against Ray's own JSON schema, every `ray start` and
`dtrain train` command line against the real click commands, Prometheus configs with promtool,
and the security settings (token auth on, dashboards on loopback or behind a tunnel) by value.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import ray
import yaml
from packaging.requirements import Requirement
from ray.scripts.scripts import start as ray_start

from dtrain.cli.main import train

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RAY_SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def parse_ray_start(command: str) -> dict[str, Any]:
    """The options of a `[VAR=value ...] ray start ...` line, parsed by Ray's own CLI."""
    words = shlex.split(command)
    env = {}
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words[:2] == ["ray", "start"], command
    # make_context raises click's NoSuchOption/BadParameter for a flag Ray does not have.
    params = ray_start.make_context("start", words[2:]).params
    return {**params, "env": env}


def parse_train(command: str) -> dict[str, Any]:
    """The options of a `dtrain train ...` line, parsed by the real train command."""
    words = shlex.split(command)
    assert words[:2] == ["dtrain", "train"], command
    return train.make_context("train", words[2:]).params


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        op, _, args = full.partition(" ")
        out.append((op.upper(), args.strip()))
    return out


def installed_ray_constraint() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray_dep,) = [d for d in deps if d.startswith("ray")]
    return ray_dep


# --- ray up -------------------------------------------------------------------------------------


def test_ray_up_config_is_valid_for_rays_own_schema() -> None:
    schema = json.loads(RAY_SCHEMA.read_text())
    config = load_yaml(DEPLOY / "cluster" / "aws.yaml")
    jsonschema.validate(config, schema)
    # The validator really checks: the same config without a provider type is refused.
    broken = {**config, "provider": {k: v for k, v in config["provider"].items() if k != "type"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)

    assert config["head_node_type"] in config["available_node_types"]
    head = parse_ray_start(config["head_start_ray_commands"][-1])
    worker = parse_ray_start(config["worker_start_ray_commands"][-1])
    # Token auth on both kinds of node; the dashboard on the head's loopback (ray dashboard's
    # SSH tunnel reaches it), and the token file shipped from the client to every node.
    assert head["env"] == worker["env"] == {"RAY_AUTH_MODE": "token"}
    assert head["head"] and head["dashboard_host"] == "127.0.0.1"
    assert worker["address"] == f"$RAY_HEAD_IP:{head['port']}"
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    assert config["docker"]["image"].endswith(":0.1.0-cpu")


# --- KubeRay ------------------------------------------------------------------------------------


def _cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    cluster = load_yaml(DEPLOY / "kuberay" / "raycluster.yaml")
    job = load_yaml(DEPLOY / "kuberay" / "rayjob.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    return [("raycluster", cluster["spec"]), ("rayjob", job["spec"]["rayClusterSpec"])]


@pytest.mark.parametrize("name,spec", _cluster_specs())
def test_kuberay_cluster_spec(name: str, spec: dict[str, Any]) -> None:
    # The cluster's Ray is this project's Ray: a client on another version is refused.
    assert spec["rayVersion"] == ray.__version__, name
    # KubeRay generates the token Secret and sets RAY_AUTH_MODE/RAY_AUTH_TOKEN on every pod.
    assert spec["authOptions"] == {"mode": "token"}, name
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    groups = [head["template"], *[g["template"] for g in spec["workerGroupSpecs"]]]
    for template in groups:
        for container in template["spec"]["containers"]:
            # Only images built from deploy/docker/Dockerfile, in its two variants.
            assert re.fullmatch(r".+/dtrain:0\.1\.0-(cpu|gpu)", container["image"]), container
            # Never a token or an open auth mode in a manifest.
            names = {e["name"] for e in container.get("env", [])}
            assert not names & {"RAY_AUTH_TOKEN", "RAY_AUTH_MODE"}, container
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/dev/shm" in mounts, f"{name}: object store needs a larger /dev/shm"
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group


def test_kuberay_rayjob_entrypoint_is_a_valid_train_command() -> None:
    job = load_yaml(DEPLOY / "kuberay" / "rayjob.yaml")["spec"]
    params = parse_train(job["entrypoint"])
    assert params["as_json"] and params["epochs"] == 5
    # The workers fit the cluster the job brings: the head has no CPUs for them.
    workers = job["rayClusterSpec"]["workerGroupSpecs"]
    cpus = sum(
        g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
        for g in workers
    )
    assert params["num_workers"] * params["cpus_per_worker"] <= cpus
    assert job["shutdownAfterJobFinishes"] is True
    # A bad option would be caught by the same parse.
    with pytest.raises(click.NoSuchOption):
        parse_train("dtrain train --no-such-option")


# --- Docker -------------------------------------------------------------------------------------


def test_dockerfile_matches_the_project() -> None:
    steps = dockerfile_instructions(DEPLOY / "docker" / "Dockerfile")
    args = {a.split("=", 1)[0]: a.split("=", 1)[1].strip('"') for op, a in steps if op == "ARG"}
    # Ray's image at exactly the installed Ray, for this project's Python (3.11).
    match = re.fullmatch(r"rayproject/ray:(?P<ray>[\d.]+)-py(?P<py>\d+)-cpu", args["RAY_IMAGE"])
    assert match, args["RAY_IMAGE"]
    assert match["ray"] == ray.__version__
    assert match["py"] == "311"
    assert Requirement(installed_ray_constraint()).specifier.contains(match["ray"])
    assert steps[1] == ("FROM", "${RAY_IMAGE}")
    # The GPU variant the header documents: Ray's GPU image at the same version, and an extra
    # that pyproject has.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    header = (DEPLOY / "docker" / "Dockerfile").read_text()
    gpu = re.search(r"RAY_IMAGE=rayproject/ray:([\d.]+)-py311-gpu --build-arg EXTRAS=(\w+)", header)
    assert gpu, "the GPU build command is gone from the Dockerfile's header"
    assert gpu[1] == ray.__version__ and gpu[2] == "gpu" and "gpu" in extras
    # Everything it copies exists, and is what the job needs (packages, data, build metadata).
    copied = []
    for op, a in steps:
        if op == "COPY":
            words = [w for w in a.split() if not w.startswith("--")]
            copied += words[:-1]
    assert sorted(copied) == sorted(
        ["pyproject.toml", "README.md", "service/", "workers/", "cli/", "data/"]
    )
    for path in copied:
        assert (ROOT / path).exists(), path
    env = " ".join(a for op, a in steps if op == "ENV")
    assert "RAY_AUTH_MODE=token" in env
    assert "RAY_AUTH_TOKEN" not in env  # a token never goes into an image
    run = " ".join(a for op, a in steps if op == "RUN")
    assert "pip install" in run and "dtrain data prepare" in run


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().split()
    for entry in (".venv/", ".git/", "runs/", "tests/", "**/__pycache__/"):
        assert entry in ignored


# --- Compose ------------------------------------------------------------------------------------


def test_compose_cluster() -> None:
    compose = load_yaml(DEPLOY / "compose.yaml")
    services = compose["services"]
    assert set(services) == {"head", "worker", "prometheus", "pushgateway"}
    head, worker = (
        parse_ray_start(services["head"]["command"]),
        parse_ray_start(services["worker"]["command"]),
    )
    assert head["head"] and head["block"] and worker["block"]
    assert worker["address"] == f"{services['head']['hostname']}:{head['port']}"
    for name in ("head", "worker"):
        env = services[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token"
        # Compose refuses to start without a token instead of running an open cluster.
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?")
    # Published ports only on the host's loopback (the Jobs API runs code for whoever calls it).
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
    assert services["head"]["ports"] == [f"127.0.0.1:{head['dashboard_port']}:8265"]


def test_prometheus_configs_pass_promtool(tmp_path: Path) -> None:
    compose = load_yaml(DEPLOY / "compose.yaml")
    # The container's /etc/prometheus as compose mounts it: the config and its rule files.
    etc = tmp_path / "etc" / "prometheus"
    etc.mkdir(parents=True)
    for mount in compose["services"]["prometheus"]["volumes"]:
        source, target, mode = mount.split(":")
        assert mode == "ro" and target.startswith("/etc/prometheus/"), mount
        shutil.copy(DEPLOY / source, etc / Path(target).name)
    assert (etc / "prometheus.yml").read_bytes() == (
        DEPLOY / "docker" / "prometheus.yml"
    ).read_bytes()
    config = etc / "prometheus.yml"
    result = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Both rule files load (promtool checks the rule files a config names).
    assert "SUCCESS: 2 rule files found" in result.stdout, result.stdout
    # It scrapes the port every Ray node exports its metrics on.
    head = parse_ray_start(compose["services"]["head"]["command"])
    scrape = load_yaml(config)["scrape_configs"]
    ray_job = next(s for s in scrape if s["job_name"] == "ray")
    assert ray_job["dns_sd_configs"][0]["port"] == head["metrics_export_port"]
    # And the Pushgateway compose runs, keeping the pushed run labels.
    gateway = next(s for s in scrape if s["job_name"] == "pushgateway")
    assert gateway["honor_labels"] is True
    (port,) = compose["services"]["pushgateway"]["ports"]
    assert gateway["static_configs"][0]["targets"] == [f"pushgateway:{port.split(':')[-1]}"]
