"""Signalling: validate the browser's offer, and tune the answer before it goes back.

`POST /offer` takes `{"sdp": ..., "type": "offer"}` (aiortc's example convention) and returns the answer
in the same shape. Everything here is pure text handling, so it is tested without a network. The offer is
parsed here, in a guarded step, before any peer or model work: aiortc's own parser asserts on malformed
lines, and an offer without ICE credentials or a DTLS fingerprint would be taken and then fail inside
aiortc's background tasks.
"""
from __future__ import annotations

import json
import re

from aiortc import RTCSessionDescription
from aiortc.sdp import SessionDescription

# Codecs whose bitrate Chromium takes from the remote description's x-google-* parameters.
_VIDEO_CODECS = ("VP8", "VP9", "H264", "AV1")
_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([A-Za-z0-9]+)/", re.IGNORECASE)


class SignalingError(Exception):
    """An offer the server refuses: `status` is the HTTP status, the message says what to fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_offer(body: bytes) -> RTCSessionDescription:
    """The offer in a request body (read whole), or SignalingError 400 saying what is wrong with it."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SignalingError(400, 'body is not JSON; send {"sdp": "...", "type": "offer"}') from None
    if not isinstance(data, dict) or data.get("type") != "offer" or not isinstance(data.get("sdp"), str):
        raise SignalingError(400, 'expected {"sdp": "...", "type": "offer"}')
    sdp = data["sdp"]
    if not sdp.startswith("v=0"):
        raise SignalingError(400, "sdp does not start with v=0; send the browser's localDescription.sdp")
    check_sdp(sdp)
    return RTCSessionDescription(sdp=sdp, type="offer")


def check_sdp(sdp: str) -> None:
    """SignalingError 400 unless aiortc can parse `sdp` and it has a video section, and every section has
    ICE credentials and a DTLS fingerprint."""
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as err:  # noqa: BLE001 - the parser asserts, or fails on int()/split() of a bad line
        detail = f": {err}" if str(err) else ""
        raise SignalingError(400, f"the offer's SDP is malformed ({type(err).__name__}{detail}); send the "
                                  "browser's localDescription.sdp unchanged") from None
    if not any(media.kind == "video" for media in parsed.media):
        raise SignalingError(400, "the offer has no video track; add the camera track before createOffer()")
    for media in parsed.media:
        if not (media.ice.usernameFragment and media.ice.password):
            raise SignalingError(400, f"the offer's {media.kind} section has no ICE credentials (a=ice-ufrag, "
                                      "a=ice-pwd)")
        if not media.dtls.fingerprints:
            raise SignalingError(400, f"the offer's {media.kind} section has no DTLS fingerprint "
                                      "(a=fingerprint); media must be encrypted")


def with_video_bitrate(sdp: str, start_kbps: int, max_kbps: int) -> str:
    """Ask the browser's encoder to start at `start_kbps` (Chromium otherwise starts near 300 kbps and
    ramps up over seconds, blurring the first frames the face detector sees) and cap it at `max_kbps`.

    Chromium reads x-google-{start,min,max}-bitrate from the fmtp of each video codec in the remote
    (here: the answer) description; codecs without an fmtp line get one.
    """
    params = f"x-google-start-bitrate={start_kbps};x-google-max-bitrate={max_kbps}"
    lines = sdp.split("\r\n")
    video_payloads: set[str] = set()
    for line in lines:
        match = _RTPMAP.match(line)
        if match and match.group(2).upper() in _VIDEO_CODECS:
            video_payloads.add(match.group(1))
    out: list[str] = []
    with_fmtp: set[str] = set()
    for line in lines:
        if line.startswith("a=fmtp:"):
            payload = line[len("a=fmtp:"):].split(" ", 1)[0]
            if payload in video_payloads:
                line = f"{line};{params}"
                with_fmtp.add(payload)
        out.append(line)
    result: list[str] = []
    for line in out:
        result.append(line)
        match = _RTPMAP.match(line)
        if match and match.group(1) in video_payloads and match.group(1) not in with_fmtp:
            result.append(f"a=fmtp:{match.group(1)} {params}")
    return "\r\n".join(result)


def answer_body(description: RTCSessionDescription, start_kbps: int, max_kbps: int) -> dict[str, str]:
    return {"sdp": with_video_bitrate(description.sdp, start_kbps, max_kbps), "type": description.type}
