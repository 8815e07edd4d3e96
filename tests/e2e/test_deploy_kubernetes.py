"""deploy/kubernetes checked without a cluster.

- Every document parses (PyYAML); Kubernetes' own kinds validate against the JSON schemas
  that kubernetes-validate ships (strict: an unknown field is an error), for the oldest and
  the newest Kubernetes versions it knows of here.
- Each Deployment and the worker.toml of its ConfigMap agree, as the pod would see them
  (the file, then the container's TUBEWORKER_* variables): `tubeworker check` accepts it,
  terminationGracePeriodSeconds is above drain_timeout, the probes and the scrape
  annotation hit the control plane's port and paths, the token file is in the mounted
  Secret, max_memory_mb is below the memory limit, compute pools fit the CPU limit.
- The KEDA ScaledObjects (a custom resource: no schema here) use only the metadata keys the
  KEDA scalers read (checked in KEDA's source), point at the Deployments, name tubes of
  their pools, and their Prometheus queries use only metric names the daemon exports.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.e2e.test_deploy_prometheus import module_names, promql_names
from tubeworker.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
DEPLOYMENTS = KUBERNETES / "deployment.yaml"
CONFIGMAPS = KUBERNETES / "configmap.yaml"
PODMONITOR = KUBERNETES / "podmonitor.yaml"
SCALED_OBJECTS = sorted((KUBERNETES / "keda").glob("*.yaml"))
CUSTOM_KINDS = {"ScaledObject", "PodMonitor"}

# Room between drain_timeout and SIGKILL: cancel what is left, stop worker processes,
# return the jobs (systemd's and supervisor's files keep 15 s).
GRACE_MARGIN = 10

# The trigger metadata each KEDA scaler reads: the `keda:"name=..."` tags of its metadata
# struct in kedacore/keda pkg/scalers/beanstalkd_scaler.go and prometheus_scaler.go.
KEDA_KEYS = {
    "beanstalkd": (
        {"server", "tube", "value"},
        {"activationValue", "includeDelayed", "timeout"},
    ),
    "prometheus": (
        {"serverAddress", "query", "threshold"},
        {"activationThreshold", "ignoreNullValues", "unsafeSsl", "timeout", "namespace"}
        | {"customHeaders", "queryParameters", "awsRegion", "identityOwner", "authModes"},
    ),
}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def all_documents() -> list[tuple[Path, dict[str, Any]]]:
    paths = sorted(KUBERNETES.rglob("*.yaml")) + sorted(KUBERNETES.rglob("*.yml"))
    return [(path, doc) for path in paths for doc in documents(path)]


def deployments() -> list[dict[str, Any]]:
    return [doc for doc in documents(DEPLOYMENTS) if doc["kind"] == "Deployment"]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    [found] = deployment["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = found
    return result


def volume_of(deployment: dict[str, Any], mount_path: str) -> dict[str, Any]:
    """The volume mounted at exactly mount_path in the worker's container."""
    [mount] = [m for m in container(deployment)["volumeMounts"] if m["mountPath"] == mount_path]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    [volume] = [v for v in volumes if v["name"] == mount["name"]]
    result: dict[str, Any] = volume
    return result


def config_path(deployment: dict[str, Any]) -> Path:
    command = container(deployment)["command"]
    return Path(command[command.index("-c") + 1])


def worker_toml(deployment: dict[str, Any]) -> str:
    """The worker.toml the Deployment mounts at the path its command reads."""
    path = config_path(deployment)
    volume = volume_of(deployment, str(path.parent))
    [configmap] = [
        doc
        for doc in documents(CONFIGMAPS)
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == volume["configMap"]["name"]
    ]
    text: str = configmap["data"][path.name]
    return text


def pod_env(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(deployment).get("env", []) if "value" in e}


def effective_config(deployment: dict[str, Any], tmp_path: Path) -> tuple[Config, Path]:
    """The config as the pod loads it: the ConfigMap's file (its token file, from the
    mounted Secret, replaced by a local one), then the container's TUBEWORKER_* variables."""
    text = worker_toml(deployment)
    [token_file] = re.findall(r'^token_file\s*=\s*"([^"]+)"', text, flags=re.MULTILINE)
    token = Path(token_file)
    secret = volume_of(deployment, str(token.parent))["secret"]
    assert secret["secretName"]
    assert "items" not in secret  # every key of the Secret is a file: control-token
    local_token = tmp_path / token.name
    local_token.write_text("test-token\n")
    path = tmp_path / f"{deployment['metadata']['name']}.toml"
    path.write_text(text.replace(token_file, str(local_token)))
    return load_config(path, env=pod_env(deployment)), path


