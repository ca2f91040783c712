"""Signalling: validate the browser's offer, and tune the answer before it goes back.

`POST /offer` takes `{"sdp": ..., "type": "offer"}` (aiortc's example convention) and returns the answer
in the same shape. Everything here is pure text handling, so it is tested without a network.
"""
from __future__ import annotations

import json
import re

from aiortc import RTCSessionDescription

# Codecs whose bitrate Chromium takes from the remote description's x-google-* parameters.
_VIDEO_CODECS = ("VP8", "VP9", "H264", "AV1")
_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([A-Za-z0-9]+)/", re.IGNORECASE)


class SignalingError(Exception):
    """An offer the server refuses: `status` is the HTTP status, the message says what to fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_offer(body: bytes, max_bytes: int) -> RTCSessionDescription:
    """The offer in a request body, or SignalingError (413 too large, 400 malformed)."""
    if len(body) > max_bytes:
        raise SignalingError(413, f"offer is {len(body)} bytes; the server accepts at most {max_bytes}")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SignalingError(400, 'body is not JSON; send {"sdp": "...", "type": "offer"}') from None
    if not isinstance(data, dict) or data.get("type") != "offer" or not isinstance(data.get("sdp"), str):
        raise SignalingError(400, 'expected {"sdp": "...", "type": "offer"}')
    sdp = data["sdp"]
    if not sdp.startswith("v=0"):
        raise SignalingError(400, "sdp does not start with v=0; send the browser's localDescription.sdp")
    if "m=video" not in sdp:
        raise SignalingError(400, "the offer has no video track; add the camera track before createOffer()")
    return RTCSessionDescription(sdp=sdp, type="offer")


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
