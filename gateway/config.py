"""Settings for ``xlgate serve``: one declaration of the options, four sources, one frozen result.

Theory of operation: :class:`ServeSettings` declares every option once, as a field carrying its
:class:`OptionSpec` (kind, default, help, validation); :data:`OPTION_SPECS` is derived from its fields.
Everything else is derived from that: the argparse flags (:func:`add_serve_arguments`, and
:func:`add_option_arguments` for other commands), the environment variable names (``XLGATE_<NAME>``), the
keys of the TOML file's ``[serve]`` table, and ``docs/configuration.md`` (:func:`render_markdown`).
:func:`resolve_serve_settings` reads each option from flags, then the environment, then the file, then
the default; the first source that sets it wins. Every value that is set anywhere is parsed and
validated, even one a higher source overrides, so a broken file or environment fails today rather than
on the day the override goes away.

Durations are integer milliseconds at the boundary (``*_ms`` flags, variables and keys) and float
seconds (``*_s``) in :class:`ServeSettings`.

To add an option: add a field to :class:`ServeSettings` declared with ``field(metadata=_option(...))``
(the settings type and the option list are one declaration, so mypy checks each field's type), and
regenerate the doc with ``python -m gateway.config > docs/configuration.md``.

Why not pydantic-settings (issue 9 asked to use it unless it loses something users need): it merges its
sources (flags, environment, file) into one dict before it validates, so a bad value that a higher source
overrides is never checked, and its errors name a field, not the flag, variable or file key that was
wrong; an unknown ``XLGATE_`` variable in the environment is not reported. Rebuilding those on top of it
(one validation per source, our messages, did-you-mean) would leave it only reading the sources, which
is the small part of this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import json
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from gateway.logging import LOG_FORMATS, LOG_LEVELS
from gateway.session import (
    DEFAULT_HOTWORD_BOOST,
    DecodingMethod,
    DecodingSettings,
    EndpointingSettings,
    Hotword,
    StreamSettings,
    merge_hotwords,
)
from protocols.allowlist import AllowListError, NetworkAllowList

__all__ = [
    "BUNDLED_MODEL",
    "CONFIG_ENV_VAR",
    "DEFAULT_HOTWORD_BOOST",
    "ENV_PREFIX",
    "OPTION_SPECS",
    "ConfigError",
    "Hotword",
    "Kind",
    "OptionSpec",
    "ServeSettings",
    "add_option_arguments",
    "add_serve_arguments",
    "load_hotwords_file",
    "render_markdown",
    "resolve_serve_settings",
    "unknown_environment_variables",
]

ENV_PREFIX: Final = "XLGATE_"
CONFIG_ENV_VAR: Final = "XLGATE_CONFIG"
FILE_SECTION: Final = "serve"
BUNDLED_MODEL: Final = "bundled"
MAX_PORT: Final = 65535

_TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS: Final = frozenset({"0", "false", "no", "off"})
_INT_PATTERN: Final = re.compile(r"[+-]?[0-9]+")
_DEVICE_PATTERN: Final = re.compile(r"cpu|cuda(:[0-9]+)?")


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range.

    Attributes:
        source: where the value came from, e.g. ``flag --ws-port`` or ``environment variable XLGATE_WS_PORT``.
        expected: what would have been accepted.
        actual: what was found, as shown in the message.
    """

    def __init__(self, *, source: str, expected: str, actual: str) -> None:
        self.source = source
        self.expected = expected
        self.actual = actual
        super().__init__(f"{source}: expected {expected}, got {actual}")


class EventLoop(enum.StrEnum):
    """The asyncio event loop implementation."""

    UVLOOP = "uvloop"
    ASYNCIO = "asyncio"


class Quantization(enum.StrEnum):
    """The weights of the model's linear layers (gateway.runner.quantize_int8)."""

    NONE = "none"
    INT8 = "int8"


class RelAttention(enum.StrEnum):
    """Which attention computes a streaming step (triton_kernels.rel_attention)."""

    AUTO = "auto"
    TRITON = "triton"
    REFERENCE = "reference"


class FinalPass(enum.StrEnum):
    """Where a final's text comes from (gateway.runner.SecondPassWorker)."""

    NONE = "none"
    WHISPER = "whisper"


class RunnerKind(enum.StrEnum):
    """Where the model runs (gateway.runner.ProcessRunner or ThreadRunner)."""

    PROCESS = "process"
    THREAD = "thread"


def _values(closed_set: type[enum.StrEnum]) -> tuple[str, ...]:
    return tuple(member.value for member in closed_set)


class Kind(enum.Enum):
    """How an option's value is spelled at the boundary and what it becomes in ServeSettings."""

    STR = "string"
    INT = "integer"
    BOOL = "boolean"
    DURATION_MS = "milliseconds"
    PATH = "path"  # an existing file; becomes a Path (None when unset)
    MODEL = "model"  # "bundled" or an existing .safetensors file; stays a str
    HOTWORDS = "hotwords"  # config file only: [[serve.hotwords]] tables


class _Origin(enum.Enum):
    FLAG = "flag"
    ENV = "environment"
    FILE = "file"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class _Source:
    origin: _Origin
    label: str
    base_dir: Path | None = None  # relative paths in a config file are relative to the file


_DEFAULT_SOURCE: Final = _Source(_Origin.DEFAULT, "default")


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One option of ``xlgate serve``; flag, env var and file key are all derived from ``name``.

    Attributes:
        name: boundary name, snake_case; durations end in ``_ms``.
        kind: how the value is parsed.
        default: the value when no source sets it, in boundary units.
        help: one sentence for --help and the docs.
        group: heading in --help and the docs.
        choices: accepted values (matched case-insensitively) for STR options.
        closed_set: the enum a STR option's value becomes in ServeSettings (its values are the choices).
        min_value: inclusive lower bound for INT and DURATION_MS options.
        max_value: inclusive upper bound for INT and DURATION_MS options.
        check: extra validation; returns a description of what is expected when the value is bad.
        check_text: how the check reads in the docs, e.g. "cpu, cuda or cuda:N".
        file_only: the option has no flag and no environment variable.
    """

    name: str
    kind: Kind
    default: Any
    help: str
    group: str
    choices: tuple[str, ...] = ()
    closed_set: type[enum.StrEnum] | None = None
    min_value: int | None = None
    max_value: int | None = None
    check: Callable[[str], str | None] | None = None
    check_text: str = ""
    file_only: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def file_key(self) -> str:
        return self.name

    @property
    def field_name(self) -> str:
        """The ServeSettings field: ``*_ms`` options are held in seconds as ``*_s``."""
        if self.kind is Kind.DURATION_MS:
            return self.name.removesuffix("_ms") + "_s"
        return self.name

    def constraint_text(self) -> str:
        """Accepted values in words, for --help and the docs ("" when anything of the kind goes)."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.check_text:
            return self.check_text
        if self.min_value is not None and self.max_value is not None:
            return f"{self.min_value}..{self.max_value}"
        if self.min_value is not None:
            return f">= {self.min_value}"
        return ""

    def default_text(self) -> str:
        """The default as a user would type it."""
        if self.default is None:
            return "unset"
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if self.kind is Kind.HOTWORDS:
            return "none" if not self.default else ", ".join(h.phrase for h in self.default)
        return str(self.default)


