"""Fields a `start` leaves out take the server's configured values, not the protocol's built-in ones."""

from __future__ import annotations

import json

from gateway.session import DecodingSettings, EndpointingSettings, StreamSettings
from gateway.session import Hotword as SessionHotword
from gateway.ws_transport import _stream_settings, _wire_defaults
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
    defaults = StreamSettings(decoding=DecodingSettings(
        hotwords=(SessionHotword("acme premium", 1.5), SessionHotword("roaming", 2.0))))
    config = StreamConfig(hotwords=(Hotword("roaming", 4.0), Hotword("xlgate", 2.0)))
    settings = _stream_settings(config, defaults)
    assert dict(settings.decoding.hotwords) == {"acme premium": 1.5, "roaming": 4.0, "xlgate": 2.0}


def test_the_protocols_documented_defaults_are_the_session_defaults() -> None:
    """protocol v1 documents its defaults on the wire (docs/websocket-protocol.md); the session API declares
    the server's; they must agree, and a start converts back to exactly the session settings."""
    assert _wire_defaults(StreamSettings()) == StreamConfig()
    assert Hotword("x").boost == SessionHotword("x").boost
    assert _stream_settings(StreamConfig(), StreamSettings()) == StreamSettings()


def test_server_defaults_round_trip_through_the_wire() -> None:
    server = StreamSettings(endpointing=EndpointingSettings(silence_s=0.6, max_utterance_s=15.0),
                            decoding=DecodingSettings(method="beam", beam_size=6))
    config = start(Connection(defaults=_wire_defaults(server)))
    assert _stream_settings(config, server) == server
