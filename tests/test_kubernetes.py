"""deploy/kubernetes validated offline: Kubernetes' own schemas (kubernetes-validate, strict), the
RayCluster against a schema of KubeRay's ray.io/v1 API, and the parts agreeing with each other and
with the app (probe paths, Secret keys, the head Service's name, slots and token auth)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from api.app import PUBLIC_PATHS, create_app
from chatdf.settings import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33.0"  # the oldest release kubernetes-validate ships that we target
RAYCLUSTER_SCHEMA = DEPLOY / "schemas" / "raycluster-v1.schema.json"


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents() if doc["kind"] == kind]


def validate_kubernetes(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def pod_templates(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    spec = cluster["spec"]
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


def as_pod_template(template: dict[str, Any]) -> dict[str, Any]:
    """A PodTemplateSpec wrapped as core/v1 PodTemplate, which Kubernetes' schema validates."""
    wrapper: dict[str, Any] = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
    return {**wrapper, "template": template}


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = template["spec"]["containers"]
    return found


@pytest.mark.parametrize(
    "doc", [d for d in documents() if d["kind"] != "RayCluster"], ids=lambda d: d["kind"]
)
def test_core_manifests_pass_kubernetes_schemas(doc: dict[str, Any]) -> None:
    validate_kubernetes(doc)


def test_a_wrong_field_fails_kubernetes_schemas() -> None:
    (deployment,) = by_kind("Deployment")
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_kubernetes(deployment)
    (deployment,) = by_kind("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_kubernetes(deployment)  # strict: a misspelt field is refused


def test_the_raycluster_passes_the_kuberay_schema_and_its_pods_kubernetes() -> None:
    (cluster,) = by_kind("RayCluster")
    jsonschema.validate(cluster, json.loads(RAYCLUSTER_SCHEMA.read_text()))
    for template in pod_templates(cluster):
        validate_kubernetes(as_pod_template(template))


def test_a_misspelt_raycluster_field_fails() -> None:
    schema = json.loads(RAYCLUSTER_SCHEMA.read_text())
    (cluster,) = by_kind("RayCluster")
    cluster["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        jsonschema.validate(cluster, schema)
    (cluster,) = by_kind("RayCluster")
    cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 4  # must be a string
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cluster, schema)


@pytest.mark.parametrize(
    ("group", "field"),
    [
        ("headGroupSpec", "rayStartParams"),
        ("workerGroupSpecs", "rayStartParams"),
        ("workerGroupSpecs", "minReplicas"),
        ("workerGroupSpecs", "maxReplicas"),
    ],
)
def test_a_raycluster_without_a_field_kuberays_crd_requires_fails(group: str, field: str) -> None:
    schema = json.loads(RAYCLUSTER_SCHEMA.read_text())
    (cluster,) = by_kind("RayCluster")
    spec = cluster["spec"]
    del (spec[group][0] if group == "workerGroupSpecs" else spec[group])[field]
    with pytest.raises(jsonschema.ValidationError, match=field):
        jsonschema.validate(cluster, schema)


def test_every_ray_node_has_slots_token_auth_and_warm_workers() -> None:
    (cluster,) = by_kind("RayCluster")
    spec = cluster["spec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        # KubeRay's format for a JSON flag value: a quoted JSON string.
        resources = json.loads(json.loads(group["rayStartParams"]["resources"]))
        assert min(resources[k] for k in ("chatdf_query", "chatdf_load", "chatdf_session")) > 0
    for worker in spec["workerGroupSpecs"]:
        assert worker["minReplicas"] <= worker["replicas"] <= worker["maxReplicas"]
    (config_map,) = by_kind("ConfigMap")
    assert config_map["data"]["RAY_AUTH_MODE"] == "token"
    for template in pod_templates(cluster):
        for container in containers(template):
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "chatdf"
            assert int(env["RAY_num_workers_soft_limit"]["value"]) > 0
            assert {"configMapRef": {"name": "chatdf"}} in container["envFrom"]


def test_ray_pods_have_probes_that_need_neither_the_dashboard_nor_wget() -> None:
    (cluster,) = by_kind("RayCluster")
    head = cluster["spec"]["headGroupSpec"]
    (head_container,) = containers(head["template"])
    ports = {p["name"]: p["containerPort"] for p in head_container["ports"]}
    assert ports["gcs-server"] == 6379
    for probe in ("readinessProbe", "livenessProbe"):
        assert head_container[probe]["tcpSocket"]["port"] == "gcs-server"
    assert head["rayStartParams"]["include-dashboard"] == "false"
    for group in cluster["spec"]["workerGroupSpecs"]:
        (worker,) = containers(group["template"])
        ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
        assert ports["raylet"] == int(group["rayStartParams"]["node-manager-port"])
        for probe in ("readinessProbe", "livenessProbe"):
            assert worker[probe]["tcpSocket"]["port"] == "raylet"


def test_the_edges_join_the_cluster_with_the_database_from_the_secret() -> None:
    (cluster,) = by_kind("RayCluster")
    (deployment,) = by_kind("Deployment")
    (secret,) = by_kind("Secret")
    (edge,) = containers(deployment["spec"]["template"])
    env = {e["name"]: e for e in edge["env"]}
    # KubeRay names the head's Service <cluster>-head-svc.
    assert env["RAY_HEAD_ADDRESS"]["value"] == f"{cluster['metadata']['name']}-head-svc:6379"
    assert env["RAY_ADDRESS"]["value"] == "auto"
    assert 'ray start --address="$RAY_HEAD_ADDRESS" --num-cpus=0' in edge["args"][0]
    assert "exec chatdf serve --host 0.0.0.0 --port 8000" in edge["args"][0]
    for name in ("DATABASE_URL", "RAY_AUTH_TOKEN", "GEMINI_API_KEY"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] == name
        assert name in secret["stringData"]


def test_the_edge_probes_use_the_apps_probe_routes() -> None:
    (deployment,) = by_kind("Deployment")
    (edge,) = containers(deployment["spec"]["template"])
    assert edge["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert edge["startupProbe"]["httpGet"]["path"] == "/health/live"
    assert edge["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    routes = set(create_app(Settings()).openapi()["paths"])
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        path = edge[probe]["httpGet"]["path"]
        assert path in routes and path in PUBLIC_PATHS  # answered without a session
        assert edge[probe]["httpGet"]["port"] == edge["ports"][0]["name"]


def test_the_service_selects_the_edges() -> None:
    (deployment,) = by_kind("Deployment")
    (service,) = by_kind("Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (edge,) = containers(deployment["spec"]["template"])
    assert service["spec"]["ports"][0]["targetPort"] == edge["ports"][0]["name"]


def test_kustomization_applies_everything_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present - {"secret.example.yaml"}
