"""The `serve` web server: the page at `/`, `GET /config`, `POST /offer`, one PeerSession per browser tab.

aiohttp serves; aiortc carries the media. ICE uses no STUN server unless one is given (aiortc would
otherwise ask a public one), so no traffic leaves the machine by default. Peers are capped; one more
is refused with 503 and a JSON message, never queued.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from stream.realtime import FrameProcessor
from stream.webrtc.security import AccessDenied, AccessPolicy, is_loopback
from stream.webrtc.session import PeerSession
from stream.webrtc.signaling import SignalingError, answer_body, parse_offer

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"

ProcessorFactory = Callable[[], FrameProcessor]


@dataclass(frozen=True)
class ServeOptions:
    """How the server listens and whom it lets in. `token` None on loopback means no token."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    stun: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    max_peers: int = 4
    max_sdp_bytes: int = 64 * 1024
    start_kbps: int = 2000   # asked of the browser's encoder for the camera stream
    max_kbps: int = 4000
    cert: Path | None = None
    key: Path | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.cert else "http"


@dataclass
class PeerRegistry:
    """Live sessions plus offers being answered, so the cap holds while an answer is in flight."""

    max_peers: int
    sessions: dict[int, PeerSession] = field(default_factory=dict)
    pending: int = 0
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def next_id(self) -> int:
        return next(self._ids)

    def full(self) -> bool:
        return len(self.sessions) + self.pending >= self.max_peers

    def remove(self, session: PeerSession) -> None:
        self.sessions.pop(session.id, None)


@dataclass(frozen=True)
class _State:
    options: ServeOptions
    policy: AccessPolicy
    factory: ProcessorFactory
    edit_names: tuple[str, ...]
    initial_edits: tuple[tuple[str, float], ...]
    registry: PeerRegistry


STATE = web.AppKey("faceedit_state", _State)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _ice_configuration(options: ServeOptions) -> RTCConfiguration:
    return RTCConfiguration(iceServers=[RTCIceServer(urls=url) for url in options.stun])


async def _index(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


async def _config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    first = state.initial_edits[0] if state.initial_edits else None
    default = {"name": first[0], "strength": first[1]} if first else None
    return web.json_response({
        "edits": list(state.edit_names),
        "default_edit": default,
        "ice_servers": [{"urls": url} for url in state.options.stun],
        "token_required": state.policy.token is not None,
        "max_kbps": state.options.max_kbps,
    })


async def _offer(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        state.policy.check(request)
    except AccessDenied as err:
        return _error(err.status, str(err))
    body = await request.content.read(state.options.max_sdp_bytes + 1)
    try:
        offer = parse_offer(body, state.options.max_sdp_bytes)
    except SignalingError as err:
        return _error(err.status, str(err))
    registry = state.registry
    if registry.full():
        return _error(503, f"the server is at its limit of {registry.max_peers} streams; "
                           "close another tab (or start the server with a higher --max-peers) and retry")
    registry.pending += 1
    pc = RTCPeerConnection(_ice_configuration(state.options))
    session: PeerSession | None = None
    try:
        loop = asyncio.get_running_loop()
        processor = await loop.run_in_executor(None, state.factory)  # may load models: not on the loop
        session = PeerSession(pc, processor, state.edit_names, registry.remove, registry.next_id())
        if state.initial_edits:
            session.worker.set_edits(list(state.initial_edits))
        await pc.setRemoteDescription(offer)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
    except Exception as err:
        registry.pending -= 1
        if session is not None:
            await session.close()
        else:
            await pc.close()
        if isinstance(err, ValueError):  # aiortc's word for an SDP it cannot use
            return _error(400, f"offer not usable: {err}")
        raise
    registry.pending -= 1
    registry.sessions[session.id] = session
    log.info("peer %d: connected from %s (%d of %d)", session.id, request.remote, len(registry.sessions),
             registry.max_peers)
    return web.json_response(answer_body(pc.localDescription, state.options.start_kbps, state.options.max_kbps))


async def _close_all(app: web.Application) -> None:
    sessions = list(app[STATE].registry.sessions.values())
    await asyncio.gather(*(session.close() for session in sessions), return_exceptions=True)


def create_app(
    options: ServeOptions,
    factory: ProcessorFactory,
    edit_names: Sequence[str],
    initial_edits: Sequence[tuple[str, float]] = (),
) -> web.Application:
    """The aiohttp application; `factory()` makes one processor per peer (called off the event loop)."""
    loopback = is_loopback(options.host)
    if not loopback and options.token is None:
        raise ValueError("a token is required when serving beyond loopback")
    app = web.Application(client_max_size=options.max_sdp_bytes)
    app[STATE] = _State(
        options=options,
        policy=AccessPolicy(options.token, loopback, frozenset(options.allowed_origins)),
        factory=factory,
        edit_names=tuple(edit_names),
        initial_edits=tuple(initial_edits),
        registry=PeerRegistry(options.max_peers),
    )
    app.router.add_get("/", _index)
    app.router.add_get("/config", _config)
    app.router.add_post("/offer", _offer)
    app.router.add_static("/static/", STATIC)
    app.on_shutdown.append(_close_all)
    return app


def ssl_context(options: ServeOptions) -> ssl.SSLContext | None:
    if options.cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(options.cert, options.key)
    return context


def page_url(options: ServeOptions, port: int) -> str:
    host = f"[{options.host}]" if ":" in options.host else options.host
    url = f"{options.scheme}://{host}:{port}/"
    return f"{url}?token={options.token}" if options.token else url


class ServerThread:
    """Runs the app on its own event loop in a background thread (tests and bench/live.py).

    `port=0` in the options picks a free port; `url` is the page's address once started.
    """

    def __init__(self, app: web.Application, options: ServeOptions) -> None:
        self.app = app
        self.options = options
        self.loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="webrtc-server", daemon=True)

    @property
    def registry(self) -> PeerRegistry:
        return self.app[STATE].registry

    @property
    def url(self) -> str:
        return page_url(self.options, self.port)

    def start(self) -> ServerThread:
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as err:  # noqa: BLE001 - re-raised by start() on the caller's thread
            self._error = err
            # a failed start (port in use, bad certificate) must not leak the runner, its sockets or the loop
            self.loop.run_until_complete(self._runner.cleanup())
            self.loop.close()
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._runner.cleanup())
        self.loop.close()

    async def _serve(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.options.host, self.options.port, ssl_context=ssl_context(self.options))
        await site.start()
        self.port = self._runner.addresses[0][1]

    def call(self, coro_fn: Callable[[], object], timeout: float = 30.0) -> object:
        """Run `coro_fn()` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro_fn(), self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        if not self.loop.is_closed():  # a failed start has closed it already
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
