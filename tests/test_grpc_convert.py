"""The gRPC edge (gateway/grpc_api/convert.py): RecognitionConfig in, StreamSettings out, results back."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.grpc_api import asr_pb2 as pb
from gateway.grpc_api.convert import (
    InvalidRequestError,
    ResultOptions,
    decode_chunk,
    duration,
    recognition_settings,
    seconds,
    streaming_result,
)
from gateway.session import (
    DecodingMethod,
    DecodingSettings,
    EndpointingSettings,
    Hotword,
    ResultEvent,
    StreamSettings,
)
from streaming_model.decoding import Hypothesis

SERVER = StreamSettings(endpointing=EndpointingSettings(silence_s=0.6, max_utterance_s=15.0),
                        decoding=DecodingSettings(method="beam", beam_size=6,
                                                  hotwords=(Hotword("acme premium", 1.5), Hotword("roaming"))))


def minimal(**extra: object) -> pb.RecognitionConfig:
    fields: dict[str, object] = {"encoding": pb.AUDIO_ENCODING_LINEAR16, "sample_rate_hertz": 8000, **extra}
    return pb.RecognitionConfig(**fields)  # type: ignore[arg-type]


def test_what_a_config_leaves_out_is_the_servers() -> None:
    settings, audio, options = recognition_settings(minimal(), SERVER, interim_results=True)
    assert settings == StreamSettings(sample_rate_hz=8000, interim_results=True, endpointing=SERVER.endpointing,
                                      decoding=SERVER.decoding)
    assert (audio.encoding, audio.channels, audio.streams) == ("pcm_s16le", 1, 1)
    assert options == ResultOptions(word_time_offsets=False, word_confidence=False)
    assert recognition_settings(minimal(), StreamSettings(), interim_results=True)[0] == StreamSettings()


def test_a_config_overrides_the_server() -> None:
    config = minimal(sample_rate_hertz=16000, audio_channel_count=2, enable_separate_recognition_per_channel=True,
                     decoding_method=pb.DECODING_METHOD_GREEDY, beam_size=3,
                     hotwords=[pb.Hotword(phrase="roaming", boost=4.0), pb.Hotword(phrase=" xlgate ")],
                     endpointing=pb.EndpointingConfig(disabled=True, trailing_silence=duration(0.25)))
    settings, audio, _ = recognition_settings(config, SERVER, interim_results=False)
    assert settings.sample_rate_hz == 16000 and not settings.interim_results
    assert settings.endpointing == EndpointingSettings(enabled=False, silence_s=0.25, max_utterance_s=15.0)
    assert settings.decoding.method is DecodingMethod.GREEDY and settings.decoding.beam_size == 3
    assert dict(settings.decoding.hotwords) == {"acme premium": 1.5, "roaming": 4.0, "xlgate": 2.0}
    assert audio.streams == 2


@pytest.mark.parametrize(("config", "message"), [
    (pb.RecognitionConfig(sample_rate_hertz=8000), "config.encoding: expected LINEAR16, MULAW or ALAW"),
    (minimal(sample_rate_hertz=44100), "config.sample_rate_hertz: expected 8000 or 16000, got 44100"),
    (minimal(audio_channel_count=9), "config.audio_channel_count: expected 0 to 8, got 9"),
    (minimal(max_alternatives=11), "config.max_alternatives: expected 0 to 10, got 11"),
    (minimal(beam_size=257), "config.beam_size: expected 0 to 256, got 257"),
    (minimal(decoding_method=7), "config.decoding_method: expected GREEDY or BEAM, got 7"),
    (minimal(hotwords=[pb.Hotword(phrase="  ")]), "config.hotwords[0].phrase"),
    (minimal(hotwords=[pb.Hotword(phrase="x", boost=float("inf"))]), "config.hotwords[0].boost"),
    (minimal(endpointing=pb.EndpointingConfig(max_utterance=duration(0))), "config.endpointing.max_utterance"),
    (minimal(endpointing=pb.EndpointingConfig(trailing_silence=duration(20))),
     "config.endpointing.trailing_silence: expected less than max_utterance"),
])
def test_bad_configs_name_expected_and_actual(config: pb.RecognitionConfig, message: str) -> None:
    with pytest.raises(InvalidRequestError, match="^" + message.replace("[", r"\[").replace("]", r"\]")) as caught:
        recognition_settings(config, StreamSettings(), interim_results=True)
    assert caught.value.grpc_status == "INVALID_ARGUMENT"


def test_audio_decoding_and_mix_down() -> None:
    stereo = np.array([100, -100, 300, 100], dtype="<i2")  # two frames, interleaved
    _, separate, _ = recognition_settings(minimal(audio_channel_count=2, enable_separate_recognition_per_channel=True),
                                          StreamSettings(), interim_results=True)
    left, right = decode_chunk(stereo.tobytes(), separate)
    assert left.tolist() == [100, 300] and right.tolist() == [-100, 100]
    _, mixed, _ = recognition_settings(minimal(audio_channel_count=2), StreamSettings(), interim_results=True)
    (mono,) = decode_chunk(stereo.tobytes(), mixed)
    assert mono.tolist() == [0, 200]
    with pytest.raises(InvalidRequestError, match="audio_content"):
        decode_chunk(stereo.tobytes()[:6], separate)


def test_result_offsets_and_settled_prefix() -> None:
    hyp = Hypothesis(text="hello there world", words=(), confidence=0.5, start_s=0.25, end_s=1.9, stable_words=2)
    event = ResultEvent(False, hyp, audio_end_s=1.6, arrival_s=0.0, seq=1)
    result = streaming_result(event, channel=1, options=ResultOptions(word_time_offsets=True, word_confidence=True),
                              latency_s=0.0123).result
    assert (seconds(result.start_offset), seconds(result.end_offset), seconds(result.audio_processed)) == (0.25, 1.6, 1.6)
    assert result.stable_word_count == 2 and result.stability == pytest.approx(2 / 3)
    assert seconds(result.processing_latency) == 0.012 and result.channel == 1 and not result.is_final
    assert duration(-1.0) == duration(0) and seconds(duration(2.0004)) == 2.0
