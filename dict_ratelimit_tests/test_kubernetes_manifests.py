"""The Kubernetes manifests in ``deploy/kubernetes/``, checked offline: core objects against
Kubernetes' own schemas (kubernetes-validate, strict), the Prometheus Operator objects against
the fields of their CRDs that we use, the generated monitoring objects identical to their one
source (the rules pass promtool as they appear in the PrometheusRule), no secret inline, and
every pod unprivileged."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import dagster as dg
import jsonschema
import kubernetes_validate
import pytest
import yaml

from dict_ratelimit.defs.tags import SERIAL_TAG
from dict_ratelimit.settings import (
    PACKAGE_DIR,
    PREFIX,
    SECRET_FIELDS,
    Settings,
    load_settings,
    variable_name,
)
from dict_ratelimit_tests.prometheus_tools import tool

DEPLOY = PACKAGE_DIR.parent / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
#: The oldest and newest Kubernetes versions we claim to support.
VERSIONS = ("1.29.0", "1.33.0")

_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "labels": _STRING_MAP},
}


def _custom_resource(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A monitoring.coreos.com/v1 object of ``kind`` whose spec matches ``spec``."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


#: The fields of the Prometheus Operator CRDs (monitoring.coreos.com/v1) that we set, with
#: their types and formats as the CRDs declare them; anything else is refused.
CUSTOM_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _custom_resource(
        "ServiceMonitor",
        {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "properties": {"matchLabels": _STRING_MAP},
                    "additionalProperties": False,
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                        },
                    },
                },
            },
        },
    ),
    "PrometheusRule": _custom_resource(
        "PrometheusRule",
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": "string"},
                                        "for": _DURATION,
                                        "keep_firing_for": _DURATION,
                                        "labels": _STRING_MAP,
                                        "annotations": _STRING_MAP,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    ),
}


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    files = sorted(KUBERNETES.glob("*.yaml")) + sorted(KUBERNETES.glob("generated/*.yaml"))
    assert files
    return [(path, doc) for path in files for doc in yaml.safe_load_all(path.read_text()) if doc]


def _render_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("render", KUBERNETES / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    pods = []
    for _, doc in _documents():
        if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            pods.append(
                (f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"])
            )
    return pods


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_valid_for_kubernetes(version: str) -> None:
    kinds = set()
    for path, doc in _documents():
        kinds.add(doc["kind"])
        if doc["kind"] in CUSTOM_SCHEMAS:
            jsonschema.validate(doc, CUSTOM_SCHEMAS[doc["kind"]])
        else:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {error}")
    assert {
        "Deployment",
        "Service",
        "ServiceMonitor",
        "Job",
        "PrometheusRule",
        "ConfigMap",
    } <= kinds


def test_a_misspelt_field_is_caught() -> None:
    """The validation is strict: an unknown field fails (so the test above means something)."""
    (_, deployment) = next((p, d) for p, d in _documents() if d["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    (_, monitor) = next((p, d) for p, d in _documents() if d["kind"] == "ServiceMonitor")
    monitor = json.loads(json.dumps(monitor))
    monitor["spec"]["endpoints"][0]["interval"] = "one minute"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, CUSTOM_SCHEMAS["ServiceMonitor"])


def test_the_generated_objects_are_up_to_date_and_identical_to_their_source() -> None:
    render = _render_module()
    assert (KUBERNETES / "generated" / "monitoring.yaml").read_text() == render.render(), (
        "deploy/kubernetes/generated/monitoring.yaml is stale: run deploy/kubernetes/render.py"
    )
    by_kind = {doc["kind"]: doc for _, doc in _documents()}
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    assert by_kind["PrometheusRule"]["spec"]["groups"] == rules["groups"]
    dashboard = (DEPLOY / "grafana" / "dict-ratelimit.json").read_text()
    configmap = by_kind["ConfigMap"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"]["dict-ratelimit.json"] == dashboard
    json.loads(configmap["data"]["dict-ratelimit.json"])


def test_the_rules_in_the_prometheus_rule_pass_promtool(tmp_path: Path) -> None:
    rule = next(doc for _, doc in _documents() if doc["kind"] == "PrometheusRule")
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    result = subprocess.run(
        [str(tool("promtool")), "check", "rules", str(extracted)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_no_secret_is_inline_and_the_image_is_the_packages_version() -> None:
    version = importlib.metadata.version("dict-ratelimit")
    assert not [doc for _, doc in _documents() if doc["kind"] == "Secret"]
    for name, pod in _pod_specs():
        for container in pod["containers"]:
            if container["image"].startswith("dict-ratelimit:"):
                assert container["image"] == f"dict-ratelimit:{version}", name
            for variable in container.get("env", []):
                if variable["name"] in ("DATABASE_URL",) or variable["name"].endswith(
                    ("_TOKEN", "_KEY", "_PASSWORD")
                ):
                    assert "secretKeyRef" in variable.get("valueFrom", {}), (name, variable)
                    assert "value" not in variable, (name, variable)


def test_every_pod_runs_unprivileged() -> None:
    pods = _pod_specs()
    assert pods
    for name, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            if container["image"].startswith("dict-ratelimit:"):
                assert pod["securityContext"]["runAsUser"] == 10001, name  # the image's user
                assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert "memory" in container["resources"]["limits"], name


def _dagster_values() -> dict[str, Any]:
    return yaml.safe_load((KUBERNETES / "helm" / "dagster-values.yaml").read_text())


def test_the_dagster_chart_values_agree_with_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the chart cannot check for us: the code location, the serial tag, the image, and
    that every setting given is one of ours, valid, and secret only through a Secret."""
    values = _dagster_values()
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    flag, module = deployment["dagsterApiGrpcArgs"]
    assert flag == "-m"
    assert isinstance(importlib.import_module(module).defs, dg.Definitions)
    assert deployment["image"]["tag"] == importlib.metadata.version("dict-ratelimit")
    assert deployment["podSecurityContext"]["runAsUser"] == 10001

    limits = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    ((key, _),) = SERIAL_TAG.items()
    per_value = {"applyLimitPerUniqueValue": True}  # one run per shard, and per "monitor"
    assert {"key": key, "value": per_value, "limit": 1} in limits["tagConcurrencyLimits"]

    known = {variable_name(name) for name in Settings.model_fields}
    secret = {variable_name(name) for name in SECRET_FIELDS}
    (mount,) = deployment["volumeMounts"]
    env = deployment["env"]
    assert set(env) <= known, set(env) - known
    for name, text in env.items():
        if name in secret:  # only as a path to the mounted certificate Secret
            assert text.startswith(mount["mountPath"] + "/"), name
    assert {s["name"] for s in deployment["envSecrets"]} == {"dict-ratelimit-env"}
    assert deployment["volumes"][0]["secret"]["secretName"] == "dict-ratelimit-mtls"

    for name in list(os.environ):
        if name.startswith(PREFIX) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    for name, text in env.items():
        monkeypatch.setenv(name, text)
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:secret@postgres.example.internal/dict")
    monkeypatch.setenv(f"{PREFIX}BRIDGE_TOKEN", "token-from-the-secret")
    monkeypatch.setenv(f"{PREFIX}FAILURE_EMAIL_SMTP_PASSWORD", "from-the-secret")
    settings = load_settings()  # raises SettingsError, naming the variable, if one is invalid
    assert settings.participants == ["12345678"]
    assert settings.bridge_tls and settings.watch