def _check_host(value: str) -> str | None:
    if value and not any(char.isspace() for char in value):
        return None
    return "a host name or IP address"


def parse_port_range(value: str) -> tuple[int, int] | None:
    """``"LOW-HIGH"`` as two ports holding at least one even/odd RTP pair, or None."""
    match = re.fullmatch(r"\s*([0-9]{1,5})\s*-\s*([0-9]{1,5})\s*", value)
    if match is None:
        return None
    low, high = int(match[1]), int(match[2])
    if not 0 < low <= high <= MAX_PORT or low + (low % 2) + 1 > high:
        return None
    return low, high


def _check_port_range(value: str) -> str | None:
    return None if parse_port_range(value) is not None else "a range LOW-HIGH of ports holding an even/odd pair"


def _check_advertise(value: str) -> str | None:
    return None if value == "" or _check_host(value) is None else "empty or a host name or IP address"


def _check_realm(value: str) -> str | None:
    if value and value.isprintable() and '"' not in value and "\\" not in value:
        return None
    return "non-empty printable text without quotes or backslashes"


def _check_networks(value: str) -> str | None:
    if value.strip() == "":
        return None
    try:
        NetworkAllowList.parse(value)
    except AllowListError as exc:
        return f"empty or a comma-separated list of CIDR networks ({exc})"
    return None


# JWT signature algorithms by key family (RFC 7518 §3.1, RFC 8037); "none" is never accepted. One family
# per configuration: a list mixing HMAC with a public-key family is how key-confusion attacks start.
JWT_ALGORITHM_FAMILIES: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType({
    "hmac": ("HS256", "HS384", "HS512"),
    "rsa": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "ec": ("ES256", "ES384", "ES512"),
    "okp": ("EdDSA",),
})


def parse_jwt_algorithms(value: str) -> tuple[tuple[str, ...], str] | None:
    """``"RS256, PS256"`` as (algorithms, family), or None when a name is unknown or families mix."""
    names = tuple(dict.fromkeys(item.strip() for item in value.split(",") if item.strip()))
    families = {family for name in names for family, members in JWT_ALGORITHM_FAMILIES.items() if name in members}
    known = all(any(name in members for members in JWT_ALGORITHM_FAMILIES.values()) for name in names)
    if not names or not known or len(families) != 1:
        return None
    return names, families.pop()


def _check_jwt_algorithms(value: str) -> str | None:
    if value.strip() == "" or parse_jwt_algorithms(value) is not None:
        return None
    return ("empty or a comma-separated list of JWT algorithms of one family: HS256/384/512, "
            "RS256/384/512 and PS256/384/512, ES256/384/512, or EdDSA")
def _check_folder(value: str) -> str | None:
    if value == "" or ("\x00" not in value and not Path(value).is_file()):
        return None
    return "empty or a folder path"


def _check_device(value: str) -> str | None:
    return None if _DEVICE_PATTERN.fullmatch(value) else "cpu, cuda or cuda:N"


_NETWORK: Final = "Network"
_MODEL: Final = "Model and compute"
_BATCHING: Final = "Batching and flow control"
_STREAMING: Final = "Streams and timeouts"
_DECODING: Final = "Decoding"
_LOGGING: Final = "Logging"
_TLS: Final = "TLS"
_LIMITS: Final = "Limits"
_AUTH: Final = "Authentication and access"

_ENDPOINTING: Final = EndpointingSettings()  # the session API declares the stream defaults once
_DECODING_DEFAULTS: Final = DecodingSettings()
_OPTION: Final = "xlgate.option"


