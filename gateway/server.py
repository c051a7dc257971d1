"""``xlgate serve``: load the model, start the engine, the WebSocket, gRPC and MRCPv2 servers and the metrics
endpoint.

Lifecycle: start-up loads the model (loudly warning if it is untrained), then serves until SIGTERM or
SIGINT. Drain: ``/readyz`` turns false (gRPC health NOT_SERVING) and new streams are refused at once; live
streams go on until they end or ``drain_timeout_s`` passes, then each is finalised (its last results are
sent) and its connection closed with 1001 (a gRPC call with UNAVAILABLE); then the engine stops and every
task has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import serve

from gateway.auth import CredentialFilter, TokenAuthenticator, build_authenticator, build_sip_digest
from gateway.config import RunnerKind, ServeSettings, parse_port_range
from gateway.engine import Engine
from gateway.grpc_api.servicer import GrpcServer, GrpcSettings
from gateway.logging import LogPolicy
from gateway.metrics import Metrics
from gateway.models import WEAK_MODEL_WER, warn_untrained
from gateway.mrcp_adapter import MrcpGateway, MrcpSettings
from gateway.runner import (
    AsyncRunner,
    LanguageModel,
    ModelRunner,
    ProcessRunner,
    RunnerSpec,
    ThreadRunner,
    freeze_heap,
)
from gateway.ws_transport import WebSocketHandler, WebSocketSettings
from protocols.allowlist import NetworkAllowList
from protocols.mrcp.recognizer import RecognizerConfig

log = logging.getLogger("xlgate.server")

MAX_TEXT_BYTES = 65_536
FINISH_GRACE_S = 10.0  # after asking streams to finish, how long their finals may take
GIL_SWITCH_INTERVAL_S = 0.0005


class _HealthAndMetrics(BaseHTTPRequestHandler):
    """``/metrics`` (Prometheus text format), ``/healthz`` and ``/readyz`` on the metrics port."""

    server: Any

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, ctype, status = generate_latest(self.server.metrics.registry), CONTENT_TYPE_LATEST, 200
        elif path == "/healthz":
            ok = self.server.is_healthy()
            body, ctype, status = (b"ok\n" if ok else b"model unavailable\n"), "text/plain", 200 if ok else 503
        elif path == "/readyz":
            ok = self.server.is_ready()
            body, ctype, status = (b"ready\n" if ok else b"not ready\n"), "text/plain", 200 if ok else 503
        else:
            body, ctype, status = b"not found\n", "text/plain", 404
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would drown the log


class MetricsServer:
    """The metrics/health HTTP endpoint on its own thread (owned here, joined on :meth:`close`)."""

    def __init__(self, host: str, port: int, metrics: Metrics, is_ready: Callable[[], bool],
                 is_healthy: Callable[[], bool] = lambda: True) -> None:
        self.httpd = ThreadingHTTPServer((host, port), _HealthAndMetrics)
        self.httpd.daemon_threads = True
        self.httpd.metrics = metrics  # type: ignore[attr-defined]
        self.httpd.is_ready = is_ready  # type: ignore[attr-defined]
        self.httpd.is_healthy = is_healthy  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="xlgate-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def _ssl_context(settings: ServeSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return ctx


@dataclass(frozen=True, slots=True)
class BoundPorts:
    ws_port: int
    metrics_port: int | None
    grpc_port: int | None = None
    sip_port: int | None = None  # None: MRCP disabled
    mrcp_port: int | None = None
    sips_port: int | None = None  # None: no SIP over TLS
    mrcp_tls_port: int | None = None  # None: no MRCP over TLS


async def run_server(settings: ServeSettings, *, on_ready: Callable[[BoundPorts], None] | None = None,
                     stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set), then drain and return.

    ``on_ready`` is called once listening, with the ports actually bound (ports may be given as 0).
    """
    # With the thread runner, the model thread drops and retakes the GIL at every torch op (hundreds per
    # step); at the default 5 ms switch interval a busy event loop can hold it 5 ms at each hand-over.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    # The model's intra-op pool leaves the event loop a core of its own, or network I/O and the model
    # fight over the same cores and both slow down.
    threads = settings.torch_threads or max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(threads)
    runner = await start_runner(settings, threads)
    try:
        await _serve(settings, runner, on_ready=on_ready, stop=stop)
    finally:
        await runner.close()
        gc.unfreeze()  # a no-op unless start-up froze the heap; an embedding process gets its objects back
        log.info("stopped")


