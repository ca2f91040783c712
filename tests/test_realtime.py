"""Live runner (stream/realtime.py) and the WebRTC server without a browser (stream/webrtc/).

The worker tests gate the processor with events instead of sleeping, so "the newest frame wins" is
checked exactly, not by timing. The server tests drive it with aiortc's own client over loopback.
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
import weakref
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from aiohttp.test_utils import make_mocked_request

from stream.live_model import LiveModel
from stream.media.frames import TimedFrame
from stream.realtime import LatestSlot, LiveWorker, keep_timed, result_only, run_live
from stream.types import Frame, StageTimes
from stream.webrtc.security import AccessDenied, AccessPolicy, is_loopback
from stream.webrtc.session import to_timed, to_video_frame
from stream.webrtc.signaling import SignalingError, parse_offer, with_video_bitrate

TB = Fraction(1, 30)


def timed(index: int, value: int = 0) -> TimedFrame:
    return TimedFrame(np.full((8, 8, 3), value, np.uint8), index, TB)


class Recorder:
    """A processor that records what it saw; `gate` (if set) must open before each frame finishes."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.times = StageTimes()
        self.seen: list[tuple[int, list[tuple[str, float]]]] = []
        self.edits: list[tuple[str, float]] = []
        self.gate = gate
        self.started = threading.Event()

    def set_edits(self, edits: list[tuple[str, float]]) -> None:
        self.edits = list(edits)

    def process(self, frame: Frame, t: float | None = None) -> Frame:
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        self.seen.append((int(frame[0, 0, 0]), list(self.edits)))
        self.times.add("model", 2.0)
        return frame + 1


def collecting_worker(processor: Recorder) -> tuple[LiveWorker, list[TimedFrame], threading.Event]:
    out: list[TimedFrame] = []
    got = threading.Event()

    def deliver(frame: TimedFrame, _latency: float) -> None:
        out.append(frame)
        got.set()

    return LiveWorker(processor, deliver, keep_timed, result_only), out, got


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# --- LatestSlot / LiveWorker ----------------------------------------------------------------------------
def test_latest_slot_keeps_newest_and_counts_drops() -> None:
    slot: LatestSlot[int] = LatestSlot()
    for i in range(5):
        slot.put(i)
    assert slot.get(0) == 4
    assert slot.dropped == 4
    assert slot.get(0) is None
    slot.close()
    assert slot.get() is None


def test_worker_processes_newest_frame_and_drops_stale_ones() -> None:
    gate = threading.Event()
    processor = Recorder(gate)
    worker, out, _ = collecting_worker(processor)
    worker.submit(timed(0, 0))
    assert processor.started.wait(5)          # frame 0 is being processed, the worker is busy
    for i in range(1, 10):
        worker.submit(timed(i, i))            # 1..8 are replaced while waiting; 9 wins
    gate.set()
    wait_for(lambda: len(out) == 2)
    worker.close()
    assert [f.pts for f in out] == [0, 9]     # frames keep their pts
    assert [f.time_base for f in out] == [TB, TB]
    assert [value for value, _ in processor.seen] == [0, 9]
    stats = worker.stats()
    assert (stats.frames_in, stats.frames_out, stats.dropped) == (10, 2, 8)
    assert stats.stage_ms == {"model": 2.0}
    assert not worker.alive


def test_edits_take_effect_on_the_next_frame() -> None:
    processor = Recorder()
    worker, out, _ = collecting_worker(processor)
    worker.set_edits([("smile", 1.0)])
    worker.submit(timed(0))
    wait_for(lambda: len(out) == 1)
    worker.set_edits([("smile", -2.0)])
    worker.submit(timed(1))
    wait_for(lambda: len(out) == 2)
    worker.close()
    assert [edits for _, edits in processor.seen] == [[("smile", 1.0)], [("smile", -2.0)]]
    assert worker.stats().edits == [("smile", -2.0)]