def _option(kind: Kind, default: Any, help: str, group: str, **details: Any) -> Mapping[str, OptionSpec]:
    """A :class:`ServeSettings` field's metadata: its option, all but the name (which is the field's)."""
    return {_OPTION: OptionSpec("", kind, default, help, group, **details)}


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """The resolved settings of ``xlgate serve``, and the one declaration of their options: each field
    carries its :class:`OptionSpec` (kind, default in boundary units, help, group, checks); its name is the
    option's, ``*_s`` fields being ``*_ms`` options. :data:`OPTION_SPECS` is derived from these fields."""

    host: str = field(metadata=_option(
        Kind.STR, "127.0.0.1", "Address the listeners bind to.", _NETWORK,
        check=_check_host, check_text="a host name or IP address"))
    ws_port: int = field(metadata=_option(
        Kind.INT, 8080, "WebSocket streaming port (0 = any free port).", _NETWORK,
        min_value=0, max_value=MAX_PORT))
    metrics_port: int = field(metadata=_option(
        Kind.INT, 9464, "Prometheus /metrics port (0 = no metrics listener).",
        _NETWORK, min_value=0, max_value=MAX_PORT))
    metrics_host: str = field(metadata=_option(
        Kind.STR, "", "Address the /metrics, /healthz and /readyz listener binds to, e.g. a management "
        "interface (empty = host).", _NETWORK, check=_check_advertise,
        check_text="empty or a host name or IP address"))
    grpc_port: int = field(metadata=_option(
        Kind.INT, 50051, "gRPC port of the Recognizer service, health and reflection (0 = gRPC disabled).",
        _NETWORK, min_value=0, max_value=MAX_PORT))
    grpc_max_message_bytes: int = field(metadata=_option(
        Kind.INT, 4 * 1024 * 1024,
        "Largest gRPC message received or sent, in bytes (a Recognize request holds a whole recording).",
        _NETWORK, min_value=1024, max_value=256 * 1024 * 1024))
    sip_port: int = field(metadata=_option(
        Kind.INT, 5060, "SIP port of the MRCPv2 server, UDP and TCP (0 = MRCP disabled).", _NETWORK,
        min_value=0, max_value=MAX_PORT))
    mrcp_port: int = field(metadata=_option(
        Kind.INT, 1544, "MRCPv2 control (TCP) port (0 = any free port).", _NETWORK,
        min_value=0, max_value=MAX_PORT))
    rtp_ports: str = field(metadata=_option(
        Kind.STR, "20000-29999", "UDP port range of MRCP sessions' RTP audio (one even port per call).",
        _NETWORK, check=_check_port_range, check_text="LOW-HIGH"))
    advertise_address: str = field(metadata=_option(
        Kind.STR, "", "Address written into SDP and SIP Contact (empty = host, or 127.0.0.1 when host is "
        "a wildcard address).", _NETWORK, check=_check_advertise, check_text="empty or a host name or IP address"))
    mrcp_waveform_dir: str = field(metadata=_option(
        Kind.STR, "", "Folder where the audio of an MRCP RECOGNIZE with Save-Waveform: true is saved as WAV and "
        "named in Waveform-URI (created 0700; empty = never saved: call audio is personal data).", _NETWORK,
        check=_check_folder, check_text="empty or a folder path"))
    mrcp_waveform_max_files: int = field(metadata=_option(
        Kind.INT, 1000, "Most saved waveforms kept in mrcp_waveform_dir (the oldest are deleted first).",
        _NETWORK, min_value=1, max_value=10_000_000))
    mrcp_waveform_max_bytes: int = field(metadata=_option(
        Kind.INT, 1 << 30, "Most bytes of saved waveforms in mrcp_waveform_dir (the oldest are deleted first; "
        "a recording that alone would pass it stops growing).", _NETWORK, min_value=1 << 20, max_value=1 << 50))
    max_frame_bytes: int = field(metadata=_option(
        Kind.INT, 64000, "Largest WebSocket message accepted, in bytes.",
        _NETWORK, min_value=1024, max_value=16 * 1024 * 1024))
    model: str = field(metadata=_option(
        Kind.MODEL, BUNDLED_MODEL,
        "Checkpoint to serve: a .safetensors file, or 'bundled' for the packaged model.", _MODEL,
        check_text="bundled or an existing .safetensors file"))
    device: str = field(metadata=_option(
        Kind.STR, "cpu", "Torch device the model runs on.", _MODEL,
        check=_check_device, check_text="cpu, cuda or cuda:N"))
    torch_threads: int = field(metadata=_option(
        Kind.INT, 0,
        "Torch intra-op threads of the model thread (0 = all cores but one, which is left to the event loop).",
        _MODEL, min_value=0, max_value=1024))
    event_loop: EventLoop = field(metadata=_option(
        Kind.STR, EventLoop.UVLOOP.value, "asyncio event loop implementation.", _MODEL,
        choices=_values(EventLoop), closed_set=EventLoop))
    quantize: Quantization = field(metadata=_option(
        Kind.STR, Quantization.NONE.value,
        "Weights of the model's linear layers: float32 ('none') or dynamic int8 ('int8': faster on "
        "CPU, but a stream's result then depends slightly on which streams share its batch).",
        _MODEL, choices=_values(Quantization), closed_set=Quantization))
    rel_attention: RelAttention = field(metadata=_option(
        Kind.STR, RelAttention.AUTO.value,
        "Attention of a streaming step: 'auto' = the fused Triton kernel on a CUDA device and PyTorch "
        "elsewhere; 'triton' or 'reference' force one ('triton' on CPU needs TRITON_INTERPRET=1: tests only).",
        _MODEL, choices=_values(RelAttention), closed_set=RelAttention))
    final_pass: FinalPass = field(metadata=_option(
        Kind.STR, FinalPass.WHISPER.value,
        "Text of finals: a second pass of Whisper tiny.en's decoder over each utterance ('whisper', the "
        "default: far better words on real voices, aligned to the CTC posteriors for timings and "
        "confidences; ~0.1-0.3 s of CPU per final on a lower-priority worker, shed to the CTC text under "
        "load, see final_pass_budget_ms) or the streaming CTC decoder's own ('none': no extra CPU).",
        _MODEL, choices=_values(FinalPass), closed_set=FinalPass))
    final_pass_budget_s: float = field(metadata=_option(
        Kind.DURATION_MS, 300,
        "With final_pass whisper: how long after an utterance closes its final may wait for the second pass "
        "(queue and run); past it the final goes out with its CTC text, so overload sheds the second pass, "
        "never final latency (counted in xlgate_final_pass_total).", _MODEL, min_value=0, max_value=10_000))
    runner: RunnerKind = field(metadata=_option(
        Kind.STR, RunnerKind.PROCESS.value,
        "Where the model runs: a child process (no GIL contention with the event loop) or a thread.",
        _MODEL, choices=_values(RunnerKind), closed_set=RunnerKind))
    model_step_timeout_s: float = field(metadata=_option(
        Kind.DURATION_MS, 1000,
        "A model step still running after this long is a stalled model: every live stream fails with an "
        "error and the model runner is restarted (steps take 10-50 ms on a 2-core CPU; see "
        "docs/reliability.md).", _MODEL, min_value=100, max_value=600_000))
    warmup: bool = field(metadata=_option(
        Kind.BOOL, True,
        "Before /readyz turns ready, run one model step at every batch size the scheduler can form (1 .. "
        "the smaller of max_batch_size and max_streams) and freeze the start-up heap out of the garbage "
        "collector's reach, so the first calls after a start are as fast as later ones (docs/reliability.md).",
        _MODEL))
    warmup_timeout_s: float = field(metadata=_option(
        Kind.DURATION_MS, 60_000,
        "Longest the warm-up may take; past it the remaining batch sizes are skipped (logged) and the "
        "gateway turns ready anyway.", _MODEL, min_value=0, max_value=3_600_000))
    max_streams: int = field(metadata=_option(
        Kind.INT, 64, "Concurrent streams; more are refused as overload.",
        _BATCHING, min_value=1, max_value=100_000))
    max_batch_size: int = field(metadata=_option(
        Kind.INT, 32, "Most streams advanced in one model step.", _BATCHING, min_value=1, max_value=4096))
    max_wait_s: float = field(metadata=_option(
        Kind.DURATION_MS, 10,
        "Batch window: longest a ready chunk waits for others to join its batch.", _BATCHING,
        min_value=0, max_value=1000))
    max_pending_chunks: int = field(metadata=_option(
        Kind.INT, 8, "Per-stream bound on audio chunks queued for the model.", _BATCHING,
        min_value=1, max_value=1024))
    endpoint_silence_s: float = field(metadata=_option(
        Kind.DURATION_MS, round(_ENDPOINTING.silence_s * 1000),
        "Trailing silence that ends an utterance.", _STREAMING, min_value=100, max_value=60_000))
    max_utterance_s: float = field(metadata=_option(
        Kind.DURATION_MS, round(_ENDPOINTING.max_utterance_s * 1000),
        "Longest utterance; a longer one is cut and finalized.", _STREAMING,
        min_value=1000, max_value=3_600_000))
    idle_timeout_s: float = field(metadata=_option(
        Kind.DURATION_MS, 15_000, "A stream that sends no audio for this long is closed.", _STREAMING,
        min_value=1000, max_value=3_600_000))
    drain_timeout_s: float = field(metadata=_option(
        Kind.DURATION_MS, 30_000,
        "On shutdown, how long open streams may finish before they are closed.", _STREAMING,
        min_value=0, max_value=3_600_000))
    decoding: DecodingMethod = field(metadata=_option(
        Kind.STR, _DECODING_DEFAULTS.method.value, "CTC decoding strategy.", _DECODING,
        choices=_values(DecodingMethod), closed_set=DecodingMethod))
    beam_size: int = field(metadata=_option(
        Kind.INT, _DECODING_DEFAULTS.beam_size, "Beam width when decoding is beam.", _DECODING,
        min_value=1, max_value=256))
    lm: str = field(metadata=_option(
        Kind.STR, "bundled",
        "Word n-gram LM fused into beam search: 'bundled', 'none', or a path to an .npz/.arpa file "
        "(tuned weights in a .json beside it).", _DECODING))
    hotwords: tuple[Hotword, ...] = field(metadata=_option(
        Kind.HOTWORDS, (), "Phrases to boost, as [[serve.hotwords]] tables with phrase and boost.", _DECODING,
        file_only=True))
    hotwords_file: Path | None = field(metadata=_option(
        Kind.PATH, None,
        "File of hotwords, one 'phrase<TAB>boost' per line; added to the inline ones.", _DECODING,
        check_text="an existing file"))
    log_level: str = field(metadata=_option(
        Kind.STR, "info", "Lowest level logged.", _LOGGING, choices=LOG_LEVELS))
    log_format: str = field(metadata=_option(
        Kind.STR, "text", "Log line format.", _LOGGING, choices=LOG_FORMATS))
    log_transcripts: bool = field(metadata=_option(
        Kind.BOOL, False,
        "Debug only: write transcripts to the logs (they are redacted otherwise; audio is never logged).",
        _LOGGING))
    tls_cert: Path | None = field(metadata=_option(
        Kind.PATH, None, "PEM certificate chain; set together with tls_key.", _TLS,
        check_text="an existing file"))
    tls_key: Path | None = field(metadata=_option(
        Kind.PATH, None, "PEM private key; set together with tls_cert.", _TLS, check_text="an existing file"))
    sips_port: int = field(metadata=_option(
        Kind.INT, 5061, "SIP over TLS port of the MRCPv2 server (RFC 3261 §26), served when tls_cert is set "
        "and MRCP is on (0 = off).", _TLS, min_value=0, max_value=MAX_PORT))
    mrcp_tls_port: int = field(metadata=_option(
        Kind.INT, 1545, "MRCPv2 over TLS port, named in the SDP answer to TCP/TLS/MRCPv2 offers; served when "
        "tls_cert is set and MRCP is on (0 = any free port).", _TLS, min_value=0, max_value=MAX_PORT))
    max_sessions_per_address: int = field(metadata=_option(
        Kind.INT, 0, "Sessions one client address may hold at once, per protocol (WebSocket connections, "
        "gRPC calls, SIP calls); 0 = no bound beyond max_streams (a PBX sends every call from one address).",
        _LIMITS, min_value=0, max_value=100_000))
    sip_max_message_bytes: int = field(metadata=_option(
        Kind.INT, 65536, "Largest SIP message accepted (513 Message Too Large beyond).", _LIMITS,
        min_value=4096, max_value=1024 * 1024))
    sip_max_headers: int = field(metadata=_option(
        Kind.INT, 100, "Most header lines of a SIP message (400 Too Many Headers beyond).", _LIMITS,
        min_value=16, max_value=10_000))
    max_sdp_bytes: int = field(metadata=_option(
        Kind.INT, 16384, "Largest SDP offer accepted (413 Request Entity Too Large beyond).", _LIMITS,
        min_value=1024, max_value=1024 * 1024))
    mrcp_max_message_bytes: int = field(metadata=_option(
        Kind.INT, 1024 * 1024, "Largest MRCPv2 message accepted (504 and the connection closed beyond).",
        _LIMITS, min_value=4096, max_value=64 * 1024 * 1024))
    mrcp_max_headers: int = field(metadata=_option(
        Kind.INT, 100, "Most header lines of an MRCPv2 message (504 beyond).", _LIMITS,
        min_value=16, max_value=10_000))
    max_grammar_bytes: int = field(metadata=_option(
        Kind.INT, 256 * 1024, "Largest inline SRGS grammar compiled (Completion-Cause 005 beyond).", _LIMITS,
        min_value=1024, max_value=64 * 1024 * 1024))
    max_grammar_phrases: int = field(metadata=_option(
        Kind.INT, 2000, "Most phrases a grammar may expand to (Completion-Cause 005 beyond).", _LIMITS,
        min_value=1, max_value=1_000_000))
    rtp_max_packets_per_s: int = field(metadata=_option(
        Kind.INT, 200, "RTP packets per second one call may send (burst: one second's worth); more are "
        "dropped and counted (20 ms audio is 50 a second).", _LIMITS, min_value=50, max_value=100_000))
    # Secrets: kept out of the settings' repr, so a logged ServeSettings shows no token.
    auth_tokens: str = field(repr=False, metadata=_option(
        Kind.STR, "", "Static API tokens the WebSocket and gRPC APIs accept, comma-separated (at least 16 "
        "characters each; prefer the environment variable or auth_tokens_file: a flag shows in ps).", _AUTH,
        check_text="comma-separated tokens"))
    auth_tokens_file: Path | None = field(metadata=_option(
        Kind.PATH, None, "File of static API tokens, one per line ('#' comments); added to auth_tokens.", _AUTH,
        check_text="an existing file"))
    auth_jwt_key: Path | None = field(metadata=_option(
        Kind.PATH, None, "Key JWTs are verified with: the HMAC secret (HS*) or a PEM public key or "
        "certificate (RS*, PS*, ES*, EdDSA); set together with auth_jwt_algorithms.", _AUTH,
        check_text="an existing file"))
    auth_jwt_algorithms: str = field(metadata=_option(
        Kind.STR, "", "JWT algorithms accepted, comma-separated, one family (the token's own alg header "
        "never chooses).", _AUTH, check=_check_jwt_algorithms, check_text="e.g. RS256 or HS256,HS512"))
    auth_jwt_audience: str = field(metadata=_option(
        Kind.STR, "", "Audience a JWT's aud claim must name (empty = tokens must carry no aud).", _AUTH))
    auth_jwt_issuer: str = field(metadata=_option(
        Kind.STR, "", "Issuer a JWT's iss claim must equal (empty = not checked).", _AUTH))
    auth_jwt_leeway_s: float = field(metadata=_option(
        Kind.DURATION_MS, 0, "Clock skew allowed when checking a JWT's exp, nbf and iat.", _AUTH,
        min_value=0, max_value=300_000))
    auth_query_token: bool = field(metadata=_option(
        Kind.BOOL, True, "Accept the token in the WebSocket URL's access_token query parameter too (for "
        "browsers, which cannot set headers; URLs can end up in proxy logs).", _AUTH))
    sip_digest_users_file: Path | None = field(metadata=_option(
        Kind.PATH, None, "SIP digest authentication of INVITEs (MD5 and SHA-256): a file of 'username:password' "
        "lines ('#' comments); unset = no digest authentication.", _AUTH, check_text="an existing file"))
    sip_digest_realm: str = field(metadata=_option(
        Kind.STR, "xlgate", "Realm of the SIP digest challenges.", _AUTH, check=_check_realm,
        check_text="printable text without quotes"))
    mrcp_allowed_networks: str = field(metadata=_option(
        Kind.STR, "", "Peers allowed on SIP and MRCP, as CIDR networks, comma-separated (empty = any "
        "address): UDP requests from elsewhere get 403 Forbidden, TCP and TLS connections are closed at once.",
        _AUTH,
        check=_check_networks, check_text="empty or CIDR networks, e.g. 10.0.0.0/8, 192.0.2.7"))

    def stream_defaults(self) -> StreamSettings:
        """The server's values for whatever a protocol's start message leaves out."""
        return StreamSettings(
            endpointing=EndpointingSettings(silence_s=self.endpoint_silence_s,
                                            max_utterance_s=self.max_utterance_s),
            decoding=DecodingSettings(method=self.decoding, beam_size=self.beam_size,
                                      hotwords=self.hotwords))


