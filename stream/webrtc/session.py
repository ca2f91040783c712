"""One browser peer: its RTCPeerConnection, the worker that edits its frames, the controls channel.

Frames: a reader task drains aiortc's (unbounded) incoming queue as fast as frames arrive and hands each
one to the LiveWorker, whose one-item inbox keeps only the newest; the worker converts, edits and
converts back on its own thread and posts the result to `EditedTrack`, which the sender pulls. The
event loop only moves references. Closing (tab closed, connection failed or never made within the
connect timeout, server stopping) cancels the tasks, stops the worker thread and closes the peer
connection, exactly once, and drops the aiortc callbacks that point back here, so the peer's objects
go when their last reference does rather than at the next full garbage collection.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from av.video.reformatter import ColorRange, Colorspace

from stream.media.frames import TimedFrame, decoded_to_rgb, rgb_to_encoder
from stream.realtime import Edits, FrameProcessor, LiveWorker

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 0.5
MAX_STRENGTH = 10.0


def to_timed(frame: av.VideoFrame) -> TimedFrame:
    return TimedFrame(decoded_to_rgb(frame), frame.pts, frame.time_base)


def to_video_frame(timed: TimedFrame, _source: av.VideoFrame) -> av.VideoFrame:
    """WebRTC's VP8/H.264 pictures are BT.601, limited range, 4:2:0."""
    out = rgb_to_encoder(timed.image, "yuv420p", Colorspace.ITU601, ColorRange.MPEG)
    out.pts, out.time_base = timed.pts, timed.time_base
    return out


class EditedTrack(MediaStreamTrack):
    """The outgoing video: the newest edited frame, posted from the worker thread."""

    kind = "video"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self._latest: av.VideoFrame | None = None
        self._ready = asyncio.Event()

    def post(self, frame: av.VideoFrame, _latency_s: float) -> None:
        """Called on the worker thread."""
        try:
            self._loop.call_soon_threadsafe(self._put, frame)
        except RuntimeError:  # the loop has closed: the server is gone, nobody will send this frame
            pass

    def _put(self, frame: av.VideoFrame) -> None:
        self._latest = frame
        self._ready.set()

    async def recv(self) -> av.VideoFrame:
        while self.readyState == "live":
            await self._ready.wait()
            self._ready.clear()
            if self._latest is not None:
                frame, self._latest = self._latest, None
                return frame
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        self._ready.set()  # wake recv() so the sender sees the end


