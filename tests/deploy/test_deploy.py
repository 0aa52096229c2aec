"""The production files, checked without a Docker engine: docker-compose.yml against the
Compose specification's JSON schema and against the code (real entry points, real
settings), the Dockerfile's sources, and the Grafana dashboard and alert rules against
the metrics the services export."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from vividly import metrics
from vividly.config import Settings
from vividly.platform.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / ".cache" / "compose_spec.json"
_DEFAULT = re.compile(r"\$\{([A-Z0-9_]+):-([^}]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return doc


def exported_metrics() -> set[str]:
    """Every series name the services can export (from the one metrics module)."""
    names: set[str] = set()
    for obj in vars(metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        for family in obj.describe():
            if family.type == "counter":
                names |= {f"{family.name}_total", f"{family.name}_created"}
            elif family.type == "histogram":
                names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count", "created")}
            else:
                names.add(family.name)
    return names


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bvividly_[a-z0-9_]+", expr))


def with_defaults(value: str) -> str:
    """${VAR:-default} → default, as Compose does when VAR is unset."""
    return _DEFAULT.sub(lambda m: m.group(2), value)


# ---------------------------------------------------------------------- compose
def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    if not SCHEMA.exists():
        pytest.fail(f"{SCHEMA} is missing: run `make setup`")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(compose, schema)


def test_every_command_names_a_real_entry_point(compose: dict[str, Any]) -> None:
    ours = {n: s for n, s in compose["services"].items() if s.get("image") == "vividly:latest"}
    assert {"ingest", "rag", "script", "video", "notify", "projector", "api"} <= set(ours)
    for name, svc in ours.items():
        assert svc.get("build") == ".", f"{name} is built from the one Dockerfile"
        cmd = svc["command"]
        if cmd[:2] == ["python", "-m"]:
            module = cmd[2]
            assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"
            source = Path(importlib.util.find_spec(module).origin or "").read_text()  # type: ignore[union-attr]
            assert "def main(" in source or "__main__" in source, name
        elif cmd[0] == "vividly":
            build_parser().parse_args(cmd[1:])  # exits on an unknown command or flag
        else:
            pytest.fail(f"{name}: unexpected command {cmd}")


def test_every_vividly_setting_is_a_real_setting_with_a_valid_value(
    compose: dict[str, Any],
) -> None:
    fields = Settings.model_fields
    seen = 0
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        for key, raw in env.items():
            if not key.startswith("VIVIDLY_"):
                continue
            field = key.removeprefix("VIVIDLY_").lower()
            assert field in fields or field == "database_url", f"{name}: {key} is not a setting"
            Settings(**{field: with_defaults(str(raw))})  # type: ignore[arg-type]
            seen += 1
    assert seen > 50


def test_kafka_is_three_brokers_with_replication_three_and_two_in_sync(
    compose: dict[str, Any],
) -> None:
    brokers = {n: s for n, s in compose["services"].items() if n.startswith("kafka-")}
    assert len(brokers) == 3
    for svc in brokers.values():
        env = svc["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert len(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == 3
        assert "healthcheck" in svc
    assert compose["services"]["ingest"]["environment"]["VIVIDLY_REPLICATION_FACTOR"] == "3"


def test_services_scale_and_start_in_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("ingest", "rag", "script", "video", "notify", "projector"):
        svc = services[name]
        assert "container_name" not in svc, f"{name} could not be scaled"
        assert not svc.get("ports"), f"{name} publishes a host port: --scale would clash"
        assert "healthcheck" in svc
        deps = svc["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert all(deps[f"kafka-{i}"]["condition"] == "service_healthy" for i in (1, 2, 3))
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert {"postgres", "prometheus", "grafana"} <= set(services)
    assert services["postgres"]["image"].startswith("pgvector/pgvector")


def test_dockerfile_copies_what_exists() -> None:
    text = (ROOT / "Dockerfile").read_text()
    copies = re.findall(r"^COPY\s+(.+?)\s+\S+$", text, re.M)
    assert copies
    for line in copies:
        for src in line.split():
            assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"


# ---------------------------------------------------------------------- grafana, alerts
def test_grafana_panels_query_only_exported_metrics() -> None:
    exported = exported_metrics()
    dash = json.loads((ROOT / "deploy/grafana/dashboards/vividly.json").read_text())
    used: set[str] = set()
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dash["templating"]["list"]]
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"a panel queries nothing of ours: {expr}"
        assert names <= exported, f"not exported: {names - exported} in {expr}"
        used |= names
    kinds = {p["type"] for p in dash["panels"]}
    assert "heatmap" in kinds
    for needed in (
        "vividly_requests_finished_total",  # throughput
        "vividly_stage_duration_seconds_bucket",  # heatmap, percentiles
        "vividly_breaker_state",
        "vividly_consumer_lag_messages",
        "vividly_projector_lag_seconds",
    ):
        assert needed in used, needed
    ds = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uids = {d["uid"] for d in ds["datasources"]}
    assert {p["datasource"]["uid"] for p in dash["panels"]} <= uids


def test_alert_rules_use_only_exported_metrics() -> None:
    exported = exported_metrics()
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {
        "VividlyBreakerOpen",
        "VividlyStageFailureRateHigh",
        "VividlyProjectorLagging",
        "VividlyDeadLettersGrowing",
        "VividlyRequestStuckInStage",
        "VividlyRequestsStalled",
    } <= names
    for g in rules["groups"]:
        for r in g["rules"]:
            used = metric_names(r["expr"])
            assert used, r["alert"]
            assert used <= exported, f"{r['alert']}: not exported {used - exported}"


# ---------------------------------------------------------------------- credentials
_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?:(:?[-?])([^}]*))?\}")


class Unset(Exception):
    pass


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation: ${V}, ${V:-default}, ${V-default}, ${V:?error}."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        have = env.get(name)
        if op == ":?" and not have:
            raise Unset(f"{name}: {arg}")
        if op == ":-" and not have:
            return arg
        if op == "-" and have is None:
            return arg
        return have or ""

    return _VAR.sub(one, value)


def every_value(compose: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        for key, raw in env.items():
            out.append((name, key, str(raw)))
    return out


def interpolate_all(compose: dict[str, Any], env: dict[str, str]) -> None:
    for _s, _k, raw in every_value(compose):
        interpolate(raw, env)


def test_compose_sets_no_default_credential(compose: dict[str, Any]) -> None:
    required: set[str] = set()
    for service, key, raw in every_value(compose):
        for m in _VAR.finditer(raw):
            var, op = m.group(1), m.group(2)
            if re.search(r"PASSWORD|SECRET|JWT|_KEY", var):
                assert op == ":?", f"{service}.{key}: {var} has a default ({m.group(0)})"
                required.add(var)
    assert required >= {
        "VIVIDLY_JWT_SECRET",
        "POSTGRES_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
        "VIVIDLY_VIDEO_API_KEY",
        "AWS_SECRET_ACCESS_KEY",
    }
    grafana = compose["services"]["grafana"]["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" in grafana
    assert "GF_SECURITY_ADMIN_USER" in grafana
    # Without them, Compose stops with the message; with them, every value resolves.
    for var in ("VIVIDLY_JWT_SECRET", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        env = {v: "given-" + "x1y2" * 10 for v in required if v != var}
        env["GRAFANA_ADMIN_USER"] = "ops"
        with pytest.raises(Unset, match=var):
            interpolate_all(compose, env)
    env = {v: "given-" + "x1y2" * 10 for v in required} | {"GRAFANA_ADMIN_USER": "ops"}
    resolved = {f"{s}.{k}": interpolate(raw, env) for s, k, raw in every_value(compose)}
    assert "postgresql://vividly:given-" in resolved["api.VIVIDLY_DATABASE_URL"]
    assert resolved["grafana.GF_SECURITY_ADMIN_PASSWORD"] != "admin"


def test_every_service_exports_traces_to_jaeger_whose_ui_is_loopback_only(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    jaeger = services["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/jaeger:2.")
    # No login on Jaeger: never published beyond the host's loopback.
    assert all(str(p).startswith("127.0.0.1:") for p in jaeger.get("ports", []))
    pipeline = ["ingest", "rag", "script", "video", "notify", "projector", "api"]
    for name in pipeline:
        env = services[name]["environment"]
        assert with_defaults(env["OTEL_EXPORTER_OTLP_ENDPOINT"]) == "http://jaeger:4318", name
        assert with_defaults(env["OTEL_TRACES_SAMPLER"]) == "parentbased_traceidratio"
        assert 0 < float(with_defaults(env["OTEL_TRACES_SAMPLER_ARG"])) <= 1
    query = with_defaults(services["api"]["environment"]["VIVIDLY_JAEGER_QUERY_URL"])
    assert query == "http://jaeger:16686"
