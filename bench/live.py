"""Live benchmark: the `serve` page in Chromium with a fake webcam, end to end over WebRTC on loopback.

    .venv/bin/python bench/live.py [--pack assets/demo_pack] [--seconds 12] [--no-write]

For each model path (none: transport only; student; encoder + generator) and size (640x480, 1280x720), a
marked fake webcam (.y4m, 30 fps, from a ../shared/data/faces clip) is streamed through the server and back; the page times
every frame from camera preview to edited display (glass-to-glass). Reported: latency p50/p95, delivered
fps, the server's own latency (frame arrival -> hand-off to the encoder), ms per stage and the server
process's CPU use (cores; it includes VP8 decode + encode). Without a built demo pack, a random-weight pack
stands in (stated in the table): its networks have the demo pack's kind of cost, not its quality.

Writes the "Live" section of bench/RESULTS.md (other sections are kept). Numbers are never asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.config import FaceConfig, ModelConfig
from stream.live_model import LiveModel, live_model
from stream.report import write_section
from stream.types import Frame, StageTimes
from stream.webrtc import harness
from stream.webrtc.server import ServeOptions, ServerThread, create_app

FACES = ROOT.parent / "shared" / "data" / "faces"
CLIPS = {(640, 480): "d18", (1280, 720): "s18"}
DEMO_PACK = ROOT / "assets" / "demo_pack"
SECTION = "## Live (bench/live.py)"
FPS = 30


@dataclass
class Run:
    path: str
    size: tuple[int, int]
    glass_p50: float
    glass_p95: float
    fps: float
    server_p50: float
    server_p95: float
    cpu_cores: float
    dropped: int
    frames_in: int
    send_kbps: float
    stages: dict[str, float]
    loop_lag: tuple[float, float, float]  # the server event loop's lateness, ms: p50, p95, max

    def row(self) -> str:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in self.stages.items()) or "no face edited"
        lag = " / ".join(f"{v:.0f}" for v in self.loop_lag)
        return (f"| {self.path} | {self.size[0]}x{self.size[1]} | {self.glass_p50:.0f} | {self.glass_p95:.0f} | "
                f"{self.fps:.1f} | {self.server_p50:.0f} / {self.server_p95:.0f} | {lag} | {self.cpu_cores:.2f} | "
                f"{self.dropped}/{self.frames_in} | {self.send_kbps:.0f} | {stages} |")


class Passthrough:
    """No model: what WebRTC, the codecs and the worker's conversions cost on their own."""

    def __init__(self) -> None:
        self.times = StageTimes()

    def set_edits(self, edits: list[tuple[str, float]]) -> None:
        """Nothing to edit."""

    def process(self, frame: Frame, t: float | None = None) -> Frame:
        return frame