def _named(option: dataclasses.Field[Any]) -> OptionSpec:
    spec: OptionSpec = option.metadata[_OPTION]
    name = option.name.removesuffix("_s") + "_ms" if spec.kind is Kind.DURATION_MS else option.name
    return dataclasses.replace(spec, name=name)


OPTION_SPECS: Final[tuple[OptionSpec, ...]] = tuple(_named(f) for f in dataclasses.fields(ServeSettings))
_SPECS_BY_NAME: Final[Mapping[str, OptionSpec]] = MappingProxyType({spec.name: spec for spec in OPTION_SPECS})


# --------------------------------------------------------------------------------------------- argparse


def _metavar(spec: OptionSpec) -> str:
    if spec.choices:
        return "{" + ",".join(spec.choices) + "}"
    return {Kind.INT: "N", Kind.DURATION_MS: "MS", Kind.PATH: "PATH", Kind.MODEL: "PATH|bundled"}.get(
        spec.kind, spec.name.split("_")[-1].upper()
    )


def _help_text(spec: OptionSpec) -> str:
    constraint = spec.constraint_text()
    text = spec.help
    if constraint and not spec.choices:  # argparse already shows choices in the metavar
        text += f" Accepts {constraint}."
    text += f" [env {spec.env_var}; default {spec.default_text()}]"
    return text.replace("%", "%%")