def test_bypass_passes_frames_through_unprocessed() -> None:
    processor = Recorder()
    worker, out, _ = collecting_worker(processor)
    worker.set_bypass(True)
    worker.submit(timed(0, 7))
    wait_for(lambda: len(out) == 1)
    worker.set_bypass(False)
    worker.submit(timed(1, 7))
    wait_for(lambda: len(out) == 2)
    worker.close()
    assert out[0].image[0, 0, 0] == 7 and out[1].image[0, 0, 0] == 8
    assert len(processor.seen) == 1


def test_a_failing_processor_stops_the_worker_and_keeps_the_error() -> None:
    class Broken(Recorder):
        def process(self, frame: Frame, t: float | None = None) -> Frame:
            raise RuntimeError("model exploded")

    worker, _, _ = collecting_worker(Broken())
    worker.submit(timed(0))
    wait_for(lambda: not worker.alive)
    assert isinstance(worker.error, RuntimeError)


def test_run_live_delivers_in_order_ends_with_the_last_frame_and_reraises() -> None:
    got: list[int] = []
    stats = run_live((timed(i, 1) for i in range(40)), Recorder(), [lambda f: got.append(f.pts) or True])
    assert got == sorted(got) and got[-1] == 39
    assert stats.frames_in == 40 and stats.frames_out == len(got)

    got.clear()
    def endless():
        index = 0
        while True:
            time.sleep(0.005)
            yield timed(index)
            index += 1

    run_live(endless(), Recorder(), [lambda f: got.append(f.pts) or len(got) < 3])
    assert len(got) == 3  # a sink returning False (window closed) ends the run

    def broken_source():
        yield timed(0)
        raise OSError("camera unplugged")

    with pytest.raises(OSError, match="unplugged"):
        run_live(broken_source(), Recorder(), [lambda f: True])


def test_run_live_waits_for_a_slow_last_frame() -> None:
    """The last frame once had half a second to come out after the source ended; a slower model lost it."""
    class Slow(Recorder):
        def process(self, frame: Frame, t: float | None = None) -> Frame:
            time.sleep(0.8)
            return super().process(frame, t)

    got: list[int] = []
    stats = run_live((timed(i, 1) for i in range(2)), Slow(), [lambda f: got.append(f.pts) or True])
    assert got[-1] == 1 and stats.frames_out + stats.dropped == 2


def test_webrtc_frame_conversion_keeps_pts_and_time_base() -> None:
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
    frame.pts, frame.time_base = 123456, Fraction(1, 90000)
    timed_frame = to_timed(frame)
    assert timed_frame.image.shape == (48, 64, 3) and timed_frame.pts == 123456
    back = to_video_frame(timed_frame, frame)
    assert (back.pts, back.time_base, back.format.name) == (123456, Fraction(1, 90000), "yuv420p")


# --- signalling and access ------------------------------------------------------------------------------
OFFER = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"


@pytest.mark.parametrize(("body", "status", "words"), [
    (b"not json", 400, "not JSON"),
    (json.dumps({"sdp": OFFER, "type": "answer"}).encode(), 400, "expected"),
    (json.dumps({"sdp": "hello", "type": "offer"}).encode(), 400, "v=0"),
    (json.dumps({"sdp": OFFER.replace("m=video", "m=audio"), "type": "offer"}).encode(), 400, "no video"),
])
def test_bad_offers_are_refused_with_a_reason(body: bytes, status: int, words: str) -> None:
    with pytest.raises(SignalingError, match=words) as err:
        parse_offer(body)
    assert err.value.status == status


def test_answer_asks_the_browser_for_a_start_bitrate() -> None:
    lines = ["m=video 9 UDP/TLS/RTP/SAVPF 97 98 99", "a=rtpmap:97 VP8/90000", "a=rtpmap:98 rtx/90000",
             "a=fmtp:98 apt=97", "a=rtpmap:99 H264/90000", "a=fmtp:99 packetization-mode=1", ""]
    sdp = "\r\n".join(lines)
    out = with_video_bitrate(sdp, 2000, 4000).split("\r\n")
    assert out[2] == "a=fmtp:97 x-google-start-bitrate=2000;x-google-max-bitrate=4000"
    assert "a=fmtp:98 apt=97" in out  # rtx untouched
    assert "a=fmtp:99 packetization-mode=1;x-google-start-bitrate=2000;x-google-max-bitrate=4000" in out