async def _serve(settings: ServeSettings, runner: AsyncRunner, *,
                 on_ready: Callable[[BoundPorts], None] | None, stop: asyncio.Event | None) -> None:
    log.info("model %s", runner.info.description)
    warmup = runner.info.warmup
    if warmup is not None:
        (log.info if warmup.complete else log.warning)(
            "warm-up: batch sizes 1..%d of %d in %.2f s%s", warmup.batch_sizes, warmup.target_batch_sizes,
            warmup.seconds, "" if warmup.complete else " (stopped by warmup_timeout_ms: the rest stay cold)")
    if not runner.info.trained:
        warn_untrained(runner.info.model_path)
    elif runner.info.dev_wer is not None and runner.info.dev_wer > WEAK_MODEL_WER:
        log.warning("the model is weak: %.0f%% WER on its dev set (docs/model.md); transcripts will be rough",
                    100 * runner.info.dev_wer)
    authenticator = build_authenticator(settings)
    _log_access(settings, authenticator)
    metrics = Metrics()
    if warmup is not None:
        metrics.warmup_seconds.set(warmup.seconds)
        metrics.warmup_batch_sizes.set(warmup.batch_sizes)
    engine = Engine(runner, metrics=metrics, max_streams=settings.max_streams,
                    max_batch_size=settings.max_batch_size, max_wait_s=settings.max_wait_s,
                    max_pending_chunks=settings.max_pending_chunks, step_timeout_s=settings.model_step_timeout_s)
    handler = WebSocketHandler(engine, WebSocketSettings(
        max_frame_bytes=settings.max_frame_bytes, idle_timeout_s=settings.idle_timeout_s,
        defaults=settings.stream_defaults(), max_sessions_per_address=settings.max_sessions_per_address,
        authenticator=authenticator),
        LogPolicy(log_transcripts=settings.log_transcripts))
    grpc_server = _grpc_server(settings, engine, authenticator)
    stop_event = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop_event.set)
    # Read from the metrics thread at each scrape: all_tasks() copes with the set changing meanwhile.
    metrics.event_loop_tasks.set_function(lambda: float(len(asyncio.all_tasks(loop))))
    # Ready once every listener is up and the start-up work is done, not merely once the metrics port is.
    serving = threading.Event()
    metrics_host = settings.metrics_host or settings.host
    metrics_server = (MetricsServer(metrics_host, settings.metrics_port, metrics,
                                    lambda: serving.is_set() and engine.ready, lambda: engine.healthy)
                      if settings.metrics_port else None)
    # websockets logs each handshake's request line and headers at DEBUG: never a token.
    handshake_log, credential_filter = logging.getLogger("websockets.server"), CredentialFilter()
    handshake_log.addFilter(credential_filter)
    try:
        async with asyncio.TaskGroup() as tg:
            engine_task = tg.create_task(engine.run(), name="engine")
            async with serve(handler, settings.host, settings.ws_port, process_request=handler.process_request,
                             compression=None, max_size=max(settings.max_frame_bytes, MAX_TEXT_BYTES) * 4,
                             max_queue=64, write_limit=2**16, ping_interval=20, ping_timeout=20,
                             close_timeout=5, ssl=_ssl_context(settings)) as server:
                ws_port = next(iter(server.sockets)).getsockname()[1]
                grpc_port = await grpc_server.start() if grpc_server is not None else None
                mrcp: MrcpGateway | None = None
                try:
                    mrcp = await _start_mrcp(settings, engine)
                    if mrcp is not None:
                        metrics.rtp_ports_in_use.set_function(_ports_in_use(mrcp))
                    log.info("serving ws%s://%s:%d/v1/stream; gRPC on %s; metrics on %s",
                             "s" if settings.tls_cert else "", settings.host, ws_port,
                             f"{settings.host}:{grpc_port}" if grpc_port else "off",
                             f"http://{metrics_host}:{metrics_server.port}/metrics" if metrics_server else "off")
                    if settings.warmup:
                        freeze_heap()
                    serving.set()
                    if on_ready is not None:
                        on_ready(BoundPorts(ws_port, metrics_server.port if metrics_server else None, grpc_port,
                                            sip_port=mrcp.sip.port if mrcp else None,
                                            mrcp_port=mrcp.mrcp.port if mrcp else None,
                                            sips_port=mrcp.sip.tls_port if mrcp else None,
                                            mrcp_tls_port=mrcp.mrcp.tls_port if mrcp else None))
                    await stop_event.wait()
                    if grpc_server is not None:
                        await grpc_server.begin_drain()
                    await _drain(engine, settings.drain_timeout_s)
                finally:
                    if mrcp is not None:
                        await mrcp.aclose()
                    if grpc_server is not None:
                        await grpc_server.stop()
            engine.close()
            await engine_task
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        if metrics_server is not None:
            metrics_server.close()
        handshake_log.removeFilter(credential_filter)


def _log_access(settings: ServeSettings, authenticator: TokenAuthenticator | None) -> None:
    """Say at start-up, plainly, who may use the gateway."""
    if authenticator is None:
        log.warning("authentication: OFF: anyone who reaches the WebSocket and gRPC ports can stream "
                    "(set auth_tokens, auth_tokens_file or auth_jwt_key; docs/security.md)")
    else:
        log.info("authentication: ON for WebSocket and gRPC: %s", authenticator.describe())
    if settings.sip_port:
        log.info("SIP/MRCP peers allowed: %s; SIP digest authentication: %s",
                 settings.mrcp_allowed_networks.strip() or "any address",
                 f"on (realm {settings.sip_digest_realm!r})" if settings.sip_digest_users_file else "off")


def _ports_in_use(mrcp: MrcpGateway) -> Callable[[], float]:
    def in_use() -> float:
        return float(mrcp.ports.in_use)

    return in_use


