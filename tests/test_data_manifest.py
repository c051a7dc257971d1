from pathlib import Path

import pytest

from streaming_model.data.manifest import (
    ManifestError,
    Utterance,
    read_manifest,
    resolve_audio,
    write_manifest,
)


def test_round_trip(tmp_path: Path) -> None:
    utts = [
        Utterance(
            "wav/a.wav",
            "hello there",
            1.25,
            voice="espeak:en-us+m3",
            subset="banking",
            channel="mulaw+white20",
        ),
        Utterance("/abs/b.wav", "it's two thirty", 0.5),
    ]
    path = tmp_path / "m.jsonl"
    write_manifest(path, utts)
    assert read_manifest(path) == utts
    assert resolve_audio(path, utts[0]) == tmp_path / "wav/a.wav"
    assert resolve_audio(path, utts[1]) == Path("/abs/b.wav")


def test_only_required_fields_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio": "x.wav", "text": "hi", "duration_s": 2}\n\n')
    assert read_manifest(path) == [Utterance("x.wav", "hi", 2.0)]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"audio": "x.wav", "text": "hi"}', "missing required field(s) duration_s"),
        ('{"audio": "", "text": "hi", "duration_s": 1}', "'audio' must be a non-empty string"),
        ('{"audio": "x.wav", "text": 3, "duration_s": 1}', "'text' must be a string"),
        ('{"audio": "x.wav", "text": "hi", "duration_s": -1}', "'duration_s' must be a positive number"),
        ('{"audio": "x.wav", "text": "hi", "duration_s": true}', "'duration_s' must be a positive number"),
        ('{"audio": "x.wav", "text": "hi", "duration_s": 1, "voice": 5}', "'voice' must be a string"),
    ],
)
def test_bad_line_names_line_number_and_reason(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio": "ok.wav", "text": "fine", "duration_s": 1.0}\n\n' + line + "\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    assert info.value.line_number == 3
    assert reason in str(info.value)
    assert f"{path}:3:" in str(info.value)
