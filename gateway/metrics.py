"""Prometheus metrics of the gateway, declared once with an injectable registry.

Naming follows Prometheus conventions: one ``xlgate_`` prefix, base units (seconds), ``_total`` for
counters, and labels only from closed sets (protocol, outcome, kind, codec), never a call or session id.
Latency buckets resolve 1 ms to 2 s and beyond.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from gateway.auth import AuthFailure
from gateway.session import FinalSource, Outcome

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.125,
                     0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)

PROTOCOLS = ("websocket", "mrcp", "grpc", "local")
# Every limit a peer can go over, with the protocol that counts it (docs/operations.md "Limits").
LIMITS = {
    "ws_frame_bytes": ("websocket",),
    "sip_message_bytes": ("mrcp",),
    "sip_headers": ("mrcp",),
    "sdp_bytes": ("mrcp",),
    "mrcp_message_bytes": ("mrcp",),
    "mrcp_headers": ("mrcp",),
    "grammar_bytes": ("mrcp",),
    "grammar_phrases": ("mrcp",),
    "rtp_packet_rate": ("mrcp",),
    "sessions_per_address": ("websocket", "grpc", "mrcp"),
}
# Refusals for want of credentials: token reasons on the APIs, the address allow-list on SIP and MRCP.
_TOKEN_FAILURES = tuple(f.value for f in AuthFailure if f is not AuthFailure.ADDRESS)
AUTH_FAILURES = {"websocket": _TOKEN_FAILURES, "grpc": _TOKEN_FAILURES,
                 # A digest challenge to a first INVITE is the protocol, not a failure: no "missing" for SIP.
                 "sip": tuple(f.value for f in AuthFailure if f is not AuthFailure.MISSING),
                 "mrcp": (AuthFailure.ADDRESS.value,)}
OUTCOMES = tuple(o.value for o in Outcome if o is not Outcome.REJECTED)  # a rejected session has no stream


class Metrics:
    """Every metric the gateway exports. Create one per process (tests pass their own registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.partial_latency = Histogram(
            "xlgate_partial_result_latency_seconds",
            "Partial result sent minus arrival of the last audio it covers.",
            ["protocol"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.final_latency = Histogram(
            "xlgate_final_result_latency_seconds",
            "Final result sent minus arrival of the last audio it covers.",
            ["protocol"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.step_duration = Histogram(
            "xlgate_model_step_duration_seconds",
            "Wall time of one batched model step (features, encoder, decoding).",
            buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_wait = Histogram(
            "xlgate_queue_wait_seconds",
            "Time a chunk waited for its model step after its audio arrived.",
            buckets=LATENCY_BUCKETS_S, registry=r)
        self.batch_size = Histogram(
            "xlgate_batch_size", "Streams in one model step.", buckets=BATCH_BUCKETS, registry=r)
        self.live_streams = Gauge(
            "xlgate_live_streams", "Streams (audio channels) being recognised now.", ["protocol"], registry=r)
        self.streams_started = Counter(
            "xlgate_streams_started_total", "Streams admitted.", ["protocol"], registry=r)
        self.streams_ended = Counter(
            "xlgate_streams_ended_total", "Streams ended, by outcome.", ["protocol", "outcome"], registry=r)
        self.streams_rejected = Counter(
            "xlgate_streams_rejected_total", "Streams refused at admission.", ["protocol", "reason"], registry=r)
        self.audio_seconds = Counter(
            "xlgate_audio_seconds_total", "Seconds of audio recognised.", ["protocol"], registry=r)
        self.errors = Counter(
            "xlgate_errors_total", "Errors by kind (wire error code).", ["protocol", "kind"], registry=r)
        self.results = Counter(
            "xlgate_results_total", "Results sent.", ["protocol", "type"], registry=r)
        self.rtp_packets_received = Counter(
            "xlgate_rtp_packets_received_total", "RTP audio packets received (MRCP sessions).", registry=r)
        self.rtp_packets_lost = Counter(
            "xlgate_rtp_packets_lost_total",
            "RTP audio packets given up on by the jitter buffer (filled with silence).", registry=r)
        self.rtp_jitter = Histogram(
            "xlgate_rtp_jitter_seconds", "Interarrival jitter of RTP streams (RFC 3550), sampled each second.",
            buckets=LATENCY_BUCKETS_S, registry=r)
        self.limit_exceeded = Counter(
            "xlgate_limit_exceeded_total",
            "Messages, sessions or packets refused because a peer went over a configured limit.",
            ["protocol", "limit"], registry=r)
        self.auth_failures = Counter(
            "xlgate_auth_failures_total",
            "Requests refused before any audio for want of valid credentials (WebSocket, gRPC) or because "
            "the peer's address is not allowed (SIP, MRCP), or a SIP INVITE's digest credentials are not valid.",
            ["protocol", "reason"], registry=r)
        self.ready = Gauge("xlgate_ready", "1 when the gateway accepts new streams.", registry=r)
        self.warmup_seconds = Gauge(
            "xlgate_warmup_seconds", "How long the model's warm-up took at start-up (0: none ran).", registry=r)
        self.warmup_batch_sizes = Gauge(
            "xlgate_warmup_batch_sizes", "Batch sizes 1 .. this were warmed up at start-up (0: none).", registry=r)
        self.final_pass = Counter(
            "xlgate_final_pass_total",
            "Finals of the second pass (final_pass = whisper), by where their text came from: second_pass, or "
            "the CTC text when the second pass was shed (shed_pending, shed_wait) or could not give one.",
            ["source"], registry=r)
        for source in FinalSource:
            self.final_pass.labels(source.value)
        self.model_restarts = Counter(
            "xlgate_model_restarts_total",
            "Model runner restarts, by cause: crashed (its process died) or stalled (a step outlived the step "
            "timeout). Every live stream fails at a restart.", ["cause"], registry=r)
        # What a soak watches for leaks: set to callbacks by the server (gateway.server), read at each scrape.
        self.event_loop_tasks = Gauge(
            "xlgate_event_loop_tasks", "asyncio tasks alive on the serving event loop.", registry=r)
        self.rtp_ports_in_use = Gauge(
            "xlgate_rtp_ports_in_use", "RTP ports held by MRCP calls.", registry=r)
        # process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total, ... (Linux)
        ProcessCollector(registry=r)
        for cause in ("crashed", "stalled"):
            self.model_restarts.labels(cause)
        for protocol, reasons in AUTH_FAILURES.items():
            for reason in reasons:
                self.auth_failures.labels(protocol, reason)
        for p in PROTOCOLS:
            self.live_streams.labels(p)
            self.streams_started.labels(p)
            self.audio_seconds.labels(p)
            self.partial_latency.labels(p)
            self.final_latency.labels(p)
        for limit, protocols in LIMITS.items():
            for p in protocols:
                self.limit_exceeded.labels(p, limit)
