"""A loopback client for the live server (tests and bench/live_soak.py): aiortc peers that connect, send
frames and leave, hostile requests written byte by byte, and what the server process holds.

Everything stays on 127.0.0.1. The server runs in this process (ServerThread), so the resource counts
(/proc/self) are its own plus this client's, which is what "back to baseline" compares.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import av
import numpy as np


@dataclass(frozen=True)
class Resources:
    """What the process holds: resident memory (MB), open fds, threads, UDP sockets."""

    rss_mb: float
    fds: int
    threads: int
    udp: int

    def __str__(self) -> str:
        return f"rss {self.rss_mb:.0f} MB, {self.fds} fds, {self.threads} threads, {self.udp} UDP sockets"


def resources() -> Resources:
    with open("/proc/self/status") as handle:
        rss_kb = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the fd listing itself, closed meanwhile
            pass
    udp_inodes: set[str] = set()
    for table in ("/proc/self/net/udp", "/proc/self/net/udp6"):
        try:
            with open(table) as handle:
                udp_inodes.update(line.split()[9] for line in list(handle)[1:])
        except OSError:
            pass
    udp = sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in udp_inodes)
    # asyncio's default executor is a pool that grows to its cap and keeps its threads ("asyncio_N"):
    # not a stream's resource, so not counted
    threads = sum(1 for thread in threading.enumerate() if not thread.name.startswith("asyncio_"))
    return Resources(rss_kb / 1024, len(links), threads, udp)


def grey_track():
    from aiortc import VideoStreamTrack

    class Grey(VideoStreamTrack):
        async def recv(self) -> av.VideoFrame:
            pts, time_base = await self.next_timestamp()
            frame = av.VideoFrame.from_ndarray(np.full((96, 128, 3), 100, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, time_base
            return frame

    return Grey()


async def new_offer():
    """An aiortc peer with a camera-like track and a controls channel, and its offer SDP."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(grey_track())
    pc.createDataChannel("controls")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def offer_body(sdp: str) -> bytes:
    return json.dumps({"sdp": sdp, "type": "offer"}).encode()


async def http(url: str, body: bytes, *, method: str = "POST", chunks: int = 1, chunked: bool = False,
               pause_s: float = 0.0, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """Send `body` to `url` as raw HTTP/1.1: in `chunks` writes `pause_s` apart, with Content-Length or
    chunked transfer encoding. Returns (status, JSON body or {})."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        head = [f"{method} {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json",
                "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        step = -(-len(body) // chunks) if body else 1
        for start in range(0, len(body), step):
            piece = body[start:start + step]
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
            await writer.drain()
            if pause_s:
                await asyncio.sleep(pause_s)
        if chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    status = int(raw.split(b" ", 2)[1])
    payload = raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in raw else b""
    if b"chunked" in raw.split(b"\r\n\r\n", 1)[0].lower():  # de-chunk the response
        payload = b"".join(payload.split(b"\r\n")[1::2])
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, {}


@dataclass
class Session:
    status: int
    answer: dict            # the answer, or the refusal's {"error": ...}
    frames: list[np.ndarray]
    answer_s: float         # POST /offer -> response


async def session(url: str, frames: int = 10, timeout_s: float = 30.0) -> Session:
    """One peer: offer, connect, receive `frames` edited frames, close."""
    from aiortc import RTCSessionDescription

    pc, sdp = await new_offer()
    received: list[np.ndarray] = []
    done = asyncio.Event()

    @pc.on("track")
    def on_track(track) -> None:
        async def pull() -> None:
            from aiortc.mediastreams import MediaStreamError

            with contextlib.suppress(MediaStreamError):  # the track ends when the server closes the peer
                while len(received) < frames:
                    received.append((await track.recv()).to_ndarray(format="rgb24"))
            done.set()
        asyncio.ensure_future(pull())

    try:
        start = time.perf_counter()
        status, answer = await http(url + "offer", offer_body(sdp))
        answer_s = time.perf_counter() - start
        if status == 200:
            await pc.setRemoteDescription(RTCSessionDescription(**answer))
            await asyncio.wait_for(done.wait(), timeout_s)
    finally:
        await pc.close()
    return Session(status, answer, received, answer_s)


def wait_until(predicate, timeout_s: float, step_s: float = 0.02) -> float:
    """Seconds until `predicate()` held; AssertionError after `timeout_s`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not reached within {timeout_s} s")
        time.sleep(step_s)
    return time.monotonic() - start
