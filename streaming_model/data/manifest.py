"""Training manifests: one JSON object per line.

Only ``audio`` (a path relative to the manifest's folder, or absolute), ``text`` and ``duration_s`` are
required, so a customer can point the trainer at their own recordings. ``voice``, ``subset`` and
``channel`` describe how a synthetic utterance was made and are optional.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_REQUIRED = ("audio", "text", "duration_s")
_OPTIONAL = ("voice", "subset", "channel")


class ManifestError(ValueError):
    """A manifest line that cannot be read; the message names the file, the line and the reason."""

    def __init__(self, path: str | os.PathLike[str], line_number: int, reason: str) -> None:
        super().__init__(f"{path}:{line_number}: {reason}")
        self.path = str(path)
        self.line_number = line_number
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Utterance:
    """One manifest entry. ``audio`` is kept exactly as written (relative to the manifest's folder)."""

    audio: str
    text: str
    duration_s: float
    voice: str | None = None
    subset: str | None = None
    channel: str | None = None

    def to_json(self) -> str:
        """One manifest line (no newline); optional fields that are None are left out."""
        record: dict[str, object] = {
            "audio": self.audio,
            "text": self.text,
            "duration_s": round(self.duration_s, 3),
        }
        for key in _OPTIONAL:
            value = getattr(self, key)
            if value is not None:
                record[key] = value
        return json.dumps(record, ensure_ascii=False)


def _parse_line(path: str | os.PathLike[str], line_number: int, line: str) -> Utterance:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ManifestError(path, line_number, f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise ManifestError(path, line_number, f"expected a JSON object, got {type(record).__name__}")
    missing = [key for key in _REQUIRED if key not in record]
    if missing:
        raise ManifestError(path, line_number, f"missing required field(s) {', '.join(missing)}")
    audio, text, duration = record["audio"], record["text"], record["duration_s"]
    if not isinstance(audio, str) or not audio:
        raise ManifestError(path, line_number, f"'audio' must be a non-empty string, got {audio!r}")
    if not isinstance(text, str):
        raise ManifestError(path, line_number, f"'text' must be a string, got {type(text).__name__}")
    if isinstance(duration, bool) or not isinstance(duration, int | float) or not duration > 0:
        raise ManifestError(path, line_number, f"'duration_s' must be a positive number, got {duration!r}")
    optional: dict[str, str | None] = {}
    for key in _OPTIONAL:
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            raise ManifestError(path, line_number, f"'{key}' must be a string, got {type(value).__name__}")
        optional[key] = value
    return Utterance(audio=audio, text=text, duration_s=float(duration), **optional)


def read_manifest(path: str | os.PathLike[str]) -> list[Utterance]:
    """Read a JSON-lines manifest; blank lines are skipped.

    Raises:
        ManifestError: for the first bad line, with its 1-based line number and the reason.
    """
    utterances = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if line.strip():
                utterances.append(_parse_line(path, line_number, line))
    return utterances


def write_manifest(path: str | os.PathLike[str], utterances: Iterable[Utterance]) -> None:
    """Write utterances as JSON lines, atomically (a temporary file renamed into place)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for utterance in utterances:
            f.write(utterance.to_json() + "\n")
    os.replace(tmp, target)


def resolve_audio(manifest_path: str | os.PathLike[str], utterance: Utterance) -> Path:
    """The audio file's path: relative paths are taken from the manifest's folder."""
    audio = Path(utterance.audio)
    return audio if audio.is_absolute() else Path(manifest_path).parent / audio
