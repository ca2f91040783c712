"""`camera`: webcam -> face editor -> virtual camera (for video-call apps) and/or a preview window.

    run_stream.py camera                         # /dev/video0 -> virtual camera
    run_stream.py camera --input clip.mp4 --preview --no-virtual-cam   # a file looped, in a window

The virtual camera is opened before the model loads, so a missing v4l2loopback device is reported at
once, as one line with the command that creates it.
"""
from __future__ import annotations

import argparse

from engines.errors import UserError
from stream.commands.serve import add_model_arguments, live_model_from_args

HELP = "edit your webcam live into a virtual camera (v4l2loopback / OBS) and/or a preview window"

_WINDOW = "faceedit (q or Esc to quit)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default="/dev/video0",
                        help="camera: /dev/videoN or an index; or a video file, looped in real time (testing)")
    parser.add_argument("--width", type=int, default=640, help="camera width to ask for (default 640)")
    parser.add_argument("--height", type=int, default=480, help="camera height to ask for (default 480)")
    parser.add_argument("--fps", type=int, default=30, help="camera frame rate to ask for (default 30)")
    parser.add_argument("--no-virtual-cam", action="store_true", help="do not send to a virtual camera")
    parser.add_argument("--device", help="virtual camera device, e.g. /dev/video2 (default: the first loopback)")
    parser.add_argument("--preview", action="store_true", help="show the edited stream in a window")
    parser.add_argument("--frames", type=int, default=None, metavar="N", help="stop after N frames")
    add_model_arguments(parser)


class PreviewWindow:
    """An OpenCV window; the sink returns False once the user presses q or Esc, or closes the window."""

    def __init__(self) -> None:
        import cv2

        try:
            cv2.namedWindow(_WINDOW, cv2.WINDOW_AUTOSIZE)
        except cv2.error:
            raise UserError("cannot open a preview window (no display?); drop --preview") from None

    def __call__(self, frame) -> bool:
        import cv2

        cv2.imshow(_WINDOW, cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
        key = cv2.waitKey(1) & 0xFF
        return key not in (ord("q"), 27) and cv2.getWindowProperty(_WINDOW, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        import cv2

        cv2.destroyWindow(_WINDOW)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from stream.media.virtualcam import VirtualCameraSink
    from stream.media.webcam import open_live_source
    from stream.realtime import run_live

    if args.no_virtual_cam and not args.preview:
        raise UserError("no output: drop --no-virtual-cam or add --preview")
    for flag, value, top in (("--width", args.width, 7680), ("--height", args.height, 4320), ("--fps", args.fps, 240)):
        if not 1 <= value <= top:
            raise UserError(f"{flag} {value}: must be between 1 and {top}")
    source = open_live_source(args.input, args.width, args.height, args.fps)
    closers = [source.close]
    try:
        sinks = []
        if not args.no_virtual_cam:
            camera = VirtualCameraSink(source.width, source.height, source.fps, args.device)
            closers.append(camera.close)
            sinks.append(lambda frame: camera.send(frame.image) or True)
            print(f"virtual camera: {camera.device}", flush=True)
        if args.preview:
            window = PreviewWindow()
            closers.append(window.close)
            sinks.append(window)
        print("loading the model ...", flush=True)
        model = live_model_from_args(args, source.fps)
        edits = list(model.default_edits)
        applying = ", ".join(f"{name}={strength:g}" for name, strength in edits) or "none"
        print(f"edits: {', '.join(model.edit_names) or 'none'}; applying {applying}; Ctrl+C to stop", flush=True)
        with tqdm(total=args.frames, unit="frame", dynamic_ncols=True) as bar:
            def progress(stats) -> None:
                bar.update(1)
                bar.set_postfix(fps=f"{stats.fps:.1f}", latency_ms=f"{stats.latency_p50_ms:.0f}",
                                dropped=stats.dropped, refresh=False)

            stats = run_live(source, model.new_processor(), sinks, edits, args.frames, progress)
    finally:
        for close in reversed(closers):
            close()
    stages = ", ".join(f"{k} {v:.1f} ms" for k, v in stats.stage_ms.items()) or "no face edited"
    print(f"{stats.frames_out} frames, {stats.dropped} dropped, latency p50 {stats.latency_p50_ms:.0f} ms "
          f"p95 {stats.latency_p95_ms:.0f} ms; {stages}")
    return 0