def request(host: str = "127.0.0.1:8080", origin: str | None = None, token: str | None = None):
    headers = {"Host": host}
    if origin:
        headers["Origin"] = origin
    if token:
        headers["X-Token"] = token
    return make_mocked_request("POST", "/offer", headers=headers)


def test_access_policy() -> None:
    local = AccessPolicy(token=None, loopback=True)
    local.check(request())
    local.check(request(origin="http://127.0.0.1:8080"))
    local.check(request(host="localhost:8080", origin="http://localhost:8080"))
    with pytest.raises(AccessDenied, match="origin https://evil.example"):
        local.check(request(origin="https://evil.example"))
    with pytest.raises(AccessDenied, match="not loopback"):  # DNS rebinding: evil name resolving to 127.0.0.1
        local.check(request(host="evil.example:8080", origin="http://evil.example:8080"))
    AccessPolicy(None, True, frozenset({"https://app.example"})).check(request(origin="https://app.example"))

    remote = AccessPolicy(token="s3cret", loopback=False)
    remote.check(request(host="10.0.0.5:8080", token="s3cret"))
    for token in (None, "wrong"):
        with pytest.raises(AccessDenied, match="token") as err:
            remote.check(request(host="10.0.0.5:8080", token=token))
        assert err.value.status == 401
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_serving_beyond_loopback_needs_a_token() -> None:
    from stream.webrtc.server import ServeOptions, create_app

    with pytest.raises(ValueError, match="token"):
        create_app(ServeOptions(host="0.0.0.0"), LiveModel(Recorder, ()))


# --- the server, driven by aiortc's own client --------------------------------------------------------
class Tint(Recorder):
    """Adds 50 * strength to the red channel: an edit whose strength is visible in the pixels."""

    def process(self, frame: Frame, t: float | None = None) -> Frame:
        strength = sum(s for _, s in self.edits)
        out = frame.astype(np.int16)
        out[..., 0] += int(50 * strength)
        return np.clip(out, 0, 255).astype(np.uint8)


@pytest.fixture
def server():
    from stream.webrtc.harness import loopback_ice
    from stream.webrtc.server import ServeOptions, ServerThread, create_app

    options = ServeOptions(port=0, max_peers=1)
    with loopback_ice():
        thread = ServerThread(create_app(options, LiveModel(Tint, ("tint",), (("tint", 1.0),))), options).start()
        yield thread
        thread.stop()


