"""Recognizer parameters (RFC 6787 §9.4): header parsing, defaults, and vendor parameters.

Session defaults are set with SET-PARAMS and read with GET-PARAMS; a RECOGNIZE may override any of them
for that request only. Times are seconds inside the program and milliseconds on the wire.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocols.mrcp.errors import IllegalHeaderValue
from protocols.mrcp.events import Headers

__all__ = [
    "VENDOR_AUDIO_END_MS",
    "VENDOR_CONTINUOUS",
    "VENDOR_PARTIAL_RESULTS",
    "RecognizerParams",
    "apply_headers",
    "params_to_headers",
]

VENDOR_PARTIAL_RESULTS = "xlgate.partial-results"  # true: INTERMEDIATE-RESULT events while speaking
VENDOR_CONTINUOUS = "xlgate.continuous"  # true: keep the audio and model memory across RECOGNIZE requests
# In INTERMEDIATE-RESULT events (server to client): the request's audio the partial covers, milliseconds.
VENDOR_AUDIO_END_MS = "xlgate.audio-end-ms"
_MAX_TIMEOUT_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class RecognizerParams:
    """Every recognizer parameter a channel honours, with xlgate's defaults.

    A timeout of 0 disables No-Input-Timeout and Recognition-Timeout (the RFC leaves 0 open; an
    immediate timeout would make the request useless).
    """

    no_input_timeout_s: float = 5.0
    recognition_timeout_s: float = 15.0
    speech_complete_timeout_s: float = 0.8
    speech_incomplete_timeout_s: float = 1.5
    dtmf_interdigit_timeout_s: float = 5.0
    dtmf_term_timeout_s: float = 2.0
    dtmf_term_char: str | None = None
    confidence_threshold: float = 0.5
    sensitivity_level: float = 0.5
    speed_vs_accuracy: float = 0.5
    n_best_list_length: int = 1
    speech_language: str = "en-US"
    start_input_timers: bool = True
    save_waveform: bool = False
    clear_dtmf_buffer: bool = False
    early_no_match: bool = False
    recognition_mode: str = "normal"
    media_type: str | None = None
    logging_tag: str | None = None
    partial_results: bool = False
    continuous: bool = False
    vendor_parameters: tuple[tuple[str, str], ...] = ()


def _ms(value: str) -> float:
    if not value.isdigit() or int(value) > _MAX_TIMEOUT_MS:
        raise ValueError(f"expected milliseconds 0..{_MAX_TIMEOUT_MS}")
    return int(value) / 1000.0


def _unit(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError("expected a number from 0.0 to 1.0")
    return number


def _bool(value: str) -> bool:
    if value.lower() not in {"true", "false"}:
        raise ValueError("expected true or false")
    return value.lower() == "true"


def _n_best(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 100:
        raise ValueError("expected 1 to 100")
    return int(value)


def _term_char(value: str) -> str | None:
    if value == "":
        return None
    if len(value) != 1 or value not in "0123456789*#ABCD":
        raise ValueError("expected one DTMF key")
    return value


def _mode(value: str) -> str:
    if value.lower() not in {"normal", "hotword"}:
        raise ValueError("expected normal or hotword")
    return value.lower()


def _text(value: str) -> str:
    return value


# header name (lower case) -> (field, parser, formatter)
_HEADERS: dict[str, tuple[str, str, Callable[[str], Any], Callable[[Any], str]]] = {}


def _register(name: str, field: str, parse: Callable[[str], Any], fmt: Callable[[Any], str]) -> None:
    _HEADERS[name.lower()] = (name, field, parse, fmt)


def _fmt_ms(value: float) -> str:
    return str(round(value * 1000))


def _fmt_bool(value: bool) -> str:
    return "true" if value else "false"


def _fmt_opt(value: str | None) -> str:
    return value or ""


_register("No-Input-Timeout", "no_input_timeout_s", _ms, _fmt_ms)
_register("Recognition-Timeout", "recognition_timeout_s", _ms, _fmt_ms)
_register("Speech-Complete-Timeout", "speech_complete_timeout_s", _ms, _fmt_ms)
_register("Speech-Incomplete-Timeout", "speech_incomplete_timeout_s", _ms, _fmt_ms)
_register("DTMF-Interdigit-Timeout", "dtmf_interdigit_timeout_s", _ms, _fmt_ms)
_register("DTMF-Term-Timeout", "dtmf_term_timeout_s", _ms, _fmt_ms)
_register("DTMF-Term-Char", "dtmf_term_char", _term_char, _fmt_opt)
_register("Confidence-Threshold", "confidence_threshold", _unit, lambda v: f"{v:.2f}")
_register("Sensitivity-Level", "sensitivity_level", _unit, lambda v: f"{v:.2f}")
_register("Speed-Vs-Accuracy", "speed_vs_accuracy", _unit, lambda v: f"{v:.2f}")
_register("N-Best-List-Length", "n_best_list_length", _n_best, str)
_register("Speech-Language", "speech_language", _text, str)
_register("Start-Input-Timers", "start_input_timers", _bool, _fmt_bool)
_register("Save-Waveform", "save_waveform", _bool, _fmt_bool)
_register("Clear-DTMF-Buffer", "clear_dtmf_buffer", _bool, _fmt_bool)
_register("Early-No-Match", "early_no_match", _bool, _fmt_bool)
_register("Recognition-Mode", "recognition_mode", _mode, str)
_register("Media-Type", "media_type", _text, _fmt_opt)
_register("Logging-Tag", "logging_tag", _text, _fmt_opt)


def _parse_vendor(value: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(";"))):
        name, _, val = item.partition("=")
        pairs[name.strip()] = val.strip().strip('"')
    return pairs


def apply_headers(params: RecognizerParams, headers: Headers) -> RecognizerParams:
    """``params`` updated by every recognizer header in ``headers``.

    Headers this resource does not interpret (Cancel-If-Queue, Fetch-Timeout, Input-Type, ...) are
    accepted and ignored, so a client's full header set never fails a request.

    Raises:
        IllegalHeaderValue: a known header with a malformed or out-of-range value (RFC 6787 §5.4: 404).
    """
    changes: dict[str, Any] = {}
    vendor = dict(params.vendor_parameters)
    for name, value in headers:
        key = name.lower()
        if key == "vendor-specific-parameters":
            vendor.update(_parse_vendor(value))
            continue
        spec = _HEADERS.get(key)
        if spec is None:
            continue
        try:
            changes[spec[1]] = spec[2](value.strip())
        except ValueError as exc:
            raise IllegalHeaderValue(f"{spec[0]}: {value[:40]!r}: {exc}") from None
    for name, field in ((VENDOR_PARTIAL_RESULTS, "partial_results"), (VENDOR_CONTINUOUS, "continuous")):
        if name in vendor:
            try:
                changes[field] = _bool(vendor[name])
            except ValueError:
                raise IllegalHeaderValue(
                    f"Vendor-Specific-Parameters {name}={vendor[name][:20]!r}: expected true or false"
                ) from None
    changes["vendor_parameters"] = tuple(vendor.items())
    return dataclasses.replace(params, **changes)


def params_to_headers(params: RecognizerParams, names: tuple[str, ...] = ()) -> Headers:
    """The GET-PARAMS answer: the named headers, or every recognizer header when ``names`` is empty."""
    wanted = [n.lower() for n in names] if names else list(_HEADERS)
    headers: list[tuple[str, str]] = []
    for key in wanted:
        if key == "vendor-specific-parameters" or (not names and key == "vendor-specific-parameters"):
            continue
        spec = _HEADERS.get(key)
        if spec is not None:
            headers.append((spec[0], spec[3](getattr(params, spec[1]))))
    vendor_wanted = not names or "vendor-specific-parameters" in wanted
    if vendor_wanted and params.vendor_parameters:
        headers.append(
            ("Vendor-Specific-Parameters", ";".join(f"{k}={v}" for k, v in params.vendor_parameters))
        )
    return tuple(headers)
