"""Deployment files: compose against the compose-spec JSON schema, Kubernetes manifests
against the Kubernetes 1.37 schemas (kubernetes-validate, strict: unknown fields fail),
and cross-checks: probes, drain time, selectors, and every metric the dashboard,
Prometheus adapter and HPA name is one the server exports.
"""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from server.ops.prometheus import Metrics
from server.sidecar.endpoint import RtpMetrics

jsonschema = pytest.importorskip("jsonschema")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S = DEPLOY / "kubernetes"
K8S_VERSION = "1.37.0"


def compose_schema() -> dict[str, Any]:
    """The compose-spec schema vendored by check-jsonschema (a [dev] dependency)."""
    pytest.importorskip("check_jsonschema")
    path = resources.files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json"
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


def compose_errors(doc: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [e.message for e in validator.iter_errors(doc)]


def load_compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return doc


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    out = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                out.append((name, doc))
    return out


def by_kind(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in k8s_docs() if doc["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def exported_metric_names() -> set[str]:
    """Every sample name the service's /metrics can carry (a worker's registry)."""
    metrics = Metrics()
    RtpMetrics(metrics)
    metrics.stream_started("s")  # per-stream series exist only while a stream does
    text = generate_latest(metrics.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def names_in(expr: str) -> set[str]:
    return set(re.findall(r"\bpercepnet_[a-z_]+", expr))


# -- compose ---------------------------------------------------------------------------
def test_compose_matches_the_compose_spec() -> None:
    assert compose_errors(load_compose()) == []


def test_compose_validator_catches_mistakes() -> None:
    doc = load_compose()
    bad = copy.deepcopy(doc)
    bad["services"]["percepnet"]["network_mode"] = ["host"]
    assert compose_errors(bad)
    bad = copy.deepcopy(doc)
    bad["services"]["percepnet"]["healthcheck"]["intervall"] = "10s"
    assert compose_errors(bad)


def test_compose_service_prometheus_grafana_and_turn_profile() -> None:
    services = load_compose()["services"]
    app = services["percepnet"]
    assert app["network_mode"] == "host"
    assert "/healthz" in " ".join(app["healthcheck"]["test"])
    drain = float(app["environment"]["PERCEPNET_DRAIN_TIMEOUT_S"])
    assert float(app["stop_grace_period"].rstrip("s")) > drain
    assert services["coturn"]["profiles"] == ["nat"]
    assert "profiles" not in services["prometheus"] and "profiles" not in services["grafana"]
    for svc in services.values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"127.0.0.1:{app['environment']['PERCEPNET_PORT']}"]
    assert prometheus["scrape_configs"][0]["metrics_path"] == "/metrics"
    # /metrics needs the operator token when one is set: Prometheus sends it from a file
    # that compose mounts.
    auth = prometheus["scrape_configs"][0]["authorization"]
    assert auth["type"] == "Bearer"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    assert (DEPLOY / mounts[auth["credentials_file"]]).is_file()


def test_grafana_dashboard_uses_exported_metrics_and_covers_the_essentials() -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/percepnet.json").read_text())
    exported = exported_metric_names()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set().union(*(names_in(e) for e in exprs))
    assert used and used <= exported, sorted(used - exported)
    joined = "\n".join(exprs)
    assert "percepnet_active_streams" in joined
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(percepnet_frame_processing" in joined
    assert 'outcome="bypassed"' in joined
    assert "rate(percepnet_stream_cpu_seconds" in joined
    assert "percepnet_event_loop_lag_seconds_bucket" in joined
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/percepnet.yaml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


# -- Kubernetes ------------------------------------------------------------------------
def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize("name_doc", k8s_docs(), ids=lambda nd: f"{nd[0]}:{nd[1]['kind']}")
def test_manifest_matches_kubernetes_schema(name_doc: tuple[str, dict[str, Any]]) -> None:
    _, doc = name_doc
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_validator_catches_mistakes() -> None:
    deployment = by_kind("Deployment")
    bad = copy.deepcopy(deployment)
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_deployment_probes_drain_and_security() -> None:
    deployment = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"]: e.get("value") for e in container["env"]}
    drain = float(env["PERCEPNET_DRAIN_TIMEOUT_S"])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    router_wait = 10  # server/serving/router.py waits drain + 10 s for its workers
    assert pod["terminationGracePeriodSeconds"] >= drain + pre_stop + router_wait
    assert drain >= 600, "calls need minutes, not the 30 s default"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert int(env["PERCEPNET_WORKERS"]) <= float(container["resources"]["requests"]["cpu"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(env["PERCEPNET_PORT"])


def test_selectors_and_hpa_metric_line_up() -> None:
    labels = by_kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service",):
        assert by_kind(kind)["spec"]["selector"].items() <= labels.items()
    assert (
        by_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    )
    hpa = by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == by_kind("Deployment")["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    capacity = next(
        int(e["value"])
        for e in by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
        if e["name"] == "PERCEPNET_MAX_STREAMS"
    )
    assert 0 < float(metric["pods"]["target"]["averageValue"]) < capacity
    adapter = yaml.safe_load(by_kind("ConfigMap")["data"]["config.yaml"])
    (rule,) = adapter["rules"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert names_in(rule["seriesQuery"]) <= exported_metric_names()
    assert {"<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"} <= set(
        re.findall(r"<<\.[A-Za-z]+>>", rule["metricsQuery"])
    )
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