def add_option_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """Give another command (``transcribe``) the named serve options as flags, from the one declaration:
    the same flag, parsing, range or choice check and default, instead of a re-declaration that drifts.

    Unlike :func:`add_serve_arguments`, values are checked by argparse (no environment or file here) and
    arrive as the boundary value (milliseconds stay milliseconds), a closed set as its enum.
    """
    for name in names:
        spec = _SPECS_BY_NAME[name]

        def convert(text: str, spec: OptionSpec = spec) -> object:
            try:
                value = _parse(spec, text, _Source(_Origin.FLAG, f"flag {spec.flag}"))
            except ConfigError as exc:
                raise argparse.ArgumentTypeError(f"expected {exc.expected}, got {exc.actual}") from None
            return spec.closed_set(str(value)) if spec.closed_set is not None else value

        default = spec.closed_set(spec.default) if spec.closed_set is not None else spec.default
        constraint = spec.constraint_text()
        help_text = spec.help + (f" Accepts {constraint}." if constraint and not spec.choices else "")
        parser.add_argument(spec.flag, dest=spec.name, type=convert, default=default, metavar=_metavar(spec),
                            help=f"{help_text} (default {spec.default_text()})".replace("%", "%%"))


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one flag per option to the ``xlgate serve`` parser.

    Flags default to None so that :func:`resolve_serve_settings` can tell "not given" from a value;
    parsing and validation happen there, so a bad flag raises ConfigError like a bad variable would.
    """
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help=(
            f"TOML file whose [{FILE_SECTION}] table sets any option below by its snake_case name; "
            "hotwords can be listed there as [[serve.hotwords]] tables. Precedence: flags > environment "
            f"> file > defaults. [env {CONFIG_ENV_VAR}]"
        ),
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for spec in OPTION_SPECS:
        if spec.file_only:
            continue
        if spec.group not in groups:
            groups[spec.group] = parser.add_argument_group(spec.group)
        group = groups[spec.group]
        if spec.kind is Kind.BOOL:
            group.add_argument(
                spec.flag, dest=spec.name, default=None, action=argparse.BooleanOptionalAction,
                help=_help_text(spec),
            )
        else:
            group.add_argument(
                spec.flag, dest=spec.name, default=None, metavar=_metavar(spec), help=_help_text(spec)
            )


# ------------------------------------------------------------------------------------ parsing per value


def _show(value: object) -> str:
    return repr(value)


def _from_text(spec: OptionSpec, raw: str, source: _Source) -> object:
    """Parse a flag or environment string into the option's boundary type."""
    if spec.kind is Kind.BOOL:
        word = raw.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise ConfigError(
            source=source.label, expected="a boolean (1/0, true/false, yes/no, on/off)", actual=_show(raw)
        )
    if spec.kind in (Kind.INT, Kind.DURATION_MS):
        if not _INT_PATTERN.fullmatch(raw.strip()):
            raise ConfigError(source=source.label, expected=_range_words(spec), actual=_show(raw))
        return int(raw)
    return raw


