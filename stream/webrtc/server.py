"""The `serve` web server: the page at `/`, `GET /config`, `POST /offer`, one PeerSession per browser tab.

aiohttp serves; aiortc carries the media. ICE uses no STUN server unless one is given (aiortc would
otherwise ask a public one), so no traffic leaves the machine by default. Peers are capped; one more
is refused with 503 and a JSON message, never queued.

An offer is checked in full (access, body, SDP) before a peer connection or a processor is made, so a bad
one costs nothing and gets a 4xx with one line saying why; refusals are logged at info, one line each,
without the body. A peer that has not connected (ICE and DTLS) within `connect_timeout_s` is closed, so a
client that posts an offer and goes away holds its slot, socket and thread only that long.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from stream.live_model import LiveModel
from stream.webrtc.security import AccessDenied, AccessPolicy, is_loopback
from stream.webrtc.session import PeerSession
from stream.webrtc.signaling import SignalingError, answer_body, parse_offer

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
BODY_TIMEOUT_S = 10.0  # a body still arriving after this is refused (408), so a trickle cannot hold a request


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
    connect_timeout_s: float = 20.0  # answered -> connected (ICE and DTLS), else the peer is closed
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
    model: LiveModel
    registry: PeerRegistry


STATE = web.AppKey("faceedit_state", _State)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _refuse(request: web.Request, status: int, message: str) -> web.Response:
    log.info("%s %s from %s refused: %d %s", request.method, request.path, request.remote, status, message)
    return _error(status, message)


class _MalformedHttpFilter(logging.Filter):
    """aiohttp logs a request it cannot parse (say, both Content-Length and chunked) as an error with a
    traceback; it is bad input, so it becomes one info line like the server's own refusals."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError) and 400 <= error.code < 500:
            reason = str(error.message).strip().splitlines()[0] if error.message else type(error).__name__
            request = record.getMessage().replace("Error handling request", "request")
            record.msg, record.args = "%s refused: %d %s", (request, error.code, reason)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


_MALFORMED_HTTP = _MalformedHttpFilter()


def _ice_configuration(options: ServeOptions) -> RTCConfiguration:
    return RTCConfiguration(iceServers=[RTCIceServer(urls=url) for url in options.stun])


async def _index(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


async def _config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response({
        "edits": list(state.model.edit_names),
        "default_edits": [{"name": name, "strength": strength} for name, strength in state.model.default_edits],
        "ice_servers": [{"urls": url} for url in state.options.stun],
        "token_required": state.policy.token is not None,
        "max_kbps": state.options.max_kbps,
    })


async def read_body(request: web.Request, cap: int) -> bytes:
    """The whole body, however it is framed (Content-Length or chunked, in one write or many), or
    SignalingError 413 once it is known to exceed `cap` bytes (408 if it is still arriving after
    BODY_TIMEOUT_S)."""
    declared = request.content_length
    if declared is not None and declared > cap:
        raise SignalingError(413, f"offer is {declared} bytes; the server accepts at most {cap}")
    body = bytearray()

    async def read_all() -> None:
        while chunk := await request.content.read(cap + 1 - len(body)):
            body.extend(chunk)
            if len(body) > cap:
                raise SignalingError(413, f"offer is over {cap} bytes; the server accepts at most {cap}")

    try:
        await asyncio.wait_for(read_all(), BODY_TIMEOUT_S)
    except TimeoutError:
        raise SignalingError(408, f"the offer did not arrive within {BODY_TIMEOUT_S:g} s") from None
    except ConnectionError:
        raise SignalingError(400, f"the connection closed after {len(body)} bytes of the offer") from None
    return bytes(body)


async def _offer(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        state.policy.check(request)
        offer = parse_offer(await read_body(request, state.options.max_sdp_bytes))
    except (AccessDenied, SignalingError) as err:
        return _refuse(request, err.status, str(err))
    registry = state.registry
    if registry.full():
        return _refuse(request, 503, f"the server is at its limit of {registry.max_peers} streams; close another "
                                     "tab (or start the server with a higher --max-peers) and retry")
    registry.pending += 1
    try:
        return await _answer(request, state, offer)
    except Exception:  # a fault of the server, not of the offer: logged once, with its traceback
        log.exception("POST /offer from %s failed", request.remote)
        return _error(500, "the server failed to start this stream; its log says why")
    finally:
        registry.pending -= 1


async def _answer(request: web.Request, state: _State, offer: RTCSessionDescription) -> web.Response:
    """Start a peer for a checked offer: its processor (cheap, the model is shared), then aiortc's half."""
    processor = await asyncio.get_running_loop().run_in_executor(None, state.model.new_processor)
    pc = RTCPeerConnection(_ice_configuration(state.options))
    registry = state.registry
    session = PeerSession(pc, processor, state.model.edit_names, list(state.model.default_edits), registry.remove,
                          registry.next_id(), state.options.connect_timeout_s)
    try:
        await pc.setRemoteDescription(offer)
        await pc.setLocalDescription(await pc.createAnswer())
    except OSError:  # no socket or address for ICE: the server's fault
        await session.close()
        raise
    except Exception as err:  # noqa: BLE001 - whatever aiortc raises for an offer it cannot use
        await session.close()
        reason = str(err) or type(err).__name__
        return _refuse(request, 400, f"offer not usable: {reason}")
    registry.sessions[session.id] = session
    log.info("peer %d: answered %s (%d of %d)", session.id, request.remote, len(registry.sessions),
             registry.max_peers)
    return web.json_response(answer_body(pc.localDescription, state.options.start_kbps, state.options.max_kbps))


async def _close_all(app: web.Application) -> None:
    sessions = list(app[STATE].registry.sessions.values())
    await asyncio.gather(*(session.close() for session in sessions), return_exceptions=True)


def create_app(options: ServeOptions, model: LiveModel) -> web.Application:
    """The aiohttp application; `model.new_processor()` makes each peer's processor (off the event loop)."""
    loopback = is_loopback(options.host)
    if not loopback and options.token is None:
        raise ValueError("a token is required when serving beyond loopback")
    if _MALFORMED_HTTP not in logging.getLogger("aiohttp.server").filters:
        logging.getLogger("aiohttp.server").addFilter(_MALFORMED_HTTP)
    app = web.Application(client_max_size=options.max_sdp_bytes)
    app[STATE] = _State(
        options=options,
        policy=AccessPolicy(options.token, loopback, frozenset(options.allowed_origins)),
        model=model,
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
