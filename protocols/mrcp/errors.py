"""Errors of the MRCPv2 protocol (RFC 6787).

Each class carries its wire reply as class attributes: ``status_code`` is the MRCP status code of the
response (RFC 6787 §5.4), ``completion_cause`` the recognizer Completion-Cause (RFC 6787 §9.4.11) where the
failure ends a request that way, and ``fatal`` tells the connection to close because the byte stream can no
longer be framed (a peer whose message-length lies cannot be answered reliably).
"""

from __future__ import annotations

from typing import ClassVar

from protocols.errors import GatewayError, LocalProtocolError, RemoteProtocolError

__all__ = [
    "BodyLengthMismatch",
    "ChannelNotFound",
    "GrammarCompilationFailure",
    "GrammarLoadFailure",
    "GrammarTooLarge",
    "IllegalHeaderValue",
    "InvalidMessageLength",
    "MalformedMessage",
    "MandatoryHeaderMissing",
    "MessageTooLarge",
    "MethodNotAllowed",
    "MethodNotValid",
    "MrcpError",
    "MrcpLocalError",
    "MrcpRemoteError",
    "TooManyHeaders",
    "TooManyPhrases",
    "TruncatedMessage",
    "UnsupportedEntity",
    "UnsupportedVersion",
    "UriFailure",
]


class MrcpError(GatewayError):
    """Root of the MRCP errors; answered with ``status_code`` (501 Server Internal Error by default)."""

    code: ClassVar[str] = "mrcp_error"
    status_code: ClassVar[int] = 501
    completion_cause: ClassVar[str | None] = None
    fatal: ClassVar[bool] = False


class MrcpLocalError(MrcpError, LocalProtocolError):
    """xlgate misused an MRCP object (a bug of ours); goes out as a generic 501."""

    code: ClassVar[str] = "mrcp_local_error"


class MrcpRemoteError(MrcpError, RemoteProtocolError):
    """The MRCP client broke the protocol."""

    code: ClassVar[str] = "mrcp_remote_error"
    status_code: ClassVar[int] = 408


class MalformedMessage(MrcpRemoteError):
    """The start line or a header line cannot be parsed (RFC 6787 §5); the stream cannot be framed."""

    code: ClassVar[str] = "mrcp_malformed_message"
    status_code: ClassVar[int] = 408
    fatal: ClassVar[bool] = True


class TruncatedMessage(MalformedMessage):
    """Fewer bytes than the message-length announces (or not even a complete start line)."""

    code: ClassVar[str] = "mrcp_truncated_message"


class InvalidMessageLength(MalformedMessage):
    """The message-length field is not a number or cannot hold the start line it is part of."""

    code: ClassVar[str] = "mrcp_invalid_message_length"


class MessageTooLarge(MalformedMessage):
    """The message-length exceeds the connection's ``max_message_bytes`` (RFC 6787 §5.4: 504).

    ``request_id`` is the request's id when its start line was readable, so the 504 can be sent before the
    connection closes.
    """

    code: ClassVar[str] = "mrcp_message_too_large"
    status_code: ClassVar[int] = 504
    limit: ClassVar[str | None] = "mrcp_message_bytes"

    def __init__(self, message: str, *, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class TooManyHeaders(MrcpRemoteError):
    """A well-framed message with more header lines than the connection's ``max_headers``: answered 504
    (the message is too large in headers; RFC 6787 §5.4 has no closer code) and the connection goes on."""

    code: ClassVar[str] = "mrcp_too_many_headers"
    status_code: ClassVar[int] = 504
    limit: ClassVar[str | None] = "mrcp_headers"

    def __init__(self, message: str, *, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class UnsupportedVersion(MalformedMessage):
    """The version is not ``MRCP/2.0`` (RFC 6787 §5.4: 502)."""

    code: ClassVar[str] = "mrcp_unsupported_version"
    status_code: ClassVar[int] = 502


class BodyLengthMismatch(MrcpRemoteError):
    """Content-Length disagrees with the body the message-length delimits."""

    code: ClassVar[str] = "mrcp_body_length_mismatch"
    status_code: ClassVar[int] = 408


class MethodNotAllowed(MrcpRemoteError):
    """A method this resource does not implement (RFC 6787 §5.4: 401)."""

    code: ClassVar[str] = "mrcp_method_not_allowed"
    status_code: ClassVar[int] = 401


class MethodNotValid(MrcpRemoteError):
    """A method that is not valid in the channel's current state (RFC 6787 §5.4: 402)."""

    code: ClassVar[str] = "mrcp_method_not_valid"
    status_code: ClassVar[int] = 402


class IllegalHeaderValue(MrcpRemoteError):
    """A header's value is malformed or out of range (RFC 6787 §5.4: 404)."""

    code: ClassVar[str] = "mrcp_illegal_header_value"
    status_code: ClassVar[int] = 404


class ChannelNotFound(MrcpRemoteError):
    """The Channel-Identifier names no channel allocated by a SIP session (RFC 6787 §5.4: 405)."""

    code: ClassVar[str] = "mrcp_channel_not_found"
    status_code: ClassVar[int] = 405


class MandatoryHeaderMissing(MrcpRemoteError):
    """A header the method requires is missing, e.g. Channel-Identifier (RFC 6787 §5.4: 406)."""

    code: ClassVar[str] = "mrcp_mandatory_header_missing"
    status_code: ClassVar[int] = 406


class UnsupportedEntity(MrcpRemoteError):
    """A body of a content type this method cannot take (RFC 6787 §5.4: 408)."""

    code: ClassVar[str] = "mrcp_unsupported_entity"
    status_code: ClassVar[int] = 408


class GrammarCompilationFailure(MrcpRemoteError):
    """A grammar does not parse or has no usable rule (Completion-Cause 005)."""

    code: ClassVar[str] = "mrcp_grammar_compilation_failure"
    status_code: ClassVar[int] = 407
    completion_cause: ClassVar[str | None] = "005 grammar-compilation-failure"


class GrammarTooLarge(GrammarCompilationFailure):
    """An inline grammar body over the server's ``max_grammar_bytes`` (Completion-Cause 005)."""

    code: ClassVar[str] = "mrcp_grammar_too_large"
    limit: ClassVar[str | None] = "grammar_bytes"


class TooManyPhrases(GrammarCompilationFailure):
    """A grammar that expands to more phrases than the server's ``max_grammar_phrases`` (Completion-Cause
    005): a hostile ``repeat="0-"`` or a cross product is cut here, before it costs memory."""

    code: ClassVar[str] = "mrcp_too_many_phrases"
    limit: ClassVar[str | None] = "grammar_phrases"


class GrammarLoadFailure(MrcpRemoteError):
    """A referenced grammar is not defined or could not be loaded (Completion-Cause 004)."""

    code: ClassVar[str] = "mrcp_grammar_load_failure"
    status_code: ClassVar[int] = 407
    completion_cause: ClassVar[str | None] = "004 grammar-load-failure"


class UriFailure(MrcpRemoteError):
    """A grammar URI the server refuses to fetch (network URIs not allow-listed) (Completion-Cause 009)."""

    code: ClassVar[str] = "mrcp_uri_failure"
    status_code: ClassVar[int] = 407
    completion_cause: ClassVar[str | None] = "009 uri-failure"