def _from_toml(spec: OptionSpec, raw: object, source: _Source) -> object:
    """Type-check a TOML value; TOML is typed, so no string coercion happens here."""
    if spec.kind is Kind.BOOL:
        if not isinstance(raw, bool):
            raise ConfigError(source=source.label, expected="a boolean (true or false)", actual=_show(raw))
        return raw
    if spec.kind in (Kind.INT, Kind.DURATION_MS):
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(source=source.label, expected=_range_words(spec), actual=_show(raw))
        return raw
    if spec.kind is Kind.HOTWORDS:
        return _hotwords_from_toml(raw, source)
    if not isinstance(raw, str):
        raise ConfigError(source=source.label, expected="a string", actual=_show(raw))
    return raw


def _range_words(spec: OptionSpec) -> str:
    unit = " number of milliseconds" if spec.kind is Kind.DURATION_MS else ""
    if spec.min_value is not None and spec.max_value is not None:
        return f"an integer{unit} between {spec.min_value} and {spec.max_value}"
    if spec.min_value is not None:
        return f"an integer{unit} of at least {spec.min_value}"
    return f"an integer{unit}"


def _resolve_path(raw: str, source: _Source) -> Path:
    path = Path(raw).expanduser()
    if source.base_dir is not None and not path.is_absolute():
        path = source.base_dir / path
    return path


def _validate(spec: OptionSpec, value: object, source: _Source) -> object:
    """Check a typed boundary value against the spec; return it normalized."""
    if isinstance(value, int) and not isinstance(value, bool):
        if (spec.min_value is not None and value < spec.min_value) or (
            spec.max_value is not None and value > spec.max_value
        ):
            raise ConfigError(source=source.label, expected=_range_words(spec), actual=_show(value))
        return value
    if spec.kind is Kind.PATH and isinstance(value, str):
        path = _resolve_path(value, source)
        if not path.is_file():
            raise ConfigError(source=source.label, expected="an existing file", actual=_show(str(path)))
        return path
    if spec.kind is Kind.MODEL and isinstance(value, str):
        if value == BUNDLED_MODEL:
            return value
        path = _resolve_path(value, source)
        if path.suffix != ".safetensors" or not path.is_file():
            raise ConfigError(
                source=source.label,
                expected=f"{BUNDLED_MODEL!r} or an existing .safetensors file",
                actual=_show(str(path)),
            )
        return str(path)
    if isinstance(value, str):
        if spec.choices:
            folded = value.strip().lower()
            if folded not in spec.choices:
                raise ConfigError(
                    source=source.label, expected="one of " + ", ".join(spec.choices), actual=_show(value)
                )
            return folded
        if spec.check is not None:
            expected = spec.check(value)
            if expected is not None:
                raise ConfigError(source=source.label, expected=expected, actual=_show(value))
    return value


def _parse(spec: OptionSpec, raw: object, source: _Source) -> object:
    if source.origin is _Origin.FILE:
        typed = _from_toml(spec, raw, source)
    elif isinstance(raw, str):
        typed = _from_text(spec, raw, source)
    else:  # BooleanOptionalAction hands over a bool
        typed = raw
    return _validate(spec, typed, source)


# -------------------------------------------------------------------------------------------- hotwords


def _check_hotword(phrase: object, boost: object, *, source: str) -> Hotword:
    if not isinstance(phrase, str) or not phrase.strip() or any(c in phrase for c in "\t\r\n"):
        raise ConfigError(
            source=source, expected="a non-empty phrase without tabs or line breaks", actual=_show(phrase)
        )
    if isinstance(boost, bool) or not isinstance(boost, int | float) or not math.isfinite(boost) or boost <= 0:
        raise ConfigError(source=source, expected="a positive finite boost", actual=_show(boost))
    return Hotword(phrase.strip(), float(boost))


def _hotwords_from_toml(raw: object, source: _Source) -> tuple[Hotword, ...]:
    expected_table = "an array of tables [[serve.hotwords]] with phrase and boost"
    if not isinstance(raw, list):
        raise ConfigError(source=source.label, expected=expected_table, actual=_show(raw))
    hotwords: list[Hotword] = []
    for index, entry in enumerate(raw):
        where = f"{source.label}[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(source=where, expected=expected_table, actual=_show(entry))
        for key in entry:
            if key not in ("phrase", "boost"):
                raise ConfigError(source=where, expected="only the keys phrase and boost", actual=_show(key))
        if "phrase" not in entry:
            raise ConfigError(source=where, expected="a phrase key", actual="none")
        hotwords.append(
            _check_hotword(entry["phrase"], entry.get("boost", DEFAULT_HOTWORD_BOOST), source=where)
        )
    return tuple(hotwords)


