"""deploy/tls/kubernetes/beanstalkd-stunnel.yaml without a cluster.

- The manifest validates against Kubernetes' JSON schemas (kubernetes-validate, strict).
- Its parts agree, as the pod would see them: stunnel's config (from the ConfigMap) is the
  file the stunnel container's command names; it accepts on the container port the Service
  exposes (the Service's only port); it connects to the port beanstalkd's command listens
  on, and beanstalkd listens on loopback only and exposes no port; the certificate, key and
  CA it names are files of the mounted Secret; it requires client certificates.
- The ConfigMap's stunnel config, run by a real stunnel (only its listen address, backend
  port and file paths replaced by the test's), in front of a real beanstalkd: a client
  with a certificate from the CA works through it, one without is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import greenstalk
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.e2e.test_tls import admin
from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.process import REPO
from tests.support.tls import Certificates, Stunnel, make_certificates
from tubeworker.beanstalk.tls import install_tls
from tubeworker.producer import Producer

MANIFEST = REPO / "deploy" / "tls" / "kubernetes" / "beanstalkd-stunnel.yaml"
CONFIG_KEY = "beanstalkd.conf"


def manifest() -> dict[str, dict[str, Any]]:
    """The manifest's documents by kind (one of each)."""
    docs = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc is not None]
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs), "one document of each kind"
    return by_kind


def stunnel_config() -> str:
    text: str = manifest()["ConfigMap"]["data"][CONFIG_KEY]
    return text


def options(config: str) -> dict[str, str]:
    """``key = value`` lines of a stunnel config (comments and sections left out)."""
    found = {}
    for line in config.splitlines():
        line = line.strip()
        if line and not line.startswith((";", "#", "[")):
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


def rewritten(config: str, values: Mapping[str, str]) -> str:
    """The config with the values of these keys replaced (each must be there once)."""
    for key, value in values.items():
        config, count = re.subn(rf"(?m)^{key}\s*=.*$", f"{key} = {value}", config)
        assert count == 1, key
    return config


def pod() -> dict[str, Any]:
    spec: dict[str, Any] = manifest()["Deployment"]["spec"]["template"]["spec"]
    return spec


def container(name: str) -> dict[str, Any]:
    [found] = [c for c in pod()["containers"] if c["name"] == name]
    result: dict[str, Any] = found
    return result


def mounted_files(name: str) -> dict[str, str]:
    """Path in the container → (kind, source name, key) for the files of its volumes."""
    volumes = {v["name"]: v for v in pod()["volumes"]}
    files = {}
    for mount in container(name).get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "secret" in volume:
            items = volume["secret"]["items"]
            source = f"Secret {volume['secret']['secretName']}"
        elif "configMap" in volume:
            config_map = manifest()["ConfigMap"]
            assert volume["configMap"]["name"] == config_map["metadata"]["name"]
            items = [{"key": k, "path": k} for k in config_map["data"]]
            source = f"ConfigMap {config_map['metadata']['name']}"
        else:
            continue
        for item in items:
            files[f"{mount['mountPath']}/{item['path']}"] = f"{source} {item['key']}"
    return files


# --- the manifest ------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.29", kubernetes_validate.latest_version()])
def test_the_manifest_validates_against_the_schemas(version: str) -> None:
    for kind, doc in manifest().items():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind} {doc['metadata']['name']}: {exc}")
    assert sorted(manifest()) == ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Service"]


def test_stunnel_runs_the_config_of_the_configmap() -> None:
    command = container("stunnel")["command"]
    assert command[0] in ("stunnel4", "stunnel")
    assert mounted_files("stunnel")[command[-1]] == f"ConfigMap beanstalkd-stunnel {CONFIG_KEY}"


def test_the_service_exposes_only_the_tls_port_stunnel_accepts_on() -> None:
    accept = options(stunnel_config())["accept"]
    host, _, port = accept.rpartition(":")
    assert host in ("0.0.0.0", "::", "")  # reachable from the Service, not just loopback
    [container_port] = container("stunnel")["ports"]
    assert container_port["containerPort"] == int(port) == 11301
    service = manifest()["Service"]
    [exposed] = service["spec"]["ports"]
    assert exposed["port"] == 11301
    assert exposed["targetPort"] in (container_port["name"], int(port))
    selector = service["spec"]["selector"]
    labels = manifest()["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_beanstalkd_listens_on_loopback_on_the_port_stunnel_connects_to() -> None:
    host, _, port = options(stunnel_config())["connect"].rpartition(":")
    assert host == "127.0.0.1"
    beanstalkd = container("beanstalkd")
    command = beanstalkd["command"]
    assert command[command.index("-l") + 1] == "127.0.0.1"
    assert command[command.index("-p") + 1] == port
    assert "ports" not in beanstalkd  # nothing outside the pod may reach it in clear
    binlog = command[command.index("-b") + 1]
    assert binlog in [m["mountPath"] for m in beanstalkd["volumeMounts"]]


def test_the_certificates_are_the_secrets_files_and_client_certificates_are_required() -> None:
    found = options(stunnel_config())
    files = mounted_files("stunnel")
    assert files[found["cert"]] == "Secret beanstalkd-tls tls.crt"
    assert files[found["key"]] == "Secret beanstalkd-tls tls.key"
    assert files[found["CAfile"]] == "Secret beanstalkd-tls ca.crt"
    assert (found["requireCert"], found["verifyChain"]) == ("yes", "yes")  # mutual TLS
    assert found["foreground"] == "yes"  # a container's main process; logs to stderr


# --- the ConfigMap's config, run ------------------------------------------------------------


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "tls")


@pytest.fixture
def tunnel(certs: Certificates, beanstalkd: BeanstalkdProcess) -> Iterator[Stunnel]:
    port = free_port()
    config = rewritten(
        stunnel_config(),
        {
            "accept": f"127.0.0.1:{port}",
            "connect": f"127.0.0.1:{beanstalkd.port}",
            "cert": str(certs.server_cert),
            "key": str(certs.server_key),
            "CAfile": str(certs.ca),
        },
    )
    tunnel = Stunnel(certs, beanstalkd.port, config=config)
    tunnel.port = port
    with tunnel:
        yield tunnel


@pytest.mark.slow
def test_the_configmaps_stunnel_config_terminates_mutual_tls(
    tunnel: Stunnel,
    certs: Certificates,
    beanstalkd: BeanstalkdProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the ConfigMap's config in a real stunnel in front of a real beanstalkd
    # When a client with a certificate from the CA puts a job through it
    monkeypatch.setenv("TUBEWORKER_TLS_CA_FILE", str(certs.ca))
    monkeypatch.setenv("TUBEWORKER_TLS_CERT_FILE", str(certs.client_cert))
    monkeypatch.setenv("TUBEWORKER_TLS_KEY_FILE", str(certs.client_key))
    install_tls(None)  # read again from the environment
    try:
        with Producer([tunnel.address]) as producer:
            job_id = int(producer.put("k8s-sidecar", b"through the sidecar"))
    finally:
        install_tls(None)
    # Then beanstalkd has it
    with greenstalk.Client((beanstalkd.host, beanstalkd.port), encoding=None) as plain:
        assert plain.peek(job_id).body == b"through the sidecar"
    # And a client without a certificate is refused, in one line
    env = {"TUBEWORKER_TLS_CA_FILE": str(certs.ca)}
    refused = admin(tunnel, env, "stats")
    assert refused.returncode != 0
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert tunnel.address in refused.stderr
