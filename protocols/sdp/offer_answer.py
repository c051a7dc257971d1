"""Answering an MRCPv2 client's SDP offer (RFC 3264 offer/answer, RFC 6787 §4.2, RFC 4733 §7).

Theory of operation: every offered m-line gets exactly one answer m-line in the same order (RFC 3264
§6). ``m=application ... TCP/MRCPv2`` lines ask for a resource (``a=resource``); a speechrecog (or
dtmfrecog) resource is accepted with ``a=setup:passive`` (the client connects, RFC 4145),
``a=connection`` echoing the offer's new/existing, ``a=channel:<id>@<resource>`` and the ``a=cmid``
mirrored; any other resource (speechsynth, recorder, ...) is declined with port 0 without failing the
session. ``TCP/TLS/MRCPv2`` (RFC 6787 §4.2, §11) is accepted the same way, pointing at the TLS MRCP
listener, when the server has one (``mrcp_tls_port``); without one it is declined. The first audio m-line is answered with the first offered codec we decode (PCMU, PCMA,
L16/8000) plus telephone-event when offered, ``recvonly`` towards a ``sendonly`` or ``sendrecv`` offer,
and the offer's ptime; other media lines are declined. An offer with no acceptable recognizer resource
or no usable audio raises :class:`NotAcceptable` (SIP 488).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass

from protocols.sdp.codec import MediaDescription, SessionDescription
from protocols.sdp.errors import NotAcceptable

__all__ = [
    "AnswerConfig",
    "AudioCodec",
    "NegotiatedAudio",
    "NegotiatedChannel",
    "Negotiation",
    "answer_offer",
]

_RECOGNIZER_RESOURCES = ("speechrecog", "dtmfrecog")


class AudioCodec(enum.StrEnum):
    """Audio payloads the gateway decodes."""

    PCMU = "PCMU"
    PCMA = "PCMA"
    L16 = "L16"


_STATIC = {"0": (AudioCodec.PCMU, 8000), "8": (AudioCodec.PCMA, 8000)}
_MAX_PAYLOAD_TYPE = 127  # RTP's payload type is 7 bits (RFC 3550 §5.1)
_NUMBER = re.compile(r"[0-9]{1,9}")  # ASCII digits: str.isdigit() takes "²", which int() refuses


@dataclass(frozen=True, slots=True)
class AnswerConfig:
    """What the server answers with.

    Attributes:
        address: the address written into ``c=`` and ``o=`` (the advertise address).
        mrcp_port: the MRCP TCP port written into accepted ``TCP/MRCPv2`` m-lines.
        mrcp_tls_port: the MRCP-over-TLS port written into accepted ``TCP/TLS/MRCPv2`` m-lines; None
            declines them.
        codecs: accepted audio codecs, in the server's preference when the offer's order ties.
        resources: recognizer resources accepted.
        username: the ``o=`` username.
    """

    address: str
    mrcp_port: int = 1544
    mrcp_tls_port: int | None = None
    codecs: tuple[AudioCodec, ...] = (AudioCodec.PCMU, AudioCodec.PCMA, AudioCodec.L16)
    resources: tuple[str, ...] = _RECOGNIZER_RESOURCES
    username: str = "xlgate"


@dataclass(frozen=True, slots=True)
class NegotiatedChannel:
    """An accepted MRCP control channel."""

    resource: str
    channel_id: str  # "<id>@<resource>"
    cmid: str | None
    connection: str  # "new" or "existing"
    tls: bool = False  # offered as TCP/TLS/MRCPv2: the channel may only be used on a TLS connection


@dataclass(frozen=True, slots=True)
class NegotiatedAudio:
    """The accepted audio stream (the client sends, we receive)."""

    remote_address: str | None
    remote_port: int
    local_port: int
    codec: AudioCodec
    payload_type: int
    clock_rate_hz: int
    telephone_event_payload_type: int | None
    ptime_ms: int
    mid: str | None


@dataclass(frozen=True, slots=True)
class Negotiation:
    """The answer and what it agreed to."""

    answer: SessionDescription
    channels: tuple[NegotiatedChannel, ...]
    audio: NegotiatedAudio | None


def _rtpmap(media: MediaDescription) -> dict[str, tuple[str, int, str]]:
    """payload type -> (encoding name upper-case, clock rate, raw rtpmap value)."""
    mapping: dict[str, tuple[str, int, str]] = {}
    for value in media.attribute_values("rtpmap"):
        pt, _, rest = value.partition(" ")
        name, _, params = rest.partition("/")
        rate_text = params.split("/", 1)[0]
        if _NUMBER.fullmatch(pt) and int(pt) <= _MAX_PAYLOAD_TYPE and _NUMBER.fullmatch(rate_text):
            mapping[pt] = (name.upper(), int(rate_text), rest)
    return mapping


def _fmtp(media: MediaDescription, pt: str) -> str | None:
    for value in media.attribute_values("fmtp"):
        key, _, params = value.partition(" ")
        if key == pt:
            return params
    return None


def _answer_audio(
    media: MediaDescription, offer: SessionDescription, config: AnswerConfig, rtp_port: int
) -> tuple[MediaDescription, NegotiatedAudio] | None:
    if media.port == 0 or media.proto not in {"RTP/AVP", "RTP/AVPF"}:
        return None
    rtpmap = _rtpmap(media)
    chosen: tuple[str, AudioCodec, int] | None = None
    for pt in media.formats:
        name, rate = rtpmap[pt][:2] if pt in rtpmap else (_STATIC[pt][0].value if pt in _STATIC else "", 8000)
        channels = rtpmap[pt][2].split("/")[2] if pt in rtpmap and rtpmap[pt][2].count("/") >= 2 else "1"
        if name in {c.value for c in config.codecs} and rate == 8000 and channels == "1":
            chosen = (pt, AudioCodec(name), rate)
            break
    if chosen is None:
        return None
    telephone_event = next(
        (
            pt
            for pt in media.formats
            if pt in rtpmap and rtpmap[pt][0] == "TELEPHONE-EVENT" and rtpmap[pt][1] == 8000
        ),
        None,
    )
    pt, codec, rate = chosen
    formats = [pt] + ([telephone_event] if telephone_event else [])
    attributes: list[tuple[str, str | None]] = [("rtpmap", f"{pt} {codec.value}/{rate}")]
    if telephone_event:
        attributes.append(("rtpmap", f"{telephone_event} telephone-event/8000"))
        attributes.append(("fmtp", f"{telephone_event} {_fmtp(media, telephone_event) or '0-15'}"))
    direction = {
        "sendonly": "recvonly",
        "sendrecv": "recvonly",
        "recvonly": "inactive",
        "inactive": "inactive",
    }
    attributes.append((direction[media.direction], None))
    ptime_text = media.attribute("ptime") or "20"
    ptime = int(ptime_text) if _NUMBER.fullmatch(ptime_text) and 0 < int(ptime_text) <= 200 else 20
    attributes.append(("ptime", str(ptime)))
    mid = media.attribute("mid")
    if mid is not None:
        attributes.append(("mid", mid))
    answer = MediaDescription("audio", rtp_port, media.proto, tuple(formats), attributes=tuple(attributes))
    negotiated = NegotiatedAudio(
        remote_address=offer.media_address(media),
        remote_port=media.port,
        local_port=rtp_port,
        codec=codec,
        payload_type=int(pt),
        clock_rate_hz=rate,
        telephone_event_payload_type=int(telephone_event) if telephone_event else None,
        ptime_ms=ptime,
        mid=mid,
    )
    return answer, negotiated


def _declined(media: MediaDescription) -> MediaDescription:
    return MediaDescription(media.media, 0, media.proto, media.formats)


def answer_offer(
    offer: SessionDescription,
    *,
    config: AnswerConfig,
    rtp_port: int,
    channel_id_for: Callable[[str, str | None], str],
    session_id: int,
    session_version: int,
) -> Negotiation:
    """Build the SDP answer to an MRCPv2 client's offer.

    Args:
        offer: the parsed offer.
        config: the server's addresses and capabilities.
        rtp_port: the local RTP port allocated for the audio stream.
        channel_id_for: (resource, cmid) -> channel id without the ``@resource`` suffix; a re-INVITE
            returns the existing id for a known cmid.
        session_id, session_version: the ``o=`` numbers (the version grows with every re-INVITE answer).

    Raises:
        NotAcceptable: no recognizer resource could be accepted, or no audio stream is usable.
    """
    answered: list[MediaDescription] = []
    channels: list[NegotiatedChannel] = []
    audio: NegotiatedAudio | None = None
    for media in offer.media:
        ports = {"TCP/MRCPv2": config.mrcp_port, "TCP/TLS/MRCPv2": config.mrcp_tls_port}
        port = ports.get(media.proto) if media.media == "application" and media.port != 0 else None
        if port is not None:
            resource = (media.attribute("resource") or "").lower()
            setup = (media.attribute("setup") or "active").lower()
            if resource in config.resources and setup in {"active", "actpass"}:
                cmid = media.attribute("cmid")
                connection = "existing" if media.attribute("connection") == "existing" else "new"
                channel_id = f"{channel_id_for(resource, cmid)}@{resource}"
                attributes: list[tuple[str, str | None]] = [
                    ("setup", "passive"),
                    ("connection", connection),
                    ("channel", channel_id),
                ]
                if cmid is not None:
                    attributes.append(("cmid", cmid))
                answered.append(
                    MediaDescription(
                        "application",
                        port,
                        media.proto,
                        media.formats,
                        attributes=tuple(attributes),
                    )
                )
                tls = media.proto == "TCP/TLS/MRCPv2"
                channels.append(NegotiatedChannel(resource, channel_id, cmid, connection, tls=tls))
                continue
            answered.append(_declined(media))
        elif media.media == "audio" and audio is None:
            result = _answer_audio(media, offer, config, rtp_port)
            if result is None:
                answered.append(_declined(media))
            else:
                answered.append(result[0])
                audio = result[1]
        else:
            answered.append(_declined(media))
    if not channels:
        raise NotAcceptable(
            "the offer has no speechrecog resource over TCP/MRCPv2 (or TCP/TLS/MRCPv2) that this server accepts"
        )
    if audio is None:
        raise NotAcceptable("the offer has no audio stream in PCMU, PCMA or L16/8000")
    family = "IP6" if ":" in config.address else "IP4"
    answer = SessionDescription(
        origin=f"{config.username} {session_id} {session_version} IN {family} {config.address}",
        session_name="-",
        connection=f"IN {family} {config.address}",
        timing="0 0",
        media=tuple(answered),
    )
    return Negotiation(answer=answer, channels=tuple(channels), audio=audio)
