"""deploy/prometheus and deploy/grafana against a real Prometheus scraping a real `xlgate serve`.

A renamed or removed metric breaks this test: every alert expression, every dashboard query and the
Prometheus adapter rule of the Helm chart are evaluated through Prometheus's HTTP API, and every metric
name they use must be one the running gateway exports (the RTP metrics of PENDING_METRICS excepted).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from websockets.exceptions import InvalidStatus

from tests.wsharness import client, collect, free_port, noise_pcm, send_audio

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "xlgate.json"
ADAPTER_VALUES = ROOT / "deploy" / "helm" / "prometheus-adapter-values.yaml"

# Metrics the dashboard shows before the gateway exports them (none now: the RTP statistics came with the
# MRCP adapter). Their queries must still parse; only the "is it exported" check is waived for these.
PENDING_METRICS: frozenset[str] = frozenset()
# Series Prometheus makes itself for each target.
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
# Grafana's variables as a dashboard with "All" selected sends them; 1m covers several 1 s scrapes.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1s", "$instance": ".*", "$protocol": ".*"}
PROMQL_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
WAIT_S = 45.0


def http_json(url: str, params: dict[str, str] | None = None) -> dict[str, Any]:
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return dict(json.load(r))
    except urllib.error.HTTPError as e:  # Prometheus answers a bad query with 400 and a JSON error body
        return dict(json.load(e))


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def wait_for(what: str, check: Any, *, timeout_s: float = WAIT_S, proc: subprocess.Popen[bytes] | None = None,
             log: Path | None = None) -> Any:
    """Poll ``check()`` until it returns something truthy; fail after ``timeout_s`` or if ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = log.read_text(errors="replace")[-3000:] if log else ""
            raise AssertionError(f"{what}: process exited with {proc.returncode}: {err}")
        result = check()
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels and durations excluded)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)  # label matchers, ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"(?<![\w:])[0-9.]+(?:[eE][+-]?[0-9]+)?", " ", expr)  # numbers
    return {m.group(1) for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\(?)", expr)
            if not m.group(2) and m.group(1).lower() not in PROMQL_KEYWORDS}


def test_metric_names_parser() -> None:
    assert metric_names('histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{x="y"}[5m]))) > 0.150') \
        == {"a_bucket"}
    assert metric_names('sum(rate(a_total{outcome="error"}[10m])) / sum(rate(b_total[10m])) > 0.01') \
        == {"a_total", "b_total"}
    assert metric_names('count(up{job="xlgate"} == 1)') == {"up"}
    assert metric_names("xlgate_ready == 0") == {"xlgate_ready"}


@dataclass
class Query:
    source: str  # where it comes from, for failure messages
    expr: str
    pending_ok: bool = False  # may use PENDING_METRICS


def alert_queries() -> list[Query]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [Query(f"alerts.yml {rule.get('alert') or rule.get('record')}", rule["expr"])
            for group in rules["groups"] for rule in group["rules"]]


def grafana_expr(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def dashboard_queries() -> list[Query]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append(Query(f"dashboard panel {panel['title']!r} {target['refId']}", grafana_expr(target["expr"]),
                             pending_ok=panel["title"].startswith("RTP")))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"])
            assert m, f"variable {variable['name']}: expected label_values(metric, label)"
            out.append(Query(f"dashboard variable {variable['name']}", m.group(1)))
    return out


def adapter_queries() -> list[Query]:
    """The Prometheus adapter rule's queries, with the adapter's template filled in as it would for pods."""
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    out = []
    for rule in values["rules"]["custom"]:
        series = re.match(r"\w+", rule["seriesQuery"]).group(0)  # type: ignore[union-attr]
        query = (rule["metricsQuery"].replace("<<.Series>>", series)
                 .replace("<<.LabelMatchers>>", 'instance=~".+"').replace("<<.GroupBy>>", "instance"))
        out.append(Query(f"adapter rule {rule['name']['as']}", rule["seriesQuery"]))
        out.append(Query(f"adapter rule {rule['name']['as']} metricsQuery", query))
    return out


@dataclass
class Gateway:
    ws_url: str
    metrics_port: int


@dataclass
class Prometheus:
    url: str

    def query(self, expr: str) -> dict[str, Any]:
        return http_json(f"{self.url}/api/v1/query", {"query": expr})

    def query_range(self, expr: str, *, seconds: int = 60) -> dict[str, Any]:
        now = time.time()
        return http_json(f"{self.url}/api/v1/query_range",
                         {"query": expr, "start": f"{now - seconds:.3f}", "end": f"{now:.3f}", "step": "1"})


def require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (Debian package prometheus; `make install-apt` installs it)")
    return path


@pytest.fixture(scope="module")
def gateway(chatty_checkpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A real `xlgate serve` process on loopback (tiny model, at most 1 stream so a second is refused)."""
    ws_port, metrics_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path_factory.mktemp("xlgate") / "stderr.log"
    with log.open("wb") as stderr:  # a file, not a pipe: a full pipe would stall the server's logging
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--model", chatty_checkpoint, "--host", "127.0.0.1",
             "--ws-port", str(ws_port), "--metrics-port", str(metrics_port), "--runner", "thread",
             "--grpc-port", "0", "--sip-port", str(free_port()), "--mrcp-port", "0",
             "--max-streams", "1", "--log-format", "json"],
            env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for("xlgate /readyz", lambda: http_status(f"http://127.0.0.1:{metrics_port}/readyz") == 200,
                 proc=proc, log=log)
        yield Gateway(f"ws://127.0.0.1:{ws_port}/v1/stream", metrics_port)
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def prometheus(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Prometheus with the shipped prometheus.yml and alerts.yml, scraping the gateway every second."""
    binary = require("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "xlgate"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{gateway.metrics_port}"]}]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = workdir / "stderr.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for("Prometheus /-/ready", lambda: http_status(f"{url}/-/ready") == 200, proc=proc, log=log)
        yield Prometheus(url)
    finally:
        stop(proc)