def load_hotwords_file(path: Path) -> tuple[Hotword, ...]:
    """Read a hotwords file: UTF-8, one ``phrase[<TAB>boost]`` per line.

    Blank lines and lines starting with ``#`` are skipped; a missing boost means DEFAULT_HOTWORD_BOOST.

    Raises:
        ConfigError: the file cannot be read, or a line is malformed (the message names file and line).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            source=f"hotwords file {path}", expected="a readable UTF-8 file", actual=str(exc)
        ) from exc
    hotwords: list[Hotword] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"hotwords file {path} line {number}"
        fields = line.split("\t")
        if len(fields) > 2:
            raise ConfigError(source=where, expected="'phrase' or 'phrase<TAB>boost'", actual=_show(line))
        boost: object = DEFAULT_HOTWORD_BOOST
        if len(fields) == 2:
            try:
                boost = float(fields[1])
            except ValueError:
                raise ConfigError(source=where, expected="a positive finite boost", actual=_show(fields[1])) from None
        hotwords.append(_check_hotword(fields[0], boost, source=where))
    return tuple(hotwords)


# ------------------------------------------------------------------------------------------ the file


def _read_config_file(path: Path, source: _Source) -> tuple[dict[str, object], _Source]:
    """Load the [serve] table; return it with the source that file values are reported under."""
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(
            source=source.label, expected="a readable TOML file", actual=f"{str(path)!r} ({exc.strerror})"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source=f"config file {path}", expected="valid TOML", actual=str(exc)) from exc

    for key in document:
        if key != FILE_SECTION:
            raise ConfigError(
                source=f"config file {path}", expected=f"only a [{FILE_SECTION}] table", actual=f"key {key!r}"
            )
    section = document.get(FILE_SECTION, {})
    if not isinstance(section, dict):
        raise ConfigError(
            source=f"config file {path} key {FILE_SECTION}", expected="a table", actual=_show(section)
        )
    for key in section:
        if key not in _SPECS_BY_NAME:
            close = difflib.get_close_matches(key, list(_SPECS_BY_NAME), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                source=f"config file {path}",
                expected=f"a known key of [{FILE_SECTION}]{hint}",
                actual=f"unknown key {FILE_SECTION}.{key}",
            )
    return dict(section), _Source(_Origin.FILE, f"config file {path}", base_dir=path.parent)


# ------------------------------------------------------------------------------------------- resolve


def _cross_check(chosen: Mapping[str, tuple[object, _Source]]) -> None:
    cert, cert_source = chosen["tls_cert"]
    key, key_source = chosen["tls_key"]
    if (cert is None) != (key is None):
        present, missing = ("tls_cert", "tls_key") if key is None else ("tls_key", "tls_cert")
        label = (cert_source if key is None else key_source).label
        raise ConfigError(
            source=label,
            expected=f"{missing} to be set as well (TLS needs both tls_cert and tls_key, or neither)",
            actual=f"{present} alone",
        )

    jwt_key, jwt_key_source = chosen["auth_jwt_key"]
    algorithms, algorithms_source = chosen["auth_jwt_algorithms"]
    if (jwt_key is None) != (algorithms == ""):
        present, missing = ("auth_jwt_algorithms", "auth_jwt_key") if jwt_key is None else (
            "auth_jwt_key", "auth_jwt_algorithms")
        raise ConfigError(
            source=(algorithms_source if jwt_key is None else jwt_key_source).label,
            expected=f"{missing} to be set as well (JWT verification needs a key and its algorithms, or neither)",
            actual=f"{present} alone",
        )
    for name in ("auth_jwt_audience", "auth_jwt_issuer"):
        value, source = chosen[name]
        if value != "" and jwt_key is None:
            raise ConfigError(source=source.label, expected="auth_jwt_key and auth_jwt_algorithms to be set "
                              f"({name} only applies to JWTs)", actual=f"{name} alone")

    seen: dict[int, str] = {}
    names = ["ws_port", "metrics_port", "grpc_port", "sip_port", "mrcp_port"]
    if cert is not None:  # the TLS listeners of MRCP exist only with a certificate
        names += ["sips_port", "mrcp_tls_port"]
    for name in names:
        port, source = chosen[name]
        assert isinstance(port, int)
        if port == 0:
            continue
        if port in seen:
            raise ConfigError(
                source=source.label, expected=f"a port other than {seen[port]}'s", actual=_show(port)
            )
        seen[port] = name

    silence, silence_source = chosen["endpoint_silence_ms"]
    utterance, _ = chosen["max_utterance_ms"]
    assert isinstance(silence, int) and isinstance(utterance, int)
    if silence >= utterance:
        raise ConfigError(
            source=silence_source.label,
            expected=f"less than max_utterance_ms ({utterance})",
            actual=_show(silence),
        )


def _to_field(spec: OptionSpec, value: object) -> object:
    if spec.closed_set is not None:
        assert isinstance(value, str)
        return spec.closed_set(value)
    if spec.kind is Kind.DURATION_MS:
        assert isinstance(value, int)
        return value / 1000.0
    if spec.kind is Kind.PATH and isinstance(value, str):  # only a default can still be a str here
        return Path(value)
    return value


def resolve_serve_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> ServeSettings:
    """Combine flags, environment, config file and defaults into ServeSettings.

    Args:
        args: the namespace from a parser set up by add_serve_arguments (missing attributes count as
            flags not given, so a hand-made Namespace works in tests).
        environ: usually ``os.environ``. An empty variable counts as unset.

    Returns:
        The settings, durations in seconds, hotwords from the file table and the hotwords file merged.

    Raises:
        ConfigError: any set value is malformed or out of range, the file has an unknown key, an
            ``XLGATE_`` variable names no option, or two options contradict each other. The message names
            the flag, variable or file key (with a did-you-mean for an unknown name).
    """
    config_raw: str | None = getattr(args, "config", None)
    config_source = _Source(_Origin.FLAG, "flag --config")
    if config_raw is None and environ.get(CONFIG_ENV_VAR):
        config_raw = environ[CONFIG_ENV_VAR]
        config_source = _Source(_Origin.ENV, f"environment variable {CONFIG_ENV_VAR}")
    file_values: dict[str, object] = {}
    file_source = _DEFAULT_SOURCE
    if config_raw is not None:
        file_values, file_source = _read_config_file(Path(config_raw).expanduser(), config_source)

    for name in unknown_environment_variables(environ):
        close = difflib.get_close_matches(name, _known_environment_variables(), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(source=f"environment variable {name}", expected=f"a known {ENV_PREFIX} variable{hint}",
                          actual="an unknown name")

    chosen: dict[str, tuple[object, _Source]] = {}
    for spec in OPTION_SPECS:
        candidates: list[tuple[object, _Source]] = []
        if not spec.file_only:
            flag_value = getattr(args, spec.name, None)
            if flag_value is not None:
                candidates.append((flag_value, _Source(_Origin.FLAG, f"flag {spec.flag}")))
            env_value = environ.get(spec.env_var, "")
            if env_value != "":
                candidates.append((env_value, _Source(_Origin.ENV, f"environment variable {spec.env_var}")))
        if spec.file_key in file_values:
            file_key_source = _Source(
                _Origin.FILE,
                f"{file_source.label} key {FILE_SECTION}.{spec.file_key}",
                base_dir=file_source.base_dir,
            )
            candidates.append((file_values[spec.file_key], file_key_source))
        parsed = [(_parse(spec, raw, source), source) for raw, source in candidates]
        chosen[spec.name] = parsed[0] if parsed else (spec.default, _DEFAULT_SOURCE)

    _cross_check(chosen)

    values: dict[str, Any] = {spec.field_name: _to_field(spec, chosen[spec.name][0]) for spec in OPTION_SPECS}
    hotwords_file = values["hotwords_file"]
    if hotwords_file is not None:
        values["hotwords"] = merge_hotwords(values["hotwords"], load_hotwords_file(hotwords_file))
    else:
        values["hotwords"] = merge_hotwords(values["hotwords"])
    return ServeSettings(**values)


def _known_environment_variables() -> list[str]:
    return [spec.env_var for spec in OPTION_SPECS if not spec.file_only] + [CONFIG_ENV_VAR]


def unknown_environment_variables(environ: Mapping[str, str]) -> list[str]:
    """Names of ``XLGATE_*`` variables that match no option: likely typos, refused by
    :func:`resolve_serve_settings` (with a did-you-mean) rather than silently ignored."""
    known = set(_known_environment_variables())
    return sorted(name for name in environ if name.startswith(ENV_PREFIX) and name not in known)


# ------------------------------------------------------------------------------------------------ docs


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown() -> str:
    """Render docs/configuration.md from OPTION_SPECS (regenerate with ``python -m gateway.config``)."""
    lines = [
        "# Configuration",
        "",
        "<!-- Generated from gateway/config.py by `python -m gateway.config > docs/configuration.md`.",
        "     Do not edit by hand: tests/test_config.py fails when this file and the generator differ. -->",
        "",
        "`xlgate serve` reads each option from four places; the first that sets it wins:",
        "",
        "1. a command-line flag (`--ws-port 9000`);",
        f"2. an environment variable (`{ENV_PREFIX}WS_PORT=9000`);",
        f"3. the `[{FILE_SECTION}]` table of the TOML file named by `--config PATH` "
        f"(or `{CONFIG_ENV_VAR}`), e.g. `ws_port = 9000`;",
        "4. the built-in default.",
        "",
        "Rules that apply to every option:",
        "",
        "- Every value that is set is validated, even one a higher source overrides; an error names the",
        "  flag, variable or file key, what was expected and what was found.",
        "- An environment variable set to the empty string counts as unset.",
        "- Booleans in environment variables accept `1`/`0`, `true`/`false`, `yes`/`no`, `on`/`off`",
        "  (any case); as flags they are `--name` / `--no-name`; in the file they are TOML booleans.",
        "- Choices are matched case-insensitively.",
        "- Durations are integer milliseconds and their names end in `_ms`.",
        "- Relative paths in the file are relative to the file's directory; relative paths in flags and",
        "  variables are relative to the working directory. `~` is expanded. Files must exist.",
        f"- A key the `[{FILE_SECTION}]` table does not know, a table other than `[{FILE_SECTION}]`, and an",
        f"  `{ENV_PREFIX}*` variable that names no option are errors, with a did-you-mean for a near name.",
        "",
        "## Options",
    ]
    groups: dict[str, list[OptionSpec]] = {}
    for spec in OPTION_SPECS:
        groups.setdefault(spec.group, []).append(spec)
    for group, specs in groups.items():
        lines += [
            "",
            f"### {group}",
            "",
            "| File key | Flag | Environment variable | Default | Accepts | Description |",
            "|---|---|---|---|---|---|",
        ]
        for spec in specs:
            flag = "—" if spec.file_only else f"`{spec.flag}`"
            if spec.kind is Kind.BOOL:
                flag = f"`{spec.flag}`, `--no-{spec.flag[2:]}`"
            env = "—" if spec.file_only else f"`{spec.env_var}`"
            accepts = spec.constraint_text() or spec.kind.value
            if spec.kind is Kind.BOOL:
                accepts = "boolean"
            elif spec.kind is Kind.HOTWORDS:
                accepts = "array of tables"
            lines.append(
                f"| `{spec.file_key}` | {flag} | {env} | `{spec.default_text()}` | {_md_cell(accepts)} "
                f"| {_md_cell(spec.help)} |"
            )
    lines += [
        "",
        "## Hotwords",
        "",
        "Hotwords come from two places, which are combined: `[[serve.hotwords]]` tables in the config file,",
        "and the file named by `hotwords_file`. When both list a phrase, the hotwords file's boost wins.",
        f"A missing boost is {DEFAULT_HOTWORD_BOOST}; boosts must be positive.",
        "",
        "```toml",
        "[[serve.hotwords]]",
        'phrase = "account number"',
        "boost = 2.0",
        "",
        "[[serve.hotwords]]",
        'phrase = "Xenon Mobile"',
        "```",
        "",
        "A hotwords file is UTF-8 text with one `phrase` or `phrase<TAB>boost` per line; blank lines and",
        "lines starting with `#` are skipped.",
        "",
        "## Example file with every default",
        "",
        "```toml",
        f"[{FILE_SECTION}]",
    ]
    for spec in OPTION_SPECS:
        if spec.kind is Kind.HOTWORDS:
            continue
        if spec.default is None:
            lines.append(f'# {spec.file_key} = "..."')
        else:
            lines.append(f"{spec.file_key} = {_toml_value(spec.default)}")
    lines += ["```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown(), end="")
