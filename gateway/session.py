"""The session API's domain types: what every protocol converts its wire messages into.

A protocol adapter (WebSocket today; MRCPv2, gRPC and the telephony dialects next) turns its wire message
into a :class:`StreamSettings` and nothing else, opens streams with
:meth:`gateway.engine.Engine.open_streams`, and ends each with an :class:`Outcome`. Defaults are declared
here once; protocol and configuration layers take theirs from these. See docs/session-api.md.
"""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    """How a stream (or a session) ended: the closed set of the ``outcome`` label of
    ``xlgate_streams_ended_total``, and what a session's last log line says."""

    COMPLETED = "completed"  # the client said stop (or the file ended): every final went out
    CLIENT_CLOSED = "client_closed"  # the client went away without stop: a hang-up, not an error
    IDLE_TIMEOUT = "idle_timeout"  # the client sent nothing for the idle timeout: finalised and closed
    DRAINED = "drained"  # the server shut down: finalised and closed
    ERROR = "error"  # a fatal protocol error of the client's, or a failure of ours
    ABORTED = "aborted"  # dropped by the engine's owner (engine closed) without finals
    REJECTED = "rejected"  # a session refused at admission (no stream was opened)
