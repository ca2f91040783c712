"""Live server soak: sessions in a row, and a client that never connects, with aiortc's client on loopback.

    .venv/bin/python bench/live_soak.py [--pack assets/demo_pack] [--sessions 60] [--no-write]

The server (`serve`'s app, the pack's live model, two peers at most) runs in this process. Each session
posts an offer, connects, receives 5 edited frames of a grey camera, and leaves; no garbage collection is
forced. Reported: the process's resident memory after the first few sessions and at the end (the drift),
fds / threads / UDP sockets before and after, how long an offer takes to be answered (first and later
ones), how long a closed peer's slot takes to free, and how long a client that posts an offer and never
connects holds its slot (the connect timeout). Writes the "Live soak" section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.config import FaceConfig, ModelConfig
from stream.live_model import live_model
from stream.report import write_section
from stream.webrtc.harness import loopback_ice
from stream.webrtc.server import ServeOptions, ServerThread, create_app
from tests import live_client

SECTION = "## Live soak (bench/live_soak.py)"
WARM_UP = 5  # sessions before the memory reference: lazily made threads and allocator pools settle


def soak(server: ServerThread, sessions: int) -> dict[str, object]:
    rss, answers, frees = [], [], []
    start = live_client.resources()
    reference = start
    for index in range(sessions):
        peer = asyncio.run(live_client.session(server.url, frames=5))
        if peer.status != 200 or len(peer.frames) < 5:
            raise SystemExit(f"session {index}: {peer.status} {peer.answer}, {len(peer.frames)} frames")
        frees.append(live_client.wait_until(lambda: not server.registry.sessions, 30, step_s=0.005))
        answers.append(peer.answer_s)
        rss.append(live_client.resources().rss_mb)
        if index + 1 == WARM_UP:
            reference = live_client.resources()
    end = live_client.resources()
    return {"start": start, "reference": reference, "end": end, "rss": rss, "answers": answers, "frees": frees}


async def ghost(server: ServerThread) -> float:
    """Seconds a client that posts an offer and never connects holds its slot."""
    pc, sdp = await live_client.new_offer()
    status, answer = await live_client.http(server.url + "offer", live_client.offer_body(sdp))
    if status != 200:
        raise SystemExit(f"ghost offer refused: {status} {answer}")
    start = time.monotonic()
    while server.registry.sessions:
        await asyncio.sleep(0.05)
    await pc.close()
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pack", type=Path, default=ROOT / "assets" / "demo_pack")
    parser.add_argument("--sessions", type=int, default=60)
    parser.add_argument("--connect-timeout", type=float, default=20.0, help="the server's (default 20 s)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    started = time.perf_counter()
    model = live_model(ModelConfig(pack=args.pack), FaceConfig(), [])
    built_s = time.perf_counter() - started
    options = ServeOptions(port=0, max_peers=2, connect_timeout_s=args.connect_timeout)
    with loopback_ice():
        server = ServerThread(create_app(options, model), options).start()
        try:
            result = soak(server, args.sessions)
            held_s = asyncio.run(ghost(server))
        finally:
            server.stop()
    reference, end = result["reference"], result["end"]
    answers_ms = np.array(result["answers"]) * 1000
    frees_ms = np.array(result["frees"]) * 1000
    drift = (end.rss_mb - reference.rss_mb) / reference.rss_mb * 100
    rss = result["rss"]
    text = "\n".join([
        SECTION, "",
        (f"`python bench/live_soak.py --sessions {args.sessions}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
         f"{len(os.sched_getaffinity(0))}-core machine shared with other jobs, load average {load:.1f} at the "
         f"start): pack `{args.pack.name}`, model built in {built_s:.1f} s, then {args.sessions} sessions in a "
         "row by aiortc's client on loopback (offer, connect, 5 edited frames of a 128x96 camera, leave), no "
         "garbage collection forced."),
        "",
        "| measure | value |",
        "|---|---|",
        (f"| resident memory after {WARM_UP} sessions / after {args.sessions} | {reference.rss_mb:.0f} MB / "
        f"{end.rss_mb:.0f} MB ({drift:+.1f} %) |"),
        f"| resident memory every 10th session | {', '.join(f'{r:.0f}' for r in rss[9::10])} MB |",
        f"| before the first session / after the last | {result['start']} / {end} |",
        (f"| offer answered (POST -> answer): first, then p50 / p95 / max | {answers_ms[0]:.0f} ms, then "
        f"{np.percentile(answers_ms[1:], 50):.0f} / {np.percentile(answers_ms[1:], 95):.0f} / "
        f"{answers_ms[1:].max():.0f} ms |"),
        (f"| slot free after the client closed (p50 / max) | {np.percentile(frees_ms, 50):.0f} / "
        f"{frees_ms.max():.0f} ms |"),
        (f"| slot of a client that never connects, held for | {held_s:.1f} s (connect timeout "
        f"{args.connect_timeout:g} s) |"),
    ])
    print(text)
    if not args.no_write:
        write_section(ROOT / "bench" / "RESULTS.md", text)


if __name__ == "__main__":
    main()