async def _start_mrcp(settings: ServeSettings, engine: Engine) -> MrcpGateway | None:
    """The MRCPv2 server (SIP, MRCP, RTP) on the same engine, unless ``sip_port`` is 0."""
    if not settings.sip_port:
        return None
    ports = parse_port_range(settings.rtp_ports)
    assert ports is not None, "validated by the configuration"
    gateway = MrcpGateway(engine, MrcpSettings(
        host=settings.host, advertise_address=settings.advertise_address, sip_port=settings.sip_port,
        mrcp_port=settings.mrcp_port, rtp_port_low=ports[0], rtp_port_high=ports[1],
        defaults=settings.stream_defaults(),
        recognizer=RecognizerConfig(max_grammar_bytes=settings.max_grammar_bytes,
                                    max_grammar_phrases=settings.max_grammar_phrases),
        tls=_ssl_context(settings), sips_port=settings.sips_port, mrcp_tls_port=settings.mrcp_tls_port,
        max_sessions_per_address=settings.max_sessions_per_address,
        sip_max_message_bytes=settings.sip_max_message_bytes, sip_max_headers=settings.sip_max_headers,
        max_sdp_bytes=settings.max_sdp_bytes, mrcp_max_message_bytes=settings.mrcp_max_message_bytes,
        mrcp_max_headers=settings.mrcp_max_headers, rtp_max_packets_per_s=settings.rtp_max_packets_per_s,
        waveform_dir=Path(settings.mrcp_waveform_dir) if settings.mrcp_waveform_dir else None,
        waveform_max_files=settings.mrcp_waveform_max_files, waveform_max_bytes=settings.mrcp_waveform_max_bytes,
        allowed_networks=(NetworkAllowList.parse(settings.mrcp_allowed_networks)
                          if settings.mrcp_allowed_networks.strip() else None),
        digest=build_sip_digest(settings)))
    try:
        await gateway.start()
    except BaseException:
        await gateway.aclose()
        raise
    return gateway


def _grpc_server(settings: ServeSettings, engine: Engine,
                 authenticator: TokenAuthenticator | None) -> GrpcServer | None:
    """The gRPC listener (gateway/grpc_api), unless ``grpc_port`` is 0; TLS with wss's cert and key."""
    if not settings.grpc_port:
        return None
    tls = settings.tls_cert is not None and settings.tls_key is not None
    return GrpcServer(engine, GrpcSettings(
        host=settings.host, port=settings.grpc_port, max_message_bytes=settings.grpc_max_message_bytes,
        idle_timeout_s=settings.idle_timeout_s, defaults=settings.stream_defaults(),
        tls_cert_chain=settings.tls_cert.read_bytes() if tls and settings.tls_cert else None,
        tls_private_key=settings.tls_key.read_bytes() if tls and settings.tls_key else None,
        authenticator=authenticator,
        max_sessions_per_address=settings.max_sessions_per_address,
    ), LogPolicy(log_transcripts=settings.log_transcripts))


async def start_runner(settings: ServeSettings, threads: int) -> AsyncRunner:
    """The model runner the settings ask for: a child process (CPU default) or a thread of this process,
    warmed up (every batch size the scheduler can form) unless ``settings.warmup`` is off."""
    warmup_batch_size = min(settings.max_batch_size, settings.max_streams) if settings.warmup else 0
    if settings.runner is RunnerKind.PROCESS:
        runner = ProcessRunner(RunnerSpec(model=settings.model, device=settings.device,
                                          max_streams=settings.max_streams, num_threads=threads,
                                          quantize=settings.quantize, lm=settings.lm,
                                          rel_attention=settings.rel_attention,
                                          final_pass=settings.final_pass,
                                          final_pass_budget_s=settings.final_pass_budget_s,
                                          warmup_batch_size=warmup_batch_size,
                                          warmup_timeout_s=settings.warmup_timeout_s))
        await runner.start()
        return runner
    from gateway.models import load_model

    def build() -> ModelRunner:
        return ModelRunner(load_model(settings.model, settings.device, warn=False),
                           max_streams=settings.max_streams, device=settings.device, num_threads=threads,
                           quantize=settings.quantize, lm=LanguageModel.load(settings.lm),
                           rel_attention=settings.rel_attention, final_pass=settings.final_pass,
                           final_pass_budget_s=settings.final_pass_budget_s)

    thread_runner = ThreadRunner(build(), rebuild=build)
    if warmup_batch_size:
        try:
            await thread_runner.warm_up(warmup_batch_size, timeout_s=settings.warmup_timeout_s)
        except BaseException:
            await thread_runner.close()
            raise
    return thread_runner


async def _drain(engine: Engine, drain_timeout_s: float) -> None:
    log.info("draining: %d live streams, up to %.1f s", engine.live_streams, drain_timeout_s)
    engine.start_drain()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(engine.wait_idle(), drain_timeout_s)
    if engine.live_streams:
        log.info("drain timeout: finishing %d live streams", engine.live_streams)
        engine.request_finish()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(engine.wait_idle(), FINISH_GRACE_S)
