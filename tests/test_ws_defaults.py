"""Fields a `start` leaves out take the server's configured values, not the protocol's built-in ones."""

from __future__ import annotations

import json

from gateway.ws_transport import WebSocketSettings, _stream_params
from protocols.websocket.connection import Connection
from protocols.websocket.events import (
    DecodingMethod,
    DecodingParams,
    EndpointingParams,
    Hotword,
    StreamConfig,
    StreamStartRequested,
)

SERVER = StreamConfig(endpointing=EndpointingParams(silence_ms=600, max_utterance_ms=15000),
                      decoding=DecodingParams(method=DecodingMethod.BEAM, beam_size=6))


def start(conn: Connection, **fields: object) -> StreamConfig:
    (event,) = conn.receive_text(json.dumps({"type": "start", **fields}))
    assert isinstance(event, StreamStartRequested)
    return event.config


def test_absent_fields_take_server_defaults() -> None:
    config = start(Connection(defaults=SERVER))
    assert config.endpointing == SERVER.endpointing
    assert config.decoding == SERVER.decoding


def test_partial_objects_fill_from_server_defaults() -> None:
    config = start(Connection(defaults=SERVER), endpointing={"silence_ms": 300}, decoding={"beam_size": 3})
    assert config.endpointing == EndpointingParams(silence_ms=300, max_utterance_ms=15000)
    assert config.decoding == DecodingParams(method=DecodingMethod.BEAM, beam_size=3)


def test_without_server_defaults_the_documented_ones_apply() -> None:
    config = start(Connection())
    assert config.endpointing == EndpointingParams()
    assert config.decoding == DecodingParams()


def test_server_hotwords_merge_with_the_stream_list_stream_boost_wins() -> None:
    settings = WebSocketSettings(max_frame_bytes=64000, idle_timeout_s=10,
                                 default_hotwords=(("acme premium", 1.5), ("roaming", 2.0)))
    config = StreamConfig(hotwords=(Hotword("roaming", 4.0), Hotword("xlgate", 2.0)))
    params = _stream_params(config, settings)
    assert dict(params.decoder.hotwords) == {"acme premium": 1.5, "roaming": 4.0, "xlgate": 2.0}