async def loop_lag(seconds: float, interval: float = 0.01) -> list[float]:
    """How late (ms) each of the event loop's 10 ms sleeps wakes: time the loop spent unable to run
    (busy with a callback, or waiting for the GIL while another thread holds it)."""
    lags: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        await asyncio.sleep(interval)
        lags.append((time.perf_counter() - start - interval) * 1000.0)
    return lags


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(playwright, features: str, pack: Path, path: str, size: tuple[int, int], seconds: float,
            workdir: Path) -> Run:
    clip = harness.write_marked_y4m(FACES / f"{CLIPS[size]}.mp4", workdir / f"cam_{size[0]}.y4m", *size, FPS,
                                    seconds=8)
    if path == "none":
        model = LiveModel(Passthrough, ())
    else:
        model = live_model(ModelConfig(pack=pack, path=path), FaceConfig(), [], fps=FPS)
        if not model.default_edits:
            model = LiveModel(model.new_processor, model.edit_names, ((model.edit_names[0], 1.0),))
    options = ServeOptions(port=0, max_peers=1)
    browser = harness.launch_chromium(playwright, clip, features)
    with harness.loopback_ice():
        server = ServerThread(create_app(options, model), options).start()
        try:
            page = browser.new_page()
            page.goto(server.url)
            page.evaluate("(size) => faceedit.start(size)", {"width": size[0], "height": size[1], "fps": FPS})
            harness.start_probe(page, clip)
            time.sleep(4)  # warm-up: bitrate ramp, first detections
            (session,) = server.registry.sessions.values()
            t0, cpu0, wall0 = page.evaluate("performance.now()"), cpu_seconds(), time.perf_counter()
            before = session.worker.stats()
            lag_probe = asyncio.run_coroutine_threadsafe(loop_lag(seconds), server.loop)
            time.sleep(seconds)
            lags = np.array(lag_probe.result(10))
            cpu = (cpu_seconds() - cpu0) / (time.perf_counter() - wall0)
            after = session.worker.stats()
            window = harness.probe_latencies(page, t0)
            browser_stats = page.evaluate("faceedit.stats().browser")
            shown_size = (browser_stats.get("width"), browser_stats.get("height"))
            page.close()
        finally:
            server.stop()
            browser.close()
    if tuple(shown_size) != size:
        print(f"note: the page showed {shown_size[0]}x{shown_size[1]}, not {size[0]}x{size[1]}", flush=True)
    latency = window[:, 1]
    return Run(path, size, float(np.percentile(latency, 50)), float(np.percentile(latency, 95)),
               len(window) / seconds, after.latency_p50_ms, after.latency_p95_ms, cpu,
               after.dropped - before.dropped, after.frames_in - before.frames_in,
               browser_stats.get("send_kbps", 0), after.stage_ms,
               (float(np.percentile(lags, 50)), float(np.percentile(lags, 95)), float(lags.max())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pack", type=Path, default=DEMO_PACK, help="model pack (default: the demo pack)")
    parser.add_argument("--seconds", type=float, default=12.0, help="measured seconds per run (default 12)")
    parser.add_argument("--paths", default="none,student,gan",
                        help="model paths to run: none (no model, transport only), student, gan (default: all)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="live-bench-") as tmp:
        workdir = Path(tmp)
        pack, pack_note = args.pack, f"pack `{args.pack.relative_to(ROOT) if args.pack.is_relative_to(ROOT) else args.pack}`"
        if not (pack / "pack.json").is_file():
            from tests.random_pack import make_random_pack

            pack = make_random_pack(workdir / "pack").root
            pack_note = ("**random-weight pack** (tests/random_pack.py: 64 px crop, 32 px generator; the demo "
                         f"pack was not built at {args.pack.relative_to(ROOT)})")
        runs = []
        load = os.getloadavg()
        with sync_playwright() as playwright:
            features = harness.playwright_disabled_features(playwright)
            for path in args.paths.split(","):
                for size in CLIPS:
                    run = measure(playwright, features, pack, path, size, args.seconds, workdir)
                    print(run.row(), flush=True)
                    runs.append(run)
    lines = [
        SECTION, "",
        (f"Chromium (Debian {harness.CHROMIUM}, headless) with a fake 30 fps webcam (.y4m from "
         f"../shared/data/faces: {', '.join(f'{c} at {w}x{h}' for (w, h), c in CLIPS.items())}) -> `serve` "
         f"(aiortc, VP8 both ways, loopback) -> page; {pack_note}; backend auto; {args.seconds:g} s measured "
         "after 4 s warm-up. Glass-to-glass: a frame number drawn into the camera picture, read back in the "
         "page from the camera preview and from the edited video (both at display time). Server latency: "
         "frame arrival -> edited frame handed to the encoder. Loop lag: how late the server's event loop wakes from "
         "10 ms sleeps (p50 / p95 / max), the time it could not run (another callback, or the GIL held by the "
         "worker thread). CPU: the server process (decode + model + "
         f"encode), in cores, on a {_cpu_count()}-core machine shared with other jobs (load average "
         f"{load[0]:.1f} before, {os.getloadavg()[0]:.1f} after); Chromium not counted. Camera kbps: the "
         "browser's send bitrate at the end (it was asked to start at 2000 kbps)."),
        "",
        ("| path | size | glass p50 ms | glass p95 ms | fps shown | server p50/p95 ms | loop lag p50/p95/max ms | "
         "server CPU (cores) | dropped/in | camera kbps | ms per stage |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[run.row() for run in runs],
        "",
        *_reading(runs),
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(ROOT / "bench" / "RESULTS.md", text)


def _reading(runs: list[Run]) -> list[str]:
    """One line on the issue's target: p95 at most 150 ms at 640x480 with the student."""
    student = [run for run in runs if run.path == "student" and run.size == (640, 480)]
    if not student:
        return []
    p95 = student[0].glass_p95
    verdict = "met" if p95 <= 150 else "not met on this machine"
    return [(f"Target p95 <= 150 ms at 640x480 with the student: {p95:.0f} ms, {verdict}. The `none` rows are "
             "the floor set by capture, VP8 both ways and display on this machine. Between the server's own "
             "latency and glass-to-glass lie the browser's encode/decode/render, which share the same two cores, "
             "and the server's event loop waiting for the GIL while the worker thread runs dlib (event-loop lag "
             "of tens of ms measured with dlib detecting in a thread): a worker process would remove the latter."),
            ""]


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