async def make_traffic(ws_url: str) -> None:
    """One stream with results, one refused for capacity, and one protocol error: every counter gets a series."""
    async with client(ws_url) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate_hz": 8000, "encoding": "pcm_s16le", "channels": 1}))
        assert json.loads(await ws.recv())["type"] == "ready"
        await send_audio(ws, noise_pcm(1.5))
        with pytest.raises(InvalidStatus) as refused:
            async with client(ws_url):
                pass
        assert refused.value.response.status_code == 503
        await ws.send(json.dumps({"type": "stop"}))
        msgs = await collect(ws, timeout_s=30)
        assert any(m["type"] == "final" for m in msgs), msgs
    async with client(ws_url) as ws:
        await ws.send("this is not JSON")
        reply = await collect(ws, until="error", timeout_s=10)
        assert reply[-1]["type"] == "error", reply


@pytest.fixture(scope="module")
def scraped(gateway: Gateway, prometheus: Prometheus) -> Prometheus:
    """Prometheus once it has scraped the gateway before and after the traffic, and evaluated the rules."""
    # A scrape before the traffic, so that rate() sees the counters rise.
    wait_for("a first scrape", lambda: prometheus.query('up{job="xlgate"} == 1')["data"]["result"])
    asyncio.run(make_traffic(gateway.ws_url))
    # Two scrapes of the counters the traffic created, so that rate() has two samples of each.
    created = ('xlgate_results_total{type="final"}', "xlgate_errors_total", "xlgate_streams_rejected_total",
               "xlgate_streams_ended_total")
    wait_for("two scrapes after the traffic", lambda: all(
        prometheus.query(f"count_over_time({series}[1m]) >= 2")["data"]["result"] for series in created))

    def rules_evaluated() -> bool:
        groups = http_json(f"{prometheus.url}/api/v1/rules")["data"]["groups"]
        return bool(groups) and all(not r["lastEvaluation"].startswith("0001") for g in groups for r in g["rules"])

    wait_for("an evaluation of every rule", rules_evaluated)
    return prometheus


def exported_names(prometheus: Prometheus) -> set[str]:
    """Every series name the gateway's scrapes produced, plus the families its metadata declares."""
    names = set(http_json(f"{prometheus.url}/api/v1/label/__name__/values")["data"])
    metadata = http_json(f"{prometheus.url}/api/v1/targets/metadata", {"match_target": '{job="xlgate"}'})["data"]
    for entry in metadata:
        family = entry["metric"]
        names.add(family)
        if entry["type"] == "histogram":
            names.update({f"{family}_bucket", f"{family}_sum", f"{family}_count"})
    return names


def test_every_query_evaluates_on_real_metrics(scraped: Prometheus) -> None:
    exported = exported_names(scraped)
    assert "xlgate_partial_result_latency_seconds_bucket" in exported, sorted(exported)
    assert not PENDING_METRICS & exported, (
        f"{sorted(PENDING_METRICS & exported)} are exported now: drop them from PENDING_METRICS")
    queries = alert_queries() + dashboard_queries() + adapter_queries()
    assert len(queries) > 30
    problems = []
    for q in queries:
        answer = scraped.query_range(q.expr)
        if answer.get("status") != "success":
            problems.append(f"{q.source}: {answer.get('errorType')}: {answer.get('error')} in {q.expr!r}")
        names = metric_names(q.expr)
        if not names:
            problems.append(f"{q.source}: selects no metric: {q.expr!r}")
        allowed = exported | PROMETHEUS_SERIES | (PENDING_METRICS if q.pending_ok else frozenset())
        unknown = names - allowed
        if unknown:
            problems.append(f"{q.source}: unknown metric(s) {sorted(unknown)} in {q.expr!r}")
    assert not problems, "\n".join(problems)


def test_rules_are_healthy_in_prometheus(scraped: Prometheus) -> None:
    groups = http_json(f"{scraped.url}/api/v1/rules")["data"]["groups"]
    shipped = {q.source.removeprefix("alerts.yml ") for q in alert_queries()}
    loaded = {r["name"] for g in groups for r in g["rules"]}
    assert loaded == shipped
    unhealthy = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
    assert not unhealthy
    # The one-stream gateway is healthy: nothing pages (the queue and latency thresholds are far off).
    firing = [r["name"] for g in groups for r in g["rules"] if r.get("state") == "firing"]
    assert not firing


def test_dashboard_panels_show_the_traffic(scraped: Prometheus) -> None:
    """Queries that must return data after one stream, one refusal and one protocol error."""
    dashboard = json.loads(DASHBOARD.read_text())
    by_title = {p["title"]: p for p in dashboard["panels"]}
    for title in ("Live streams per protocol", "Partial result latency", "Final result latency",
                  "Refused streams by reason", "Errors by kind", "Model step time", "Batch size", "Queue wait"):
        expr = grafana_expr(by_title[title]["targets"][0]["expr"])
        result = scraped.query_range(expr, seconds=120)["data"]["result"]
        values = [float(v) for series in result for _, v in series["values"]]
        assert any(v == v for v in values), f"{title}: no data from {expr!r}"  # v == v: not NaN


def test_promtool_checks_rules_config_and_alert_unit_tests() -> None:
    promtool = require("promtool")
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"],
                 ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run([promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