def post(url: str, body: bytes, origin: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if origin:
        headers["Origin"] = origin
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers)) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def client_session(url: str, frames: int = 30) -> tuple[int, dict, list[np.ndarray], object]:
    """An aiortc peer that sends grey frames and collects what comes back."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from tests.live_client import grey_track

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(grey_track())
    pc.createDataChannel("controls")
    received: list[np.ndarray] = []
    done = asyncio.Event()

    @pc.on("track")
    def on_track(track) -> None:
        async def pull() -> None:
            while len(received) < frames:
                received.append((await track.recv()).to_ndarray(format="rgb24"))
            done.set()
        asyncio.ensure_future(pull())

    await pc.setLocalDescription(await pc.createOffer())
    body = json.dumps({"sdp": pc.localDescription.sdp, "type": "offer"}).encode()
    status, answer = await asyncio.get_running_loop().run_in_executor(None, post, url + "offer", body)
    if status == 200:
        await pc.setRemoteDescription(RTCSessionDescription(**answer))
        await asyncio.wait_for(done.wait(), 30)
    return status, answer, received, pc


def test_server_edits_a_stream_caps_peers_and_frees_a_closed_peer(server) -> None:
    async def scenario() -> None:
        status, _, frames, pc = await client_session(server.url)
        assert status == 200
        assert abs(float(frames[-1][..., 0].mean()) - 150) < 12   # red + 50: the tint edit at strength 1
        assert abs(float(frames[-1][..., 1].mean()) - 100) < 12
        session = next(iter(server.registry.sessions.values()))
        assert session.worker.alive

        status, refusal, _, other = await client_session(server.url)
        assert status == 503 and "limit of 1" in refusal["error"]
        await other.close()

        await pc.close()
        await asyncio.get_running_loop().run_in_executor(None, wait_for, lambda: not server.registry.sessions)
        assert not session.worker.alive and not session.tasks
        assert session.pc.connectionState == "closed"

    asyncio.run(scenario())


def test_a_closed_peer_is_freed_without_a_garbage_collection(server) -> None:
    """No reference cycle keeps a closed peer (its worker, its processor) alive until a full collection."""
    async def scenario() -> weakref.ref:
        status, _, _, pc = await client_session(server.url, frames=5)
        assert status == 200
        session = weakref.ref(next(iter(server.registry.sessions.values())))
        await pc.close()
        await asyncio.get_running_loop().run_in_executor(None, wait_for, lambda: not server.registry.sessions)
        return session

    gc.disable()
    try:
        session = asyncio.run(scenario())
        wait_for(lambda: session() is None, 5)
    finally:
        gc.enable()


def test_server_page_config_and_refusals(server) -> None:
    with urllib.request.urlopen(server.url) as response:
        assert "/static/app.js" in response.read().decode()
    with urllib.request.urlopen(server.url + "static/app.js") as response:
        assert "window.faceedit" in response.read().decode()
    with urllib.request.urlopen(server.url + "config") as response:
        config = json.loads(response.read())
    assert config["edits"] == ["tint"] and config["ice_servers"] == [] and not config["token_required"]
    assert config["default_edits"] == [{"name": "tint", "strength": 1.0}]
    assert post(server.url + "offer", b"{}")[0] == 400
    assert post(server.url + "offer", b"x" * 70_000)[0] == 413
    offer = json.dumps({"sdp": OFFER, "type": "offer"}).encode()
    status, body = post(server.url + "offer", offer, origin="https://evil.example")
    assert status == 403 and "origin" in body["error"]
    assert not server.registry.sessions and server.registry.pending == 0


# --- the serve command's options ------------------------------------------------------------------------
def serve_args(*argv: str):
    import argparse

    from stream.commands import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_serve_options_token_tls_and_limits(tmp_path) -> None:
    from engines.errors import UserError
    from stream.commands.serve import options_from_args
    from stream.webrtc.server import page_url

    local = options_from_args(serve_args())
    assert local.token is None and local.host == "127.0.0.1" and page_url(local, 8080) == "http://127.0.0.1:8080/"
    wide = options_from_args(serve_args("--host", "0.0.0.0", "--stun", "stun:stun.example.org:3478"))
    assert wide.token and len(wide.token) >= 24 and wide.stun == ("stun:stun.example.org:3478",)
    assert page_url(wide, 9000) == f"http://0.0.0.0:9000/?token={wide.token}"
    assert options_from_args(serve_args("--host", "0.0.0.0", "--token", "abc")).token == "abc"
    with pytest.raises(UserError, match="both --cert and --key"):
        options_from_args(serve_args("--cert", str(tmp_path / "c.pem")))
    with pytest.raises(UserError, match="not found"):
        options_from_args(serve_args("--cert", str(tmp_path / "c.pem"), "--key", str(tmp_path / "k.pem")))
    with pytest.raises(UserError, match="--max-peers"):
        options_from_args(serve_args("--max-peers", "0"))
    assert local.connect_timeout_s == 20 and options_from_args(serve_args("--connect-timeout", "5")).connect_timeout_s == 5
    with pytest.raises(UserError, match="--connect-timeout"):
        options_from_args(serve_args("--connect-timeout", "0"))


def test_tls_serves_the_page_over_https(tmp_path) -> None:
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from stream.webrtc.server import ServeOptions, ServerThread, create_app

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    options = ServeOptions(port=0, cert=tmp_path / "cert.pem", key=tmp_path / "key.pem")
    server = ServerThread(create_app(options, LiveModel(Recorder, ())), options).start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        context.check_hostname = False
        with urllib.request.urlopen(server.url + "config", context=context) as response:
            assert json.loads(response.read())["edits"] == []
    finally:
        server.stop()


def test_a_server_that_cannot_listen_raises_and_releases_its_loop() -> None:
    import socket

    from stream.webrtc.server import ServeOptions, ServerThread, create_app

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        options = ServeOptions(port=busy.getsockname()[1])
        server = ServerThread(create_app(options, LiveModel(Recorder, ())), options)
        with pytest.raises(OSError):
            server.start()
    assert server.loop.is_closed()
    server.stop()  # stopping a server that never started is harmless


# --- hostile offers, bodies in pieces, peers that never connect (issue 14; the slow soak is test_live_soak.py)
def aiortc_offer_sdp() -> str:
    from tests.live_client import new_offer

    async def make() -> str:
        pc, sdp = await new_offer()
        await pc.close()
        return sdp

    return asyncio.run(make())


def test_malformed_sdp_is_refused_before_any_peer_work() -> None:
    from stream.webrtc.signaling import check_sdp

    sdp = aiortc_offer_sdp()
    check_sdp(sdp)  # a real offer passes
    lines = sdp.split("\r\n")
    media = [i for i, line in enumerate(lines) if line.startswith("m=")]
    cases = {
        "v=0\r\nm=video": "malformed",
        re.sub(r"m=video \d+ ", "m=video x ", sdp): "malformed",
        re.sub(r"c=IN IP4 [0-9.]+", "c=IN IP4", sdp): "malformed",
        "\r\n".join(line for line in lines if not line.startswith("a=fingerprint")): "no DTLS fingerprint",
        "\r\n".join(line for line in lines if not line.startswith("a=ice-pwd")): "no ICE credentials",
        "\r\n".join(lines[:media[0]] + lines[media[1]:] + ["a=x:m=video 9 RTP/AVP 96"]): "no video track",
    }
    for bad, words in cases.items():
        with pytest.raises(SignalingError, match=words) as err:
            check_sdp(bad)
        assert err.value.status == 400 and "\n" not in str(err.value)


def test_body_in_pieces_is_read_whole_and_an_unconnected_peer_frees_its_slot() -> None:
    from stream.webrtc.harness import loopback_ice
    from stream.webrtc.server import ServeOptions, ServerThread, create_app
    from tests.live_client import http, new_offer, offer_body

    options = ServeOptions(port=0, max_peers=1, max_sdp_bytes=8192, connect_timeout_s=1.0)
    with loopback_ice():
        server = ServerThread(create_app(options, LiveModel(Tint, ("tint",))), options).start()
    try:
        url = server.url + "offer"

        async def scenario() -> None:
            ghost, sdp = await new_offer()  # posts, then never answers: holds the one slot for 1 s
            assert (await http(url, offer_body(sdp), chunks=2, pause_s=0.15))[0] == 200
            status, refusal = await http(url, offer_body(sdp), chunked=True, chunks=3)
            assert status == 503 and "limit of 1" in refusal["error"]
            await asyncio.get_running_loop().run_in_executor(None, wait_for, lambda: not server.registry.sessions, 5)
            assert (await http(url, offer_body(sdp), chunked=True, chunks=3))[0] == 200
            status, refusal = await http(url, b"{" + b" " * 9000 + b"}", chunked=True, chunks=3)
            assert status == 413 and "at most 8192" in refusal["error"]
            await ghost.close()

        asyncio.run(scenario())
        wait_for(lambda: not server.registry.sessions, 5)
        assert not [t for t in threading.enumerate() if t.name.startswith("peer-")]
    finally:
        server.stop()


def test_control_messages_combine_edits() -> None:
    from aiortc import RTCPeerConnection

    from stream.webrtc.session import PeerSession

    async def scenario() -> list[list[tuple[str, float]]]:
        session = PeerSession(RTCPeerConnection(), Recorder(), ["smile", "age"], [("smile", 1.0)], lambda _: None,
                              1, 30.0)
        seen = [session.worker.stats().edits]
        assert session.apply_control(json.dumps({"type": "edit", "name": "age", "strength": 0.5})) is None
        seen.append(session.worker.stats().edits)
        session.apply_control(json.dumps({"type": "edit", "name": "smile", "strength": 99}))
        seen.append(session.worker.stats().edits)
        assert "unknown edit" in session.apply_control(json.dumps({"type": "edit", "name": "x", "strength": 1}))["message"]
        assert "JSON objects" in session.apply_control("[1]")["message"]
        session.apply_control(json.dumps({"type": "edit", "name": "", "strength": 0}))
        seen.append(session.worker.stats().edits)
        await session.close()
        return seen

    assert asyncio.run(scenario()) == [[("smile", 1.0)], [("smile", 1.0), ("age", 0.5)],
                                      [("smile", 10.0), ("age", 0.5)], []]


# --- the live model: built once, shared, the file job's student rule ---------------------------------------
@pytest.fixture(scope="module")
def random_pack(tmp_path_factory: pytest.TempPathFactory):
    from tests.random_pack import make_random_pack

    return make_random_pack(tmp_path_factory.mktemp("pack")).root


@pytest.mark.slow  # builds the networks and loads dlib's models twice: ~10 s on a busy 2-core machine
def test_live_model_takes_the_student_only_when_students_cover_every_edit(random_pack, caplog) -> None:
    from stream.config import FaceConfig, ModelConfig
    from stream.live_model import live_model

    config = ModelConfig(pack=random_pack, backend="torch")
    student = live_model(config, FaceConfig(), [])  # the pack's default edit, smile, has a student
    first, second = student.new_processor(), student.new_processor()
    assert first.state.path == "student" or first.set_edits(student.default_edits).path == "student"
    assert student.default_edits == (("smile", 1.0),)
    assert first.networks is second.networks and first.tracker is not second.tracker  # one set of engines

    caplog.set_level(logging.WARNING, logger="stream.session")
    both = live_model(config, FaceConfig(), [("smile", 1.0), ("age", -0.5)])  # no student for age
    assert both.new_processor().set_edits(both.default_edits).path == "gan"
    assert both.default_edits == (("smile", 1.0), ("age", -0.5)) and set(both.edit_names) == {"smile", "age"}
    assert [r.getMessage() for r in caplog.records if "no student" in r.getMessage()] == [
        "no student for age: using the generator path for it"]


def test_a_server_fault_is_a_500_logged_once_with_its_traceback(caplog) -> None:
    from stream.webrtc.server import ServeOptions, ServerThread, create_app

    def broken() -> Recorder:
        raise RuntimeError("out of model memory")

    options = ServeOptions(port=0)
    server = ServerThread(create_app(options, LiveModel(broken, ())), options).start()
    try:
        caplog.set_level(logging.INFO)
        status, body = post(server.url + "offer", json.dumps({"sdp": aiortc_offer_sdp(), "type": "offer"}).encode())
    finally:
        server.stop()
    assert status == 500 and "log" in body["error"]
    faults = [r for r in caplog.records if r.exc_info]
    assert len(faults) == 1 and "out of model memory" in str(faults[0].exc_info[1])
    assert server.registry.pending == 0 and not server.registry.sessions


def test_live_stats_show_the_confidence_gate(tmp_path: Path) -> None:
    """The readout says how well the generator draws the face and how much of the edit it got."""
    from stream.session import GATE_LOW_DB
    from tests.random_pack import make_random_pack
    from tests.test_session import ScriptedTracker, face, networks

    pack = make_random_pack(tmp_path / "pack").root
    session = networks(pack, "gan", gate=True).session(ScriptedTracker([face(120, 80, 40, track_id=0)]))
    session.set_edits([("smile", 1.0)])
    out: list[TimedFrame] = []
    worker = LiveWorker(session, lambda frame, _latency: out.append(frame), keep_timed, result_only)
    assert worker.stats().as_dict()["fidelity_db"] is None  # nothing measured before the first face
    frame = np.random.default_rng(0).integers(0, 256, (160, 240, 3), dtype=np.uint8)
    worker.submit(TimedFrame(frame, 0, TB))
    wait_for(lambda: len(out) == 1)
    worker.close()
    stats = worker.stats().as_dict()
    assert stats["fidelity_db"] < GATE_LOW_DB and stats["gate_weight"] == 0.0  # random weights draw no face