def quantity(value: str | int) -> float:
    """A Kubernetes quantity: "250m" CPUs, "512Mi" bytes, "4"."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match, value
    return float(match.group(1)) * units.get(match.group(2), 1)


# --- every document ------------------------------------------------------------------------


def test_every_document_parses_and_names_its_kind() -> None:
    docs = all_documents()
    kinds = sorted(doc["kind"] for _, doc in docs)
    assert kinds == sorted(
        ["ConfigMap", "ConfigMap", "Deployment", "Deployment", "PodMonitor"] + ["ScaledObject"] * 4
    )
    for path, doc in docs:
        assert doc["apiVersion"], path
        assert doc["metadata"]["name"], path
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "tubeworker", (path, doc["kind"])


@pytest.mark.parametrize("version", ["1.29", kubernetes_validate.latest_version()])
def test_kubernetes_kinds_validate_against_the_schemas(version: str) -> None:
    checked = []
    for path, doc in all_documents():
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name} {doc['kind']} {doc['metadata']['name']}: {exc}")
        checked.append(doc["kind"])
    assert sorted(checked) == ["ConfigMap", "ConfigMap", "Deployment", "Deployment"]


def test_the_schema_check_catches_a_misspelt_field() -> None:
    """Strict validation is on: a field Kubernetes would silently drop is an error."""
    deployment = deployments()[0]
    container(deployment)["readinessProbe"]["httpget"] = {"path": "/readyz"}
    with pytest.raises(kubernetes_validate.ValidationError, match="httpget"):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), True)


# --- each Deployment and its worker.toml ---------------------------------------------------


@pytest.fixture(params=[d["metadata"]["name"] for d in deployments()])
def deployment(request: pytest.FixtureRequest) -> dict[str, Any]:
    [found] = [d for d in deployments() if d["metadata"]["name"] == request.param]
    return found


def test_tubeworker_check_accepts_the_config_as_the_pod_sees_it(
    deployment: dict[str, Any], tmp_path: Path
) -> None:
    _config, path = effective_config(deployment, tmp_path)
    env = {**os.environ, **pod_env(deployment)}
    env.pop("TUBEWORKER_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-m", "tubeworker", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("ok")


def test_grace_period_is_above_drain_timeout(deployment: dict[str, Any], tmp_path: Path) -> None:
    config, _ = effective_config(deployment, tmp_path)
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= config.drain_timeout + GRACE_MARGIN
    # KEDA owns the replica count: a replicas field would reset it on every apply.
    assert "replicas" not in deployment["spec"]


def test_probes_and_scrape_hit_the_control_plane(
    deployment: dict[str, Any], tmp_path: Path
) -> None:
    config, _ = effective_config(deployment, tmp_path)
    listen = config.control.listen
    assert listen is not None, "no [control] listen: no probes, no metrics"
    # The kubelet probes the pod IP and Prometheus scrapes it: not loopback.
    assert listen.host in ("0.0.0.0", "::")
    worker = container(deployment)
    ports = {port["name"]: port["containerPort"] for port in worker["ports"]}
    assert listen.port in ports.values()
    for probe, path in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ]:
        get = worker[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports.get(get["port"], get["port"]) == listen.port, probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == listen.port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_labels_select_the_pods(deployment: dict[str, Any]) -> None:
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    name = deployment["metadata"]["name"]
    others = [d for d in deployments() if d["metadata"]["name"] != name]
    assert others
    for other in others:  # no Deployment selects another's pods
        assert not selector.items() <= other["spec"]["template"]["metadata"]["labels"].items()


def test_resources_fit_the_profile(deployment: dict[str, Any], tmp_path: Path) -> None:
    config, _ = effective_config(deployment, tmp_path)
    resources = container(deployment)["resources"]
    memory = quantity(resources["limits"]["memory"])
    assert {"cpu", "memory"} <= resources["requests"].keys()
    # The worker recycles (clean drain) before the OOM killer acts (SIGKILL, no drain).
    assert 0 < config.recycle.max_memory_mb * 2**20 < memory
    compute = [pool for pool in config.pools if pool.profile == "compute"]
    if compute:
        # One worker process per core, and a core left for the event loop.
        cpus = quantity(resources["limits"]["cpu"])
        assert sum(pool.concurrency for pool in compute) <= cpus - 1
        assert resources["requests"] == resources["limits"]


def test_one_deployment_per_profile(tmp_path: Path) -> None:
    profiles = set()
    for deployment in deployments():
        config, _ = effective_config(deployment, tmp_path)
        assert len({pool.profile for pool in config.pools}) == 1
        profiles.add(config.pools[0].profile)
    assert profiles == {"io", "compute"}


def test_podmonitor_scrapes_every_worker_as_job_tubeworker() -> None:
    [monitor] = documents(PODMONITOR)
    selector = monitor["spec"]["selector"]["matchLabels"]
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    for deployment in deployments():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
        # deploy/prometheus/alerts.yml selects up{job="tubeworker"}.
        assert labels[monitor["spec"]["jobLabel"]] == "tubeworker"
        assert endpoint["port"] in {port["name"] for port in container(deployment)["ports"]}
    assert endpoint["path"] == "/metrics"


# --- KEDA ----------------------------------------------------------------------------------


def tube_examples(patterns: tuple[str, ...]) -> list[str]:
    """A concrete tube name for each name or glob pattern of a pool."""
    return [pattern.replace("*", "x").replace("?", "x") for pattern in patterns]


@pytest.mark.parametrize("path", SCALED_OBJECTS, ids=[p.name for p in SCALED_OBJECTS])
def test_each_deployment_has_one_scaled_object_per_file(path: Path) -> None:
    targets = sorted(doc["spec"]["scaleTargetRef"]["name"] for doc in documents(path))
    assert targets == sorted(d["metadata"]["name"] for d in deployments())
    for doc in documents(path):
        assert doc["kind"] == "ScaledObject"
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        spec = doc["spec"]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["triggers"]


def scaled_deployments() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    by_name = {d["metadata"]["name"]: d for d in deployments()}
    return [
        (path.name, doc, by_name[doc["spec"]["scaleTargetRef"]["name"]])
        for path in SCALED_OBJECTS
        for doc in documents(path)
    ]


def test_keda_triggers_use_only_the_keys_the_scalers_read(tmp_path: Path) -> None:
    seen = set()
    for name, scaled, deployment in scaled_deployments():
        config, _ = effective_config(deployment, tmp_path)
        for trigger in scaled["spec"]["triggers"]:
            seen.add(trigger["type"])
            required, optional = KEDA_KEYS[trigger["type"]]
            metadata = trigger["metadata"]
            assert required <= metadata.keys(), name
            assert metadata.keys() <= required | optional, name
            assert all(isinstance(value, str) for value in metadata.values()), name
            assert trigger.get("metricType", "AverageValue") in ("AverageValue", "Value")
            if trigger["type"] == "beanstalkd":
                assert metadata["server"] in {str(s) for s in config.servers}, name
                tube = metadata["tube"]
                assert not set(tube) & set("*?["), f"{name}: stats-tube takes one exact name"
                patterns = [t for pool in config.pools for t in pool.tubes]
                assert any(fnmatch.fnmatchcase(tube, p) for p in patterns), (name, tube)
    assert seen == {"beanstalkd", "prometheus"}


def test_keda_prometheus_queries_scale_on_the_pools_tubes_and_leave_paused_ones_out(
    tmp_path: Path,
) -> None:
    exported = module_names()
    checked = 0
    for name, scaled, deployment in scaled_deployments():
        config, _ = effective_config(deployment, tmp_path)
        for trigger in scaled["spec"]["triggers"]:
            if trigger["type"] != "prometheus":
                continue
            query = trigger["metadata"]["query"]
            names = promql_names(query)
            assert names <= exported, f"{name}: not exported: {names - exported}"
            assert {
                "tubeworker_tube_effective_backlog_seconds",
                "tubeworker_tube_pause_seconds",
            } <= names
            # Every selector's tube matcher covers exactly the pool's tubes.
            tubes = tube_examples(tuple(t for pool in config.pools for t in pool.tubes))
            for op, value in re.findall(r'tube\s*(=~|=)\s*"([^"]*)"', query):
                for tube in tubes:
                    matched = re.fullmatch(value, tube) if op == "=~" else value == tube
                    assert matched, f"{name}: {tube!r} is not matched by tube{op}{value!r}"
                assert not (op == "=~" and re.fullmatch(value, "some-other-tube")), name
            # Paused tubes leave the backlog only if the daemon pauses its APIs' tubes.
            for api in config.apis:
                assert api.pause_tubes or not api.tubes, f"{name}: [api.{api.name}]"
            checked += 1
    assert checked == len(deployments())
