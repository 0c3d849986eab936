"""Every Helm chart rendered and linted offline (Helm, bundled by helm-python-sdk), its manifests validated.

The charts are checked against the code they configure: the coordinator's settings file parses as
:class:`CoordinatorSettings`, the site Job's environment as the ``site-join`` step's params model, and the
Kaapana extension's install-time settings reach the names the operator reads.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from cardiofm.cli.step import with_defaults
from cardiofm.contracts.coordinator import CoordinatorSettings, SiteJoinParams

REPO = Path(__file__).resolve().parents[2]
COORDINATOR = REPO / "charts" / "cardiofm-coordinator"
SITE = REPO / "charts" / "cardiofm-site"
EXTENSION = REPO / "extensions" / "cardiofm-workflow"
KUBE_VERSION = "1.30.0"
SITE_KEY = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABh site-north"
SITE_VALUES = {"join": {"superlink": "coordinator.example.org:9443", "pinnedFabSha256": ["ab" * 32]}}


def render(chart: Path, values: dict[str, Any], namespace: str = "cardiofm") -> list[dict[str, Any]]:
    """Render like ``helm template`` and return the manifests (NOTES and empty documents dropped)."""
    out = helm_python.Chart.load(str(chart)).render(values, name="test", namespace=namespace, is_install=True)
    docs = []
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def validate(docs: list[dict[str, Any]]) -> None:
    """Strict schema validation of every built-in kind (custom resources have no schema offline)."""
    for doc in docs:
        group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
        if group.endswith(".io") and group != "networking.k8s.io":
            continue  # a custom resource, e.g. cert-manager.io/v1 Certificate
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def lint(chart: Path, values: dict[str, Any] | None = None) -> None:
    result = helm_python.lint(str(chart), values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert result["errors"] == [], result
    assert [m for m in result["messages"] if m["severity"] > 1] == [], result


def kinds(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def container_env(doc: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in doc["spec"]["template"]["spec"]["containers"][0]["env"]}


# -- coordinator ---------------------------------------------------------------------------------------------
def test_coordinator_renders_lints_and_validates_with_default_values() -> None:
    lint(COORDINATOR)
    docs = render(COORDINATOR, {})
    validate(docs)
    found = kinds(docs)
    assert set(found) == {
        "ConfigMap/test-cardiofm-coordinator",
        "Deployment/test-cardiofm-coordinator",
        "Service/test-cardiofm-coordinator",
        "NetworkPolicy/test-cardiofm-coordinator",
        "PersistentVolumeClaim/test-cardiofm-coordinator-state",
        "PersistentVolumeClaim/test-cardiofm-coordinator-models",
    }
    pod = found["Deployment/test-cardiofm-coordinator"]["spec"]["template"]["spec"]
    main = pod["containers"][0]
    # probes check the proxy's port, the one the sites use
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe]["tcpSocket"]["port"] == "fleet"
    assert main["ports"] == [{"name": "fleet", "containerPort": 9443, "protocol": "TCP"}]
    assert main["resources"]["requests"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert {v["name"]: v for v in pod["volumes"]}["tls"]["secret"]["secretName"] == "cardiofm-coordinator-tls"
    # the default allowlist admits no site: a safe default, stated in the install notes
    policy = found["NetworkPolicy/test-cardiofm-coordinator"]["spec"]["ingress"][0]
    assert policy["from"] == [{"ipBlock": {"cidr": "127.0.0.1/32"}}]
    assert policy["ports"] == [{"port": 9443, "protocol": "TCP"}]


def test_coordinator_settings_are_what_serve_reads() -> None:
    values = {
        "coordinator": {
            "dnsNames": ["coordinator.example.org"],
            "allow": ["192.0.2.0/24", "198.51.100.7/32"],
            "sites": [{"name": "site-north", "publicKey": SITE_KEY}],
            "fleetPort": 8443,
        },
        "networkPolicy": {"extraFrom": ["10.0.0.0/8"]},
        "service": {"type": "LoadBalancer"},
    }
    docs = render(COORDINATOR, values)
    validate(docs)
    found = kinds(docs)
    text = found["ConfigMap/test-cardiofm-coordinator"]["data"]["coordinator.yaml"]
    settings = CoordinatorSettings.model_validate(yaml.safe_load(text))
    assert settings.allow == ["192.0.2.0/24", "198.51.100.7/32"]
    assert settings.fleet_port == 8443
    assert [(s.name, s.public_key) for s in settings.sites] == [("site-north", SITE_KEY)]
    cidrs = [
        b["ipBlock"]["cidr"] for b in found["NetworkPolicy/test-cardiofm-coordinator"]["spec"]["ingress"][0]["from"]
    ]
    assert cidrs == ["192.0.2.0/24", "198.51.100.7/32", "10.0.0.0/8"]
    service = found["Service/test-cardiofm-coordinator"]["spec"]
    assert service["externalTrafficPolicy"] == "Local"  # the proxy must see the sites' own addresses


def test_coordinator_with_cert_manager_issues_its_certificate() -> None:
    values = {
        "coordinator": {"dnsNames": ["coordinator.example.org"], "allow": ["192.0.2.0/24"]},
        "tls": {"certManager": {"enabled": True}},
    }
    found = kinds(render(COORDINATOR, values))
    cert = found["Certificate/test-cardiofm-coordinator"]["spec"]
    assert cert["secretName"] == "test-cardiofm-coordinator-tls"
    assert "coordinator.example.org" in cert["dnsNames"]
    pod = found["Deployment/test-cardiofm-coordinator"]["spec"]["template"]["spec"]
    assert {v["name"]: v for v in pod["volumes"]}["tls"]["secret"]["secretName"] == cert["secretName"]
    with pytest.raises(helm_python.HelmRenderError, match=r"dnsNames or coordinator.ipAddresses"):
        render(COORDINATOR, {"tls": {"certManager": {"enabled": True}}})


def test_coordinator_without_tls_source_is_a_clear_error() -> None:
    with pytest.raises(helm_python.HelmRenderError, match=r"tls.existingSecret"):
        render(COORDINATOR, {"tls": {"existingSecret": ""}})


# -- site ----------------------------------------------------------------------------------------------------
def test_site_chart_without_its_required_values_names_them() -> None:
    with pytest.raises(helm_python.HelmRenderError, match=r"join.superlink"):
        render(SITE, {})
    with pytest.raises(helm_python.HelmRenderError, match=r"join.pinnedFabSha256"):
        render(SITE, {"join": {"superlink": "coordinator.example.org:9443"}})


def test_site_job_env_is_the_join_steps_params() -> None:
    lint(SITE, SITE_VALUES)
    docs = render(SITE, SITE_VALUES)
    validate(docs)
    job = kinds(docs)["Job/test-cardiofm-site"]
    env = container_env(job)
    assert env["CARDIOFM_STEP"] == "site-join"
    params = SiteJoinParams.from_env(with_defaults("site-join", env))
    assert params.superlink == "coordinator.example.org:9443"
    assert params.pinned_fab_sha256 == ["ab" * 32]
    assert (str(params.dataset), str(params.work_dir)) == ("/data", "/work")
    assert params.insecure_dev is False
    assert params.ca_cert is not None
    assert params.private_key is not None
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] > params.timeout_s  # the SuperNode's own timeout (exit 8) comes first
    pod = spec["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["dataset"]["readOnly"] is True
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


# -- Kaapana extension ---------------------------------------------------------------------------------------
def test_extension_renders_its_settings_secret_and_lints(tmp_path: Path) -> None:
    """Linted with an empty chart in place of Kaapana's dag-installer-chart (Kaapana's build supplies the real one)."""
    chart = tmp_path / "cardiofm-workflow"
    shutil.copytree(EXTENSION, chart, ignore=shutil.ignore_patterns("docker", "*.py"))
    dep = chart / "charts" / "dag-installer-chart"
    dep.mkdir(parents=True)
    (dep / "Chart.yaml").write_text("apiVersion: v1\nname: dag-installer-chart\nversion: 0.0.0\n")
    lint(chart)
    values = {"global": {"coordinator_address": "coordinator.example.org:9443", "pinned_bundle_sha256": "ab" * 32}}
    docs = render(chart, values, namespace="admin")
    validate(docs)
    secret = kinds(docs)["Secret/cardiofm-site-settings"]
    assert secret["metadata"]["namespace"] == "project-admin"
    # the operator maps key <field> to CARDIOFM_DEFAULT_<FIELD>; cardiofm step fills empty fields from it
    env = {f"CARDIOFM_DEFAULT_{k.upper()}": v for k, v in secret["stringData"].items()}
    env |= {"DATASET": "/data", "WORK_DIR": "/work", "SUPERLINK": "", "PINNED_FAB_SHA256": ""}
    params = SiteJoinParams.from_env(with_defaults("site-join", env))
    assert params.superlink == "coordinator.example.org:9443"
    assert params.pinned_fab_sha256 == ["ab" * 32]