class PeerSession:
    """Everything one peer holds; `close()` releases all of it."""

    def __init__(self, pc: RTCPeerConnection, processor: FrameProcessor, edit_names: Sequence[str], edits: Edits,
                 on_closed: Callable[[PeerSession], None], session_id: int, connect_timeout_s: float) -> None:
        self.id = session_id
        self.pc = pc
        self.edit_names = list(edit_names)
        self.edits = dict(edits)  # the stream's edits, combined; a control message changes one of them
        self._loop = asyncio.get_running_loop()
        self.output = EditedTrack(self._loop)
        self.worker: LiveWorker[av.VideoFrame, av.VideoFrame] = LiveWorker(
            processor, self.output.post, to_timed, to_video_frame, name=f"peer-{self.id}"
        )
        self.tasks: set[asyncio.Task[None]] = set()
        self.channel: RTCDataChannel | None = None
        self._on_closed = on_closed
        self.closed = asyncio.Event()
        self._closing = False
        self._input: MediaStreamTrack | None = None
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_state)
        self.worker.set_edits(list(self.edits.items()))
        self._spawn(self._close_unless_connected(connect_timeout_s))

    # --- aiortc events ------------------------------------------------------------------------------
    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "video" or self._input is not None:
            return  # audio, or a second camera: one video in, one edited video out
        self._input = track
        self.pc.addTrack(self.output)
        self._spawn(self._pull(track))
        track.on("ended", lambda: self._spawn(self.close()))

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        channel.on("message", self._on_message)
        channel.on("close", lambda: self._spawn(self.close()))
        channel.send(json.dumps({"type": "hello", "session": self.id, "edits": self.edit_names}))
        self._spawn(self._push_stats(channel))

    async def _on_state(self) -> None:
        log.debug("peer %d: connection %s", self.id, self.pc.connectionState)
        if self.pc.connectionState in ("failed", "closed"):
            await self.close()

    async def _close_unless_connected(self, timeout_s: float) -> None:
        """A client that never completes ICE and DTLS (gone, or stuck) must not hold its slot."""
        await asyncio.sleep(timeout_s)
        if self.pc.connectionState != "connected":
            log.info("peer %d: not connected within %g s (%s); closing", self.id, timeout_s, self.pc.connectionState)
            await self.close()

    # --- tasks --------------------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._closing:
            coro.close()
            return
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _pull(self, track: MediaStreamTrack) -> None:
        """Drain the incoming queue: every frame goes to the worker at once, which keeps the newest."""
        try:
            while True:
                self.worker.submit(await track.recv())
        except MediaStreamError:
            log.debug("peer %d: incoming track ended", self.id)
        self._spawn(self.close())

    async def _push_stats(self, channel: RTCDataChannel) -> None:
        while channel.readyState in ("connecting", "open"):
            if channel.readyState == "open":
                channel.send(json.dumps({"type": "stats", **self.worker.stats().as_dict()}))
            if not self.worker.alive:
                message = f"processing stopped: {self.worker.error}" if self.worker.error else "processing stopped"
                channel.send(json.dumps({"type": "error", "message": message}))
                return
            await asyncio.sleep(STATS_INTERVAL_S)

    # --- controls -----------------------------------------------------------------------------------
    def _on_message(self, message: str | bytes) -> None:
        reply = self.apply_control(message)
        if reply is not None and self.channel is not None and self.channel.readyState == "open":
            self.channel.send(json.dumps(reply))

    def apply_control(self, message: str | bytes) -> dict[str, object] | None:
        """Apply one control message; returns an error reply for a bad one. Messages:
        {"type": "edit", "name": str, "strength": number} sets one edit's strength, the others kept (edits
        combine); name "" removes every edit. {"type": "view", "mode": "before"|"after"}; {"type": "bye"}.
        """
        try:
            data = json.loads(message)
            kind = data.get("type")
        except (ValueError, TypeError, AttributeError):  # not JSON, or JSON but not an object
            return {"type": "error", "message": "control messages are JSON objects"}
        if kind == "edit":
            name, strength = data.get("name"), data.get("strength")
            if not isinstance(name, str) or (name and name not in self.edit_names):
                return {"type": "error", "message": f"unknown edit {name!r}; choose one of {self.edit_names}"}
            if not isinstance(strength, (int, float)) or not math.isfinite(strength):
                return {"type": "error", "message": "strength must be a finite number"}
            if name:
                self.edits[name] = max(-MAX_STRENGTH, min(MAX_STRENGTH, float(strength)))
            else:
                self.edits.clear()
            self.worker.set_edits(list(self.edits.items()))
            return None
        if kind == "view":
            if data.get("mode") not in ("before", "after"):
                return {"type": "error", "message": 'view mode is "before" or "after"'}
            self.worker.set_bypass(data["mode"] == "before")
            return None
        if kind == "bye":
            self._spawn(self.close())
            return None
        return {"type": "error", "message": f"unknown control {kind!r}; send edit, view or bye"}

    # --- teardown -----------------------------------------------------------------------------------
    async def close(self) -> None:
        """Release everything; a second caller waits for the first to finish."""
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        log.info("peer %d: closing", self.id)
        current = asyncio.current_task()
        pending = [task for task in self.tasks if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self.output.stop()
        # joining the worker thread blocks until its frame in progress ends: not on the event loop
        await self._loop.run_in_executor(None, self.worker.close)
        try:
            await self.pc.close()
        except Exception as err:  # noqa: BLE001 - aiortc can fail closing a peer it never finished setting up
            log.debug("peer %d: closing the connection: %r", self.id, err)
        for emitter in (self.pc, self.channel, self._input):  # their callbacks hold this session
            if emitter is not None:
                emitter.remove_all_listeners()
        self._on_closed(self)
        self.closed.set()
