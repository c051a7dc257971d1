"""A small standard audio folder for the bench: contact-center sentences spoken by espeak-ng.

Only espeak-ng's ``en-us`` / ``en`` voices and their variants are used here: the flite, festival and
piper voices are kept out of bench audio because they are reserved for evaluation.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from loadtest.audio import read_audio

ESPEAK_TIMEOUT_S = 30.0
SAMPLE_RATE_HZ = 8000
VOICES = ("en-us", "en-us+f2", "en+m3", "en-us+f4")
WORDS_PER_MINUTE = 160

# Numbers are spelt out so that the reference and any recogniser agree on the written form.
SENTENCES = (
    "Thank you for calling, how can I help you today?",
    "I would like to check the balance on my savings account please.",
    "Can you tell me why my last bill was higher than usual?",
    "I need to change the delivery address for my order to my office.",
    "Please hold the line while I transfer you to the billing department.",
    "My internet connection keeps dropping every evening after seven.",
    "I want to cancel my subscription and get a refund for this month.",
    "Could you confirm your date of birth and the last four digits of your card?",
    "The technician will arrive tomorrow morning between nine and eleven.",
    "I was charged twice for the same purchase and I would like that fixed.",
    "Is there anything else I can help you with before we end the call?",
    "Your request has been approved and you will receive an email confirmation shortly.",
)


def synthesize(text: str, *, voice: str, out_path: Path) -> float:
    """Speak ``text`` with espeak-ng into an 8 kHz mono 16-bit WAV.

    Returns:
        The duration in seconds.

    Raises:
        RuntimeError: espeak-ng is missing or failed.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng not found: apt-get install espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        proc = subprocess.run(
            [exe, "-v", voice, "-s", str(WORDS_PER_MINUTE), "-w", str(raw), text],
            capture_output=True, timeout=ESPEAK_TIMEOUT_S, check=False,
        )
        if proc.returncode != 0 or not raw.exists():
            raise RuntimeError(f"espeak-ng -v {voice} failed: {proc.stderr.decode(errors='replace')[:400]}")
        x = read_audio(raw, sample_rate_hz=SAMPLE_RATE_HZ)
    # espeak pads with a little silence; keep 150 ms either side of the speech.
    loud = np.flatnonzero(np.abs(x.astype(np.int32)) > 200)
    if loud.size:
        pad = int(0.15 * SAMPLE_RATE_HZ)
        x = x[max(loud[0] - pad, 0) : loud[-1] + pad]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(out_path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE_HZ)
        w.writeframes(x.astype("<i2").tobytes())
    return len(x) / SAMPLE_RATE_HZ


def make_audio(out_dir: Path) -> list[tuple[str, str, float]]:
    """Write ``cc01.wav`` .. ``cc12.wav`` and ``refs.tsv`` into ``out_dir``.

    Returns:
        ``(id, text, duration_s)`` per file.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, float]] = []
    for i, text in enumerate(SENTENCES, 1):
        file_id = f"cc{i:02d}"
        duration_s = synthesize(text, voice=VOICES[(i - 1) % len(VOICES)], out_path=out_dir / f"{file_id}.wav")
        rows.append((file_id, text, duration_s))
    (out_dir / "refs.tsv").write_text("".join(f"{fid}\t{text}\n" for fid, text, _ in rows), encoding="utf-8")
    return rows
